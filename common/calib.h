/* calib — accumulating calibration statistics from the engine's linear-layer
 * inputs, and writing them as a stats qstream (the contract of stats.h).
 *
 * Owns: the accumulators qcal fills through llama_set_hook(), and the tensors
 * they become. For each distinct linear input (q/k/v share one, gate/up share
 * one), stored under the first weight name W of the group, in forward order:
 *   W.hessian       f32 [d_in, d_in]  Σ x xᵀ (f64 accumulation: dsyrk, one
 *                                     OpenBLAS thread, so results are
 *                                     reproducible), stored f32, symmetric
 *   W.n_tokens      i64 [1]           tokens summed
 *   W.x2_mean       f32 [d_in]        Σ x_j² / n_tokens
 *   W.xabs_mean     f32 [d_in]        Σ |x_j| / n_tokens
 *   W.absmax        f32 [d_in]        max |x_j|
 * and, for static (per-tensor) activation quantization:
 *   W.act_range     f32 [2]           [min x, max x] over all tokens and channels
 *   W.act_hist_max  f32 [1]           R: the histogram covers |x| in [0, R]; R is
 *                                     the smallest power of two >= max |x|
 *   W.act_hist      f32 [bins]        fraction of all |x| values (tokens x
 *                                     channels) in bin b = [b R/bins, (b+1) R/bins)
 * The histogram is exact whatever order the data comes in: when a value
 * exceeds R, R doubles and bins merge pairwise (bin floor(|x| bins / R) at
 * range 2R is half the index at range R, exactly, as R and bins are powers of two).
 * Every other weight name W' of the group gets, for each suffix above, a
 * tensor "W'.<suffix>" with no parts and attrs {"alias": "W.<suffix>"}.
 *
 * Errors: -1 / NULL with a malloc'd one-line message in *errp.
 */
#ifndef QPIPE_CALIB_H
#define QPIPE_CALIB_H

#include <stdint.h>
#include "qstream.h"

typedef struct calib calib;

/* bins: histogram bins, a power of two in [16, 1 << 20]. NULL + *errp on a
 * bad count or out of memory. */
calib *calib_new(int bins, char **errp);
void   calib_free(calib *c);

/* The llama_hook_fn to pass to llama_set_hook(m, calib_hook, c). Fails on
 * out of memory, if a name group reappears with another d_in, or if its
 * statistics were already written. */
int calib_hook(void *ctx, const char *const *names, int nnames, const float *x, int n,
               int d_in, char **errp);

/* Number of distinct inputs seen / total tokens of the first one. Can't fail. */
int     calib_groups(const calib *c);
int64_t calib_tokens(const calib *c);

/* Declare a group before any data (a llama_input_fn: pass calib_declare and
 * c to llama_inputs), so that the manifest, and with it the writer, can be
 * made before the run, and groups written as soon as they are complete
 * (calib_flush). Accumulators are allocated at a group's first data, not
 * here. Fails on a bad width, a name declared twice, or out of memory. */
int calib_declare(void *ctx, const char *const *names, int nnames, int d_in, char **errp);

/* Append each tensor's manifest entry to h (before opening the writer). */
int calib_manifest(const calib *c, qs_header *h, char **errp);
/* Write the statistic tensors of every group not yet written, in the order
 * of calib_manifest (a declared group that saw no data: zeros, n_tokens 0),
 * and free their accumulators. */
int calib_write(calib *c, qs_writer *w, char **errp);
/* Write, and free the accumulators of, the leading groups that have data,
 * stopping at the first group (in manifest order) that has none yet. Call it
 * when every group with data is complete, e.g. after each layer of a
 * layer-major run: memory then holds one layer's statistics, not all of them.
 * Data for a written group is an error (calib_hook fails). */
int calib_flush(calib *c, qs_writer *w, char **errp);
/* Bytes the accumulators hold now (Hessians d_in² × 8 per group with data,
 * plus per-channel sums, histograms and scratch). Can't fail. */
size_t calib_bytes(const calib *c);

#endif
