/* awq — AWQ scale and clip searches, SmoothQuant scales, folding (see awq.h).
 *
 * Step lists: /work/shared/specs/algorithms.md §1 (llm-awq auto_scale.py
 * auto_scale_block / _search_module_scale, auto_clip.py auto_clip_layer,
 * AutoAWQ quantizer.py _search_best_scale / _compute_best_clip) and §2
 * (smoothquant/smooth.py smooth_ln_fcs). The losses are the statistic-based
 * output errors documented in awq.h.
 */
#include "awq.h"
#include "err.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AWQ_ROW_BLOCK 32    /* rows per task; fixed so sums ignore the thread count */

void awq_opts_default(awq_opts *o)
{
    memset(o, 0, sizeof *o);
    quant_grid_default(&o->grid);
    snprintf(o->grid.method, sizeof o->grid.method, "awq");
    o->n_grid = 20;
    o->clip = 1;
    o->max_shrink = 0.5;
    o->clip_grid = 20;
    o->smooth = -1.0;
    o->threads = 1;
}

/*-*** Folding ***/

void awq_scale_cols(float *w, int64_t rows, int64_t cols, const float *s)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) w[r * cols + j] *= s[j];
}

void awq_unscale_rows(float *w, int64_t rows, int64_t cols, const float *s)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) w[r * cols + j] /= s[r];
}

void awq_unscale_vec(float *v, int64_t n, const float *s)
{
    for (int64_t j = 0; j < n; j++) v[j] /= s[j];
}

void awq_scale_hessian(float *h, int64_t n, const float *s)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            h[i * n + j] = (float)((double)h[i * n + j] / ((double)s[i] * (double)s[j]));
}

void awq_scale_moment(float *v, int64_t n, const float *s, int power)
{
    for (int64_t j = 0; j < n; j++) {
        double d = 1.0;
        for (int p = 0; p < power; p++) d *= (double)s[j];
        v[j] = (float)((double)v[j] / d);
    }
}

/*-*** Output error tr(E H Eᵀ) ***/

/* Σ_r e_r H e_rᵀ of one block E [n, cols] (f32), T = E H by sgemm, dot in double. */
static double block_quad(const float *e, int64_t n, int64_t cols, const float *h, float *t)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)cols, (int)cols,
                1.0f, e, (int)cols, h, (int)cols, 0.0f, t, (int)cols);
    double sum = 0;
    for (int64_t i = 0; i < n * cols; i++) sum += (double)e[i] * (double)t[i];
    return sum;
}

/* One task = one row block of one linear; quantize (or not) and measure. */
typedef struct {
    const quant_grid *g;          /* NULL: E = w − q as given */
    const awq_mat *lins;
    int nlin;
    const float *s;               /* [cols] or NULL */
    const float *q;               /* awq_output_error: the compared matrix or NULL */
    const float *h;
    int64_t cols;
    int64_t *task_lin, *task_r0;  /* [ntasks] */
    double *loss;                 /* [ntasks] */
} err_job;

static int err_task(void *ctx, int64_t b)
{
    err_job *j = ctx;
    const awq_mat *m = &j->lins[j->task_lin[b]];
    const int64_t r0 = j->task_r0[b], cols = j->cols;
    const int64_t n = m->rows - r0 < AWQ_ROW_BLOCK ? m->rows - r0 : AWQ_ROW_BLOCK;
    const float *w = m->w + r0 * cols;
    const size_t sz = (size_t)(n * cols);
    float *e = calloc(sz ? sz : 1, sizeof *e), *t = malloc((sz ? sz : 1) * sizeof *t);
    int rc = -1;
    if (!e || !t) goto out;
    if (j->g) {
        // scale columns, round to nearest on the grid, unscale: E = W − Q(W s)/s
        int64_t ng = quant_ngroups(j->g, cols);
        uint8_t *codes = malloc(sz);
        float *sc = malloc((size_t)(n * ng) * sizeof *sc), *zr = malloc((size_t)(n * ng) * sizeof *zr);
        if (!codes || !sc || !zr) { free(codes); free(sc); free(zr); goto out; }
        memcpy(t, w, sz * sizeof *t);
        if (j->s) awq_scale_cols(t, n, cols, j->s);
        rc = quant_rtn_rows(j->g, NULL, t, n, cols, codes, sc, zr, e, NULL);
        free(codes); free(sc); free(zr);
        if (rc) goto out;
        rc = -1;
        for (int64_t r = 0; r < n; r++)
            for (int64_t c = 0; c < cols; c++) {
                float qv = e[r * cols + c];
                if (j->s) qv /= j->s[c];
                e[r * cols + c] = w[r * cols + c] - qv;
            }
    } else {
        for (size_t i = 0; i < sz; i++) e[i] = j->q ? w[i] - j->q[r0 * cols + (int64_t)i] : w[i];
    }
    j->loss[b] = block_quad(e, n, cols, j->h, t);
    rc = 0;
out:
    free(e);
    free(t);
    return rc;
}

