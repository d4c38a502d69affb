/* test_prune — magnitude, Wanda and SparseGPT masks (common/prune.h):
 * exact sparsity per row (unstructured) and per M-run (N:M) on random data
 * and on the GPTQ fixture layer (tests/data/gptq: W and H); Wanda on a
 * hand-computed example; SparseGPT's reconstruction loss tr((W-Ŵ)H(W-Ŵ)ᵀ)
 * against Wanda's and magnitude's, and against an independent OBS
 * implementation written here (explicit inverses of the remaining columns'
 * Hessian, double precision, one column at a time); thread independence;
 * structured scores and cuts. */
#include "testlib.h"

#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "gptq.h"
#include "prune.h"
#include "source.h"

#define FIXTURE "tests/data/gptq/gptq-128x512"

static float *FW, *FH, *FX2;       /* fixture W [FR, FC], H [FC, FC], diag(H) */
static int64_t FR, FC;

/*-*** Helpers ***/

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void)          /* xorshift64*, in (0, 1) */
{
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return ((double)((rng_state * 2685821657736338717ull) >> 11) + 0.5) / 9007199254740992.0;
}
static double grand(void) { return sqrt(-2 * log(urand())) * cos(6.283185307179586 * urand()); }

static float *rand_matrix(int64_t rows, int64_t cols)
{
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    for (int64_t i = 0; i < rows * cols; i++) w[i] = (float)grand();
    return w;
}

/* A positive definite "Hessian" X^T X of n correlated random samples. */
static float *rand_hessian(int64_t cols, int64_t n)
{
    double *x = malloc((size_t)(n * cols) * sizeof *x);
    for (int64_t t = 0; t < n; t++) {
        const double z = grand();
        for (int64_t c = 0; c < cols; c++) x[t * cols + c] = (0.5 + (double)(c % 7)) * (grand() + 0.7 * z);
    }
    float *h = malloc((size_t)(cols * cols) * sizeof *h);
    for (int64_t a = 0; a < cols; a++)
        for (int64_t b = 0; b < cols; b++) {
            double s = 0;
            for (int64_t t = 0; t < n; t++) s += x[t * cols + a] * x[t * cols + b];
            h[a * cols + b] = (float)s;
        }
    free(x);
    return h;
}

static float *diag_of(const float *h, int64_t n)
{
    float *d = malloc((size_t)n * sizeof *d);
    for (int64_t i = 0; i < n; i++) d[i] = h[i * n + i];
    return d;
}

static float *copy_of(const float *w, int64_t n)
{
    float *c = malloc((size_t)n * sizeof *c);
    memcpy(c, w, (size_t)n * sizeof *c);
    return c;
}

static int64_t zeros_in(const float *w, int64_t n)
{
    int64_t z = 0;
    for (int64_t i = 0; i < n; i++) z += w[i] == 0.0f;
    return z;
}

/* Every row has exactly `expect` zeros. */
static int rows_have_zeros(const float *w, int64_t rows, int64_t cols, int64_t expect)
{
    for (int64_t r = 0; r < rows; r++)
        if (zeros_in(w + r * cols, cols) != expect) {
            fprintf(stderr, "  row %lld: %lld zeros, expected %lld\n", (long long)r,
                    (long long)zeros_in(w + r * cols, cols), (long long)expect);
            return 0;
        }
    return 1;
}

/* Every run of m inputs of every row has exactly m - n zeros. */
static int runs_have_zeros(const float *w, int64_t rows, int64_t cols, int n, int m)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c += m)
            if (zeros_in(w + r * cols + c, m) != m - n) return 0;
    return 1;
}

