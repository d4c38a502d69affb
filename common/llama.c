/* llama — Llama-family decoder forward pass (see llama.h).
 *
 * Sections: config.json parsing; weight loading and shape checks; a small
 * thread pool; the forward pass (embedding, RMSNorm, RoPE, attention, MLP,
 * head); the qsrc / qstream weight providers.
 * Reference: transformers/models/llama/modeling_llama.py; the llama2.c run.c
 * structure (rmsnorm / matmul / attention per layer). */
#include "llama.h"
#include "err.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>

#include "dequant.h"
#include "dtype.h"
#include "kernels.h"

/* ------------------------------------------------------------------------
 * Errors */


/* ------------------------------------------------------------------------
 * Model */

enum { LIN_Q, LIN_K, LIN_V, LIN_O, LIN_GATE, LIN_UP, LIN_DOWN, LIN_COUNT };
static const char *const lin_names[LIN_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
};

typedef struct {
    float *w;                   /* (dout, din) */
    float *b;                   /* (dout) or NULL */
    int    din, dout;
    char   name[96];            /* "model.layers.L.self_attn.q_proj.weight" */
} linear;

typedef struct {
    float *attn_norm;           /* (dim) input_layernorm */
    float *ffn_norm;            /* (dim) post_attention_layernorm */
    linear lin[LIN_COUNT];
} layer;

typedef struct {
    int n;                      /* threads including the caller */
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    unsigned long gen;
    int pending, quit;
    void (*fn)(void *arg, int tid, int nth);
    void *arg;
} pool;

/* Where a layer-streamed model's weights come from (see llama.h). */
typedef struct {
    llama_get_fn get;
    void *ctx;
    /* optional: 1 and the shape if the tensor exists, 0 if absent, -1 unknown */
    int (*info)(void *ctx, const char *name, int64_t *shape, int *ndim);
    int (*finish)(void *ctx, char **errp);     /* optional */
    void (*close)(void *ctx);                  /* optional */
} wsrc;

struct llama_model {
    llama_config cfg;
    int streamed;               /* weights loaded per layer from ws */
    wsrc ws;
    int attn_bias, mlp_bias;    /* config.json attention_bias / mlp_bias (llama) */
    int rope_kind;              /* 0 default, 1 linear, 2 llama3 */
    double rope_factor, rope_low, rope_high, rope_orig;
    float *embed;               /* (vocab, dim) */
    float *final_norm;          /* (dim) */
    linear head;                /* lm_head, w = embed when tied */
    layer *layers;              /* (n_layers) */
    int nthreads;
    pool *pool;
    llama_hook_fn hook;
    void *hook_ctx;
};

struct llama_state {
    int ctx, max_batch, pos;
    int kvd, width;             /* per-layer cache row width; scratch floats per token */
    float *kcache, *vcache;     /* (n_layers, ctx, n_kv_heads * head_dim) */
    float *rope_cos, *rope_sin; /* (ctx, head_dim / 2) */
    float *x;                   /* (max_batch, dim) residual stream */
    float *xb;                  /* (max_batch, max(dim, q_dim)) normed input / attention output */
    float *q, *k, *v;           /* (max_batch, q_dim), (max_batch, kv_dim) x2 */
    float *g, *u;               /* (max_batch, hidden) */
    float *y;                   /* (max_batch, dim) o_proj / down_proj output */
    float *scores;              /* (nscores, ctx) one row per thread */
    int nscores;
};

/* ------------------------------------------------------------------------
 * config.json */

static int json_int(json_t *cfg, const char *key, int dflt, int lo, int *out, char **errp)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        if (dflt == INT32_MIN)
            return err_set(errp, "config.json: missing '%s'", key);
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > (1 << 30))
        return err_set(errp, "config.json: '%s' must be an integer >= %d", key, lo);
    *out = (int)json_integer_value(v);
    return 0;
}

static int json_num(json_t *obj, const char *key, double dflt, double *out, char **errp)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (isnan(dflt))
            return err_set(errp, "config.json: missing '%s'", key);
        *out = dflt;
        return 0;
    }
    if (!json_is_number(v))
        return err_set(errp, "config.json: '%s' must be a number", key);
    *out = json_number_value(v);
    return 0;
}

/* model_type (or architectures[0]) must name a Llama-family decoder. */
static int config_arch(json_t *cfg, llama_config *c, char **errp)
{
    static const char *const types[] = { "llama", "mistral", "qwen2" };
    static const char *const archs[] = { "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM" };
    const char *mt = json_string_value(json_object_get(cfg, "model_type"));
    const char *arch = json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0));
    for (int i = 0; i < 3; i++)
        if ((mt && !strcmp(mt, types[i])) || (!mt && arch && !strcmp(arch, archs[i]))) {
            snprintf(c->model_type, sizeof c->model_type, "%s", types[i]);
            return 0;
        }
    return err_set(errp, "config.json: unsupported architecture '%s' (supported: llama, mistral, qwen2)",
                mt ? mt : arch ? arch : "(none)");
}

static int config_rope_scaling(json_t *cfg, llama_model *m, char **errp)
{
    json_t *rs = json_object_get(cfg, "rope_scaling");
    if (!rs || json_is_null(rs))
        return 0;
    if (!json_is_object(rs))
        return err_set(errp, "config.json: 'rope_scaling' must be an object or null");
    const char *type = json_string_value(json_object_get(rs, "rope_type"));
    if (!type)
        type = json_string_value(json_object_get(rs, "type"));
    if (!type || !strcmp(type, "default"))
        return 0;
    if (json_num(rs, "factor", NAN, &m->rope_factor, errp) < 0)
        return -1;
    if (!(m->rope_factor > 0))
        return err_set(errp, "config.json: rope_scaling factor must be > 0");
    if (!strcmp(type, "linear")) {
        m->rope_kind = 1;
        return 0;
    }
    if (!strcmp(type, "llama3")) {
        m->rope_kind = 2;
        if (json_num(rs, "low_freq_factor", NAN, &m->rope_low, errp) < 0 ||
            json_num(rs, "high_freq_factor", NAN, &m->rope_high, errp) < 0 ||
            json_num(rs, "original_max_position_embeddings", NAN, &m->rope_orig, errp) < 0)
            return -1;
        if (!(m->rope_high > m->rope_low) || !(m->rope_orig > 0))
            return err_set(errp, "config.json: rope_scaling llama3: need high_freq_factor > low_freq_factor");
        return 0;
    }
    return err_set(errp, "config.json: unsupported rope_scaling type '%s' (supported: linear, llama3)", type);
}