static double run_err_job(err_job *j, int threads)
{
    int64_t ntasks = 0;
    for (int l = 0; l < j->nlin; l++) ntasks += (j->lins[l].rows + AWQ_ROW_BLOCK - 1) / AWQ_ROW_BLOCK;
    j->task_lin = malloc((size_t)(ntasks ? ntasks : 1) * sizeof *j->task_lin);
    j->task_r0 = malloc((size_t)(ntasks ? ntasks : 1) * sizeof *j->task_r0);
    j->loss = calloc((size_t)(ntasks ? ntasks : 1), sizeof *j->loss);
    double sum = NAN;
    int64_t failed;
    if (!j->task_lin || !j->task_r0 || !j->loss) goto out;
    for (int l = 0, b = 0; l < j->nlin; l++)
        for (int64_t r0 = 0; r0 < j->lins[l].rows; r0 += AWQ_ROW_BLOCK, b++) {
            j->task_lin[b] = l;
            j->task_r0[b] = r0;
        }
    openblas_set_num_threads(1);   // we parallelise over row blocks ourselves
    if (quant_parallel_for(ntasks, threads, err_task, j, &failed)) goto out;
    sum = 0;
    for (int64_t b = 0; b < ntasks; b++) sum += j->loss[b];   // fixed order
out:
    free(j->task_lin);
    free(j->task_r0);
    free(j->loss);
    return sum;
}

double awq_output_error(const float *w, const float *q, int64_t rows, int64_t cols,
                        const float *h, int threads)
{
    awq_mat m = { (float *)w, rows, cols };
    err_job j = { .g = NULL, .lins = &m, .nlin = 1, .q = q, .h = h, .cols = cols };
    return run_err_job(&j, threads);
}

double awq_scaled_error(const quant_grid *g, const awq_mat *lins, int nlin,
                        const float *s, const float *h, int threads)
{
    err_job j = { .g = g, .lins = lins, .nlin = nlin, .s = s, .h = h, .cols = lins[0].cols };
    return run_err_job(&j, threads);
}

/*-*** Candidate scales ***/

void awq_candidate_scales(const float *xmean, const float *wmean, int64_t cols, double alpha, float *s)
{
    const float a = (float)alpha;
    float mx = -INFINITY, mn = INFINITY;
    // s = x^α (duo: / (w^(1−α) + 1e-4)), clamped below at 1e-4
    for (int64_t j = 0; j < cols; j++) {
        float v = powf(xmean[j], a);
        if (wmean) v = v / (powf(wmean[j], 1.0f - a) + 1e-4f);
        if (v < 1e-4f) v = 1e-4f;
        s[j] = v;
        if (isfinite(v)) {
            if (v > mx) mx = v;
            if (v < mn) mn = v;
        }
    }
    // normalise by the geometric mean of the extremes; non-finite -> 1 (AutoAWQ)
    float norm = sqrtf(mx * mn);
    for (int64_t j = 0; j < cols; j++) {
        float v = s[j] / norm;
        s[j] = isfinite(v) ? v : 1.0f;
    }
}

int awq_weight_mean(const awq_mat *lins, int nlin, int group, float *out)
{
    const int64_t cols = lins[0].cols, gs = group > 0 ? group : cols;
    double *acc = calloc((size_t)cols, sizeof *acc);
    int64_t rows = 0;
    if (!acc) return -1;
    for (int l = 0; l < nlin; l++) {
        const awq_mat *m = &lins[l];
        for (int64_t r = 0; r < m->rows; r++, rows++) {
            const float *w = m->w + r * cols;
            for (int64_t c0 = 0; c0 < cols; c0 += gs) {
                int64_t c1 = c0 + gs < cols ? c0 + gs : cols;
                float gmax = 0.0f;
                for (int64_t c = c0; c < c1; c++) gmax = fmaxf(gmax, fabsf(w[c]));
                for (int64_t c = c0; c < c1; c++) acc[c] += (double)(fabsf(w[c]) / (gmax + 1e-6f));
            }
        }
    }
    for (int64_t c = 0; c < cols; c++) out[c] = (float)(acc[c] / (double)(rows ? rows : 1));
    free(acc);
    return 0;
}

