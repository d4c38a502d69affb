/* ref_llama — a deliberately plain float64 Llama forward pass for tests.
 *
 * A second implementation, independent of common/llama.c: doubles
 * everywhere, triple loops, whole-sequence attention, written straight from
 * transformers' modeling_llama.py (LlamaRMSNorm, rotate_half, repeat_kv,
 * LlamaMLP). It shares nothing with the engine but the weight reader.
 * Supports optional q/k/v biases and Llama-3 rope scaling (set l3_factor etc.
 * after ref_build; formula from modeling_rope_utils.py _compute_llama3_parameters).
 * Used by test_llama.c (logits, perplexity) and test_stats.c (the input of a
 * linear layer, for Hessian checks). Include in one .c file only.
 */
#ifndef QPIPE_REF_LLAMA_H
#define QPIPE_REF_LLAMA_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double *an, *fn;                        /* (dim) */
    double *wq, *wk, *wv, *wo;              /* (out, in) */
    double *bq, *bk, *bv;                   /* (out) or NULL */
    double *wg, *wu, *wd;
} ref_layer;

typedef struct {
    int L, dim, hid, nh, nkv, hd, vocab;
    double eps, theta;
    double l3_factor, l3_low, l3_high, l3_orig;   /* Llama-3 rope scaling; factor 0 = none */
    double *emb, *norm, *head;              /* (vocab, dim), (dim), (vocab, dim) */
    ref_layer *ly;
} ref_model;

/* Fetch a weight as doubles; returns NULL when absent. */
typedef double *(*ref_get_fn)(void *ctx, const char *name);

static ref_model *ref_build(int L, int dim, int hid, int nh, int nkv, int vocab, double eps,
                            double theta, int tied, ref_get_fn get, void *ctx)
{
    ref_model *m = calloc(1, sizeof *m);
    m->L = L; m->dim = dim; m->hid = hid; m->nh = nh; m->nkv = nkv; m->vocab = vocab;
    m->hd = dim / nh; m->eps = eps; m->theta = theta;
    m->emb = get(ctx, "model.embed_tokens.weight");
    m->norm = get(ctx, "model.norm.weight");
    m->head = tied ? m->emb : get(ctx, "lm_head.weight");
    m->ly = calloc((size_t)L, sizeof *m->ly);
    char n[128];
#define REF_W(field, what) (snprintf(n, sizeof n, "model.layers.%d.%s", l, what), m->ly[l].field = get(ctx, n))
    for (int l = 0; l < L; l++) {
        REF_W(an, "input_layernorm.weight");
        REF_W(fn, "post_attention_layernorm.weight");
        REF_W(wq, "self_attn.q_proj.weight");
        REF_W(wk, "self_attn.k_proj.weight");
        REF_W(wv, "self_attn.v_proj.weight");
        REF_W(wo, "self_attn.o_proj.weight");
        REF_W(bq, "self_attn.q_proj.bias");
        REF_W(bk, "self_attn.k_proj.bias");
        REF_W(bv, "self_attn.v_proj.bias");
        REF_W(wg, "mlp.gate_proj.weight");
        REF_W(wu, "mlp.up_proj.weight");
        REF_W(wd, "mlp.down_proj.weight");
    }
#undef REF_W
    return m;
}

static void ref_free(ref_model *m)
{
    for (int l = 0; l < m->L; l++) {
        ref_layer *y = &m->ly[l];
        double *p[] = { y->an, y->fn, y->wq, y->wk, y->wv, y->wo, y->bq, y->bk, y->bv, y->wg, y->wu, y->wd };
        for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    }
    if (m->head != m->emb) free(m->head);
    free(m->emb); free(m->norm); free(m->ly); free(m);
}

/* y (n, out) = x (n, in) Wᵀ + b */
static void ref_linear(double *y, const double *x, const double *w, const double *b, int n, int in, int out)
{
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0;
            for (int i = 0; i < in; i++) s += x[t * in + i] * w[o * in + i];
            y[t * out + o] = s;
        }
}

static void ref_rmsnorm(double *y, const double *x, const double *w, int n, int d, double eps)
{
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int i = 0; i < d; i++) ss += x[t * d + i] * x[t * d + i];
        double r = 1 / sqrt(ss / d + eps);
        for (int i = 0; i < d; i++) y[t * d + i] = w[i] * x[t * d + i] * r;
    }
}

/* frequency of rotary pair i: theta^(-2i/hd), Llama-3 scaled when asked:
 * wavelengths above orig/low are slowed by factor, those below orig/high kept,
 * in between interpolated linearly in orig/wavelength */
static double ref_freq(const ref_model *m, int i, int hd)
{
    double f = pow(m->theta, -(2.0 * i) / hd);
    if (m->l3_factor == 0) return f;
    double wl = 2 * M_PI / f;
    if (wl < m->l3_orig / m->l3_high) return f;
    if (wl > m->l3_orig / m->l3_low) return f / m->l3_factor;
    double a = (m->l3_orig / wl - m->l3_low) / (m->l3_high - m->l3_low);
    return (1 - a) * f / m->l3_factor + a * f;
}

