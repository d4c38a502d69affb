/* awq — activation-aware channel scaling for one Llama decoder layer: AWQ
 * (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM
 * Compression and Acceleration", MLSys 2024; mit-han-lab/llm-awq
 * awq/quantize/auto_scale.py + auto_clip.py, casper-hansen/AutoAWQ
 * awq/quantize/quantizer.py) and SmoothQuant (Xiao et al., ICML 2023;
 * mit-han-lab/smoothquant smoothquant/smooth.py).
 *
 * Owns: the per-group scale search (grid over the exponent α of
 * s = mean|x|^α, normalised by sqrt(max·min)), the clipping search, the
 * SmoothQuant scales, the exact folding of the scales into the preceding op,
 * the transformation of calibration statistics to the scaled model, and the
 * statistic-based output error tr(ΔW H ΔWᵀ) that replaces the reference's
 * block-output MSE.
 *
 * How to think of it: a decoder layer has four scaling groups
 * (algorithms.md §1.3, as the reference's get_layers_for_scaling for Llama):
 *   0  input_layernorm          -> q_proj, k_proj, v_proj   input stats of q_proj
 *   1  v_proj (rows)            -> o_proj                   input stats of o_proj
 *                                  only when v_proj.shape == o_proj.shape (not GQA)
 *   2  post_attention_layernorm -> gate_proj, up_proj       input stats of gate_proj
 *   3  up_proj (rows)           -> down_proj                input stats of down_proj
 * Scaling the input channel j of the group's linears by s_j (W[:, j] *= s_j)
 * and dividing the preceding op's output channel j by s_j leaves the model
 * function unchanged: RMSNorm's output is linear in its weight; attention's
 * output is a convex combination of v rows per channel; the gated MLP's
 * product silu(gate x) ⊙ (up x) is linear in up's output channel.
 *
 * Where the loss differs from the reference: for a linear W with input
 * Hessian H = Σ x xᵀ over the calibration tokens of the ORIGINAL model, the
 * output error of replacing W by Ŵ is Σ_tokens |(W − Ŵ) x|² = tr(ΔW H ΔWᵀ).
 * The scale search minimises the sum of that over the group's linears, with
 * ΔW = W − Q(W·diag(s))·diag(s)⁻¹ (equivalently the scaled weight's error
 * under the scaled input's Hessian diag(1/s) H diag(1/s)). The reference
 * instead runs the whole attention block (groups 0) or MLP block (group 2),
 * with softmax, RoPE, o_proj, SiLU and the gate product, on cached inputs
 * and compares block outputs by MSE; groups 1 and 3 compare the single
 * linear's output, which is exactly our statistic up to the factor
 * 1/(tokens·out). Our q/k/v errors are therefore weighted equally in their
 * own output spaces and errors of different linears never interact. The clip
 * search's per-(row, group) error Σ_tokens (x_g·(Q(w_c) − w)_g)² is exactly
 * e_gᵀ H_gg e_g with H_gg the group's diagonal block of the (scaled) Hessian:
 * the same statistic the reference computes on ≈512 subsampled tokens, here
 * over all calibration tokens.
 *
 * Quantizer inside the searches: quant.c's integer grid (GPTQ quant.py
 * convention: the range always includes 0, asym zero = round(−xmin/scale)),
 * the same one the output and qgptq --rtn use, so AWQ and RTN compare like
 * for like. The reference's pseudo_quantize_tensor uses [min, max] without
 * forcing 0 in; for groups that straddle 0 (nearly all) the two agree.
 *
 * Errors: functions returning int give 0 or -1 with a malloc'd one-line
 * message in *errp (caller frees). Nothing prints or exits.
 */
#ifndef QPIPE_AWQ_H
#define QPIPE_AWQ_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

enum { AWQ_Q = 0, AWQ_K, AWQ_V, AWQ_O, AWQ_GATE, AWQ_UP, AWQ_DOWN, AWQ_NLIN };
enum { AWQ_NGROUPS = 4 };

typedef struct {
    quant_grid grid;       /* int grid searched for (and emitted): bits, group, sym */
    int    n_grid;         /* exponent grid points k/n_grid, k = 0..n_grid-1 (20) */
    int    duo;            /* AutoAWQ duo_scaling: s = x^α / (w^(1−α) + 1e-4) */
    int    clip;           /* run the clipping search */
    double max_shrink;     /* clip: shrink factors 1 − i/clip_grid, i < max_shrink·clip_grid (0.5) */
    int    clip_grid;      /* 20 */
    double smooth;         /* < 0: AWQ; else SmoothQuant with this α (groups 0 and 2 only) */
    int    threads;        /* >= 1; results do not depend on it */
} awq_opts;

void awq_opts_default(awq_opts *o);   /* int 4-bit g128 asym, 20, no duo, clip, 0.5, 20, AWQ, 1 */

/* A weight matrix of the layer, row-major, owned by the caller. */
typedef struct {
    float  *w;             /* [rows, cols], NULL when absent */
    int64_t rows, cols;
} awq_mat;

/* Calibration statistics of one group's input (ORIGINAL model), borrowed. */
typedef struct {
    const float *xabs_mean;    /* [cols] mean |x_j| */
    const float *absmax;       /* [cols] max |x_j| (SmoothQuant) */
    const float *hessian;      /* [cols, cols] Σ x xᵀ */
} awq_input;

