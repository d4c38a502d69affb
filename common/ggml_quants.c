/* ggml_quants — scalar reference quantizers and dequantizers for llama.cpp's
 * block formats, bit-identical to ggml's (ggml-org/ggml src/ggml-quants.c,
 * quantize_row_*_ref / quantize_row_*_impl / dequantize_row_*), written from
 * the digest in /work/shared/specs/gguf.md §7–§8 and algorithms.md §7.3.
 *
 * Evaluation order matters for bit-exactness: every expression below keeps
 * ggml's left-to-right float32 order (w*x*l = (w*x)*l), sums run in index
 * order, and FP contraction is off (ISO C mode for gcc, the pragma for clang).
 */
#include "ggml_quants.h"
#include "dtype.h"

#include <math.h>
#include <string.h>
#include <strings.h>
#include <float.h>
#include <assert.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF    /* gcc: already off in ISO C mode (-std=c11) */
#endif

#define QK     32           /* block of the simple types */
#define QK_K   GGML_QK_K
#define GROUP_MAX_EPS 1e-15f
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/*-*** Type table (ggml.c type_traits; sizes from ggml-common.h) ***/

static const ggml_qtraits traits[GGML_TYPE_COUNT] = {
    [0]  = { "f32",  1,   4,   1 }, [1]  = { "f16",  1,   2,   1 },
    [2]  = { "q4_0", 32,  18,  1 }, [3]  = { "q4_1", 32,  20,  1 },
    [6]  = { "q5_0", 32,  22,  1 }, [7]  = { "q5_1", 32,  24,  1 },
    [8]  = { "q8_0", 32,  34,  1 }, [9]  = { "q8_1", 32,  36,  0 },
    [10] = { "q2_K", 256, 84,  1 }, [11] = { "q3_K", 256, 110, 1 },
    [12] = { "q4_K", 256, 144, 1 }, [13] = { "q5_K", 256, 176, 1 },
    [14] = { "q6_K", 256, 210, 1 }, [15] = { "q8_K", 256, 292, 0 },
    [16] = { "iq2_xxs", 256, 66, 0 }, [17] = { "iq2_xs", 256, 74, 0 },
    [18] = { "iq3_xxs", 256, 98, 0 }, [19] = { "iq1_s", 256, 50, 0 },
    [20] = { "iq4_nl", 32, 18, 0 },   [21] = { "iq3_s", 256, 110, 0 },
    [22] = { "iq2_s", 256, 82, 0 },   [23] = { "iq4_xs", 256, 136, 0 },
    [24] = { "i8", 1, 1, 0 },  [25] = { "i16", 1, 2, 0 },
    [26] = { "i32", 1, 4, 0 }, [27] = { "i64", 1, 8, 0 },
    [28] = { "f64", 1, 8, 0 }, [29] = { "iq1_m", 256, 56, 0 },
    [30] = { "bf16", 1, 2, 1 },
    [34] = { "tq1_0", 256, 54, 0 }, [35] = { "tq2_0", 256, 66, 0 },
    [39] = { "mxfp4", 32, 17, 0 },
};

const ggml_qtraits *ggml_qtype_traits(int type)
{
    if (type < 0 || type >= GGML_TYPE_COUNT || traits[type].blck == 0)
        return NULL;
    return &traits[type];
}

int ggml_qtype_from_name(const char *name)
{
    if (!name)
        return -1;
    for (int t = 0; t < GGML_TYPE_COUNT; t++)
        if (traits[t].blck && traits[t].supported && strcasecmp(traits[t].name, name) == 0)
            return t;
    return -1;
}

size_t ggml_row_size(int type, int64_t n)
{
    const ggml_qtraits *tr = ggml_qtype_traits(type);
    if (!tr || n < 0 || n % tr->blck)
        return 0;
    return (size_t)(n / tr->blck) * tr->type_size;
}

/*-*** Helpers (gguf.md §7) ***/

static inline void put_f16(uint8_t *p, float f)
{
    uint16_t h = f32_to_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

static inline float get_f16(const uint8_t *p)
{
    return f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

/* ggml_compute_fp32_to_bf16: NaN forced quiet, else round to nearest even. */
static inline uint16_t bf16_from_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

/* Round to nearest, ties to even, via the 1.5·2^23 trick (|f| <= 4194303). */
static inline int nearest_int(float f)
{
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* Signed symmetric scale search: L[i] in 0..2nmax-1 (offset nmax); returns d. */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type, const float *qw)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {           /* signed value of largest |x|, first wins */
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i)
            L[i] = (int8_t)(nmax + MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x[i]))));
        return 1 / iscale;
    }
    int return_early = rmse_type < 0;
    if (return_early)
        rmse_type = -rmse_type;
    /* weights: imatrix-derived, or x², 1, |x|, sqrt|x| */
