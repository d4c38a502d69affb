/* ggml_quants_avx2 — AVX2 kernels for Q8_0 and Q4_0 quantize/dequantize,
 * bit-identical to the scalar _ref code in ggml_quants.c (tests compare them
 * byte for byte). Compiled with per-function target attributes, so the rest
 * of the library keeps the baseline ISA; ggml_quants.c picks them at run time
 * (__builtin_cpu_supports). On other architectures the entry points are
 * stubs that are never selected.
 *
 * Unlike ggml's own AVX2 quantize_row_q8_0 (which rounds ties to even with
 * _mm256_round_ps), Q8_0 here reproduces roundf()'s ties-away-from-zero, as
 * the reference quantizer llama-quantize uses does (ggml-quants.c
 * quantize_row_q8_0_ref).
 */
#include "ggml_quants.h"
#include "dtype.h"

#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF    /* gcc: already off in ISO C mode (-std=c11) */
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2")))

int ggml_quants_have_avx2(void)
{
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return cached;
}

static inline void put_f16(uint8_t *p, float f)
{
    uint16_t h = f32_to_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

static inline float get_f16(const uint8_t *p)
{
    return f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

AVX2 static inline float hmax_ps(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* roundf(): |v| truncated, +1 when the (exact) fraction is >= 0.5, sign restored. */
AVX2 static inline __m256 roundf_ps(__m256 v, __m256 sign_mask)
{
    __m256 a = _mm256_andnot_ps(sign_mask, v);
    __m256 t = _mm256_round_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 up = _mm256_cmp_ps(_mm256_sub_ps(a, t), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    t = _mm256_add_ps(t, _mm256_and_ps(up, _mm256_set1_ps(1.0f)));
    return _mm256_or_ps(t, _mm256_and_ps(sign_mask, v));
}

/* x[n] (n % 32 == 0) → n/32 blocks of 34 bytes. */
AVX2 void ggml_quantize_q8_0_avx2(const float *x, uint8_t *y, int64_t n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 34) {
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        /* absolute max of the block */
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
        }
        const float d = hmax_ps(amax) / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        put_f16(y, d);
        /* scale, round half away, narrow to int8 in element order */
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_cvtps_epi32(roundf_ps(_mm256_mul_ps(v[k], vid), sign));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, perm);
        _mm256_storeu_si256((__m256i *)(void *)(y + 2), p);
    }
}

/* x[n] → n/32 blocks of 18 bytes. */
AVX2 void ggml_quantize_q4_0_avx2(const float *x, uint8_t *y, int64_t n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 18) {
        __m256 v[4];
        __m256 vmax = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v[k]));
        }
        /* signed value of the first element with the largest |x| */
        const float amax = hmax_ps(vmax);
        float max = 0.0f;
        if (amax > 0) {
            const __m256 va = _mm256_set1_ps(amax);
            uint32_t mask = 0;
            for (int k = 0; k < 4; k++)
                mask |= (uint32_t)_mm256_movemask_ps(
                            _mm256_cmp_ps(_mm256_andnot_ps(sign, v[k]), va, _CMP_EQ_OQ)) << (8 * k);
            max = x[__builtin_ctz(mask)];
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        put_f16(y, d);
        /* q = min(15, trunc(x·id + 8.5)); qs[j] = q_j | q_{j+16} << 4 */
        const __m256 vid = _mm256_set1_ps(id), off = _mm256_set1_ps(8.5f);
        const __m256i fifteen = _mm256_set1_epi32(15);
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_min_epi32(fifteen, _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v[k], vid), off)));
        __m256i c0 = _mm256_or_si256(q[0], _mm256_slli_epi32(q[2], 4));
        __m256i c1 = _mm256_or_si256(q[1], _mm256_slli_epi32(q[3], 4));
        __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(c0, c1), 0xD8);
        __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        _mm_storeu_si128((__m128i *)(void *)(y + 2), bytes);
    }
}

AVX2 void ggml_dequantize_q8_0_avx2(const uint8_t *y, float *x, int64_t n)
{
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 34) {
        const __m256 d = _mm256_set1_ps(get_f16(y));
        for (int k = 0; k < 4; k++) {
            __m128i q8 = _mm_loadl_epi64((const __m128i *)(const void *)(y + 2 + 8 * k));
            __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
            _mm256_storeu_ps(x + 8 * k, _mm256_mul_ps(f, d));
        }
    }
}

AVX2 void ggml_dequantize_q4_0_avx2(const uint8_t *y, float *x, int64_t n)
{
    const __m128i lo_mask = _mm_set1_epi8(0x0F);
    const __m256i eight = _mm256_set1_epi32(8);
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 18) {
        const __m256 d = _mm256_set1_ps(get_f16(y));
        __m128i qs = _mm_loadu_si128((const __m128i *)(const void *)(y + 2));
        __m128i lo = _mm_and_si128(qs, lo_mask);                      /* elements 0..15 */
        __m128i hi = _mm_and_si128(_mm_srli_epi16(qs, 4), lo_mask);   /* elements 16..31 */
        __m128i parts[4] = { lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8) };
        for (int k = 0; k < 4; k++) {
            __m256i q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[k]), eight);
            _mm256_storeu_ps(x + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
        }
    }
}

#else  /* not x86: never selected */

int ggml_quants_have_avx2(void) { return 0; }
void ggml_quantize_q8_0_avx2(const float *x, uint8_t *y, int64_t n) { (void)x; (void)y; (void)n; }
void ggml_quantize_q4_0_avx2(const float *x, uint8_t *y, int64_t n) { (void)x; (void)y; (void)n; }
void ggml_dequantize_q8_0_avx2(const uint8_t *y, float *x, int64_t n) { (void)x; (void)y; (void)n; }
void ggml_dequantize_q4_0_avx2(const uint8_t *y, float *x, int64_t n) { (void)x; (void)y; (void)n; }

#endif
