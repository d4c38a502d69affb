/* quant — integer / NF4 / FP8 grids, RTN and dequantization (see quant.h).
 *
 * Primary sources: IST-DASLab/gptq quant.py (Quantizer.find_params, quantize:
 * min/max and mse=True search); QLoRA (Dettmers et al. 2023) and
 * bitsandbytes functional.create_normal_map for the NF4 levels, its
 * kQuantizeBlockwise (x * 1/absmax, nearest level) for NF4 rounding;
 * OCP FP8 (e4m3fn max 448, e5m2 max 57344) for FP8 per-channel scaling.
 */
#include "quant.h"
#include "err.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"

/*-*** Grid descriptor ***/

void quant_grid_default(quant_grid *g)
{
    memset(g, 0, sizeof *g);
    g->scheme = QUANT_INT;
    g->bits = 4;
    g->group = 128;
    g->fp8_format = DT_F8_E4M3;
    strcpy(g->method, "rtn");
}

int quant_grid_set_scheme(quant_grid *g, const char *name)
{
    static const char *const gguf_types[] = { "q4_0", "q4_1", "q5_0", "q5_1", "q8_0" };
    if (strcmp(name, "int") == 0) { g->scheme = QUANT_INT; return 0; }
    if (strcmp(name, "nf4") == 0) { g->scheme = QUANT_NF4; g->bits = 4; return 0; }
    if (strcmp(name, "fp8_e4m3") == 0 || strcmp(name, "fp8") == 0) {
        g->scheme = QUANT_FP8; g->bits = 8; g->fp8_format = DT_F8_E4M3; return 0;
    }
    if (strcmp(name, "fp8_e5m2") == 0) {
        g->scheme = QUANT_FP8; g->bits = 8; g->fp8_format = DT_F8_E5M2; return 0;
    }
    for (size_t i = 0; i < sizeof gguf_types / sizeof gguf_types[0]; i++)
        if (strcmp(name, gguf_types[i]) == 0) {
            g->scheme = QUANT_GGUF;
            snprintf(g->gguf_type, sizeof g->gguf_type, "%s", name);
            g->bits = name[1] - '0';
            g->group = 32;
            return 0;
        }
    return -1;
}

int quant_grid_check(const quant_grid *g, int64_t cols, char **errp)
{
    switch (g->scheme) {
    case QUANT_INT:
        if (g->bits < 2 || g->bits > 8) {
            err_set(errp, "bits %d out of range 2..8", g->bits);
            return -1;
        }
        break;
    case QUANT_NF4:
        if (g->act_order) {
            err_set(errp, "nf4 does not support act_order");
            return -1;
        }
        break;
    case QUANT_FP8:
        if (g->group != -1 && g->group != 0) {
            err_set(errp, "fp8 needs group -1 (per row) or 0 (per tensor), not %d", g->group);
            return -1;
        }
        if (g->act_order) {
            err_set(errp, "fp8 does not support act_order");
            return -1;
        }
        return 0;
    case QUANT_GGUF:
        if (cols > 0 && cols % 32 != 0) {
            err_set(errp, "%s needs columns divisible by 32, have %lld",
                                     g->gguf_type, (long long)cols);
            return -1;
        }
        return 0;
    default:
        err_set(errp, "unknown quantization scheme");
        return -1;
    }
    if (g->group == 0 || g->group < -1) {
        err_set(errp, "group %d must be -1 or positive", g->group);
        return -1;
    }
    if (g->static_groups && !g->act_order) {
        err_set(errp, "static groups only make sense with act_order");
        return -1;
    }
    return 0;
}

int64_t quant_ngroups(const quant_grid *g, int64_t cols)
{
    if (g->group <= 0) return 1;
    return (cols + g->group - 1) / g->group;
}

static const char *fp8_name(int fmt) { return fmt == DT_F8_E5M2 ? "e5m2" : "e4m3"; }

