/* mix — menus, storage costs, sensitivities and the exact multiple-choice
 * knapsack (see mix.h). */
#include "mix.h"
#include "err.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "awq.h"
#include "dtype.h"
#include "gptq.h"

/*-*** Menu ***/

/* Parse a comma list of integers in [lo, hi] into v (up to max). Count or -1. */
static int parse_list(const char *s, size_t len, long lo, long hi, long *v, int max)
{
    int n = 0;
    const char *end = s + len;
    while (s < end) {
        char *e;
        long x = strtol(s, &e, 10);
        if (e == s || e > end || x < lo || x > hi || n == max) return -1;
        v[n++] = x;
        s = e;
        if (s < end && *s++ != ',') return -1;
        if (s == end && s[-1] == ',') return -1;
    }
    return n;
}

static int menu_add(mix_setting **menu, int *n, const mix_setting *s, char **errp)
{
    if (*n >= MIX_MAX_CHOICES) return err_set(errp, "menu: more than %d settings", MIX_MAX_CHOICES);
    mix_setting *m = realloc(*menu, (size_t)(*n + 1) * sizeof *m);
    if (!m) return err_set(errp, "out of memory");
    m[(*n)++] = *s;
    *menu = m;
    return 0;
}

/* One "GRID:BITS:GROUPS" entry (or "f16"). */
static int parse_entry(const char *s, size_t len, mix_setting **menu, int *n, char **errp)
{
    mix_setting st;
    memset(&st, 0, sizeof st);
    quant_grid_default(&st.grid);
    snprintf(st.grid.method, sizeof st.grid.method, "rtn");
    if (len == 3 && !strncmp(s, "f16", 3)) {
        st.keep_f16 = 1;
        return menu_add(menu, n, &st, errp);
    }
    const char *c1 = memchr(s, ':', len), *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - s)) : NULL;
    if (!c1 || !c2) return err_set(errp, "menu: '%.*s' is not GRID:BITS:GROUPS", (int)len, s);
    const char *c3 = memchr(c2 + 1, ':', len - (size_t)(c2 + 1 - s));
    long outl[16] = { 0 };
    int no = 1;
    if (c3 && (no = parse_list(c3 + 1, len - (size_t)(c3 + 1 - s), 0, 1 << 20, outl, 16)) <= 0)
        return err_set(errp, "menu: bad outlier list in '%.*s'", (int)len, s);
    const size_t glen = c3 ? (size_t)(c3 - c2 - 1) : len - (size_t)(c2 + 1 - s);
    const size_t gl = (size_t)(c1 - s);
    if (gl == 3 && !strncmp(s, "int", 3)) st.grid.scheme = QUANT_INT;
    else if (gl == 3 && !strncmp(s, "sym", 3)) { st.grid.scheme = QUANT_INT; st.grid.sym = 1; }
    else if (gl == 3 && !strncmp(s, "nf4", 3)) st.grid.scheme = QUANT_NF4;
    else return err_set(errp, "menu: unknown grid '%.*s' (int, sym, nf4 or f16)", (int)gl, s);
    long bits[16], groups[16];
    int nb = parse_list(c1 + 1, (size_t)(c2 - c1 - 1), 2, 8, bits, 16);
    int ng = parse_list(c2 + 1, glen, -1, 1 << 24, groups, 16);
    if (nb <= 0) return err_set(errp, "menu: bad bits list in '%.*s' (2..8)", (int)len, s);
    if (ng <= 0) return err_set(errp, "menu: bad group list in '%.*s'", (int)len, s);
    for (int b = 0; b < nb; b++)
        for (int g = 0; g < ng; g++)
            for (int o = 0; o < no; o++) {
                if (groups[g] == 0) return err_set(errp, "menu: group 0 in '%.*s' (-1 = whole rows)", (int)len, s);
                if (st.grid.scheme == QUANT_NF4 && bits[b] != 4) return err_set(errp, "menu: nf4 has 4 bits");
                st.grid.bits = (int)bits[b];
                st.grid.group = (int)groups[g];
                st.outliers = (int)outl[o];
                if (menu_add(menu, n, &st, errp)) return -1;
            }
    return 0;
}

