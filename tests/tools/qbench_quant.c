/* qbench_quant — speed of the quantizers on Llama-7B-shaped tensors, calling
 * the library directly (bin/qbench_quant; run by tests/bench/bench_quant.sh).
 *
 * Owns: the `make bench` figures for issue 4 acceptance 5 and issue 5
 * acceptance 5, library side:
 *   rtn   — f16 weights → f32 (dtype_to_f32, as qpack --gguf does) → ggml
 *           blocks (ggml_quantize_rows), MB/s of f16 input, for Q4_0/Q8_0 on
 *           the scalar _ref path and the dispatching SIMD path in the same
 *           run (ggml_quants_force_ref), Q4_K/Q6_K scalar; plus a row-block
 *           split over 1 and 2 threads (quant_parallel_for; qpack itself
 *           quantizes a tensor on one thread).
 *   gptq  — gptq_quantize seconds per 4096x4096 layer (int 4-bit, group 128,
 *           asym, block 128, damp 0.01; act-order off/on) and SparseGPT
 *           (prune_matrix, 50 % unstructured and 2:4) with 1 and 2 threads,
 *           on a synthetic positive-definite Hessian H = 2/n XᵀX; optionally
 *           writes the same layer and its stats as safetensors for timing the
 *           qgptq / qprune CLIs (--write DIR).
 *
 * Every timed run reports wall time (CLOCK_MONOTONIC), this process's CPU
 * time over wall time (≈ threads when the threads really ran in parallel) and
 * the share of the machine's CPU that *other* processes used meanwhile (busy
 * + steal jiffies from /proc/stat minus our own CPU time, over ncpu × wall),
 * so a 2-thread figure can be judged on a shared machine.
 *
 * Data are deterministic (splitmix64 + Box-Muller, fixed seeds): weights
 * N(0, 0.02²) (the scale of a trained 7B linear); activations X [n, d] =
 * (Z A + 0.5 E) diag(s): k = 16 latent directions (Z [n, k], A [k, d]
 * standard normal), isotropic noise E, log-normal per-channel scales s
 * (σ = 0.5) and 1 % outlier channels ×20 — the construction of the GPTQ
 * fixture (tests/data/gptq/README.md). H = 2/n XᵀX is positive definite for
 * n ≥ d (the noise term has full rank).
 *
 * Usage: qbench_quant rtn  [--reps N]
 *        qbench_quant gptq [--reps N] [--dim D] [--tokens N] [--write DIR] [--no-sparsegpt]
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dtype.h"
#include "ggml_quants.h"
#include "gptq.h"
#include "prune.h"
#include "quant.h"

/*-*** Timing and load ***/

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6
         + (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* Busy (user nice system irq softirq steal) seconds of the whole machine, or
 * -1 if /proc/stat is unreadable. */
static double machine_busy(void)
{
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[8] = { 0 };
    if (!f) return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu",
                   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 8) return -1;
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

typedef struct { double t0, c0, b0; } probe;
typedef struct { double wall, cpu, par, others; } meas;   /* cpu s; par = cpu/wall; others in [0,1] */

static void probe_start(probe *p)
{
    p->b0 = machine_busy();
    p->c0 = self_cpu();
    p->t0 = now();
}

static meas probe_stop(const probe *p)
{
    meas m;
    m.wall = now() - p->t0;
    double cpu = self_cpu() - p->c0, b1 = machine_busy();
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    m.cpu = cpu;
    m.par = m.wall > 0 ? cpu / m.wall : 0;
    m.others = (p->b0 >= 0 && b1 >= 0 && m.wall > 0) ? ((b1 - p->b0) - cpu) / ((double)ncpu * m.wall) : NAN;
    if (m.others < 0) m.others = 0;   // jiffy granularity (10 ms) on short runs
    if (m.others > 1) m.others = 1;
    return m;
}

static void keep_best(meas *best, meas m)
{
    if (best->wall <= 0 || m.wall < best->wall) *best = m;
}

/*-*** Deterministic data ***/

static uint64_t rng_state;

static uint64_t splitmix64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform01(void)   /* (0, 1) */
{
    return ((double)(splitmix64() >> 11) + 0.5) / 9007199254740992.0;
}

static float gauss(void)
{
    static int have;
    static double spare;
    if (have) { have = 0; return (float)spare; }
    double r = sqrt(-2.0 * log(uniform01())), a = 6.283185307179586 * uniform01();
    spare = r * sin(a);
    have = 1;
    return (float)(r * cos(a));
}

static void fill_weights(float *w, size_t n, uint64_t seed)   /* N(0, 0.02^2) */
{
    rng_state = seed;
    for (size_t i = 0; i < n; i++) w[i] = 0.02f * gauss();
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "qbench_quant: out of memory (%zu bytes)\n", n); exit(1); }
    return p;
}

