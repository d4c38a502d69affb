/* test_llama — the forward pass against fixture figures and an independent
 * float64 implementation (ref_llama.h); kernels against their _ref; errors. */
#include "testlib.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "calib.h"
#include "dtype.h"
#include "kernels.h"
#include "llama.h"
#include "ref_llama.h"
#include "ref_source.h"
#include "source.h"

#define STORIES "tests/data/stories260k"
#define TS3M    "tests/data/ts3m-bf16"
#define STORIES_PPL 2.50596          /* stories260k/README.md */


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

/* The valgrind path (QPIPE_NO_FMA) rounds each product: within a few ulps of
 * the sum's magnitude of the _ref, and a split of the output range still
 * changes nothing. */
TEST(kernels_avx2_nofma_close_to_ref_and_split_invariant)
{
    if (!kern_have_avx2()) { printf("# no AVX2: skipped\n"); return; }
    static const int sizes[] = { 1, 7, 8, 17, 63, 127 };
    for (int a = 0; a < (int)(sizeof sizes / sizeof *sizes); a++) {
        int din = sizes[a], dout = 67, n = 11;
        float x[11 * 127], w[67 * 127], y1[11 * 67], y2[11 * 67], y3[11 * 67];
        for (int i = 0; i < n * din; i++) x[i] = fill(i, 4);
        for (int i = 0; i < dout * din; i++) w[i] = fill(i, 5);
        kern_matmul_ref(y1, x, w, NULL, n, din, dout, 0, dout);
        kern_matmul_avx2_nofma(y2, x, w, NULL, n, din, dout, 0, dout);
        kern_matmul_avx2_nofma(y3, x, w, NULL, n, din, dout, 0, 30);
        kern_matmul_avx2_nofma(y3, x, w, NULL, n, din, dout, 30, dout);
        CHECK(!memcmp(y2, y3, sizeof(float) * (size_t)(n * dout)));
        for (int i = 0; i < n * dout; i++) {
            float mag = 0;   /* sum of |terms| bounds the rounding error */
            for (int k = 0; k < din; k++)
                mag += fabsf(x[(i / dout) * din + k] * w[(i % dout) * din + k]);
            CHECK_MSG(fabsf(y1[i] - y2[i]) <= 4e-7f * (float)din * mag + 1e-30f, "din %d i %d", din, i);
        }
        float d1 = kern_dot_ref(x, w, din), d2 = kern_dot_avx2_nofma(x, w, din);
        CHECK(fabsf(d1 - d2) <= 1e-5f * (fabsf(d1) + (float)din));
        float a1[127], a2[127];
        memcpy(a1, w, sizeof a1); memcpy(a2, w, sizeof a2);
        kern_axpy_ref(a1, 0.3f, x, din);
        kern_axpy_avx2_nofma(a2, 0.3f, x, din);
        for (int i = 0; i < din; i++)
            CHECK(fabsf(a1[i] - a2[i]) <= 1e-6f * (fabsf(a1[i]) + 1));
    }
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
 * layer streaming: the same bytes as llama_eval, window by window */

/* A hook that records, per distinct input (first weight name), a hash of
 * every x it is given in order, and the order names first appear. */
typedef struct {
    int n;
    char names[64][96];
    uint64_t hash[64];
    int64_t rows[64];
} hook_rec;

static int rec_hook(void *ctx, const char *const *names, int nnames, const float *x, int n, int d_in,
                    char **errp)
{
    (void)nnames; (void)errp;
    hook_rec *r = ctx;
    int i = 0;
    while (i < r->n && strcmp(r->names[i], names[0])) i++;
    if (i == r->n) {
        if (r->n == 64) return -1;
        snprintf(r->names[r->n++], sizeof r->names[0], "%s", names[0]);
        r->hash[i] = 1469598103934665603ull;
    }
    const unsigned char *b = (const unsigned char *)x;
    for (size_t k = 0; k < (size_t)n * d_in * sizeof *x; k++)
        r->hash[i] = (r->hash[i] ^ b[k]) * 1099511628211ull;
    r->rows[i] += n;
    return 0;
}

/* llama_inputs into a hook_rec's name list */
static int rec_input(void *ctx, const char *const *names, int nnames, int d_in, char **errp)
{
    (void)nnames; (void)d_in; (void)errp;
    hook_rec *r = ctx;
    snprintf(r->names[r->n++], sizeof r->names[0], "%s", names[0]);
    return 0;
}

/* Logits of windows (off[w], len[w]) by llama_eval, one state per window, concatenated. */
static float *eval_windows(llama_model *m, const uint32_t *tok, const int *off, const int *len, int nw)
{
    int V = llama_model_config(m)->vocab;
    size_t total = 0;
    for (int w = 0; w < nw; w++) total += (size_t)len[w];
    float *lg = malloc(total * V * sizeof *lg), *p = lg;
    char *err = NULL;
    llama_state *s = llama_state_new(m, 256, 256, &err);
    for (int w = 0; w < nw; w++) {
        llama_state_reset(s);
        if (llama_eval(m, s, tok + off[w], len[w], p, 0, &err) < 0) { fprintf(stderr, "  %s\n", err); abort(); }
        p += (size_t)len[w] * V;
    }
    llama_state_free(s);
    return lg;
}

/* The same windows through llama_batch_*. NULL on error (printed). */
static float *batch_windows(llama_model *m, const uint32_t *tok, const int *off, const int *len, int nw)
{
    const llama_config *c = llama_model_config(m);
    size_t total = 0;
    for (int w = 0; w < nw; w++) total += (size_t)len[w];
    float *lg = malloc(total * c->vocab * sizeof *lg), *p = lg;
    char *err = NULL;
    llama_batch *b = llama_batch_new(m, tok, off, len, nw, &err);
    int rc = b ? 0 : -1;
    for (int l = 0; rc == 0 && l < c->n_layers; l++)
        rc = llama_batch_layer(m, b, l, &err);
    for (int w = 0; rc == 0 && w < nw; w++) {
        rc = llama_batch_logits(m, b, w, p, &err);
        p += (size_t)len[w] * c->vocab;
    }
    if (rc == 0) rc = llama_finish(m, &err);
    llama_batch_free(b);
    if (rc < 0) { fprintf(stderr, "  %s\n", err ? err : "?"); free(err); free(lg); return NULL; }
    return lg;
}

static int same_records(const hook_rec *a, const hook_rec *b)
{
    if (a->n != b->n) return 0;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->names[i], b->names[i]) || a->hash[i] != b->hash[i] || a->rows[i] != b->rows[i]) return 0;
    return 1;
}

