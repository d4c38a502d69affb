/* prune — choosing which weights of a linear layer to remove, and removing them:
 * magnitude, Wanda and SparseGPT masks (unstructured per row or per matrix,
 * semi-structured N:M), SparseGPT's weight update (optionally with joint
 * quantization), and the channel scores and row/column cuts of structured
 * pruning.
 *
 * Primary sources:
 *   Wanda: Sun et al., "A Simple and Effective Pruning Approach for Large
 *     Language Models", ICLR 2024; locuslab/wanda lib/prune.py @ 8e8fc87b.
 *   SparseGPT: Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be
 *     Accurately Pruned in One-Shot", ICML 2023; IST-DASLab/sparsegpt
 *     sparsegpt.py SparseGPT.fasterprune @ 147d2159.
 *   Structured scores: the "Wanda-sp" criterion (An et al., "Fluctuation-based
 *     Adaptive Structured Pruning for LLMs", AAAI 2024, §4): Wanda's metric
 *     summed over the weights of the output projection a channel feeds.
 *   (Digest: /work/shared/specs/algorithms.md §3, §4.)
 *
 * How to think of it: a weight W [rows = d_out, cols = d_in] is row-major f32.
 * Every score is compared within a *comparison group* and the lowest-scored
 * weights of each group become exact zeros:
 *   - unstructured, default: each output row (Wanda's choice for every method
 *     here); exactly prune_count(ratio, cols) zeros per row;
 *   - unstructured with per_layer: the whole matrix (magnitude, Wanda:
 *     prune_count(ratio, rows*cols) zeros in all); SparseGPT: each block of
 *     `block` columns over all rows, as the reference does;
 *   - N:M (nm_n of every nm_m consecutive inputs are kept — the Wanda /
 *     NVIDIA "N:M" reading; for 2:4 and 4:8 it equals the reference code's
 *     prune_n = N pruned): each run of M columns of each row, exactly M-N zeros.
 * Ties are broken by the lower column (then row) index, so masks are fully
 * deterministic. Scores: magnitude |W_ij|; Wanda |W_ij| * sqrt(x2_mean_j *
 * n_tokens) = |W_ij| * ||X_j||_2; SparseGPT W_ij^2 / [Hinv]_jj^2 with the
 * current (error-updated) weights, chosen at the start of each column block
 * (unstructured) or of each M-column run (N:M), then OBS updates through the
 * gptq.h engine (block 128, damping 0.01).
 *
 * Deviations from the references, on purpose: SparseGPT's unstructured mask
 * is per row by default (the reference compares a rows x 128 block; use
 * per_layer for that), and the count is exact (the reference prunes every
 * score <= the k-th, i.e. one more, plus ties). Statistics come from the
 * unpruned model (one qcal run), not re-collected layer by layer.
 *
 * Determinism: row blocks of fixed size (PRUNE_ROW_BLOCK, GPTQ_ROW_BLOCK for
 * SparseGPT) run on quant_parallel_for, so results are byte-identical for any
 * thread count. SparseGPT per_layer runs as one row block (one thread).
 *
 * Memory: magnitude/Wanda per row O(cols) scratch per thread (per_layer: one
 * double per weight); SparseGPT O(cols^2) for Hinv plus O(rows * block).
 *
 * Errors: functions returning int give 0 or -1 with a malloc'd one-line
 * message in *errp (caller frees; errp may be NULL). Nothing prints or exits.
 */
#ifndef QPIPE_PRUNE_H
#define QPIPE_PRUNE_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

#define PRUNE_ROW_BLOCK 64   /* rows per task for magnitude/Wanda */

typedef enum { PRUNE_MAGNITUDE = 0, PRUNE_WANDA, PRUNE_SPARSEGPT } prune_method;

typedef struct {
    prune_method method;
    double ratio;            /* unstructured: fraction of weights zeroed, [0, 1) */
    int    per_layer;        /* compare over the whole matrix (see above) */
    int    nm_n, nm_m;       /* N:M, keep nm_n of every nm_m inputs; nm_m == 0: unstructured */
    int    block;            /* SparseGPT column block (128) */
    double damp;             /* SparseGPT dampening, fraction of mean diag(H) (0.01) */
    int    threads;          /* >= 1 */
    /* SparseGPT joint sparsify + quantize (reference: --wbits): scheme int
     * grid or NULL. Group -1: parameters per row from the original W (as
     * sparsegpt.py's find_params before pruning); group G > 0: at each
     * group's first column from the current W (gptq.py's convention). */
    const quant_grid *quant;
} prune_opts;

