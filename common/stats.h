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

/* Open a stats file (qstream or safetensors). NULL + *errp (malloc'd) on error.
 * Memory: the small tensors (per-channel vectors, n_tokens) are read at open;
 * the large ones (Hessians, d_in² floats each) are read on first use and held
 * until stats_evict(), so a consumer working weight by weight holds one
 * weight's Hessian, not the model's. (From a pipe, "-", everything is read at
 * open.) A stats stream is read through once at open, verifying every frame
 * and the whole-stream hash, and what is read again later is re-verified.
 * Not thread-safe: one thread calls stats_get/stats_evict. */
stats *stats_open(const char *path, char **errp);
/* Find W.<what> ("hessian", "x2_mean", ...): returns a pointer to f32 data
 * owned by st (valid until stats_evict drops it or stats_close) and its
 * element count in *n, or NULL when absent or when reading it failed
 * (stats_error() then says why). For "n_tokens" use stats_tokens(). */
const float *stats_get(stats *st, const char *weight, const char *what, size_t *n);
/* Is W.<what> present (and its element count), without reading it? */
int stats_has(const stats *st, const char *weight, const char *what, size_t *n);
int64_t stats_tokens(const stats *st, const char *weight);   /* -1 if absent */
/* Drop the large tensors read so far, except those of weight `keep` (NULL:
 * none); pointers to dropped data become invalid. */
void stats_evict(stats *st, const char *keep);
size_t stats_resident(const stats *st);      /* bytes of f32 data held now */
/* Why the last stats_get of a present tensor failed ("cal.qs: 'W.hessian':
 * corrupt stream: ..."), or NULL. */
const char *stats_error(const stats *st);
void stats_close(stats *st);

#endif