TEST(streamed_batch_equals_llama_eval_byte_for_byte)
{
    int n;
    uint32_t *tok = read_u32(STORIES "/greedy.tokens.u32", &n);
    llama_model *m = open_model(TS3M);
    char *err = NULL;
    llama_model *sm = llama_open_streamed(TS3M, NULL, &err);
    CHECK_MSG(sm && llama_is_streamed(sm) && !llama_is_streamed(m), "%s", err ? err : "");
    if (!tok || !m || !sm) { free(tok); llama_free(m); llama_free(sm); free(err); return; }
    /* windows of several lengths, overlapping (as qcal's random ones may) */
    const int off[4] = { 0, 40, 10, 150 }, len[4] = { 64, 100, 1, 51 };
    int V = 1024;
    size_t sz = (64 + 100 + 1 + 51) * (size_t)V * sizeof(float);
    hook_rec ra = { 0 }, rb = { 0 }, rin = { 0 };
    llama_set_hook(m, rec_hook, &ra);
    float *a = eval_windows(m, tok, off, len, 4);
    llama_set_threads(sm, 2);
    llama_set_hook(sm, rec_hook, &rb);
    float *b = batch_windows(sm, tok, off, len, 4);
    CHECK(b && !memcmp(a, b, sz));
    /* the hook saw the same inputs, in the same order per input, in llama_inputs order */
    CHECK(ra.n == 17 && same_records(&ra, &rb));
    CHECK(llama_inputs(sm, rec_input, &rin, &err) == 0 && rin.n == ra.n);
    for (int i = 0; i < rin.n && i < ra.n; i++) CHECK(!strcmp(rin.names[i], ra.names[i]));
    /* the batch API on the in-memory model gives the same bytes too */
    float *c = batch_windows(m, tok, off, len, 4);
    CHECK(c && !memcmp(a, c, sz));
    /* and a streamed model refuses llama_eval, layers out of order, early logits */
    llama_state *s = llama_state_new(sm, 8, 8, &err);
    CHECK(llama_eval(sm, s, tok, 4, NULL, 0, &err) == -1 && err && strstr(err, "layer-streamed"));
    free(err); err = NULL;
    llama_batch *bt = llama_batch_new(sm, tok, off, len, 2, &err);
    CHECK(bt && llama_batch_layer(sm, bt, 1, &err) == -1 && err && strstr(err, "out of order"));
    free(err); err = NULL;
    CHECK(llama_batch_logits(sm, bt, 0, a, &err) == -1 && err && strstr(err, "after 0 of 4 layers"));
    free(err); err = NULL;
    uint32_t bad[2] = { 1, 5000 };
    const int o0[1] = { 0 }, l2[1] = { 2 };
    CHECK(llama_batch_new(sm, bad, o0, l2, 1, &err) == NULL && err && strstr(err, "token id 5000"));
    free(err);
    llama_batch_free(bt);
    llama_state_free(s);
    free(a); free(b); free(c); free(tok);
    llama_free(m);
    llama_free(sm);
}

