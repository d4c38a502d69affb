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
 * vocabulary, or a hook error. */
int  llama_eval(llama_model *m, llama_state *s, const uint32_t *tokens, int n,
                float *logits, int last_only, char **errp);

/* Helpers for callers scoring logits (can't fail). */
/* log Σ exp(logits[i]) over n values, in double. */
double llama_logsumexp(const float *logits, int n);
/* Index of the largest value (the first on ties). */
int    llama_argmax(const float *logits, int n);

#endif
