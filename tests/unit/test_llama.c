/* test_llama — the forward pass against fixture figures and an independent
 * float64 implementation (ref_llama.h); kernels against their _ref; errors. */
#include "testlib.h"

#include <stdint.h>
#include <string.h>

#include "dtype.h"
#include "kernels.h"
#include "llama.h"
#include "ref_llama.h"
#include "source.h"

#define STORIES "tests/data/stories260k"
#define TS3M    "tests/data/ts3m-bf16"
#define STORIES_PPL 2.50596          /* stories260k/README.md */

/* ------------------------------------------------------------------------
 * helpers */

static uint32_t *read_u32(const char *path, int *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint32_t *v = malloc((size_t)len);
    *n = (int)(fread(v, 1, (size_t)len, f) / 4);
    fclose(f);
    return v;
}

static llama_model *open_model(const char *path)
{
    char *err = NULL;
    qsrc *s = qsrc_open(path, &err);
    if (!s) { fprintf(stderr, "  %s\n", err); free(err); return NULL; }
    llama_model *m = llama_load_source(s, &err);
    if (!m) { fprintf(stderr, "  %s\n", err); free(err); }
    qsrc_close(s);
    return m;
}

/* double weights for the reference, straight from the checkpoint */
static double *src_get_d(void *ctx, const char *name)
{
    qsrc *s = ctx;
    int i = qsrc_find(s, name);
    if (i < 0) return NULL;
    const qs_tensor *t = &s->tensors[i];
    int64_t n = qs_numel(t->ndim, t->shape);
    size_t nb = (size_t)qs_tensor_nbytes(t);
    void *buf = malloc(nb);
    float *f = malloc((size_t)n * sizeof *f);
    double *d = malloc((size_t)n * sizeof *d);
    char *err = NULL;
    if (qsrc_read(s, i, 0, buf, nb, &err) < 0) { free(err); abort(); }
    dtype_to_f32(t->dtype, buf, f, (size_t)n);
    for (int64_t k = 0; k < n; k++) d[k] = f[k];
    free(buf); free(f);
    return d;
}

static ref_model *open_ref_stories(void)
{
    char *err = NULL;
    qsrc *s = qsrc_open(STORIES, &err);
    if (!s) { free(err); return NULL; }
    ref_model *r = ref_build(5, 64, 172, 8, 4, 512, 1e-5, 10000, 1, src_get_d, s);
    qsrc_close(s);
    return r;
}

/* mean NLL of tokens 1..n-1 of one window (engine) */
static double engine_window_nll(llama_model *m, const uint32_t *tok, int n, float *logits)
{
    int V = llama_model_config(m)->vocab;
    char *err = NULL;
    llama_state *s = llama_state_new(m, n, n, &err);
    if (!s || llama_eval(m, s, tok, n, logits, 0, &err) < 0) {
        fprintf(stderr, "  %s\n", err); free(err); llama_state_free(s);
        return NAN;
    }
    llama_state_free(s);
    double tot = 0;
    for (int t = 0; t + 1 < n; t++)
        tot += llama_logsumexp(logits + (size_t)t * V, V) - logits[(size_t)t * V + tok[t + 1]];
    return tot / (n - 1);
}

/* greedy decoding with the KV cache, one token per call */
static int engine_greedy(llama_model *m, const uint32_t *prompt, int np, int nnew, uint32_t *out)
{
    int V = llama_model_config(m)->vocab;
    char *err = NULL;
    llama_state *s = llama_state_new(m, np + nnew, np, &err);
    float *lg = malloc((size_t)V * sizeof *lg);
    int rc = s ? llama_eval(m, s, prompt, np, lg, 1, &err) : -1;
    for (int i = 0; rc == 0 && i < nnew; i++) {
        out[i] = (uint32_t)llama_argmax(lg, V);
        if (i + 1 < nnew) rc = llama_eval(m, s, &out[i], 1, lg, 1, &err);
    }
    if (rc < 0) { fprintf(stderr, "  %s\n", err); free(err); }
    free(lg);
    llama_state_free(s);
    return rc;
}

