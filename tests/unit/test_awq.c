/* test_awq — AWQ / SmoothQuant building blocks (common/awq.h): the folding
 * identity on a small random decoder layer (norms, GQA-free attention mixing,
 * gated MLP computed here independently), the output error against
 * gptq_proxy_loss, the scale search never losing to RTN and winning on an
 * outlier channel, candidate-scale normalisation, the Hessian transform, the
 * clip search against a brute-force per-group search, SmoothQuant's formula. */
#include "testlib.h"

#include <string.h>

#include "awq.h"
#include "gptq.h"

static unsigned long long rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static double grand(void)
{
    double u = urand() + 1e-12, v = urand();
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}
static float *randv(int64_t n, double scale)
{
    float *v = malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = (float)(scale * grand());
    return v;
}

/* Tokens X [n, d] with uneven channel magnitudes (a few outliers), H = XᵀX, mean|x|, max|x|. */
typedef struct { float *x, *h, *xabs, *amax; int n, d; } calib;
static calib make_calib(int n, int d, int outliers)
{
    calib c = { randv((int64_t)n * d, 1.0), calloc((size_t)d * d, sizeof(float)),
                calloc((size_t)d, sizeof(float)), calloc((size_t)d, sizeof(float)), n, d };
    for (int j = 0; j < d; j++) {
        double m = 0.3 + urand() * (j < outliers ? 20.0 : 1.0);
        for (int t = 0; t < n; t++) c.x[t * d + j] *= (float)m;
    }
    for (int t = 0; t < n; t++)
        for (int j = 0; j < d; j++) {
            float v = c.x[t * d + j];
            c.xabs[j] += fabsf(v) / (float)n;
            c.amax[j] = fmaxf(c.amax[j], fabsf(v));
            for (int k = 0; k < d; k++) c.h[j * d + k] += v * c.x[t * d + k];
        }
    return c;
}
static void free_calib(calib *c) { free(c->x); free(c->h); free(c->xabs); free(c->amax); }

/* y [rows] = W [rows, cols] x */
static void matvec(const float *w, int64_t rows, int64_t cols, const double *x, double *y)
{
    for (int64_t r = 0; r < rows; r++) {
        double s = 0;
        for (int64_t c = 0; c < cols; c++) s += (double)w[r * cols + c] * x[c];
        y[r] = s;
    }
}
static double maxrel(const double *a, const double *b, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) { num = fmax(num, fabs(a[i] - b[i])); den = fmax(den, fabs(b[i])); }
    return num / (den > 0 ? den : 1);
}

/* Layer forward pieces computed here (not by awq.c), for T tokens:
 * attention sub-block: n = norm ⊙ x̂; v = V n; mixed_t = Σ_s a_ts v_s (any
 * convex weights: softmax output); out = O mixed; plus q, k outputs.
 * MLP sub-block: m = post ⊙ x̂; down( silu(G m) ⊙ (U m) ). */
#define D 32
#define HID 48
#define T 4
static void layer_forward(const awq_layer *L, const double xs[T][D], const double a[T][T],
                          double *qo, double *ko, double *oo, double *mo)
{
    double n[T][D], v[T][D];
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < D; j++) n[t][j] = (double)L->in_norm[j] * xs[t][j];
        matvec(L->lin[AWQ_Q].w, D, D, n[t], qo + t * D);
        matvec(L->lin[AWQ_K].w, D, D, n[t], ko + t * D);
        matvec(L->lin[AWQ_V].w, D, D, n[t], v[t]);
    }
    for (int t = 0; t < T; t++) {
        double mixed[D] = { 0 };
        for (int s = 0; s < T; s++)
            for (int j = 0; j < D; j++) mixed[j] += a[t][s] * v[s][j];
        matvec(L->lin[AWQ_O].w, D, D, mixed, oo + t * D);
        double m[D], g[HID], u[HID], p[HID];
        for (int j = 0; j < D; j++) m[j] = (double)L->post_norm[j] * xs[t][j];
        matvec(L->lin[AWQ_GATE].w, HID, D, m, g);
        matvec(L->lin[AWQ_UP].w, HID, D, m, u);
        for (int j = 0; j < HID; j++) p[j] = g[j] / (1 + exp(-g[j])) * u[j];
        matvec(L->lin[AWQ_DOWN].w, D, HID, p, mo + t * D);
    }
}

