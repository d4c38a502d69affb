/* fuzz_stats — libFuzzer target for the calibration-stats loader
 * (common/stats.c, stats_open): the input is a stats file, either a qstream
 * (read as given and again with its checksums fixed up, qs_fixup.h) or a
 * safetensors copy. Every lookup the consumers make is then tried on the
 * names present (and on aliases, which may form chains or cycles).
 */
#include "fuzz.h"

#include "qs_fixup.h"
#include "qstream.h"
#include "stats.h"

static void lookups(stats *st, const char *weight)
{
    static const char *what[] = { "hessian", "x2_mean", "xabs_mean", "absmax", "n_tokens" };
    for (size_t i = 0; i < sizeof what / sizeof *what; i++) {
        size_t n = 0;
        const float *v = stats_get(st, weight, what[i], &n);
        if (v && n) fz_sink += fz_fbits(v[n - 1]);
    }
    fz_sink += (unsigned)stats_tokens(st, weight);
    size_t n = 0;
    fz_sink += (unsigned)stats_has(st, weight, "hessian", &n) + (unsigned)n;
    stats_evict(st, weight);     /* then read again: the lazy path twice */
    const float *h = stats_get(st, weight, "hessian", &n);
    if (h && n) fz_sink += fz_fbits(h[0]);
    stats_evict(st, NULL);
}

static void try_stats(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fz_memfile(data, size, path, sizeof path);
    char *err = NULL;
    stats *st = stats_open(path, &err);
    fz_check_error(st, err, "stats_open");
    if (st) {
        lookups(st, "l.weight");
        lookups(st, "k.weight");
        lookups(st, "model.layers.0.self_attn.q_proj.weight");
        lookups(st, "");
        stats_close(st);
    }
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    try_stats(data, size);
    uint8_t *fixed = malloc(size ? size : 1);
    memcpy(fixed, data, size);
    if (qs_fix_checksums(fixed, size)) try_stats(fixed, size);
    free(fixed);
    return 0;
}