static int config_parse(const char *text, size_t len, llama_model *m, char **errp)
{
    json_error_t je;
    json_t *cfg = json_loadb(text, len, 0, &je);
    if (!cfg || !json_is_object(cfg)) {
        json_decref(cfg);
        return err_set(errp, "config.json: invalid JSON (line %d: %s)", je.line, je.text);
    }
    llama_config *c = &m->cfg;
    int rc = -1;
    const char *act = json_string_value(json_object_get(cfg, "hidden_act"));
    double eps = 1e-6, theta = 10000;
    json_t *tie = json_object_get(cfg, "tie_word_embeddings");
    if (config_arch(cfg, c, errp) < 0 ||
        json_int(cfg, "num_hidden_layers", INT32_MIN, 1, &c->n_layers, errp) < 0 ||
        json_int(cfg, "hidden_size", INT32_MIN, 1, &c->dim, errp) < 0 ||
        json_int(cfg, "intermediate_size", INT32_MIN, 1, &c->hidden, errp) < 0 ||
        json_int(cfg, "num_attention_heads", INT32_MIN, 1, &c->n_heads, errp) < 0 ||
        json_int(cfg, "num_key_value_heads", c->n_heads, 1, &c->n_kv_heads, errp) < 0 ||
        json_int(cfg, "vocab_size", INT32_MIN, 1, &c->vocab, errp) < 0 ||
        json_int(cfg, "max_position_embeddings", 2048, 1, &c->max_pos, errp) < 0 ||
        json_int(cfg, "head_dim", c->dim / c->n_heads, 2, &c->head_dim, errp) < 0 ||
        json_int(cfg, "bos_token_id", -1, -1, &c->bos, errp) < 0 ||
        json_int(cfg, "eos_token_id", -1, -1, &c->eos, errp) < 0 ||
        json_num(cfg, "rms_norm_eps", 1e-6, &eps, errp) < 0 ||
        json_num(cfg, "rope_theta", 10000, &theta, errp) < 0 ||
        config_rope_scaling(cfg, m, errp) < 0)
        goto out;
    if (c->n_layers > 4096) {     /* before anything is sized by it (largest real models: ~200) */
        err_set(errp, "config.json: num_hidden_layers %d is not a plausible model", c->n_layers);
        goto out;
    }
    if (act && strcmp(act, "silu")) {
        err_set(errp, "config.json: unsupported hidden_act '%s' (only silu)", act);
        goto out;
    }
    if (c->n_heads % c->n_kv_heads) {
        err_set(errp, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d",
             c->n_heads, c->n_kv_heads);
        goto out;
    }
    if (c->head_dim % 2 || c->head_dim == 0) {
        err_set(errp, "config.json: head dimension %d must be even", c->head_dim);
        goto out;
    }
    /* every product the engine forms in int: q/kv widths (n_heads * head_dim),
     * a layer's weights (dim * width, dim * intermediate), the head (vocab * dim).
     * Found by fuzz_config: 575555555 heads of head_dim 6. */
    if ((int64_t)c->n_heads * c->head_dim > INT32_MAX / 2 ||
        (int64_t)c->dim * ((int64_t)c->n_heads * c->head_dim) > INT32_MAX ||
        (int64_t)c->dim * c->hidden > INT32_MAX || (int64_t)c->vocab * c->dim > INT32_MAX) {
        err_set(errp, "config.json: sizes too large (hidden %d, intermediate %d, %d heads of %d, vocab %d): "
                "a matrix would exceed 2^31 elements", c->dim, c->hidden, c->n_heads, c->head_dim, c->vocab);
        goto out;
    }
    json_t *sw = json_object_get(cfg, "sliding_window");
    json_t *use_sw = json_object_get(cfg, "use_sliding_window");
    if (json_is_integer(sw) && json_integer_value(sw) > 0 && !json_is_false(use_sw))
        c->sliding_window = (int)json_integer_value(sw);
    c->eps = (float)eps;
    c->rope_theta = theta;
    m->attn_bias = json_is_true(json_object_get(cfg, "attention_bias"));
    m->mlp_bias = json_is_true(json_object_get(cfg, "mlp_bias"));
    /* transformers' LlamaConfig/MistralConfig/Qwen2Config default to untied */
    c->tied = json_is_true(tie);
    rc = 0;
out:
    json_decref(cfg);
    return rc;
}

/* ------------------------------------------------------------------------
 * Weights */

static void shape_str(char *buf, size_t n, const int64_t *shape, int ndim)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

/* Does shape[0..ndim) equal [d0, d1] (d1 = 0: [d0])? 0, or -1 + *errp. */
static int shape_check(const char *name, const int64_t *shape, int ndim, int64_t d0, int64_t d1,
                       char **errp)
{
    int64_t want[2] = { d0, d1 };
    int wdim = d1 ? 2 : 1;
    if (ndim == wdim && shape[0] == d0 && (wdim == 1 || shape[1] == d1))
        return 0;
    char have[128], exp[64];
    shape_str(have, sizeof have, shape, ndim);
    shape_str(exp, sizeof exp, want, wdim);
    return err_set(errp, "'%s' has shape %s but config.json implies %s", name, have, exp);
}

/* Fetch `name` with the expected shape (d1 = 0: 1-D). optional: absent -> 0. */
static int weight_get(llama_get_fn get, void *ctx, const char *name, int64_t d0, int64_t d1,
                      int optional, float **out, char **errp)
{
    int64_t shape[QS_MAX_DIMS];
    int ndim = 0;
    float *data = NULL;
    char *e = NULL;
    int r = get(ctx, name, &data, shape, &ndim, &e);
    if (r < 0)
        return e ? (*errp = e, -1) : err_set(errp, "%s: cannot read", name);
    if (r == 0)
        return optional ? 0 : err_set(errp, "missing tensor '%s'", name);
    if (shape_check(name, shape, ndim, d0, d1, errp) < 0) {
        free(data);
        return -1;
    }
    *out = data;
    return 1;
}

/* One tensor a layer needs: name, expected shape (d1 = 0: 1-D), where it goes. */
typedef struct {
    char    name[128];
    int64_t d0, d1;
    int     optional;
    float **dst;
} wspec;

enum { LAYER_SPECS = 2 + 2 * LIN_COUNT };

/* Names and sizes of layer l's linears (valid before any weight is loaded). */
static void layer_init(llama_model *m, int l)
{
    const llama_config *c = &m->cfg;
    int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    const int dims[LIN_COUNT][2] = {
        { c->dim, qd }, { c->dim, kvd }, { c->dim, kvd }, { qd, c->dim },
        { c->dim, c->hidden }, { c->dim, c->hidden }, { c->hidden, c->dim },
    };
    for (int i = 0; i < LIN_COUNT; i++) {
        linear *li = &m->layers[l].lin[i];
        li->din = dims[i][0];
        li->dout = dims[i][1];
        snprintf(li->name, sizeof li->name, "model.layers.%d.%s.weight", l, lin_names[i]);
    }
}

/* The tensors of layer l in load order: the two norms, then each linear's
 * weight and optional bias. Fills sp[LAYER_SPECS]. */
static void layer_specs(llama_model *m, int l, wspec *sp)
{
    const llama_config *c = &m->cfg;
    layer *L = &m->layers[l];
    snprintf(sp[0].name, sizeof sp[0].name, "model.layers.%d.input_layernorm.weight", l);
    snprintf(sp[1].name, sizeof sp[1].name, "model.layers.%d.post_attention_layernorm.weight", l);
    sp[0].d0 = sp[1].d0 = c->dim;
    sp[0].d1 = sp[1].d1 = 0;
    sp[0].optional = sp[1].optional = 0;
    sp[0].dst = &L->attn_norm;
    sp[1].dst = &L->ffn_norm;
    for (int i = 0; i < LIN_COUNT; i++) {
        linear *li = &L->lin[i];
        wspec *w = &sp[2 + 2 * i], *b = w + 1;
        snprintf(w->name, sizeof w->name, "%s", li->name);
        w->d0 = li->dout;
        w->d1 = li->din;
        w->optional = 0;
        w->dst = &li->w;
        snprintf(b->name, sizeof b->name, "model.layers.%d.%s.bias", l, lin_names[i]);
        b->d0 = li->dout;
        b->d1 = 0;
        b->optional = 1;
        b->dst = &li->b;
    }
}

/* Should a streamed model look for optional tensor sp (the bias of linear
 * lin)? The source's list says, when it has one; else (a stream without a
 * manifest, where looking for an absent tensor would read to the end) the
 * config's rule as in transformers: Qwen2 has q/k/v biases, Llama
 * attention_bias q/k/v/o and mlp_bias gate/up/down, Mistral none. */
static int bias_expected(const llama_model *m, const wspec *sp, int lin)
{
    if (!m->streamed)
        return 1;
    int64_t shape[QS_MAX_DIMS];
    int ndim, r = m->ws.info ? m->ws.info(m->ws.ctx, sp->name, shape, &ndim) : -1;
    if (r >= 0)
        return r;
    if (!strcmp(m->cfg.model_type, "qwen2"))
        return lin <= LIN_V;
    return lin <= LIN_O ? m->attn_bias : m->mlp_bias;
}

static int layer_load(llama_model *m, int l, llama_get_fn get, void *ctx, char **errp)
{
    wspec sp[LAYER_SPECS];
    layer_specs(m, l, sp);
    for (int i = 0; i < LAYER_SPECS; i++)
        if ((!sp[i].optional || bias_expected(m, &sp[i], (i - 2) / 2)) && weight_get(get, ctx, sp[i].name, sp[i].d0, sp[i].d1, sp[i].optional, sp[i].dst, errp) < 0)
            return -1;
    if (m->layers[l].lin[LIN_Q].b)
        m->cfg.qkv_bias = 1;
    return 0;
}

static void layer_free(layer *L)
{
    free(L->attn_norm);
    free(L->ffn_norm);
    L->attn_norm = L->ffn_norm = NULL;
    for (int i = 0; i < LIN_COUNT; i++) {
        free(L->lin[i].w);
        free(L->lin[i].b);
        L->lin[i].w = L->lin[i].b = NULL;
    }
}