static void make_layer(awq_layer *L, calib *c_att, calib *c_o, calib *c_mlp, calib *c_down)
{
    memset(L, 0, sizeof *L);
    const int64_t shp[AWQ_NLIN][2] = { { D, D }, { D, D }, { D, D }, { D, D }, { HID, D }, { HID, D }, { D, HID } };
    for (int l = 0; l < AWQ_NLIN; l++) L->lin[l] = (awq_mat){ randv(shp[l][0] * shp[l][1], 0.1), shp[l][0], shp[l][1] };
    L->in_norm = randv(D, 1.0);
    L->post_norm = randv(D, 1.0);
    L->n_in_norm = L->n_post_norm = D;
    calib *cs[4] = { c_att, c_o, c_mlp, c_down };
    for (int g = 0; g < AWQ_NGROUPS; g++) L->in[g] = (awq_input){ cs[g]->xabs, cs[g]->amax, cs[g]->h };
}
static void free_layer(awq_layer *L)
{
    for (int l = 0; l < AWQ_NLIN; l++) free(L->lin[l].w);
    free(L->in_norm);
    free(L->post_norm);
    awq_layer_free(L);
}

static void check_folding(double smooth, int duo)
{
    calib ca = make_calib(64, D, 3), co = make_calib(64, D, 2), cm = make_calib(64, D, 3), cd = make_calib(64, HID, 4);
    awq_layer L;
    make_layer(&L, &ca, &co, &cm, &cd);
    double xs[T][D], a[T][T];
    for (int t = 0; t < T; t++) {
        double sum = 0;
        for (int j = 0; j < D; j++) xs[t][j] = grand();
        for (int s = 0; s < T; s++) sum += (a[t][s] = urand());
        for (int s = 0; s < T; s++) a[t][s] /= sum;
    }
    double q0[T * D], k0[T * D], o0[T * D], m0[T * D], q1[T * D], k1[T * D], o1[T * D], m1[T * D];
    layer_forward(&L, xs, a, q0, k0, o0, m0);
    awq_opts o;
    awq_opts_default(&o);
    o.grid.bits = 3;
    o.grid.group = 16;
    o.smooth = smooth;
    o.duo = duo;
    char *err = NULL;
    CHECK(awq_layer_scale(&L, &o, &err) == 0);
    // every group applies here (v and o are square and equal: no GQA), except SmoothQuant's linear pairs
    for (int g = 0; g < AWQ_NGROUPS; g++) CHECK((L.scale[g] != NULL) == (smooth < 0 || g == 0 || g == 2));
    int changed = 0;
    for (int g = 0; g < AWQ_NGROUPS; g++)
        for (int j = 0; L.scale[g] && j < 8; j++) changed |= L.scale[g][j] != 1.0f;
    CHECK(changed);
    layer_forward(&L, xs, a, q1, k1, o1, m1);
    CHECK(maxrel(q1, q0, T * D) < 1e-5);
    CHECK(maxrel(k1, k0, T * D) < 1e-5);
    CHECK(maxrel(o1, o0, T * D) < 1e-5);
    CHECK(maxrel(m1, m0, T * D) < 1e-5);
    free_layer(&L);
    free_calib(&ca); free_calib(&co); free_calib(&cm); free_calib(&cd);
}

TEST(folding_identity_awq) { check_folding(-1, 0); }
TEST(folding_identity_awq_duo) { check_folding(-1, 1); }
TEST(folding_identity_smoothquant) { check_folding(0.5, 0); }

TEST(gqa_skips_v_to_o)
{
    awq_layer L;
    memset(&L, 0, sizeof L);
    float v[16 * 32], ow[32 * 32];
    L.lin[AWQ_V] = (awq_mat){ v, 16, 32 };   // 4/8 heads of 4: v rows 16 != o cols 32
    L.lin[AWQ_O] = (awq_mat){ ow, 32, 32 };
    CHECK(!awq_group_applies(&L, 1));
    L.lin[AWQ_V] = (awq_mat){ v, 32, 32 };
    CHECK(awq_group_applies(&L, 1));
    CHECK(!awq_group_applies(&L, 0));   // no norm, no q/k
}

