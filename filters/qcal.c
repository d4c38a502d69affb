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
 *
 * Two evaluation orders, giving byte-identical statistics (each statistic
 * sums its windows in window order either way; llama.h):
 *   default: the model is loaded whole (f32) and the windows run one after
 *     the other through all layers; every linear input's statistics stay in
 *     memory until the end. Peak ≈ all weights × 4 bytes/param + Σ over all
 *     distinct inputs of d_in² × 8 (the f64 Hessians; for a 7B Llama about
 *     43 GB of them, 3x the bf16 weights) + one window's activations.
 *   --stream-layers: the model is never loaded whole. All windows go through
 *     the embedding, then through layer 0 (its weights read, run, freed),
 *     then layer 1, ...; the hidden states of every window are kept between
 *     layers, and each layer's statistics are written to the output as soon
 *     as the layer is done, then freed. Peak ≈ one layer's weights × 4
 *     bytes/param + B × hidden_size × 4 (B = Σ window lengths; the hidden
 *     states) + one layer's Hessians (d_in² × 8 for q/k/v, o, gate/up and
 *     down) + the largest tensor while it is converted. Reads each tensor
 *     once (pread, or a stream spooling what comes early: llama.h), so it
 *     costs no time; its price is the B × hidden_size × 4 of hidden states,
 *     which for long calibration sets of a small model can exceed the
 *     statistics it saves. qcal -v prints both estimates.
 */
#include "calib.h"
#include "cli.h"
#include "plan.h"
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
    "  --dry-run          print the windows, peak memory (both modes) and a time estimate\n"
    "                     from the config and the text; load no weights, write nothing\n"
    "  --stream-layers    never load the whole model: run all windows one layer at a\n"
    "                     time and write each layer's statistics when it is done\n"
    "                     (same output; memory ~ one layer + windows x seqlen x hidden x 4)\n"
    "  -o FILE            output (written atomically); '-' or absent = stdout\n"
    "  -f, --force        write the stream even to a terminal\n"
    "  -q, -v, --progress, --help, --version\n"
    "examples:\n"
    "  qcal model/ --text calib.txt -o cal.qs\n"
    "  qcal model/ --text calib.txt --samples 128 --seqlen 512 --seed 1 -o cal.qs\n";