/* A model with its config parsed and every layer's linears named, no weights. */
static llama_model *model_new(const char *config_json, size_t len, char **errp)
{
    llama_model *m = calloc(1, sizeof *m);
    if (!m) {
        err_set(errp, "out of memory");
        return NULL;
    }
    m->nthreads = 1;
    (void)kern_have_avx2();     /* settle the dispatch before any thread runs */
    if (config_parse(config_json, len, m, errp) < 0)
        goto err;
    const llama_config *c = &m->cfg;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        err_set(errp, "out of memory");
        goto err;
    }
    for (int l = 0; l < c->n_layers; l++)
        layer_init(m, l);
    m->head.din = c->dim;
    m->head.dout = c->vocab;
    snprintf(m->head.name, sizeof m->head.name, "lm_head.weight");
    return m;
err:
    llama_free(m);
    return NULL;
}

llama_model *llama_load(const char *config_json, size_t len, llama_get_fn get, void *ctx,
                        char **errp)
{
    llama_model *m = model_new(config_json, len, errp);
    if (!m)
        return NULL;
    const llama_config *c = &m->cfg;
    if (weight_get(get, ctx, "model.embed_tokens.weight", c->vocab, c->dim, 0, &m->embed, errp) < 0)
        goto err;
    for (int l = 0; l < c->n_layers; l++)
        if (layer_load(m, l, get, ctx, errp) < 0)
            goto err;
    if (weight_get(get, ctx, "model.norm.weight", c->dim, 0, 0, &m->final_norm, errp) < 0)
        goto err;
    if (c->tied)
        m->head.w = m->embed;
    else if (weight_get(get, ctx, "lm_head.weight", c->vocab, c->dim, 0, &m->head.w, errp) < 0)
        goto err;
    /* a layer beyond num_hidden_layers means the config is not this model's */
    char name[96];
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", c->n_layers);
    float *extra = NULL;
    int r = weight_get(get, ctx, name, c->dim, 0, 1, &extra, errp);
    free(extra);
    if (r < 0)
        goto err;
    if (r > 0) {
        err_set(errp, "checkpoint has more layers than config.json's num_hidden_layers %d", c->n_layers);
        goto err;
    }
    return m;
err:
    llama_free(m);
    return NULL;
}

static void pool_free(pool *p);

void llama_free(llama_model *m)
{
    if (!m)
        return;
    pool_free(m->pool);
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++)
        layer_free(&m->layers[l]);
    free(m->layers);
    if (m->streamed && m->ws.close)
        m->ws.close(m->ws.ctx);
    if (m->head.w != m->embed)
        free(m->head.w);
    free(m->embed);
    free(m->final_norm);
    free(m);
}

const llama_config *llama_model_config(const llama_model *m) { return &m->cfg; }

void llama_set_hook(llama_model *m, llama_hook_fn hook, void *ctx)
{
    m->hook = hook;
    m->hook_ctx = ctx;
}

/* ------------------------------------------------------------------------
 * Thread pool: pool_run(fn) calls fn(arg, tid, nth) once for every tid in
 * [0, nth), tid 0 on the caller, and returns when all are done. */

static void *pool_worker(void *arg)
{
    pool *p = ((void **)arg)[0];
    int tid = (int)(intptr_t)((void **)arg)[1];
    free(arg);
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->gen == seen && !p->quit)
            pthread_cond_wait(&p->start, &p->mu);
        if (p->quit) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->gen;
        void (*fn)(void *, int, int) = p->fn;
        void *a = p->arg;
        pthread_mutex_unlock(&p->mu);
        fn(a, tid, p->n);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0)
            pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

static pool *pool_new(int n)
{
    pool *p = calloc(1, sizeof *p);
    if (!p || !(p->th = calloc((size_t)n, sizeof *p->th))) {
        free(p);
        return NULL;
    }
    p->n = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < n; i++) {
        void **arg = malloc(2 * sizeof *arg);
        if (!arg)
            break;
        arg[0] = p;
        arg[1] = (void *)(intptr_t)i;
        if (pthread_create(&p->th[i], NULL, pool_worker, arg)) {
            free(arg);
            break;
        }
        p->n = i + 1;
    }
    return p;
}

static void pool_free(pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p->th);
    free(p);
}

static void pool_run(llama_model *m, void (*fn)(void *, int, int), void *arg, int parallel)
{
    pool *p = m->pool;
    if (!parallel || !p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->pending = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n);
    pthread_mutex_lock(&p->mu);
    while (p->pending)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void llama_set_threads(llama_model *m, int n)
{
    if (n < 1)
        n = 1;
    if (n == m->nthreads)
        return;
    pool_free(m->pool);
    m->pool = NULL;
    m->nthreads = n;
}

/* ------------------------------------------------------------------------
 * State */

/* HF inverse frequencies theta^(-2i/d), adjusted by rope_scaling
 * (modeling_rope_utils.py: linear divides by factor; llama3 keeps high
 * frequencies, divides low ones by factor and interpolates between). */
static double rope_inv_freq(const llama_model *m, int i)
{
    const llama_config *c = &m->cfg;
    double f = 1.0 / pow(c->rope_theta, (2.0 * i) / c->head_dim);
    if (m->rope_kind == 1)
        return f / m->rope_factor;
    if (m->rope_kind == 2) {
        double low_wl = m->rope_orig / m->rope_low, high_wl = m->rope_orig / m->rope_high;
        double wl = 2 * M_PI / f;
        if (wl < high_wl)
            return f;
        if (wl > low_wl)
            return f / m->rope_factor;
        double smooth = (m->rope_orig / wl - m->rope_low) / (m->rope_high - m->rope_low);
        return (1 - smooth) * f / m->rope_factor + smooth * f;
    }
    return f;
}

static void *xcalloc(size_t n, size_t sz, int *bad)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p)
        *bad = 1;
    return p;
}

/* A state whose KV cache holds cache_layers layers (n_layers for llama_eval,
 * 1 for a batch, which runs one layer at a time). */
static llama_state *state_new(const llama_model *m, int ctx, int max_batch, int cache_layers,
                              char **errp)
{
    const llama_config *c = &m->cfg;
    if (ctx < 1 || max_batch < 1 || max_batch > ctx) {
        err_set(errp, "bad context %d / batch %d", ctx, max_batch);
        return NULL;
    }
    llama_state *s = calloc(1, sizeof *s);
    if (!s) {
        err_set(errp, "out of memory");
        return NULL;
    }
    int bad = 0, half = c->head_dim / 2;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t B = (size_t)max_batch, wide = qd > (size_t)c->dim ? qd : (size_t)c->dim;
    s->ctx = ctx;
    s->max_batch = max_batch;
    s->kvd = (int)kvd;
    s->width = (int)((size_t)c->dim * 2 + wide + qd + 2 * kvd + 2 * (size_t)c->hidden);
    s->kcache = xcalloc((size_t)cache_layers * ctx * kvd, sizeof(float), &bad);
    s->vcache = xcalloc((size_t)cache_layers * ctx * kvd, sizeof(float), &bad);
    s->rope_cos = xcalloc((size_t)ctx * half, sizeof(float), &bad);
    s->rope_sin = xcalloc((size_t)ctx * half, sizeof(float), &bad);
    s->x = xcalloc(B * c->dim, sizeof(float), &bad);
    s->xb = xcalloc(B * wide, sizeof(float), &bad);
    s->q = xcalloc(B * qd, sizeof(float), &bad);
    s->k = xcalloc(B * kvd, sizeof(float), &bad);
    s->v = xcalloc(B * kvd, sizeof(float), &bad);
    s->g = xcalloc(B * c->hidden, sizeof(float), &bad);
    s->u = xcalloc(B * c->hidden, sizeof(float), &bad);
    s->y = xcalloc(B * c->dim, sizeof(float), &bad);
    if (bad) {
        llama_state_free(s);
        err_set(errp, "out of memory for a context of %d tokens", ctx);
        return NULL;
    }
    // cos/sin of position * inv_freq, computed in double
    for (int i = 0; i < half; i++) {
        double f = rope_inv_freq(m, i);
        for (int p = 0; p < ctx; p++) {
            s->rope_cos[(size_t)p * half + i] = (float)cos(p * f);
            s->rope_sin[(size_t)p * half + i] = (float)sin(p * f);
        }
    }
    return s;
}

llama_state *llama_state_new(const llama_model *m, int ctx, int max_batch, char **errp)
{
    return state_new(m, ctx, max_batch, m->cfg.n_layers, errp);
}

void llama_state_reset(llama_state *s) { s->pos = 0; }
int  llama_state_pos(const llama_state *s) { return s->pos; }