/* ------------------------------------------------------------------------
 * kernels */

static float fill(int i, int off) { return 0.1f + 2 * cosf((float)i * 0.37f + (float)off); }

TEST(kernels_avx2_equal_ref_bit_for_bit)
{
    if (!kern_have_avx2()) { printf("# no AVX2: skipped\n"); return; }
    static const int sizes[] = { 1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 33, 63, 67, 127 };
    enum { NS = sizeof sizes / sizeof *sizes };
    for (int a = 0; a < NS; a++) {
        int din = sizes[a];
        float x[16 * 127], w[67 * 127], b[67], y1[16 * 67], y2[16 * 67];
        for (int i = 0; i < 16 * din; i++) x[i] = fill(i, 1);
        for (int i = 0; i < 67 * din; i++) w[i] = fill(i, 2);
        for (int i = 0; i < 67; i++) b[i] = fill(i, 3);
        CHECK(kern_dot_ref(x, w, din) == kern_dot_avx2(x, w, din));
        float a1[127], a2[127];
        memcpy(a1, w, sizeof a1); memcpy(a2, w, sizeof a2);
        kern_axpy_ref(a1, 0.3f, x, din);
        kern_axpy_avx2(a2, 0.3f, x, din);
        CHECK(!memcmp(a1, a2, (size_t)din * sizeof *a1));
        for (int c = 0; c < NS && sizes[c] <= 67; c++)
            for (int n = 1; n <= 16; n += 5) {
                int dout = sizes[c];
                kern_matmul_ref(y1, x, w, (c & 1) ? b : NULL, n, din, dout, 0, dout);
                kern_matmul_avx2(y2, x, w, (c & 1) ? b : NULL, n, din, dout, 0, dout);
                CHECK_MSG(!memcmp(y1, y2, (size_t)n * dout * sizeof *y1), "n %d din %d dout %d", n, din, dout);
                /* a split of the output range changes nothing */
                kern_matmul_avx2(y2, x, w, (c & 1) ? b : NULL, n, din, dout, 0, dout / 2);
                kern_matmul_avx2(y2, x, w, (c & 1) ? b : NULL, n, din, dout, dout / 2, dout);
                CHECK(!memcmp(y1, y2, (size_t)n * dout * sizeof *y1));
            }
    }
    /* the reference itself is a dot product */
    float p[3] = { 1, 2, 3 }, q[3] = { 4, 5, 6 };
    CHECK(kern_dot_ref(p, q, 3) == 32.0f);
}

/* ------------------------------------------------------------------------
 * stories260k: fixture figures and the float64 reference */

TEST(stories260k_perplexity_of_greedy_tokens)
{
    int n;
    uint32_t *tok = read_u32(STORIES "/greedy.tokens.u32", &n);
    llama_model *m = open_model(STORIES);
    CHECK(tok && m && n == 201);
    if (!tok || !m) { free(tok); llama_free(m); return; }
    float *lg = malloc((size_t)n * 512 * sizeof *lg);
    double nll = engine_window_nll(m, tok, n, lg);
    printf("# stories260k ppl %.6f (mean NLL %.7f)\n", exp(nll), nll);
    CHECK_NEAR(exp(nll), STORIES_PPL, STORIES_PPL * 1e-3);
    /* the float64 reference agrees with the fixture and, closely, with us */
    ref_model *r = open_ref_stories();
    double *rl = malloc((size_t)n * 512 * sizeof *rl);
    ref_forward(r, tok, n, rl, -1, NULL);
    double rnll = ref_mean_nll(rl, tok, n, 512);
    CHECK_NEAR(exp(rnll), STORIES_PPL, STORIES_PPL * 1e-4);
    CHECK_NEAR(nll, rnll, 1e-4);
    double maxd = 0;
    for (int i = 0; i < n * 512; i++) maxd = fmax(maxd, fabs(rl[i] - lg[i]));
    printf("# max |logit - f64 logit| = %.3g\n", maxd);
    CHECK(maxd < 2e-3);
    ref_free(r);
    free(rl); free(lg); free(tok);
    llama_free(m);
}