/* Write src's tensors, in reverse order (or, rev 0, in order), as a qstream
 * file (manifest optional); cut > 0: the file ends 100 bytes into the
 * frames after the first `cut` tensors (a truncated stream). */
static int write_stream(const char *src_path, const char *out, int manifest, int rev, int cut)
{
    char *err = NULL;
    qsrc *s = qsrc_open(src_path, &err);
    if (!s) { free(err); return -1; }
    qs_header h;
    qs_header_copy(&h, &s->header);
    char cfgp[512];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", src_path);
    FILE *cf = fopen(cfgp, "rb");
    if (cf) {
        char buf[8192];
        size_t k = fread(buf, 1, sizeof buf, cf);
        fclose(cf);
        qs_header_add_file(&h, "config.json", buf, k);
    }
    int nt = s->ntensors;
    off_t cut_at = 0;
    for (int k = 0; manifest && k < nt; k++) qs_header_manifest_add(&h, &s->tensors[rev ? nt - 1 - k : k]);
    FILE *f = fopen(out, "wb");
    qs_writer *w = f ? qs_writer_open_fd(fileno(f), &h, 0, &err) : NULL;
    int rc = w ? 0 : -1;
    for (int k = 0; rc == 0 && k < nt; k++) {
        int i = rev ? nt - 1 - k : k;
        size_t nb = (size_t)qs_tensor_nbytes(&s->tensors[i]);
        void *buf = malloc(nb);
        rc = qsrc_read(s, i, 0, buf, nb, &err) == 0 ? qs_writer_put(w, &s->tensors[i], buf) : -1;
        free(buf);
        if (k + 1 == cut) cut_at = lseek(fileno(f), 0, SEEK_CUR);
    }
    if (w && qs_writer_close(w, &err) < 0) rc = -1;
    if (f) fclose(f);
    if (cut_at > 0 && truncate(out, cut_at + 100) < 0) rc = -1;
    free(err);
    qs_header_clear(&h);
    qsrc_close(s);
    return rc;
}

TEST(streamed_from_a_reversed_qstream_spools_and_matches)
{
    int n;
    uint32_t *tok = read_u32(STORIES "/greedy.tokens.u32", &n);
    llama_model *m = open_model(TS3M);
    char path[] = "/tmp/test_llama_rev_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    const int off[2] = { 3, 100 }, len[2] = { 97, 80 };
    float *a = m && tok ? eval_windows(m, tok, off, len, 2) : NULL;
    for (int manifest = 1; manifest >= 0 && a; manifest--) {
        CHECK(write_stream(TS3M, path, manifest, 1, 0) == 0);
        char *err = NULL;
        llama_model *sm = llama_open_streamed(path, NULL, &err);
        CHECK_MSG(sm != NULL, "%s", err ? err : "");
        float *b = sm ? batch_windows(sm, tok, off, len, 2) : NULL;
        CHECK_MSG(b && !memcmp(a, b, (97 + 80) * 1024 * sizeof(float)), "manifest %d", manifest);
        free(b); free(err);
        llama_free(sm);
    }
    /* in order, no manifest, truncated after layer 1: layers 0 and 1 run
     * (absent biases are not looked for to the end of the stream), layer 2 fails */
    CHECK(write_stream(TS3M, path, 0, 0, 20) == 0);
    char *err = NULL;
    llama_model *sm = llama_open_streamed(path, NULL, &err);
    llama_batch *b = sm ? llama_batch_new(sm, tok, off, len, 2, &err) : NULL;
    CHECK(b && llama_batch_layer(sm, b, 0, &err) == 0 && llama_batch_layer(sm, b, 1, &err) == 0);
    CHECK(b && llama_batch_layer(sm, b, 2, &err) == -1 && err && strstr(err, "truncated"));
    free(err);
    llama_batch_free(b);
    llama_free(sm);
    unlink(path);
    free(a); free(tok);
    llama_free(m);
}