json_t *quant_grid_to_json(const quant_grid *g)
{
    json_t *q = NULL;
    switch (g->scheme) {
    case QUANT_INT:
        q = json_pack("{s:s, s:i, s:i, s:b, s:b, s:s}", "scheme", "int", "bits", g->bits,
                      "group", g->group, "sym", g->sym, "act_order", g->act_order,
                      "method", g->method);
        break;
    case QUANT_NF4:
        q = json_pack("{s:s, s:i, s:s}", "scheme", "nf4", "group", g->group, "method", g->method);
        break;
    case QUANT_FP8:
        q = json_pack("{s:s, s:s, s:i, s:s}", "scheme", "fp8", "format", fp8_name(g->fp8_format),
                      "group", g->group, "method", g->method);
        break;
    case QUANT_GGUF:
        q = json_pack("{s:s, s:s, s:s}", "scheme", "gguf", "type", g->gguf_type,
                      "method", g->method);
        break;
    }
    return q;
}

static int json_get_int(const json_t *q, const char *key, int *v, int required, char **errp)
{
    json_t *x = json_object_get(q, key);
    if (!x) {
        if (!required) return 0;
        err_set(errp, "quant: missing '%s'", key);
        return -1;
    }
    if (!json_is_integer(x)) {
        err_set(errp, "quant: '%s' is not an integer", key);
        return -1;
    }
    *v = (int)json_integer_value(x);
    return 0;
}

static int json_get_bool(const json_t *q, const char *key, int *v, char **errp)
{
    json_t *x = json_object_get(q, key);
    if (!x) return 0;
    if (!json_is_boolean(x)) {
        err_set(errp, "quant: '%s' is not a boolean", key);
        return -1;
    }
    *v = json_is_true(x);
    return 0;
}

int quant_grid_from_json(const json_t *q, quant_grid *g, char **errp)
{
    quant_grid_default(g);
    if (!json_is_object(q)) {
        err_set(errp, "quant: not an object");
        return -1;
    }
    const char *scheme = json_string_value(json_object_get(q, "scheme"));
    const char *method = json_string_value(json_object_get(q, "method"));
    if (!scheme) {
        err_set(errp, "quant: missing 'scheme'");
        return -1;
    }
    snprintf(g->method, sizeof g->method, "%s", method ? method : "rtn");
    if (strcmp(scheme, "int") == 0) {
        g->scheme = QUANT_INT;
        if (json_get_int(q, "bits", &g->bits, 1, errp) || json_get_int(q, "group", &g->group, 1, errp)
            || json_get_bool(q, "sym", &g->sym, errp) || json_get_bool(q, "act_order", &g->act_order, errp))
            return -1;
    } else if (strcmp(scheme, "nf4") == 0) {
        g->scheme = QUANT_NF4;
        g->bits = 4;
        if (json_get_int(q, "group", &g->group, 1, errp)) return -1;
    } else if (strcmp(scheme, "fp8") == 0) {
        const char *fmt = json_string_value(json_object_get(q, "format"));
        g->scheme = QUANT_FP8;
        g->bits = 8;
        if (!fmt || (strcmp(fmt, "e4m3") && strcmp(fmt, "e5m2"))) {
            err_set(errp, "quant: fp8 'format' must be \"e4m3\" or \"e5m2\"");
            return -1;
        }
        g->fp8_format = strcmp(fmt, "e5m2") == 0 ? DT_F8_E5M2 : DT_F8_E4M3;
        g->group = -1;
        if (json_get_int(q, "group", &g->group, 0, errp)) return -1;
    } else if (strcmp(scheme, "gguf") == 0) {
        const char *type = json_string_value(json_object_get(q, "type"));
        if (!type || quant_grid_set_scheme(g, type) != 0) {
            err_set(errp, "quant: gguf 'type' missing or unknown");
            return -1;
        }
    } else {
        err_set(errp, "quant: unknown scheme '%s'", scheme);
        return -1;
    }
    return quant_grid_check(g, 0, errp);
}

/*-*** Parameter search (quant.py find_params) ***/

void quant_scale_opts_default(quant_scale_opts *o)
{
    o->mode = QSCALE_MINMAX;
    o->norm = 2.4f;
    o->grid = 100;
    o->maxshrink = 0.8f;
    o->importance = NULL;
    o->f16_scales = 0;
}