/*-*** RTN → ggml blocks ***/

typedef struct {
    const uint16_t *f16;   /* [rows, cols] input */
    float *f32;            /* [rows, cols] scratch of the split path */
    uint8_t *out;          /* [rows, row_bytes] */
    int64_t rows, cols;
    int type;
    size_t row_bytes;
} rtn_job;

enum { RTN_SPLIT_ROWS = 64 };

/* qpack --gguf's path for one tensor (tensor_to_f32 then ggml_quantize_rows):
 * a fresh f32 buffer for the whole tensor, every row, free. */
static void rtn_whole(const rtn_job *j)
{
    float *f = xmalloc((size_t)(j->rows * j->cols) * sizeof *f);
    dtype_to_f32(DT_F16, j->f16, f, (size_t)(j->rows * j->cols));
    ggml_quantize_rows(j->type, f, j->out, j->rows, j->cols, NULL);
    free(f);
}

/* One 64-row block of the split path; j->f32 is a preallocated (warm) buffer. */
static int rtn_block(void *ctx, int64_t b)
{
    const rtn_job *j = ctx;
    int64_t r0 = b * RTN_SPLIT_ROWS, nr = j->rows - r0 < RTN_SPLIT_ROWS ? j->rows - r0 : RTN_SPLIT_ROWS;
    dtype_to_f32(DT_F16, j->f16 + r0 * j->cols, j->f32 + r0 * j->cols, (size_t)(nr * j->cols));
    return ggml_quantize_rows(j->type, j->f32 + r0 * j->cols, j->out + (size_t)r0 * j->row_bytes,
                              nr, j->cols, NULL) == (size_t)nr * j->row_bytes ? 0 : -1;
}

static void rtn_split(rtn_job *j, int threads)
{
    int64_t failed;
    if (quant_parallel_for((j->rows + RTN_SPLIT_ROWS - 1) / RTN_SPLIT_ROWS, threads, rtn_block, j, &failed)) {
        fprintf(stderr, "qbench_quant: quantize failed at row block %lld\n", (long long)failed);
        exit(1);
    }
}

/* cpu/s range of the 2-thread runs printed so far, and the most the others used */
static double par2_min = 1e9, par2_max = 0, others_max = 0;

static void note_run(int thr, meas m)
{
    if (thr == 2) {
        if (m.par < par2_min) par2_min = m.par;
        if (m.par > par2_max) par2_max = m.par;
    }
    if (m.others > others_max) others_max = m.others;
}

/* Whether the 2-thread figures above are parallel speed-ups. */
static void print_verdict(void)
{
    if (par2_max <= 0) return;
    printf("verdict: 2-thread runs got %.2f-%.2f CPU-s per s; other processes used up to %.0f%% of the CPUs:\n",
           par2_min, par2_max, 100 * others_max);
    if (par2_min >= 1.6)
        puts("         the 2-thread ratios are real parallel speed-ups.");
    else if (par2_max >= 1.6)
        puts("         only some 2-thread runs ran on two CPUs; compare ratios with their cpu/s.");
    else
        puts("         the threads did NOT get two CPUs, so the 2-thread ratios are not parallel speed-ups.");
    par2_min = 1e9;
    par2_max = 0;
    others_max = 0;
}

