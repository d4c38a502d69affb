/* gptq — Hessian inverse, lazy block updates and the GPTQ quantizer (see gptq.h).
 *
 * Primary source: IST-DASLab/gptq gptq.py (GPTQ.fasterquant) and quant.py @
 * 2d65066e; Frantar et al. 2023, Algorithm 1. Step numbers below refer to
 * docs/specs algorithms.md §5.2.
 */
#include "gptq.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"

static char *gptq_errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *gptq_errf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return strdup(buf);
}

static void set_err(char **errp, char *msg)
{
    if (errp) *errp = msg; else free(msg);
}

/*-*** Hessian inverse ***/

void gptq_hinv_free(gptq_hinv *hv)
{
    free(hv->dead);
    free(hv->perm);
    free(hv->hinv);
    memset(hv, 0, sizeof *hv);
}

/* Stable order of columns by descending diag (torch.argsort(descending=True)
 * is not stable; ties are rare in real Hessians). Insertion into a merge sort. */
static void sort_desc(const double *key, int64_t *idx, int64_t *tmp, int64_t n)
{
    if (n < 2) return;
    int64_t h = n / 2;
    sort_desc(key, idx, tmp, h);
    sort_desc(key, idx + h, tmp, n - h);
    int64_t a = 0, b = h, k = 0;
    while (a < h && b < n) tmp[k++] = key[idx[b]] > key[idx[a]] ? idx[b++] : idx[a++];
    while (a < h) tmp[k++] = idx[a++];
    while (b < n) tmp[k++] = idx[b++];
    memcpy(idx, tmp, (size_t)n * sizeof *idx);
}

int gptq_hinv_prepare(const float *h, int64_t n, double damp, int act_order,
                      gptq_hinv *hv, char **errp)
{
    memset(hv, 0, sizeof *hv);
    if (n < 1) {
        set_err(errp, gptq_errf("hessian: empty"));
        return -1;
    }
    hv->n = n;
    hv->dead = calloc((size_t)n, 1);
    hv->perm = malloc((size_t)n * sizeof *hv->perm);
    hv->hinv = malloc((size_t)n * (size_t)n * sizeof *hv->hinv);
    double *diag = calloc((size_t)n + 1, sizeof *diag);
    double *a = malloc((size_t)n * (size_t)n * sizeof *a);
    int64_t *tmp = malloc((size_t)n * sizeof *tmp);
    int rc = -1;
    if (!hv->dead || !hv->perm || !hv->hinv || !diag || !a || !tmp) {
        set_err(errp, gptq_errf("out of memory for a %lld x %lld Hessian", (long long)n, (long long)n));
        goto out;
    }
    // 2. dead columns: H_jj = 0 -> H_jj = 1 (their weights are zeroed by the caller)
    for (int64_t j = 0; j < n; j++) {
        diag[j] = h[j * n + j];
        if (h[j * n + j] == 0.0f) { hv->dead[j] = 1; diag[j] = 1.0; }
        if (!isfinite(diag[j]) || diag[j] < 0) {
            set_err(errp, gptq_errf("hessian: diagonal entry %lld is %g", (long long)j, diag[j]));
            goto out;
        }
        hv->perm[j] = j;
    }
    // 4. act order: columns by descending diag(H)
    if (act_order) sort_desc(diag, hv->perm, tmp, n);
    // permuted copy in double, dead diagonal fixed
    double mean = 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t pi = hv->perm[i];
        for (int64_t j = 0; j < n; j++) a[i * n + j] = h[pi * n + hv->perm[j]];
        a[i * n + i] = diag[pi];
        mean += diag[pi];
    }
    // 5. damping relative to the mean diagonal
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) a[i * n + i] += damp * mean;
    // Cholesky, inverse, upper Cholesky of the inverse
    lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', (lapack_int)n, a, (lapack_int)n);
    if (info == 0) info = LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', (lapack_int)n, a, (lapack_int)n);
    if (info == 0) {
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = i + 1; j < n; j++) a[i * n + j] = a[j * n + i];
        info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', (lapack_int)n, a, (lapack_int)n);
    }
    if (info != 0) {
        set_err(errp, gptq_errf("hessian is not positive definite after damping %g (lapack info %d); "
                                "try a larger damp", damp, (int)info));
        goto out;
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) hv->hinv[i * n + j] = j < i ? 0.0f : (float)a[i * n + j];
    rc = 0;