#define QX_W(i) (qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : \
                 rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i])))
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        float w = QX_W(i);
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    if (return_early)
        return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
    float best = scale * sumlx;
    /* try nearby inverse scales, keep the best weighted fit */
    for (int is = -9; is <= 9; ++is) {
        if (is == 0)
            continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x[i])));
            float w = QX_W(i);
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i)
                L[i] = (int8_t)(nmax + MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
#undef QX_W
    return scale;
}

/* Q3_K sub-block scale: rounding then coordinate descent with weights x². */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L, int do_rmse)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    if (!do_rmse) {
        for (int i = 0; i < n; ++i)
            L[i] = (int8_t)(MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x[i]))) + nmax);
        return 1 / iscale;
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = MAX(-nmax, MIN(nmax - 1, nearest_int(x[i] * sl2 / slx)));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed)
            break;
    }
    for (int i = 0; i < n; ++i)
        L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Asymmetric scale+min search (value = scale·L − the_min). kx2: weights
 * given, degenerate when max == min. kx3: weights NULL → x², degenerate when
 * max <= min. Otherwise identical (ggml make_qkx2_quants / make_qkx3_quants). */
static float make_qkx_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                             float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                             int use_mad, int kx3)
{
#define KX_W(i) (weights ? weights[i] : x[i] * x[i])
    float min = x[0], max = x[0];
    float sum_w = KX_W(0);
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = KX_W(i);
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0)
        min = 0;
    if (kx3 ? max <= min : max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    /* first guess: the full range over nmax steps */
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)MAX(0, MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += KX_W(i) * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    /* candidates: least-squares scale/min for each trial grid */
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = MAX(0, MIN(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            float w = KX_W(i);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += KX_W(i) * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
#undef KX_W
    *the_min = -min;
    return scale;
}

/* Quantize non-negative x (sub-block scales or mins) to 0..nmax, weighted. */
static float make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *qw)
{
    float max = 0;
    for (int i = 0; i < n; ++i)
        max = MAX(max, x[i]);
    if (max < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i)
        L[i] = (uint8_t)nearest_int(iscale * x[i]);
    float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        float diff = x[i] - scale * L[i];
        best_mse += qw[i] * diff * diff;
    }
    /* search the inverse scale */
    for (int is = -4; is <= 4; ++is) {
        if (is == 0)
            continue;
        float iscale_is = (0.1f * is + nmax) / max;
        float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            int l = MIN(nmax, nearest_int(iscale_is * x[i]));
            float diff = x[i] - scale_is * l;
            mse += qw[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = MIN(nmax, nearest_int(iscale * x[i]));
        L[i] = (uint8_t)l;
        float w = qw[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    /* coordinate descent on the levels */
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = qw[i];
            float slx = sumlx - w * x[i] * L[i];
            float sl2 = suml2 - w * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = MIN(nmax, nearest_int(x[i] * sl2 / slx));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed)
            break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Row σ² = Σx²/n (the Q4_0…Q5_1 imatrix weights use the whole row). */
static float row_sigma2(const float *x, int64_t n)
{
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; ++j)
        sum_x2 += x[j] * x[j];
    return sum_x2 / n;
}

/* Imatrix element weights qw·sqrt(σ² + x²). */
static void imatrix_weights(float *w, const float *x, const float *qw, int n, float sigma2)
{
    for (int j = 0; j < n; ++j)
        w[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
}

/* Store the 5th bits of q[0..31] (bit j of qh = bit 4 of q_j), LE u32. */
static void put_qh5(uint8_t *qh, const uint8_t *q)
{
    uint32_t h = 0;
    for (int j = 0; j < 32; ++j)
        h |= (uint32_t)((q[j] & 0x10u) >> 4) << j;
    qh[0] = (uint8_t)h; qh[1] = (uint8_t)(h >> 8); qh[2] = (uint8_t)(h >> 16); qh[3] = (uint8_t)(h >> 24);
}

/*-*** Q8_0: d fp16 | qs int8[32] ***/

static void quantize_q8_0_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    (void)qw;                                    /* ggml ignores the imatrix for Q8_0 */
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += 34) {
        float amax = 0.0f;                       /* absolute max of the block */
        for (int j = 0; j < QK; j++)
            amax = MAX(amax, fabsf(x[j]));
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        put_f16(y, d);
        for (int j = 0; j < QK; ++j)             /* roundf: ties away from zero */
            y[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
    }
}

static void dequantize_q8_0_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += 34) {
        const float d = get_f16(y);
        for (int j = 0; j < QK; ++j)
            x[j] = (int8_t)y[2 + j] * d;
    }
}

/*-*** Q4_0: d fp16 | qs u8[16] (q_j low nibble, q_{j+16} high) ***/

