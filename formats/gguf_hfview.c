/* gguf_hfview — a llama GGUF seen as a HuggingFace model.
 *
 * Owns: the inverse of the HF → GGUF export conventions, so that a GGUF read
 * by qcat flows through the same pipeline as a safetensors model: tensor
 * names back to HF (blk.3.ffn_down.weight → model.layers.3.mlp.down_proj.weight),
 * q/k rows back from GGUF's interleaved rotary order to HF's rotate-half order
 * (a row permutation, exact for float rows and for block-quantized rows
 * alike), and a config.json made from the llama.* keys. A GGUF of another
 * architecture, or without the llama.* keys, keeps its own names. Tensor bytes are
 * read through the wrapped GGUF source row by row; nothing is converted.
 * Spec: specs/gguf.md §9 (names) and §10 (the permutation).
 */
#include "gguf.h"
#include "source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* GGUF block-tensor suffix → HF module path inside model.layers.N */
static const struct { const char *gguf, *hf; } layer_names[] = {
    { "attn_norm", "input_layernorm" },      { "ffn_norm", "post_attention_layernorm" },
    { "attn_q", "self_attn.q_proj" },        { "attn_k", "self_attn.k_proj" },
    { "attn_v", "self_attn.v_proj" },        { "attn_output", "self_attn.o_proj" },
    { "ffn_gate", "mlp.gate_proj" },         { "ffn_up", "mlp.up_proj" },
    { "ffn_down", "mlp.down_proj" },
};

/* HF name of a llama GGUF tensor, or -1 (e.g. rope_freqs). */
static int hf_name(const char *g, char *out, size_t len)
{
    if (!strcmp(g, "token_embd.weight")) { snprintf(out, len, "model.embed_tokens.weight"); return 0; }
    if (!strcmp(g, "output_norm.weight")) { snprintf(out, len, "model.norm.weight"); return 0; }
    if (!strcmp(g, "output.weight")) { snprintf(out, len, "lm_head.weight"); return 0; }
    int layer, n = 0;
    if (sscanf(g, "blk.%d.%n", &layer, &n) != 1 || n == 0) return -1;
    const char *rest = g + n, *dot = strrchr(rest, '.');
    if (!dot) return -1;
    for (size_t i = 0; i < sizeof layer_names / sizeof *layer_names; i++)
        if (strlen(layer_names[i].gguf) == (size_t)(dot - rest) && !strncmp(rest, layer_names[i].gguf, (size_t)(dot - rest))) {
            snprintf(out, len, "model.layers.%d.%s%s", layer, layer_names[i].hf, dot);
            char back[128];
            return gguf_llama_name(out, back, sizeof back) == 0 && !strcmp(back, g) ? 0 : -1;
        }
    return -1;
}

typedef struct {
    qsrc  *g;            /* the GGUF source */
    int   *src_idx;      /* per tensor: index in g */
    int   *heads;        /* per tensor: head count of a q/k permutation, 0 = none */
} hv_impl;

static int hv_read(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp)
{
    hv_impl *im = s->impl;
    int si = im->src_idx[idx], heads = im->heads[idx];
    if (!heads) return qsrc_read(im->g, si, off, buf, n, errp);
    const qs_tensor *t = &s->tensors[idx];
    uint64_t rows = (uint64_t)t->shape[0], rb = qs_tensor_nbytes(t) / rows, hd = rows / (uint64_t)heads;
    uint8_t *p = buf;
    while (n) {                              /* HF row q comes from GGUF row h·hd + 2j + t */
        uint64_t q = off / rb, in = off % rb, i = q % hd;
        uint64_t half = hd / 2, src_row = q - i + 2 * (i % half) + i / half;
        size_t k = rb - in < n ? (size_t)(rb - in) : n;
        if (qsrc_read(im->g, si, src_row * rb + in, p, k, errp) < 0) return -1;
        p += k; off += k; n -= k;
    }
    return 0;
}

static const void *hv_map(qsrc *s, int idx)
{
    hv_impl *im = s->impl;
    return im->heads[idx] ? NULL : qsrc_map(im->g, im->src_idx[idx]);
}

static void hv_close(qsrc *s)
{
    hv_impl *im = s->impl;
    if (!im) return;
    qsrc_close(im->g);
    free(im->src_idx);
    free(im->heads);
    free(im);
}

static const qsrc_ops hv_ops = { hv_read, hv_map, hv_close };

static json_t *kv(const qsrc *g, const char *key) { return json_object_get(json_object_get(g->header.meta, "gguf"), key); }

/* config.json from the llama.* keys, as transformers would write it. NULL if a
 * required key is missing (checked before building: json_pack leaks on NULL). */
