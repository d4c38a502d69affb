/* gptq — GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization
 * for Generative Pre-trained Transformers", ICLR 2023), following the authors'
 * reference IST-DASLab/gptq gptq.py GPTQ.fasterquant @ 2d65066e.
 *
 * Owns: the Hessian-inverse preparation (dead columns, act-order permutation,
 * damping, upper Cholesky factor of H^-1), the lazy block-update engine that
 * walks columns and propagates each column's error through Hinv, the GPTQ
 * column quantizer on integer grids (and the GGUF Q4_0/Q4_1/Q5_0/Q5_1/Q8_0
 * block grids), and the proxy loss tr((W-Q) H (W-Q)^T).
 *
 * How to think of it: rows (output channels) are independent given H, so a
 * matrix is cut into fixed blocks of GPTQ_ROW_BLOCK rows and each block is
 * processed by one thread from start to end (OpenBLAS itself is set to one
 * thread). Every block has the same shape whatever the thread count, so the
 * result is byte-identical for any number of threads.
 *
 * The engine (gptq_hinv_*, gptq_update_rows) does not know about grids: a
 * client supplies a column callback that turns the current column values into
 * their compressed values (quantize, prune, or both) — SparseGPT reuses it.
 *
 * Errors: -1 with a malloc'd one-line message in *errp (H not positive
 * definite after damping, bad options, out of memory). Never prints or exits.
 */
#ifndef QPIPE_GPTQ_H
#define QPIPE_GPTQ_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

#define GPTQ_ROW_BLOCK 32   /* rows per task; fixed so results ignore the thread count */

/*-*** Hessian inverse ***/

typedef struct {
    int64_t  n;          /* columns (d_in) */
    uint8_t *dead;       /* [n] original order: H_jj == 0 (weights forced to 0) */
    int64_t *perm;       /* [n] processing position -> original column */
    float   *hinv;       /* [n, n] upper Cholesky factor U of (damped H)^-1 in
                          * processing order, Hinv = U^T U; strictly lower part 0 */
} gptq_hinv;

/* From H [n, n] (any positive scaling of X^T X, f32, row-major): dead columns
 * get H_jj = 1; act_order sorts columns by descending diag(H) (stable: ties
 * keep the lower index first); damping adds damp * mean(diag H) to the
 * diagonal; then Cholesky (LAPACKE_dpotrf), inverse (dpotri) and the upper
 * factor of the inverse, all in double. -1 + *errp if H is not positive
 * definite or on OOM (hv is then empty). */
int  gptq_hinv_prepare(const float *h, int64_t n, double damp, int act_order,
                       gptq_hinv *hv, char **errp);
void gptq_hinv_free(gptq_hinv *hv);

/*-*** Block-update engine ***/

/* A column callback: for processing column i, w[r * ldw] (r < nrows) are the
 * current (error-updated) values of the row block's rows; write the
 * compressed values into q[r]. W [nrows, n] is the row block's global matrix
 * in processing order: columns of the current column block have received the
 * lazy updates of earlier blocks only (what gptq.py's find_params reads).
 * `begin` (may be NULL) is called at each column block [i1, i2) with the
 * block copy W1 [nrows, i2-i1]. Return 0, or -1 to abort.
 * Contract relied on by SparseGPT's N:M path (prune.c): `w` points into that
 * block copy W1 at column i - i1 (ldw = its row stride), so w[r*ldw + k] for
 * i + k < i2 are the current values of the block's later columns. */
typedef struct {
    void *ctx;
    int (*begin)(void *ctx, int64_t r0, int64_t nrows, int64_t i1, int64_t i2,
                 const float *W1, const float *W);
    int (*column)(void *ctx, int64_t r0, int64_t nrows, int64_t i,
                  const float *w, int64_t ldw, const float *W, float *q);
} gptq_column_ops;

/* Run GPTQ's column loop over one row block: W [nrows, n] in processing order
 * (permuted, dead columns zeroed) is updated in place and ends up holding
 * the compressed values Q. block = lazy-update width (128). r0 is passed to
 * the callbacks (global index of the first row). 0, or -1 (OOM / callback). */
int  gptq_update_rows(const gptq_hinv *hv, int block, float *W, int64_t r0, int64_t nrows,
                      const gptq_column_ops *ops);

/*-*** GPTQ quantization ***/

typedef struct {
    quant_grid       grid;       /* scheme int: bits, group, sym, act_order, static_groups; or gguf
                                  * q4_0/q4_1/q5_0/q5_1/q8_0 (no act_order; block % 32 == 0): block
                                  * params from the current, error-updated weights of each 32 columns */
    quant_scale_opts scale;      /* min/max (default) or MSE search; importance ignored */
    int              block;      /* lazy block size, 128 */
    double           damp;       /* 0.01 */
    int              mask_zeros; /* weights exactly 0 on input stay exactly 0 */
    int              threads;    /* >= 1 */
} gptq_opts;

void gptq_opts_default(gptq_opts *o);    /* int 4-bit g128 asym, block 128, damp 0.01, 1 thread */

typedef struct {
    int64_t  rows, cols, ngroups;
    uint8_t *codes;    /* [rows, cols] original column order (gguf: block codes, q8_0 offset by 128) */
    float   *scales;   /* [rows, ngroups] (gguf: NULL, the scales live in blocks) */
    float   *zeros;    /* [rows, ngroups] (gguf: NULL) */
    int32_t *g_idx;    /* [cols] only with act_order and dynamic groups (group > 0), else NULL */
    float   *q;        /* [rows, cols] dequantized result */
    uint8_t *blocks;   /* gguf grids: [rows, row_bytes] exact ggml blocks, else NULL */
    size_t   row_bytes;
} gptq_result;

/* Quantize W [rows, cols] (f32 row-major) with H [cols, cols]. Allocates the
 * result arrays (free with gptq_result_free). -1 + *errp. */
int  gptq_quantize(const float *w, int64_t rows, int64_t cols, const float *h,
                   const gptq_opts *o, gptq_result *res, char **errp);
void gptq_result_free(gptq_result *res);

/* tr((W-Q) H (W-Q)^T) in double. Can't fail. */
double gptq_proxy_loss(const float *w, const float *q, const float *h, int64_t rows, int64_t cols);

#endif