/* sum_j imp_j |quantize(x_j) - x_j|^norm for one candidate (scale, zero). */
static double int_grid_error(const float *x, int64_t n, const float *imp, float scale,
                             float zero, int maxq, float norm)
{
    double err = 0;
    for (int64_t j = 0; j < n; j++) {
        float q = quant_int_value(quant_int_code(x[j], scale, zero, maxq), scale, zero);
        double e = pow(fabs((double)q - (double)x[j]), (double)norm);
        err += imp ? (double)imp[j] * e : e;
    }
    return err;
}

/* With f16_scales the scale is rounded to the nearest f16 (what GPTQ, AWQ and
 * compressed-tensors checkpoints store) before the zero point and the codes are
 * derived from it, so packing loses nothing. */
static float scale_round(float s, int f16) { return f16 ? f16_to_f32(f32_to_f16(s)) : s; }

static float zero_of(float xmin, float s, int maxq)
{
    float z = nearbyintf(-xmin / s);
    return z > (float)maxq ? (float)maxq : z;   /* only reachable when f16 rounding shrank s */
}

void quant_int_params(const float *x, int64_t n, int bits, int sym,
                      const quant_scale_opts *o, const float *imp,
                      float *scale, float *zero)
{
    const int maxq = (1 << bits) - 1;
    // range including 0
    float xmin = 0.0f, xmax = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        if (x[j] < xmin) xmin = x[j];
        if (x[j] > xmax) xmax = x[j];
    }
    if (sym) {
        if (fabsf(xmin) > xmax) xmax = fabsf(xmin);
        if (xmin < 0.0f) xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    const int f16 = o && o->f16_scales;
    float s = scale_round((xmax - xmin) / (float)maxq, f16);
    float z = sym ? (float)(maxq + 1) / 2.0f : zero_of(xmin, s, maxq);
    // optional shrink search: p = 1 - i/grid, keep the first strict minimum
    quant_scale_opts dflt;
    if (!o && imp) {
        quant_scale_opts_default(&dflt);
        o = &dflt;
    }
    if (o && (o->mode == QSCALE_MSE || o->importance || imp)) {
        double best = INFINITY;
        int steps = (int)((double)o->maxshrink * (double)o->grid);
        const float z0 = z;
        for (int i = 0; i < steps; i++) {
            float p = (float)(1.0 - (double)i / (double)o->grid);
            float xmin1 = p * xmin, xmax1 = p * xmax;
            float s1 = scale_round((xmax1 - xmin1) / (float)maxq, f16);
            float z1 = sym ? z0 : zero_of(xmin1, s1, maxq);
            double err = int_grid_error(x, n, imp, s1, z1, maxq, o->norm);
            if (err < best) {
                best = err;
                s = s1;
                z = z1;
            }
        }
    }
    *scale = s;
    *zero = z;
}

/*-*** NF4 ***/