static int run_prune(prune_method method, double ratio, int nm_n, int nm_m, int per_layer, int threads,
                     float *w, int64_t rows, int64_t cols, const float *x2, const float *h)
{
    prune_opts o;
    prune_opts_default(&o);
    o.method = method;
    o.ratio = ratio;
    o.nm_n = nm_n;
    o.nm_m = nm_m;
    o.per_layer = per_layer;
    o.threads = threads;
    prune_stats st = { x2, 1000, h };
    char *err = NULL;
    int rc = prune_matrix(&o, w, rows, cols, &st, NULL, &err);
    if (rc) { fprintf(stderr, "  prune_matrix: %s\n", err); free(err); }
    return rc;
}

/*-*** Selection and counts ***/

TEST(select_smallest_breaks_ties_by_index)
{
    const double s[6] = { 3, 1, 2, 1, NAN, 0.5 };
    int64_t scratch[6];
    uint8_t m[6];
    prune_select_smallest(s, 6, 3, m, scratch);
    const uint8_t want[6] = { 0, 1, 0, 1, 0, 1 };
    CHECK(!memcmp(m, want, 6));
    prune_select_smallest(s, 6, 2, m, scratch);      // 0.5 and the first 1
    const uint8_t want2[6] = { 0, 1, 0, 0, 0, 1 };
    CHECK(!memcmp(m, want2, 6));
    prune_select_smallest(s, 6, 5, m, scratch);      // NaN comes last
    CHECK(m[4] == 0 && m[0] == 1);
    CHECK(prune_count(0.5, 7) == 4 && prune_count(0.3, 10) == 3 && prune_count(0.25, 6) == 2);
}

/* Against the definition: j is selected iff fewer than k entries come before
 * it in the order (score, index); sizes around the quickselect cut-off, many ties. */
TEST(select_smallest_matches_definition)
{
    static const int64_t sizes[] = { 1, 2, 3, 7, 16, 17, 33, 128, 300, 1000 };
    for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++) {
        const int64_t n = sizes[z];
        double *s = malloc((size_t)n * sizeof *s);
        int64_t *scratch = malloc((size_t)n * sizeof *scratch);
        uint8_t *m = malloc((size_t)n);
        for (int trial = 0; trial < 6; trial++) {
            for (int64_t j = 0; j < n; j++) s[j] = trial % 2 ? floor(urand() * 5) : urand();
            const int64_t k = (int64_t)(urand() * (double)(n + 1));
            prune_select_smallest(s, n, k, m, scratch);
            int bad = 0;
            for (int64_t j = 0; j < n; j++) {
                int64_t rank = 0;
                for (int64_t i = 0; i < n; i++) rank += s[i] < s[j] || (s[i] == s[j] && i < j);
                bad += m[j] != (rank < k);
            }
            CHECK_MSG(bad == 0, "n %lld k %lld trial %d", (long long)n, (long long)k, trial);
        }
        free(s); free(scratch); free(m);
    }
}

