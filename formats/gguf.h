/* gguf — llama.cpp's GGUF file format (v3, and v2 which has the same layout):
 * a validating reader (also as a qsrc, see source.h), a writer for qpack, and
 * the Llama export conventions (HF → GGUF tensor names, Q/K row permutation,
 * llama.* hyper-parameters from config.json, tokenizer.ggml.* KVs).
 *
 * Spec: /work/shared/specs/gguf.md (digest of ggml-org/ggml docs/gguf.md,
 * src/gguf.cpp; llama.cpp convert_hf_to_gguf.py, gguf-py). Section numbers
 * below refer to it.
 *
 * How to think of it: a GGUF file is a header (magic, version, counts), KVs
 * (typed metadata), tensor infos (name, ggml dims ne[] with ne[0] the row
 * length, ggml type, offset), then the data section at an aligned offset with
 * every tensor in info order, each padded to the alignment (default 32).
 * qpipe's shapes are row-major, i.e. GGUF's ne[] reversed.
 *
 * Reader invariants (every check of §3, done before anything is allocated
 * from a count): magic, version 2 or 3 (not byte-swapped), counts that fit the
 * file, strings ≤ 2^30 bytes inside the file, non-empty unique keys, known
 * value types, no nested arrays, general.alignment UINT32 power of two, tensor
 * names < 64 bytes and unique, ≤ 4 dims, ne ≥ 0, known non-removed types,
 * ne[0] % block == 0, overflow-safe sizes, each offset equal to the running
 * padded sum, and offset + nbytes inside the file (llama.cpp's loader check;
 * the padding after the last tensor is not required).
 *
 * Errors: -1 / NULL with a malloc'd one-line message in *errp naming the file
 * and the field ("m.gguf: tensor 3 'blk.0.attn_q.weight': offset 96, expected
 * 64"). The library never prints or exits.
 */
#ifndef QPIPE_GGUF_H
#define QPIPE_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "source.h"

#define GGUF_MAGIC          "GGUF"
#define GGUF_VERSION        3
#define GGUF_DEFAULT_ALIGN  32
#define GGUF_MAX_DIMS       4
#define GGUF_MAX_NAME       63            /* ggml: name length must be < 64 */
#define GGUF_MAX_STRING     (1u << 30)    /* ggml reader limit for strings and arrays */

/* KV value types (§2). */
enum {
    GGUF_T_UINT8 = 0, GGUF_T_INT8 = 1, GGUF_T_UINT16 = 2, GGUF_T_INT16 = 3,
    GGUF_T_UINT32 = 4, GGUF_T_INT32 = 5, GGUF_T_FLOAT32 = 6, GGUF_T_BOOL = 7,
    GGUF_T_STRING = 8, GGUF_T_ARRAY = 9, GGUF_T_UINT64 = 10, GGUF_T_INT64 = 11,
    GGUF_T_FLOAT64 = 12, GGUF_T_COUNT
};

/*-*** Reader ***/

typedef struct {
    char     *name;
    int       n_dims;                     /* as in the file (1..4) */
    int64_t   ne[GGUF_MAX_DIMS];          /* ggml order, missing dims = 1 */
    int       type;                       /* ggml type id */
    uint64_t  offset;                     /* relative to the data section */
    uint64_t  nbytes;
} gguf_tensor_info;

typedef struct {
    char             *label;              /* path, for messages */
    const uint8_t    *base;               /* whole file */
    size_t            size;               /* bytes at base */
    uint64_t          file_size;          /* size of the whole file (= size unless parse_ex) */
    int               mapped;             /* 1: base is our mmap */
    uint32_t          version;
    uint32_t          alignment;
    uint64_t          data_offset;        /* absolute start of the data section */
    json_t           *kv;                 /* object key → value (arrays as JSON arrays), file order */
    json_t           *kv_types;           /* object key → type name: "u32", "f32", "str", "arr[str]"... */
    int64_t           ntensors;
    gguf_tensor_info *tensors;
} gguf_file;

/* Parse and validate len bytes at buf (not copied: buf must outlive the
 * result). NULL + *errp on any violation of the checks above. */