void awq_smooth_scales(const float *absmax, const awq_mat *lins, int nlin, double alpha, float *s)
{
    const int64_t cols = lins[0].cols;
    for (int64_t j = 0; j < cols; j++) {
        // weight statistic: max |W_ij| over every row of every fused linear
        float wm = 0.0f;
        for (int l = 0; l < nlin; l++)
            for (int64_t r = 0; r < lins[l].rows; r++) wm = fmaxf(wm, fabsf(lins[l].w[r * cols + j]));
        if (wm < 1e-5f) wm = 1e-5f;
        float v = powf(absmax[j], (float)alpha) / powf(wm, (float)(1.0 - alpha));
        s[j] = v < 1e-5f ? 1e-5f : v;
    }
}

/*-*** Groups ***/

static const struct {
    int members[3], n;
} group_def[AWQ_NGROUPS] = {
    { { AWQ_Q, AWQ_K, AWQ_V }, 3 },
    { { AWQ_O, -1, -1 }, 1 },
    { { AWQ_GATE, AWQ_UP, -1 }, 2 },
    { { AWQ_DOWN, -1, -1 }, 1 },
};

int awq_group_members(int g, int members[3])
{
    for (int i = 0; i < 3; i++) members[i] = group_def[g].members[i];
    return group_def[g].n;
}

int awq_input_group(int lin)
{
    switch (lin) {
    case AWQ_Q: case AWQ_K: case AWQ_V: return 0;
    case AWQ_O: return 1;
    case AWQ_GATE: case AWQ_UP: return 2;
    case AWQ_DOWN: return 3;
    default: return -1;
    }
}

static int members_ok(const awq_layer *L, int g, int64_t cols)
{
    for (int i = 0; i < group_def[g].n; i++) {
        const awq_mat *m = &L->lin[group_def[g].members[i]];
        if (!m->w || m->cols != cols) return 0;
    }
    return 1;
}

int awq_group_applies(const awq_layer *L, int g)
{
    const awq_mat *v = &L->lin[AWQ_V], *o = &L->lin[AWQ_O], *up = &L->lin[AWQ_UP];
    switch (g) {
    case 0: return L->in_norm && members_ok(L, 0, L->n_in_norm);
    case 1: // reference: only when v_proj.weight.shape == o_proj.weight.shape (never with GQA)
        return v->w && o->w && v->rows == o->rows && v->cols == o->cols && v->rows == o->cols;
    case 2: return L->post_norm && members_ok(L, 2, L->n_post_norm);
    case 3: return up->w && L->lin[AWQ_DOWN].w && up->rows == L->lin[AWQ_DOWN].cols;
    default: return 0;
    }
}

/* Grid search over α = k/n_grid for one group; fills s, alpha, losses. */
static int search_group(const awq_layer *L, int g, const awq_opts *o, float *s,
                        double *alpha, double *loss_rtn, double *loss_best, char **errp)
{
    awq_mat lins[3];
    const int n = group_def[g].n;
    for (int i = 0; i < n; i++) lins[i] = L->lin[group_def[g].members[i]];
    const int64_t cols = lins[0].cols;
    const awq_input *in = &L->in[g];
    float *cand = malloc((size_t)cols * sizeof *cand), *wmean = NULL;
    int rc = -1;
    if (!cand) return err_set(errp, "out of memory");
    if (o->duo && (!(wmean = malloc((size_t)cols * sizeof *wmean))
                   || awq_weight_mean(lins, n, o->grid.group, wmean))) {
        err_set(errp, "out of memory");
        goto out;
    }
    *loss_rtn = awq_scaled_error(&o->grid, lins, n, NULL, in->hessian, o->threads);
    *loss_best = INFINITY;
    *alpha = 0;
    for (int k = 0; k < o->n_grid; k++) {
        double ratio = (double)k / (double)o->n_grid;
        awq_candidate_scales(in->xabs_mean, wmean, cols, ratio, cand);
        double loss = awq_scaled_error(&o->grid, lins, n, cand, in->hessian, o->threads);
        if (isnan(loss)) { err_set(errp, "out of memory"); goto out; }
        if (loss < *loss_best) {   // strict: the first minimum wins, as the reference
            *loss_best = loss;
            *alpha = ratio;
            memcpy(s, cand, (size_t)cols * sizeof *s);
        }
    }
    if (!isfinite(*loss_best)) {   // every candidate non-finite: keep the identity
        for (int64_t j = 0; j < cols; j++) s[j] = 1.0f;
        *loss_best = *loss_rtn;
    }
    rc = 0;
out:
    free(cand);
    free(wmean);
    return rc;
}