TEST(options_are_checked)
{
    prune_opts o;
    char *err = NULL;
    prune_opts_default(&o);
    o.ratio = 1.0;
    CHECK(prune_opts_check(&o, 64, &err) == -1 && err && strstr(err, "sparsity"));
    free(err); err = NULL;
    prune_opts_default(&o);
    o.nm_n = 2; o.nm_m = 4;
    CHECK(prune_opts_check(&o, 66, &err) == -1 && err && strstr(err, "multiple"));
    free(err); err = NULL;
    o.nm_n = 4;
    CHECK(prune_opts_check(&o, 64, &err) == -1);
    free(err); err = NULL;
    prune_opts_default(&o);
    quant_grid g;
    quant_grid_default(&g);
    o.quant = &g;
    CHECK(prune_opts_check(&o, 64, &err) == -1 && err && strstr(err, "SparseGPT"));
    free(err); err = NULL;
    o.method = PRUNE_SPARSEGPT;
    CHECK(prune_opts_check(&o, 128, &err) == 0);
    float w[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    prune_opts_default(&o);
    o.method = PRUNE_WANDA;
    CHECK(prune_matrix(&o, w, 2, 4, NULL, NULL, &err) == -1 && err && strstr(err, "x2_mean"));
    free(err);
}

/*-*** Wanda by hand ***/

/* W row [1 -2 3 -5 .5 .25 7 -1], x2_mean [16 1 1 .25 4 4 1 1], n_tokens 4:
 * ||X|| = sqrt(x2*4) = [8 2 2 1 4 4 2 2]; scores |W|*||X|| = [8 4 6 5 2 1 14 2].
 * 50 %: the 4 smallest are 1 (c5), 2 (c4), 2 (c7), 4 (c1) -> [1 0 3 -5 0 0 7 0].
 * 2:4: run 0 [8 4 6 5] drops c1, c3; run 1 [2 1 14 2] drops c5 and, of the tied
 * c4/c7, c4 -> [1 0 3 0 0 0 7 -1]. Magnitude 50 %: |W| [1 2 3 5 .5 .25 7 1]
 * drops c5, c4, then the tied c0/c7 -> c0 (lower index) and c7 -> [0 -2 3 -5 0 0 7 0]. */
TEST(wanda_hand_example)
{
    const float row[8] = { 1, -2, 3, -5, 0.5f, 0.25f, 7, -1 };
    const float x2[8] = { 16, 1, 1, 0.25f, 4, 4, 1, 1 };
    prune_opts o;
    prune_opts_default(&o);
    prune_stats st = { x2, 4, NULL };
    char *err = NULL;
    float w[8];

    memcpy(w, row, sizeof w);
    o.method = PRUNE_WANDA;
    CHECK(prune_matrix(&o, w, 1, 8, &st, NULL, &err) == 0);
    const float want_u[8] = { 1, 0, 3, -5, 0, 0, 7, 0 };
    CHECK(!memcmp(w, want_u, sizeof w));

    memcpy(w, row, sizeof w);
    o.nm_n = 2; o.nm_m = 4;
    CHECK(prune_matrix(&o, w, 1, 8, &st, NULL, &err) == 0);
    const float want_nm[8] = { 1, 0, 3, 0, 0, 0, 7, -1 };
    CHECK(!memcmp(w, want_nm, sizeof w));

    memcpy(w, row, sizeof w);
    o.method = PRUNE_MAGNITUDE; o.nm_n = o.nm_m = 0;
    CHECK(prune_matrix(&o, w, 1, 8, &st, NULL, &err) == 0);
    const float want_mag[8] = { 0, -2, 3, -5, 0, 0, 7, 0 };
    CHECK(!memcmp(w, want_mag, sizeof w));

    double s[8];
    prune_score_row(row, 8, x2, 4, s);
    const double want_s[8] = { 8, 4, 6, 5, 2, 1, 14, 2 };
    for (int j = 0; j < 8; j++) CHECK_NEAR(s[j], want_s[j], 1e-12);
}

/* The kept weights of each row are the best-scored ones: no pruned score
 * exceeds a kept score (Wanda, unstructured). */
TEST(wanda_keeps_the_best_scores)
{
    const int64_t R = 9, C = 200;
    float *w = rand_matrix(R, C), *orig = copy_of(w, R * C), *x2 = malloc(C * sizeof *x2);
    for (int64_t c = 0; c < C; c++) x2[c] = (float)(0.01 + 3 * urand());
    CHECK(run_prune(PRUNE_WANDA, 0.4, 0, 0, 0, 1, w, R, C, x2, NULL) == 0);
    double s[200];
    for (int64_t r = 0; r < R; r++) {
        prune_score_row(orig + r * C, C, x2, 1000, s);
        double maxp = -1, mink = INFINITY;
        for (int64_t c = 0; c < C; c++) {
            if (w[r * C + c] == 0.0f) { if (s[c] > maxp) maxp = s[c]; }
            else {
                if (s[c] < mink) mink = s[c];
                CHECK(w[r * C + c] == orig[r * C + c]);     // no update
            }
        }
        CHECK(maxp <= mink);
    }
    free(w); free(orig); free(x2);
}

/*-*** Exact sparsity ***/

TEST(unstructured_exact_per_row_random)
{
    const int64_t R = 37, C = 300;     // C not a multiple of the SparseGPT block
    float *h = rand_hessian(C, 400), *x2 = diag_of(h, C);
    const double ratios[3] = { 0.5, 0.3, 0.77 };
    for (int m = 0; m < 3; m++)
        for (int k = 0; k < 3; k++) {
            float *w = rand_matrix(R, C);
            CHECK(run_prune((prune_method)m, ratios[k], 0, 0, 0, 2, w, R, C, x2, h) == 0);
            CHECK_MSG(rows_have_zeros(w, R, C, prune_count(ratios[k], C)), "method %d ratio %g", m, ratios[k]);
            free(w);
        }
    free(h); free(x2);
}

TEST(nm_exact_per_run_random)
{
    const int64_t R = 20, C = 256;
    float *h = rand_hessian(C, 400), *x2 = diag_of(h, C);
    const int nm[3][2] = { { 2, 4 }, { 4, 8 }, { 1, 4 } };
    for (int m = 0; m < 3; m++)
        for (int k = 0; k < 3; k++) {
            float *w = rand_matrix(R, C);
            CHECK(run_prune((prune_method)m, 0, nm[k][0], nm[k][1], 0, 3, w, R, C, x2, h) == 0);
            CHECK_MSG(runs_have_zeros(w, R, C, nm[k][0], nm[k][1]), "method %d %d:%d", m, nm[k][0], nm[k][1]);
            free(w);
        }
    free(h); free(x2);
}

TEST(per_layer_exact_in_total)
{
    const int64_t R = 33, C = 160;
    float *h = rand_hessian(C, 300), *x2 = diag_of(h, C);
    for (int m = 0; m < 3; m++) {
        float *w = rand_matrix(R, C);
        CHECK(run_prune((prune_method)m, 0.45, 0, 0, 1, 4, w, R, C, x2, h) == 0);
        CHECK_MSG(zeros_in(w, R * C) == prune_count(0.45, R * C), "method %d: %lld zeros", m,
                  (long long)zeros_in(w, R * C));
        free(w);
    }
    // magnitude per layer: one threshold over the matrix
    float *w = rand_matrix(R, C), *orig = copy_of(w, R * C);
    CHECK(run_prune(PRUNE_MAGNITUDE, 0.45, 0, 0, 1, 1, w, R, C, NULL, NULL) == 0);
    float maxp = 0, mink = INFINITY;
    for (int64_t i = 0; i < R * C; i++) {
        if (w[i] == 0.0f) maxp = fmaxf(maxp, fabsf(orig[i]));
        else mink = fminf(mink, fabsf(orig[i]));
    }
    CHECK(maxp <= mink);
    free(w); free(orig); free(h); free(x2);
}

TEST(fixture_exact_sparsity)
{
    for (int m = 0; m < 3; m++) {
        float *w = copy_of(FW, FR * FC);
        CHECK(run_prune((prune_method)m, 0.5, 0, 0, 0, 2, w, FR, FC, FX2, FH) == 0);
        CHECK_MSG(rows_have_zeros(w, FR, FC, FC / 2), "method %d", m);
        memcpy(w, FW, (size_t)(FR * FC) * sizeof *w);
        CHECK(run_prune((prune_method)m, 0, 2, 4, 0, 2, w, FR, FC, FX2, FH) == 0);
        CHECK_MSG(runs_have_zeros(w, FR, FC, 2, 4), "method %d 2:4", m);
        free(w);
    }
}

/*-*** SparseGPT quality ***/

static double loss_of(prune_method m, double ratio, int n, int mm)
{
    float *w = copy_of(FW, FR * FC);
    double l = NAN;
    if (run_prune(m, ratio, n, mm, 0, 2, w, FR, FC, FX2, FH) == 0) l = gptq_proxy_loss(FW, w, FH, FR, FC);
    free(w);
    return l;
}

TEST(sparsegpt_loss_below_wanda_and_magnitude)
{
    const double cases[3][3] = { { 0.5, 0, 0 }, { 0, 2, 4 }, { 0.7, 0, 0 } };
    for (int k = 0; k < 3; k++) {
        const double mag = loss_of(PRUNE_MAGNITUDE, cases[k][0], (int)cases[k][1], (int)cases[k][2]);
        const double wan = loss_of(PRUNE_WANDA, cases[k][0], (int)cases[k][1], (int)cases[k][2]);
        const double sgp = loss_of(PRUNE_SPARSEGPT, cases[k][0], (int)cases[k][1], (int)cases[k][2]);
        fprintf(stderr, "  # fixture loss case %d: magnitude %.6g wanda %.6g sparsegpt %.6g\n", k, mag, wan, sgp);
        CHECK(sgp < wan && sgp < mag);
        CHECK(wan < mag);       // the fixture has outlier input channels: activations matter
    }
}

/* Independent SparseGPT: the OBS update written directly. For the remaining
 * columns F = {i, ..., n-1}, Finv = (H_FF)^-1 by Gauss-Jordan in double;
 * removing w_i (pruned: target 0, kept: target w_i) moves the remaining
 * weights by -(w_i - q_i) / Finv_00 * Finv[:, 0]. The SparseGPT score of
 * column c is w_c^2 / [(H_{c:, c:})^-1]_00 (= the squared diagonal of the
 * upper Cholesky factor of H^-1). Mask choice as in prune.h: per row at each
 * block start (exact cumulative counts), or per M-run at its first column. */
static void invert(const double *a, int n, double *inv)
{
    double *m = malloc((size_t)(n * 2 * n) * sizeof *m);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 2 * n; j++) m[i * 2 * n + j] = j < n ? a[i * n + j] : (j - n == i);
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++) if (fabs(m[r * 2 * n + c]) > fabs(m[p * 2 * n + c])) p = r;
        for (int j = 0; j < 2 * n; j++) { double t = m[c * 2 * n + j]; m[c * 2 * n + j] = m[p * 2 * n + j]; m[p * 2 * n + j] = t; }
        const double d = m[c * 2 * n + c];
        for (int j = 0; j < 2 * n; j++) m[c * 2 * n + j] /= d;
        for (int r = 0; r < n; r++) {
            if (r == c) continue;
            const double f = m[r * 2 * n + c];
            for (int j = 0; j < 2 * n; j++) m[r * 2 * n + j] -= f * m[c * 2 * n + j];
        }
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) inv[i * n + j] = m[i * 2 * n + n + j];
    free(m);
}