TEST(streamed_tied_head_reads_the_embedding_again)
{
    syn_model sm = { .dim = 32, .hid = 40, .nh = 4, .nkv = 2, .vocab = 50, .L = 3 };
    char *cfg = syn_config(&sm, "llama", sm.dim), *err = NULL;
    char *t = strstr(cfg, "\"tie_word_embeddings\": false");
    memcpy(t, "\"tie_word_embeddings\": true ", strlen("\"tie_word_embeddings\": true "));
    llama_model *m = llama_load(cfg, strlen(cfg), syn_get, &sm, &err);
    llama_model *s = llama_load_streamed(cfg, strlen(cfg), syn_get, &sm, &err);
    free(cfg);
    CHECK(m && s && llama_model_config(s)->tied);
    if (!m || !s) { free(err); llama_free(m); llama_free(s); return; }
    uint32_t tok[40];
    for (int i = 0; i < 40; i++) tok[i] = (uint32_t)(i * 13 % sm.vocab);
    const int off[3] = { 0, 5, 20 }, len[3] = { 40, 12, 20 };
    float *a = eval_windows(m, tok, off, len, 3), *b = batch_windows(s, tok, off, len, 3);
    CHECK(b && !memcmp(a, b, 72 * 50 * sizeof(float)));
    free(a); free(b);
    llama_free(m);
    llama_free(s);
}

/* calib statistics of ts3m written to a file: window-major + calib_write, or
 * layer-major (streamed) with declared groups + calib_flush after each layer. */
static char *stats_bytes(int streamed, const uint32_t *tok, const int *off, const int *len, int nw, size_t *nb)
{
    char *err = NULL;
    llama_model *m = streamed ? llama_open_streamed(TS3M, NULL, &err) : open_model(TS3M);
    calib *c = calib_new(64, &err);
    if (!m || !c) { free(err); llama_free(m); calib_free(c); return NULL; }
    llama_set_hook(m, calib_hook, c);
    FILE *f = tmpfile();
    qs_header h;
    qs_header_init(&h);
    qs_writer *w = NULL;
    int rc = 0;
    if (streamed) {
        rc = llama_inputs(m, calib_declare, c, &err);
        rc = rc ? rc : calib_manifest(c, &h, &err);
        w = rc ? NULL : qs_writer_open_fd(fileno(f), &h, 0, &err);
        llama_batch *b = w ? llama_batch_new(m, tok, off, len, nw, &err) : NULL;
        rc = b ? 0 : -1;
        size_t most = 0;
        for (int l = 0; rc == 0 && l < 4; l++) {
            rc = llama_batch_layer(m, b, l, &err);
            if (calib_bytes(c) > most) most = calib_bytes(c);
            rc = rc ? rc : calib_flush(c, w, &err);
        }
        /* one layer's Hessians at a time: 3 x 256² + 768² doubles (+ small) */
        CHECK_MSG(most < (3 * 256 * 256 + 768 * 768) * 8 + 2000000, "%zu bytes", most);
        CHECK(rc != 0 || calib_bytes(c) < 2000000);
        for (int i = 0; rc == 0 && i < nw; i++) rc = llama_batch_logits(m, b, i, NULL, &err);
        llama_batch_free(b);
    } else {
        char *e2 = NULL;
        llama_state *s = llama_state_new(m, 256, 256, &e2);
        for (int i = 0; rc == 0 && i < nw; i++) {
            llama_state_reset(s);
            rc = llama_eval(m, s, tok + off[i], len[i], NULL, 0, &err);
        }
        llama_state_free(s);
        rc = rc ? rc : calib_manifest(c, &h, &err);
        w = rc ? NULL : qs_writer_open_fd(fileno(f), &h, 0, &err);
        if (!w) rc = -1;
    }
    rc = rc ? rc : calib_write(c, w, &err);
    if (w && qs_writer_close(w, rc ? NULL : &err) < 0) rc = -1;
    char *out = NULL;
    if (rc == 0) {
        fflush(f);
        long sz = ftell(f);
        out = malloc((size_t)sz);
        rewind(f);
        *nb = fread(out, 1, (size_t)sz, f);
    } else {
        fprintf(stderr, "  %s\n", err ? err : "?");
    }
    free(err);
    fclose(f);
    qs_header_clear(&h);
    calib_free(c);
    llama_free(m);
    return out;
}