out:
    free(diag);
    free(a);
    free(tmp);
    if (rc) gptq_hinv_free(hv);
    return rc;
}

/*-*** Block-update engine (fasterquant step 6) ***/

int gptq_update_rows(const gptq_hinv *hv, int block, float *W, int64_t r0, int64_t nrows,
                     const gptq_column_ops *ops)
{
    const int64_t n = hv->n;
    const float *hinv = hv->hinv;
    float *W1 = malloc((size_t)nrows * (size_t)block * sizeof *W1);
    float *Q1 = malloc((size_t)nrows * (size_t)block * sizeof *Q1);
    float *E1 = malloc((size_t)nrows * (size_t)block * sizeof *E1);
    float *qcol = malloc((size_t)nrows * sizeof *qcol);
    int rc = -1;
    if (!W1 || !Q1 || !E1 || !qcol) goto out;
    for (int64_t i1 = 0; i1 < n; i1 += block) {
        const int64_t i2 = i1 + block < n ? i1 + block : n, bs = i2 - i1;
        // block copy W1 = W[:, i1:i2]
        for (int64_t r = 0; r < nrows; r++)
            memcpy(W1 + r * bs, W + r * n + i1, (size_t)bs * sizeof *W1);
        if (ops->begin && ops->begin(ops->ctx, r0, nrows, i1, i2, W1, W)) goto out;
        for (int64_t ii = 0; ii < bs; ii++) {
            const int64_t i = i1 + ii;
            const float d = hinv[i * n + i];
            const float *hrow = hinv + i * n + i1;   // Hinv1[ii, :]
            // compress column i
            if (ops->column(ops->ctx, r0, nrows, i, W1 + ii, bs, W, qcol)) goto out;
            // err = (w - q) / d; W1[:, ii:] -= err ⊗ Hinv1[ii, ii:]
            for (int64_t r = 0; r < nrows; r++) {
                float *w1 = W1 + r * bs;
                const float err = (w1[ii] - qcol[r]) / d;
                Q1[r * bs + ii] = qcol[r];
                E1[r * bs + ii] = err;
                for (int64_t j = ii; j < bs; j++) w1[j] -= err * hrow[j];
            }
        }
        // W[:, i1:i2] = Q1; lazy update W[:, i2:] -= Err1 · Hinv[i1:i2, i2:]
        for (int64_t r = 0; r < nrows; r++)
            memcpy(W + r * n + i1, Q1 + r * bs, (size_t)bs * sizeof *W);
        if (i2 < n)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nrows, (int)(n - i2), (int)bs,
                        -1.0f, E1, (int)bs, hinv + i1 * n + i2, (int)n, 1.0f, W + i2, (int)n);
    }
    rc = 0;
out:
    free(W1);
    free(Q1);
    free(E1);
    free(qcol);
    return rc;
}

/*-*** GPTQ on integer grids ***/

void gptq_opts_default(gptq_opts *o)
{
    memset(o, 0, sizeof *o);
    quant_grid_default(&o->grid);
    strcpy(o->grid.method, "gptq");
    quant_scale_opts_default(&o->scale);
    o->block = 128;
    o->damp = 0.01;
    o->threads = 1;
}

void gptq_result_free(gptq_result *res)
{
    free(res->codes);
    free(res->scales);
    free(res->zeros);
    free(res->g_idx);
    free(res->q);
    free(res->blocks);
    memset(res, 0, sizeof *res);
}