static void obs_reference(const float *w0, int rows, int n, const float *h, double damp, int block,
                          double ratio, int nm_n, int nm_m, double *w)
{
    double *hd = malloc((size_t)(n * n) * sizeof *hd), *sub = malloc((size_t)(n * n) * sizeof *sub);
    double *finv = malloc((size_t)(n * n) * sizeof *finv), *dsq = malloc((size_t)n * sizeof *dsq);
    uint8_t *mask = calloc((size_t)(rows * n), 1);
    double mean = 0;
    for (int i = 0; i < n; i++) mean += h[i * n + i];
    mean /= n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) hd[i * n + j] = h[i * n + j] + (i == j ? damp * mean : 0);
    for (int i = 0; i < rows * n; i++) w[i] = w0[i];
    for (int c = 0; c < n; c++) {      // [(H_{c:, c:})^-1]_00
        const int m = n - c;
        for (int a = 0; a < m; a++)
            for (int b = 0; b < m; b++) sub[a * m + b] = hd[(c + a) * n + c + b];
        invert(sub, m, finv);
        dsq[c] = finv[0];
    }
    for (int i = 0; i < n; i++) {
        const int m = n - i;
        if (!nm_m && i % block == 0) {           // choose the block's mask per row
            const int bs = i + block <= n ? block : n - i;
            const int64_t k = prune_count(ratio, i + bs) - prune_count(ratio, i);
            for (int r = 0; r < rows; r++) {
                // k passes of "smallest not yet chosen" (ties: lower index)
                for (int64_t t = 0; t < k; t++) {
                    int best = -1;
                    double bv = 0;
                    for (int c = i; c < i + bs; c++) {
                        const double s = w[r * n + c] * w[r * n + c] / dsq[c];
                        if (!mask[r * n + c] && (best < 0 || s < bv)) { best = c; bv = s; }
                    }
                    mask[r * n + best] = 1;
                }
            }
        }
        if (nm_m && i % nm_m == 0)
            for (int r = 0; r < rows; r++)
                for (int t = 0; t < nm_m - nm_n; t++) {
                    int best = -1;
                    double bv = 0;
                    for (int c = i; c < i + nm_m; c++) {
                        const double s = w[r * n + c] * w[r * n + c] / dsq[c];
                        if (!mask[r * n + c] && (best < 0 || s < bv)) { best = c; bv = s; }
                    }
                    mask[r * n + best] = 1;
                }
        for (int a = 0; a < m; a++)
            for (int b = 0; b < m; b++) sub[a * m + b] = hd[(i + a) * n + i + b];
        invert(sub, m, finv);
        for (int r = 0; r < rows; r++) {
            if (!mask[r * n + i]) continue;      // kept: target = w_i, no move
            const double f = w[r * n + i] / finv[0];
            for (int a = 0; a < m; a++) w[r * n + i + a] -= f * finv[a * m];
            w[r * n + i] = 0.0;
        }
    }
    free(hd); free(sub); free(finv); free(dsq); free(mask);
}

