/* gptq — Hessian inverse, lazy block updates and the GPTQ quantizer (see gptq.h).
 *
 * Primary source: IST-DASLab/gptq gptq.py (GPTQ.fasterquant) and quant.py @
 * 2d65066e; Frantar et al. 2023, Algorithm 1. Step numbers below refer to
 * docs/specs algorithms.md §5.2.
 */
#include "gptq.h"
#include "err.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"

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
        err_set(errp, "hessian: empty");
        return -1;
    }
    /* One BLAS thread: LAPACK's blocked factorisations sum in a thread-count
     * dependent order, and H^-1 must not depend on OPENBLAS_NUM_THREADS. */
    openblas_set_num_threads(1);
    hv->n = n;
    hv->dead = calloc((size_t)n, 1);
    hv->perm = malloc((size_t)n * sizeof *hv->perm);
    hv->hinv = malloc((size_t)n * (size_t)n * sizeof *hv->hinv);
    double *diag = calloc((size_t)n + 1, sizeof *diag);
    double *a = malloc((size_t)n * (size_t)n * sizeof *a);
    int64_t *tmp = malloc((size_t)n * sizeof *tmp);
    int rc = -1;
    if (!hv->dead || !hv->perm || !hv->hinv || !diag || !a || !tmp) {
        err_set(errp, "out of memory for a %lld x %lld Hessian", (long long)n, (long long)n);
        goto out;
    }
    // 2. dead columns: H_jj = 0 -> H_jj = 1 (their weights are zeroed by the caller)
    for (int64_t j = 0; j < n; j++) {
        diag[j] = h[j * n + j];
        if (h[j * n + j] == 0.0f) { hv->dead[j] = 1; diag[j] = 1.0; }
        if (!isfinite(diag[j]) || diag[j] < 0) {
            err_set(errp, "hessian: diagonal entry %lld is %g", (long long)j, diag[j]);
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
        err_set(errp, "hessian is not positive definite after damping %g (lapack info %d); "
                                "try a larger damp", damp, (int)info);
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

/*-*** GPTQ on GGUF block grids (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) ***/

/* Per 32-column block and row, the parameters ggml's quantize_row_*_ref sets
 * (ggml-org/ggml src/ggml-quants.c), computed from the current, error-updated
 * weights of the block when the column loop reaches its first column:
 *   q4_0/q5_0: d = max/-8 (-16), max = the value of largest |x| (first one);
 *   q4_1/q5_1: d = (max-min)/15 (31), m = min;  q8_0: d = amax/127.
 * Codes use id = 1/d (f32) exactly as ggml does, clamped to the code range
 * (error updates can push a column past the block's range); values use the
 * fp16-rounded d and m, as ggml's dequantize_row_* will. */
typedef struct { float d, m, id, d16, m16; } gguf_bp;

enum { GG_Q4_0, GG_Q4_1, GG_Q5_0, GG_Q5_1, GG_Q8_0 };

static int gguf_kind(const char *type)
{
    static const char *const names[] = { "q4_0", "q4_1", "q5_0", "q5_1", "q8_0" };
    for (int k = 0; k < 5; k++) if (!strcmp(type, names[k])) return k;
    return -1;
}

static size_t gguf_block_bytes(int kind)
{
    static const size_t b[] = { 18, 20, 22, 24, 34 };
    return b[kind];
}

static gguf_bp gguf_params(int kind, const float *x, int64_t stride)
{
    float amax = 0.0f, max = 0.0f, lo = INFINITY, hi = -INFINITY;
    for (int j = 0; j < 32; j++) {
        const float v = x[j * stride];
        if (amax < fabsf(v)) { amax = fabsf(v); max = v; }
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    gguf_bp p = { 0, 0, 0, 0, 0 };
    switch (kind) {
    case GG_Q4_0: p.d = max / -8.0f; break;
    case GG_Q5_0: p.d = max / -16.0f; break;
    case GG_Q4_1: p.d = (hi - lo) / 15.0f; p.m = lo; break;
    case GG_Q5_1: p.d = (hi - lo) / 31.0f; p.m = lo; break;
    default:      p.d = amax / 127.0f; break;
    }
    p.id = p.d != 0.0f ? 1.0f / p.d : 0.0f;
    p.d16 = f16_to_f32(f32_to_f16(p.d));
    p.m16 = f16_to_f32(f32_to_f16(p.m));
    return p;
}

static int clampi(float v, int lo, int hi)
{
    if (!(v > (float)lo)) return lo;      // also NaN
    if (v > (float)hi) return hi;
    return (int)v;
}

/* Stored code (q8_0: the int8 value + 128). */
static int gguf_code(int kind, float x, const gguf_bp *p)
{
    switch (kind) {
    case GG_Q4_0: return clampi(truncf(x * p->id + 8.5f), 0, 15);
    case GG_Q5_0: return clampi(truncf(x * p->id + 16.5f), 0, 31);
    case GG_Q4_1: return clampi(truncf((x - p->m) * p->id + 0.5f), 0, 15);
    case GG_Q5_1: return clampi(truncf((x - p->m) * p->id + 0.5f), 0, 31);
    default:      return clampi(roundf(x * p->id), -128, 127) + 128;
    }
}

static float gguf_value(int kind, int code, const gguf_bp *p)
{
    switch (kind) {
    case GG_Q4_0: return (float)(code - 8) * p->d16;
    case GG_Q5_0: return (float)(code - 16) * p->d16;
    case GG_Q4_1: case GG_Q5_1: return (float)code * p->d16 + p->m16;
    default:      return (float)(code - 128) * p->d16;
    }
}

/* A code whose value is exactly 0, or the one 0 rounds to when there is none. */
static int gguf_zero_code(int kind, const gguf_bp *p)
{
    const int maxcode = kind == GG_Q8_0 ? 255 : (kind == GG_Q5_0 || kind == GG_Q5_1) ? 31 : 15;
    for (int c = 0; c <= maxcode; c++)
        if (gguf_value(kind, c, p) == 0.0f) return c;
    return gguf_code(kind, 0.0f, p);
}

static void put_f16(uint8_t *b, float v)
{
    uint16_t h = f32_to_f16(v);
    b[0] = (uint8_t)(h & 0xff);
    b[1] = (uint8_t)(h >> 8);
}

/* ggml block layout of 32 codes (block_q4_0 … block_q8_0, little-endian). */
static void gguf_pack(int kind, const uint8_t *L, const gguf_bp *p, uint8_t *b)
{
    put_f16(b, p->d);
    if (kind == GG_Q8_0) {
        for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)(L[j] - 128);
        return;
    }
    const int has_m = kind == GG_Q4_1 || kind == GG_Q5_1, five = kind == GG_Q5_0 || kind == GG_Q5_1;
    uint8_t *q = b + 2;
    if (has_m) { put_f16(q, p->m); q += 2; }
    if (five) {
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            qh |= (uint32_t)((L[j] >> 4) & 1) << j;
            qh |= (uint32_t)((L[j + 16] >> 4) & 1) << (j + 16);
        }
        for (int k = 0; k < 4; k++) q[k] = (uint8_t)(qh >> (8 * k));
        q += 4;
    }
    for (int j = 0; j < 16; j++) q[j] = (uint8_t)((L[j] & 0x0f) | ((L[j + 16] & 0x0f) << 4));
}

typedef struct {
    const gptq_opts *o;
    const float *w;            /* original W [rows, cols] */
    int64_t rows, cols;
    int kind;
    gguf_bp *bp;               /* [rows, cols/32] */
    gptq_result *res;
} gguf_job;

static int gguf_column(void *ctx, int64_t r0, int64_t nrows, int64_t i, const float *w, int64_t ldw,
                       const float *W, float *q)
{
    const gguf_job *j = ctx;
    const int64_t n = j->cols, nb = n / 32, b = i / 32;
    (void)W;
    // block start: params from the current values of the block's 32 columns
    // (inside W1, since the lazy block width is a multiple of 32)
    if (i % 32 == 0)
        for (int64_t r = 0; r < nrows; r++) j->bp[(r0 + r) * nb + b] = gguf_params(j->kind, w + r * ldw, 1);
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t gr = r0 + r;
        const gguf_bp *p = &j->bp[gr * nb + b];
        int code = gguf_code(j->kind, w[r * ldw], p);
        if (j->o->mask_zeros && j->w[gr * n + i] == 0.0f && gguf_value(j->kind, code, p) != 0.0f)
            code = gguf_zero_code(j->kind, p);   // pruned stays 0 (q4_1/q5_1: nearest to 0)
        j->res->codes[gr * n + i] = (uint8_t)code;
        q[r] = gguf_value(j->kind, code, p);
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

/* Runs the engine over fixed row blocks: permuted copy, column loop, un-permuted Q. */
typedef struct {
    const gptq_hinv *hv;
    const float *w;            /* original W [rows, cols] */
    int64_t rows, cols;
    int block;
    float *q;                  /* out [rows, cols] */
    gptq_column_ops ops;
} gptq_driver;

static int driver_row_block(void *ctx, int64_t b)
{
    const gptq_driver *d = ctx;
    const int64_t n = d->cols, r0 = b * GPTQ_ROW_BLOCK;
    const int64_t nrows = d->rows - r0 < GPTQ_ROW_BLOCK ? d->rows - r0 : GPTQ_ROW_BLOCK;
    const int64_t *perm = d->hv->perm;
    float *W = malloc((size_t)nrows * (size_t)n * sizeof *W);
    if (!W) return -1;
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t i = 0; i < n; i++)
            W[r * n + i] = d->hv->dead[perm[i]] ? 0.0f : d->w[(r0 + r) * n + perm[i]];
    int rc = gptq_update_rows(d->hv, d->block, W, r0, nrows, &d->ops);
    for (int64_t r = 0; rc == 0 && r < nrows; r++)
        for (int64_t i = 0; i < n; i++) d->q[(r0 + r) * n + perm[i]] = W[r * n + i];
    free(W);
    return rc;
}

static int driver_run(gptq_driver *d, int threads, char **errp)
{
    int64_t failed;
    openblas_set_num_threads(1);   // we parallelise over row blocks ourselves
    if (quant_parallel_for((d->rows + GPTQ_ROW_BLOCK - 1) / GPTQ_ROW_BLOCK, threads,
                           driver_row_block, d, &failed) == 0)
        return 0;
    err_set(errp, "gptq: row block %lld failed (out of memory)", (long long)failed);
    return -1;
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

static int gguf_quantize(const float *w, int64_t rows, int64_t cols, const gptq_hinv *hv,
                         const gptq_opts *o, gptq_result *res, char **errp)
{
    const int kind = gguf_kind(o->grid.gguf_type);
    gguf_job j = { o, w, rows, cols, kind, NULL, res };
    res->rows = rows;
    res->cols = cols;
    res->row_bytes = (size_t)(cols / 32) * gguf_block_bytes(kind);
    res->codes = malloc((size_t)(rows * cols));
    res->q = malloc((size_t)(rows * cols) * sizeof *res->q);
    res->blocks = malloc((size_t)rows * res->row_bytes);
    j.bp = calloc((size_t)(rows * (cols / 32)), sizeof *j.bp);
    if (!res->codes || !res->q || !res->blocks || !j.bp) {
        free(j.bp);
        err_set(errp, "out of memory for a %lld x %lld result", (long long)rows, (long long)cols);
        return -1;
    }
    gptq_driver d = { hv, w, rows, cols, o->block, res->q, { &j, NULL, gguf_column } };
    int rc = driver_run(&d, o->threads, errp);
    for (int64_t r = 0; rc == 0 && r < rows; r++)
        for (int64_t b = 0; b < cols / 32; b++)
            gguf_pack(kind, res->codes + r * cols + b * 32, &j.bp[r * (cols / 32) + b],
                      res->blocks + (size_t)r * res->row_bytes + (size_t)b * gguf_block_bytes(kind));
    free(j.bp);
    return rc;
}

int gptq_quantize(const float *w, int64_t rows, int64_t cols, const float *h,
                  const gptq_opts *o, gptq_result *res, char **errp)
{
    memset(res, 0, sizeof *res);
    if (quant_grid_check(&o->grid, cols, errp)) return -1;
    const int gguf = o->grid.scheme == QUANT_GGUF;
    if (o->grid.scheme != QUANT_INT && !gguf) {
        err_set(errp, "gptq supports int and gguf (q4_0 ... q8_0) grids only");
        return -1;
    }
    if (o->block < 1 || !(o->damp >= 0) || (gguf && o->block % 32 != 0)) {
        err_set(errp, "gptq: block must be >= 1 (a multiple of 32 for gguf grids) and damp >= 0");
        return -1;
    }
    if (gguf && o->grid.act_order) {
        err_set(errp, "gptq: gguf grids have no g_idx, so no act_order");
        return -1;
    }
    gptq_hinv hv;
    if (gptq_hinv_prepare(h, cols, o->damp, o->grid.act_order, &hv, errp)) return -1;
    int rc;
    if (gguf) {
        rc = gguf_quantize(w, rows, cols, &hv, o, res, errp);
    } else if (result_alloc(res, o, rows, cols)) {
        err_set(errp, "out of memory for a %lld x %lld result", (long long)rows, (long long)cols);
        rc = -1;
    } else {
        gptq_job job = { o, &hv, w, rows, cols, res->ngroups, res };
        int_upfront_params(&job);
        gptq_driver d = { &hv, w, rows, cols, o->block, res->q, { &job, NULL, int_column } };
        rc = driver_run(&d, o->threads, errp);
        if (res->g_idx)
            for (int64_t i = 0; i < cols; i++) res->g_idx[hv.perm[i]] = (int32_t)(i / o->grid.group);
    }
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
