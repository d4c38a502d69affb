/* ggml_quants — llama.cpp's tensor block formats (F32/F16/BF16, Q4_0 … Q8_0,
 * the K-quants Q2_K … Q6_K): geometry, a reference quantizer that writes the
 * bytes llama-quantize writes, and dequantization back to f32.
 *
 * Owns: the ggml type table (ggml's enum numbers, block sizes, bytes per
 * block), quantize/dequantize of one row, and their AVX2 variants
 * (ggml_quants_avx2.c), chosen at run time.
 *
 * Reference: ggml-org/ggml src/ggml-quants.c (quantize_row_*_ref,
 * quantize_row_*_impl, quantize_q*), as digested in docs/specs gguf.md §7–§8
 * and algorithms.md §7.3. What llama-quantize actually calls is
 * quantize_q*(src, dst, nrow, n_per_row, imatrix): without an importance
 * matrix every type falls back to quantize_row_*_ref over the concatenated
 * rows (for Q4_K that is make_qkx2_quants with weights av_x+|x|); with one it
 * runs quantize_row_*_impl row by row (σ² over the row for Q4_0…Q5_1, over the
 * 256-block for K-quants); Q8_0 always ignores the imatrix. This module
 * reproduces both paths; ggml_quantize_row() takes one row.
 *
 * Invariants: blocks are little-endian byte arrays (no struct casts, so any
 * alignment of src/dst is fine); all arithmetic is float32 in ggml's
 * evaluation order without FMA contraction, so results are bit-identical to
 * ggml's scalar code. NaN/Inf inputs are not meaningful (as in ggml).
 */
#ifndef QPIPE_GGML_QUANTS_H
#define QPIPE_GGML_QUANTS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    GGML_T_F32 = 0, GGML_T_F16 = 1, GGML_T_Q4_0 = 2, GGML_T_Q4_1 = 3,
    GGML_T_Q5_0 = 6, GGML_T_Q5_1 = 7, GGML_T_Q8_0 = 8,
    GGML_T_Q2_K = 10, GGML_T_Q3_K = 11, GGML_T_Q4_K = 12, GGML_T_Q5_K = 13,
    GGML_T_Q6_K = 14, GGML_T_BF16 = 30
} ggml_qtype;                                /* ggml's enum numbers (ggml.h) */

#define GGML_QK_K       256                  /* K-quant super-block */
#define GGML_TYPE_COUNT 43                   /* newest ggml; ids >= this are invalid */

typedef struct {
    const char *name;       /* ggml's spelling: "q4_0", "q4_K", "f16", "bf16" */
    int         blck;       /* elements per block (1 for float types); 0 = removed type */
    size_t      type_size;  /* bytes per block */
    int         supported;  /* 1 = this module quantizes and dequantizes it */
} ggml_qtraits;

/* Traits of a ggml type id: every id ggml knows (also the ones not supported
 * here, with supported = 0, so a GGUF reader can size them); NULL if the id is
 * unknown or a removed type. Can't fail otherwise. */
const ggml_qtraits *ggml_qtype_traits(int type);
/* Type id from a name, case-insensitive ("q4_0", "Q4_K", "f16", "bf16"); only
 * supported types. -1 if unknown. */
int ggml_qtype_from_name(const char *name);
/* Bytes for n values of a type; 0 if the type is unknown or n % blck != 0. */
size_t ggml_row_size(int type, int64_t n);

/* Quantize one row x[n] (n % blck == 0) into dst (ggml_row_size bytes).
 * quant_weights: per-column importance (imatrix, length n) or NULL, exactly as
 * llama-quantize passes it. Returns the bytes written, 0 if the type is
 * unsupported or n is not a multiple of the block. The plain function
 * dispatches to AVX2 kernels (Q8_0, Q4_0 without imatrix) when the CPU has
 * them; results are bit-identical to the _ref ones. */
size_t ggml_quantize_row(int type, const float *x, void *dst, int64_t n, const float *quant_weights);
size_t ggml_quantize_row_ref(int type, const float *x, void *dst, int64_t n, const float *quant_weights);
/* nrows rows of n_per_row values each (x row-major [nrows, n_per_row]); the
 * imatrix (length n_per_row) applies to every row. Returns bytes written or 0. */
size_t ggml_quantize_rows(int type, const float *x, void *dst, int64_t nrows, int64_t n_per_row,
                          const float *quant_weights);

/* Decode n values (n % blck == 0) of a supported type into dst[n]. Returns 0,
 * or -1 (dst untouched) for an unsupported type or bad n. */
int ggml_dequantize_row(int type, const void *src, float *dst, int64_t n);
int ggml_dequantize_row_ref(int type, const void *src, float *dst, int64_t n);

/*-*** SIMD kernels (ggml_quants_avx2.c); callers use the dispatching API ***/
/* 1 if the AVX2 kernels are compiled in and the CPU runs them. */
int ggml_quants_have_avx2(void);
/* Force the scalar path (1) or re-enable dispatch (0); for tests and benches. */
void ggml_quants_force_ref(int on);
void ggml_quantize_q8_0_avx2(const float *x, uint8_t *dst, int64_t n);
void ggml_quantize_q4_0_avx2(const float *x, uint8_t *dst, int64_t n);
void ggml_dequantize_q8_0_avx2(const uint8_t *src, float *dst, int64_t n);
void ggml_dequantize_q4_0_avx2(const uint8_t *src, float *dst, int64_t n);

#endif
