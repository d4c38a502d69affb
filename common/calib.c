/* calib — calibration accumulators and their stats-stream tensors (see
 * calib.h). Hessians follow GPTQ's H = Σ x xᵀ (IST-DASLab/gptq gptq.py
 * add_batch, without its 2/n scaling: the contract keeps it unnormalised). */
#include "calib.h"
#include "err.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>


typedef struct {
    char   **names;             /* weight names sharing this input; [0] stores */
    int      nnames;
    int      d;                 /* d_in */
    int64_t  n;                 /* tokens */
    double  *H;                 /* (d, d) lower triangle of Σ x xᵀ */
    double  *sx2, *sabs;        /* (d) Σ x², Σ |x| */
    float   *amax;              /* (d) max |x| */
    float    mn, mx;            /* min / max x */
    uint64_t *hist;             /* (bins) counts of |x| in [0, R) */
    double   R;                 /* 0 until the first non-zero value */
    int      written;           /* on the stream; accumulators freed */
} group;

struct calib {
    int     bins;
    int     ng, cursor;
    group  *g;
    double *xd;                 /* scratch (n, d) in double */
    size_t  xd_cap;
};

enum { S_HESSIAN, S_NTOK, S_X2, S_XABS, S_ABSMAX, S_RANGE, S_HMAX, S_HIST, S_COUNT };
static const char *const suffix[S_COUNT] = {
    "hessian", "n_tokens", "x2_mean", "xabs_mean", "absmax", "act_range", "act_hist_max", "act_hist",
};

calib *calib_new(int bins, char **errp)
{
    if (bins < 16 || bins > (1 << 20) || (bins & (bins - 1))) {
        err_set(errp, "histogram bins must be a power of two in 16..1048576, not %d", bins);
        return NULL;
    }
    calib *c = calloc(1, sizeof *c);
    if (!c) {
        err_set(errp, "out of memory");
        return NULL;
    }
    c->bins = bins;
    openblas_set_num_threads(1);    /* one fixed summation order for dsyrk */
    return c;
}

/* Free the accumulators (kept: names, d, n, range). */
static void group_release(group *g)
{
    free(g->H); free(g->sx2); free(g->sabs); free(g->amax); free(g->hist);
    g->H = g->sx2 = g->sabs = NULL;
    g->amax = NULL;
    g->hist = NULL;
}

static void group_clear(group *g)
{
    for (int i = 0; i < g->nnames; i++)
        free(g->names[i]);
    free(g->names);
    group_release(g);
}

/* The accumulators, zero, allocated at the group's first data (or its write). */
static int group_alloc(const calib *c, group *g, char **errp)
{
    size_t d = (size_t)g->d;
    g->H = calloc(d * d, sizeof *g->H);
    g->sx2 = calloc(d, sizeof *g->sx2);
    g->sabs = calloc(d, sizeof *g->sabs);
    g->amax = calloc(d, sizeof *g->amax);
    g->hist = calloc((size_t)c->bins, sizeof *g->hist);
    if (g->H && g->sx2 && g->sabs && g->amax && g->hist)
        return 0;
    group_release(g);
    return err_set(errp, "out of memory for the statistics of '%s' (d_in %d: %.1f MiB)", g->names[0], g->d,
                (double)d * d * sizeof(double) / 1048576.0);
}

void calib_free(calib *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->ng; i++)
        group_clear(&c->g[i]);
    free(c->g);
    free(c->xd);
    free(c);
}

int calib_groups(const calib *c) { return c->ng; }
int64_t calib_tokens(const calib *c) { return c->ng ? c->g[0].n : 0; }

static group *group_find(calib *c, const char *name)
{
    for (int k = 0; k < c->ng; k++) {
        int i = (c->cursor + k) % c->ng;
        if (!strcmp(c->g[i].names[0], name)) {
            c->cursor = (i + 1) % c->ng;
            return &c->g[i];
        }
    }
    return NULL;
}

/* A new group, its accumulators not yet allocated. */
static group *group_add(calib *c, const char *const *names, int nnames, int d, char **errp)
{
    group *ng = realloc(c->g, (size_t)(c->ng + 1) * sizeof *ng);
    if (!ng) {
        err_set(errp, "out of memory");
        return NULL;
    }
    c->g = ng;
    group *g = &c->g[c->ng];
    memset(g, 0, sizeof *g);
    g->d = d;
    g->mn = INFINITY;
    g->mx = -INFINITY;
    g->names = calloc((size_t)nnames, sizeof *g->names);
    int bad = !g->names;
    for (int i = 0; !bad && i < nnames; i++, g->nnames++)
        bad = !(g->names[i] = strdup(names[i]));
    if (bad) {
        group_clear(g);
        err_set(errp, "out of memory for the statistics of '%s' (d_in %d)", names[0], d);
        return NULL;
    }
    c->ng++;
    return g;
}

