/* fuzz_config — libFuzzer target for config.json parsing: the Llama-family
 * hyper-parameters (common/llama.c, llama_load) and the GGUF export of them
 * (formats/gguf.c, gguf_llama_metadata). The input is a config.json.
 *
 * llama_load is given a weight provider that reads the same JSON with its
 * own small parser and hands out zero weights of the shapes it implies when
 * they are tiny (≤ 4096 elements each, ≤ 2 layers), else reports the tensor
 * missing; so mutations reach the shape checks, and a small config loads
 * fully and runs a two-token forward pass (RoPE scaling, GQA, sliding window
 * included).
 */
#include "fuzz.h"

#include "gguf.h"
#include "llama.h"

typedef struct {
    long long dim, hidden, heads, kv, head_dim, vocab, layers;
    int ok;
} shapes;

static long long get_int(json_t *cfg, const char *key, long long dflt)
{
    json_t *v = json_object_get(cfg, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : dflt;
}

static shapes guess(const uint8_t *data, size_t size)
{
    shapes s = { 0 };
    json_t *cfg = json_loadb((const char *)data, size, 0, NULL);
    if (!json_is_object(cfg)) { json_decref(cfg); return s; }
    s.dim = get_int(cfg, "hidden_size", 0);
    s.hidden = get_int(cfg, "intermediate_size", 0);
    s.heads = get_int(cfg, "num_attention_heads", 0);
    s.kv = get_int(cfg, "num_key_value_heads", s.heads);
    s.head_dim = get_int(cfg, "head_dim", s.heads > 0 ? s.dim / s.heads : 0);
    s.vocab = get_int(cfg, "vocab_size", 0);
    s.layers = get_int(cfg, "num_hidden_layers", 0);
    json_decref(cfg);
    long long v[] = { s.dim, s.hidden, s.heads, s.kv, s.head_dim, s.vocab };
    s.ok = s.layers >= 1 && s.layers <= 2;
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) s.ok &= v[i] >= 1 && v[i] <= 64;
    return s;
}

static int ends(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int provide(void *ctx, const char *name, float **data, int64_t *shape, int *ndim, char **errp)
{
    (void)errp;
    const shapes *s = ctx;
    if (!s->ok || ends(name, ".bias")) return 0;
    long long q = s->heads * s->head_dim, kvd = s->kv * s->head_dim, d0 = 0, d1 = 0;
    if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "lm_head.weight")) { d0 = s->vocab; d1 = s->dim; }
    else if (ends(name, "layernorm.weight") || !strcmp(name, "model.norm.weight")) d0 = s->dim;
    else if (ends(name, "q_proj.weight")) { d0 = q; d1 = s->dim; }
    else if (ends(name, "k_proj.weight") || ends(name, "v_proj.weight")) { d0 = kvd; d1 = s->dim; }
    else if (ends(name, "o_proj.weight")) { d0 = s->dim; d1 = q; }
    else if (ends(name, "gate_proj.weight") || ends(name, "up_proj.weight")) { d0 = s->hidden; d1 = s->dim; }
    else if (ends(name, "down_proj.weight")) { d0 = s->dim; d1 = s->hidden; }
    else return 0;
    char layer[32];
    snprintf(layer, sizeof layer, "model.layers.%lld.", s->layers);
    if (!strncmp(name, layer, strlen(layer))) return 0;      /* one past the last layer */
    long long n = d0 * (d1 ? d1 : 1);
    if (n > 4096) return 0;
    float *w = calloc((size_t)(n ? n : 1), sizeof *w);
    for (long long i = 0; i < n; i++) w[i] = (float)((i * 7) % 13) / 13.0f - 0.5f;
    *data = w;
    shape[0] = d0;
    shape[1] = d1;
    *ndim = d1 ? 2 : 1;
    return 1;
}

static void run_model(llama_model *m)
{
    const llama_config *c = llama_model_config(m);
    char *err = NULL;
    llama_state *st = llama_state_new(m, 8, 2, &err);
    if (!st) { free(err); return; }
    uint32_t toks[2] = { 0, (uint32_t)(c->vocab - 1) };
    float *logits = malloc((size_t)c->vocab * 2 * sizeof *logits);
    if (llama_eval(m, st, toks, 2, logits, 0, &err) < 0) {
        if (getenv("FUZZ_DEBUG")) fprintf(stderr, "llama_eval: %s\n", err);
        free(err);
    } else {
        if (getenv("FUZZ_DEBUG")) fprintf(stderr, "llama_eval: ok\n");
        fz_sink += (unsigned)llama_argmax(logits, c->vocab);
    }
    free(logits);
    llama_state_free(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *json = malloc(size ? size : 1);     /* exact size: reads past it are caught */
    memcpy(json, data, size);
    shapes s = guess(data, size);
    char *err = NULL;
    llama_model *m = llama_load(json, size, provide, &s, &err);
    fz_check_error(m, err, "llama_load");
    if (m) {
        run_model(m);
        llama_free(m);
    }
    gguf_writer *g = gguf_writer_new();
    err = NULL;
    if (gguf_llama_metadata(g, json, size, &err) < 0) {
        if (!err) abort();
        free(err);
    } else if (err) {
        abort();
    }
    gguf_writer_free(g);
    free(json);
    return 0;
}
