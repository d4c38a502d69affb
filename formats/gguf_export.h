/* gguf_export — which ggml type each tensor of a Llama GGUF gets, as
 * llama-quantize decides it.
 *
 * Owns: the file types ("q4_0", "q4_k_m", ...; llama.cpp's llama_ftype) with
 * their default tensor type, and the per-tensor rules of llama.cpp
 * src/llama-quant.cpp llama_tensor_get_type() for a dense (non-MoE,
 * non-Falcon) Llama: output.weight → Q6_K unless the default is Q8_0; attn_v
 * and ffn_down get more bits in the K-quant mixes (use_more_bits); 1-D
 * tensors (norms) stay F32. The caller walks tensors in file order and keeps
 * the counters in a gguf_type_state.
 */
#ifndef QPIPE_GGUF_EXPORT_H
#define QPIPE_GGUF_EXPORT_H

#include <stdint.h>

typedef struct {
    int ftype;          /* llama_ftype value written as general.file_type */
    int default_type;   /* ggml type of most matrices */
    int n_layer;        /* block count */
    int n_gqa;          /* n_head / n_head_kv */
    int has_output;     /* the model has output.weight (untied head) */
    int has_imatrix;    /* importance weights are used */
    int i_attn_v, i_ffn_down;   /* counters, start at 0 */
} gguf_type_state;

/* Look up a file type name (case-insensitive: f32 f16 bf16 q8_0 q4_0 q4_1
 * q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k; also
 * "q4_k" = q4_k_m, "q5_k" = q5_k_m, "q3_k" = q3_k_m). 0 and fills ftype and
 * default_type, or -1 if unknown. */
int gguf_ftype_from_name(const char *name, gguf_type_state *st);

/* The ggml type of one tensor (GGUF name, ndim, row length ne0), advancing
 * the counters. 1-D tensors are F32; F32/F16/BF16 file types apply their
 * type to every matrix. */
int gguf_tensor_type(gguf_type_state *st, const char *gguf_name, int ndim, int64_t ne0);

#endif