static void compare_with_obs(double ratio, int nm_n, int nm_m)
{
    const int R = 12, N = 96, B = 32;
    // a 96-column corner of the fixture: W rows 0..11, H[0:96, 0:96]
    float *w = malloc((size_t)(R * N) * sizeof *w), *h = malloc((size_t)(N * N) * sizeof *h);
    for (int r = 0; r < R; r++) memcpy(w + r * N, FW + r * FC, N * sizeof *w);
    for (int a = 0; a < N; a++) memcpy(h + a * N, FH + a * FC, N * sizeof *h);
    double *ref = malloc((size_t)(R * N) * sizeof *ref);
    obs_reference(w, R, N, h, 0.01, B, ratio, nm_n, nm_m, ref);
    prune_opts o;
    prune_opts_default(&o);
    o.method = PRUNE_SPARSEGPT;
    o.ratio = ratio;
    o.nm_n = nm_n;
    o.nm_m = nm_m;
    o.block = B;
    prune_stats st = { NULL, 0, h };
    char *err = NULL;
    float *q = copy_of(w, R * N);
    CHECK(prune_matrix(&o, q, R, N, &st, NULL, &err) == 0);
    double maxd = 0, maxw = 0;
    int mask_diff = 0;
    for (int i = 0; i < R * N; i++) {
        mask_diff += (q[i] == 0.0f) != (ref[i] == 0.0);
        maxd = fmax(maxd, fabs(q[i] - ref[i]));
        maxw = fmax(maxw, fabs(ref[i]));
    }
    const double lq = gptq_proxy_loss(w, q, h, R, N);
    float *rf = malloc((size_t)(R * N) * sizeof *rf);
    for (int i = 0; i < R * N; i++) rf[i] = (float)ref[i];
    const double lr = gptq_proxy_loss(w, rf, h, R, N);
    fprintf(stderr, "  # obs %g %d:%d: mask differences %d, max |diff| %.3g of max |w| %.3g, loss %.6g vs %.6g\n",
            ratio, nm_n, nm_m, mask_diff, maxd, maxw, lq, lr);
    CHECK(mask_diff == 0);
    CHECK(maxd <= 1e-3 * maxw);
    CHECK_NEAR(lq, lr, 1e-3 * lr);
    free(w); free(h); free(ref); free(q); free(rf);
}

