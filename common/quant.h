/* quant — weight quantization grids: integer (GPTQ quant.py convention), NF4
 * and FP8; round-to-nearest (RTN) over row blocks; dequantization.
 *
 * Owns: the grid descriptor and its JSON form (the "quant" attr of a qstream
 * tensor, docs/qstream.md), the per-group parameter search (min/max, MSE
 * clipping, importance-weighted), the scalar quantize/dequantize kernels, and
 * a deterministic parallel-for over fixed blocks that gptq.c reuses.
 *
 * How to think of it: a quantized matrix W [rows = d_out, cols = d_in] is
 * stored as parts, in order:
 *   "codes"  u8  [rows, cols]     one unsigned code per weight, unpacked
 *   "scales" f32 [rows, ngroups]  (fp8: [rows, 1] per row, [1] per tensor)
 *   "zeros"  f32 [rows, ngroups]  integer-valued zero points (scheme "int")
 *   "g_idx"  i32 [cols]           only with act_order and dynamic groups
 * and w[r][c] = scales[r][g(c)] * (codes[r][c] - zeros[r][g(c)]), with
 * g(c) = g_idx ? g_idx[c] : (group < 0 ? 0 : c / group).
 * NF4: w = scales[r][g] * NF4[codes] (scales = group absmax, no zeros).
 * FP8: w = scales[r or 0] * f8_to_f32(codes).
 *
 * Integer parameters follow IST-DASLab/gptq quant.py (find_params): xmin =
 * min(min w, 0), xmax = max(max w, 0); sym: xmax = max(|xmin|, xmax), xmin =
 * -xmax where xmin < 0, zero = (maxq+1)/2; asym: zero = round(-xmin/scale);
 * both-zero rows use [-1, 1]; scale = (xmax-xmin)/maxq; round = half to even
 * (nearbyintf in the default FE_TONEAREST mode), all in float32.
 *
 * Errors: functions returning int give 0 / -1; the *errp variants set a
 * malloc'd one-line message (caller frees). Nothing here prints or exits.
 */
#ifndef QPIPE_QUANT_H
#define QPIPE_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "qstream.h"

typedef enum { QUANT_INT = 0, QUANT_NF4, QUANT_FP8, QUANT_GGUF } quant_scheme;

/* The grid descriptor, i.e. attrs.quant of a quantized tensor. */
typedef struct {
    quant_scheme scheme;
    int   bits;            /* int: 2..8; nf4: 4; fp8: 8 */
    int   group;           /* >0 columns per group; -1 whole row; fp8 also 0 = per tensor */
    int   sym;             /* int only */
    int   act_order;       /* int only: columns were visited in act order */
    int   static_groups;   /* informational (not in JSON: g_idx absent says it) */
    int   fp8_format;      /* DT_F8_E4M3 or DT_F8_E5M2 */
    char  method[8];       /* "gptq" | "rtn" */
    char  gguf_type[8];    /* scheme gguf: "q4_0", ... */
} quant_grid;

/* Defaults: int, 4 bits, group 128, asym, rtn. Can't fail. */
void    quant_grid_default(quant_grid *g);
/* Set scheme (and bits/format) from a CLI name: "int", "nf4", "fp8_e4m3",
 * "fp8_e5m2", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0". -1 if unknown. */
int     quant_grid_set_scheme(quant_grid *g, const char *name);
/* Check bits/group consistency for a matrix of `cols` columns (cols may be 0
 * to skip the shape checks). -1 + *errp. */
int     quant_grid_check(const quant_grid *g, int64_t cols, char **errp);
/* The "quant" object (new reference). NULL on OOM. */
json_t *quant_grid_to_json(const quant_grid *g);
/* Parse a "quant" object. -1 + *errp on a missing or bad field. */
int     quant_grid_from_json(const json_t *q, quant_grid *g, char **errp);
/* Number of scale groups per row for `cols` columns (1 when group <= 0). */
int64_t quant_ngroups(const quant_grid *g, int64_t cols);

/*-*** Parameter search options ***/

typedef enum { QSCALE_MINMAX = 0, QSCALE_MSE } quant_scale_mode;

typedef struct {
    quant_scale_mode mode;
    float norm;            /* MSE search: error exponent (quant.py 2.4) */
    int   grid;            /* MSE search: shrink steps p = 1 - i/grid (100) */
    float maxshrink;       /* MSE search: i < maxshrink*grid (0.8) */
    /* Importance-weighted error: per-column weights [cols] of the whole
     * matrix (e.g. stats x2_mean, like llama.cpp's imatrix) or NULL. When set,
     * the MSE search minimises sum_c imp[c] |w - q|^norm (mode forced to MSE). */
    const float *importance;
    int f16_scales;        /* round scales to f16 before deriving zeros and codes */
} quant_scale_opts;

