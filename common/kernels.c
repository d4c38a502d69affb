/* kernels — scalar reference and AVX2+FMA versions of the engine's inner
 * loops (see kernels.h for the numerical contract both follow bit for bit). */
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
 * AVX2 + FMA. */

#define AVX2 __attribute__((target("avx2,fma")))

/* ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), as lanes_reduce */
AVX2 static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
    __m128 s3 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s3);
}

AVX2 float kern_dot_avx2(const float *a, const float *b, int n)
{
    __m256 acc = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= n; k += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
    float r = hsum8(acc);
    for (; k < n; k++)
        r = __builtin_fmaf(a[k], b[k], r);
    return r;
}

/* One T x O tile of y: tokens t0..t0+T-1, outputs o..o+O-1. T, O are
 * compile-time constants at every call site so the accumulators live in
 * registers (4 x 3 = 12 of the 16 ymm registers). */
AVX2 static inline __attribute__((always_inline)) void
tile_avx2(int T, int O, float *y, const float *x, const float *w, const float *bias,
          int din, int dout, int t0, int o)
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
                acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    // reduce each lane set, add the tail and the bias
    for (int i = 0; i < T; i++)
        for (int j = 0; j < O; j++) {
            float r = hsum8(acc[i][j]);
            for (int kk = k; kk < din; kk++)
                r = __builtin_fmaf(xr[i][kk], wr[j][kk], r);
            if (bias)
                r += bias[o + j];
            y[(size_t)(t0 + i) * dout + o + j] = r;
        }
}

AVX2 static void tile43(float *y, const float *x, const float *w, const float *b,
                        int din, int dout, int t0, int o)
{
    tile_avx2(4, 3, y, x, w, b, din, dout, t0, o);
}

AVX2 static void tile14(float *y, const float *x, const float *w, const float *b,
                        int din, int dout, int t0, int o)
{
    tile_avx2(1, 4, y, x, w, b, din, dout, t0, o);
}

AVX2 static void tile11(float *y, const float *x, const float *w, const float *b,
                        int din, int dout, int t0, int o)
{
    tile_avx2(1, 1, y, x, w, b, din, dout, t0, o);
}

/* Output rows in blocks of OB (a block of w stays in cache while all token
 * tiles pass over it), 4x3 tiles inside, 1x4 / 1x1 tiles at the edges. */
AVX2 void kern_matmul_avx2(float *y, const float *x, const float *w, const float *bias,
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

AVX2 void kern_axpy_avx2(float *y, float a, const float *x, int n)
{
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] = __builtin_fmaf(a, x[i], y[i]);
}

/* -------------------------------------------------------------------------
 * Dispatch. */

int kern_have_avx2(void)
{
    static int have = -1;
    if (have < 0) {
        const char *off = getenv("QPIPE_NO_SIMD");
        __builtin_cpu_init();
        have = !(off && *off) && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return have;
}

void kern_matmul(float *y, const float *x, const float *w, const float *bias,
                 int n, int din, int dout, int o0, int o1)
{
    (kern_have_avx2() ? kern_matmul_avx2 : kern_matmul_ref)(y, x, w, bias, n, din, dout, o0, o1);
}

float kern_dot(const float *a, const float *b, int n)
{
    return kern_have_avx2() ? kern_dot_avx2(a, b, n) : kern_dot_ref(a, b, n);
}

void kern_axpy(float *y, float a, const float *x, int n)
{
    if (kern_have_avx2())
        kern_axpy_avx2(y, a, x, n);
    else
        kern_axpy_ref(y, a, x, n);
}