struct cmdline {
    const char *model, *text, *tokens, *out;
    long samples;               /* 0 = all */
    int seqlen, bins, threads, force, stream, dry_run;
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
            else if (!strcmp(a, "--stream-layers")) c->stream = 1;
            else if (!strcmp(a, "--dry-run")) c->dry_run = 1;
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
    if (len == 0 || len % 4 || len / 4 > (1u << 30)) {
        free(d);   /* dead at die(): valgrind would call it lost */
        die("%s: %zu bytes is not a non-empty list of uint32 ids", path, len);
    }
    uint32_t *ids = malloc(len);
    if (!ids) die("%s: out of memory for %zu token ids", path, len / 4);
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

/* The stats stream being written: opened before the run in --stream-layers
 * (each layer's statistics are written as it completes), after it otherwise. */
typedef struct {
    out_file o;
    int to_file;
    qs_header h;
    qs_writer *w;
} stats_out;

static void stats_begin(stats_out *so, const struct cmdline *c, const calib *cal, json_t *info, int argc,
                        char **argv)
{
    qs_header_init(&so->h);
    json_object_set_new(so->h.meta, "kind", json_string("stats"));
    json_object_set_new(so->h.meta, "calibration", info);
    add_provenance_or_die(&so->h, argc, argv);
    char *err = NULL;
    if (calib_manifest(cal, &so->h, &err) < 0)
        die_free(err);
    int fd = 1;
    so->to_file = c->out != NULL;
    if (c->out) {
        out_create(&so->o, c->out);
        fd = so->o.fd;
    } else if (!c->force) {
        refuse_tty(1, "the stats stream");
    }
    if (!(so->w = qs_writer_open_fd(fd, &so->h, 0, &err)))
        die_free(err);
}

/* Write what is complete (all: at the end). */
static void stats_write(stats_out *so, calib *cal, int all)
{
    char *err = NULL;
    if ((all ? calib_write(cal, so->w, &err) : calib_flush(cal, so->w, &err)) < 0) {
        exit_if_epipe(qs_writer_errno(so->w));
        qs_writer_close(so->w, NULL);
        die_free(err);
    }
}

static void stats_end(stats_out *so, calib *cal)
{
    stats_write(so, cal, 1);
    char *err = NULL;
    int werr = qs_writer_errno(so->w);
    if (qs_writer_close(so->w, &err) < 0) {
        exit_if_epipe(werr);
        die_free(err);
    }
    if (so->to_file)
        out_commit(&so->o);
    qs_header_clear(&so->h);
}

/* Default order: each window through the whole (in-memory) model. */
static void run_windows(llama_model *m, const uint32_t *tok, const window *win, int nw, int seqlen)
{
    char *err = NULL;
    llama_state *st = llama_state_new(m, seqlen, seqlen, &err);
    if (!st)
        die_free(err);
    progress_start((uint64_t)nw, 0);
    for (int i = 0; i < nw; i++) {
        llama_state_reset(st);
        if (llama_eval(m, st, tok + win[i].off, win[i].len, NULL, 0, &err) < 0)
            die("window %d (tokens %d..%d): %s", i, win[i].off, win[i].off + win[i].len - 1, err);
        progress_update((uint64_t)i + 1, 0);
    }
    progress_end();
    llama_state_free(st);
}

/* --stream-layers: all windows through one layer at a time, each layer's
 * statistics written when it is done. */
static void run_layers(llama_model *m, const uint32_t *tok, const window *win, int nw, calib *cal,
                       stats_out *so)
{
    const llama_config *cfg = llama_model_config(m);
    int *off = malloc((size_t)nw * sizeof *off), *len = malloc((size_t)nw * sizeof *len);
    if (!off || !len)
        die("out of memory");
    for (int i = 0; i < nw; i++) {
        off[i] = win[i].off;
        len[i] = win[i].len;
    }
    char *err = NULL;
    llama_batch *b = llama_batch_new(m, tok, off, len, nw, &err);
    if (!b)
        die("%s", err);
    info_msg("hidden states of %d windows: %.1f MiB", nw, (double)llama_batch_bytes(b) / 1048576.0);
    progress_start((uint64_t)cfg->n_layers + 1, 0);
    size_t peak_stats = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (llama_batch_layer(m, b, l, &err) < 0) {
            llama_batch_free(b);
            llama_free(m);              /* joins the worker threads before exit */
            die("layer %d: %s", l, err);
        }
        if (calib_bytes(cal) > peak_stats)
            peak_stats = calib_bytes(cal);
        stats_write(so, cal, 0);
        progress_update((uint64_t)l + 1, 0);
    }
    for (int i = 0; !cfg->tied && i < nw; i++)
        if (llama_batch_logits(m, b, i, NULL, &err) < 0) {
            llama_batch_free(b);
            llama_free(m);
            die("head, window %d: %s", i, err);
        }
    if (llama_finish(m, &err) < 0) {
        llama_batch_free(b);
        llama_free(m);
        die_free(err);
    }
    progress_end();
    info_msg("statistics in memory at most %.1f MiB (one layer)", (double)peak_stats / 1048576.0);
    llama_batch_free(b);
    free(off);
    free(len);
}

/* Peak estimates of the two orders (bytes), for -v. */
/* Peak memory of both modes and the arithmetic of a run over `total` tokens:
 * -v prints the memory before a run, --dry-run the whole plan instead of one. */
