/* dequant — any travelling tensor to f32 (see dequant.h). Dispatches on
 * attrs.quant.scheme: "gguf" → ggml_quants.c, "int"/"nf4"/"fp8" → quant.c,
 * no quant → dtype.c. */
#include "dequant.h"
#include "ggml_quants.h"
#include "quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *errf(const qs_tensor *t, const char *what)
{
    char buf[512];
    snprintf(buf, sizeof buf, "tensor '%s': %s", t->name, what);
    return strdup(buf);
}

int tensor_is_quantized(const qs_tensor *t)
{
    return t->attrs && json_object_get(t->attrs, "quant") != NULL;
}

static float *gguf_to_f32(const qs_tensor *t, const uint8_t *data, const char *type, char **errp)
{
    int gt = ggml_qtype_from_name(type);
    int p = qs_tensor_part(t, "blocks");
    if (gt < 0 || p < 0 || t->nparts != 1 || t->parts[p].ndim != 2) { *errp = errf(t, "bad GGUF block layout"); return NULL; }
    int64_t rows = qs_tensor_rows(t), cols = qs_tensor_cols(t);
    if (t->parts[p].shape[0] != rows || (uint64_t)t->parts[p].shape[1] != ggml_row_size(gt, cols)) {
        *errp = errf(t, "GGUF blocks do not match the tensor's shape");
        return NULL;
    }
    float *out = malloc((size_t)(rows * cols) * sizeof *out + 1);
    if (!out) { *errp = errf(t, "out of memory"); return NULL; }
    size_t rb = ggml_row_size(gt, cols);
    for (int64_t r = 0; r < rows; r++)
        if (ggml_dequantize_row(gt, data + (size_t)r * rb, out + r * cols, cols) < 0) {
            free(out);
            *errp = errf(t, "cannot dequantize GGUF blocks");
            return NULL;
        }
    return out;
}

float *tensor_to_f32(const qs_tensor *t, const void *data, size_t len, char **errp)
{
    if (len != qs_tensor_nbytes(t)) { *errp = errf(t, "byte count does not match its parts"); return NULL; }
    int64_t n = qs_numel(t->ndim, t->shape);
    if (n < 0) { *errp = errf(t, "bad shape"); return NULL; }
    if (!tensor_is_quantized(t)) {
        if (t->nparts != 1 || t->parts[0].nbytes != (uint64_t)n * dtype_size(t->dtype)) {
            *errp = errf(t, "unquantized tensor with unexpected parts");
            return NULL;
        }
        float *out = malloc((size_t)n * sizeof *out + 1);
        if (!out) { *errp = errf(t, "out of memory"); return NULL; }
        dtype_to_f32(t->dtype, data, out, (size_t)n);
        return out;
    }
    const char *scheme = json_string_value(json_object_get(json_object_get(t->attrs, "quant"), "scheme"));
    if (scheme && !strcmp(scheme, "gguf"))
        return gguf_to_f32(t, data, json_string_value(json_object_get(json_object_get(t->attrs, "quant"), "type")) ?: "", errp);
    const char *why = quant_check_tensor(t);
    if (why) { *errp = errf(t, why); return NULL; }
    const void *parts[QS_MAX_PARTS];
    const uint8_t *p = data;
    for (int i = 0; i < t->nparts; i++) { parts[i] = p; p += t->parts[i].nbytes; }
    float *out = malloc((size_t)n * sizeof *out + 1);
    if (!out) { *errp = errf(t, "out of memory"); return NULL; }
    if (quant_dequantize(t, parts, out) < 0) { free(out); *errp = errf(t, "cannot dequantize"); return NULL; }
    return out;
}