static void apply_group(awq_layer *L, int g, const float *s)
{
    awq_mat *m = L->lin;
    for (int i = 0; i < group_def[g].n; i++) {
        awq_mat *x = &m[group_def[g].members[i]];
        awq_scale_cols(x->w, x->rows, x->cols, s);
    }
    switch (g) {
    case 0: awq_unscale_vec(L->in_norm, L->n_in_norm, s); break;
    case 1: awq_unscale_rows(m[AWQ_V].w, m[AWQ_V].rows, m[AWQ_V].cols, s); break;
    case 2: awq_unscale_vec(L->post_norm, L->n_post_norm, s); break;
    case 3: awq_unscale_rows(m[AWQ_UP].w, m[AWQ_UP].rows, m[AWQ_UP].cols, s); break;
    }
}

int awq_layer_scale(awq_layer *L, const awq_opts *o, char **errp)
{
    static const char *const gname[AWQ_NGROUPS] = { "input_layernorm", "v_proj", "post_attention_layernorm", "up_proj" };
    // all searches on the original weights first (reference: scales applied together afterwards)
    for (int g = 0; g < AWQ_NGROUPS; g++) {
        L->scale[g] = NULL;
        if (!awq_group_applies(L, g)) continue;
        if (o->smooth >= 0 && (g == 1 || g == 3)) continue;   // SmoothQuant: norms only
        const int64_t cols = L->lin[group_def[g].members[0]].cols;
        const awq_input *in = &L->in[g];
        if (!in->hessian || (o->smooth < 0 ? !in->xabs_mean : !in->absmax))
            return err_set(errp, "group %s: no %s statistics", gname[g],
                        !in->hessian ? "hessian" : o->smooth < 0 ? "xabs_mean" : "absmax");
        float *s = malloc((size_t)cols * sizeof *s);
        if (!s) return err_set(errp, "out of memory");
        L->scale[g] = s;
        if (o->smooth >= 0) {
            awq_mat lins[3];
            for (int i = 0; i < group_def[g].n; i++) lins[i] = L->lin[group_def[g].members[i]];
            awq_smooth_scales(in->absmax, lins, group_def[g].n, o->smooth, s);
            L->alpha[g] = o->smooth;
            L->loss_rtn[g] = awq_scaled_error(&o->grid, lins, group_def[g].n, NULL, in->hessian, o->threads);
            L->loss_best[g] = awq_scaled_error(&o->grid, lins, group_def[g].n, s, in->hessian, o->threads);
        } else if (search_group(L, g, o, s, &L->alpha[g], &L->loss_rtn[g], &L->loss_best[g], errp)) {
            return -1;
        }
    }
    for (int g = 0; g < AWQ_NGROUPS; g++)
        if (L->scale[g]) apply_group(L, g, L->scale[g]);
    return 0;
}

/*-*** Clipping ***/

typedef struct {
    const quant_grid *g;
    double max_shrink;
    int clip_grid;
    float *w;
    int64_t rows, cols;
    const float *h;
    double *before, *after;    /* [nblocks] */
} clip_job;

/* e_gᵀ H_gg e_g for the group [c0, c1) of one row. */
static double group_quad(const double *e, const float *h, int64_t cols, int64_t c0, int64_t c1)
{
    double sum = 0;
    for (int64_t a = c0; a < c1; a++) {
        if (e[a - c0] == 0) continue;
        const float *ha = h + a * cols;
        double t = 0;
        for (int64_t b = c0; b < c1; b++) t += (double)ha[b] * e[b - c0];
        sum += e[a - c0] * t;
    }
    return sum;
}

/* Error of quantizing clamp(w, -m, m) against the unclamped w, for one group. */
static double clip_error(const quant_grid *g, const float *w, int64_t n, float m, float *wc, double *e,
                         const float *h, int64_t cols, int64_t c0)
{
    const int maxq = (1 << g->bits) - 1;
    float sc, z;
    for (int64_t j = 0; j < n; j++) wc[j] = fminf(fmaxf(w[j], -m), m);
    quant_int_params(wc, n, g->bits, g->sym, NULL, NULL, &sc, &z);
    for (int64_t j = 0; j < n; j++)
        e[j] = (double)quant_int_value(quant_int_code(wc[j], sc, z, maxq), sc, z) - (double)w[j];
    return group_quad(e, h, cols, c0, c0 + n);
}

