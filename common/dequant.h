/* dequant — any tensor as it travels (plain dtype, int/nf4/fp8 grid, GGUF
 * blocks) turned into f32 values of its logical shape.
 *
 * Owns: the dispatch from a qs_tensor's parts and attrs["quant"] to the right
 * decoder (dtype.c, quant.c, ggml_quants.c). Consumers (qeval, the engine,
 * qpack --dtype) call only this.
 */
#ifndef QPIPE_DEQUANT_H
#define QPIPE_DEQUANT_H

#include <stddef.h>
#include "qstream.h"

/* data = all the tensor's bytes (parts concatenated, as qs_reader_read_all
 * returns them). Returns a malloc'd f32 array of numel(t->shape) values, or
 * NULL with *errp (malloc'd) naming the tensor and the problem. */
float *tensor_to_f32(const qs_tensor *t, const void *data, size_t len, char **errp);
/* 1 if the tensor carries a quantization grid (attrs "quant"), else 0. */
int tensor_is_quantized(const qs_tensor *t);

#endif
