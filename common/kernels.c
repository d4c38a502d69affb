/* kernels — scalar reference and AVX2+FMA versions of the engine's inner
 * loops (see kernels.h for the numerical contract both follow bit for bit),
 * and an AVX2 version without FMA for running under valgrind. */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <immintrin.h>

/* -------------------------------------------------------------------------
 * Scalar reference: the spec. */

/* reduce the 8 lane sums in the fixed tree order of kernels.h */
static float lanes_reduce(const float l[8])
{
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

float kern_dot_ref(const float *a, const float *b, int n)
{
    float l[8] = {0};
    int k = 0;
    // 8 lane accumulators over the full blocks
    for (; k + 8 <= n; k += 8)
        for (int j = 0; j < 8; j++)
            l[j] = fmaf(a[k + j], b[k + j], l[j]);
    // reduce, then the tail in index order
    float r = lanes_reduce(l);
    for (; k < n; k++)
        r = fmaf(a[k], b[k], r);
    return r;
}

void kern_matmul_ref(float *y, const float *x, const float *w, const float *bias,
                     int n, int din, int dout, int o0, int o1)
{
    for (int t = 0; t < n; t++)
        for (int o = o0; o < o1; o++) {
            float r = kern_dot_ref(x + (size_t)t * din, w + (size_t)o * din, din);
            if (bias)
                r += bias[o];
            y[(size_t)t * dout + o] = r;
        }
}

void kern_axpy_ref(float *y, float a, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = fmaf(a, x[i], y[i]);
}

/* -------------------------------------------------------------------------
 * AVX2 + FMA, and the same loops with a separate multiply and add.
 *
 * Every body below takes `fused` as a compile-time constant: 1 is the
 * bit-for-bit twin of the _ref above; 0 (QPIPE_NO_FMA) rounds the product
 * before the add, so it is NOT bit-identical to the _ref. It exists for
 * valgrind, which emulates vector FMA about 250x slower than mul+add; the
 * memory accesses are the same, only the rounding differs. */

#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

AVX2 INLINE __m256 madd8(int fused, __m256 a, __m256 b, __m256 c)
{
    return fused ? _mm256_fmadd_ps(a, b, c) : _mm256_add_ps(_mm256_mul_ps(a, b), c);
}

AVX2 INLINE float madd1(int fused, float a, float b, float c)
{
    if (fused)
        return __builtin_fmaf(a, b, c);
    volatile float p = a * b;   /* kept apart so no compiler contracts it */
    return p + c;
}

/* ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), as lanes_reduce */
AVX2 INLINE float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
    __m128 s3 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s3);
}

AVX2 INLINE float dot8(int fused, const float *a, const float *b, int n)
{
    __m256 acc = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= n; k += 8)
        acc = madd8(fused, _mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
    float r = hsum8(acc);
    for (; k < n; k++)
        r = madd1(fused, a[k], b[k], r);
    return r;
}

/* One T x O tile of y: tokens t0..t0+T-1, outputs o..o+O-1. T, O are
 * compile-time constants at every call site so the accumulators live in
 * registers (4 x 3 = 12 of the 16 ymm registers). */
AVX2 INLINE void tile8(int fused, int T, int O, float *y, const float *x, const float *w,
                       const float *bias, int din, int dout, int t0, int o)
{
    __m256 acc[4][4];
    for (int i = 0; i < T; i++)
        for (int j = 0; j < O; j++)
            acc[i][j] = _mm256_setzero_ps();
    const float *xr[4], *wr[4];
    for (int i = 0; i < T; i++)
        xr[i] = x + (size_t)(t0 + i) * din;
    for (int j = 0; j < O; j++)
        wr[j] = w + (size_t)(o + j) * din;
    int k = 0;
    // full 8-wide blocks: every x row meets every w row
    for (; k + 8 <= din; k += 8) {
        __m256 wv[4];
        for (int j = 0; j < O; j++)
            wv[j] = _mm256_loadu_ps(wr[j] + k);
        for (int i = 0; i < T; i++) {
            __m256 xv = _mm256_loadu_ps(xr[i] + k);
            for (int j = 0; j < O; j++)
                acc[i][j] = madd8(fused, xv, wv[j], acc[i][j]);
        }
    }
    // reduce each lane set, add the tail and the bias
    for (int i = 0; i < T; i++)
        for (int j = 0; j < O; j++) {
            float r = hsum8(acc[i][j]);
            for (int kk = k; kk < din; kk++)
                r = madd1(fused, xr[i][kk], wr[j][kk], r);
            if (bias)
                r += bias[o + j];
            y[(size_t)(t0 + i) * dout + o + j] = r;
        }
}

typedef void tile_fn(float *y, const float *x, const float *w, const float *b,
                     int din, int dout, int t0, int o);