/* magnitude, ratio 0.5, per row, block 128, damp 0.01, 1 thread, no quant. Can't fail. */
void    prune_opts_default(prune_opts *o);
/* Check o for a matrix of `cols` columns (cols 0 skips the shape checks):
 * ratio in [0, 1), 0 < N < M, cols % M == 0, SparseGPT block % M == 0,
 * quant only with SparseGPT and an int grid. -1 + *errp. */
int     prune_opts_check(const prune_opts *o, int64_t cols, char **errp);
/* "unstructured" or "N:M" for attrs.sparsity.pattern (static or buf). */
const char *prune_pattern_name(const prune_opts *o, char *buf, size_t len);
/* "magnitude", "wanda", "sparsegpt"; prune_method_from_name returns -1 if unknown. */
const char *prune_method_name(prune_method m);
int     prune_method_from_name(const char *name);

/* Weights pruned from n at ratio: floor(ratio * n + 0.5). Can't fail. */
int64_t prune_count(double ratio, int64_t n);

/* mask[j] = 1 for the k smallest of s[0..n) (ties: lower index), else 0.
 * scratch: n entries. Can't fail (k is clamped to [0, n]). */
void    prune_select_smallest(const double *s, int64_t n, int64_t k, uint8_t *mask, int64_t *scratch);

/* Statistics of the layer's input (from stats.h): x2_mean [cols] and
 * n_tokens for Wanda, hessian [cols, cols] (any positive scaling) for SparseGPT. */
typedef struct {
    const float *x2_mean;
    int64_t      n_tokens;
    const float *hessian;
} prune_stats;

/* Scores of one row w[0..cols) into s (magnitude: x2_mean NULL). Can't fail. */
void    prune_score_row(const float *w, int64_t cols, const float *x2_mean, int64_t n_tokens, double *s);

/* Joint quantization result (scheme int), same layout as quant.h's parts. */
typedef struct {
    int64_t  rows, cols, ngroups;
    uint8_t *codes;          /* [rows, cols] */
    float   *scales;         /* [rows, ngroups] */
    float   *zeros;          /* [rows, ngroups] */
} prune_qresult;
void    prune_qresult_free(prune_qresult *q);

/* Prune W [rows, cols] in place: pruned weights become exactly 0.0f; SparseGPT
 * also updates the kept weights (and with o->quant they hold the dequantized
 * values, codes etc. in *q, which is then allocated; q may be NULL otherwise).
 * Needs st->x2_mean (Wanda), st->hessian (SparseGPT). -1 + *errp on bad
 * options, missing statistics, a Hessian that is not positive definite after
 * damping, or out of memory (W is then unspecified). */
int     prune_matrix(const prune_opts *o, float *w, int64_t rows, int64_t cols,
                     const prune_stats *st, prune_qresult *q, char **errp);

/*-*** Structured pruning ***/

/* Channel scores for removing input channels (columns) of an output
 * projection W [rows, cols] (down_proj for MLP channels, o_proj for heads):
 * s[c] = ||X_c||_2 * sum_i |W_ic|, ||X_c||_2 = sqrt(x2_mean_c * n_tokens)
 * (x2_mean NULL: 1, i.e. the column's L1 norm). Can't fail. */
void    prune_channel_scores(const float *w, int64_t rows, int64_t cols,
                             const float *x2_mean, int64_t n_tokens, double *s);
/* keep[0..nkeep) = indices of the nkeep largest s[0..n) (ties: the lower index
 * is kept), in increasing order. -1 + *errp on nkeep outside [1, n] or OOM. */
int     prune_keep_largest(const double *s, int64_t n, int64_t nkeep, int64_t *keep, char **errp);
/* Cuts of a row-major [rows, cols] array of `elsize`-byte elements (any dtype):
 * rows keep[0..nkeep) into dst [nkeep, cols], or columns into dst [rows, nkeep].
 * Can't fail. */
void    prune_take_rows(const void *src, int64_t cols, size_t elsize,
                        const int64_t *keep, int64_t nkeep, void *dst);
void    prune_take_cols(const void *src, int64_t rows, int64_t cols, size_t elsize,
                        const int64_t *keep, int64_t nkeep, void *dst);

#endif