TEST(stories260k_generates_its_greedy_tokens)
{
    int n;
    uint32_t *tok = read_u32(STORIES "/greedy.tokens.u32", &n);
    llama_model *m = open_model(STORIES);
    CHECK(tok && m && n == 201);
    if (!tok || !m) { free(tok); llama_free(m); return; }
    uint32_t out[200];
    CHECK(engine_greedy(m, tok, 1, 200, out) == 0);
    int same = 0;
    while (same < 200 && out[same] == tok[same + 1]) same++;
    CHECK_MSG(same == 200, "first difference at generated token %d", same);
    free(tok);
    llama_free(m);
}

TEST(results_do_not_depend_on_threads_or_batching)
{
    int n;
    uint32_t *tok = read_u32(STORIES "/greedy.tokens.u32", &n);
    llama_model *m = open_model(STORIES);
    if (!tok || !m) { CHECK(0); free(tok); llama_free(m); return; }
    n = 64;
    size_t sz = (size_t)n * 512;
    float *a = malloc(sz * sizeof *a), *b = malloc(sz * sizeof *b);
    engine_window_nll(m, tok, n, a);
    for (int th = 2; th <= 3; th++) {
        llama_set_threads(m, th);
        engine_window_nll(m, tok, n, b);
        CHECK_MSG(!memcmp(a, b, sz * sizeof *a), "%d threads differ", th);
    }
    /* token by token through the KV cache gives the same bytes as one batch */
    char *err = NULL;
    llama_state *s = llama_state_new(m, n, 7, &err);
    for (int t = 0; s && t < n; t += 7) {
        int k = n - t < 7 ? n - t : 7;
        CHECK(llama_eval(m, s, tok + t, k, b + (size_t)t * 512, 0, &err) == 0);
    }
    CHECK(s && llama_state_pos(s) == n);
    CHECK(!memcmp(a, b, sz * sizeof *a));
    llama_state_free(s);
    free(a); free(b); free(tok);
    llama_free(m);
}

/* ------------------------------------------------------------------------
 * ts3m: the greedy continuation recorded in REFERENCE.md */

TEST(ts3m_greedy_continuation_of_once_upon_a_time)
{
    static const uint32_t want[53] = { 1, 391, 410, 261, 374, 970, 377, 283, 261, 380, 438, 431, 320,
        964, 321, 444, 267, 362, 583, 323, 265, 545, 343, 308, 484, 964, 396, 341, 970, 320, 976,
        957, 359, 489, 308, 267, 362, 964, 320, 526, 976, 951, 399, 267, 362, 343, 308, 484, 970,
        395, 337, 283, 440 };
    llama_model *m = open_model(TS3M);
    CHECK(m != NULL);
    if (!m) return;
    const llama_config *c = llama_model_config(m);
    CHECK(c->n_kv_heads == 4 && !c->tied && c->vocab == 1024);
    uint32_t out[48];
    llama_set_threads(m, 2);
    CHECK(engine_greedy(m, want, 5, 48, out) == 0);   /* prompt = [1] + encode("Once upon a time") */
    CHECK(!memcmp(out, want + 5, sizeof out));
    llama_free(m);
}

/* ------------------------------------------------------------------------
 * a synthetic Qwen2-style model: biases, GQA, untied head */

typedef struct { const char *name; int64_t shape[2]; int ndim; } syn_tensor;
typedef struct { int dim, hid, nh, nkv, vocab, L; int bias; } syn_model;

