/* qcal — calibration statistics of every linear layer's input, as a stats
 * qstream (the contract of common/stats.h; tensors described in calib.h).
 *
 * Window sampling (deterministic, so anyone can reproduce the statistics):
 *   tokens = [BOS] + encode(whole text), or the --tokens file as given.
 *   --samples all (default): every consecutive window exactly as qeval cuts
 *     them: non-overlapping windows of --seqlen tokens from token 0, the last
 *     partial window kept when it has >= 2 tokens.
 *   --samples N: N windows of exactly --seqlen tokens starting at offsets
 *     off_i = splitmix64_i(seed) mod (n_tokens - seqlen + 1), i = 1..N, where
 *     splitmix64_i is the i-th output of Vigna's SplitMix64 with state = seed
 *     (state += 0x9e3779b97f4a7c15; z = state; z = (z ^ z>>30) * 0xbf58476d1ce4e5b9;
 *     z = (z ^ z>>27) * 0x94d049bb133111eb; z ^= z>>31). Windows may overlap, as in
 *     GPTQ's datautils.py (random windows of the concatenated token stream).
 * Each window is one forward pass from position 0 (no context across windows).
 */
#include "calib.h"
#include "cli.h"
#include "llama.h"
#include "qstream.h"
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>
#include <utf8proc.h>

static const char usage[] =
    "usage: qcal MODEL (--text FILE | --tokens FILE.u32) [options] -o cal.qs\n"
    "  Run MODEL on calibration windows and write, per linear weight W, the input\n"
    "  statistics W.hessian (sum of x x^T, f64-accumulated), W.n_tokens, W.x2_mean,\n"
    "  W.xabs_mean, W.absmax and activation ranges/histograms as a stats qstream.\n"
    "  q/k/v and gate/up share one input: stored once, the other names are aliases.\n"
    "  MODEL: checkpoint (dir, .safetensors, ...) or qstream file, '-' = stdin\n"
    "options:\n"
    "  --text FILE        calibration text (tokenized with the model's tokenizer.json)\n"
    "  --tokens FILE      token ids, uint32 little-endian, used as given\n"
    "  --samples N|all    N random windows, or all consecutive windows (default all)\n"
    "  --seqlen L         window length (default 256)\n"
    "  --seed S           seed of the window offsets for --samples N (default 0)\n"
    "  --bins B           activation histogram bins, a power of two (default 2048)\n"
    "  --threads N        threads (default: all CPUs; output identical for any N)\n"
    "  -o FILE            output (written atomically); '-' or absent = stdout\n"
    "  -f, --force        write the stream even to a terminal\n"
    "  -q, -v, --progress, --help, --version\n"
    "examples:\n"
    "  qcal model/ --text calib.txt -o cal.qs\n"
    "  qcal model/ --text calib.txt --samples 128 --seqlen 512 --seed 1 -o cal.qs\n";

struct cmdline {
    const char *model, *text, *tokens, *out;
    long samples;               /* 0 = all */
    int seqlen, bins, threads, force;
    uint64_t seed;
};

static void parse_cmdline(int argc, char **argv, struct cmdline *c)
{
    memset(c, 0, sizeof *c);
    c->seqlen = 256;
    c->bins = 2048;
    c->threads = default_threads();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "--text") && v) c->text = v;
        else if (!strcmp(a, "--tokens") && v) c->tokens = v;
        else if (!strcmp(a, "-o") && v) c->out = v;
        else if (!strcmp(a, "--samples") && v) c->samples = strcmp(v, "all") ? parse_long("--samples", v, 1, 1 << 24) : 0;
        else if (!strcmp(a, "--seqlen") && v) c->seqlen = (int)parse_long("--seqlen", v, 2, 1 << 20);
        else if (!strcmp(a, "--bins") && v) c->bins = (int)parse_long("--bins", v, 16, 1 << 20);
        else if (!strcmp(a, "--seed") && v) c->seed = (uint64_t)parse_long("--seed", v, 0, INT64_MAX);
        else if (!strcmp(a, "--threads") && v) c->threads = (int)parse_long("--threads", v, 1, 1024);
        else {
            takes = 0;
            if (!strcmp(a, "-f") || !strcmp(a, "--force")) c->force = 1;
            else if (a[0] == '-' && a[1]) usage_error("unknown option '%s' (or missing value)", a);
            else if (c->model) usage_error("one model only ('%s' and '%s')", c->model, a);
            else c->model = a;
        }
        i += takes;
    }
    if (!c->model) usage_error("no model given");
    if (!c->text == !c->tokens) usage_error("give exactly one of --text FILE and --tokens FILE");
    if (c->bins & (c->bins - 1)) usage_error("--bins: %d is not a power of two", c->bins);
    if (c->out && !strcmp(c->out, "-")) c->out = NULL;
    if (c->out && !strcmp(c->model, c->out)) usage_error("the output would overwrite the model");
}