void llama_state_free(llama_state *s)
{
    if (!s)
        return;
    free(s->kcache); free(s->vcache); free(s->rope_cos); free(s->rope_sin);
    free(s->x); free(s->xb); free(s->q); free(s->k); free(s->v);
    free(s->g); free(s->u); free(s->y); free(s->scores);
    free(s);
}

/* ------------------------------------------------------------------------
 * Forward-pass blocks */

/* out = x / sqrt(mean(x²) + eps) * w, per row; x, out: (n, d); w: (d) */
static void rmsnorm(float *out, const float *x, const float *w, int n, int d, float eps)
{
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * d;
        float *o = out + (size_t)t * d;
        // mean of squares, in double
        double ss = 0;
        for (int i = 0; i < d; i++)
            ss += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(ss / d + eps));
        // normalize and scale
        for (int i = 0; i < d; i++)
            o[i] = w[i] * (xr[i] * inv);
    }
}

/* HF rotate-half: v[i], v[i+h] -> v[i] cos - v[i+h] sin, v[i+h] cos + v[i] sin.
 * v: (n, nheads, hd) for tokens at positions pos0..pos0+n-1. */
static void rope(const llama_state *s, float *v, int n, int nheads, int hd, int pos0)
{
    int half = hd / 2;
    for (int t = 0; t < n; t++) {
        const float *cs = s->rope_cos + (size_t)(pos0 + t) * half;
        const float *sn = s->rope_sin + (size_t)(pos0 + t) * half;
        for (int h = 0; h < nheads; h++) {
            float *r = v + ((size_t)t * nheads + h) * hd;
            for (int i = 0; i < half; i++) {
                float a = r[i], b = r[i + half];
                r[i] = a * cs[i] - b * sn[i];
                r[i + half] = b * cs[i] + a * sn[i];
            }
        }
    }
}

typedef struct {
    float *y;
    const float *x;
    const linear *li;
    int n;
} matmul_job;

static void matmul_worker(void *arg, int tid, int nth)
{
    matmul_job *j = arg;
    int dout = j->li->dout;
    int o0 = (int)((int64_t)dout * tid / nth), o1 = (int)((int64_t)dout * (tid + 1) / nth);
    kern_matmul(j->y, j->x, j->li->w, j->li->b, j->n, j->li->din, dout, o0, o1);
}

/* y (n, dout) = x (n, din) Wᵀ + b, output rows split among the threads */
static void linear_run(llama_model *m, const linear *li, float *y, const float *x, int n)
{
    matmul_job j = { y, x, li, n };
    double flops = (double)n * li->din * li->dout;
    pool_run(m, matmul_worker, &j, flops > 1e5);
}

typedef struct {
    llama_model *m;
    llama_state *s;
    int layer, n;               /* layer: of the KV cache */
    float *out;                 /* (n, q_dim) */
} attn_job;

/* Causal attention of one query head at one position over the cache. */
static void attn_one(const attn_job *j, int h, int t, float *sc)
{
    const llama_config *c = &j->m->cfg;
    const llama_state *s = j->s;
    int hd = c->head_dim, kvd = c->n_kv_heads * hd;
    int kvh = h / (c->n_heads / c->n_kv_heads);
    int p = s->pos + t;
    int lo = c->sliding_window && p >= c->sliding_window ? p - c->sliding_window + 1 : 0;
    const float *q = s->q + ((size_t)t * c->n_heads + h) * hd;
    const float *kc = s->kcache + (size_t)j->layer * s->ctx * kvd + kvh * hd;
    const float *vc = s->vcache + (size_t)j->layer * s->ctx * kvd + kvh * hd;
    float scale = (float)(1.0 / sqrt((double)hd));
    // scores q·k / sqrt(hd), with their max for a stable softmax
    float mx = -INFINITY;
    for (int k = lo; k <= p; k++) {
        sc[k] = kern_dot(q, kc + (size_t)k * kvd, hd) * scale;
        if (sc[k] > mx)
            mx = sc[k];
    }
    double sum = 0;
    for (int k = lo; k <= p; k++) {
        sc[k] = expf(sc[k] - mx);
        sum += sc[k];
    }
    // weighted sum of the values
    float inv = (float)(1.0 / sum);
    float *o = j->out + ((size_t)t * c->n_heads + h) * hd;
    memset(o, 0, (size_t)hd * sizeof *o);
    for (int k = lo; k <= p; k++)
        kern_axpy(o, sc[k] * inv, vc + (size_t)k * kvd, hd);
}

static void attn_worker(void *arg, int tid, int nth)
{
    attn_job *j = arg;
    int nh = j->m->cfg.n_heads;
    int64_t items = (int64_t)nh * j->n;
    float *sc = j->s->scores + (size_t)tid * j->s->ctx;
    for (int64_t i = items * tid / nth; i < items * (tid + 1) / nth; i++)
        attn_one(j, (int)(i % nh), (int)(i / nh), sc);
}

static int hook_call(llama_model *m, const linear *li, int nl, const float *x, int n, char **errp)
{
    if (!m->hook)
        return 0;
    const char *names[LIN_COUNT];
    for (int i = 0; i < nl; i++)
        names[i] = li[i].name;
    char *e = NULL;
    if (m->hook(m->hook_ctx, names, nl, x, n, li[0].din, &e) < 0)
        return e ? (*errp = e, -1) : err_set(errp, "calibration hook failed");
    return 0;
}

/* One decoder layer L on the residual stream s->x (n tokens), its keys and
 * values in layer l of the state's KV cache. */
static int layer_forward(llama_model *m, llama_state *s, const layer *L, int l, int n, char **errp)
{
    const llama_config *c = &m->cfg;
    int hd = c->head_dim, kvd = c->n_kv_heads * hd, dim = c->dim;
    // attention: norm, q/k/v, rotary, cache, attend, o_proj
    rmsnorm(s->xb, s->x, L->attn_norm, n, dim, c->eps);
    if (hook_call(m, &L->lin[LIN_Q], 3, s->xb, n, errp) < 0)
        return -1;
    linear_run(m, &L->lin[LIN_Q], s->q, s->xb, n);
    linear_run(m, &L->lin[LIN_K], s->k, s->xb, n);
    linear_run(m, &L->lin[LIN_V], s->v, s->xb, n);
    rope(s, s->q, n, c->n_heads, hd, s->pos);
    rope(s, s->k, n, c->n_kv_heads, hd, s->pos);
    size_t base = ((size_t)l * s->ctx + s->pos) * kvd;
    memcpy(s->kcache + base, s->k, (size_t)n * kvd * sizeof(float));
    memcpy(s->vcache + base, s->v, (size_t)n * kvd * sizeof(float));
    attn_job aj = { m, s, l, n, s->xb };
    pool_run(m, attn_worker, &aj, 1);
    if (hook_call(m, &L->lin[LIN_O], 1, s->xb, n, errp) < 0)
        return -1;
    linear_run(m, &L->lin[LIN_O], s->y, s->xb, n);
    for (size_t i = 0; i < (size_t)n * dim; i++)
        s->x[i] += s->y[i];
    // MLP: norm, silu(gate) * up, down_proj
    rmsnorm(s->xb, s->x, L->ffn_norm, n, dim, c->eps);
    if (hook_call(m, &L->lin[LIN_GATE], 2, s->xb, n, errp) < 0)
        return -1;
    linear_run(m, &L->lin[LIN_GATE], s->g, s->xb, n);
    linear_run(m, &L->lin[LIN_UP], s->u, s->xb, n);
    for (size_t i = 0; i < (size_t)n * c->hidden; i++)
        s->g[i] = s->g[i] / (1.0f + expf(-s->g[i])) * s->u[i];
    if (hook_call(m, &L->lin[LIN_DOWN], 1, s->g, n, errp) < 0)
        return -1;
    linear_run(m, &L->lin[LIN_DOWN], s->y, s->g, n);
    for (size_t i = 0; i < (size_t)n * dim; i++)
        s->x[i] += s->y[i];
    return 0;
}

static int state_prepare(llama_model *m, llama_state *s, char **errp)
{
    if (m->nthreads > 1 && !m->pool && !(m->pool = pool_new(m->nthreads)))
        return err_set(errp, "cannot start %d threads", m->nthreads);
    int nth = m->pool ? m->pool->n : 1;
    if (s->nscores < nth) {
        float *sc = realloc(s->scores, (size_t)nth * s->ctx * sizeof *sc);
        if (!sc)
            return err_set(errp, "out of memory");
        s->scores = sc;
        s->nscores = nth;
    }
    return 0;
}