static char *make_config(const qsrc *g, int tied, size_t *len)
{
    static const char *req[][2] = {
        { "hidden_size", "llama.embedding_length" }, { "intermediate_size", "llama.feed_forward_length" },
        { "num_hidden_layers", "llama.block_count" }, { "num_attention_heads", "llama.attention.head_count" },
        { "rms_norm_eps", "llama.attention.layer_norm_rms_epsilon" },
        { "max_position_embeddings", "llama.context_length" },
    };
    json_t *c = json_object();
    json_object_set_new(c, "architectures", json_pack("[s]", "LlamaForCausalLM"));
    json_object_set_new(c, "model_type", json_string("llama"));
    for (size_t i = 0; i < sizeof req / sizeof *req; i++) {
        json_t *v = kv(g, req[i][1]);
        if (!json_is_number(v)) { json_decref(c); return NULL; }
        json_object_set(c, req[i][0], v);
    }
    json_object_set_new(c, "tie_word_embeddings", json_boolean(tied));
    json_t *kvh = kv(g, "llama.attention.head_count_kv");
    json_object_set(c, "num_key_value_heads", json_is_number(kvh) ? kvh : kv(g, "llama.attention.head_count"));
    json_t *theta = kv(g, "llama.rope.freq_base");
    json_object_set_new(c, "rope_theta", json_is_number(theta) ? json_deep_copy(theta) : json_real(10000.0));
    json_t *vocab = kv(g, "llama.vocab_size"), *tokens = kv(g, "tokenizer.ggml.tokens");
    if (json_is_number(vocab)) json_object_set(c, "vocab_size", vocab);
    else if (tokens) json_object_set_new(c, "vocab_size", json_integer((json_int_t)json_array_size(tokens)));
    const char *ids[2][2] = { { "tokenizer.ggml.bos_token_id", "bos_token_id" }, { "tokenizer.ggml.eos_token_id", "eos_token_id" } };
    for (int i = 0; i < 2; i++)
        if (json_is_number(kv(g, ids[i][0]))) json_object_set(c, ids[i][1], kv(g, ids[i][0]));
    json_object_set_new(c, "torch_dtype", json_string("float32"));
    char *s = json_dumps(c, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(c);
    *len = s ? strlen(s) : 0;
    return s;
}

/* more heads than any published model by far; bounds 2*heads in int arithmetic */
#define HV_MAX_HEADS 65536

qsrc *gguf_hf_view(qsrc *g, char **errp)
{
    const char *arch = json_string_value(kv(g, "general.architecture"));
    if (!arch || strcmp(arch, "llama")) return g;    /* not ours to translate: raw names */
    size_t len;
    char *cfg = make_config(g, qsrc_find(g, "output.weight") < 0, &len);
    if (!cfg) return g;                               /* no llama.* hyper-parameters: raw names too */
    json_int_t n_head = json_integer_value(kv(g, "llama.attention.head_count"));
    json_int_t n_kv = kv(g, "llama.attention.head_count_kv") ? json_integer_value(kv(g, "llama.attention.head_count_kv")) : n_head;
    if (n_head < 1 || n_head > HV_MAX_HEADS || n_kv < 1 || n_kv > HV_MAX_HEADS) {
        *errp = qsrc_errf("%s: llama.attention.head_count %lld / head_count_kv %lld: not between 1 and %d",
                          g->path, (long long)n_head, (long long)n_kv, HV_MAX_HEADS);
        free(cfg);
        qsrc_close(g);
        return NULL;
    }
    qsrc *s = qsrc_new(g->path);
    hv_impl *im = calloc(1, sizeof *im);
    im->g = g;
    im->src_idx = calloc((size_t)g->ntensors + 1, sizeof *im->src_idx);
    im->heads = calloc((size_t)g->ntensors + 1, sizeof *im->heads);
    s->impl = im;
    s->ops = &hv_ops;
    s->sequential = g->sequential;
    qs_header_clear(&s->header);              /* qsrc_new's empty header */
    qs_header_copy(&s->header, &g->header);
    for (int i = 0; i < g->ntensors; i++) {
        char name[160];
        if (hf_name(g->tensors[i].name, name, sizeof name) < 0) continue;   /* rope_freqs etc. */
        qs_tensor t;
        if (qs_tensor_copy(&t, &g->tensors[i]) < 0) { *errp = qsrc_errf("out of memory"); free(cfg); qsrc_close(s); return NULL; }
        free(t.name);
        t.name = strdup(name);
        int kind = gguf_llama_qk_kind(name);
        int heads = kind == 1 ? (int)n_head : kind == 2 ? (int)n_kv : 0;
        if (heads && (t.ndim != 2 || t.shape[0] % (2 * (int64_t)heads))) {
            *errp = qsrc_errf("%s: tensor '%s' does not split into %d heads", g->path, g->tensors[i].name, heads);
            free(cfg);
            qs_tensor_clear(&t);
            qsrc_close(s);                    /* closes g too: message made first */
            return NULL;
        }
        im->src_idx[s->ntensors] = i;
        im->heads[s->ntensors] = heads;
        qsrc_add_tensor(s, &t);
        qs_tensor_clear(&t);
    }
    qs_header_add_file(&s->header, "config.json", cfg, len);
    free(cfg);
    return s;
}
