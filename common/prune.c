/* prune — magnitude / Wanda / SparseGPT masks and updates, structured cuts (see prune.h).
 *
 * Primary sources: locuslab/wanda lib/prune.py (prune_wanda, prune_magnitude)
 * @ 8e8fc87b; IST-DASLab/sparsegpt sparsegpt.py (SparseGPT.fasterprune) @
 * 147d2159. Step numbers refer to algorithms.md §3 (Wanda) and §4 (SparseGPT).
 * SparseGPT runs on gptq.h's block-update engine: this file supplies only the
 * mask selection (the `begin` and `column` callbacks) and the joint quantizer.
 */
#include "prune.h"
#include "err.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gptq.h"

#define PRUNE_MAX_M 256      /* largest M of N:M (one run is scored on the stack) */

/*-*** Options ***/

void prune_opts_default(prune_opts *o)
{
    memset(o, 0, sizeof *o);
    o->method = PRUNE_MAGNITUDE;
    o->ratio = 0.5;
    o->block = 128;
    o->damp = 0.01;
    o->threads = 1;
}

static const char *const method_names[] = { "magnitude", "wanda", "sparsegpt" };

const char *prune_method_name(prune_method m)
{
    return (unsigned)m < 3 ? method_names[m] : "?";
}

int prune_method_from_name(const char *name)
{
    for (int i = 0; i < 3; i++) if (!strcmp(name, method_names[i])) return i;
    return -1;
}

const char *prune_pattern_name(const prune_opts *o, char *buf, size_t len)
{
    if (!o->nm_m) return "unstructured";
    snprintf(buf, len, "%d:%d", o->nm_n, o->nm_m);
    return buf;
}

int prune_opts_check(const prune_opts *o, int64_t cols, char **errp)
{
    if ((unsigned)o->method > PRUNE_SPARSEGPT) return err_set(errp, "prune: unknown method");
    if (!(o->ratio >= 0.0 && o->ratio < 1.0))
        return err_set(errp, "prune: sparsity %g is outside [0, 1)", o->ratio);
    if (o->nm_m && (o->nm_n < 1 || o->nm_n >= o->nm_m || o->nm_m > PRUNE_MAX_M))
        return err_set(errp, "prune: N:M needs 0 < N < M <= %d (got %d:%d)", PRUNE_MAX_M,
                                     o->nm_n, o->nm_m);
    if (o->nm_m && o->per_layer) return err_set(errp, "prune: N:M is per row; per-layer means nothing");
    if (cols && o->nm_m && cols % o->nm_m)
        return err_set(errp, "prune: %lld input columns are not a multiple of M = %d",
                                     (long long)cols, o->nm_m);
    if (o->method == PRUNE_SPARSEGPT) {
        if (o->block < 1 || !(o->damp >= 0.0)) return err_set(errp, "prune: block must be >= 1, damp >= 0");
        if (o->nm_m && o->block % o->nm_m)
            return err_set(errp, "prune: SparseGPT block %d is not a multiple of M = %d", o->block, o->nm_m);
    }
    if (o->quant) {
        if (o->method != PRUNE_SPARSEGPT) return err_set(errp, "prune: joint quantization is SparseGPT's");
        if (o->quant->scheme != QUANT_INT || o->quant->act_order)
            return err_set(errp, "prune: joint quantization supports int grids without act order");
        if (quant_grid_check(o->quant, cols, errp)) return -1;
    }
    return 0;
}

int64_t prune_count(double ratio, int64_t n)
{
    return (int64_t)floor(ratio * (double)n + 0.5);
}

/*-*** Selection ***/

/* Ascending score, then index; NaN counts as the largest score (never preferred). */
static int cmp_score(const void *a, const void *b, void *ctx)
{
    const double *s = ctx;
    const int64_t ia = *(const int64_t *)a, ib = *(const int64_t *)b;
    const double x = s[ia], y = s[ib];
    const int nx = isnan(x), ny = isnan(y);
    if (nx != ny) return nx ? 1 : -1;
    if (!nx && x != y) return x < y ? -1 : 1;
    return ia < ib ? -1 : ia > ib;
}

/* Total order: is (s[a], a) before (s[b], b)? */
static int before(const double *s, int64_t a, int64_t b)
{
    return cmp_score(&a, &b, (void *)s) < 0;
}

/* Quickselect (median-of-three, Lomuto partition) until idx[0..k) holds the k
 * smallest under the total order; after 2 log2(n) + 8 rounds, sort instead.
 * The k smallest under a total order are one set, so the mask does not depend
 * on how they were found. */