int llama_eval(llama_model *m, llama_state *s, const uint32_t *tokens, int n,
               float *logits, int last_only, char **errp)
{
    const llama_config *c = &m->cfg;
    if (m->streamed)
        return err_set(errp, "the model is layer-streamed: it runs only batches of windows (llama_batch_*)");
    if (n < 1 || n > s->max_batch)
        return err_set(errp, "batch of %d tokens (1..%d allowed)", n, s->max_batch);
    if (s->pos + n > s->ctx)
        return err_set(errp, "context full: %d + %d tokens > %d", s->pos, n, s->ctx);
    // bad ids are refused before the worker threads start
    for (int t = 0; t < n; t++)
        if (tokens[t] >= (uint32_t)c->vocab)
            return err_set(errp, "token id %u outside the vocabulary (%d)", tokens[t], c->vocab);
    if (state_prepare(m, s, errp) < 0)
        return -1;
    // embedding lookup
    for (int t = 0; t < n; t++) {
        memcpy(s->x + (size_t)t * c->dim, m->embed + (size_t)tokens[t] * c->dim,
               (size_t)c->dim * sizeof(float));
    }
    for (int l = 0; l < c->n_layers; l++)
        if (layer_forward(m, s, &m->layers[l], l, n, errp) < 0)
            return -1;
    s->pos += n;
    // final norm and head (only the last row if asked)
    int first = last_only ? n - 1 : 0, rows = n - first;
    const float *xr = s->x + (size_t)first * c->dim;
    rmsnorm(s->xb, xr, m->final_norm, rows, c->dim, c->eps);
    if (m->hook && !c->tied && hook_call(m, &m->head, 1, s->xb, rows, errp) < 0)
        return -1;
    if (logits)
        linear_run(m, &m->head, logits, s->xb, rows);
    return 0;
}

/* ------------------------------------------------------------------------
 * Linear inputs and batches of windows (layer-major evaluation) */

int llama_inputs(const llama_model *m, llama_input_fn fn, void *ctx, char **errp)
{
    static const int groups[4][2] = { { LIN_Q, 3 }, { LIN_O, 1 }, { LIN_GATE, 2 }, { LIN_DOWN, 1 } };
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int g = 0; g < 4; g++) {
            const linear *li = &m->layers[l].lin[groups[g][0]];
            const char *names[3];
            for (int i = 0; i < groups[g][1]; i++)
                names[i] = li[i].name;
            if (fn(ctx, names, groups[g][1], li->din, errp) < 0)
                return -1;
        }
    if (!m->cfg.tied) {
        const char *names[1] = { m->head.name };
        if (fn(ctx, names, 1, m->head.din, errp) < 0)
            return -1;
    }
    return 0;
}

struct llama_batch {
    int nw, dim;
    int *row, *len;             /* window w: rows row[w] .. row[w]+len[w]-1 of x */
    size_t total;               /* Σ len */
    float *x;                   /* (total, dim) hidden states */
    int layers_done;
    llama_state *s;             /* one layer of KV cache, batches up to the longest window */
};

void llama_batch_free(llama_batch *b)
{
    if (!b)
        return;
    free(b->row);
    free(b->len);
    free(b->x);
    llama_state_free(b->s);
    free(b);
}

size_t llama_batch_bytes(const llama_batch *b)
{
    if (!b)
        return 0;
    const llama_state *s = b->s;
    size_t scratch = 0;
    if (s) {
        // what state_new allocated, from the sizes it keeps
        size_t kv = (size_t)s->ctx, B = (size_t)s->max_batch;
        scratch = kv * (size_t)s->kvd * 2 * sizeof(float) + B * (size_t)s->width * sizeof(float);
    }
    return b->total * (size_t)b->dim * sizeof(float) + scratch;
}

/* A streamed model's tensor `name` with the expected shape (d1 = 0: 1-D). */
static int stream_get(llama_model *m, const char *name, int64_t d0, int64_t d1, float **out,
                      char **errp)
{
    return weight_get(m->ws.get, m->ws.ctx, name, d0, d1, 0, out, errp) < 0 ? -1 : 0;
}

/* x rows of each window = the embedding rows of its tokens. */
static int batch_embed(llama_model *m, llama_batch *b, const uint32_t *tokens, const int *off,
                       char **errp)
{
    const llama_config *c = &m->cfg;
    for (int w = 0; w < b->nw; w++)
        for (int t = 0; t < b->len[w]; t++)
            if (tokens[off[w] + t] >= (uint32_t)c->vocab)
                return err_set(errp, "token id %u outside the vocabulary (%d)", tokens[off[w] + t], c->vocab);
    float *own = NULL;
    if (m->streamed && stream_get(m, "model.embed_tokens.weight", c->vocab, c->dim, &own, errp) < 0)
        return -1;
    const float *emb = own ? own : m->embed;
    for (int w = 0; w < b->nw; w++)
        for (int t = 0; t < b->len[w]; t++)
            memcpy(b->x + ((size_t)b->row[w] + t) * c->dim, emb + (size_t)tokens[off[w] + t] * c->dim,
                   (size_t)c->dim * sizeof(float));
    free(own);
    return 0;
}

llama_batch *llama_batch_new(llama_model *m, const uint32_t *tokens, const int *off,
                             const int *len, int nw, char **errp)
{
    const llama_config *c = &m->cfg;
    if (nw < 1) {
        err_set(errp, "no windows to evaluate");
        return NULL;
    }
    llama_batch *b = calloc(1, sizeof *b);
    if (!b || !(b->row = calloc((size_t)nw, sizeof *b->row)) || !(b->len = calloc((size_t)nw, sizeof *b->len))) {
        llama_batch_free(b);
        err_set(errp, "out of memory");
        return NULL;
    }
    b->nw = nw;
    b->dim = c->dim;
    int maxlen = 0;
    for (int w = 0; w < nw; w++) {
        if (len[w] < 1 || off[w] < 0) {
            llama_batch_free(b);
            err_set(errp, "window %d: bad offset %d / length %d", w, off[w], len[w]);
            return NULL;
        }
        b->row[w] = (int)b->total;
        b->len[w] = len[w];
        b->total += (size_t)len[w];
        if (len[w] > maxlen)
            maxlen = len[w];
    }
    if (b->total > ((size_t)1 << 31) || !(b->x = malloc(b->total * (size_t)c->dim * sizeof(float)))) {
        err_set(errp, "out of memory for the hidden states of %zu tokens (%.1f MiB)", b->total,
             (double)b->total * c->dim * sizeof(float) / 1048576.0);
        llama_batch_free(b);
        return NULL;
    }
    if (!(b->s = state_new(m, maxlen, maxlen, 1, errp)) || batch_embed(m, b, tokens, off, errp) < 0) {
        llama_batch_free(b);
        return NULL;
    }
    return b;
}

/* Run every window of b through L (KV cache layer 0 of the batch's state). */
static int batch_windows(llama_model *m, llama_batch *b, const layer *L, char **errp)
{
    llama_state *s = b->s;
    float *x = s->x;
    int rc = 0;
    for (int w = 0; rc == 0 && w < b->nw; w++) {
        s->pos = 0;
        s->x = b->x + (size_t)b->row[w] * m->cfg.dim;    /* the window's rows are its residual stream */
        rc = layer_forward(m, s, L, 0, b->len[w], errp);
    }
    s->x = x;
    s->pos = 0;
    return rc;
}

int llama_batch_layer(llama_model *m, llama_batch *b, int l, char **errp)
{
    if (l != b->layers_done || l >= m->cfg.n_layers)
        return err_set(errp, "layer %d out of order (next is %d of %d)", l, b->layers_done, m->cfg.n_layers);
    if (state_prepare(m, b->s, errp) < 0)
        return -1;
    layer *L = &m->layers[l];
    if (m->streamed && layer_load(m, l, m->ws.get, m->ws.ctx, errp) < 0) {
        layer_free(L);
        return -1;
    }
    int rc = batch_windows(m, b, L, errp);
    if (m->streamed)
        layer_free(L);
    if (rc == 0)
        b->layers_done++;
    return rc;
}