int mix_menu_parse(const char *spec, mix_setting **menu, int *n, char **errp)
{
    *menu = NULL;
    *n = 0;
    const char *s = spec;
    while (*s) {
        const char *e = strchr(s, ';');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len && parse_entry(s, len, menu, n, errp)) { free(*menu); *menu = NULL; *n = 0; return -1; }
        s += len + (e ? 1 : 0);
    }
    if (*n == 0) return err_set(errp, "menu: no settings in '%s'", spec);
    return 0;
}

void mix_setting_name(const mix_setting *s, char *buf, size_t len)
{
    if (s->keep_f16) { snprintf(buf, len, "f16"); return; }
    const char *g = s->grid.scheme == QUANT_NF4 ? "nf" : s->grid.sym ? "sym" : "int";
    char o[24] = "";
    if (s->outliers) snprintf(o, sizeof o, "+o%d", s->outliers);
    if (s->grid.group < 0) snprintf(buf, len, "%s%drow%s", g, s->grid.bits, o);
    else snprintf(buf, len, "%s%dg%d%s", g, s->grid.bits, s->grid.group, o);
}

uint64_t mix_setting_bits(const mix_setting *s, int64_t rows, int64_t cols)
{
    const uint64_t n = (uint64_t)rows * (uint64_t)cols;
    if (s->keep_f16) return 16 * n;
    const uint64_t ng = (uint64_t)quant_ngroups(&s->grid, cols);
    const uint64_t per_group = s->grid.scheme == QUANT_INT && !s->grid.sym ? 32 : 16;  // f16 scale (+ f16 zero)
    const uint64_t k = (uint64_t)s->outliers;
    return n * (uint64_t)s->grid.bits + (uint64_t)rows * ng * per_group + (uint64_t)rows * k * 16 + k * 32;
}

int mix_setting_fits(const mix_setting *s, int64_t cols)
{
    char *err = NULL;
    if (s->keep_f16) return 1;
    if (quant_grid_check(&s->grid, cols, &err)) { free(err); return 0; }
    return s->outliers < cols;
}

/*-*** Sensitivity ***/

void mix_outlier_columns(const float *w, int64_t rows, int64_t cols, const float *h, int k, int32_t *idx)
{
    // score_j = H_jj Σ_r W_rj²; keep the k largest (selection by repeated max: k is small)
    double *score = malloc((size_t)cols * sizeof *score);
    if (!score) { for (int i = 0; i < k; i++) idx[i] = i; return; }
    for (int64_t j = 0; j < cols; j++) score[j] = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) score[j] += (double)w[r * cols + j] * w[r * cols + j];
    for (int64_t j = 0; j < cols; j++) score[j] *= (double)h[j * cols + j];
    for (int i = 0; i < k; i++) {
        int64_t best = -1;
        for (int64_t j = 0; j < cols; j++)
            if (score[j] >= 0 && (best < 0 || score[j] > score[best])) best = j;
        idx[i] = (int32_t)best;
        score[best] = -1;
    }
    free(score);
    // ascending column order
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && idx[j - 1] > idx[j]; j--) { int32_t t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t; }
}