static void print_rule(void)
{
    puts("---------------------------------------------------------------------------------------------");
}

static void print_rtn_row(const char *shape, const char *type, const char *path, int thr,
                          meas m, double mb, const char *ratio, const char *same)
{
    note_run(thr, m);
    printf("%-12s %-5s %-20s %3d %7.3f %6.0f %7.0f %11s %5.2f %5.0f%%  %s\n", shape, type, path, thr,
           m.wall, mb / m.wall, mb / m.cpu, ratio, m.par, 100 * m.others, same);
}

static int bench_rtn(int reps)
{
    static const int64_t shapes[][2] = { { 4096, 4096 }, { 11008, 4096 } };
    static const struct { int type; int simd; } types[] = {
        { GGML_T_Q4_0, 1 }, { GGML_T_Q8_0, 1 }, { GGML_T_Q4_K, 0 }, { GGML_T_Q6_K, 0 },
    };
    printf("RTN -> ggml blocks: f16 weights -> f32 -> quantize_rows, MB/s of f16 input; best of %d\n", reps);
    printf("SIMD kernels available: %s (AVX2 Q4_0/Q8_0; Q4_K/Q6_K have only the scalar path)\n",
           ggml_quants_have_avx2() ? "yes" : "no");
    printf("%-12s %-5s %-20s %3s %7s %6s %7s %11s %5s %6s  %s\n", "tensor", "type", "path", "thr", "best s",
           "MB/s", "MB/cpus", "ratio", "cpu/s", "others", "output");
    print_rule();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t rows = shapes[s][0], cols = shapes[s][1], n = rows * cols;
        const double mb = (double)n * 2 / 1e6;
        char shape[32];
        snprintf(shape, sizeof shape, "%lldx%lld", (long long)rows, (long long)cols);
        uint16_t *f16 = xmalloc((size_t)n * 2);
        float *f32 = xmalloc((size_t)n * sizeof *f32);
        fill_weights(f32, (size_t)n, 0x5eed0000u + s);
        for (int64_t i = 0; i < n; i++) f16[i] = f32_to_f16(f32[i]);
        meas conv = { 0 };
        for (int r = 0; r < reps; r++) {
            probe p;
            probe_start(&p);
            dtype_to_f32(DT_F16, f16, f32, (size_t)n);
            keep_best(&conv, probe_stop(&p));
        }
        print_rtn_row(shape, "-", "f16->f32 only", 1, conv, mb, "", "");
        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
            const int type = types[t].type;
            const char *tn = ggml_qtype_traits(type)->name;
            rtn_job j = { f16, f32, NULL, rows, cols, type, ggml_row_size(type, cols) };
            uint8_t *ref = xmalloc(j.row_bytes * (size_t)rows), *out = xmalloc(j.row_bytes * (size_t)rows);
            meas mref = { 0 }, msimd = { 0 }, msplit[3] = { { 0 } };
            ggml_quants_force_ref(1);
            j.out = ref;
            for (int r = 0; r < reps; r++) {
                probe p;
                probe_start(&p);
                rtn_whole(&j);
                keep_best(&mref, probe_stop(&p));
            }
            print_rtn_row(shape, tn, "scalar _ref", 1, mref, mb, "1.00x ref", "");
            ggml_quants_force_ref(0);
            if (types[t].simd && ggml_quants_have_avx2()) {
                char ratio[32];
                j.out = out;
                for (int r = 0; r < reps; r++) {
                    memset(out, 0, j.row_bytes * (size_t)rows);
                    probe p;
                    probe_start(&p);
                    rtn_whole(&j);
                    keep_best(&msimd, probe_stop(&p));
                }
                snprintf(ratio, sizeof ratio, "%.2fx ref", mref.wall / msimd.wall);
                print_rtn_row(shape, tn, "SIMD dispatch", 1, msimd, mb, ratio,
                              memcmp(out, ref, j.row_bytes * (size_t)rows) ? "DIFFERS from _ref" : "= _ref bytes");
                // the quantize kernel alone, on the already converted f32 values
                meas mk[2] = { { 0 } };
                for (int simd = 0; simd <= 1; simd++) {
                    ggml_quants_force_ref(!simd);
                    for (int r = 0; r < reps; r++) {
                        memset(out, 0, j.row_bytes * (size_t)rows);
                        probe p;
                        probe_start(&p);
                        ggml_quantize_rows(type, f32, out, rows, cols, NULL);
                        keep_best(&mk[simd], probe_stop(&p));
                    }
                    snprintf(ratio, sizeof ratio, "%.2fx kref", mk[0].wall / mk[simd].wall);
                    print_rtn_row(shape, tn, simd ? "kernel only, SIMD" : "kernel only, _ref", 1, mk[simd], mb, ratio,
                                  memcmp(out, ref, j.row_bytes * (size_t)rows) ? "DIFFERS from _ref" : "= _ref bytes");
                }
                ggml_quants_force_ref(0);
                for (int thr = 1; thr <= 2; thr++) {
                    for (int r = 0; r < reps; r++) {
                        memset(out, 0, j.row_bytes * (size_t)rows);
                        probe p;
                        probe_start(&p);
                        rtn_split(&j, thr);
                        keep_best(&msplit[thr], probe_stop(&p));
                    }
                    snprintf(ratio, sizeof ratio, "%.2fx 1thr", msplit[1].wall / msplit[thr].wall);
                    print_rtn_row(shape, tn, "SIMD, 64-row blocks", thr, msplit[thr], mb, ratio,
                                  memcmp(out, ref, j.row_bytes * (size_t)rows) ? "DIFFERS from _ref" : "= _ref bytes");
                }
            }
            free(ref);
            free(out);
        }
        free(f16);
        free(f32);
        print_rule();
    }
    print_verdict();
    puts("path: 'scalar _ref' and 'SIMD dispatch' are qpack --gguf's per-tensor path (malloc an f32 copy");
    puts("      of the whole tensor, dtype_to_f32, ggml_quantize_rows, free; one thread); '64-row blocks'");
    puts("      splits the same two calls over quant_parallel_for into a preallocated f32 buffer (qpack");
    puts("      does not do this today). 'f16->f32 only' is dtype_to_f32 into a warm buffer; 'kernel only'");
    puts("      is ggml_quantize_rows on those f32 values (MB/s still counts 2 bytes per weight).");
    puts("ratio: time of the scalar _ref run (kref: _ref kernel only; 1thr: the 1-thread split) over this");
    puts("       row's, same process.");
    puts("MB/cpus: MB per CPU-second of this process (what one unshared core would give a 1-thread run).");
    puts("cpu/s: this process's CPU seconds per wall second; others: share of all CPUs used by other");
    puts("       processes during the run (/proc/stat).");
    return 0;
}