TEST(streamed_statistics_flushed_per_layer_are_the_same_bytes)
{
    int n;
    uint32_t *tok = read_u32(STORIES "/greedy.tokens.u32", &n);   /* ids < 512: valid for ts3m too */
    const int off[3] = { 0, 77, 30 }, len[3] = { 120, 124, 60 };
    size_t na = 0, nb = 0;
    char *a = tok ? stats_bytes(0, tok, off, len, 3, &na) : NULL;
    char *b = tok ? stats_bytes(1, tok, off, len, 3, &nb) : NULL;
    CHECK(a && b && na > 4000000 && na == nb && !memcmp(a, b, na));
    free(a); free(b); free(tok);
}

TEST(streamed_open_checks_every_shape_before_reading)
{
    char dir[] = "/tmp/test_llama_cfg_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char p[600], target[600];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    CHECK(realpath(TS3M "/model.safetensors", target) != NULL);
    CHECK(symlink(target, p) == 0);
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fprintf(f, "{\"model_type\": \"llama\", \"hidden_size\": 256, \"intermediate_size\": 512,"
               " \"num_hidden_layers\": 4, \"num_attention_heads\": 8, \"num_key_value_heads\": 4,"
               " \"vocab_size\": 1024}");
    fclose(f);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    char *err = NULL;
    CHECK(llama_open_streamed(p, NULL, &err) == NULL);
    CHECK_MSG(err && strstr(err, "model.layers.0.mlp.gate_proj.weight' has shape [768, 256]") &&
              strstr(err, "implies [512, 256]"), "%s", err ? err : "");
    free(err); err = NULL;
    /* a layer more than the config says, found in the tensor list */
    snprintf(p, sizeof p, "%s/config.json", dir);
    f = fopen(p, "w");
    fprintf(f, "{\"model_type\": \"llama\", \"hidden_size\": 256, \"intermediate_size\": 768,"
               " \"num_hidden_layers\": 3, \"num_attention_heads\": 8, \"num_key_value_heads\": 4,"
               " \"vocab_size\": 1024}");
    fclose(f);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    CHECK(llama_open_streamed(p, NULL, &err) == NULL && err && strstr(err, "num_hidden_layers 3"));
    free(err);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
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
    RUN(kernels_avx2_nofma_close_to_ref_and_split_invariant);
    RUN(stories260k_perplexity_of_greedy_tokens);
    RUN(stories260k_generates_its_greedy_tokens);
    RUN(results_do_not_depend_on_threads_or_batching);
    RUN(ts3m_greedy_continuation_of_once_upon_a_time);
    RUN(synthetic_qwen2_biases_gqa_untied_head_match_float64);
    RUN(llama3_rope_scaling_matches_float64);
    RUN(config_contradicting_shapes_is_an_error);
    RUN(unknown_architecture_and_bad_config_are_errors);
    RUN(eval_rejects_bad_tokens_and_overflow);
    RUN(streamed_batch_equals_llama_eval_byte_for_byte);
    RUN(streamed_from_a_reversed_qstream_spools_and_matches);
    RUN(streamed_tied_head_reads_the_embedding_again);
    RUN(streamed_statistics_flushed_per_layer_are_the_same_bytes);
    RUN(streamed_open_checks_every_shape_before_reading);
    return tl_summary();
}