static void quantize_q4_0_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    if (qw) {                                    /* quantize_row_q4_0_impl */
        const float sigma2 = row_sigma2(x, n);
        float w[QK];
        int8_t L[QK];
        for (int64_t b = 0; b < n / QK; b++, x += QK, qw += QK, y += 18) {
            imatrix_weights(w, x, qw, QK, sigma2);
            put_f16(y, make_qx_quants(QK, 8, x, L, 1, w));
            for (int j = 0; j < 16; ++j)
                y[2 + j] = (uint8_t)(L[j] | L[j + 16] << 4);
        }
        return;
    }
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += 18) {
        float amax = 0.0f, max = 0.0f;           /* signed value of largest |x| */
        for (int j = 0; j < QK; j++)
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        put_f16(y, d);
        for (int j = 0; j < 16; ++j) {
            const uint8_t q0 = (uint8_t)MIN(15, (int8_t)(x[j] * id + 8.5f));
            const uint8_t q1 = (uint8_t)MIN(15, (int8_t)(x[j + 16] * id + 8.5f));
            y[2 + j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void dequantize_q4_0_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += 18) {
        const float d = get_f16(y);
        for (int j = 0; j < 16; ++j) {
            x[j] = ((y[2 + j] & 0x0F) - 8) * d;
            x[j + 16] = ((y[2 + j] >> 4) - 8) * d;
        }
    }
}

/*-*** Q4_1: d fp16 | m fp16 | qs u8[16] ***/

static void quantize_q4_1_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    if (qw) {                                    /* quantize_row_q4_1_impl */
        const float sigma2 = row_sigma2(x, n);
        float w[QK], min;
        uint8_t L[QK], Laux[QK];
        for (int64_t b = 0; b < n / QK; b++, x += QK, qw += QK, y += 20) {
            imatrix_weights(w, x, qw, QK, sigma2);
            float d = make_qkx_quants(QK, 15, x, w, L, &min, Laux, -0.9f, 0.05f, 36, 0, 1);
            put_f16(y, d);
            put_f16(y + 2, -min);
            for (int j = 0; j < 16; ++j)
                y[4 + j] = (uint8_t)(L[j] | L[j + 16] << 4);
        }
        return;
    }
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += 20) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / ((1 << 4) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        put_f16(y, d);
        put_f16(y + 2, min);
        for (int j = 0; j < 16; ++j) {
            const uint8_t q0 = (uint8_t)MIN(15, (int8_t)((x[j] - min) * id + 0.5f));
            const uint8_t q1 = (uint8_t)MIN(15, (int8_t)((x[j + 16] - min) * id + 0.5f));
            y[4 + j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void dequantize_q4_1_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += 20) {
        const float d = get_f16(y), m = get_f16(y + 2);
        for (int j = 0; j < 16; ++j) {
            x[j] = (y[4 + j] & 0x0F) * d + m;
            x[j + 16] = (y[4 + j] >> 4) * d + m;
        }
    }
}

/*-*** Q5_0: d fp16 | qh u32 | qs u8[16] ***/

static void quantize_q5_0_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    const float sigma2 = qw ? row_sigma2(x, n) : 0;
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += 22) {
        uint8_t q[QK];
        if (qw) {                                /* quantize_row_q5_0_impl */
            float w[QK];
            int8_t L[QK];
            imatrix_weights(w, x, qw, QK, sigma2);
            qw += QK;
            put_f16(y, make_qx_quants(QK, 16, x, L, 1, w));
            for (int j = 0; j < QK; ++j)
                q[j] = (uint8_t)L[j];
        } else {
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < QK; j++)
                if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
            const float d = max / -16;
            const float id = d ? 1.0f / d : 0.0f;
            put_f16(y, d);
            for (int j = 0; j < QK; ++j)
                q[j] = (uint8_t)MIN(31, (int8_t)(x[j] * id + 16.5f));
        }
        put_qh5(y + 2, q);
        for (int j = 0; j < 16; ++j)
            y[6 + j] = (uint8_t)((q[j] & 0x0F) | (q[j + 16] & 0x0F) << 4);
    }
}

static uint32_t get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void dequantize_q5_0_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += 22) {
        const float d = get_f16(y);
        const uint32_t qh = get_u32le(y + 2);
        for (int j = 0; j < 16; ++j) {
            const int x0 = ((y[6 + j] & 0x0F) | ((qh >> j) & 1) << 4) - 16;
            const int x1 = ((y[6 + j] >> 4) | ((qh >> (j + 16)) & 1) << 4) - 16;
            x[j] = x0 * d;
            x[j + 16] = x1 * d;
        }
    }
}

/*-*** Q5_1: d fp16 | m fp16 | qh u32 | qs u8[16] ***/

