/* qgen — a tests-only generator of seed-reproducible safetensors checkpoints.
 *
 *   qgen --size 2GB --largest 256MB [--dtype f16] [--seed S] -o big.safetensors
 *
 * Writes one tensor of --largest bytes and then tensors of 64 MiB (or less)
 * until --size is reached, with pseudo-random values from a xorshift seeded by
 * --seed, so the benchmark's input is the same on every machine. Memory: one
 * 4 MiB buffer.
 */
#include "cli.h"
#include "dtype.h"
#include "qstream.h"
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: qgen --size SIZE [--largest SIZE] [--dtype f32|f16|bf16] [--seed N] -o FILE.safetensors\n";

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

int main(int argc, char **argv)
{
    proginit(&argc, argv, "qgen", usage);
    uint64_t size = 0, largest = 0, seed = 1;
    qdtype dt = DT_F16;
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--size") && v) size = parse_size("--size", argv[++i]);
        else if (!strcmp(argv[i], "--largest") && v) largest = parse_size("--largest", argv[++i]);
        else if (!strcmp(argv[i], "--seed") && v) seed = (uint64_t)parse_long("--seed", argv[++i], 1, 1L << 62);
        else if (!strcmp(argv[i], "--dtype") && v) dt = dtype_from_name(argv[++i]);
        else if (!strcmp(argv[i], "-o") && v) out = argv[++i];
        else usage_error("unknown option '%s'", argv[i]);
    }
    if (!size || !out || (dt != DT_F32 && dt != DT_F16 && dt != DT_BF16)) usage_error("need --size, -o and a float dtype");
    if (!largest) largest = size < (64u << 20) ? size : (64u << 20);
    /* tensors: [cols=4096] rows so each is a matrix */
    const int64_t cols = 4096;
    uint64_t row_bytes = (uint64_t)cols * dtype_size(dt), left = size;
    int n = 0;
    qs_tensor *ts = NULL;
    while (left >= row_bytes) {
        uint64_t want = n == 0 ? largest : (64u << 20);
        if (want > left) want = left;
        int64_t shape[2] = { (int64_t)(want / row_bytes), cols };
        ts = realloc(ts, (size_t)(n + 1) * sizeof *ts);
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", n);
        qs_tensor_init(&ts[n], name, dt, 2, shape);
        left -= qs_tensor_nbytes(&ts[n]);
        n++;
    }
    const qs_tensor **tp = malloc((size_t)n * sizeof *tp);
    for (int i = 0; i < n; i++) tp[i] = &ts[i];
    uint64_t *offs = malloc((size_t)n * sizeof *offs);
    size_t hl;
    char *err = NULL;
    char *hdr = st_build_header(tp, n, NULL, offs, &hl, &err);
    if (!hdr) die_free(err);
    out_file o;
    out_create(&o, out);
    write_or_die(o.fd, hdr, hl, out);
    enum { BUF = 1 << 20 };
    static float f[BUF];
    static uint16_t h[BUF];
    uint64_t s = seed * 0x9E3779B97F4A7C15ull | 1;
    /* the layout sorts tensors by name: write them in file-offset order */
    for (uint64_t at = hl; at < hl + size - left;) {
        int i = 0;
        while (offs[i] != at) i++;
        at += qs_tensor_nbytes(&ts[i]);
        uint64_t nel = qs_tensor_nbytes(&ts[i]) / dtype_size(dt);
        for (uint64_t done = 0; done < nel;) {
            size_t m = nel - done < BUF ? (size_t)(nel - done) : BUF;
            for (size_t q = 0; q < m; q++)
                f[q] = (float)((int64_t)(rng_next(&s) >> 40) - (1 << 23)) * 0x1p-30f;
            if (dt == DT_F32) write_or_die(o.fd, f, m * 4, out);
            else { dtype_from_f32(dt, f, h, m); write_or_die(o.fd, h, m * 2, out); }
            done += m;
        }
    }
    out_commit(&o);
    printf("%s: %d tensors, %llu bytes\n", out, n, (unsigned long long)(hl + size - left));
    return 0;
}
