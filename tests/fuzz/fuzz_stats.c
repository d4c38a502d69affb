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

static void lookups(const stats *st, const char *weight)
{
    static const char *what[] = { "hessian", "x2_mean", "xabs_mean", "absmax", "n_tokens" };
    for (size_t i = 0; i < sizeof what / sizeof *what; i++) {
        size_t n = 0;
        const float *v = stats_get(st, weight, what[i], &n);
        if (v && n) fz_sink += fz_fbits(v[n - 1]);
    }
    fz_sink += (unsigned)stats_tokens(st, weight);
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

/* Finding 3 (README.md): stats.c formats its "not a stats stream (kind
 * '%s')" message after freeing the header that holds the kind string. Until
 * that is fixed, campaigns run with FUZZ_SKIP_KNOWN=1 skip streams that do
 * not say kind "stats" (so the fuzzer can look elsewhere); the replay never
 * sets it, so regress/stats/uaf-kind-message.qs keeps reproducing it. */
static int skip_known(const uint8_t *data, size_t size)
{
    static int skip = -1;
    if (skip < 0) skip = getenv("FUZZ_SKIP_KNOWN") != NULL;
    if (!skip || size < 8 || memcmp(data, "\xa7qstream", 8) != 0) return 0;
    char path[64];
    int fd = fz_memfile(data, size, path, sizeof path);
    char *err = NULL;
    qs_reader *r = qs_reader_open_fd(fd, "fuzz", &err);
    free(err);
    if (!r) { close(fd); return 0; }
    const char *kind = json_string_value(json_object_get(qs_reader_header(r)->meta, "kind"));
    int bad = kind && strcmp(kind, "stats") != 0;
    qs_reader_close(r);
    return bad;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (skip_known(data, size)) return 0;
    try_stats(data, size);
    uint8_t *fixed = malloc(size ? size : 1);
    memcpy(fixed, data, size);
    if (qs_fix_checksums(fixed, size)) try_stats(fixed, size);
    free(fixed);
    return 0;
}