static void quantize_q5_1_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    const float sigma2 = qw ? row_sigma2(x, n) : 0;
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += 24) {
        uint8_t q[QK];
        if (qw) {                                /* quantize_row_q5_1_impl */
            float w[QK], min;
            uint8_t Laux[QK];
            imatrix_weights(w, x, qw, QK, sigma2);
            qw += QK;
            float d = make_qkx_quants(QK, 31, x, w, q, &min, Laux, -0.9f, 0.05f, 36, 0, 1);
            put_f16(y, d);
            put_f16(y + 2, -min);
        } else {
            float min = FLT_MAX, max = -FLT_MAX;
            for (int j = 0; j < QK; j++) {
                if (x[j] < min) min = x[j];
                if (x[j] > max) max = x[j];
            }
            const float d = (max - min) / ((1 << 5) - 1);
            const float id = d ? 1.0f / d : 0.0f;
            put_f16(y, d);
            put_f16(y + 2, min);
            for (int j = 0; j < QK; ++j)         /* no clamp, as in ggml */
                q[j] = (uint8_t)((x[j] - min) * id + 0.5f);
        }
        put_qh5(y + 4, q);
        for (int j = 0; j < 16; ++j)
            y[8 + j] = (uint8_t)((q[j] & 0x0F) | (q[j + 16] & 0x0F) << 4);
    }
}

static void dequantize_q5_1_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK; b++, x += QK, y += 24) {
        const float d = get_f16(y), m = get_f16(y + 2);
        const uint32_t qh = get_u32le(y + 4);
        for (int j = 0; j < 16; ++j) {
            const int x0 = (y[8 + j] & 0x0F) | ((qh >> j) & 1) << 4;
            const int x1 = (y[8 + j] >> 4) | ((qh >> (j + 16)) & 1) << 4;
            x[j] = x0 * d + m;
            x[j + 16] = x1 * d + m;
        }
    }
}

/*-*** K-quant packing helpers ***/

/* 2-bit levels L[256] into qs[64]: qs[c/4 + l] = L[c+l] | L[c+l+32]<<2 | … (Q2_K, Q3_K). */
static void pack_2bit(uint8_t *qs, const uint8_t *L)
{
    for (int c = 0; c < QK_K; c += 128)
        for (int l = 0; l < 32; ++l)
            qs[c / 4 + l] = (uint8_t)(L[c + l] | L[c + l + 32] << 2 | L[c + l + 64] << 4 | L[c + l + 96] << 6);
}

/* Eight 6-bit scales and mins into 12 bytes (Q4_K, Q5_K). */
static void pack_scale_min_k4(uint8_t *s, const uint8_t *ls, const uint8_t *lm)
{
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 0xF) | (lm[j] & 0xF) << 4);
            s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            s[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

static void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | (q[j - 4] >> 6) << 4);
        *m = (uint8_t)((q[j + 4] >> 4) | (q[j] >> 6) << 4);
    }
}

/* Requantize with the fp16-rounded d/dmin: L = clamp(nearest((x+dm)/dl), 0, nmax).
 * Sub-blocks whose decoded scale is 0 keep their first-pass levels. */
static void requant_k4(const float *x, uint8_t *L, const uint8_t *blk, int nmax)
{
    const float d = get_f16(blk), dmin = get_f16(blk + 2);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        get_scale_min_k4(j, blk + 4, &sc, &m);
        const float dl = d * sc;
        if (!dl)
            continue;
        const float dm = dmin * m;
        for (int ii = 0; ii < 32; ++ii)
            L[32 * j + ii] = (uint8_t)MAX(0, MIN(nmax, nearest_int((x[32 * j + ii] + dm) / dl)));
    }
}

/*-*** Q2_K: scales u8[16] | qs u8[64] | d fp16 | dmin fp16 ***/

static void q2_k_requant_pack(const float *x, uint8_t *y, uint8_t *L)
{
    const float dm = get_f16(y + 80), mm = get_f16(y + 82);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = dm * (y[j] & 0xF);
        if (!d)
            continue;
        const float m = mm * (y[j] >> 4);
        for (int ii = 0; ii < 16; ++ii)
            L[16 * j + ii] = (uint8_t)MAX(0, MIN(3, nearest_int((x[16 * j + ii] + m) / d)));
    }
    pack_2bit(y + 16, L);
}