/*-*** GPTQ / SparseGPT ***/

/* H [d, d] = 2/n XᵀX for the fixture-like X [n, d] described at the top. */
static float *make_hessian(int64_t d, int64_t n)
{
    enum { K = 16 };
    float *x = xmalloc((size_t)(n * d) * sizeof *x), *z = xmalloc((size_t)(n * K) * sizeof *z);
    float *a = xmalloc((size_t)(K * d) * sizeof *a), *sc = xmalloc((size_t)d * sizeof *sc);
    float *h = xmalloc((size_t)(d * d) * sizeof *h);
    rng_state = 0x4e551a4u;
    for (int64_t i = 0; i < n * K; i++) z[i] = gauss();
    for (int64_t i = 0; i < K * d; i++) a[i] = gauss();
    for (int64_t j = 0; j < d; j++) sc[j] = expf(0.5f * gauss()) * (splitmix64() % 100 == 0 ? 20.0f : 1.0f);
    for (int64_t i = 0; i < n * d; i++) x[i] = 0.5f * gauss();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)d, K, 1.0f, z, K, a, (int)d,
                1.0f, x, (int)d);
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < d; j++) x[t * d + j] *= sc[j];
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)d, (int)n, 2.0f / (float)n, x, (int)d,
                0.0f, h, (int)d);
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = i + 1; j < d; j++) h[j * d + i] = h[i * d + j];
    free(x);
    free(z);
    free(a);
    free(sc);
    return h;
}