TEST(sparsegpt_matches_obs_reference)
{
    compare_with_obs(0.5, 0, 0);
    compare_with_obs(0.6, 0, 0);
    compare_with_obs(0, 2, 4);
}

TEST(sparsegpt_joint_quantization)
{
    quant_grid g;
    quant_grid_default(&g);
    g.bits = 4;
    const int groups[2] = { -1, 128 };
    for (int k = 0; k < 2; k++) {
        g.group = groups[k];
        prune_opts o;
        prune_opts_default(&o);
        o.method = PRUNE_SPARSEGPT;
        o.nm_n = 2; o.nm_m = 4;
        o.quant = &g;
        o.threads = 3;
        prune_stats st = { NULL, 0, FH };
        prune_qresult q;
        char *err = NULL;
        float *w = copy_of(FW, FR * FC);
        CHECK(prune_matrix(&o, w, FR, FC, &st, &q, &err) == 0);
        CHECK(q.ngroups == (g.group < 0 ? 1 : FC / g.group));
        int bad = 0;
        for (int64_t r = 0; r < FR; r++)
            for (int64_t c = 0; c < FC; c++) {
                const int64_t gi = r * q.ngroups + (g.group < 0 ? 0 : c / g.group);
                bad += quant_int_value(q.codes[r * FC + c], q.scales[gi], q.zeros[gi]) != w[r * FC + c];
            }
        CHECK(bad == 0);
        // at least 2 zeros in every run of 4 (a kept weight may also round to 0)
        int runs_ok = 1;
        for (int64_t i = 0; i < FR * FC; i += 4) runs_ok &= zeros_in(w + i, 4) >= 2;
        CHECK(runs_ok);
        const double lj = gptq_proxy_loss(FW, w, FH, FR, FC), lp = loss_of(PRUNE_SPARSEGPT, 0, 2, 4);
        fprintf(stderr, "  # joint 2:4 + int4 g%d loss %.6g (2:4 alone %.6g)\n", g.group, lj, lp);
        CHECK(lj > lp && lj < 1.5 * lp);
        prune_qresult_free(&q);
        free(w);
    }
}