gguf_file *gguf_file_parse(const void *buf, size_t len, const char *label, char **errp);
/* The same for a header excerpt: buf holds the first len bytes of a file of
 * file_size bytes; tensor data must fit file_size (and is not readable). */
gguf_file *gguf_file_parse_ex(const void *buf, size_t len, uint64_t file_size, const char *label,
                              char **errp);
/* mmap path and parse it. NULL + *errp (open/stat/mmap failures too). */
gguf_file *gguf_file_open(const char *path, char **errp);
void       gguf_file_close(gguf_file *f);
/* Index of the tensor with that name, or -1. */
int64_t    gguf_file_find(const gguf_file *f, const char *name);
/* Short type name of a KV value type ("u32", "str", ...), "?" if unknown. */
const char *gguf_type_name(int value_type);

/* The qsrc reader (source.h): tensors in file order with names as in the
 * file, shapes row-major. F32/F16/BF16 tensors are plain ("data" part of that
 * dtype); quantized ones have logical dtype f32 and one part "blocks" u8
 * [rows, row_bytes] (rows = shape[0], as qs_tensor_rows; 1-D: 1) with attrs
 * {"quant": {"scheme": "gguf", "type": "q4_0"}} (type names lowercase:
 * "q4_k", "q6_k"; ggml_qtype_from_name accepts them).
 * Header meta: "format": "gguf", "gguf_version", "gguf" (key → value) and
 * "gguf_types" (key → type name). read and map are supported. */
qsrc *gguf_open(const char *path, char **errp);

/*-*** Writer ***/

typedef struct gguf_writer gguf_writer;

/* New empty writer (alignment 32, no KVs). NULL only on out of memory. */
gguf_writer *gguf_writer_new(void);
void         gguf_writer_free(gguf_writer *g);         /* NULL is fine */
/* Message of the last failed call, "" if none. Owned by g. */
const char  *gguf_writer_error(const gguf_writer *g);

/* Set a KV. Setting an existing key replaces its value and type in place (KV
 * order = order of first setting). Return 0, or -1 (empty key, out of
 * memory, or after write_header) with gguf_writer_error. */
int gguf_writer_set_kv_str(gguf_writer *g, const char *key, const char *val);
int gguf_writer_set_kv_u32(gguf_writer *g, const char *key, uint32_t val);
int gguf_writer_set_kv_i32(gguf_writer *g, const char *key, int32_t val);
int gguf_writer_set_kv_u64(gguf_writer *g, const char *key, uint64_t val);
int gguf_writer_set_kv_f32(gguf_writer *g, const char *key, float val);
int gguf_writer_set_kv_bool(gguf_writer *g, const char *key, int val);
int gguf_writer_set_kv_arr_str(gguf_writer *g, const char *key, const char *const *vals, size_t n);
int gguf_writer_set_kv_arr_f32(gguf_writer *g, const char *key, const float *vals, size_t n);
int gguf_writer_set_kv_arr_i32(gguf_writer *g, const char *key, const int32_t *vals, size_t n);
/* Set a KV from its JSON value and a type name as gguf_file.kv_types spells
 * it (to pass a GGUF source's metadata through). -1 if they don't fit. */
int gguf_writer_set_kv_json(gguf_writer *g, const char *key, const json_t *val, const char *type);
/* Alignment (power of two, 8..65536); also writes general.alignment (UINT32)
 * unless it is the default 32. -1 otherwise. */
int gguf_writer_set_alignment(gguf_writer *g, uint32_t align);

/* Append a tensor info: shape in row-major order (reversed into ne[]);
 * nbytes must equal ggml_row_size(type, ne0) · rows. -1 (message) on a bad
 * or duplicate name (≥ 64 bytes), ndim outside 1..4, non-positive dims, an
 * unknown type, ne0 not a multiple of the block, or an nbytes mismatch.
 * Returns the tensor's index. */
int gguf_writer_add_tensor(gguf_writer *g, const char *name, int ggml_type, int ndim,
                           const int64_t *shape_rowmajor, uint64_t nbytes);