static void quantize_q2_k_block(const float *x, uint8_t *y)
{
    uint8_t L[QK_K], Laux[16];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16];
    const float q4scale = 15.f;
    float max_scale = 0, max_min = 0;
    /* per sub-block scale/min with weights |x|, mean absolute error */
    for (int j = 0; j < QK_K / 16; ++j) {
        for (int l = 0; l < 16; ++l)
            weights[l] = fabsf(x[16 * j + l]);
        scales[j] = make_qkx_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                    -0.5f, 0.1f, 15, 1, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    /* 4-bit scales and mins against the super-block maxima */
    if (max_scale > 0) {
        float iscale = q4scale / max_scale;
        for (int j = 0; j < QK_K / 16; ++j)
            y[j] = (uint8_t)nearest_int(iscale * scales[j]);
        put_f16(y + 80, max_scale / q4scale);
    } else {
        memset(y, 0, QK_K / 16);
        put_f16(y + 80, 0.f);
    }
    if (max_min > 0) {
        float iscale = q4scale / max_min;
        for (int j = 0; j < QK_K / 16; ++j)
            y[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
        put_f16(y + 82, max_min / q4scale);
    } else {
        put_f16(y + 82, 0.f);
    }
    q2_k_requant_pack(x, y, L);
}

/* quantize_row_q2_K_impl: σ² over the 256-block, kx3 sub-blocks, qp super scales. */
static void quantize_q2_k_block_w(const float *x, uint8_t *y, const float *qw)
{
    uint8_t L[QK_K], Laux[16], Ls[QK_K / 16], Lm[QK_K / 16];
    float mins[QK_K / 16], scales[QK_K / 16], sw[QK_K / 16], weight[16];
    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j)
        sumx2 += x[j] * x[j];
    const float sigma2 = sumx2 / QK_K;
    for (int j = 0; j < QK_K / 16; ++j) {
        imatrix_weights(weight, x + 16 * j, qw + 16 * j, 16, sigma2);
        sw[j] = 0;
        for (int l = 0; l < 16; ++l)
            sw[j] += weight[l];
        scales[j] = make_qkx_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux,
                                    -0.9f, 0.05f, 36, 0, 1);
    }
    put_f16(y + 80, make_qp_quants(QK_K / 16, 15, scales, Ls, sw));
    put_f16(y + 82, make_qp_quants(QK_K / 16, 15, mins, Lm, sw));
    for (int j = 0; j < QK_K / 16; ++j)
        y[j] = (uint8_t)(Ls[j] | Lm[j] << 4);
    q2_k_requant_pack(x, y, L);
}

static void quantize_q2_k_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K, y += 84) {
        if (qw)
            quantize_q2_k_block_w(x, y, qw + b * QK_K);
        else
            quantize_q2_k_block(x, y);
    }
}

static void dequantize_q2_k_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK_K; b++, y += 84) {
        const float d = get_f16(y + 80), min = get_f16(y + 82);
        const uint8_t *q = y + 16;
        int is = 0;
        for (int c = 0; c < QK_K; c += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; ++half) {
                    const uint8_t sc = y[is++];
                    const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                    for (int l = 0; l < 16; ++l)
                        *x++ = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
                }
            }
        }
    }
}

/*-*** Q3_K: hmask u8[32] | qs u8[64] | scales u8[12] | d fp16 ***/

/* 6-bit scale j of the 12-byte Q3_K layout: 4 low bits, then 2 high bits. */
static void q3_k_put_scale(uint8_t *s, int j, int l)
{
    if (j < 8)
        s[j] = (uint8_t)(l & 0xF);
    else
        s[j - 8] |= (uint8_t)((l & 0xF) << 4);
    s[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
}

static int q3_k_get_scale(const uint8_t *s, int j)
{
    int sc = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    return (sc | ((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32;
}

/* Requantize with the fp16 d, split the high bit into hmask, pack 2 bits. */
static void q3_k_requant_pack(const float *x, uint8_t *y, int8_t *L)
{
    const float d_all = get_f16(y + 108);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = d_all * q3_k_get_scale(y + 96, j);
        if (!d)
            continue;
        for (int ii = 0; ii < 16; ++ii)
            L[16 * j + ii] = (int8_t)(MAX(-4, MIN(3, nearest_int(x[16 * j + ii] / d))) + 4);
    }
    uint8_t *hmask = y;
    memset(hmask, 0, QK_K / 8);
    for (int e = 0; e < QK_K; ++e) {            /* bit e/32 of hmask[e%32] */
        if (L[e] > 3) {
            hmask[e % 32] |= (uint8_t)(1u << (e / 32));
            L[e] = (int8_t)(L[e] - 4);
        }
    }
    pack_2bit(y + 32, (const uint8_t *)L);
}

static void quantize_q3_k_block(const float *x, uint8_t *y)
{
    int8_t L[QK_K];
    float scales[QK_K / 16];
    float max_scale = 0, amax = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
        scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j, 1);
        if (fabsf(scales[j]) > amax) { amax = fabsf(scales[j]); max_scale = scales[j]; }
    }
    memset(y + 96, 0, 12);
    if (max_scale) {
        float iscale = -32.f / max_scale;
        for (int j = 0; j < QK_K / 16; ++j) {
            int8_t l = (int8_t)nearest_int(iscale * scales[j]);
            q3_k_put_scale(y + 96, j, MAX(-32, MIN(31, l)) + 32);
        }
        put_f16(y + 108, 1 / iscale);
    } else {
        put_f16(y + 108, 0.f);
    }
    q3_k_requant_pack(x, y, L);
}

/* quantize_row_q3_K_impl: σ² = 2Σx²/256, weighted qx sub-scales, qx super scale. */
static void quantize_q3_k_block_w(const float *x, uint8_t *y, const float *qw)
{
    int8_t L[QK_K], Ls[QK_K / 16];
    float scales[QK_K / 16], weight[16], sw[QK_K / 16];
    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j)
        sumx2 += x[j] * x[j];
    const float sigma2 = 2 * sumx2 / QK_K;
    for (int j = 0; j < QK_K / 16; ++j) {
        imatrix_weights(weight, x + 16 * j, qw + 16 * j, 16, sigma2);
        float sumw = 0;
        for (int l = 0; l < 16; ++l)
            sumw += weight[l];
        sw[j] = sumw;
        scales[j] = make_qx_quants(16, 4, x + 16 * j, L + 16 * j, 1, weight);
    }
    memset(y + 96, 0, 12);
    float d_block = make_qx_quants(QK_K / 16, 32, scales, Ls, 1, sw);
    for (int j = 0; j < QK_K / 16; ++j)
        q3_k_put_scale(y + 96, j, Ls[j]);
    put_f16(y + 108, d_block);
    q3_k_requant_pack(x, y, L);
}

