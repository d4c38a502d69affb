/* mix — mixed-precision allocation: which quantization setting each tensor
 * gets so that the total estimated loss is smallest under a storage budget.
 *
 * Owns: the menu of candidate settings (grid × bits × group) and its text
 * form, the exact storage cost of a setting, the per-tensor sensitivity
 * estimate tr(ΔW H ΔWᵀ) of a setting from calibration statistics (RTN or
 * GPTQ), and an exact multiple-choice knapsack solver.
 *
 * How to think of it: every tensor i has a row of choices c with an integer
 * size s_ic (bits on disk) and an estimated loss l_ic; pick one choice per
 * tensor minimising Σ l_ic subject to Σ s_ic <= budget. This is the
 * multiple-choice knapsack problem (MCKP; Sinha & Zoltners 1979). mix_solve
 * runs dynamic programming over sizes counted in units of u bits: with u =
 * gcd of all sizes (exact; weight-matrix sizes share large powers of two, so
 * the table is small) the result is the exact optimum; when that table
 * would be too large, u is raised and sizes are rounded UP to units, so the
 * budget still holds exactly in bits and the result is optimal for the
 * rounded sizes (the report says which case applied). The Lagrangian bound
 * over the convex hull (mix_lagrange_bound) is a lower bound on the optimum,
 * printed beside it to show how tight the allocation is.
 *
 * Storage cost of a setting for a [rows, cols] matrix (what a packed
 * checkpoint holds): codes rows·cols·bits, plus per row and scale group an
 * f16 scale, plus an f16 zero point for asymmetric int grids (nf4: scale
 * only; "f16": 16 bits per weight, no loss); with k outlier columns, plus
 * rows·k f16 values and k int32 column indices (codes of those columns are
 * still counted: the packed grid keeps its shape).
 *
 * Outlier columns (LLM.int8()'s decomposition, Dettmers et al. 2022,
 * algorithms.md §6, chosen offline like SpQR's salient weights): the k input
 * columns j with the largest H_jj · Σ_r W_rj² (expected squared output of
 * that column; ties to the lower index) are kept exactly (f16) and zeroed
 * before the grid's ranges are computed, so they no longer stretch the
 * group scales of their rows. Loss of a setting: tr((W − Ŵ)
 * H (W − Ŵ)ᵀ) with H = Σ x xᵀ the weight's calibration Hessian, Ŵ the RTN or
 * GPTQ result on that grid.
 *
 * Errors: int functions return 0 / -1 with a malloc'd message in *errp.
 * Nothing prints or exits.
 */
#ifndef QPIPE_MIX_H
#define QPIPE_MIX_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

/* One candidate setting. */
typedef struct {
    quant_grid grid;        /* scheme int (bits, group, sym) or nf4 (group) */
    int keep_f16;           /* 1: leave the tensor in f16 (grid unused) */
    int outliers;           /* k >= 0 salient input columns kept in f16 beside the grid */
} mix_setting;

/* 2-bit settings are left out of the default: the second-order estimate
 * tr(ΔW H ΔWᵀ) underrates them (on ts3m at 3.5 bits/weight, a menu with 2 bits
 * put three down_proj at 2 bits and scored ppl 15.08 against 14.66 without;
 * uniform int3g64 14.76). Ask for them with --menu "int:2,3,4,...". */
#define MIX_DEFAULT_MENU "int:3,4,5,6,8:32,64,128"
#define MIX_MAX_CHOICES 255

/* Parse a menu: entries separated by ';', each "GRID:BITS:GROUPS[:OUTLIERS]"
 * with GRID int (asymmetric), sym (symmetric int) or nf4, BITS, GROUPS and
 * OUTLIERS comma lists (group -1 = whole rows; nf4 takes BITS 4; OUTLIERS =
 * numbers of f16 columns, default 0), or the word f16. E.g.
 * "int:2,3,4:32,128;int:3:128:8,32;nf4:4:64;f16". *menu is malloc'd (caller frees). -1 +
 * *errp on a syntax error, bad bits/group, or more than MIX_MAX_CHOICES. */
int      mix_menu_parse(const char *spec, mix_setting **menu, int *n, char **errp);
/* "int4g128", "sym3g32", "nf4g64", "int8row", "int3g128+o8", "f16" into buf. Can't fail. */
void     mix_setting_name(const mix_setting *s, char *buf, size_t len);
/* Storage bits of setting s for a [rows, cols] matrix (see above). Can't fail. */
uint64_t mix_setting_bits(const mix_setting *s, int64_t rows, int64_t cols);
/* 1 if s can be applied to a matrix with `cols` columns, else 0. */
int      mix_setting_fits(const mix_setting *s, int64_t cols);

/* The k outlier columns of W [rows, cols] for Hessian h, ascending. idx: [k]. Can't fail. */
void     mix_outlier_columns(const float *w, int64_t rows, int64_t cols, const float *h, int k, int32_t *idx);
/* Ŵ for setting s (not f16): RTN (or GPTQ when use_gptq and the grid is int)
 * of W with the outlier columns (idx [s->outliers], or NULL = choose them)
 * zeroed, then those columns restored rounded to f16. q: [rows, cols] out.
 * -1 + *errp (OOM, Hessian not positive definite). */
int      mix_dequantized(const mix_setting *s, const float *w, int64_t rows, int64_t cols, const float *h,
                         int use_gptq, int threads, float *q, char **errp);

/* Loss of each setting for W [rows, cols] with Hessian h [cols, cols]:
 * loss[k] for menu[k] (settings that do not fit: INFINITY). use_gptq: Ŵ by
 * GPTQ (damp 0.01, block 128) instead of RTN (nf4 always RTN; int settings
 * with outlier columns are then INFINITY: GPTQ would have to keep them
 * inside its column loop). -1 + *errp
 * (out of memory, Hessian not positive definite). */
int      mix_tensor_losses(const float *w, int64_t rows, int64_t cols, const float *h,
                           const mix_setting *menu, int n, int use_gptq, int threads,
                           double *loss, char **errp);

/* The knapsack. size[i][c], loss[i][c] for nch[i] choices of item i
 * (INFINITY loss = forbidden). Writes choice[i]. max_cells caps
 * nitems·(budget/unit + 1) (0 = 5e7). *unit receives u and *exact 1 when u
 * is the gcd of all sizes (the optimum is exact). -1 + *errp when no choice
 * set fits the budget, or out of memory. */
int      mix_solve(int nitems, const int *nch, const uint64_t *const *size, const double *const *loss,
                   uint64_t budget, uint64_t max_cells, int *choice, uint64_t *unit, int *exact,
                   char **errp);
/* Lagrangian (convex-hull) lower bound on the optimum of the same problem;
 * INFINITY if infeasible. Can't fail. */
double   mix_lagrange_bound(int nitems, const int *nch, const uint64_t *const *size,
                            const double *const *loss, uint64_t budget);

#endif
