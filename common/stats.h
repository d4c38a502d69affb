/* stats — calibration statistics as qcal writes them and consumers read them.
 *
 * Owns: the naming contract of a stats stream (docs/qstream.md §stats) and a
 * loader that accepts either a stats qstream file or the safetensors file that
 * `qpack` makes of one.
 *
 * Contract, for a linear weight named W (e.g. "model.layers.0.mlp.down_proj.weight"):
 *   W.hessian    f32 [d_in, d_in]  Σ x xᵀ over all calibration tokens (unnormalised,
 *                                  accumulated in f64, stored f32)
 *   W.n_tokens   i64 [1]           number of tokens summed
 *   W.x2_mean    f32 [d_in]        mean of x_j² per input channel
 *   W.xabs_mean  f32 [d_in]        mean of |x_j|
 *   W.absmax     f32 [d_in]        max of |x_j|
 * Linears that share one input (q/k/v; gate/up) store the data once: the
 * other names are tensors with no parts and attrs {"alias": "<stored name>"}
 * (in a safetensors copy, aliases become "__metadata__" entries
 * "alias:<name>" = "<stored name>"). stats_get() resolves aliases.
 *
 * The header meta has "kind": "stats".
 */
#ifndef QPIPE_STATS_H
#define QPIPE_STATS_H

#include <stddef.h>
#include <stdint.h>

typedef struct stats stats;

/* Load a stats file (qstream or safetensors). NULL + *errp (malloc'd) on error. */
stats *stats_open(const char *path, char **errp);
/* Find W.<what> ("hessian", "x2_mean", ...): returns a pointer to f32 data
 * owned by st (valid until stats_close) and its element count in *n, or NULL
 * when absent. For "n_tokens" use stats_tokens(). */
const float *stats_get(const stats *st, const char *weight, const char *what, size_t *n);
int64_t stats_tokens(const stats *st, const char *weight);   /* -1 if absent */
void stats_close(stats *st);

#endif