/* A streamed model's final norm, and its head when logits are wanted. */
static int stream_head(llama_model *m, int want_logits, char **errp)
{
    const llama_config *c = &m->cfg;
    if (!m->final_norm && stream_get(m, "model.norm.weight", c->dim, 0, &m->final_norm, errp) < 0)
        return -1;
    if (want_logits && !m->head.w)
        return stream_get(m, c->tied ? "model.embed_tokens.weight" : "lm_head.weight", c->vocab, c->dim,
                          &m->head.w, errp);
    return 0;
}

int llama_batch_logits(llama_model *m, llama_batch *b, int w, float *logits, char **errp)
{
    const llama_config *c = &m->cfg;
    if (b->layers_done != c->n_layers)
        return err_set(errp, "logits asked after %d of %d layers", b->layers_done, c->n_layers);
    if (w < 0 || w >= b->nw)
        return err_set(errp, "window %d of %d", w, b->nw);
    if ((m->streamed && stream_head(m, logits != NULL, errp) < 0) || state_prepare(m, b->s, errp) < 0)
        return -1;
    // as the end of llama_eval: final norm, the head's hook, the head
    llama_state *s = b->s;
    int rows = b->len[w];
    rmsnorm(s->xb, b->x + (size_t)b->row[w] * c->dim, m->final_norm, rows, c->dim, c->eps);
    if (m->hook && !c->tied && hook_call(m, &m->head, 1, s->xb, rows, errp) < 0)
        return -1;
    if (logits)
        linear_run(m, &m->head, logits, s->xb, rows);
    return 0;
}

int llama_is_streamed(const llama_model *m) { return m->streamed; }

int llama_finish(llama_model *m, char **errp)
{
    return m->streamed && m->ws.finish ? m->ws.finish(m->ws.ctx, errp) : 0;
}

double llama_logsumexp(const float *logits, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += exp((double)logits[i] - mx);
    return mx + log(sum);
}

int llama_argmax(const float *logits, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

/* ------------------------------------------------------------------------
 * Weight providers */

static const char *carried_config(const qs_header *h, size_t *len, char **errp)
{
    const qs_file *f = qs_header_file(h, "config.json");
    if (!f) {
        err_set(errp, "no config.json with the weights");
        return NULL;
    }
    *len = f->len;
    return (const char *)f->data;
}

/* Decode a tensor's bytes into f32 (plain float dtypes directly, the rest
 * through dequant.h). */
static float *bytes_to_f32(const qs_tensor *t, const void *data, size_t len, char **errp)
{
    int64_t numel = qs_numel(t->ndim, t->shape);
    if (numel < 0) {
        err_set(errp, "%s: bad shape", t->name);
        return NULL;
    }
    if (t->nparts == 1 && !tensor_is_quantized(t) && dtype_traits[t->dtype].is_float &&
        t->parts[0].dtype == t->dtype) {
        if (len != (size_t)numel * dtype_size(t->dtype)) {
            err_set(errp, "%s: %zu bytes for %lld elements", t->name, len, (long long)numel);
            return NULL;
        }
        float *f = malloc((size_t)(numel ? numel : 1) * sizeof *f);
        if (!f) {
            err_set(errp, "%s: out of memory", t->name);
            return NULL;
        }
        dtype_to_f32(t->dtype, data, f, (size_t)numel);
        return f;
    }
    return tensor_to_f32(t, data, len, errp);
}

/* Tensor `name` of s as f32; use_map: take mapped bytes when the reader has
 * them (else always qsrc_read, whose pread leaves no file pages in the RSS). */
static int source_fetch(qsrc *s, int use_map, const char *name, float **data, int64_t *shape,
                        int *ndim, char **errp)
{
    int idx = qsrc_find(s, name);
    if (idx < 0)
        return 0;
    const qs_tensor *t = &s->tensors[idx];
    size_t len = (size_t)qs_tensor_nbytes(t);
    const void *p = use_map ? qsrc_map(s, idx) : NULL;
    void *buf = NULL;
    if (!p) {
        if (!(buf = malloc(len ? len : 1)))
            return err_set(errp, "%s: out of memory", name);
        if (qsrc_read(s, idx, 0, buf, len, errp) < 0) {
            free(buf);
            return -1;
        }
        p = buf;
    }
    *data = bytes_to_f32(t, p, len, errp);
    free(buf);
    if (!*data)
        return -1;
    *ndim = t->ndim;
    memcpy(shape, t->shape, (size_t)t->ndim * sizeof *shape);
    return 1;
}

static int source_get(void *ctx, const char *name, float **data, int64_t *shape, int *ndim,
                      char **errp)
{
    return source_fetch(ctx, 1, name, data, shape, ndim, errp);
}

llama_model *llama_load_source(qsrc *s, char **errp)
{
    size_t len;
    const char *cfg = carried_config(&s->header, &len, errp);
    return cfg ? llama_load(cfg, len, source_get, s, errp) : NULL;
}

typedef struct {
    int n;
    char **names;
    float **data;
    int64_t (*shape)[QS_MAX_DIMS];
    int *ndim;
} tensor_table;

static int table_get(void *ctx, const char *name, float **data, int64_t *shape, int *ndim,
                     char **errp)
{
    (void)errp;
    tensor_table *tt = ctx;
    for (int i = 0; i < tt->n; i++)
        if (tt->data[i] && !strcmp(tt->names[i], name)) {
            *data = tt->data[i];
            tt->data[i] = NULL;     /* ownership passes to the engine */
            *ndim = tt->ndim[i];
            memcpy(shape, tt->shape[i], sizeof tt->shape[i]);
            return 1;
        }
    return 0;
}

static int table_add(tensor_table *tt, const qs_tensor *t, float *f)
{
    int n = tt->n + 1;
    char **nm = realloc(tt->names, (size_t)n * sizeof *nm);
    if (nm) tt->names = nm;
    float **d = realloc(tt->data, (size_t)n * sizeof *d);
    if (d) tt->data = d;
    int64_t (*sh)[QS_MAX_DIMS] = realloc(tt->shape, (size_t)n * sizeof *sh);
    if (sh) tt->shape = sh;
    int *nd = realloc(tt->ndim, (size_t)n * sizeof *nd);
    if (nd) tt->ndim = nd;
    if (!nm || !d || !sh || !nd || !(tt->names[tt->n] = strdup(t->name)))
        return -1;
    tt->data[tt->n] = f;
    memcpy(tt->shape[tt->n], t->shape, sizeof tt->shape[0]);
    tt->ndim[tt->n] = t->ndim;
    tt->n = n;
    return 0;
}

static void table_free(tensor_table *tt)
{
    for (int i = 0; i < tt->n; i++) {
        free(tt->names[i]);
        free(tt->data[i]);
    }
    free(tt->names); free(tt->data); free(tt->shape); free(tt->ndim);
}

/* config.json of a model stream (refusing streams of another kind). */
static const char *stream_config(qs_reader *r, size_t *len, char **errp)
{
    const qs_header *h = qs_reader_header(r);
    const char *kind = json_string_value(json_object_get(h->meta, "kind"));
    if (kind && strcmp(kind, "model")) {
        err_set(errp, "stream is of kind '%s', not a model", kind);
        return NULL;
    }
    return carried_config(h, len, errp);
}

llama_model *llama_load_stream(qs_reader *r, char **errp)
{
    size_t len;
    const char *cfg = stream_config(r, &len, errp);
    if (!cfg)
        return NULL;
    tensor_table tt = { 0 };
    llama_model *m = NULL;
    const qs_tensor *t;
    int rc;
    while ((rc = qs_reader_next(r, &t)) == 1) {
        size_t n;
        void *data = qs_reader_read_all(r, &n);
        if (!data) {
            err_set(errp, "%s", qs_reader_error(r));
            goto out;
        }
        float *f = bytes_to_f32(t, data, n, errp);
        free(data);
        if (!f)
            goto out;
        if (table_add(&tt, t, f) < 0) {
            free(f);
            err_set(errp, "out of memory");
            goto out;
        }
    }
    if (rc < 0) {
        err_set(errp, "%s", qs_reader_error(r));
        goto out;
    }
    m = llama_load(cfg, len, table_get, &tt, errp);
out:
    table_free(&tt);
    return m;
}

/* Carry the metadata files that sit beside a single checkpoint file. */
static int carry_beside(qsrc *s, const char *path, char **errp)
{
    static const char *const names[] = { "config.json", "tokenizer.json", "tokenizer_config.json" };
    if (qs_header_file(&s->header, "config.json"))
        return 0;
    char *copy = strdup(path);
    if (!copy)
        return err_set(errp, "out of memory");
    const char *dir = dirname(copy);
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        FILE *f = fopen(p, "rb");
        if (!f)
            continue;
        char *buf = NULL;
        size_t len = 0, cap = 0, k;
        char tmp[65536];
        while ((k = fread(tmp, 1, sizeof tmp, f)) > 0) {
            if (len + k > cap) {
                cap = (len + k) * 2;
                char *nb = realloc(buf, cap);
                if (!nb)
                    break;
                buf = nb;
            }
            memcpy(buf + len, tmp, k);
            len += k;
        }
        int bad = ferror(f) || (len && !buf);
        fclose(f);
        if (bad || qs_header_add_file(&s->header, names[i], buf ? buf : "", len) < 0) {
            free(buf);
            free(copy);
            return err_set(errp, "%s: cannot read", p);
        }
        free(buf);
    }
    free(copy);
    return 0;
}