static void select_k(const double *s, int64_t *idx, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n, rounds = 8;
    for (int64_t m = n; m > 1; m >>= 1) rounds += 2;
    while (hi - lo > 16 && rounds-- > 0) {
        const int64_t mid = lo + (hi - lo) / 2;
        int64_t a = idx[lo], b = idx[mid], c = idx[hi - 1], piv;
        if (before(s, a, b)) piv = before(s, b, c) ? b : (before(s, a, c) ? c : a);
        else piv = before(s, a, c) ? a : (before(s, b, c) ? c : b);
        int64_t store = lo;
        for (int64_t i = lo; i < hi; i++)          // [lo, store) < pivot
            if (before(s, idx[i], piv)) { int64_t t = idx[i]; idx[i] = idx[store]; idx[store++] = t; }
        for (int64_t i = store; i < hi; i++)       // pivot itself next
            if (idx[i] == piv) { idx[i] = idx[store]; idx[store] = piv; break; }
        if (k <= store) hi = store;
        else if (k > store + 1) lo = store + 1;
        else return;
    }
    if (hi - lo > 1) qsort_r(idx + lo, (size_t)(hi - lo), sizeof *idx, cmp_score, (void *)s);
}

void prune_select_smallest(const double *s, int64_t n, int64_t k, uint8_t *mask, int64_t *scratch)
{
    if (k < 0) k = 0;
    if (k > n) k = n;
    memset(mask, 0, (size_t)n);
    if (k == 0) return;
    for (int64_t j = 0; j < n; j++) scratch[j] = j;
    if (k < n) select_k(s, scratch, n, k);
    for (int64_t j = 0; j < k; j++) mask[scratch[j]] = 1;
}

/*-*** Scores (§3 step 3) ***/

void prune_score_row(const float *w, int64_t cols, const float *x2_mean, int64_t n_tokens, double *s)
{
    for (int64_t j = 0; j < cols; j++) {
        const double a = fabs((double)w[j]);
        s[j] = x2_mean ? a * sqrt((double)x2_mean[j] * (double)n_tokens) : a;
    }
}

/*-*** Magnitude and Wanda ***/

typedef struct {
    const prune_opts *o;
    float *w;
    int64_t rows, cols;
    const prune_stats *st;
} score_job;

/* One row: score, choose the row's (or each M-run's) smallest, zero them. */
static void prune_row(const score_job *j, float *w, double *s, uint8_t *mask, int64_t *scratch)
{
    const prune_opts *o = j->o;
    const int64_t n = j->cols;
    prune_score_row(w, n, o->method == PRUNE_WANDA ? j->st->x2_mean : NULL, j->st->n_tokens, s);
    if (o->nm_m) {
        for (int64_t c = 0; c < n; c += o->nm_m)
            prune_select_smallest(s + c, o->nm_m, o->nm_m - o->nm_n, mask + c, scratch);
    } else {
        prune_select_smallest(s, n, prune_count(o->ratio, n), mask, scratch);
    }
    for (int64_t c = 0; c < n; c++) if (mask[c]) w[c] = 0.0f;
}

static int score_row_block(void *ctx, int64_t b)
{
    const score_job *j = ctx;
    const int64_t n = j->cols, r0 = b * PRUNE_ROW_BLOCK;
    const int64_t r1 = r0 + PRUNE_ROW_BLOCK < j->rows ? r0 + PRUNE_ROW_BLOCK : j->rows;
    double *s = malloc((size_t)n * sizeof *s);
    int64_t *scratch = malloc((size_t)n * sizeof *scratch);
    uint8_t *mask = malloc((size_t)n);
    int rc = s && scratch && mask ? 0 : -1;
    for (int64_t r = r0; rc == 0 && r < r1; r++) prune_row(j, j->w + r * n, s, mask, scratch);
    free(s);
    free(scratch);
    free(mask);
    return rc;
}

/* Whole-matrix comparison group (Wanda repo's magnitude baseline; --per-layer). */
static int prune_scores_per_layer(const score_job *j, char **errp)
{
    const int64_t n = j->rows * j->cols;
    double *s = malloc((size_t)n * sizeof *s);
    int64_t *scratch = malloc((size_t)n * sizeof *scratch);
    uint8_t *mask = malloc((size_t)n);
    if (!s || !scratch || !mask) {
        free(s); free(scratch); free(mask);
        return err_set(errp, "prune: out of memory for %lld scores", (long long)n);
    }
    const float *x2 = j->o->method == PRUNE_WANDA ? j->st->x2_mean : NULL;
    for (int64_t r = 0; r < j->rows; r++) prune_score_row(j->w + r * j->cols, j->cols, x2, j->st->n_tokens, s + r * j->cols);
    prune_select_smallest(s, n, prune_count(j->o->ratio, n), mask, scratch);
    for (int64_t i = 0; i < n; i++) if (mask[i]) j->w[i] = 0.0f;
    free(s);
    free(scratch);
    free(mask);
    return 0;
}