/* Safetensors file with tensors in order (spec: /work/shared/specs/safetensors.md):
 * u64 header length, JSON header padded with spaces to 8 bytes, data. */
typedef struct { const char *name, *dtype; int64_t shape[2]; int ndim; const void *data; size_t bytes; } st_item;

static int write_safetensors(const char *path, const st_item *it, int n)
{
    size_t cap = 4096, len = 0, off = 0;
    char *hdr = xmalloc(cap);
    len += (size_t)snprintf(hdr + len, cap - len, "{");
    for (int i = 0; i < n; i++) {
        char shape[64];
        if (it[i].ndim == 2) snprintf(shape, sizeof shape, "[%lld,%lld]", (long long)it[i].shape[0], (long long)it[i].shape[1]);
        else snprintf(shape, sizeof shape, "[%lld]", (long long)it[i].shape[0]);
        len += (size_t)snprintf(hdr + len, cap - len, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%zu,%zu]}",
                                i ? "," : "", it[i].name, it[i].dtype, shape, off, off + it[i].bytes);
        off += it[i].bytes;
    }
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while (len % 8) hdr[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) { free(hdr); return -1; }
    uint8_t le[8];
    for (int b = 0; b < 8; b++) le[b] = (uint8_t)((uint64_t)len >> (8 * b));
    int ok = fwrite(le, 1, 8, f) == 8 && fwrite(hdr, 1, len, f) == len;
    for (int i = 0; ok && i < n; i++) ok = fwrite(it[i].data, 1, it[i].bytes, f) == it[i].bytes;
    ok = (fclose(f) == 0) && ok;
    free(hdr);
    return ok ? 0 : -1;
}

/* DIR/layer.safetensors: model.layers.0.mlp.down_proj.weight f16 [d, d];
 * DIR/stats.safetensors: its .hessian, .n_tokens and .x2_mean (stats.h contract;
 * H here is 2/n XᵀX, a positive scaling of qcal's ΣxxT, which GPTQ ignores). */
static int write_cli_fixture(const char *dir, const float *w, const float *h, int64_t d, int64_t n)
{
    char path[4096];
    const char *wn = "model.layers.0.mlp.down_proj.weight";
    if (mkdir(dir, 0777) && errno != EEXIST) return -1;
    uint16_t *w16 = xmalloc((size_t)(d * d) * 2);
    for (int64_t i = 0; i < d * d; i++) w16[i] = f32_to_f16(w[i]);
    st_item lw = { wn, "F16", { d, d }, 2, w16, (size_t)(d * d) * 2 };
    snprintf(path, sizeof path, "%s/layer.safetensors", dir);
    int rc = write_safetensors(path, &lw, 1);
    free(w16);
    float *x2 = xmalloc((size_t)d * sizeof *x2);
    for (int64_t j = 0; j < d; j++) x2[j] = h[j * d + j] / 2.0f;   // H = 2/n XᵀX: diag/2 = mean x²
    int64_t nt = n;
    char hn[128], tn[128], xn[128];
    snprintf(hn, sizeof hn, "%s.hessian", wn);
    snprintf(tn, sizeof tn, "%s.n_tokens", wn);
    snprintf(xn, sizeof xn, "%s.x2_mean", wn);
    st_item st[3] = {
        { hn, "F32", { d, d }, 2, h, (size_t)(d * d) * sizeof *h },
        { tn, "I64", { 1, 0 }, 1, &nt, sizeof nt },
        { xn, "F32", { d, 0 }, 1, x2, (size_t)d * sizeof *x2 },
    };
    snprintf(path, sizeof path, "%s/stats.safetensors", dir);
    if (rc == 0) rc = write_safetensors(path, st, 3);
    free(x2);
    return rc;
}