/* bitsandbytes create_normal_map(offset=0.9677, use_extra_value=True). */
const float quant_nf4_table[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

int quant_nf4_code(float x)
{
    // count the midpoints strictly below x (bitsandbytes dQuantizeNF4 uses `x > mid`)
    int code = 0;
    for (int k = 0; k < 15; k++) {
        float mid = (float)(((double)quant_nf4_table[k] + (double)quant_nf4_table[k + 1]) / 2.0);
        if (x > mid) code = k + 1;
    }
    return code;
}

/*-*** FP8 ***/

float quant_fp8_max(int fmt) { return fmt == DT_F8_E5M2 ? 57344.0f : 448.0f; }

uint8_t quant_fp8_encode(int fmt, float x)
{
    return fmt == DT_F8_E5M2 ? f32_to_f8_e5m2(x) : f32_to_f8_e4m3(x);
}

float quant_fp8_decode(int fmt, uint8_t code)
{
    return fmt == DT_F8_E5M2 ? f8_e5m2_to_f32(code) : f8_e4m3_to_f32(code);
}

static float absmax(const float *x, size_t n)
{
    float m = 0.0f;
    for (size_t j = 0; j < n; j++)
        if (fabsf(x[j]) > m) m = fabsf(x[j]);
    return m;
}

float quant_fp8_tensor_scale(int fmt, const float *w, size_t n)
{
    float m = absmax(w, n);
    return m > 0.0f ? m / quant_fp8_max(fmt) : 1.0f;
}

/*-*** RTN over a row block ***/

static void rtn_int_row(const quant_grid *g, const quant_scale_opts *o, const float *w,
                        int64_t cols, uint8_t *codes, float *scales, float *zeros, float *deq)
{
    const int maxq = (1 << g->bits) - 1;
    const int64_t gs = g->group < 0 ? cols : g->group;
    const float *imp = o ? o->importance : NULL;
    for (int64_t c0 = 0, k = 0; c0 < cols; c0 += gs, k++) {
        int64_t n = cols - c0 < gs ? cols - c0 : gs;
        float s, z;
        quant_int_params(w + c0, n, g->bits, g->sym, o, imp ? imp + c0 : NULL, &s, &z);
        scales[k] = s;
        zeros[k] = z;
        for (int64_t j = c0; j < c0 + n; j++) {
            int q = quant_int_code(w[j], s, z, maxq);
            codes[j] = (uint8_t)q;
            if (deq) deq[j] = quant_int_value(q, s, z);
        }
    }
}

static void rtn_nf4_row(const quant_grid *g, const float *w, int64_t cols,
                        uint8_t *codes, float *scales, float *deq)
{
    const int64_t gs = g->group < 0 ? cols : g->group;
    for (int64_t c0 = 0, k = 0; c0 < cols; c0 += gs, k++) {
        int64_t n = cols - c0 < gs ? cols - c0 : gs;
        // find absmax of the group
        float m = absmax(w + c0, (size_t)n);
        float id = m > 0.0f ? 1.0f / m : 0.0f;
        scales[k] = m;
        // nearest NF4 level of w / absmax
        for (int64_t j = c0; j < c0 + n; j++) {
            int q = quant_nf4_code(w[j] * id);
            codes[j] = (uint8_t)q;
            if (deq) deq[j] = m * quant_nf4_table[q];
        }
    }
}

static void rtn_fp8_row(const quant_grid *g, const float *w, int64_t cols, float s,
                        uint8_t *codes, float *deq)
{
    for (int64_t j = 0; j < cols; j++) {
        uint8_t q = quant_fp8_encode(g->fp8_format, w[j] / s);
        codes[j] = q;
        if (deq) deq[j] = s * quant_fp8_decode(g->fp8_format, q);
    }
}

int quant_rtn_rows(const quant_grid *g, const quant_scale_opts *o,
                   const float *w, int64_t nrows, int64_t cols,
                   uint8_t *codes, float *scales, float *zeros, float *deq,
                   const float *tensor_scale)
{
    const int64_t ng = quant_ngroups(g, cols);
    for (int64_t r = 0; r < nrows; r++) {
        const float *wr = w + r * cols;
        uint8_t *cr = codes + r * cols;
        float *dr = deq ? deq + r * cols : NULL;
        switch (g->scheme) {
        case QUANT_INT:
            rtn_int_row(g, o, wr, cols, cr, scales + r * ng, zeros + r * ng, dr);
            break;
        case QUANT_NF4:
            rtn_nf4_row(g, wr, cols, cr, scales + r * ng, dr);
            break;
        case QUANT_FP8: {
            float s;
            if (g->group == 0) {
                if (!tensor_scale) return -1;
                s = *tensor_scale;
            } else {
                float m = absmax(wr, (size_t)cols);
                s = m > 0.0f ? m / quant_fp8_max(g->fp8_format) : 1.0f;
                scales[r] = s;
            }
            rtn_fp8_row(g, wr, cols, s, cr, dr);
            break;
        }
        default:
            return -1;
        }
    }
    return 0;
}

/* Whole-matrix RTN: one task per 64-row block. */
enum { RTN_BLOCK_ROWS = 64 };

typedef struct {
    const quant_grid *g;
    const quant_scale_opts *o;
    const float *w;
    int64_t rows, cols, ng;
    uint8_t *codes;
    float *scales, *zeros, *deq;
    float tensor_scale;
} rtn_job;

static int rtn_block(void *ctx, int64_t b)
{
    rtn_job *j = ctx;
    int64_t r0 = b * RTN_BLOCK_ROWS;
    int64_t n = j->rows - r0 < RTN_BLOCK_ROWS ? j->rows - r0 : RTN_BLOCK_ROWS;
    int per_tensor = j->g->scheme == QUANT_FP8 && j->g->group == 0;
    int64_t srow = j->g->scheme == QUANT_FP8 ? 1 : j->ng;
    return quant_rtn_rows(j->g, j->o, j->w + r0 * j->cols, n, j->cols, j->codes + r0 * j->cols,
                          per_tensor ? NULL : j->scales + r0 * srow,
                          j->zeros ? j->zeros + r0 * j->ng : NULL,
                          j->deq ? j->deq + r0 * j->cols : NULL, &j->tensor_scale);
}

int quant_rtn(const quant_grid *g, const quant_scale_opts *o,
              const float *w, int64_t rows, int64_t cols,
              uint8_t *codes, float *scales, float *zeros, float *deq,
              int threads, char **errp)
{
    if (quant_grid_check(g, cols, errp)) return -1;
    if (g->scheme == QUANT_GGUF) {
        err_set(errp, "gguf grids are not quantized by quant_rtn");
        return -1;
    }
    rtn_job j = { g, o, w, rows, cols, quant_ngroups(g, cols), codes, scales, zeros, deq, 1.0f };
    if (g->scheme == QUANT_FP8 && g->group == 0) {
        j.tensor_scale = quant_fp8_tensor_scale(g->fp8_format, w, (size_t)(rows * cols));
        scales[0] = j.tensor_scale;
    }
    int64_t failed;
    if (quant_parallel_for((rows + RTN_BLOCK_ROWS - 1) / RTN_BLOCK_ROWS, threads, rtn_block, &j,
                           &failed)) {
        err_set(errp, "rtn: row block %lld failed", (long long)failed);
        return -1;
    }
    return 0;
}

/*-*** Dequantization ***/

static int find_part(const qs_tensor *t, const char *role)
{
    for (int i = 0; i < t->nparts; i++)
        if (strcmp(t->parts[i].role, role) == 0) return i;
    return -1;
}

static int part_is(const qs_tensor *t, int i, qdtype dt, int64_t d0, int64_t d1)
{
    const qs_part *p = &t->parts[i];
    if (p->dtype != dt) return 0;
    if (d1 < 0) return p->ndim == 1 && p->shape[0] == d0;
    return p->ndim == 2 && p->shape[0] == d0 && p->shape[1] == d1;
}

static void tensor_matrix(const qs_tensor *t, int64_t *rows, int64_t *cols)
{
    int64_t c = 1;
    for (int d = 1; d < t->ndim; d++) c *= t->shape[d];
    *rows = t->ndim >= 2 ? t->shape[0] : 1;
    *cols = t->ndim >= 2 ? c : (t->ndim == 1 ? t->shape[0] : 1);
}

static const char *check_grid(const qs_tensor *t, quant_grid *g)
{
    json_t *q = t->attrs ? json_object_get(t->attrs, "quant") : NULL;
    char *err = NULL;
    if (!q) return "tensor has no quant attrs";
    if (quant_grid_from_json(q, g, &err)) {
        free(err);
        return "bad quant attrs";
    }
    if (g->scheme == QUANT_GGUF) return "gguf blocks are dequantized by ggml_quants";
    return NULL;
}

const char *quant_check_tensor(const qs_tensor *t)
{
    quant_grid g;
    const char *e = check_grid(t, &g);
    if (e) return e;
    int64_t rows, cols;
    tensor_matrix(t, &rows, &cols);
    int64_t ng = quant_ngroups(&g, cols);
    int ic = find_part(t, "codes"), is = find_part(t, "scales"), iz = find_part(t, "zeros");
    int ig = find_part(t, "g_idx");
    if (ic < 0 || !part_is(t, ic, DT_U8, rows, cols)) return "codes part missing or not u8 [rows, cols]";
    if (is < 0) return "scales part missing";
    switch (g.scheme) {
    case QUANT_INT:
        if (iz < 0 || !part_is(t, iz, DT_F32, rows, ng)) return "zeros part missing or not f32 [rows, ngroups]";
        if (ig >= 0 && !part_is(t, ig, DT_I32, cols, -1)) return "g_idx part not i32 [cols]";
        /* fall through */
    case QUANT_NF4:
        if (!part_is(t, is, DT_F32, rows, ng)) return "scales part not f32 [rows, ngroups]";
        break;
    case QUANT_FP8:
        if (g.group == 0 ? !part_is(t, is, DT_F32, 1, -1) : !part_is(t, is, DT_F32, rows, 1))
            return "fp8 scales part not f32 [rows, 1] (per row) or [1] (per tensor)";
        break;
    default:
        return "unsupported scheme";
    }
    return NULL;
}

int quant_dequantize(const qs_tensor *t, const void *const parts[], float *out)
{
    quant_grid g;
    if (quant_check_tensor(t) || check_grid(t, &g)) return -1;
    int64_t rows, cols;
    tensor_matrix(t, &rows, &cols);
    const int64_t ng = quant_ngroups(&g, cols);
    const uint8_t *codes = parts[find_part(t, "codes")];
    const float *scales = parts[find_part(t, "scales")];
    int iz = find_part(t, "zeros"), ig = find_part(t, "g_idx");
    const float *zeros = iz >= 0 ? parts[iz] : NULL;
    const int32_t *g_idx = ig >= 0 && g.scheme == QUANT_INT ? parts[ig] : NULL;
    if (g_idx)
        for (int64_t c = 0; c < cols; c++)
            if (g_idx[c] < 0 || g_idx[c] >= ng) return -1;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *cr = codes + r * cols;
        float *o = out + r * cols;
        for (int64_t c = 0; c < cols; c++) {
            int64_t k = g_idx ? g_idx[c] : (g.group <= 0 ? 0 : c / g.group);
            switch (g.scheme) {
            case QUANT_INT:
                o[c] = quant_int_value(cr[c], scales[r * ng + k], zeros[r * ng + k]);
                break;
            case QUANT_NF4:
                o[c] = scales[r * ng + k] * quant_nf4_table[cr[c] & 15];
                break;
            default:  // fp8
                o[c] = scales[g.group == 0 ? 0 : r] * quant_fp8_decode(g.fp8_format, cr[c]);
                break;
            }
        }
    }
    return 0;
}