int mix_dequantized(const mix_setting *s, const float *w, int64_t rows, int64_t cols, const float *h,
                    int use_gptq, int threads, float *q, char **errp)
{
    const size_t sz = (size_t)(rows * cols);
    const int k = s->outliers;
    int32_t *idx = k ? malloc((size_t)k * sizeof *idx) : NULL;
    float *wz = k ? malloc(sz * sizeof *wz) : NULL;
    int rc = -1;
    if (k && (!idx || !wz)) { err_set(errp, "out of memory"); goto out; }
    const float *src = w;
    if (k) {   // outlier columns out of the grid's ranges
        mix_outlier_columns(w, rows, cols, h, k, idx);
        memcpy(wz, w, sz * sizeof *wz);
        for (int64_t r = 0; r < rows; r++)
            for (int i = 0; i < k; i++) wz[r * cols + idx[i]] = 0.0f;
        src = wz;
    }
    if (use_gptq && s->grid.scheme == QUANT_INT) {
        gptq_opts o;
        gptq_result res;
        gptq_opts_default(&o);
        o.grid = s->grid;
        o.threads = threads;
        if (gptq_quantize(src, rows, cols, h, &o, &res, errp)) goto out;
        memcpy(q, res.q, sz * sizeof *q);
        gptq_result_free(&res);
    } else {
        const int64_t ng = quant_ngroups(&s->grid, cols);
        uint8_t *codes = malloc(sz);
        float *sc = malloc((size_t)(rows * ng) * sizeof *sc), *zr = malloc((size_t)(rows * ng) * sizeof *zr);
        int r = !codes || !sc || !zr ? -2 : quant_rtn(&s->grid, NULL, src, rows, cols, codes, sc, zr, q, threads, errp);
        free(codes); free(sc); free(zr);
        if (r == -2) err_set(errp, "out of memory");
        if (r) goto out;
    }
    for (int64_t r = 0; r < rows; r++)   // the kept columns, as f16
        for (int i = 0; i < k; i++) q[r * cols + idx[i]] = f16_to_f32(f32_to_f16(w[r * cols + idx[i]]));
    rc = 0;
out:
    free(idx);
    free(wz);
    return rc;
}

int mix_tensor_losses(const float *w, int64_t rows, int64_t cols, const float *h,
                      const mix_setting *menu, int n, int use_gptq, int threads,
                      double *loss, char **errp)
{
    float *deq = malloc((size_t)(rows * cols) * sizeof *deq);
    if (!deq) return err_set(errp, "out of memory");
    int rc = -1;
    for (int k = 0; k < n; k++) {
        const mix_setting *s = &menu[k];
        if (s->keep_f16) { loss[k] = 0; continue; }
        if (!mix_setting_fits(s, cols)) { loss[k] = INFINITY; continue; }
        // GPTQ would have to keep the outlier columns inside its column loop: not offered
        if (use_gptq && s->outliers && s->grid.scheme == QUANT_INT) { loss[k] = INFINITY; continue; }
        if (mix_dequantized(s, w, rows, cols, h, use_gptq, threads, deq, errp)) goto out;
        loss[k] = awq_output_error(w, deq, rows, cols, h, threads);
        if (isnan(loss[k])) { err_set(errp, "out of memory"); goto out; }
    }
    rc = 0;
out:
    free(deq);
    return rc;
}

/*-*** Knapsack ***/

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b) { uint64_t t = a % b; a = b; b = t; }
    return a;
}