static void print_estimates(const llama_config *c, int64_t total, int threads, int dry_run)
{
    double qd = (double)c->n_heads * c->head_dim, kvd = (double)c->n_kv_heads * c->head_dim;
    double layer = 2.0 * c->dim * qd + 2.0 * c->dim * kvd + 3.0 * c->dim * c->hidden + 2.0 * c->dim;
    double head = (double)c->vocab * c->dim * (c->tied ? 1 : 2);
    /* Hessian elements per layer: q/k/v and gate/up read dim, o q_dim, down hidden */
    double hess = 2.0 * c->dim * c->dim + qd * qd + (double)c->hidden * c->hidden;
    double all = (layer * c->n_layers + head) * 4 + (hess * c->n_layers + (c->tied ? 0 : (double)c->dim * c->dim)) * 8;
    double one = layer * 4 + hess * 8 + (double)total * c->dim * 4;
    info_msg("estimated peak: %.0f MiB whole model in memory, %.0f MiB with --stream-layers",
             all / 1048576.0, one / 1048576.0);
    if (!dry_run) return;
    /* forward: 2 flops per weight per token; Hessians: dsyrk, d² per token per input */
    double flops = 2.0 * (layer * c->n_layers + (double)c->vocab * c->dim) * (double)total
                   + hess * c->n_layers * (double)total;
    printf("qcal --dry-run: %lld tokens through %d layers\n", (long long)total, c->n_layers);
    printf("  peak memory  ~ %.0f MiB (whole model), %.0f MiB (--stream-layers)\n", all / 1048576.0,
           one / 1048576.0);
    printf("  time         ~ %.1f s (%.3g flops at %.0f GFLOP/s x %d threads)\n",
           flops / (PLAN_GFLOPS * 1e9 * threads), flops, PLAN_GFLOPS, threads);
}

int main(int argc, char **argv)
{
    proginit(&argc, argv, "qcal", usage);
    struct cmdline c;
    parse_cmdline(argc, argv, &c);
    char *err = NULL;
    qs_header mh;
    llama_model *m = c.stream || c.dry_run ? llama_open_streamed(c.model, &mh, &err) : llama_open(c.model, &mh, &err);
    if (!m)
        die_free(err);
    const llama_config *cfg = llama_model_config(m);
    if (c.seqlen > cfg->max_pos)
        die("--seqlen %d exceeds the model's max_position_embeddings %d", c.seqlen, cfg->max_pos);
    int n;
    uint32_t *tok = c.tokens ? tokens_from_file(c.tokens, &n) : tokens_from_text(c.text, &mh, cfg->bos, &n);
    int nw;
    window *win = windows_make(&c, n, &nw);
    int64_t total = 0;
    for (int i = 0; i < nw; i++)
        total += win[i].len;
    print_estimates(cfg, total, c.threads, c.dry_run);
    if (c.dry_run) {
        free(win);
        free(tok);
        qs_header_clear(&mh);
        llama_free(m);
        close_stdout_or_die();
        return EXIT_OK;
    }
    calib *cal = calib_new(c.bins, &err);
    if (!cal)
        die_free(err);
    llama_set_threads(m, c.threads);
    llama_set_hook(m, calib_hook, cal);
    json_t *info = json_pack("{s:s,s:s,s:s,s:I,s:i,s:i,s:I,s:I,s:i}", "model", c.model, "data",
                             c.text ? c.text : c.tokens, "sampling", c.samples ? "random" : "all", "samples",
                             (json_int_t)c.samples, "seqlen", c.seqlen, "windows", nw, "input_tokens",
                             (json_int_t)n, "tokens", (json_int_t)total, "bins", c.bins);
    if (c.samples)
        json_object_set_new(info, "seed", json_integer((json_int_t)c.seed));
    stats_out so;
    if (c.stream) {
        /* every group known up front: the manifest, then the stream, before the run */
        if (llama_inputs(m, calib_declare, cal, &err) < 0)
            die_free(err);
        stats_begin(&so, &c, cal, info, argc, argv);
        run_layers(m, tok, win, nw, cal, &so);
    } else {
        run_windows(m, tok, win, nw, c.seqlen);
        stats_begin(&so, &c, cal, info, argc, argv);
    }
    info_msg("%d windows, %lld tokens, %d distinct linear inputs", nw, (long long)total, calib_groups(cal));
    stats_end(&so, cal);
    calib_free(cal);
    free(win);
    free(tok);
    qs_header_clear(&mh);
    llama_free(m);
    close_stdout_or_die();
    return EXIT_OK;
}