/*-*** Deterministic parallel-for ***/

typedef struct {
    int (*fn)(void *, int64_t);
    void *ctx;
    int64_t nblocks;
    atomic_llong next;
    atomic_llong failed;   /* smallest failing block, or nblocks */
} pfor_state;

static void *pfor_worker(void *arg)
{
    pfor_state *s = arg;
    for (;;) {
        long long b = atomic_fetch_add(&s->next, 1);
        if (b >= s->nblocks) break;
        if (s->fn(s->ctx, b) != 0) {
            long long cur = atomic_load(&s->failed);
            while (b < cur && !atomic_compare_exchange_weak(&s->failed, &cur, b)) {}
        }
    }
    return NULL;
}

int quant_parallel_for(int64_t nblocks, int threads, int (*fn)(void *ctx, int64_t block),
                       void *ctx, int64_t *failed)
{
    pfor_state s;
    s.fn = fn;
    s.ctx = ctx;
    s.nblocks = nblocks;
    atomic_init(&s.next, 0);
    atomic_init(&s.failed, nblocks);
    if (threads > nblocks) threads = (int)nblocks;
    if (threads < 1) threads = 1;
    pthread_t *tid = threads > 1 ? calloc((size_t)threads - 1, sizeof *tid) : NULL;
    int started = 0;
    if (tid)
        for (; started < threads - 1; started++)
            if (pthread_create(&tid[started], NULL, pfor_worker, &s) != 0) break;
    pfor_worker(&s);   // the calling thread works too
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
    free(tid);
    long long f = atomic_load(&s.failed);
    if (failed) *failed = f < nblocks ? f : -1;
    return f < nblocks ? -1 : 0;
}