static int syn_shape(const syn_model *s, const char *name, int64_t *shape)
{
    int hd = s->dim / s->nh, l;
    char rest[96];
    if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "lm_head.weight")) {
        shape[0] = s->vocab; shape[1] = s->dim; return 2;
    }
    if (!strcmp(name, "model.norm.weight")) { shape[0] = s->dim; return 1; }
    if (sscanf(name, "model.layers.%d.%95s", &l, rest) != 2 || l >= s->L) return 0;
    struct { const char *n; int64_t a, b; } t[] = {
        { "input_layernorm.weight", s->dim, 0 }, { "post_attention_layernorm.weight", s->dim, 0 },
        { "self_attn.q_proj.weight", s->nh * hd, s->dim }, { "self_attn.k_proj.weight", s->nkv * hd, s->dim },
        { "self_attn.v_proj.weight", s->nkv * hd, s->dim }, { "self_attn.o_proj.weight", s->dim, s->nh * hd },
        { "self_attn.q_proj.bias", s->bias ? s->nh * hd : -1, 0 },
        { "self_attn.k_proj.bias", s->bias ? s->nkv * hd : -1, 0 },
        { "self_attn.v_proj.bias", s->bias ? s->nkv * hd : -1, 0 },
        { "mlp.gate_proj.weight", s->hid, s->dim }, { "mlp.up_proj.weight", s->hid, s->dim },
        { "mlp.down_proj.weight", s->dim, s->hid },
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (!strcmp(rest, t[i].n) && t[i].a > 0) {
            shape[0] = t[i].a; shape[1] = t[i].b;
            return t[i].b ? 2 : 1;
        }
    return 0;
}

/* deterministic values from the name's hash; norms near 1 */
static float syn_value(const char *name, int64_t i)
{
    unsigned h = 2166136261u;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    float v = 0.4f * cosf((float)i * 0.731f + (float)(h % 1000));
    return strstr(name, "norm") ? 1 + 0.5f * v : v;
}

static int syn_get(void *ctx, const char *name, float **data, int64_t *shape, int *ndim, char **errp)
{
    (void)errp;
    if (!(*ndim = syn_shape(ctx, name, shape))) return 0;
    int64_t n = *ndim == 2 ? shape[0] * shape[1] : shape[0];
    *data = malloc((size_t)n * sizeof **data);
    for (int64_t i = 0; i < n; i++) (*data)[i] = syn_value(name, i);
    return 1;
}

static double *syn_get_d(void *ctx, const char *name)
{
    int64_t shape[2];
    int nd = syn_shape(ctx, name, shape);
    if (!nd) return NULL;
    int64_t n = nd == 2 ? shape[0] * shape[1] : shape[0];
    double *d = malloc((size_t)n * sizeof *d);
    for (int64_t i = 0; i < n; i++) d[i] = syn_value(name, i);
    return d;
}

static char *syn_config(const syn_model *s, const char *type, int dim_in_config)
{
    char *c = NULL;
    if (asprintf(&c, "{\"model_type\": \"%s\", \"hidden_size\": %d, \"intermediate_size\": %d,"
                 " \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d,"
                 " \"vocab_size\": %d, \"rms_norm_eps\": 1e-6, \"rope_theta\": 500.0,"
                 " \"tie_word_embeddings\": false, \"hidden_act\": \"silu\"}",
                 type, dim_in_config, s->hid, s->L, s->nh, s->nkv, s->vocab) < 0) abort();
    return c;
}

TEST(synthetic_qwen2_biases_gqa_untied_head_match_float64)
{
    syn_model sm = { .dim = 32, .hid = 40, .nh = 4, .nkv = 2, .vocab = 50, .L = 2, .bias = 1 };
    char *cfg = syn_config(&sm, "qwen2", sm.dim), *err = NULL;
    llama_model *m = llama_load(cfg, strlen(cfg), syn_get, &sm, &err);
    CHECK_MSG(m != NULL, "%s", err ? err : "");
    free(cfg);
    if (!m) { free(err); return; }
    CHECK(llama_model_config(m)->qkv_bias == 1);
    ref_model *r = ref_build(sm.L, sm.dim, sm.hid, sm.nh, sm.nkv, sm.vocab, 1e-6, 500, 0, syn_get_d, &sm);
    uint32_t tok[37];
    for (int i = 0; i < 37; i++) tok[i] = (uint32_t)(i * 7 % sm.vocab);
    float lg[37 * 50];
    double rl[37 * 50];
    llama_state *s = llama_state_new(m, 37, 37, &err);
    CHECK(s && llama_eval(m, s, tok, 37, lg, 0, &err) == 0);
    ref_forward(r, tok, 37, rl, -1, NULL);
    double maxd = 0, maxv = 0;
    for (int i = 0; i < 37 * 50; i++) {
        maxd = fmax(maxd, fabs(rl[i] - lg[i]));
        maxv = fmax(maxv, fabs(rl[i]));
    }
    CHECK_MSG(maxd < 1e-4 * fmax(1, maxv), "max diff %g (max |logit| %g)", maxd, maxv);
    /* and the biases matter: without them the reference moves */
    for (int l = 0; l < sm.L; l++) { free(r->ly[l].bq); r->ly[l].bq = NULL; }
    ref_forward(r, tok, 37, rl, -1, NULL);
    double d2 = 0;
    for (int i = 0; i < 37 * 50; i++) d2 = fmax(d2, fabs(rl[i] - lg[i]));
    CHECK(d2 > 100 * maxd);
    llama_state_free(s);
    ref_free(r);
    llama_free(m);
}

