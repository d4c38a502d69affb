/* llama — a Llama-family decoder forward pass in f32 (HF LlamaForCausalLM
 * semantics), for perplexity, generation and calibration.
 *
 * Owns: reading the hyper-parameters from a HF config.json (model_type llama,
 * mistral or qwen2), checking every weight's shape against them, and the
 * forward pass: RMSNorm, rotary embeddings in HF's rotate-half convention
 * (rope_theta; rope_scaling "linear" and "llama3"), grouped-query causal
 * attention (optional Mistral sliding window), SiLU-gated MLP, tied or untied
 * head, and Qwen2's q/k/v biases when those tensors exist.
 * Reference: transformers/models/llama/modeling_llama.py (LlamaRMSNorm,
 * LlamaRotaryEmbedding, rotate_half, apply_rotary_pos_emb, LlamaMLP,
 * LlamaAttention, repeat_kv) and modeling_rope_utils.py
 * (_compute_llama3_parameters).
 *
 * How to think of it: a llama_model holds every weight as f32 in memory; a
 * llama_state holds the KV cache of one sequence (up to ctx positions) and the
 * scratch of one batch. llama_eval() runs a batch of new tokens at positions
 * state->pos.. and returns their logits; a 256-token window is one call, so
 * each linear layer is one (blocked, multi-threaded) matrix product.
 *
 * Determinism: every output element is computed by exactly one thread with a
 * fixed summation order (kernels.h), so results are byte-identical for every
 * thread count.
 *
 * Layer streaming (a model larger than RAM): llama_open_streamed() reads only
 * the config and the tensor list, checking every expected tensor's shape up
 * front where the list says it; weights are then read when needed and freed
 * after use. A llama_batch holds the hidden states of a set of independent
 * windows (each a sequence from position 0), and llama_batch_layer() runs all
 * of them through one decoder layer at a time: load layer l (f32), run every
 * window through it, free it. Embeddings come first, the final norm and head
 * last (llama_batch_logits). Every window sees exactly the arithmetic of
 * llama_eval() (same kernels, same summation order, same thread split), so
 * logits and hook inputs are byte-identical to the in-memory mode.
 * Cost, for B = Σ window lengths tokens:
 *   memory  ≈ one layer's weights in f32 (+ the raw bytes of one tensor while
 *            it is converted) + B × dim × 4 bytes of hidden states + the scratch
 *            of one window (one layer's KV cache, ctx × kv_dim × 8 bytes) +
 *            the head (vocab × dim × 4) only while logits are computed; the
 *            embedding (vocab × dim × 4) only while the batch is made.
 *   reads   every tensor once (a tied embedding twice, when logits are asked),
 *            with pread from a checkpoint: no more I/O than loading it whole.
 *   compute the same as llama_eval of each window; no generation (one token at
 *            a time would read the whole model per token).
 * Sources: a seekable checkpoint is read in any order (qsrc_read, never
 * mapped, so file pages do not count in the RSS). A qstream or a sequential
 * source (archive) gives tensors in its own order: a tensor the engine needs
 * later than it arrives (e.g. lm_head, which sorts first in HF files) is
 * spooled, as its wire bytes, to an unlinked file in $TMPDIR (default /tmp)
 * and read back when needed; tensors the model does not use are skipped. So
 * a stream costs memory of one tensor at a time whatever its order, and disk
 * for what arrives early.
 *
 * Errors: functions returning a pointer return NULL, others -1, with a
 * malloc'd one-line message in *errp (the caller frees). Nothing prints or
 * exits.
 */
#ifndef QPIPE_LLAMA_H
#define QPIPE_LLAMA_H

#include <stddef.h>
#include <stdint.h>

#include "qstream.h"
#include "source.h"