static void print_gptq_row(const char *what, int thr, meas m, const char *ratio, const char *note)
{
    note_run(thr, m);
    printf("%-38s %3d %7.2f %7.2f %11s %5.2f %5.0f%%  %s\n", what, thr, m.wall, m.cpu, ratio, m.par,
           100 * m.others, note);
}

static void die_err(const char *what, char *err)
{
    fprintf(stderr, "qbench_quant: %s: %s\n", what, err ? err : "failed");
    free(err);
    exit(1);
}


static int bench_gptq(int reps, int64_t d, int64_t ntok, const char *write_dir, int sparsegpt)
{
    const int64_t rows = d, cols = d, LROWS = 32;
    char what[96], ratio[32];
    double cpu_one[3] = { 0 };   /* 1-thread CPU s: gptq act off, act on, SparseGPT 50 % */
    printf("GPTQ / SparseGPT per %lldx%lld layer; best of %d\n", (long long)rows, (long long)cols, reps);
    probe p;
    probe_start(&p);
    float *h = make_hessian(d, ntok);
    meas mh = probe_stop(&p);
    printf("Hessian: H = 2/n X^T X, X [%lld tokens, %lld]: 16 latent directions + noise, log-normal channel\n"
           "         scales, 1%% outlier channels x20 (as tests/data/gptq); built in %.1f s (not timed below)\n",
           (long long)ntok, (long long)d, mh.wall);
    float *w = xmalloc((size_t)(rows * cols) * sizeof *w), *wp = xmalloc((size_t)(rows * cols) * sizeof *wp);
    fill_weights(w, (size_t)(rows * cols), 0x77e1u);
    if (write_dir) {
        if (write_cli_fixture(write_dir, w, h, d, ntok)) { fprintf(stderr, "qbench_quant: cannot write %s\n", write_dir); return 1; }
        printf("CLI fixture: %s/layer.safetensors, %s/stats.safetensors\n", write_dir, write_dir);
    }
    printf("%-38s %3s %7s %7s %11s %5s %6s  %s\n", "run", "thr", "best s", "cpu s", "ratio", "cpu/s", "others",
           "check");
    print_rule();

    // Hessian inverse alone (dpotrf, dpotri, dpotrf in double) with 1 and 2 BLAS threads
    meas mhv[3] = { { 0 } };
    float *hinv1 = xmalloc((size_t)(cols * cols) * sizeof *hinv1);
    for (int thr = 1; thr <= 2; thr++) {
        int same = 1;
        for (int r = 0; r < reps; r++) {
            gptq_hinv hv;
            char *err = NULL;
            openblas_set_num_threads(thr);
            probe_start(&p);
            if (gptq_hinv_prepare(h, cols, 0.01, 0, &hv, &err)) die_err("hinv", err);
            keep_best(&mhv[thr], probe_stop(&p));
            if (thr == 1 && r == 0) memcpy(hinv1, hv.hinv, (size_t)(cols * cols) * sizeof *hinv1);
            else same &= !memcmp(hinv1, hv.hinv, (size_t)(cols * cols) * sizeof *hinv1);
            gptq_hinv_free(&hv);
        }
        snprintf(ratio, sizeof ratio, "%.2fx 1thr", mhv[1].wall / mhv[thr].wall);
        print_gptq_row("  part: Hessian inverse, BLAS threads", thr, mhv[thr], ratio,
                       thr == 1 ? "" : same ? "= 1-thread bytes" : "DIFFERS from 1 thread");
    }
    free(hinv1);
    openblas_set_num_threads(1);   // for everything below (see the note printed at the end)

    // RTN reference loss on the first rows, same grid
    quant_grid g;
    quant_grid_default(&g);
    uint8_t *rc = xmalloc((size_t)(LROWS * cols));
    float *rs = xmalloc((size_t)(LROWS * cols) * sizeof *rs), *rz = xmalloc((size_t)(LROWS * cols) * sizeof *rz);
    float *rq = xmalloc((size_t)(LROWS * cols) * sizeof *rq);
    char *err = NULL;
    if (quant_rtn(&g, NULL, w, LROWS, cols, rc, rs, rz, rq, 1, &err)) die_err("rtn", err);
    const double loss_rtn = gptq_proxy_loss(w, rq, h, LROWS, cols);
    free(rc); free(rs); free(rz); free(rq);

    for (int act = 0; act <= 1; act++) {
        meas m[3] = { { 0 } };
        gptq_result r1 = { 0 };
        double l1 = 0;
        int same = 1;
        for (int thr = 1; thr <= 2; thr++) {
            for (int r = 0; r < reps; r++) {
                gptq_opts o;
                gptq_opts_default(&o);
                o.grid.act_order = act;
                o.threads = thr;
                gptq_result res;
                probe_start(&p);
                if (gptq_quantize(w, rows, cols, h, &o, &res, &err)) die_err("gptq", err);
                keep_best(&m[thr], probe_stop(&p));
                if (!r1.codes) {
                    r1 = res;
                    l1 = gptq_proxy_loss(w, r1.q, h, LROWS, cols);
                } else {
                    same &= !memcmp(res.codes, r1.codes, (size_t)(rows * cols))
                         && !memcmp(res.q, r1.q, (size_t)(rows * cols) * sizeof *res.q);
                    gptq_result_free(&res);
                }
            }
            snprintf(what, sizeof what, "qgptq 4-bit g128 act-order %s", act ? "on" : "off");
            snprintf(ratio, sizeof ratio, "%.2fx 1thr", m[1].wall / m[thr].wall);
            char note[96];
            if (thr == 1) snprintf(note, sizeof note, "loss/RTN %.3f (first %lld rows)", l1 / loss_rtn, (long long)LROWS);
            else snprintf(note, sizeof note, "%s", same ? "= 1-thread bytes" : "DIFFERS from 1 thread");
            print_gptq_row(what, thr, m[thr], ratio, note);
        }
        cpu_one[act] = m[1].cpu;
        gptq_result_free(&r1);
    }

    if (!sparsegpt) {
        puts("SparseGPT: not run (--no-sparsegpt)");
    } else {
        static const struct { const char *name; double ratio; int n, m; } pats[] = {
            { "50% unstructured", 0.5, 0, 0 }, { "2:4", 0.0, 2, 4 },
        };
        float *p1 = xmalloc((size_t)(rows * cols) * sizeof *p1);
        for (size_t k = 0; k < sizeof pats / sizeof pats[0]; k++) {
            meas m[3] = { { 0 } };
            int same = 1;
            double l1 = 0;
            for (int thr = 1; thr <= (pats[k].m ? 1 : 2); thr++) {
                for (int r = 0; r < reps; r++) {
                    prune_opts o;
                    prune_opts_default(&o);
                    o.method = PRUNE_SPARSEGPT;
                    o.ratio = pats[k].ratio;
                    o.nm_n = pats[k].n;
                    o.nm_m = pats[k].m;
                    o.threads = thr;
                    prune_stats st = { NULL, ntok, h };
                    memcpy(wp, w, (size_t)(rows * cols) * sizeof *wp);
                    probe_start(&p);
                    if (prune_matrix(&o, wp, rows, cols, &st, NULL, &err)) die_err("sparsegpt", err);
                    keep_best(&m[thr], probe_stop(&p));
                    if (thr == 1 && r == 0) {
                        memcpy(p1, wp, (size_t)(rows * cols) * sizeof *p1);
                        l1 = gptq_proxy_loss(w, p1, h, LROWS, cols);
                    } else {
                        same &= !memcmp(wp, p1, (size_t)(rows * cols) * sizeof *wp);
                    }
                }
                snprintf(what, sizeof what, "SparseGPT %s", pats[k].name);
                snprintf(ratio, sizeof ratio, "%.2fx 1thr", m[1].wall / m[thr].wall);
                char note[96];
                if (thr == 1) {
                    int64_t z = 0;
                    for (int64_t i = 0; i < rows * cols; i++) z += p1[i] == 0.0f;
                    snprintf(note, sizeof note, "zeros %.1f%%, loss/RTN4 %.2f", 100.0 * (double)z / (double)(rows * cols),
                             l1 / loss_rtn);
                } else {
                    snprintf(note, sizeof note, "%s", same ? "= 1-thread bytes" : "DIFFERS from 1 thread");
                }
                print_gptq_row(what, thr, m[thr], ratio, note);
            }
            if (k == 0) cpu_one[2] = m[1].cpu;
        }
        free(p1);
    }
    print_rule();
    {   // Amdahl: the Hessian inverse (1 BLAS thread) is serial, the row blocks split over 2 CPUs
        const double hc = mhv[1].cpu;
        printf("2-CPU bound, Hessian inverse serial (%.2f CPU s per layer): qgptq act-order off %.2fx,"
               " on %.2fx", hc, cpu_one[0] / (hc + (cpu_one[0] - hc) / 2), cpu_one[1] / (hc + (cpu_one[1] - hc) / 2));
        if (cpu_one[2] > 0) printf(", SparseGPT 50%% %.2fx", cpu_one[2] / (hc + (cpu_one[2] - hc) / 2));
        printf("\n");
    }
    print_verdict();
    puts("qgptq: gptq_quantize (Hessian inverse + lazy-block column loop over 32-row blocks), int 4-bit,");
    puts("       group 128, asym, block 128, damp 0.01. SparseGPT: prune_matrix, block 128, damp 0.01.");
    puts("       thr = the engines' row-block threads; the Hessian inverse inside runs with 1 BLAS thread");
    puts("       (as qgptq/qprune do for every tensor after the first: the engines set OpenBLAS to 1).");
    puts("cpu s: CPU seconds of this process (robust to sharing for 1-thread runs).");
    puts("loss/RTN: tr(dW H dW^T) over the first 32 rows, relative to 4-bit g128 RTN (sanity, not a target).");
    free(w);
    free(wp);
    free(h);
    return 0;
}

static void usage(void)
{
    fputs("usage: qbench_quant rtn [--reps N]\n"
          "       qbench_quant gptq [--reps N] [--dim D] [--tokens N] [--write DIR] [--no-sparsegpt]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2) usage();
    int reps = 1, sparsegpt = 1;
    long dim = 4096, tokens = 4096;
    const char *write_dir = NULL;
    for (int a = 2; a < argc; a++) {
        const char *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (!strcmp(argv[a], "--reps") && v) { reps = atoi(v); a++; }
        else if (!strcmp(argv[a], "--dim") && v) { dim = atol(v); a++; }
        else if (!strcmp(argv[a], "--tokens") && v) { tokens = atol(v); a++; }
        else if (!strcmp(argv[a], "--write") && v) { write_dir = v; a++; }
        else if (!strcmp(argv[a], "--no-sparsegpt")) sparsegpt = 0;
        else usage();
    }
    if (reps < 1 || reps > 100 || dim < 128 || dim % 128 || tokens < dim) usage();
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(argv[1], "rtn")) return bench_rtn(reps);
    if (!strcmp(argv[1], "gptq")) return bench_gptq(reps, dim, tokens, write_dir, sparsegpt);
    usage();
    return 2;
}