TEST(llama3_rope_scaling_matches_float64)
{
    syn_model sm = { .dim = 32, .hid = 40, .nh = 4, .nkv = 2, .vocab = 50, .L = 2 };
    char *base = syn_config(&sm, "llama", sm.dim), *cfg = NULL, *err = NULL;
    base[strlen(base) - 1] = 0;     /* drop the closing brace, add rope_scaling */
    if (asprintf(&cfg, "%s, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0,"
                 " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
                 " \"original_max_position_embeddings\": 256}}", base) < 0) abort();
    free(base);
    llama_model *m = llama_load(cfg, strlen(cfg), syn_get, &sm, &err);
    CHECK_MSG(m != NULL, "%s", err ? err : "");
    free(cfg);
    if (!m) { free(err); return; }
    /* head_dim 8, theta 500: wavelengths 6.3, 29, 140, 660 against 64 / 256: kept, kept, mixed, slowed */
    ref_model *r = ref_build(sm.L, sm.dim, sm.hid, sm.nh, sm.nkv, sm.vocab, 1e-6, 500, 0, syn_get_d, &sm);
    r->l3_factor = 8; r->l3_low = 1; r->l3_high = 4; r->l3_orig = 256;
    uint32_t tok[40];
    for (int i = 0; i < 40; i++) tok[i] = (uint32_t)(i * 11 % sm.vocab);
    float lg[40 * 50];
    double rl[40 * 50];
    llama_state *s = llama_state_new(m, 40, 40, &err);
    CHECK(s && llama_eval(m, s, tok, 40, lg, 0, &err) == 0);
    ref_forward(r, tok, 40, rl, -1, NULL);
    double maxd = 0;
    for (int i = 0; i < 40 * 50; i++) maxd = fmax(maxd, fabs(rl[i] - lg[i]));
    CHECK_MSG(maxd < 1e-4, "max diff %g", maxd);
    r->l3_factor = 0;               /* unscaled rotary is measurably different */
    ref_forward(r, tok, 40, rl, -1, NULL);
    double d2 = 0;
    for (int i = 0; i < 40 * 50; i++) d2 = fmax(d2, fabs(rl[i] - lg[i]));
    CHECK(d2 > 100 * maxd);
    llama_state_free(s);
    ref_free(r);
    llama_free(m);
}

/* ------------------------------------------------------------------------
 * errors */

TEST(config_contradicting_shapes_is_an_error)
{
    syn_model sm = { .dim = 32, .hid = 40, .nh = 4, .nkv = 2, .vocab = 50, .L = 2 };
    char *cfg = syn_config(&sm, "llama", 48), *err = NULL;
    llama_model *m = llama_load(cfg, strlen(cfg), syn_get, &sm, &err);
    CHECK(m == NULL);
    CHECK_MSG(err && strstr(err, "model.embed_tokens.weight") && strstr(err, "[50, 32]") &&
              strstr(err, "[50, 48]"), "%s", err ? err : "(no message)");
    CHECK(err && !strchr(err, '\n'));
    free(err); free(cfg); err = NULL;
    /* more layers in the checkpoint than the config says */
    sm.L = 3;
    cfg = syn_config(&sm, "llama", 32);
    sm.L = 4;
    m = llama_load(cfg, strlen(cfg), syn_get, &sm, &err);
    CHECK(m == NULL && err && strstr(err, "num_hidden_layers"));
    free(err); free(cfg); err = NULL;
    /* fewer: a missing tensor */
    cfg = syn_config(&sm, "llama", 32);
    sm.L = 1;
    m = llama_load(cfg, strlen(cfg), syn_get, &sm, &err);
    CHECK(m == NULL && err && strstr(err, "missing tensor 'model.layers.1."));
    free(err); free(cfg);
}