/* ------------------------------------------------------------------------
 * Tokens */

static uint32_t *tokens_from_file(const char *path, int *n)
{
    size_t len;
    uint8_t *d = read_file_or_die(path, &len);
    if (len == 0 || len % 4 || len / 4 > (1u << 30))
        die("%s: %zu bytes is not a non-empty list of uint32 ids", path, len);
    uint32_t *ids = malloc(len);
    for (size_t i = 0; i < len / 4; i++)
        ids[i] = (uint32_t)d[4 * i] | (uint32_t)d[4 * i + 1] << 8 | (uint32_t)d[4 * i + 2] << 16 |
                 (uint32_t)d[4 * i + 3] << 24;
    free(d);
    *n = (int)(len / 4);
    return ids;
}

static uint32_t *tokens_from_text(const char *path, const qs_header *h, int bos, int *n)
{
    size_t len;
    char *text = read_file_or_die(path, &len);
    if (len == 0)
        die("%s: empty text", path);
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0)
            die("%s: invalid UTF-8 at byte %zu", path, i);
        i += (size_t)k;
    }
    const qs_file *tj = qs_header_file(h, "tokenizer.json"), *tc = qs_header_file(h, "tokenizer_config.json");
    if (!tj)
        die("the model carries no tokenizer.json (give token ids with --tokens)");
    char *err = NULL;
    tokenizer *tk = tokenizer_load((const char *)tj->data, tj->len, tc ? (const char *)tc->data : NULL,
                                   tc ? tc->len : 0, &err);
    if (!tk)
        die("tokenizer.json: %s", err);
    uint32_t *ids = NULL;
    int64_t k = tokenizer_encode(tk, text, len, 0, &ids, &err);
    if (k < 0)
        die("%s: %s", path, err);
    if (k == 0)
        die("%s: empty text (no tokens)", path);
    if (tokenizer_bos(tk) >= 0)
        bos = tokenizer_bos(tk);
    tokenizer_free(tk);
    free(text);
    int off = bos >= 0;
    uint32_t *out = malloc((size_t)(k + 1) * sizeof *out);
    if (off)
        out[0] = (uint32_t)bos;
    memcpy(out + off, ids, (size_t)k * sizeof *ids);
    free(ids);
    *n = (int)k + off;
    return out;
}

/* ------------------------------------------------------------------------
 * Windows */

typedef struct { int off, len; } window;

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The windows of the sampling rule in the file header. */
static window *windows_make(const struct cmdline *c, int n, int *nw)
{
    window *w;
    if (c->samples == 0) {
        w = malloc(((size_t)n / c->seqlen + 1) * sizeof *w);
        *nw = 0;
        for (int off = 0; off < n; off += c->seqlen) {
            int len = n - off < c->seqlen ? n - off : c->seqlen;
            if (len >= 2)
                w[(*nw)++] = (window){ off, len };
        }
        if (!*nw)
            die("%d token: nothing to calibrate on", n);
        return w;
    }
    if (n < c->seqlen)
        die("only %d tokens, fewer than --seqlen %d: use a longer text, a shorter --seqlen or --samples all",
            n, c->seqlen);
    uint64_t state = c->seed, span = (uint64_t)(n - c->seqlen + 1);
    w = malloc((size_t)c->samples * sizeof *w);
    for (long i = 0; i < c->samples; i++)
        w[i] = (window){ (int)(splitmix64(&state) % span), c->seqlen };
    *nw = (int)c->samples;
    return w;
}