static void quantize_q3_k_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K, y += 110) {
        if (qw)
            quantize_q3_k_block_w(x, y, qw + b * QK_K);
        else
            quantize_q3_k_block(x, y);
    }
}

static void dequantize_q3_k_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK_K; b++, y += 110) {
        const float d_all = get_f16(y + 108);
        const uint8_t *q = y + 32, *hm = y;
        int is = 0;
        uint8_t m = 1;
        for (int c = 0; c < QK_K; c += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, m = (uint8_t)(m << 1)) {
                for (int half = 0; half < 2; ++half) {
                    const float dl = d_all * q3_k_get_scale(y + 96, is++);
                    for (int l = 0; l < 16; ++l) {
                        const int k = l + 16 * half;
                        *x++ = dl * (((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4));
                    }
                }
            }
        }
    }
}

/*-*** Q4_K: d | dmin | scales u8[12] | qs u8[128]; Q5_K adds qh u8[32] ***/

/* First pass of Q4_K/Q5_K for one 256-block: levels L and the 12 scale bytes
 * plus d/dmin written into blk[0..15]. nmax 15 or 31. */
static void quantize_k4_scales(const float *x, uint8_t *blk, uint8_t *L, int nmax, const float *qw)
{
    uint8_t Laux[32], Ls[8], Lm[8];
    float weights[32], mins[8], scales[8];
    memset(blk + 4, 0, 12);
    if (qw) {                                   /* quantize_row_q{4,5}_K_impl */
        float sum_x2 = 0, sw[8];
        for (int l = 0; l < QK_K; ++l)
            sum_x2 += x[l] * x[l];
        const float sigma2 = 2 * sum_x2 / QK_K;
        for (int j = 0; j < 8; ++j) {
            imatrix_weights(weights, x + 32 * j, qw + 32 * j, 32, sigma2);
            float sumw = 0;
            for (int l = 0; l < 32; ++l)
                sumw += weights[l];
            sw[j] = sumw;
            scales[j] = make_qkx_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux,
                                        -0.9f, 0.05f, 36, 0, 1);
        }
        float d_block = make_qp_quants(8, 63, scales, Ls, sw);
        float m_block = make_qp_quants(8, 63, mins, Lm, sw);
        pack_scale_min_k4(blk + 4, Ls, Lm);
        put_f16(blk, d_block);
        put_f16(blk + 2, m_block);
        return;
    }
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {               /* weights av_x + |x| */
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l)
            weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = nmax == 15
            ? make_qkx_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20, 0, 0)
            : make_qkx_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 0, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        Ls[j] = MIN(63, ls);
        Lm[j] = MIN(63, lm);
    }
    pack_scale_min_k4(blk + 4, Ls, Lm);
    put_f16(blk, max_scale / 63.f);
    put_f16(blk + 2, max_min / 63.f);
}

static void quantize_q4_k_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    uint8_t L[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K, y += 144) {
        quantize_k4_scales(x, y, L, 15, qw ? qw + b * QK_K : NULL);
        requant_k4(x, L, y, 15);
        uint8_t *q = y + 16;
        for (int c = 0; c < QK_K; c += 64, q += 32)
            for (int l = 0; l < 32; ++l)
                q[l] = (uint8_t)(L[c + l] | L[c + l + 32] << 4);
    }
}