/* m, or NULL with e as *errp prefixed by path (readers usually name it already). */
static llama_model *open_result(llama_model *m, const char *path, char *e, char **errp)
{
    if (m)
        return m;
    if (e && !strncmp(e, path, strlen(path)))
        *errp = e;
    else {
        err_set(errp, "%s: %s", path, e ? e : "cannot load the model");
        free(e);
    }
    return NULL;
}

llama_model *llama_open(const char *path, qs_header *hdr, char **errp)
{
    int is = strcmp(path, "-") ? qs_path_is_stream(path) : 1;
    char *e = NULL;
    llama_model *m = NULL;
    if (is == 1) {
        qs_reader *r = qs_reader_open_path(path, &e);
        if (r) {
            if (hdr)
                qs_header_copy(hdr, qs_reader_header(r));
            m = llama_load_stream(r, &e);
            qs_reader_close(r);
        }
    } else {
        qsrc *s = qsrc_open(path, &e);
        if (s && carry_beside(s, path, &e) == 0) {
            if (hdr)
                qs_header_copy(hdr, &s->header);
            m = llama_load_source(s, &e);
        }
        qsrc_close(s);
    }
    return open_result(m, path, e, errp);
}

/* ------------------------------------------------------------------------
 * Layer streaming: weight sources and the streamed openers */

/* Is `name` a tensor the model reads? (What a sequential source spools.) */
static int model_uses(const llama_model *m, const char *name)
{
    if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "model.norm.weight"))
        return 1;
    if (!strcmp(name, "lm_head.weight"))
        return !m->cfg.tied;
    int l, k = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &k) != 1 || !k || l < 0 || l >= m->cfg.n_layers)
        return 0;
    const char *rest = name + k;
    if (!strcmp(rest, "input_layernorm.weight") || !strcmp(rest, "post_attention_layernorm.weight"))
        return 1;
    for (int i = 0; i < LIN_COUNT; i++) {
        size_t n = strlen(lin_names[i]);
        if (!strncmp(rest, lin_names[i], n) && (!strcmp(rest + n, ".weight") || !strcmp(rest + n, ".bias")))
            return 1;
    }
    return 0;
}

/* --- a seekable checkpoint: any order, qsrc_read */

static int source_read_get(void *ctx, const char *name, float **data, int64_t *shape, int *ndim,
                           char **errp)
{
    return source_fetch(ctx, 0, name, data, shape, ndim, errp);
}

static int source_info(void *ctx, const char *name, int64_t *shape, int *ndim)
{
    const qsrc *s = ctx;
    int i = qsrc_find(s, name);
    if (i < 0)
        return 0;
    *ndim = s->tensors[i].ndim;
    memcpy(shape, s->tensors[i].shape, (size_t)*ndim * sizeof *shape);
    return 1;
}

static void source_close(void *ctx) { qsrc_close(ctx); }

/* --- a qstream or a sequential source: its own order, early tensors spooled */

typedef struct {
    qs_tensor t;                /* header copy; name NULL once taken */
    uint64_t at, len;           /* its bytes in the spool file */
} spooled;

typedef struct {
    const llama_model *m;
    qs_reader *r;               /* a qstream, or */
    qsrc *src;                  /* a sequential source, read in list order */
    int next, cur;              /* src: next tensor to yield, the current one */
    uint64_t cur_off;           /* src: bytes of the current one read */
    int done;                   /* no more tensors */
    int fd;                     /* spool file (unlinked), -1 until needed */
    uint64_t end;               /* bytes in it */
    int n;
    spooled *e;
} seqsrc;

/* Next tensor in the source's order: 1 (*t valid until the next call), 0 at the end, -1. */
static int seq_next(seqsrc *q, const qs_tensor **t, char **errp)
{
    if (q->r) {
        int rc = qs_reader_next(q->r, t);
        return rc < 0 ? err_set(errp, "%s", qs_reader_error(q->r)) : rc;
    }
    if (q->next >= q->src->ntensors)
        return 0;
    q->cur = q->next++;
    q->cur_off = 0;
    *t = &q->src->tensors[q->cur];
    return 1;
}

/* The next n bytes of the current tensor. */
static int seq_read(seqsrc *q, void *buf, size_t n, char **errp)
{
    if (q->r)
        return qs_reader_read(q->r, buf, n) < 0 ? err_set(errp, "%s", qs_reader_error(q->r)) : 0;
    if (qsrc_read(q->src, q->cur, q->cur_off, buf, n, errp) < 0)
        return -1;
    q->cur_off += n;
    return 0;
}

static int spool_open(seqsrc *q, char **errp)
{
    const char *dir = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/qpipe-spool-XXXXXX", dir && *dir ? dir : "/tmp");
    q->fd = mkstemp(path);
    if (q->fd < 0)
        return err_set(errp, "%s: cannot create a spool file: %s", path, strerror(errno));
    unlink(path);
    return 0;
}

static int write_full(int fd, const void *buf, size_t n, uint64_t at)
{
    const char *p = buf;
    while (n) {
        ssize_t k = pwrite(fd, p, n, (off_t)at);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k; n -= (size_t)k; at += (uint64_t)k;
    }
    return 0;
}

/* Append the current tensor t to the spool: its bytes from data, or read from the source. */
static int spool_put(seqsrc *q, const qs_tensor *t, const void *data, char **errp)
{
    if (q->fd < 0 && spool_open(q, errp) < 0)
        return -1;
    spooled *ne = realloc(q->e, (size_t)(q->n + 1) * sizeof *ne);
    if (!ne)
        return err_set(errp, "out of memory");
    q->e = ne;
    spooled *e = &q->e[q->n];
    e->at = q->end;
    e->len = qs_tensor_nbytes(t);
    enum { CHUNK = 4 << 20 };
    char *buf = data ? NULL : malloc(CHUNK);
    if (!data && !buf)
        return err_set(errp, "out of memory");
    int rc = 0;
    for (uint64_t done = 0; rc == 0 && done < e->len;) {
        size_t k = e->len - done < CHUNK ? (size_t)(e->len - done) : CHUNK;
        const void *p = data ? (const char *)data + done : buf;
        if (!data && seq_read(q, buf, k, errp) < 0)
            rc = -1;
        else if (write_full(q->fd, p, k, e->at + done) < 0)
            rc = err_set(errp, "spool file: write error: %s", strerror(errno));
        done += k;
    }
    free(buf);
    if (rc == 0 && qs_tensor_copy(&e->t, t) < 0)
        rc = err_set(errp, "out of memory");
    if (rc < 0)
        return -1;
    q->end += e->len;
    q->n++;
    return 0;
}