void quant_scale_opts_default(quant_scale_opts *o);   /* min/max, 2.4, 100, 0.8, NULL */

/*-*** Scalar kernels (integer grid) ***/

/* Parameters for one row's slice x[0..n) (stride 1); imp = the slice's
 * importance or NULL (non-NULL imp, or o->mode MSE, runs the shrink search;
 * o NULL = plain min/max). Writes *scale and *zero. Can't fail. */
void  quant_int_params(const float *x, int64_t n, int bits, int sym,
                       const quant_scale_opts *o, const float *imp,
                       float *scale, float *zero);
/* code = clamp(round(x/scale) + zero, 0, maxq). Can't fail. */
static inline int quant_int_code(float x, float scale, float zero, int maxq)
{
    float q = __builtin_nearbyintf(x / scale) + zero;
    if (q < 0.0f) q = 0.0f;
    if (q > (float)maxq) q = (float)maxq;
    return (int)q;
}
static inline float quant_int_value(int code, float scale, float zero)
{
    return scale * ((float)code - zero);
}

/* NF4 (QLoRA, Dettmers et al. 2023; bitsandbytes create_normal_map table). */
extern const float quant_nf4_table[16];
int   quant_nf4_code(float x_over_absmax);            /* nearest level, ties to the lower */

/* FP8 */
float quant_fp8_max(int fp8_format);                  /* 448 (e4m3fn) or 57344 (e5m2) */
uint8_t quant_fp8_encode(int fp8_format, float x);
float quant_fp8_decode(int fp8_format, uint8_t code);

/*-*** Row blocks ***/

/* RTN-quantize rows [0, nrows) of a row block (the caller offsets pointers):
 *   w      f32 [nrows, cols]      row-major input
 *   codes  u8  [nrows, cols]      out
 *   scales f32 [nrows, ngroups]   out (fp8 per-tensor: not written, see below)
 *   zeros  f32 [nrows, ngroups]   out, scheme int only (else may be NULL)
 *   deq    f32 [nrows, cols]      out, dequantized values, may be NULL
 * Groups are consecutive columns from column 0. fp8 with group 0 (per
 * tensor) uses *tensor_scale (compute it with quant_fp8_tensor_scale); other
 * grids ignore it. Scheme gguf is not handled here (-1). Returns 0 / -1. */
int   quant_rtn_rows(const quant_grid *g, const quant_scale_opts *o,
                     const float *w, int64_t nrows, int64_t cols,
                     uint8_t *codes, float *scales, float *zeros, float *deq,
                     const float *tensor_scale);
/* Per-tensor FP8 scale absmax/fmax (1 when all zero). Can't fail. */
float quant_fp8_tensor_scale(int fp8_format, const float *w, size_t n);

/* Whole-matrix RTN with `threads` workers over fixed 64-row blocks (result
 * independent of the thread count). Same buffers as quant_rtn_rows for all
 * rows; fp8 per tensor writes scales[0]. -1 + *errp. */
int   quant_rtn(const quant_grid *g, const quant_scale_opts *o,
                const float *w, int64_t rows, int64_t cols,
                uint8_t *codes, float *scales, float *zeros, float *deq,
                int threads, char **errp);

/*-*** Dequantization ***/

/* Check that t is a quantized tensor we can dequantize (attrs.quant scheme
 * int/nf4/fp8, parts present with the right dtypes and shapes). NULL when
 * fine, else a static message. */
const char *quant_check_tensor(const qs_tensor *t);
/* parts[i] points at the bytes of t->parts[i]. out: f32 [rows*cols].
 * Returns 0, or -1 if quant_check_tensor() refuses t. */
int   quant_dequantize(const qs_tensor *t, const void *const parts[], float *out);

/*-*** Deterministic parallel-for ***/

/* Run fn(ctx, b) for b in [0, nblocks) on up to `threads` pthreads (blocks
 * handed out in order by an atomic counter, so a block's result cannot depend
 * on which thread ran it). fn returns 0 or -1; the first failing block index
 * is returned in *failed (or -1). Returns 0 when all blocks succeeded. */
int   quant_parallel_for(int64_t nblocks, int threads,
                         int (*fn)(void *ctx, int64_t block), void *ctx,
                         int64_t *failed);

#endif