static void dequantize_q4_k_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK_K; b++, y += 144) {
        const float d = get_f16(y), min = get_f16(y + 2);
        const uint8_t *q = y + 16;
        for (int c = 0, is = 0; c < QK_K; c += 64, q += 32, is += 2) {
            uint8_t sc, m;
            get_scale_min_k4(is, y + 4, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, y + 4, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *x++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *x++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

static void quantize_q5_k_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    uint8_t L[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K, y += 176) {
        quantize_k4_scales(x, y, L, 31, qw ? qw + b * QK_K : NULL);
        requant_k4(x, L, y, 31);
        uint8_t *qh = y + 16, *ql = y + 48;
        memset(qh, 0, QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int c = 0; c < QK_K; c += 64, ql += 32) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[c + j], l2 = L[c + j + 32];
                if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
                if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
                ql[j] = (uint8_t)(l1 | l2 << 4);
            }
            m1 = (uint8_t)(m1 << 2);
            m2 = (uint8_t)(m2 << 2);
        }
    }
}

static void dequantize_q5_k_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK_K; b++, y += 176) {
        const float d = get_f16(y), min = get_f16(y + 2);
        const uint8_t *qh = y + 16, *ql = y + 48;
        uint8_t u1 = 1, u2 = 2;
        for (int c = 0, is = 0; c < QK_K; c += 64, ql += 32, is += 2) {
            uint8_t sc, m;
            get_scale_min_k4(is, y + 4, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, y + 4, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *x++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *x++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            u1 = (uint8_t)(u1 << 2);
            u2 = (uint8_t)(u2 << 2);
        }
    }
}

/*-*** Q6_K: ql u8[128] | qh u8[64] | scales int8[16] | d fp16 ***/

static void quantize_q6_k_block(const float *x, uint8_t *y, const float *qw)
{
    int8_t L[QK_K];
    float scales[QK_K / 16];
    float max_scale = 0, max_abs_scale = 0;
    /* per sub-block signed scale; the imatrix (raw, no σ term) weights it */
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1, qw ? qw + 16 * ib : NULL);
        if (fabsf(scales[ib]) > max_abs_scale) { max_abs_scale = fabsf(scales[ib]); max_scale = scales[ib]; }
    }
    if (max_abs_scale < GROUP_MAX_EPS) {
        memset(y, 0, 210);
        return;
    }
    float iscale = -128.f / max_scale;
    put_f16(y + 208, 1 / iscale);
    int8_t *sc = (int8_t *)(y + 192);
    for (int ib = 0; ib < QK_K / 16; ++ib)
        sc[ib] = (int8_t)MIN(127, nearest_int(iscale * scales[ib]));
    /* requantize with the stored scales */
    const float d_all = get_f16(y + 208);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = d_all * sc[j];
        if (!d)
            continue;
        for (int ii = 0; ii < 16; ++ii)
            L[16 * j + ii] = (int8_t)(MAX(-32, MIN(31, nearest_int(x[16 * j + ii] / d))) + 32);
    }
    uint8_t *ql = y, *qh = y + 128;
    for (int c = 0; c < QK_K; c += 128, ql += 64, qh += 32) {
        for (int l = 0; l < 32; ++l) {
            const int a = L[c + l], b = L[c + l + 32], cc = L[c + l + 64], e = L[c + l + 96];
            ql[l] = (uint8_t)((a & 0xF) | (cc & 0xF) << 4);
            ql[l + 32] = (uint8_t)((b & 0xF) | (e & 0xF) << 4);
            qh[l] = (uint8_t)((a >> 4) | (b >> 4) << 2 | (cc >> 4) << 4 | (e >> 4) << 6);
        }
    }
}

static void quantize_q6_k_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K, y += 210)
        quantize_q6_k_block(x, y, qw ? qw + b * QK_K : NULL);
}

static void dequantize_q6_k_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK_K; b++, y += 210) {
        const float d = get_f16(y + 208);
        const uint8_t *ql = y, *qh = y + 128;
        const int8_t *sc = (const int8_t *)(y + 192);
        for (int c = 0; c < QK_K; c += 128, x += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32;
                const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                x[l] = d * sc[is] * q1;
                x[l + 32] = d * sc[is + 2] * q2;
                x[l + 64] = d * sc[is + 4] * q3;
                x[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

/*-*** Float types ***/

static void quantize_f32_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    (void)qw;
    memcpy(y, x, (size_t)n * 4);
}

static void quantize_f16_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    (void)qw;
    for (int64_t i = 0; i < n; i++)
        put_f16(y + 2 * i, x[i]);
}

static void quantize_bf16_ref(const float *x, uint8_t *y, int64_t n, const float *qw)
{
    (void)qw;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = bf16_from_f32(x[i]);
        y[2 * i] = (uint8_t)h;
        y[2 * i + 1] = (uint8_t)(h >> 8);
    }
}