typedef struct {
    const gptq_opts *o;
    const gptq_hinv *hv;
    const float *w;            /* original W [rows, cols] */
    int64_t rows, cols, ng;
    gptq_result *res;
} gptq_job;

/* Group index (into scales/zeros) of processing column i. */
static int64_t job_group(const gptq_job *j, int64_t i)
{
    const int G = j->o->grid.group;
    if (G < 0) return 0;
    if (j->o->grid.static_groups) return j->hv->perm[i] / G;
    return i / G;
}

/* fasterquant step 6, integer quantizer: params at group starts, then round. */
static int int_column(void *ctx, int64_t r0, int64_t nrows, int64_t i, const float *w, int64_t ldw,
                      const float *W, float *q)
{
    const gptq_job *j = ctx;
    const quant_grid *g = &j->o->grid;
    const int maxq = (1 << g->bits) - 1;
    const int64_t n = j->cols, c = j->hv->perm[i], k = job_group(j, i);
    float *scales = j->res->scales, *zeros = j->res->zeros;
    // dynamic groups: find_params on the global W[:, i:i+G] at the group's first column
    if (g->group > 0 && !g->static_groups && i % g->group == 0) {
        const int64_t len = i + g->group <= n ? g->group : n - i;
        for (int64_t r = 0; r < nrows; r++)
            quant_int_params(W + r * n + i, len, g->bits, g->sym, &j->o->scale, NULL,
                             &scales[(r0 + r) * j->ng + k], &zeros[(r0 + r) * j->ng + k]);
    }
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t gr = r0 + r;
        const float s = scales[gr * j->ng + k], z = zeros[gr * j->ng + k];
        int code = quant_int_code(w[r * ldw], s, z, maxq);
        if (j->o->mask_zeros && j->w[gr * n + c] == 0.0f) code = (int)z;   // pruned stays 0
        j->res->codes[gr * n + c] = (uint8_t)code;
        q[r] = quant_int_value(code, s, z);
    }
    return 0;
}

/* Upfront params: whole rows from the original W (step 1), or static groups
 * from W with dead columns zeroed, original column order (step 3). */
static void int_upfront_params(const gptq_job *j)
{
    const quant_grid *g = &j->o->grid;
    const int64_t n = j->cols;
    if (g->group > 0 && !g->static_groups) return;
    float *row = malloc((size_t)n * sizeof *row);
    for (int64_t r = 0; r < j->rows; r++) {
        const float *src = j->w + r * n;
        if (g->group < 0) {
            quant_int_params(src, n, g->bits, g->sym, &j->o->scale, NULL,
                             &j->res->scales[r], &j->res->zeros[r]);
            continue;
        }
        for (int64_t c = 0; c < n; c++) row[c] = j->hv->dead[c] ? 0.0f : src[c];
        for (int64_t k = 0; k < j->ng; k++) {
            const int64_t c0 = k * g->group, len = c0 + g->group <= n ? g->group : n - c0;
            quant_int_params(row + c0, len, g->bits, g->sym, &j->o->scale, NULL,
                             &j->res->scales[r * j->ng + k], &j->res->zeros[r * j->ng + k]);
        }
    }
    free(row);
}

/* One row block: permuted copy, column loop, un-permuted Q. */
static int gptq_row_block(void *ctx, int64_t b)
{
    const gptq_job *j = ctx;
    const int64_t n = j->cols, r0 = b * GPTQ_ROW_BLOCK;
    const int64_t nrows = j->rows - r0 < GPTQ_ROW_BLOCK ? j->rows - r0 : GPTQ_ROW_BLOCK;
    const int64_t *perm = j->hv->perm;
    float *W = malloc((size_t)nrows * (size_t)n * sizeof *W);
    if (!W) return -1;
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t i = 0; i < n; i++)
            W[r * n + i] = j->hv->dead[perm[i]] ? 0.0f : j->w[(r0 + r) * n + perm[i]];
    gptq_column_ops ops = { (void *)j, NULL, int_column };
    int rc = gptq_update_rows(j->hv, j->o->block, W, r0, nrows, &ops);
    for (int64_t r = 0; rc == 0 && r < nrows; r++)
        for (int64_t i = 0; i < n; i++) j->res->q[(r0 + r) * n + perm[i]] = W[r * n + i];
    free(W);
    return rc;
}