/*-*** SparseGPT (§4) on the gptq.h engine ***/

typedef struct {
    const prune_opts *o;
    const gptq_hinv *hv;
    const float *w0;           /* original W [rows, cols] */
    int64_t rows, cols;
    uint8_t *mask;             /* [rows, block]: mask of each row's current column block */
    prune_qresult *q;          /* joint quantization or NULL */
} sgpt_job;

static double hinv_diag(const gptq_hinv *hv, int64_t i)
{
    return (double)hv->hinv[i * hv->n + i];
}

/* SparseGPT score w^2 / [Hinv]_cc^2 of one row's block columns i1.. (bs of them). */
static void sgpt_score_block(const sgpt_job *j, const float *w1, int64_t i1, int64_t bs, double *s)
{
    for (int64_t c = 0; c < bs; c++) {
        const double w = w1[c], d = hinv_diag(j->hv, i1 + c);
        s[c] = w * w / (d * d);
    }
}

/* Step 4, unstructured: at a column block's start, score W1^2 / diag(Hinv1)^2
 * and mark the smallest: per row (k_b of the row's exact total), or over the
 * whole rows x block (per_layer, nrows == rows). */
static int sgpt_begin(void *ctx, int64_t r0, int64_t nrows, int64_t i1, int64_t i2,
                      const float *W1, const float *W)
{
    const sgpt_job *j = ctx;
    const prune_opts *o = j->o;
    const int64_t bs = i2 - i1, B = o->block;
    (void)W;
    if (o->nm_m) {          // N:M runs are chosen in the column callback
        memset(j->mask + r0 * B, 0, (size_t)(nrows * B));
        return 0;
    }
    const int64_t m = o->per_layer ? nrows * bs : bs;
    double *s = calloc((size_t)m, sizeof *s);
    int64_t *scratch = malloc((size_t)m * sizeof *scratch);
    uint8_t *mk = malloc((size_t)m);
    if (!s || !scratch || !mk) { free(s); free(scratch); free(mk); return -1; }
    if (o->per_layer) {
        for (int64_t r = 0; r < nrows; r++) sgpt_score_block(j, W1 + r * bs, i1, bs, s + r * bs);
        const int64_t k = prune_count(o->ratio, nrows * i2) - prune_count(o->ratio, nrows * i1);
        prune_select_smallest(s, m, k, mk, scratch);
        for (int64_t r = 0; r < nrows; r++) memcpy(j->mask + (r0 + r) * B, mk + r * bs, (size_t)bs);
    } else {
        // the row's exact total round(ratio*cols) split over blocks by cumulative rounding
        const int64_t k = prune_count(o->ratio, i2) - prune_count(o->ratio, i1);
        for (int64_t r = 0; r < nrows; r++) {
            sgpt_score_block(j, W1 + r * bs, i1, bs, s);
            prune_select_smallest(s, bs, k, j->mask + (r0 + r) * B, scratch);
        }
    }
    free(s);
    free(scratch);
    free(mk);
    return 0;
}

/* N:M at the first column of each run: score the run's current values. The
 * engine's w points into its W1 block copy (row stride ldw), so w[r*ldw + k]
 * for k < M are the run's current columns (the run lies inside the block). */
static void sgpt_choose_run(const sgpt_job *j, int64_t r0, int64_t nrows, int64_t i, const float *w, int64_t ldw)
{
    const prune_opts *o = j->o;
    const int64_t M = o->nm_m, ii = i % o->block;
    double s[PRUNE_MAX_M];
    int64_t scratch[PRUNE_MAX_M];
    for (int64_t r = 0; r < nrows; r++) {
        for (int64_t k = 0; k < M; k++) {
            const double v = w[r * ldw + k], d = hinv_diag(j->hv, i + k);
            s[k] = v * v / (d * d);
        }
        prune_select_smallest(s, M, M - o->nm_n, j->mask + (r0 + r) * o->block + ii, scratch);
    }
}