/* ------------------------------------------------------------------------ */

static void write_stats(const struct cmdline *c, const calib *cal, json_t *info, int argc, char **argv)
{
    qs_header h;
    qs_header_init(&h);
    json_object_set_new(h.meta, "kind", json_string("stats"));
    json_object_set_new(h.meta, "calibration", info);
    qs_header_add_provenance(&h, "qcal", QPIPE_VERSION, argc, argv);
    char *err = NULL;
    if (calib_manifest(cal, &h, &err) < 0)
        die_free(err);
    out_file o;
    int fd = 1;
    if (c->out) {
        out_create(&o, c->out);
        fd = o.fd;
    } else if (!c->force) {
        refuse_tty(1, "the stats stream");
    }
    qs_writer *w = qs_writer_open_fd(fd, &h, 0, &err);
    if (!w)
        die_free(err);
    if (calib_write(cal, w, &err) < 0) {
        exit_if_epipe(qs_writer_errno(w));
        qs_writer_close(w, NULL);
        die_free(err);
    }
    int werr = qs_writer_errno(w);
    if (qs_writer_close(w, &err) < 0) {
        exit_if_epipe(werr);
        die_free(err);
    }
    if (c->out)
        out_commit(&o);
    qs_header_clear(&h);
}

int main(int argc, char **argv)
{
    proginit(&argc, argv, "qcal", usage);
    struct cmdline c;
    parse_cmdline(argc, argv, &c);
    char *err = NULL;
    qs_header mh;
    llama_model *m = llama_open(c.model, &mh, &err);
    if (!m)
        die_free(err);
    const llama_config *cfg = llama_model_config(m);
    if (c.seqlen > cfg->max_pos)
        die("--seqlen %d exceeds the model's max_position_embeddings %d", c.seqlen, cfg->max_pos);
    int n;
    uint32_t *tok = c.tokens ? tokens_from_file(c.tokens, &n) : tokens_from_text(c.text, &mh, cfg->bos, &n);
    int nw;
    window *win = windows_make(&c, n, &nw);
    calib *cal = calib_new(c.bins, &err);
    llama_state *st = cal ? llama_state_new(m, c.seqlen, c.seqlen, &err) : NULL;
    if (!st)
        die_free(err);
    llama_set_threads(m, c.threads);
    llama_set_hook(m, calib_hook, cal);
    int64_t total = 0;
    progress_start((uint64_t)nw, 0);
    for (int i = 0; i < nw; i++) {
        llama_state_reset(st);
        if (llama_eval(m, st, tok + win[i].off, win[i].len, NULL, 0, &err) < 0)
            die("window %d (tokens %d..%d): %s", i, win[i].off, win[i].off + win[i].len - 1, err);
        total += win[i].len;
        progress_update((uint64_t)i + 1, 0);
    }
    progress_end();
    info_msg("%d windows, %lld tokens, %d distinct linear inputs", nw, (long long)total, calib_groups(cal));
    json_t *info = json_pack("{s:s,s:s,s:s,s:I,s:i,s:i,s:I,s:I,s:i}", "model", c.model, "data",
                             c.text ? c.text : c.tokens, "sampling", c.samples ? "random" : "all", "samples",
                             (json_int_t)c.samples, "seqlen", c.seqlen, "windows", nw, "input_tokens",
                             (json_int_t)n, "tokens", (json_int_t)total, "bins", c.bins);
    if (c.samples)
        json_object_set_new(info, "seed", json_integer((json_int_t)c.seed));
    write_stats(&c, cal, info, argc, argv);
    llama_state_free(st);
    calib_free(cal);
    free(win);
    free(tok);
    qs_header_clear(&mh);
    llama_free(m);
    close_stdout_or_die();
    return EXIT_OK;
}