/* The current tensor t's bytes, whole, malloc'd. */
static void *seq_read_all(seqsrc *q, const qs_tensor *t, size_t *len, char **errp)
{
    *len = (size_t)qs_tensor_nbytes(t);
    void *buf = malloc(*len ? *len : 1);
    if (!buf) {
        err_set(errp, "%s: out of memory", t->name);
        return NULL;
    }
    if (seq_read(q, buf, *len, errp) < 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static int f32_result(const qs_tensor *t, const void *bytes, size_t len, float **data, int64_t *shape,
                      int *ndim, char **errp)
{
    if (!(*data = bytes_to_f32(t, bytes, len, errp)))
        return -1;
    *ndim = t->ndim;
    memcpy(shape, t->shape, (size_t)t->ndim * sizeof *shape);
    return 1;
}

/* A spooled tensor read back; forgotten unless keep. */
static int spool_take(seqsrc *q, spooled *e, int keep, float **data, int64_t *shape, int *ndim,
                      char **errp)
{
    char *buf = malloc(e->len ? (size_t)e->len : 1);
    if (!buf)
        return err_set(errp, "%s: out of memory", e->t.name);
    for (uint64_t done = 0; done < e->len;) {
        ssize_t k = pread(q->fd, buf + done, (size_t)(e->len - done), (off_t)(e->at + done));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            free(buf);
            return err_set(errp, "spool file: read error");
        }
        done += (uint64_t)k;
    }
    int rc = f32_result(&e->t, buf, (size_t)e->len, data, shape, ndim, errp);
    free(buf);
    if (!keep)
        qs_tensor_clear(&e->t);     /* name NULL: taken */
    return rc;
}

static int seq_get(void *ctx, const char *name, float **data, int64_t *shape, int *ndim, char **errp)
{
    seqsrc *q = ctx;
    /* a tied embedding is asked for twice: keep a copy */
    int keep = q->m->cfg.tied && !strcmp(name, "model.embed_tokens.weight");
    for (int i = 0; i < q->n; i++)
        if (q->e[i].t.name && !strcmp(q->e[i].t.name, name))
            return spool_take(q, &q->e[i], keep, data, shape, ndim, errp);
    while (!q->done) {
        const qs_tensor *t;
        int rc = seq_next(q, &t, errp);
        if (rc < 0)
            return -1;
        if (rc == 0) {
            q->done = 1;
            break;
        }
        if (!strcmp(t->name, name)) {
            size_t len;
            void *bytes = seq_read_all(q, t, &len, errp);
            if (!bytes || (keep && spool_put(q, t, bytes, errp) < 0)) {
                free(bytes);
                return -1;
            }
            rc = f32_result(t, bytes, len, data, shape, ndim, errp);
            free(bytes);
            return rc;
        }
        if (model_uses(q->m, t->name) && spool_put(q, t, NULL, errp) < 0)
            return -1;
    }
    return 0;
}

/* Shape from the source's list: a sequential source's tensors, a stream's manifest. */
static int seq_info(void *ctx, const char *name, int64_t *shape, int *ndim)
{
    seqsrc *q = ctx;
    if (q->src)
        return source_info(q->src, name, shape, ndim);
    const json_t *man = qs_reader_header(q->r)->manifest;
    if (!json_array_size(man))
        return -1;
    size_t i;
    json_t *e;
    json_array_foreach(man, i, e) {
        const char *n = json_string_value(json_object_get(e, "name"));
        json_t *sh = json_object_get(e, "shape");
        if (!n || strcmp(n, name))
            continue;
        if (!json_is_array(sh) || json_array_size(sh) > QS_MAX_DIMS)
            return -1;
        *ndim = (int)json_array_size(sh);
        for (int d = 0; d < *ndim; d++)
            shape[d] = json_integer_value(json_array_get(sh, (size_t)d));
        return 1;
    }
    return 0;
}

static int seq_finish(void *ctx, char **errp)
{
    seqsrc *q = ctx;
    const qs_tensor *t;
    int rc;
    while (q->r && !q->done && (rc = qs_reader_next(q->r, &t)) != 0)
        if (rc < 0)
            return err_set(errp, "%s", qs_reader_error(q->r));
    q->done = 1;
    return 0;
}

static void seq_close(void *ctx)
{
    seqsrc *q = ctx;
    if (q->r)
        qs_reader_close(q->r);
    qsrc_close(q->src);
    if (q->fd >= 0)
        close(q->fd);
    for (int i = 0; i < q->n; i++)
        qs_tensor_clear(&q->e[i].t);
    free(q->e);
    free(q);
}

/* m takes r or src (closed with m, or here on error). */
static int seq_attach(llama_model *m, qs_reader *r, qsrc *src, char **errp)
{
    seqsrc *q = calloc(1, sizeof *q);
    if (!q) {
        if (r)
            qs_reader_close(r);
        qsrc_close(src);
        return err_set(errp, "out of memory");
    }
    q->m = m;
    q->r = r;
    q->src = src;
    q->fd = -1;
    m->ws = (wsrc){ seq_get, q, seq_info, seq_finish, seq_close };
    return 0;
}

/* --- the streamed model */

/* `name` against the source's list, when it has one. */
static int spec_check(llama_model *m, const char *name, int64_t d0, int64_t d1, int optional,
                      char **errp)
{
    int64_t shape[QS_MAX_DIMS];
    int ndim = 0;
    int r = m->ws.info(m->ws.ctx, name, shape, &ndim);
    if (r < 0)
        return 0;
    if (r == 0)
        return optional ? 0 : err_set(errp, "missing tensor '%s'", name);
    return shape_check(name, shape, ndim, d0, d1, errp) < 0 ? -1 : 1;
}

/* Every tensor the model will read, checked before any is (as llama_load does as it goes). */
static int stream_check(llama_model *m, char **errp)
{
    const llama_config *c = &m->cfg;
    if (!m->ws.info)
        return 0;
    if (spec_check(m, "model.embed_tokens.weight", c->vocab, c->dim, 0, errp) < 0)
        return -1;
    for (int l = 0; l < c->n_layers; l++) {
        wspec sp[LAYER_SPECS];
        layer_specs(m, l, sp);
        for (int i = 0; i < LAYER_SPECS; i++) {
            int r = spec_check(m, sp[i].name, sp[i].d0, sp[i].d1, sp[i].optional, errp);
            if (r < 0)
                return -1;
            if (i == 3 && r > 0)    /* q_proj.bias */
                m->cfg.qkv_bias = 1;
        }
    }
    if (spec_check(m, "model.norm.weight", c->dim, 0, 0, errp) < 0 ||
        (!c->tied && spec_check(m, "lm_head.weight", c->vocab, c->dim, 0, errp) < 0))
        return -1;
    char name[96];
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", c->n_layers);
    int64_t shape[QS_MAX_DIMS];
    int ndim;
    if (m->ws.info(m->ws.ctx, name, shape, &ndim) == 1)
        return err_set(errp, "checkpoint has more layers than config.json's num_hidden_layers %d", c->n_layers);
    return 0;
}

llama_model *llama_load_streamed(const char *config_json, size_t len, llama_get_fn get, void *ctx,
                                 char **errp)
{
    llama_model *m = model_new(config_json, len, errp);
    if (m) {
        m->streamed = 1;
        m->ws = (wsrc){ get, ctx, NULL, NULL, NULL };
    }
    return m;
}

/* A streamed model over a source (taken: closed with the model or on error). */
static llama_model *streamed_source(qsrc *s, char **errp)
{
    size_t len;
    const char *cfg = carried_config(&s->header, &len, errp);
    llama_model *m = cfg ? model_new(cfg, len, errp) : NULL;
    if (!m) {
        qsrc_close(s);
        return NULL;
    }
    m->streamed = 1;
    if (s->sequential) {
        if (seq_attach(m, NULL, s, errp) < 0)
            goto err;
    } else {
        m->ws = (wsrc){ source_read_get, s, source_info, NULL, source_close };
    }
    if (stream_check(m, errp) == 0)
        return m;
err:
    llama_free(m);
    return NULL;
}

static llama_model *streamed_reader(qs_reader *r, char **errp)
{
    size_t len;
    const char *cfg = stream_config(r, &len, errp);
    llama_model *m = cfg ? model_new(cfg, len, errp) : NULL;
    if (!m) {
        qs_reader_close(r);
        return NULL;
    }
    m->streamed = 1;
    if (seq_attach(m, r, NULL, errp) < 0 || stream_check(m, errp) < 0) {
        llama_free(m);
        return NULL;
    }
    return m;
}

llama_model *llama_open_streamed(const char *path, qs_header *hdr, char **errp)
{
    int is = strcmp(path, "-") ? qs_path_is_stream(path) : 1;
    char *e = NULL;
    llama_model *m = NULL;
    if (is == 1) {
        qs_reader *r = qs_reader_open_path(path, &e);
        if (r) {
            if (hdr)
                qs_header_copy(hdr, qs_reader_header(r));
            m = streamed_reader(r, &e);
        }
    } else {
        qsrc *s = qsrc_open(path, &e);
        if (s && carry_beside(s, path, &e) < 0) {
            qsrc_close(s);
            s = NULL;
        }
        if (s) {
            if (hdr)
                qs_header_copy(hdr, &s->header);
            m = streamed_source(s, &e);
        }
    }
    return open_result(m, path, e, errp);
}