/* Step 4, per column: q = w with masked entries 0, then (joint) quantized. */
static int sgpt_column(void *ctx, int64_t r0, int64_t nrows, int64_t i, const float *w, int64_t ldw,
                       const float *W, float *q)
{
    const sgpt_job *j = ctx;
    const prune_opts *o = j->o;
    const int64_t n = j->cols, ii = i % o->block;
    if (o->nm_m && i % o->nm_m == 0) sgpt_choose_run(j, r0, nrows, i, w, ldw);
    const quant_grid *g = o->quant;
    prune_qresult *qr = j->q;
    const int64_t k = g && g->group > 0 ? i / g->group : 0;
    if (g && g->group > 0 && i % g->group == 0) {
        // dynamic groups (gptq.py): params from the current W[:, i:i+G]
        const int64_t len = i + g->group <= n ? g->group : n - i;
        for (int64_t r = 0; r < nrows; r++)
            quant_int_params(W + r * n + i, len, g->bits, g->sym, NULL, NULL,
                             &qr->scales[(r0 + r) * qr->ngroups + k], &qr->zeros[(r0 + r) * qr->ngroups + k]);
    }
    for (int64_t r = 0; r < nrows; r++) {
        float v = j->mask[(r0 + r) * o->block + ii] ? 0.0f : w[r * ldw];
        if (g) {
            const int64_t gi = (r0 + r) * qr->ngroups + k;
            const int code = quant_int_code(v, qr->scales[gi], qr->zeros[gi], (1 << g->bits) - 1);
            qr->codes[(r0 + r) * n + i] = (uint8_t)code;
            v = quant_int_value(code, qr->scales[gi], qr->zeros[gi]);   // 0 stays exactly 0
        }
        q[r] = v;
    }
    return 0;
}

typedef struct {
    sgpt_job *job;
    float *w;                  /* [rows, cols] in/out */
    int64_t rows_per_block;
} sgpt_driver;

static int sgpt_row_block(void *ctx, int64_t b)
{
    const sgpt_driver *d = ctx;
    const sgpt_job *j = d->job;
    const int64_t n = j->cols, r0 = b * d->rows_per_block;
    const int64_t nrows = j->rows - r0 < d->rows_per_block ? j->rows - r0 : d->rows_per_block;
    float *W = malloc((size_t)(nrows * n) * sizeof *W);
    if (!W) return -1;
    // step 1: dead inputs are zeroed
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t c = 0; c < n; c++) W[r * n + c] = j->hv->dead[c] ? 0.0f : d->w[(r0 + r) * n + c];
    const gptq_column_ops ops = { (void *)j, sgpt_begin, sgpt_column };
    int rc = gptq_update_rows(j->hv, j->o->block, W, r0, nrows, &ops);
    if (rc == 0) memcpy(d->w + r0 * n, W, (size_t)(nrows * n) * sizeof *W);
    free(W);
    return rc;
}

static int qresult_alloc(prune_qresult *q, const quant_grid *g, int64_t rows, int64_t cols)
{
    memset(q, 0, sizeof *q);
    q->rows = rows;
    q->cols = cols;
    q->ngroups = quant_ngroups(g, cols);
    q->codes = malloc((size_t)(rows * cols));
    q->scales = calloc((size_t)(rows * q->ngroups), sizeof *q->scales);
    q->zeros = calloc((size_t)(rows * q->ngroups), sizeof *q->zeros);
    return q->codes && q->scales && q->zeros ? 0 : -1;
}

void prune_qresult_free(prune_qresult *q)
{
    free(q->codes);
    free(q->scales);
    free(q->zeros);
    memset(q, 0, sizeof *q);
}

static int prune_sparsegpt(const prune_opts *o, float *w, int64_t rows, int64_t cols,
                           const prune_stats *st, prune_qresult *q, char **errp)
{
    gptq_hinv hv;
    // steps 1-3: dead columns, damping, upper Cholesky factor of H^-1
    if (gptq_hinv_prepare(st->hessian, cols, o->damp, 0, &hv, errp)) return -1;
    sgpt_job j = { o, &hv, w, rows, cols, malloc((size_t)(rows * o->block)), o->quant ? q : NULL };
    int rc = -1;
    if (!j.mask || (o->quant && qresult_alloc(q, o->quant, rows, cols))) {
        err_set(errp, "prune: out of memory for a %lld x %lld SparseGPT job", (long long)rows, (long long)cols);
        goto out;
    }
    if (o->quant && o->quant->group < 0)   // sparsegpt.py: find_params(W) on the original rows
        for (int64_t r = 0; r < rows; r++)
            quant_int_params(w + r * cols, cols, o->quant->bits, o->quant->sym, NULL, NULL,
                             &q->scales[r], &q->zeros[r]);
    sgpt_driver d = { &j, w, o->per_layer ? rows : GPTQ_ROW_BLOCK };
    int64_t failed;
    openblas_set_num_threads(1);   // parallel over row blocks, one BLAS thread each
    if (quant_parallel_for((rows + d.rows_per_block - 1) / d.rows_per_block, o->threads,
                           sgpt_row_block, &d, &failed)) {
        err_set(errp, "prune: SparseGPT row block %lld failed (out of memory)", (long long)failed);
        goto out;
    }
    rc = 0;
out:
    if (rc && o->quant) prune_qresult_free(q);
    free(j.mask);
    gptq_hinv_free(&hv);
    return rc;
}