TEST(unknown_architecture_and_bad_config_are_errors)
{
    syn_model sm = { .dim = 32, .hid = 40, .nh = 4, .nkv = 2, .vocab = 50, .L = 2 };
    char *cfg = syn_config(&sm, "gpt2", 32), *err = NULL;
    CHECK(llama_load(cfg, strlen(cfg), syn_get, &sm, &err) == NULL);
    CHECK_MSG(err && strstr(err, "unsupported architecture 'gpt2'"), "%s", err ? err : "");
    free(err); free(cfg); err = NULL;
    const char *bad[] = {
        "{\"model_type\": \"llama\"",                                       /* invalid JSON */
        "{\"model_type\": \"llama\", \"hidden_size\": 32}",                 /* missing keys */
        "{\"model_type\": \"llama\", \"hidden_size\": 32, \"intermediate_size\": 40, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 4, \"num_key_value_heads\": 3, \"vocab_size\": 50}",   /* GQA mismatch */
        "{\"model_type\": \"llama\", \"hidden_size\": 32, \"intermediate_size\": 40, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 4, \"vocab_size\": 50, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2}}",
        "{\"model_type\": \"llama\", \"hidden_size\": 32, \"intermediate_size\": 40, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 4, \"vocab_size\": 50, \"hidden_act\": \"gelu\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_MSG(llama_load(bad[i], strlen(bad[i]), syn_get, &sm, &err) == NULL, "case %zu", i);
        CHECK_MSG(err && strncmp(err, "config.json: ", 13) == 0, "case %zu: %s", i, err ? err : "");
        free(err); err = NULL;
    }
}

TEST(eval_rejects_bad_tokens_and_overflow)
{
    syn_model sm = { .dim = 32, .hid = 40, .nh = 4, .nkv = 2, .vocab = 50, .L = 1 };
    char *cfg = syn_config(&sm, "mistral", 32), *err = NULL;
    llama_model *m = llama_load(cfg, strlen(cfg), syn_get, &sm, &err);
    free(cfg);
    CHECK(m != NULL);
    if (!m) { free(err); return; }
    llama_state *s = llama_state_new(m, 4, 4, &err);
    uint32_t tok[5] = { 1, 2, 50, 3, 4 };
    CHECK(llama_eval(m, s, tok, 3, NULL, 0, &err) == -1 && err && strstr(err, "token id 50"));
    free(err); err = NULL;
    CHECK(llama_eval(m, s, tok, 2, NULL, 0, &err) == 0);
    CHECK(llama_eval(m, s, tok, 3, NULL, 0, &err) == -1 && err && strstr(err, "context"));
    free(err);
    llama_state_free(s);
    llama_free(m);
}

int main(void)
{
    RUN(kernels_avx2_equal_ref_bit_for_bit);
    RUN(stories260k_perplexity_of_greedy_tokens);
    RUN(stories260k_generates_its_greedy_tokens);
    RUN(results_do_not_depend_on_threads_or_batching);
    RUN(ts3m_greedy_continuation_of_once_upon_a_time);
    RUN(synthetic_qwen2_biases_gqa_untied_head_match_float64);
    RUN(llama3_rope_scaling_matches_float64);
    RUN(config_contradicting_shapes_is_an_error);
    RUN(unknown_architecture_and_bad_config_are_errors);
    RUN(eval_rejects_bad_tokens_and_overflow);
    return tl_summary();
}