/* Write magic, version 3, counts, KVs, tensor infos and the zero padding up
 * to the data section at the fd's current position (normally 0). Offsets
 * are the running padded sums of the added tensors. After this no more KVs or
 * tensors may be added. 0, or -1 + *errp (write errors, with errno text). */
int gguf_writer_write_header(gguf_writer *g, int fd, char **errp);
/* Size of what write_header writes (= absolute data section start). */
uint64_t gguf_writer_header_size(const gguf_writer *g);
/* Absolute file offset of tensor i's bytes (header size + its offset);
 * UINT64_MAX for a bad index. */
uint64_t gguf_writer_data_offset(const gguf_writer *g, int tensor_index);
/* Total file size including the padding after the last tensor. */
uint64_t gguf_writer_file_size(const gguf_writer *g);
/* For a seekable fd whose tensor bytes were pwrite()n: extend the file to
 * gguf_writer_file_size (zero padding after the last tensor). 0 or -1 + *errp. */
int gguf_writer_finish(gguf_writer *g, int fd, char **errp);

/*-*** Llama conventions ***/

/* HF Llama tensor name → GGUF name (§9), e.g. "model.layers.3.mlp.down_proj.weight"
 * → "blk.3.ffn_down.weight". 0, or -1 if not a known llama tensor (or out is
 * too small); buffers like rotary_emb.inv_freq are "not known" (drop them). */
int gguf_llama_name(const char *hf_name, char *out, size_t outlen);
/* 1 if the HF name is q_proj (returns 1) or k_proj (2) whose rows the
 * converter permutes, else 0. */
int gguf_llama_qk_kind(const char *hf_name);
/* HF rotate-half → GGUF interleaved row order (§10): src, dst [rows, cols]
 * row-major, rows = n_head · head_dim (head_dim even), dst must not alias
 * src. dst[h·hd + 2j + t] = src[h·hd + t·hd/2 + j]. Use n_head for q_proj
 * and n_head_kv for k_proj. Can't fail (asserts the shape). */
void gguf_permute_qk_rows(const float *src, float *dst, int64_t rows, int64_t cols, int n_head);
/* The inverse (GGUF → HF). */
void gguf_unpermute_qk_rows(const float *src, float *dst, int64_t rows, int64_t cols, int n_head);
/* general.architecture = "llama", general.type = "model" and the llama.*
 * hyper-parameters from a HF config.json, with the types llama.cpp requires
 * (UINT32 counts, FLOAT32 eps/theta), as convert_hf_to_gguf.py writes them:
 * block_count, context_length, embedding_length, feed_forward_length,
 * attention.head_count, attention.head_count_kv, rope.freq_base (if
 * rope_theta), attention.layer_norm_rms_epsilon, vocab_size,
 * rope.dimension_count (+ key_length/value_length when head_dim differs,
 * rope.scaling.* for linear scaling). general.name, size_label, file_type and
 * quantization_version are the caller's. -1 + *errp for bad JSON or a
 * missing required field. */
int gguf_llama_metadata(gguf_writer *g, const char *config_json, size_t len, char **errp);

/* llama_ftype for general.file_type from the majority tensor type (§4): F32 0,
 * F16 1, Q4_0 2, Q4_1 3, Q8_0 7, Q5_0 8, Q5_1 9, Q2_K 10, Q3_K 12 (Q3_K_M),
 * Q4_K 15 (Q4_K_M), Q5_K 17 (Q5_K_M), Q6_K 18, BF16 32 — the _M mixes, as
 * llama-quantize labels files whose majority type is a K-quant. -1 otherwise. */
int gguf_llama_ftype(int ggml_type);

struct tokenizer;
/* tokenizer.ggml.* from a loaded tokenizer (formats/tokenizer.h): model,
 * pre ("default"), tokens, scores, token_type, merges (gpt2 kind),
 * bos/eos/unknown ids, add_bos_token (true for the llama kind) and
 * add_eos_token (false). -1 + *errp if the tokenizer module is not linked in
 * or an id is unassigned. */
int gguf_set_tokenizer(gguf_writer *g, const struct tokenizer *tk, char **errp);

#endif