/* rotate_half on every head of v (n, heads, hd): position t = row t */
static void ref_rope(const ref_model *m, double *v, int n, int heads, int hd)
{
    int h2 = hd / 2;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++) {
            double *r = v + (t * heads + h) * hd, tmp[1024];
            for (int i = 0; i < hd; i++) {
                double ang = t * ref_freq(m, i % h2, hd);
                double rot = i < h2 ? -r[i + h2] : r[i - h2];
                tmp[i] = r[i] * cos(ang) + rot * sin(ang);
            }
            memcpy(r, tmp, (size_t)hd * sizeof *r);
        }
}

/* Forward over tokens[0..n-1] (positions 0..n-1). logits (n, vocab) or NULL.
 * If cap_layer >= 0, cap (n, hid) receives the input of that layer's
 * down_proj, i.e. silu(gate) * up. */
static void ref_forward(const ref_model *m, const uint32_t *tok, int n, double *logits,
                        int cap_layer, double *cap)
{
    int D = m->dim, H = m->hid, hd = m->hd, qd = m->nh * hd, kvd = m->nkv * hd;
    double *x = calloc((size_t)n * D, sizeof *x), *xn = calloc((size_t)n * D, sizeof *x);
    double *q = calloc((size_t)n * qd, sizeof *x), *k = calloc((size_t)n * kvd, sizeof *x);
    double *v = calloc((size_t)n * kvd, sizeof *x), *att = calloc((size_t)n * qd, sizeof *x);
    double *g = calloc((size_t)n * H, sizeof *x), *u = calloc((size_t)n * H, sizeof *x);
    double *y = calloc((size_t)n * D, sizeof *x), *p = calloc((size_t)n, sizeof *x);
    for (int t = 0; t < n; t++)
        memcpy(x + t * D, m->emb + (size_t)tok[t] * D, (size_t)D * sizeof *x);
    for (int l = 0; l < m->L; l++) {
        const ref_layer *ly = &m->ly[l];
        ref_rmsnorm(xn, x, ly->an, n, D, m->eps);
        ref_linear(q, xn, ly->wq, ly->bq, n, D, qd);
        ref_linear(k, xn, ly->wk, ly->bk, n, D, kvd);
        ref_linear(v, xn, ly->wv, ly->bv, n, D, kvd);
        ref_rope(m, q, n, m->nh, hd);
        ref_rope(m, k, n, m->nkv, hd);
        for (int h = 0; h < m->nh; h++) {
            int kh = h / (m->nh / m->nkv);
            for (int t = 0; t < n; t++) {
                double mx = -1e300, sum = 0;
                for (int s = 0; s <= t; s++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += q[t * qd + h * hd + i] * k[s * kvd + kh * hd + i];
                    p[s] = d / sqrt(hd);
                    if (p[s] > mx) mx = p[s];
                }
                for (int s = 0; s <= t; s++) sum += (p[s] = exp(p[s] - mx));
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    for (int s = 0; s <= t; s++) a += p[s] / sum * v[s * kvd + kh * hd + i];
                    att[t * qd + h * hd + i] = a;
                }
            }
        }
        ref_linear(y, att, ly->wo, NULL, n, qd, D);
        for (int i = 0; i < n * D; i++) x[i] += y[i];
        ref_rmsnorm(xn, x, ly->fn, n, D, m->eps);
        ref_linear(g, xn, ly->wg, NULL, n, D, H);
        ref_linear(u, xn, ly->wu, NULL, n, D, H);
        for (int i = 0; i < n * H; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
        if (l == cap_layer) memcpy(cap, g, (size_t)n * H * sizeof *g);
        ref_linear(y, g, ly->wd, NULL, n, H, D);
        for (int i = 0; i < n * D; i++) x[i] += y[i];
    }
    if (logits) {
        ref_rmsnorm(xn, x, m->norm, n, D, m->eps);
        ref_linear(logits, xn, m->head, NULL, n, D, m->vocab);
    }
    free(x); free(xn); free(q); free(k); free(v); free(att); free(g); free(u); free(y); free(p);
}

/* Mean NLL of tokens 1..n-1 given the logits (n, vocab) of the same window. */
__attribute__((unused)) static double ref_mean_nll(const double *logits, const uint32_t *tok, int n, int vocab)
{
    double tot = 0;
    for (int t = 0; t + 1 < n; t++) {
        const double *r = logits + (size_t)t * vocab;
        double mx = r[0], s = 0;
        for (int i = 1; i < vocab; i++) if (r[i] > mx) mx = r[i];
        for (int i = 0; i < vocab; i++) s += exp(r[i] - mx);
        tot += mx + log(s) - r[tok[t + 1]];
    }
    return tot / (n - 1);
}

#endif
