/* dtype — element types of qpipe tensors and conversions between them.
 *
 * Owns: the dtype table (names as safetensors spells them, element sizes),
 * IEEE half / bfloat16 / float8 conversions with round-to-nearest-even, and
 * "any dtype → f32" decoding used by every consumer of weights.
 *
 * Invariants: all multi-byte elements are little-endian in memory and on the
 * wire; conversions preserve NaN (as a quiet NaN of the target), ±Inf (or, for
 * the finite-only f8_e4m3fn, NaN), ±0 and subnormals; f32→f16/bf16 is RNE.
 */
#ifndef QPIPE_DTYPE_H
#define QPIPE_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DT_INVALID = 0,
    DT_F32, DT_F16, DT_BF16, DT_F64,
    DT_I8, DT_U8, DT_I16, DT_I32, DT_I64, DT_BOOL,
    DT_F8_E4M3, DT_F8_E5M2,
    DT_U16, DT_U32, DT_U64,
    DT_COUNT
} qdtype;

typedef struct {
    const char *name;      /* safetensors spelling: "F32", "BF16", "F8_E4M3", ... */
    const char *lower;     /* CLI / qstream spelling: "f32", "bf16", "f8_e4m3", ... */
    size_t size;           /* bytes per element */
    int is_float;          /* 1 for floating types */
} qdtype_traits;

extern const qdtype_traits dtype_traits[DT_COUNT];

/* Name lookup, case-insensitive, accepts both spellings; DT_INVALID if unknown. */
qdtype dtype_from_name(const char *name);
static inline size_t dtype_size(qdtype t) { return dtype_traits[t].size; }
static inline const char *dtype_name(qdtype t) { return dtype_traits[t].lower; }

/* Scalar conversions (can't fail). */
uint16_t f32_to_f16(float f);
float    f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float    bf16_to_f32(uint16_t h);
uint8_t  f32_to_f8_e4m3(float f);   /* e4m3fn: saturates to ±448, NaN → 0x7f */
float    f8_e4m3_to_f32(uint8_t v);
uint8_t  f32_to_f8_e5m2(float f);   /* IEEE-like: overflow → ±Inf */
float    f8_e5m2_to_f32(uint8_t v);

/* Decode n elements of type t at src (little-endian) into f32 (can't fail;
 * integer types convert by value, bool to 0/1). */
void dtype_to_f32(qdtype t, const void *src, float *dst, size_t n);
/* Encode n f32 values into float type t (F32, F16, BF16, F64, F8_*), RNE.
 * Returns 0, or -1 if t is not a float type. */
int  dtype_from_f32(qdtype t, const float *src, void *dst, size_t n);

#endif
