/* kernels — the f32 inner loops of the Llama engine: matmul, dot, axpy.
 *
 * Owns: one scalar `_ref` version of each kernel (the readable, deterministic
 * spec) and an AVX2+FMA version beside it that is bit-for-bit identical to it,
 * selected at run time (__builtin_cpu_supports). tests/unit/test_llama.c checks
 * the pairs against each other on sizes that exercise every tail.
 *
 * Numerics (the contract both versions follow exactly): a dot product of
 * length n keeps 8 lane accumulators, lane l summing fmaf(a[k+l], b[k+l], .)
 * for k = 0, 8, 16, ... while k+8 <= n; the lanes are reduced as
 * ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)); the n%8 tail is then added with
 * fmaf in index order. Every output element is computed the same way whatever
 * tile or thread computes it, so results never depend on how work is split.
 *
 * None of these functions can fail; shapes are the caller's responsibility.
 */
#ifndef QPIPE_KERNELS_H
#define QPIPE_KERNELS_H

#include <stddef.h>

/* y[t*dout + o] = dot(x[t*din ..], w[o*din ..]) (+ bias[o]) for t in [0,n),
 * o in [o0,o1). x: (n, din) row-major; w: (dout, din) row-major, i.e. the
 * HF Linear layout, y = x Wᵀ; bias: (dout) or NULL; y: (n, dout). */
typedef void kern_matmul_fn(float *y, const float *x, const float *w, const float *bias,
                            int n, int din, int dout, int o0, int o1);
kern_matmul_fn kern_matmul_ref;
kern_matmul_fn kern_matmul_avx2;     /* only call when kern_have_avx2() */

/* dot(a, b) of length n, with the lane structure above. */
float kern_dot_ref(const float *a, const float *b, int n);
float kern_dot_avx2(const float *a, const float *b, int n);

/* y[i] = fmaf(a, x[i], y[i]) for i in [0,n). */
void kern_axpy_ref(float *y, float a, const float *x, int n);
void kern_axpy_avx2(float *y, float a, const float *x, int n);

/* The same AVX2 loops with a rounded product before each add (QPIPE_NO_FMA):
 * NOT bit-identical to the _ref; only for valgrind, which emulates vector
 * FMA ~250x slower than a multiply and an add. Same shapes, same accesses. */
kern_matmul_fn kern_matmul_avx2_nofma;
float kern_dot_avx2_nofma(const float *a, const float *b, int n);
void kern_axpy_avx2_nofma(float *y, float a, const float *x, int n);

/* 1 if the CPU has AVX2 and FMA (and QPIPE_NO_SIMD is unset in the environment).
 * The dispatched kernels below use the _avx2 versions then, or the
 * _avx2_nofma ones if QPIPE_NO_FMA is set and non-empty. */
int kern_have_avx2(void);

/* Dispatched versions (the best the CPU supports). */
void  kern_matmul(float *y, const float *x, const float *w, const float *bias,
                  int n, int din, int dout, int o0, int o1);
float kern_dot(const float *a, const float *b, int n);
void  kern_axpy(float *y, float a, const float *x, int n);

#endif