int calib_declare(void *ctx, const char *const *names, int nnames, int d_in, char **errp)
{
    calib *c = ctx;
    if (d_in < 1 || nnames < 1)
        return err_set(errp, "'%s': bad input width %d", nnames > 0 ? names[0] : "?", d_in);
    if (group_find(c, names[0]))
        return err_set(errp, "'%s' declared twice", names[0]);
    return group_add(c, names, nnames, d_in, errp) ? 0 : -1;
}

/* Grow R (doubling, merging bin pairs) until m < R. */
static void hist_cover(group *g, int bins, double m)
{
    if (g->R == 0) {
        int e;
        frexp(m, &e);
        g->R = ldexp(1.0, e);       /* smallest power of two > m */
        return;
    }
    while (m >= g->R) {
        for (int i = 0; i < bins / 2; i++)
            g->hist[i] = g->hist[2 * i] + g->hist[2 * i + 1];
        memset(g->hist + bins / 2, 0, (size_t)(bins / 2) * sizeof *g->hist);
        g->R *= 2;
    }
}

static void group_update(calib *c, group *g, const float *x, int n)
{
    int d = g->d;
    double *xd = c->xd;
    float bmax = 0;
    // per-channel sums, range, and the double copy for the Hessian
    for (int t = 0; t < n; t++)
        for (int j = 0; j < d; j++) {
            float v = x[(size_t)t * d + j], a = fabsf(v);
            xd[(size_t)t * d + j] = v;
            g->sx2[j] += (double)v * v;
            g->sabs[j] += a;
            if (a > g->amax[j]) g->amax[j] = a;
            if (a > bmax) bmax = a;
            if (v < g->mn) g->mn = v;
            if (v > g->mx) g->mx = v;
        }
    // H += Xᵀ X (lower triangle), X = (n, d) row-major
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, d, n, 1.0, xd, d, 1.0, g->H, d);
    // histogram of |x|
    if (bmax > 0)
        hist_cover(g, c->bins, bmax);
    if (g->R > 0) {
        float scale = (float)(c->bins / g->R);  /* a power of two: |x| * scale is exact */
        for (size_t i = 0; i < (size_t)n * d; i++)
            g->hist[(int)(fabsf(x[i]) * scale)]++;
    } else {
        g->hist[0] += (uint64_t)n * d;
    }
    g->n += n;
}

int calib_hook(void *ctx, const char *const *names, int nnames, const float *x, int n,
               int d_in, char **errp)
{
    calib *c = ctx;
    group *g = group_find(c, names[0]);
    if (!g && !(g = group_add(c, names, nnames, d_in, errp)))
        return -1;
    if (g->d != d_in)
        return err_set(errp, "'%s': input width %d, earlier %d", names[0], d_in, g->d);
    if (g->written)
        return err_set(errp, "'%s': more data after its statistics were written", names[0]);
    if (!g->H && group_alloc(c, g, errp) < 0)
        return -1;
    size_t need = (size_t)n * d_in;
    if (need > c->xd_cap) {
        double *p = realloc(c->xd, need * sizeof *p);
        if (!p)
            return err_set(errp, "out of memory");
        c->xd = p;
        c->xd_cap = need;
    }
    group_update(c, g, x, n);
    return 0;
}

/* ------------------------------------------------------------------------
 * Output */

/* The tensor for suffix s of group g under weight name `weight`. */
static int stat_tensor(const calib *c, const group *g, int s, const char *weight, qs_tensor *t)
{
    char name[512];
    snprintf(name, sizeof name, "%s.%s", weight, suffix[s]);
    int64_t shape[2] = { g->d, g->d };
    int ndim = 1;
    qdtype dt = DT_F32;
    switch (s) {
    case S_HESSIAN: ndim = 2; break;
    case S_NTOK: shape[0] = 1; dt = DT_I64; break;
    case S_RANGE: shape[0] = 2; break;
    case S_HMAX: shape[0] = 1; break;
    case S_HIST: shape[0] = c->bins; break;
    default: break;
    }
    return qs_tensor_init(t, name, dt, ndim, shape);
}

/* Make t an alias of the stored tensor of suffix s. */
static int stat_alias(const group *g, int s, qs_tensor *t)
{
    char target[512];
    snprintf(target, sizeof target, "%s.%s", g->names[0], suffix[s]);
    t->nparts = 0;
    t->attrs = json_pack("{s:s}", "alias", target);
    return t->attrs ? 0 : -1;
}