TEST(results_ignore_thread_count)
{
    for (int m = 0; m < 3; m++)
        for (int nm = 0; nm < 2; nm++) {
            float *a = copy_of(FW, FR * FC), *b = copy_of(FW, FR * FC);
            CHECK(run_prune((prune_method)m, 0.5, nm ? 2 : 0, nm ? 4 : 0, 0, 1, a, FR, FC, FX2, FH) == 0);
            CHECK(run_prune((prune_method)m, 0.5, nm ? 2 : 0, nm ? 4 : 0, 0, 5, b, FR, FC, FX2, FH) == 0);
            CHECK_MSG(!memcmp(a, b, (size_t)(FR * FC) * sizeof *a), "method %d nm %d", m, nm);
            free(a); free(b);
        }
}

TEST(dead_inputs_are_pruned_first)
{
    const int64_t R = 8, C = 64;
    float *h = rand_hessian(C, 200), *w = rand_matrix(R, C);
    for (int64_t j = 0; j < C; j++) { h[5 * C + j] = 0; h[j * C + 5] = 0; }   // input 5 never fires
    CHECK(run_prune(PRUNE_SPARSEGPT, 0.25, 0, 0, 0, 1, w, R, C, NULL, h) == 0);
    CHECK(rows_have_zeros(w, R, C, 16));
    for (int64_t r = 0; r < R; r++) CHECK(w[r * C + 5] == 0.0f);
    free(h); free(w);
}

/*-*** Structured ***/