int mix_solve(int nitems, const int *nch, const uint64_t *const *size, const double *const *loss,
              uint64_t budget, uint64_t max_cells, int *choice, uint64_t *unit, int *exact,
              char **errp)
{
    if (!max_cells) max_cells = 50000000u;
    // smallest feasible total first
    uint64_t minsum = 0, g = 0;
    for (int i = 0; i < nitems; i++) {
        uint64_t m = UINT64_MAX;
        for (int c = 0; c < nch[i]; c++)
            if (isfinite(loss[i][c])) {
                if (size[i][c] < m) m = size[i][c];
                g = gcd64(g, size[i][c]);
            }
        if (m == UINT64_MAX) return err_set(errp, "item %d has no allowed setting", i);
        minsum += m;
    }
    if (minsum > budget)
        return err_set(errp, "budget %llu bits is below the smallest allocation (%llu bits)",
                    (unsigned long long)budget, (unsigned long long)minsum);
    // unit: the gcd (exact) unless the table would be too large
    uint64_t u = g ? g : 1;
    *exact = 1;
    if ((uint64_t)nitems * (budget / u + 1) > max_cells) {
        u = budget / (max_cells / (uint64_t)(nitems ? nitems : 1)) + 1;
        *exact = 0;
    }
    *unit = u;
    const uint64_t B = budget / u;
    const size_t W = (size_t)B + 1;
    double *dp = malloc(W * sizeof *dp), *nx = malloc(W * sizeof *nx);
    uint8_t *pick = malloc((size_t)nitems * W);
    if (!dp || !nx || !pick) { free(dp); free(nx); free(pick); return err_set(errp, "out of memory"); }
    // dp[b] = least loss of items 0..i-1 with total units <= b
    for (size_t b = 0; b < W; b++) dp[b] = 0;
    for (int i = 0; i < nitems; i++) {
        uint8_t *pi = pick + (size_t)i * W;
        for (size_t b = 0; b < W; b++) {
            double best = INFINITY;
            int bc = 0;
            for (int c = 0; c < nch[i]; c++) {
                if (!isfinite(loss[i][c])) continue;
                uint64_t su = (size[i][c] + u - 1) / u;   // rounded up: the budget always holds
                if (su > b) continue;
                double v = dp[b - su] + loss[i][c];
                if (v < best) { best = v; bc = c; }
            }
            nx[b] = best;
            pi[b] = (uint8_t)bc;
        }
        double *t = dp; dp = nx; nx = t;
    }
    int rc = 0;
    if (!isfinite(dp[B])) rc = err_set(errp, "no allocation fits the budget with %llu-bit units", (unsigned long long)u);
    else {
        size_t b = (size_t)B;
        for (int i = nitems - 1; i >= 0; i--) {
            int c = pick[(size_t)i * W + b];
            choice[i] = c;
            b -= (size_t)((size[i][c] + u - 1) / u);
        }
    }
    free(dp);
    free(nx);
    free(pick);
    return rc;
}

/* Σ_i min_c (l + λ s) − λ B and the total size of the minimisers. */
static double lagrangian(int nitems, const int *nch, const uint64_t *const *size,
                         const double *const *loss, uint64_t budget, double lam, double *tot)
{
    double sum = 0;
    *tot = 0;
    for (int i = 0; i < nitems; i++) {
        double best = INFINITY, bs = 0;
        for (int c = 0; c < nch[i]; c++) {
            if (!isfinite(loss[i][c])) continue;
            double v = loss[i][c] + lam * (double)size[i][c];
            if (v < best || (v == best && (double)size[i][c] < bs)) { best = v; bs = (double)size[i][c]; }
        }
        sum += best;
        *tot += bs;
    }
    return sum - lam * (double)budget;
}

double mix_lagrange_bound(int nitems, const int *nch, const uint64_t *const *size,
                          const double *const *loss, uint64_t budget)
{
    double lo = 0, hi = 0, tot, minsum = 0;
    for (int i = 0; i < nitems; i++) {
        double m = INFINITY;
        for (int c = 0; c < nch[i]; c++)
            if (isfinite(loss[i][c]) && (double)size[i][c] < m) m = (double)size[i][c];
        minsum += m;
    }
    if (!(minsum <= (double)budget)) return INFINITY;
    for (int i = 0; i < nitems; i++)
        for (int c = 0; c < nch[i]; c++)
            if (isfinite(loss[i][c]) && loss[i][c] > hi) hi = loss[i][c];
    hi = hi > 0 ? hi : 1;   // sizes differ by >= 1 bit: λ = max loss makes the smallest choice optimal
    double best = lagrangian(nitems, nch, size, loss, budget, 0, &tot);
    if (tot <= (double)budget) return best;   // unconstrained optimum fits
    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi);
        double v = lagrangian(nitems, nch, size, loss, budget, mid, &tot);
        if (v > best) best = v;
        if (tot > (double)budget) lo = mid; else hi = mid;
    }
    double v = lagrangian(nitems, nch, size, loss, budget, hi, &tot);
    return v > best ? v : best;
}