static int clip_task(void *ctx, int64_t b)
{
    clip_job *j = ctx;
    const int64_t cols = j->cols, gs = j->g->group > 0 ? j->g->group : cols;
    const int64_t r0 = b * AWQ_ROW_BLOCK, r1 = r0 + AWQ_ROW_BLOCK < j->rows ? r0 + AWQ_ROW_BLOCK : j->rows;
    const int steps = (int)(j->max_shrink * j->clip_grid);
    float *wc = malloc((size_t)gs * sizeof *wc);
    double *e = malloc((size_t)gs * sizeof *e);
    if (!wc || !e) { free(wc); free(e); return -1; }
    j->before[b] = j->after[b] = 0;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += gs) {
            const int64_t n = c0 + gs < cols ? gs : cols - c0;
            float *w = j->w + r * cols + c0;
            float org_max = 0.0f;
            for (int64_t k = 0; k < n; k++) org_max = fmaxf(org_max, fabsf(w[k]));
            // shrink the symmetric bound: 1, 0.95, ..., keep the strict minimum
            float best_m = org_max;
            double best = INFINITY;
            for (int i = 0; i < steps; i++) {
                float m = org_max * (float)(1.0 - (double)i / (double)j->clip_grid);
                double err = clip_error(j->g, w, n, m, wc, e, j->h, cols, c0);
                if (i == 0) j->before[b] += err;
                if (err < best) { best = err; best_m = m; }
            }
            j->after[b] += steps > 0 ? best : 0;
            for (int64_t k = 0; k < n; k++) w[k] = fminf(fmaxf(w[k], -best_m), best_m);
        }
    free(wc);
    free(e);
    return 0;
}

int awq_clip_matrix(const quant_grid *g, double max_shrink, int clip_grid, float *w,
                    int64_t rows, int64_t cols, const float *h, int threads,
                    double *before, double *after)
{
    const int64_t nb = (rows + AWQ_ROW_BLOCK - 1) / AWQ_ROW_BLOCK;
    clip_job j = { g, max_shrink, clip_grid, w, rows, cols, h,
                   calloc((size_t)(nb ? nb : 1), sizeof(double)), calloc((size_t)(nb ? nb : 1), sizeof(double)) };
    int64_t failed;
    int rc = -1;
    if (j.before && j.after && quant_parallel_for(nb, threads, clip_task, &j, &failed) == 0) {
        double sb = 0, sa = 0;
        for (int64_t b = 0; b < nb; b++) { sb += j.before[b]; sa += j.after[b]; }
        if (before) *before = sb;
        if (after) *after = sa;
        rc = 0;
    }
    free(j.before);
    free(j.after);
    return rc;
}

int awq_layer_clip(awq_layer *L, const awq_opts *o, char **errp)
{
    float *hs[AWQ_NGROUPS] = { NULL };
    int rc = -1;
    L->clip_before = L->clip_after = 0;
    for (int l = 0; l < AWQ_NLIN; l++) {
        awq_mat *m = &L->lin[l];
        const int g = awq_input_group(l);
        // reference auto_clip: never q/k (attention scores are too sensitive)
        if (l == AWQ_Q || l == AWQ_K || !m->w || !L->in[g].hessian) continue;
        if (!hs[g]) {   // the scaled input's Hessian diag(1/s) H diag(1/s)
            const size_t nn = (size_t)(m->cols * m->cols);
            if (!(hs[g] = malloc(nn * sizeof(float)))) { err_set(errp, "out of memory"); goto out; }
            memcpy(hs[g], L->in[g].hessian, nn * sizeof(float));
            if (L->scale[g]) awq_scale_hessian(hs[g], m->cols, L->scale[g]);
        }
        double b = 0, a = 0;
        if (awq_clip_matrix(&o->grid, o->max_shrink, o->clip_grid, m->w, m->rows, m->cols, hs[g],
                            o->threads, &b, &a)) {
            err_set(errp, "out of memory");
            goto out;
        }
        L->clip_before += b;
        L->clip_after += a;
    }
    rc = 0;
out:
    for (int g = 0; g < AWQ_NGROUPS; g++) free(hs[g]);
    return rc;
}

void awq_layer_free(awq_layer *L)
{
    for (int g = 0; g < AWQ_NGROUPS; g++) {
        free(L->scale[g]);
        L->scale[g] = NULL;
    }
}