static void dequantize_f32_ref(const uint8_t *y, float *x, int64_t n) { memcpy(x, y, (size_t)n * 4); }
static void dequantize_f16_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = get_f16(y + 2 * i);
}
static void dequantize_bf16_ref(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = bf16_to_f32((uint16_t)(y[2 * i] | y[2 * i + 1] << 8));
}

/*-*** Dispatch tables ***/

typedef void (*quant_fn)(const float *x, uint8_t *y, int64_t n, const float *qw);
typedef void (*dequant_fn)(const uint8_t *y, float *x, int64_t n);

static const struct { quant_fn q; dequant_fn dq; } kernels[GGML_TYPE_COUNT] = {
    [GGML_T_F32]  = { quantize_f32_ref,  dequantize_f32_ref },
    [GGML_T_F16]  = { quantize_f16_ref,  dequantize_f16_ref },
    [GGML_T_BF16] = { quantize_bf16_ref, dequantize_bf16_ref },
    [GGML_T_Q4_0] = { quantize_q4_0_ref, dequantize_q4_0_ref },
    [GGML_T_Q4_1] = { quantize_q4_1_ref, dequantize_q4_1_ref },
    [GGML_T_Q5_0] = { quantize_q5_0_ref, dequantize_q5_0_ref },
    [GGML_T_Q5_1] = { quantize_q5_1_ref, dequantize_q5_1_ref },
    [GGML_T_Q8_0] = { quantize_q8_0_ref, dequantize_q8_0_ref },
    [GGML_T_Q2_K] = { quantize_q2_k_ref, dequantize_q2_k_ref },
    [GGML_T_Q3_K] = { quantize_q3_k_ref, dequantize_q3_k_ref },
    [GGML_T_Q4_K] = { quantize_q4_k_ref, dequantize_q4_k_ref },
    [GGML_T_Q5_K] = { quantize_q5_k_ref, dequantize_q5_k_ref },
    [GGML_T_Q6_K] = { quantize_q6_k_ref, dequantize_q6_k_ref },
};

static int force_ref;

void ggml_quants_force_ref(int on) { force_ref = on; }

static int use_simd(void) { return !force_ref && ggml_quants_have_avx2(); }

size_t ggml_quantize_row_ref(int type, const float *x, void *dst, int64_t n, const float *quant_weights)
{
    size_t bytes = ggml_row_size(type, n);
    if (!bytes || !kernels[type].q)
        return 0;
    kernels[type].q(x, dst, n, quant_weights);
    return bytes;
}

size_t ggml_quantize_row(int type, const float *x, void *dst, int64_t n, const float *quant_weights)
{
    size_t bytes = ggml_row_size(type, n);
    if (bytes && use_simd()) {
        if (type == GGML_T_Q8_0) {               /* Q8_0 ignores the imatrix */
            ggml_quantize_q8_0_avx2(x, dst, n);
            return bytes;
        }
        if (type == GGML_T_Q4_0 && !quant_weights) {
            ggml_quantize_q4_0_avx2(x, dst, n);
            return bytes;
        }
    }
    return ggml_quantize_row_ref(type, x, dst, n, quant_weights);
}

size_t ggml_quantize_rows(int type, const float *x, void *dst, int64_t nrows, int64_t n_per_row,
                          const float *quant_weights)
{
    size_t row = ggml_row_size(type, n_per_row), total = 0;
    if (!row || !kernels[type].q || nrows < 0)
        return 0;
    for (int64_t r = 0; r < nrows; r++)
        total += ggml_quantize_row(type, x + r * n_per_row, (uint8_t *)dst + r * row, n_per_row,
                                   quant_weights);
    return total;
}

int ggml_dequantize_row_ref(int type, const void *src, float *dst, int64_t n)
{
    if (n && !ggml_row_size(type, n))
        return -1;
    if (!ggml_qtype_traits(type) || !kernels[type].dq)
        return -1;
    kernels[type].dq(src, dst, n);
    return 0;
}

int ggml_dequantize_row(int type, const void *src, float *dst, int64_t n)
{
    if (n > 0 && ggml_row_size(type, n) && use_simd()) {
        if (type == GGML_T_Q8_0) {
            ggml_dequantize_q8_0_avx2(src, dst, n);
            return 0;
        }
        if (type == GGML_T_Q4_0) {
            ggml_dequantize_q4_0_avx2(src, dst, n);
            return 0;
        }
    }
    return ggml_dequantize_row_ref(type, src, dst, n);
}