/*-*** Entry point ***/

int prune_matrix(const prune_opts *o, float *w, int64_t rows, int64_t cols,
                 const prune_stats *st, prune_qresult *q, char **errp)
{
    static const prune_stats none = { NULL, 0, NULL };
    if (!st) st = &none;
    if (prune_opts_check(o, cols, errp)) return -1;
    if (rows < 1 || cols < 1) return err_set(errp, "prune: empty matrix");
    if (o->method == PRUNE_WANDA && (!st->x2_mean || st->n_tokens < 1))
        return err_set(errp, "prune: Wanda needs x2_mean and n_tokens statistics");
    if (o->method == PRUNE_SPARSEGPT) {
        if (!st->hessian) return err_set(errp, "prune: SparseGPT needs a Hessian");
        if (o->quant && !q) return err_set(errp, "prune: joint quantization needs a result");
        return prune_sparsegpt(o, w, rows, cols, st, q, errp);
    }
    score_job j = { o, w, rows, cols, st };
    if (o->per_layer) return prune_scores_per_layer(&j, errp);
    int64_t failed;
    if (quant_parallel_for((rows + PRUNE_ROW_BLOCK - 1) / PRUNE_ROW_BLOCK, o->threads, score_row_block, &j, &failed))
        return err_set(errp, "prune: row block %lld failed (out of memory)", (long long)failed);
    return 0;
}

/*-*** Structured pruning ***/

void prune_channel_scores(const float *w, int64_t rows, int64_t cols,
                          const float *x2_mean, int64_t n_tokens, double *s)
{
    for (int64_t c = 0; c < cols; c++) s[c] = 0.0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) s[c] += fabs((double)w[r * cols + c]);
    if (x2_mean)
        for (int64_t c = 0; c < cols; c++) s[c] *= sqrt((double)x2_mean[c] * (double)n_tokens);
}

int prune_keep_largest(const double *s, int64_t n, int64_t nkeep, int64_t *keep, char **errp)
{
    if (nkeep < 1 || nkeep > n)
        return err_set(errp, "prune: cannot keep %lld of %lld channels", (long long)nkeep, (long long)n);
    int64_t *scratch = malloc((size_t)n * sizeof *scratch);
    double *neg = calloc((size_t)n, sizeof *neg);
    uint8_t *kept = malloc((size_t)n);
    if (!scratch || !neg || !kept) {
        free(scratch); free(neg); free(kept);
        return err_set(errp, "prune: out of memory");
    }
    // the nkeep smallest of -s (ties: the lower index first)
    for (int64_t c = 0; c < n; c++) neg[c] = -s[c];
    prune_select_smallest(neg, n, nkeep, kept, scratch);
    for (int64_t c = 0, k = 0; c < n; c++) if (kept[c]) keep[k++] = c;
    free(scratch);
    free(neg);
    free(kept);
    return 0;
}

void prune_take_rows(const void *src, int64_t cols, size_t elsize,
                     const int64_t *keep, int64_t nkeep, void *dst)
{
    const size_t row = (size_t)cols * elsize;
    for (int64_t k = 0; k < nkeep; k++)
        memcpy((char *)dst + (size_t)k * row, (const char *)src + (size_t)keep[k] * row, row);
}

void prune_take_cols(const void *src, int64_t rows, int64_t cols, size_t elsize,
                     const int64_t *keep, int64_t nkeep, void *dst)
{
    for (int64_t r = 0; r < rows; r++) {
        const char *s = (const char *)src + (size_t)(r * cols) * elsize;
        char *d = (char *)dst + (size_t)(r * nkeep) * elsize;
        for (int64_t k = 0; k < nkeep; k++) memcpy(d + (size_t)k * elsize, s + (size_t)keep[k] * elsize, elsize);
    }
}