/* Output rows in blocks of OB (a block of w stays in cache while all token
 * tiles pass over it), 4x3 tiles inside, 1x4 / 1x1 tiles at the edges. */
AVX2 INLINE void matmul8(tile_fn *tile43, tile_fn *tile14, tile_fn *tile11,
                         float *y, const float *x, const float *w, const float *bias,
                         int n, int din, int dout, int o0, int o1)
{
    enum { OB = 48 };
    for (int ob = o0; ob < o1; ob += OB) {
        int oe = ob + OB < o1 ? ob + OB : o1;
        int o3 = ob + (oe - ob) / 3 * 3;
        int t = 0;
        for (; t + 4 <= n; t += 4) {
            for (int o = ob; o < o3; o += 3)
                tile43(y, x, w, bias, din, dout, t, o);
            for (int o = o3; o < oe; o++)
                for (int i = 0; i < 4; i++)
                    tile11(y, x, w, bias, din, dout, t + i, o);
        }
        for (; t < n; t++) {
            int o = ob;
            for (; o + 4 <= oe; o += 4)
                tile14(y, x, w, bias, din, dout, t, o);
            for (; o < oe; o++)
                tile11(y, x, w, bias, din, dout, t, o);
        }
    }
}

AVX2 INLINE void axpy8(int fused, float *y, float a, const float *x, int n)
{
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, madd8(fused, av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] = madd1(fused, a, x[i], y[i]);
}

/* The two instantiations: SUFFIX names them, FUSED picks the arithmetic. */
#define KERNELS_AVX2(SUFFIX, FUSED)                                                      \
    AVX2 static void tile43##SUFFIX(float *y, const float *x, const float *w,            \
                                    const float *b, int din, int dout, int t0, int o)    \
    { tile8(FUSED, 4, 3, y, x, w, b, din, dout, t0, o); }                                \
    AVX2 static void tile14##SUFFIX(float *y, const float *x, const float *w,            \
                                    const float *b, int din, int dout, int t0, int o)    \
    { tile8(FUSED, 1, 4, y, x, w, b, din, dout, t0, o); }                                \
    AVX2 static void tile11##SUFFIX(float *y, const float *x, const float *w,            \
                                    const float *b, int din, int dout, int t0, int o)    \
    { tile8(FUSED, 1, 1, y, x, w, b, din, dout, t0, o); }                                \
    AVX2 void kern_matmul##SUFFIX(float *y, const float *x, const float *w,              \
                                  const float *bias, int n, int din, int dout,           \
                                  int o0, int o1)                                        \
    { matmul8(tile43##SUFFIX, tile14##SUFFIX, tile11##SUFFIX,                            \
              y, x, w, bias, n, din, dout, o0, o1); }                                    \
    AVX2 float kern_dot##SUFFIX(const float *a, const float *b, int n)                   \
    { return dot8(FUSED, a, b, n); }                                                     \
    AVX2 void kern_axpy##SUFFIX(float *y, float a, const float *x, int n)                \
    { axpy8(FUSED, y, a, x, n); }

KERNELS_AVX2(_avx2, 1)
KERNELS_AVX2(_avx2_nofma, 0)

/* -------------------------------------------------------------------------
 * Dispatch: 0 scalar _ref, 1 AVX2+FMA, 2 AVX2 without FMA. */

static int simd_level(void)
{
    static int level = -1;
    if (level < 0) {
        const char *off = getenv("QPIPE_NO_SIMD"), *nofma = getenv("QPIPE_NO_FMA");
        __builtin_cpu_init();
        int avx2 = !(off && *off) && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        level = !avx2 ? 0 : (nofma && *nofma) ? 2 : 1;
    }
    return level;
}

int kern_have_avx2(void)
{
    return simd_level() != 0;
}

void kern_matmul(float *y, const float *x, const float *w, const float *bias,
                 int n, int din, int dout, int o0, int o1)
{
    static kern_matmul_fn *const fn[] = { kern_matmul_ref, kern_matmul_avx2, kern_matmul_avx2_nofma };
    fn[simd_level()](y, x, w, bias, n, din, dout, o0, o1);
}

float kern_dot(const float *a, const float *b, int n)
{
    switch (simd_level()) {
    case 1:  return kern_dot_avx2(a, b, n);
    case 2:  return kern_dot_avx2_nofma(a, b, n);
    default: return kern_dot_ref(a, b, n);
    }
}

void kern_axpy(float *y, float a, const float *x, int n)
{
    switch (simd_level()) {
    case 1:  kern_axpy_avx2(y, a, x, n); break;
    case 2:  kern_axpy_avx2_nofma(y, a, x, n); break;
    default: kern_axpy_ref(y, a, x, n); break;
    }
}