typedef struct {
    char  model_type[32];       /* "llama", "mistral", "qwen2" */
    int   n_layers;             /* num_hidden_layers */
    int   dim;                  /* hidden_size */
    int   hidden;               /* intermediate_size */
    int   n_heads;              /* num_attention_heads */
    int   n_kv_heads;           /* num_key_value_heads (GQA; = n_heads when absent) */
    int   head_dim;             /* head_dim, or dim / n_heads */
    int   vocab;                /* vocab_size */
    int   max_pos;              /* max_position_embeddings */
    int   sliding_window;       /* 0 = none */
    float eps;                  /* rms_norm_eps */
    double rope_theta;          /* rope_theta (10000 when absent) */
    int   tied;                 /* tie_word_embeddings (true when absent) and no lm_head.weight */
    int   qkv_bias;             /* q/k/v_proj.bias tensors present */
    int   bos, eos;             /* bos_token_id / eos_token_id (-1 when absent) */
} llama_config;

typedef struct llama_model llama_model;
typedef struct llama_state llama_state;

/* Weight provider: look up tensor `name`. Returns 1 with *data a malloc'd f32
 * array (ownership passes to the engine), its shape in shape[0..*ndim-1]
 * (ndim <= QS_MAX_DIMS); 0 if the tensor does not exist; -1 on error with
 * *errp malloc'd. */
typedef int (*llama_get_fn)(void *ctx, const char *name, float **data,
                            int64_t *shape, int *ndim, char **errp);

/* Build a model from config.json text and a weight provider. Fails (NULL,
 * *errp) on invalid JSON, an unsupported model_type/architecture or
 * hidden_act, a missing tensor, or a tensor whose shape contradicts the
 * config ("model.layers.0.self_attn.k_proj.weight: shape [32, 64], config
 * implies [64, 64]"). */
llama_model *llama_load(const char *config_json, size_t len, llama_get_fn get, void *ctx,
                        char **errp);
/* From an opened checkpoint (config.json from its carried files); tensors are
 * read and converted to f32 (bf16/f16/quantized: dequantized). */
llama_model *llama_load_source(qsrc *s, char **errp);
/* From a qstream: reads every remaining tensor (dequantizing with
 * tensor_to_f32); config.json from the header's carried files. */
llama_model *llama_load_stream(qs_reader *r, char **errp);
/* Open `path` whatever it is: "-" or a file starting with the qstream magic
 * is read as a stream (llama_load_stream), anything else with qsrc_open
 * (llama_load_source). When a single checkpoint file carries no config.json,
 * config.json, tokenizer.json and tokenizer_config.json beside it are
 * carried. hdr (may be NULL) receives a copy of the
 * stream or source header (overwritten, not freed first: qs_header_clear it
 * after use), for the tokenizer files. NULL + *errp on error;
 * the message starts with path. */
llama_model *llama_open(const char *path, qs_header *hdr, char **errp);
void llama_free(llama_model *m);

const llama_config *llama_model_config(const llama_model *m);
/* Number of threads used by llama_eval (default 1; n < 1 means 1). */
void llama_set_threads(llama_model *m, int n);

/* Calibration hook: called once per distinct linear-layer input during
 * llama_eval, in forward order, before the linears run. names[0..nnames-1]
 * are the weight names that consume this input (q/k/v share one; gate/up
 * share one); x is (n, d_in) row-major, valid only during the call. The hook
 * returns 0, or -1 to abort llama_eval (its message in *errp, malloc'd). */
typedef int (*llama_hook_fn)(void *ctx, const char *const *names, int nnames,
                             const float *x, int n, int d_in, char **errp);
void llama_set_hook(llama_model *m, llama_hook_fn hook, void *ctx);

/* A sequence's KV cache for up to ctx positions and scratch for batches of up
 * to max_batch tokens. NULL + *errp on bad sizes or out of memory. */
llama_state *llama_state_new(const llama_model *m, int ctx, int max_batch, char **errp);
void llama_state_reset(llama_state *s);           /* back to position 0; can't fail */
int  llama_state_pos(const llama_state *s);        /* tokens already in the cache */
void llama_state_free(llama_state *s);