static int result_alloc(gptq_result *res, const gptq_opts *o, int64_t rows, int64_t cols)
{
    memset(res, 0, sizeof *res);
    res->rows = rows;
    res->cols = cols;
    res->ngroups = quant_ngroups(&o->grid, cols);
    const size_t rc = (size_t)rows * (size_t)cols, rg = (size_t)rows * (size_t)res->ngroups;
    res->codes = malloc(rc);
    res->q = malloc(rc * sizeof *res->q);
    res->scales = calloc(rg, sizeof *res->scales);
    res->zeros = calloc(rg, sizeof *res->zeros);
    if (o->grid.act_order && !o->grid.static_groups && o->grid.group > 0)
        res->g_idx = malloc((size_t)cols * sizeof *res->g_idx);
    return res->codes && res->q && res->scales && res->zeros
           && (res->g_idx || !(o->grid.act_order && !o->grid.static_groups && o->grid.group > 0)) ? 0 : -1;
}

int gptq_quantize(const float *w, int64_t rows, int64_t cols, const float *h,
                  const gptq_opts *o, gptq_result *res, char **errp)
{
    memset(res, 0, sizeof *res);
    if (quant_grid_check(&o->grid, cols, errp)) return -1;
    if (o->grid.scheme != QUANT_INT) {
        set_err(errp, gptq_errf("gptq supports the int grid only"));
        return -1;
    }
    if (o->block < 1 || !(o->damp >= 0)) {
        set_err(errp, gptq_errf("gptq: block must be >= 1 and damp >= 0"));
        return -1;
    }
    gptq_hinv hv;
    if (gptq_hinv_prepare(h, cols, o->damp, o->grid.act_order, &hv, errp)) return -1;
    if (result_alloc(res, o, rows, cols)) {
        gptq_hinv_free(&hv);
        gptq_result_free(res);
        set_err(errp, gptq_errf("out of memory for a %lld x %lld result", (long long)rows, (long long)cols));
        return -1;
    }
    openblas_set_num_threads(1);   // we parallelise over row blocks ourselves
    gptq_job job = { o, &hv, w, rows, cols, res->ngroups, res };
    int_upfront_params(&job);
    int64_t failed;
    int rc = quant_parallel_for((rows + GPTQ_ROW_BLOCK - 1) / GPTQ_ROW_BLOCK, o->threads,
                                gptq_row_block, &job, &failed);
    if (rc) set_err(errp, gptq_errf("gptq: row block %lld failed (out of memory)", (long long)failed));
    if (res->g_idx)
        for (int64_t i = 0; i < cols; i++) res->g_idx[hv.perm[i]] = (int32_t)(i / o->grid.group);
    gptq_hinv_free(&hv);
    if (rc) gptq_result_free(res);
    return rc;
}

/*-*** Proxy loss ***/

double gptq_proxy_loss(const float *w, const float *q, const float *h, int64_t rows, int64_t cols)
{
    double *e = malloc((size_t)cols * sizeof *e);
    double loss = 0;
    if (!e) return NAN;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) e[c] = (double)w[r * cols + c] - (double)q[r * cols + c];
        for (int64_t a = 0; a < cols; a++) {
            if (e[a] == 0) continue;
            const float *ha = h + a * cols;
            double s = 0;
            for (int64_t b = 0; b < cols; b++) s += (double)ha[b] * e[b];
            loss += e[a] * s;
        }
    }
    free(e);
    return loss;
}
