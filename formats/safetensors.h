/* safetensors — the HuggingFace safetensors format: header parsing and
 * validation (as the reference crate does: sorted, hole-free, exact sizes),
 * mmap'd reading (single file and sharded index) and header writing.
 * Spec digest: specs/safetensors.md (huggingface/safetensors src/tensor.rs).
 */
#ifndef QPIPE_SAFETENSORS_H
#define QPIPE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "qstream.h"

#define ST_MAX_HEADER 100000000u   /* reference HeaderTooLarge limit */

/* Parse and validate a header (the N bytes after the length prefix) for a
 * file whose data buffer holds data_len bytes. On success appends tensors
 * (sorted by offset) to *out with begin offsets in *begins (both malloc'd) and
 * returns their count; metadata (may be NULL) receives "__metadata__".
 * -1 with *errp on error. */
int st_parse_header(const char *label, const char *json, size_t len, uint64_t data_len,
                    qs_tensor **out, uint64_t **begins, json_t **metadata, char **errp);

/* Lay out n tensors the way the reference writer does (sorted by dtype
 * alignment descending, then name; header padded to 8). Returns the full
 * header (8-byte length + JSON + padding) malloc'd, its size in *hdr_len, and
 * each tensor's absolute file offset in offsets[i] (input order). metadata
 * (object of strings, may be NULL) is written sorted by key. NULL on error. */
char *st_build_header(const qs_tensor *const *tensors, int n, const json_t *metadata,
                      uint64_t *offsets, size_t *hdr_len, char **errp);

/* safetensors dtype name of a qdtype ("F32"...). */
const char *st_dtype_name(qdtype t);

#endif