TEST(structured_scores_and_cuts)
{
    // W [2, 3]: column L1 norms [3, 1, 5]; x2 [1, 16, 0.25], n 4 -> ||X|| [2, 8, 1]
    const float w[6] = { 1, -1, 2, -2, 0, 3 };
    const float x2[3] = { 1, 16, 0.25f };
    double s[3];
    prune_channel_scores(w, 2, 3, x2, 4, s);
    CHECK_NEAR(s[0], 6, 1e-12); CHECK_NEAR(s[1], 8, 1e-12); CHECK_NEAR(s[2], 5, 1e-12);
    prune_channel_scores(w, 2, 3, NULL, 0, s);
    CHECK_NEAR(s[0], 3, 1e-12); CHECK_NEAR(s[1], 1, 1e-12); CHECK_NEAR(s[2], 5, 1e-12);
    const double t[5] = { 4, 9, 4, 1, 9 };
    int64_t keep[5];
    char *err = NULL;
    CHECK(prune_keep_largest(t, 5, 3, keep, &err) == 0);
    CHECK(keep[0] == 0 && keep[1] == 1 && keep[2] == 4);        // of the tied 4s, index 0 stays
    CHECK(prune_keep_largest(t, 5, 0, keep, &err) == -1 && err);
    free(err);
    const uint16_t m[12] = { 0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23 };   // [3, 4]
    uint16_t out[8];
    const int64_t k2[2] = { 0, 2 };
    prune_take_rows(m, 4, 2, k2, 2, out);
    const uint16_t wr[8] = { 0, 1, 2, 3, 20, 21, 22, 23 };
    CHECK(!memcmp(out, wr, sizeof wr));
    const int64_t k3[2] = { 1, 3 };
    prune_take_cols(m, 3, 4, 2, k3, 2, out);
    const uint16_t wc[6] = { 1, 3, 11, 13, 21, 23 };
    CHECK(!memcmp(out, wc, sizeof wc));
}

/*-*** Fixture ***/

static float *load(qsrc *fx, const char *name, int64_t numel)
{
    int idx = qsrc_find(fx, name);
    if (idx < 0 || fx->tensors[idx].dtype != DT_F32) return NULL;
    float *p = malloc((size_t)numel * sizeof *p);
    char *err = NULL;
    if (qsrc_read(fx, idx, 0, p, (size_t)numel * sizeof *p, &err)) { free(err); free(p); return NULL; }
    return p;
}

static int fixture_open(void)
{
    char *err = NULL;
    qsrc *fx = qsrc_open(FIXTURE ".safetensors", &err);
    if (!fx) { fprintf(stderr, "  %s\n", err); free(err); return -1; }
    json_error_t je;
    json_t *j = json_load_file(FIXTURE ".json", 0, &je);
    if (!j) { qsrc_close(fx); return -1; }
    FR = json_integer_value(json_object_get(j, "d_out"));
    FC = json_integer_value(json_object_get(j, "d_in"));
    json_decref(j);
    FW = load(fx, "W", FR * FC);
    FH = load(fx, "H", FC * FC);
    qsrc_close(fx);
    if (!FW || !FH) return -1;
    FX2 = diag_of(FH, FC);   // x2_mean is proportional to diag(H): Wanda's ranking is the same
    return 0;
}

int main(void)
{
    RUN(select_smallest_breaks_ties_by_index);
    RUN(select_smallest_matches_definition);
    RUN(options_are_checked);
    RUN(wanda_hand_example);
    RUN(wanda_keeps_the_best_scores);
    RUN(unstructured_exact_per_row_random);
    RUN(nm_exact_per_run_random);
    RUN(per_layer_exact_in_total);
    RUN(dead_inputs_are_pruned_first);
    RUN(structured_scores_and_cuts);
    if (fixture_open()) {
        printf("not ok - fixture %s\n", FIXTURE);
        return 1;
    }
    RUN(fixture_exact_sparsity);
    RUN(sparsegpt_loss_below_wanda_and_magnitude);
    RUN(sparsegpt_matches_obs_reference);
    RUN(sparsegpt_joint_quantization);
    RUN(results_ignore_thread_count);
    free(FW); free(FH); free(FX2);
    return tl_summary();
}