typedef struct {
    awq_mat  lin[AWQ_NLIN];    /* q, k, v, o, gate, up, down */
    float   *in_norm;          /* [n_in_norm] input_layernorm.weight, NULL when absent */
    int64_t  n_in_norm;
    float   *post_norm;        /* [n_post_norm] post_attention_layernorm.weight */
    int64_t  n_post_norm;
    awq_input in[AWQ_NGROUPS]; /* inputs of groups 0..3 (q, o, gate, down) */
    /* results of awq_layer_scale (owned, freed by awq_layer_free) */
    float   *scale[AWQ_NGROUPS];   /* [cols] s of the group, NULL when skipped */
    double   alpha[AWQ_NGROUPS];   /* chosen exponent (SmoothQuant: its α) */
    double   loss_rtn[AWQ_NGROUPS];  /* group error with s = 1 (plain RTN) */
    double   loss_best[AWQ_NGROUPS]; /* group error with the chosen s */
    double   clip_before, clip_after; /* Σ over clipped linears of Σ_groups e_gᵀ H'_gg e_g */
} awq_layer;

/* Which linears belong to group g (up to 3), and how many. Can't fail. */
int  awq_group_members(int g, int members[3]);
/* 1 if group g can be applied to L (prev op present, members present with
 * matching columns, stats present, group 1 only when v and o shapes are
 * equal as in the reference), else 0. Can't fail. */
int  awq_group_applies(const awq_layer *L, int g);

/* Search (or compute, for SmoothQuant) the scales of every applicable group
 * on the original weights, then fold all of them (algorithms.md §1.3 steps
 * 2-4). Fills scale/alpha/loss_*. -1 + *errp on out of memory or stats whose
 * length disagrees with the weights. */
int  awq_layer_scale(awq_layer *L, const awq_opts *o, char **errp);
/* The clipping search (§1.3 step 5) on the scaled weights with the scaled
 * Hessians, for every linear except q_proj and k_proj; clamps in place.
 * Call after awq_layer_scale. -1 + *errp on out of memory. */
int  awq_layer_clip(awq_layer *L, const awq_opts *o, char **errp);
void awq_layer_free(awq_layer *L);     /* frees the results only */

/* Group index whose scales divide the input of linear `lin`, or -1. */
int  awq_input_group(int lin);

/*-*** Building blocks (exported for tests and qmix) ***/

/* tr(E H Eᵀ) = Σ_r e_r H e_rᵀ for E = w − q, w/q [rows, cols], H [cols, cols],
 * accumulated in double over fixed row blocks (independent of threads).
 * q == NULL means E = w. Returns NAN on out of memory. */
double awq_output_error(const float *w, const float *q, int64_t rows, int64_t cols,
                        const float *h, int threads);
/* The group error for candidate s (NULL = all ones): Σ_l tr(ΔW_l H ΔW_lᵀ),
 * ΔW = W − Q(W·diag(s))·diag(s)⁻¹ with Q = RTN on grid g. NAN on OOM. */
double awq_scaled_error(const quant_grid *g, const awq_mat *lins, int nlin,
                        const float *s, const float *h, int threads);
/* Candidate scales for exponent alpha: s_j = max(x_j^α [/(w_j^(1−α)+1e-4)], 1e-4),
 * normalised by sqrt(max·min), non-finite -> 1. wmean may be NULL (no duo).
 * s: [cols]. Can't fail. */
void awq_candidate_scales(const float *xmean, const float *wmean, int64_t cols, double alpha, float *s);
/* AutoAWQ's w_mean: |w| / (group max + 1e-6), averaged over all rows of the
 * concatenated linears. out: [cols]. -1 on OOM. */
int  awq_weight_mean(const awq_mat *lins, int nlin, int group, float *out);
/* SmoothQuant: s_j = max(a_j^α / max(w_j, 1e-5)^(1−α), 1e-5) with w_j the
 * max |W_ij| over the linears' rows. Can't fail. */
void awq_smooth_scales(const float *absmax, const awq_mat *lins, int nlin, double alpha, float *s);

/* Folding (in place). Can't fail. */
void awq_scale_cols(float *w, int64_t rows, int64_t cols, const float *s);    /* W[:, j] *= s_j */
void awq_unscale_rows(float *w, int64_t rows, int64_t cols, const float *s);  /* W[i, :] /= s_i */
void awq_unscale_vec(float *v, int64_t n, const float *s);                    /* v_j /= s_j */

/* Statistics of the scaled input x' = x / s. Can't fail. */
void awq_scale_hessian(float *h, int64_t n, const float *s);   /* H_ij /= s_i s_j */
void awq_scale_moment(float *v, int64_t n, const float *s, int power);  /* v_j /= s_j^power */

/* Clip one matrix (already in scaled coordinates) for grid g: per row and
 * scale group, the max-shrink search minimising e_gᵀ H_gg e_g (e = Q(clamp(w)) − w).
 * w: [rows, cols] clamped in place; h: [cols, cols]. *before and *after get the
 * summed error without/with clipping (may be NULL). -1 on OOM. */
int  awq_clip_matrix(const quant_grid *g, double max_shrink, int clip_grid, float *w,
                     int64_t rows, int64_t cols, const float *h, int threads,
                     double *before, double *after);

#endif