TEST(output_error_matches_proxy_loss)
{
    calib c = make_calib(50, 40, 2);
    float *w = randv(37 * 40, 1.0), *q = randv(37 * 40, 1.0);
    double a = awq_output_error(w, q, 37, 40, c.h, 3), b = gptq_proxy_loss(w, q, c.h, 37, 40);
    CHECK_NEAR(a / b, 1.0, 1e-5);
    CHECK(awq_output_error(w, q, 37, 40, c.h, 1) == a);   // thread-independent
    // definition: Σ_tokens |(W − Q) x|²
    double direct = 0;
    for (int t = 0; t < 50; t++)
        for (int r = 0; r < 37; r++) {
            double s = 0;
            for (int j = 0; j < 40; j++) s += ((double)w[r * 40 + j] - q[r * 40 + j]) * c.x[t * 40 + j];
            direct += s * s;
        }
    CHECK_NEAR(a / direct, 1.0, 1e-4);
    free(w); free(q); free_calib(&c);
}

TEST(candidate_scales_normalised)
{
    float x[6] = { 0.1f, 2.0f, 0.0f, 5.0f, 1.0f, 0.5f }, s[6];
    awq_candidate_scales(x, NULL, 6, 0.0, s);
    for (int j = 0; j < 6; j++) CHECK(s[j] == 1.0f);
    awq_candidate_scales(x, NULL, 6, 0.5, s);
    float mx = 0, mn = 1e30f;
    for (int j = 0; j < 6; j++) { mx = fmaxf(mx, s[j]); mn = fminf(mn, s[j]); }
    CHECK_NEAR(mx * mn, 1.0, 1e-5);
    // ordering follows x; x = 0 is clamped at 1e-4 before normalisation
    CHECK(s[3] > s[1] && s[1] > s[4] && s[4] > s[5] && s[5] > s[0] && s[0] > s[2]);
    CHECK_NEAR(s[2] / s[3], 1e-4 / sqrt(5.0), 1e-6);
}

TEST(scaled_error_equals_scaled_hessian_form)
{
    // Σ tr(ΔW H ΔWᵀ), ΔW = W − Q(W s)/s, equals tr(ΔW' H' ΔW'ᵀ) with ΔW' = W s − Q(W s), H' = D H D
    calib c = make_calib(80, 32, 2);
    float *w = randv(20 * 32, 0.2), s[32];
    for (int j = 0; j < 32; j++) s[j] = (float)(0.5 + urand());
    quant_grid g;
    quant_grid_default(&g);
    g.bits = 3;
    g.group = 8;
    awq_mat m = { w, 20, 32 };
    double a = awq_scaled_error(&g, &m, 1, s, c.h, 2);
    float *ws = malloc(sizeof(float) * 20 * 32), *deq = malloc(sizeof(float) * 20 * 32), *hs = malloc(sizeof(float) * 32 * 32);
    uint8_t codes[20 * 32];
    float sc[20 * 4], zr[20 * 4];
    memcpy(ws, w, sizeof(float) * 20 * 32);
    awq_scale_cols(ws, 20, 32, s);
    CHECK(quant_rtn_rows(&g, NULL, ws, 20, 32, codes, sc, zr, deq, NULL) == 0);
    memcpy(hs, c.h, sizeof(float) * 32 * 32);
    awq_scale_hessian(hs, 32, s);
    double b = gptq_proxy_loss(ws, deq, hs, 20, 32);
    CHECK_NEAR(a / b, 1.0, 1e-4);
    free(w); free(ws); free(deq); free(hs); free_calib(&c);
}

TEST(search_beats_rtn_with_outliers)
{
    calib ca = make_calib(256, D, 3), co = make_calib(64, D, 2), cm = make_calib(256, D, 3), cd = make_calib(256, HID, 4);
    awq_layer L;
    make_layer(&L, &ca, &co, &cm, &cd);
    awq_opts o;
    awq_opts_default(&o);
    o.grid.bits = 3;
    o.grid.group = 16;
    char *err = NULL;
    CHECK(awq_layer_scale(&L, &o, &err) == 0);
    for (int g = 0; g < AWQ_NGROUPS; g++) {
        CHECK(L.loss_best[g] <= L.loss_rtn[g]);    // α = 0 is plain RTN
        CHECK(L.loss_best[g] < 0.95 * L.loss_rtn[g]);   // outlier channels: scaling pays
        CHECK(L.alpha[g] > 0 && L.alpha[g] < 1);
    }
    free_layer(&L);
    free_calib(&ca); free_calib(&co); free_calib(&cm); free_calib(&cd);
}