/* Run tokens[0..n-1] at positions pos..pos+n-1 (causal, attending to the
 * cache), append them to the cache. logits: (n, vocab) row-major, or NULL; if
 * last_only, only the last token's logits are computed, into logits[0..vocab).
 * Fails (-1, *errp) on n > max_batch, overflowing ctx, a token id outside the
 * vocabulary, a hook error, or a layer-streamed model (use llama_batch_*). */
int  llama_eval(llama_model *m, llama_state *s, const uint32_t *tokens, int n,
                float *logits, int last_only, char **errp);

/* The distinct linear-layer inputs, in the order the hook sees them (per
 * layer: q/k/v, o, gate/up, down; then lm_head when the head is untied),
 * without running anything: fn(ctx, names, nnames, d_in, errp) for each, as
 * the hook would be called. Returns 0, or the first -1 of fn. */
typedef int (*llama_input_fn)(void *ctx, const char *const *names, int nnames, int d_in,
                              char **errp);
int llama_inputs(const llama_model *m, llama_input_fn fn, void *ctx, char **errp);

/* ---- Layer streaming (see the header comment for the design and its cost) */

/* As llama_open, but loads no weights: config.json, and the shape of every
 * tensor the model needs checked against it when the source lists them (a
 * checkpoint always; a qstream through its manifest). The source stays open
 * until llama_free. Such a model runs only through llama_batch_* (llama_eval
 * fails with a message saying so). NULL + *errp; the message starts with path. */
llama_model *llama_open_streamed(const char *path, qs_header *hdr, char **errp);
/* The same from a weight provider (no up-front shape checks: shapes are
 * checked as each tensor is loaded). get may be called more than once for a
 * tied embedding. */
llama_model *llama_load_streamed(const char *config_json, size_t len, llama_get_fn get,
                                 void *ctx, char **errp);
int llama_is_streamed(const llama_model *m);
/* For a model streamed from a qstream: read (and verify) the rest of the
 * stream, so a pipeline's writer is not cut off and the end record is
 * checked. 0 for every other model; -1 + *errp on a stream error. */
int llama_finish(llama_model *m, char **errp);

typedef struct llama_batch llama_batch;
/* nw windows, window w = tokens[off[w] .. off[w]+len[w]-1] (len >= 1), each
 * evaluated from position 0. Embeds them (a streamed model reads, uses and
 * frees the embedding here). NULL + *errp on bad windows, a token outside
 * the vocabulary, a read error or out of memory (the message gives the
 * B × dim × 4 bytes asked for). Works for in-memory models too. */
llama_batch *llama_batch_new(llama_model *m, const uint32_t *tokens, const int *off,
                             const int *len, int nw, char **errp);
/* Run every window through decoder layer l, which must be the next one
 * (0, 1, ... in order); a streamed model loads layer l first and frees it
 * after. The hook (if set) is called per window, in window order. -1 + *errp
 * on a layer out of order, a read or shape error, or a hook error. */
int llama_batch_layer(llama_model *m, llama_batch *b, int l, char **errp);
/* After the last layer: final norm of window w, the head's hook (untied
 * heads, as in llama_eval), and, if logits is not NULL, its (len[w], vocab)
 * logits. A streamed model loads the final norm (and the head, when logits
 * are asked) at the first call and keeps them. -1 + *errp if layers remain,
 * w is out of range, or on a read or hook error. */
int llama_batch_logits(llama_model *m, llama_batch *b, int w, float *logits, char **errp);
/* Bytes the batch holds (hidden states and scratch). Can't fail. */
size_t llama_batch_bytes(const llama_batch *b);
void llama_batch_free(llama_batch *b);

/* Helpers for callers scoring logits (can't fail). */
/* log Σ exp(logits[i]) over n values, in double. */
double llama_logsumexp(const float *logits, int n);
/* Index of the largest value (the first on ties). */
int    llama_argmax(const float *logits, int n);

#endif