int calib_manifest(const calib *c, qs_header *h, char **errp)
{
    for (int i = 0; i < c->ng; i++)
        for (int k = 0; k < c->g[i].nnames; k++)
            for (int s = 0; s < S_COUNT; s++) {
                qs_tensor t;
                int rc = stat_tensor(c, &c->g[i], s, c->g[i].names[k], &t);
                if (rc == 0 && k > 0)
                    rc = stat_alias(&c->g[i], s, &t);
                if (rc == 0)
                    rc = qs_header_manifest_add(h, &t);
                qs_tensor_clear(&t);
                if (rc < 0)
                    return err_set(errp, "out of memory");
            }
    return 0;
}

/* The values of suffix s (not the Hessian) into buf (at least max(d, bins) floats). */
static void stat_values(const calib *c, const group *g, int s, float *buf)
{
    double n = g->n ? (double)g->n : 1, total = (double)g->n * g->d;
    for (int j = 0; j < g->d && s <= S_ABSMAX; j++)
        buf[j] = s == S_X2 ? (float)(g->sx2[j] / n) : s == S_XABS ? (float)(g->sabs[j] / n) : g->amax[j];
    if (s == S_RANGE) {
        buf[0] = g->n ? g->mn : 0;
        buf[1] = g->n ? g->mx : 0;
    } else if (s == S_HMAX) {
        buf[0] = (float)g->R;
    } else if (s == S_HIST) {
        for (int b = 0; b < c->bins; b++)
            buf[b] = total > 0 ? (float)(g->hist[b] / total) : 0;
    }
}

static int group_write(const calib *c, const group *g, qs_writer *w, float *buf)
{
    for (int s = 0; s < S_COUNT; s++) {
        qs_tensor t;
        if (stat_tensor(c, g, s, g->names[0], &t) < 0)
            return -1;
        int rc = qs_writer_begin(w, &t);
        if (s == S_HESSIAN) {
            // the full symmetric matrix from the lower triangle, row by row
            for (int i = 0; rc == 0 && i < g->d; i++) {
                for (int j = 0; j < g->d; j++)
                    buf[j] = (float)(j <= i ? g->H[(size_t)i * g->d + j] : g->H[(size_t)j * g->d + i]);
                rc = qs_writer_write(w, buf, (size_t)g->d * sizeof *buf);
            }
        } else if (s == S_NTOK) {
            int64_t n = g->n;
            rc = rc ? rc : qs_writer_write(w, &n, sizeof n);
        } else {
            stat_values(c, g, s, buf);
            rc = rc ? rc : qs_writer_write(w, buf, (size_t)qs_tensor_nbytes(&t));
        }
        rc = rc ? rc : qs_writer_end(w);
        qs_tensor_clear(&t);
        if (rc < 0)
            return -1;
    }
    for (int k = 1; k < g->nnames; k++)
        for (int s = 0; s < S_COUNT; s++) {
            qs_tensor t;
            int rc = stat_tensor(c, g, s, g->names[k], &t);
            rc = rc ? rc : stat_alias(g, s, &t);
            rc = rc ? rc : qs_writer_begin(w, &t);
            rc = rc ? rc : qs_writer_end(w);
            qs_tensor_clear(&t);
            if (rc < 0)
                return -1;
        }
    return 0;
}

/* Write groups [0, upto) not yet written (a group with no data as zeros), and
 * free their accumulators. */
static int write_groups(calib *c, int upto, qs_writer *w, char **errp)
{
    int maxd = c->bins;
    for (int i = 0; i < upto; i++)
        if (c->g[i].d > maxd)
            maxd = c->g[i].d;
    float *buf = malloc((size_t)maxd * sizeof *buf);
    if (!buf)
        return err_set(errp, "out of memory");
    int rc = 0;
    for (int i = 0; rc == 0 && i < upto; i++) {
        group *g = &c->g[i];
        if (g->written)
            continue;
        if (!g->H && group_alloc(c, g, errp) < 0) {
            free(buf);
            return -1;
        }
        rc = group_write(c, g, w, buf);
        group_release(g);
        g->written = 1;
    }
    free(buf);
    if (rc < 0) {
        const char *e = qs_writer_error(w);
        return err_set(errp, "%s", e && *e ? e : "cannot write statistics");
    }
    return 0;
}

int calib_write(calib *c, qs_writer *w, char **errp)
{
    return write_groups(c, c->ng, w, errp);
}

int calib_flush(calib *c, qs_writer *w, char **errp)
{
    int upto = 0;
    while (upto < c->ng && (c->g[upto].written || c->g[upto].H))
        upto++;
    return write_groups(c, upto, w, errp);
}

size_t calib_bytes(const calib *c)
{
    size_t b = c->xd_cap * sizeof *c->xd;
    for (int i = 0; i < c->ng; i++)
        if (c->g[i].H)
            b += ((size_t)c->g[i].d * c->g[i].d + 2 * (size_t)c->g[i].d) * sizeof(double) +
                 (size_t)c->g[i].d * sizeof(float) + (size_t)c->bins * sizeof(uint64_t);
    return b;
}