/* Brute force of one (row, group): shrink factors 1 − i/20, i < 10. */
static double brute_clip(const float *w, int n, const float *h, int ld, int bits, float *best_m)
{
    double best = INFINITY;
    float mx = 0;
    for (int k = 0; k < n; k++) mx = fmaxf(mx, fabsf(w[k]));
    for (int i = 0; i < 10; i++) {
        float m = mx * (float)(1.0 - i / 20.0), wc[64], lo = 0, hi = 0;
        for (int k = 0; k < n; k++) { wc[k] = fminf(fmaxf(w[k], -m), m); lo = fminf(lo, wc[k]); hi = fmaxf(hi, wc[k]); }
        // quant.py asymmetric min/max params, written out
        const int maxq = (1 << bits) - 1;
        float sc = (hi - lo) / (float)maxq, z = nearbyintf(-lo / sc);
        double e[64], err = 0;
        for (int k = 0; k < n; k++) {
            float q = fminf(fmaxf(nearbyintf(wc[k] / sc) + z, 0), (float)maxq);
            e[k] = (double)(sc * (q - z)) - w[k];
        }
        for (int a = 0; a < n; a++)
            for (int b = 0; b < n; b++) err += e[a] * h[a * ld + b] * e[b];
        if (err < best) { best = err; *best_m = m; }
    }
    return best;
}

TEST(clip_matches_brute_force)
{
    const int R = 5, C = 32, G = 16;
    calib c = make_calib(100, C, 2);
    float *w = randv(R * C, 1.0), *w0 = malloc(sizeof(float) * R * C);
    for (int r = 0; r < R; r++) w[r * C + 3] *= 6;   // an outlier weight to clip
    memcpy(w0, w, sizeof(float) * R * C);
    quant_grid g;
    quant_grid_default(&g);
    g.bits = 3;
    g.group = G;
    double before, after, bsum = 0;
    CHECK(awq_clip_matrix(&g, 0.5, 20, w, R, C, c.h, 2, &before, &after) == 0);
    CHECK(after <= before);
    CHECK(after < before);
    for (int r = 0; r < R; r++)
        for (int c0 = 0; c0 < C; c0 += G) {
            float m = 0;
            bsum += brute_clip(w0 + r * C + c0, G, c.h + c0 * C + c0, C, 3, &m);
            for (int k = 0; k < G; k++)
                CHECK(w[r * C + c0 + k] == fminf(fmaxf(w0[r * C + c0 + k], -m), m));
        }
    CHECK_NEAR(after / bsum, 1.0, 1e-6);
    free(w); free(w0); free_calib(&c);
}

TEST(smooth_scales_formula)
{
    float w1[2 * 3] = { 1, -4, 0.5f, 2, 1, -0.25f }, w2[1 * 3] = { -3, 0.5f, 0 };
    awq_mat m[2] = { { w1, 2, 3 }, { w2, 1, 3 } };
    float a[3] = { 9, 1, 0 }, s[3];
    awq_smooth_scales(a, m, 2, 0.5, s);
    CHECK_NEAR(s[0], 3.0 / sqrt(3.0), 1e-6);     // wmax 3 (w2 row 0)
    CHECK_NEAR(s[1], 1.0 / sqrt(4.0), 1e-6);     // wmax 4
    CHECK_NEAR(s[2], 1e-5, 1e-12);               // a = 0: clamped
}

TEST(moments_of_scaled_input)
{
    float v[3] = { 4, 9, 1 }, s[3] = { 2, 3, 0.5f }, h[4] = { 4, 6, 6, 9 }, s2[2] = { 2, 3 };
    awq_scale_moment(v, 3, s, 2);
    CHECK(v[0] == 1 && v[1] == 1 && v[2] == 4);
    awq_scale_hessian(h, 2, s2);
    CHECK(h[0] == 1 && h[1] == 1 && h[2] == 1 && h[3] == 1);
}

int main(void)
{
    RUN(folding_identity_awq);
    RUN(folding_identity_awq_duo);
    RUN(folding_identity_smoothquant);
    RUN(gqa_skips_v_to_o);
    RUN(output_error_matches_proxy_loss);
    RUN(candidate_scales_normalised);
    RUN(scaled_error_equals_scaled_hessian_form);
    RUN(search_beats_rtn_with_outliers);
    RUN(clip_matches_brute_force);
    RUN(smooth_scales_formula);
    RUN(moments_of_scaled_input);
    return tl_summary();
}
