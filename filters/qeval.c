/* qeval — how good is a (compressed) model: perplexity, greedy generation,
 * KL divergence against a base model, and per-tensor weight error.
 *
 * Models are checkpoints (anything qsrc_open reads) or qstreams (a file, or
 * '-' for stdin), quantized tensors dequantized on load; the forward pass is
 * common/llama.c. Perplexity follows tests/data/text/REFERENCE.md exactly:
 * tokens = [BOS] + encode(whole text); non-overlapping windows of --ctx
 * tokens; the last partial window is kept when it has >= 2 tokens; token j
 * (j = 1..L-1) of a window is scored from tokens 0..j-1 of that window only;
 * ppl = exp(total NLL / scored tokens), natural log.
 *
 * --stream-layers (perplexity and KL): the model is never loaded whole; all
 * windows go through one layer at a time (common/llama.h), their hidden
 * states kept between layers, then each window's logits are scored in window
 * order. Same figures to the last bit; peak memory ≈ one layer's f32 weights
 * + n_tokens × hidden_size × 4 (per model) + the head and one window's
 * logits, instead of the whole model in f32.
 */
#include "cli.h"
#include "dequant.h"
#include "llama.h"
#include "qstream.h"
#include "source.h"
#include "stats.h"
#include "tokenizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cblas.h>
#include <jansson.h>
#include <utf8proc.h>

static const char usage[] =
    "usage: qeval MODEL (--text FILE | --tokens FILE.u32) [--ctx N] [--json]\n"
    "       qeval MODEL --generate N [--prompt TEXT | --tokens FILE.u32]\n"
    "       qeval BASE COMPRESSED (--text FILE | --tokens FILE.u32) --kl [--ctx N] [--json]\n"
    "       qeval A B [--stats CAL] [--json] [--svg FILE]\n"
    "  Perplexity of MODEL on a text (REFERENCE.md's definition: one BOS, non-overlapping\n"
    "  windows of --ctx tokens, each scoring its tokens 1..L-1); greedy continuation;\n"
    "  KL(base || compressed) per token with top-1 agreement; or, without a text,\n"
    "  per-tensor error of B against A (relative MSE, SQNR, cosine, max abs error,\n"
    "  sparsity, bits per weight; with --stats the layer-output proxy tr(dW H dW^T)).\n"
    "  MODEL: checkpoint (dir, .safetensors, .bin, .gguf, archive) or qstream file, '-' = stdin\n"
    "options:\n"
    "  --text FILE         UTF-8 text, tokenized with the model's tokenizer.json\n"
    "  --tokens FILE       token ids (uint32 little-endian) instead of a text, used as given\n"
    "  --tokens-out FILE   write the token ids evaluated (or generated) as uint32 LE\n"
    "  --ctx N             window length (default 256, at most max_position_embeddings)\n"
    "  --generate N        print the greedy continuation of N tokens (stops at EOS)\n"
    "  --prompt TEXT       prompt for --generate (default: BOS alone)\n"
    "  --kl                compare two models' predictions on the text\n"
    "  --stats CAL         stats file from qcal (stream or safetensors) for the proxy loss\n"
    "  --svg FILE          with A B: per-layer SQNR chart\n"
    "  --threads N         threads (default: all CPUs; results are identical for any N)\n"
    "  --stream-layers     perplexity/KL without loading the whole model: all windows\n"
    "                      through one layer at a time (same results; memory ~ one layer\n"
    "                      + tokens x hidden x 4)\n"
    "  --json              machine-readable output\n"
    "  -q, -v, --help, --version\n"
    "examples:\n"
    "  qeval model/ --text eval.txt\n"
    "  qcat model/ | qgptq --stats cal.qs | qeval - --text eval.txt --json\n"
    "  qeval model/ int4.qs --text eval.txt --kl\n"
    "  qeval model/ int4.qs --stats cal.qs --svg err.svg\n";

struct cmdline {
    const char *model[2];
    int nmodels;
    const char *text, *tokens, *tokens_out, *prompt, *stats, *svg;
    int ctx, json, kl, generate, threads, stream;
};

static void parse_cmdline(int argc, char **argv, struct cmdline *c)
{
    memset(c, 0, sizeof *c);
    c->ctx = 256;
    c->threads = default_threads();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "--text") && v) c->text = v;
        else if (!strcmp(a, "--tokens") && v) c->tokens = v;
        else if (!strcmp(a, "--tokens-out") && v) c->tokens_out = v;
        else if (!strcmp(a, "--prompt") && v) c->prompt = v;
        else if (!strcmp(a, "--stats") && v) c->stats = v;
        else if (!strcmp(a, "--svg") && v) c->svg = v;
        else if (!strcmp(a, "--ctx") && v) c->ctx = (int)parse_long("--ctx", v, 2, 1 << 20);
        else if (!strcmp(a, "--generate") && v) c->generate = (int)parse_long("--generate", v, 1, 1 << 20);
        else if (!strcmp(a, "--threads") && v) c->threads = (int)parse_long("--threads", v, 1, 1024);
        else {
            takes = 0;
            if (!strcmp(a, "--json")) c->json = 1;
            else if (!strcmp(a, "--kl")) c->kl = 1;
            else if (!strcmp(a, "--stream-layers")) c->stream = 1;
            else if (a[0] == '-' && a[1]) usage_error("unknown option '%s' (or missing value)", a);
            else if (c->nmodels == 2) usage_error("at most two models");
            else c->model[c->nmodels++] = a;
        }
        i += takes;
    }
    if (!c->nmodels) usage_error("no model given");
    if (c->text && c->tokens && !c->generate) usage_error("--text and --tokens exclude each other");
    if (c->prompt && !c->generate) usage_error("--prompt goes with --generate");
    if (c->generate && (c->text || (c->prompt && c->tokens)))
        usage_error("--generate takes its prompt from --prompt TEXT or --tokens FILE");
    if (c->generate && c->nmodels != 1) usage_error("--generate takes one model");
    if (c->kl && (c->nmodels != 2 || (!c->text && !c->tokens)))
        usage_error("--kl needs two models and --text or --tokens");
    if (c->nmodels == 1 && !c->generate && !c->text && !c->tokens)
        usage_error("give --text FILE or --tokens FILE (or --generate N)");
    if ((c->stats || c->svg) && (c->nmodels != 2 || c->text || c->tokens))
        usage_error("--stats and --svg go with the weight comparison 'qeval A B'");
    if (c->nmodels == 2 && (c->text || c->tokens)) c->kl = 1;
    if (c->stream && (c->generate || (c->nmodels == 2 && !c->kl)))
        usage_error("--stream-layers goes with perplexity and --kl (not --generate or a weight comparison)");
    if (c->model[0] && c->model[1] && !strcmp(c->model[0], "-") && !strcmp(c->model[1], "-"))
        usage_error("only one model can be read from stdin");
}

/* ------------------------------------------------------------------------
 * Models and tokens */

typedef struct {
    const char *path;
    llama_model *m;
    qs_header hdr;
    tokenizer *tk;              /* NULL when the model carries no tokenizer.json */
} model_in;

static void model_open(model_in *mi, const char *path, int threads, int stream)
{
    char *err = NULL;
    mi->path = path;
    if (!(mi->m = stream ? llama_open_streamed(path, &mi->hdr, &err) : llama_open(path, &mi->hdr, &err)))
        die_free(err);
    llama_set_threads(mi->m, threads);
    const qs_file *tj = qs_header_file(&mi->hdr, "tokenizer.json");
    const qs_file *tc = qs_header_file(&mi->hdr, "tokenizer_config.json");
    mi->tk = NULL;
    if (tj && !(mi->tk = tokenizer_load((const char *)tj->data, tj->len, tc ? (const char *)tc->data : NULL,
                                        tc ? tc->len : 0, &err)))
        die("%s: tokenizer.json: %s", path, err);
}

static void model_close(model_in *mi)
{
    tokenizer_free(mi->tk);
    qs_header_clear(&mi->hdr);
    llama_free(mi->m);
}

static int model_bos(const model_in *mi)
{
    int b = mi->tk ? tokenizer_bos(mi->tk) : -1;
    return b >= 0 ? b : llama_model_config(mi->m)->bos;
}

/* Refuse invalid UTF-8 with the byte offset of the first bad sequence. */
static void check_utf8(const char *what, const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0)
            die("%s: invalid UTF-8 at byte %zu", what, i);
        i += (size_t)k;
    }
}

/* [BOS] + encode(text); *n ids. Dies on an empty or invalid text. */
static uint32_t *tokens_from_text(const model_in *mi, const char *what, const char *text, size_t len, int *n)
{
    if (len == 0)
        die("%s: empty text", what);
    check_utf8(what, text, len);
    if (!mi->tk)
        die("%s: the model carries no tokenizer.json (give token ids with --tokens)", mi->path);
    uint32_t *ids = NULL;
    char *err = NULL;
    int64_t k = tokenizer_encode(mi->tk, text, len, 0, &ids, &err);
    if (k < 0)
        die("%s: %s", what, err);
    if (k == 0)
        die("%s: empty text (no tokens)", what);
    int bos = model_bos(mi), off = bos >= 0;
    uint32_t *out = malloc((size_t)(k + 1) * sizeof *out);
    if (!out || k > (1 << 30))
        die("%s: too many tokens", what);
    if (off)
        out[0] = (uint32_t)bos;
    memcpy(out + off, ids, (size_t)k * sizeof *ids);
    free(ids);
    *n = (int)k + off;
    return out;
}

static uint32_t *tokens_from_file(const char *path, int *n)
{
    size_t len;
    uint8_t *d = read_file_or_die(path, &len);
    if (len == 0 || len % 4 || len / 4 > (1u << 30)) {
        free(d);   /* (valgrind: the pointer is dead at die(), so "definitely lost") */
        if (len == 0) die("%s: no token ids", path);
        die("%s: size %zu is not a whole number of uint32 ids", path, len);
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

static uint32_t *tokens_get(const struct cmdline *c, const model_in *mi, int *n)
{
    if (c->tokens)
        return tokens_from_file(c->tokens, n);
    size_t len;
    char *text = read_file_or_die(c->text, &len);
    uint32_t *ids = tokens_from_text(mi, c->text, text, len, n);
    free(text);
    return ids;
}

static void tokens_write(const char *path, const uint32_t *ids, int n)
{
    out_file o;
    out_create(&o, path);
    uint8_t *b = malloc((size_t)n * 4 + 1);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 4; k++)
            b[4 * i + k] = (uint8_t)(ids[i] >> (8 * k));
    write_or_die(o.fd, b, (size_t)n * 4, path);
    free(b);
    out_commit(&o);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int check_ctx(const model_in *mi, int ctx)
{
    int mp = llama_model_config(mi->m)->max_pos;
    if (ctx > mp)
        die("--ctx %d exceeds the model's max_position_embeddings %d", ctx, mp);
    return ctx;
}

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    if (!s)
        die("out of memory");
    printf("%s\n", s);
    free(s);
    json_decref(j);
}

/* ------------------------------------------------------------------------
 * Perplexity (and, with a second model, KL) */

typedef struct {
    double nll[2];              /* total NLL per model */
    int64_t scored, agree;
    double *kl;                 /* (scored) KL(base || compressed) per token */
    int windows;
    double seconds;
} ppl_result;

/* Score one window's logits: NLL of tokens 1..L-1 (and KL, top-1 when b). */
static void score_window(const float *la, const float *lb, const uint32_t *tok, int L, int V, ppl_result *r)
{
    for (int j = 0; j + 1 < L; j++) {
        const float *a = la + (size_t)j * V;
        double lsa = llama_logsumexp(a, V);
        r->nll[0] += lsa - a[tok[j + 1]];
        if (lb) {
            const float *b = lb + (size_t)j * V;
            double lsb = llama_logsumexp(b, V), kl = 0;
            r->nll[1] += lsb - b[tok[j + 1]];
            for (int v = 0; v < V; v++) {
                double lpa = a[v] - lsa;
                kl += exp(lpa) * (lpa - (b[v] - lsb));
            }
            r->kl[r->scored] = kl > 0 ? kl : 0;
            r->agree += llama_argmax(a, V) == llama_argmax(b, V);
        }
        r->scored++;
    }
}

static void run_windows(model_in *ma, model_in *mb, const uint32_t *tok, int n, int ctx, ppl_result *r)
{
    int V = llama_model_config(ma->m)->vocab;
    char *err = NULL;
    llama_state *sa = llama_state_new(ma->m, ctx, ctx, &err), *sb = NULL;
    if (!sa || (mb && !(sb = llama_state_new(mb->m, ctx, ctx, &err))))
        die_free(err);
    float *la = malloc((size_t)ctx * V * sizeof *la), *lb = mb ? malloc((size_t)ctx * V * sizeof *lb) : NULL;
    if (!la || (mb && !lb))
        die("out of memory for %d x %d logits", ctx, V);
    memset(r, 0, sizeof *r);
    if (mb && !(r->kl = malloc((size_t)n * sizeof *r->kl)))
        die("out of memory");
    double t0 = now();
    int nw = (n + ctx - 1) / ctx;
    progress_start((uint64_t)nw, (uint64_t)n);
    for (int off = 0; off < n; off += ctx) {
        int L = n - off < ctx ? n - off : ctx;
        if (L < 2)
            break;      /* a last window of one token scores nothing */
        llama_state_reset(sa);
        const char *failed = llama_eval(ma->m, sa, tok + off, L, la, 0, &err) < 0 ? ma->path : NULL;
        if (!failed && mb) {
            llama_state_reset(sb);
            if (llama_eval(mb->m, sb, tok + off, L, lb, 0, &err) < 0)
                failed = mb->path;
        }
        if (failed) {   /* the models' worker threads are joined before the message */
            free(la);
            free(lb);
            llama_state_free(sa);
            llama_state_free(sb);
            model_close(ma);
            if (mb) model_close(mb);
            die("%s: %s", failed, err);
        }
        score_window(la, lb, tok + off, L, V, r);
        r->windows++;
        progress_update((uint64_t)r->windows, (uint64_t)(off + L));
    }
    progress_end();
    r->seconds = now() - t0;
    free(la);
    free(lb);
    llama_state_free(sa);
    llama_state_free(sb);
}

/* A model's batch of windows, run through all its layers. */
static llama_batch *batch_through(model_in *mi, const uint32_t *tok, const int *off, const int *len, int nw,
                                  uint64_t *done)
{
    char *err = NULL;
    llama_batch *b = llama_batch_new(mi->m, tok, off, len, nw, &err);
    if (!b)
        die("%s: %s", mi->path, err);
    info_msg("%s: hidden states of %d windows: %.1f MiB", mi->path, nw, (double)llama_batch_bytes(b) / 1048576.0);
    int nl = llama_model_config(mi->m)->n_layers;
    for (int l = 0; l < nl; l++) {
        if (llama_batch_layer(mi->m, b, l, &err) < 0)
            die("%s: layer %d: %s", mi->path, l, err);
        progress_update(++*done, 0);
    }
    return b;
}

/* --stream-layers: the windows of run_windows, layer by layer, then scored in window order. */
static void run_layers(model_in *ma, model_in *mb, const uint32_t *tok, int n, int ctx, ppl_result *r)
{
    int V = llama_model_config(ma->m)->vocab, nw = 0;
    int *off = malloc(((size_t)n / ctx + 1) * sizeof *off), *len = malloc(((size_t)n / ctx + 1) * sizeof *len);
    float *la = malloc((size_t)ctx * V * sizeof *la), *lb = mb ? malloc((size_t)ctx * V * sizeof *lb) : NULL;
    if (!off || !len || !la || (mb && !lb))
        die("out of memory for %d x %d logits", ctx, V);
    for (int o = 0; o < n && n - o >= 2; o += ctx) {
        off[nw] = o;
        len[nw++] = n - o < ctx ? n - o : ctx;
    }
    memset(r, 0, sizeof *r);
    if (mb && !(r->kl = malloc((size_t)n * sizeof *r->kl)))
        die("out of memory");
    double t0 = now();
    uint64_t done = 0, steps = (uint64_t)llama_model_config(ma->m)->n_layers +
                               (mb ? (uint64_t)llama_model_config(mb->m)->n_layers : 0) + 1;
    progress_start(steps, 0);
    llama_batch *ba = batch_through(ma, tok, off, len, nw, &done);
    llama_batch *bb = mb ? batch_through(mb, tok, off, len, nw, &done) : NULL;
    char *err = NULL;
    for (int w = 0; w < nw; w++) {
        if (llama_batch_logits(ma->m, ba, w, la, &err) < 0)
            die("%s: %s", ma->path, err);
        if (mb && llama_batch_logits(mb->m, bb, w, lb, &err) < 0)
            die("%s: %s", mb->path, err);
        score_window(la, lb, tok + off[w], len[w], V, r);
        r->windows++;
    }
    if (llama_finish(ma->m, &err) < 0 || (mb && llama_finish(mb->m, &err) < 0))
        die_free(err);
    progress_end();
    r->seconds = now() - t0;
    llama_batch_free(ba);
    llama_batch_free(bb);
    free(la); free(lb); free(off); free(len);
}

static void cmd_ppl(const struct cmdline *c)
{
    model_in mi;
    model_open(&mi, c->model[0], c->threads, c->stream);
    int ctx = check_ctx(&mi, c->ctx), n;
    uint32_t *tok = tokens_get(c, &mi, &n);
    if (c->tokens_out)
        tokens_write(c->tokens_out, tok, n);
    if (n < 2)
        die("%s: %d token, nothing to score", c->text ? c->text : c->tokens, n);
    ppl_result r;
    (c->stream ? run_layers : run_windows)(&mi, NULL, tok, n, ctx, &r);
    double nll = r.nll[0] / (double)r.scored, tps = r.seconds > 0 ? (double)n / r.seconds : 0;
    if (c->json) {
        print_json(json_pack("{s:s,s:f,s:f,s:I,s:I,s:i,s:i,s:i,s:f,s:f}", "model", c->model[0], "ppl", exp(nll),
                             "nll", nll, "tokens", (json_int_t)r.scored, "input_tokens", (json_int_t)n,
                             "windows", r.windows, "ctx", ctx, "threads", c->threads, "seconds", r.seconds,
                             "tokens_per_second", tps));
    } else {
        printf("ppl      %.6f\n", exp(nll));
        printf("nll      %.7f nats/token\n", nll);
        printf("tokens   %lld scored (%d input, %d windows of %d)\n", (long long)r.scored, n, r.windows, ctx);
        printf("speed    %.0f tokens/s (%d threads, %.2f s)\n", tps, c->threads, r.seconds);
    }
    free(tok);
    model_close(&mi);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentile by linear interpolation between order statistics (numpy's default). */
static double percentile(const double *sorted, int64_t n, double q)
{
    double pos = q * (double)(n - 1);
    int64_t lo = (int64_t)pos;
    double f = pos - (double)lo;
    return lo + 1 < n ? sorted[lo] * (1 - f) + sorted[lo + 1] * f : sorted[n - 1];
}

static void cmd_kl(const struct cmdline *c)
{
    model_in ma, mb;
    model_open(&ma, c->model[0], c->threads, c->stream);
    model_open(&mb, c->model[1], c->threads, c->stream);
    if (llama_model_config(ma.m)->vocab != llama_model_config(mb.m)->vocab)
        die("%s and %s have different vocabularies (%d vs %d)", c->model[0], c->model[1],
            llama_model_config(ma.m)->vocab, llama_model_config(mb.m)->vocab);
    int ctx = check_ctx(&ma, c->ctx), n;
    check_ctx(&mb, ctx);
    uint32_t *tok = tokens_get(c, &ma, &n);
    if (c->tokens_out)
        tokens_write(c->tokens_out, tok, n);
    if (n < 2)
        die("%d token, nothing to score", n);
    ppl_result r;
    (c->stream ? run_layers : run_windows)(&ma, &mb, tok, n, ctx, &r);
    double mean = 0;
    for (int64_t i = 0; i < r.scored; i++)
        mean += r.kl[i];
    mean /= (double)r.scored;
    qsort(r.kl, (size_t)r.scored, sizeof *r.kl, cmp_double);
    double p50 = percentile(r.kl, r.scored, 0.5), p90 = percentile(r.kl, r.scored, 0.9);
    double p99 = percentile(r.kl, r.scored, 0.99), mx = r.kl[r.scored - 1];
    double top1 = (double)r.agree / (double)r.scored;
    double pa = exp(r.nll[0] / (double)r.scored), pb = exp(r.nll[1] / (double)r.scored);
    if (c->json) {
        print_json(json_pack("{s:s,s:s,s:I,s:i,s:{s:f,s:f,s:f,s:f,s:f},s:f,s:f,s:f,s:f}", "base", c->model[0],
                             "compressed", c->model[1], "tokens", (json_int_t)r.scored, "ctx", ctx, "kl",
                             "mean", mean, "p50", p50, "p90", p90, "p99", p99, "max", mx, "top1_agreement", top1,
                             "ppl_base", pa, "ppl_compressed", pb, "seconds", r.seconds));
    } else {
        printf("KL(base||compressed) nats/token over %lld tokens (ctx %d)\n", (long long)r.scored, ctx);
        printf("  mean %.6g  p50 %.6g  p90 %.6g  p99 %.6g  max %.6g\n", mean, p50, p90, p99, mx);
        printf("top-1 agreement  %.4f%%\n", 100 * top1);
        printf("ppl base         %.6f\n", pa);
        printf("ppl compressed   %.6f  (%+.4f%%)\n", pb, 100 * (pb / pa - 1));
    }
    free(r.kl);
    free(tok);
    model_close(&ma);
    model_close(&mb);
}

/* ------------------------------------------------------------------------
 * Generation */

static void cmd_generate(const struct cmdline *c)
{
    model_in mi;
    model_open(&mi, c->model[0], c->threads, 0);
    const llama_config *cfg = llama_model_config(mi.m);
    int np;
    uint32_t *ids;
    if (c->prompt) {
        ids = tokens_from_text(&mi, "--prompt", c->prompt, strlen(c->prompt), &np);
    } else if (c->tokens) {
        ids = tokens_from_file(c->tokens, &np);
    } else {
        int bos = model_bos(&mi);
        if (bos < 0)
            die("%s: no BOS token known: give --prompt or --tokens", c->model[0]);
        ids = malloc(sizeof *ids);
        ids[0] = (uint32_t)bos;
        np = 1;
    }
    int total = np + c->generate;
    if (total > cfg->max_pos)
        die("prompt %d + %d tokens exceed max_position_embeddings %d", np, c->generate, cfg->max_pos);
    ids = realloc(ids, (size_t)total * sizeof *ids);
    char *err = NULL;
    llama_state *s = llama_state_new(mi.m, total, np, &err);
    float *lg = malloc((size_t)cfg->vocab * sizeof *lg);
    if (!s || !ids || !lg)
        die_free(err ? err : strdup("out of memory"));
    int eos = mi.tk ? tokenizer_eos(mi.tk) : cfg->eos, n = np;
    double t0 = now();
    if (llama_eval(mi.m, s, ids, np, lg, 1, &err) < 0)
        die("%s: %s", c->model[0], err);
    while (n < total) {
        ids[n] = (uint32_t)llama_argmax(lg, cfg->vocab);
        if ((int)ids[n++] == eos || n == total)
            break;
        if (llama_eval(mi.m, s, &ids[n - 1], 1, lg, 1, &err) < 0)
            die("%s: %s", c->model[0], err);
    }
    double secs = now() - t0;
    if (c->tokens_out)
        tokens_write(c->tokens_out, ids, n);
    char *text = mi.tk ? tokenizer_decode(mi.tk, ids, (size_t)n, 1) : NULL;
    if (c->json) {
        json_t *a = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(a, json_integer(ids[i]));
        json_t *j = json_pack("{s:s,s:i,s:i,s:o,s:f}", "model", c->model[0], "prompt_tokens", np, "new_tokens",
                              n - np, "ids", a, "seconds", secs);
        if (text)
            json_object_set_new(j, "text", json_string(text));
        print_json(j);
    } else {
        printf("ids");
        for (int i = 0; i < n; i++)
            printf(" %u", ids[i]);
        printf("\n");
        if (text)
            printf("text %s\n", text);
    }
    info_msg("%d tokens in %.3f s", n - np, secs);
    free(text);
    free(lg);
    free(ids);
    llama_state_free(s);
    model_close(&mi);
}

/* ------------------------------------------------------------------------
 * Weight comparison: B's tensors in B's order against A's of the same name */

typedef struct {
    const char *path;
    qsrc *src;
    qs_reader *rd;
    int next;                   /* src: next index to yield */
    /* stream A: tensors read past while looking for a name */
    int ncache;
    char **cname;
    float **cdata;
    int64_t *cnumel;
} tin;

static void tin_open(tin *t, const char *path)
{
    memset(t, 0, sizeof *t);
    t->path = path;
    char *err = NULL;
    int is = strcmp(path, "-") ? qs_path_is_stream(path) : 1;
    if (is == 1 ? !(t->rd = qs_reader_open_path(path, &err)) : !(t->src = qsrc_open(path, &err)))
        die_free(err);
}

static float *to_f32(const char *path, const qs_tensor *t, const void *data, size_t len)
{
    char *err = NULL;
    float *f = tensor_to_f32(t, data, len, &err);
    if (!f)
        die("%s: %s", path, err);
    return f;
}

/* Next tensor of t in order: header copy in *h, f32 data returned. 0 at the end. */
static float *tin_next(tin *t, qs_tensor *h)
{
    char *err = NULL;
    if (t->src) {
        if (t->next >= t->src->ntensors)
            return NULL;
        const qs_tensor *st = &t->src->tensors[t->next];
        size_t len = (size_t)qs_tensor_nbytes(st);
        void *buf = malloc(len ? len : 1);
        if (!buf || qsrc_read(t->src, t->next, 0, buf, len, &err) < 0)
            die_free(err ? err : strdup("out of memory"));
        float *f = to_f32(t->path, st, buf, len);
        free(buf);
        qs_tensor_copy(h, st);
        t->next++;
        return f;
    }
    const qs_tensor *st;
    int rc = qs_reader_next(t->rd, &st);
    if (rc < 0)
        die("%s: %s", t->path, qs_reader_error(t->rd));
    if (rc == 0)
        return NULL;
    size_t len;
    void *buf = qs_reader_read_all(t->rd, &len);
    if (!buf)
        die("%s: %s", t->path, qs_reader_error(t->rd));
    float *f = to_f32(t->path, st, buf, len);
    free(buf);
    qs_tensor_copy(h, st);
    return f;
}

/* A's tensor called name (f32, numel in *n), or NULL if A has none. */
static float *tin_find(tin *t, const char *name, int64_t *n)
{
    if (t->src) {
        int i = qsrc_find(t->src, name);
        if (i < 0)
            return NULL;
        int save = t->next;
        t->next = i;
        qs_tensor h;
        float *f = tin_next(t, &h);
        *n = qs_numel(h.ndim, h.shape);
        qs_tensor_clear(&h);
        t->next = save;
        return f;
    }
    for (int i = 0; i < t->ncache; i++)
        if (t->cdata[i] && !strcmp(t->cname[i], name)) {
            float *f = t->cdata[i];
            t->cdata[i] = NULL;
            *n = t->cnumel[i];
            return f;
        }
    qs_tensor h;
    float *f;
    while ((f = tin_next(t, &h))) {
        if (!strcmp(h.name, name)) {
            *n = qs_numel(h.ndim, h.shape);
            qs_tensor_clear(&h);
            return f;
        }
        int k = t->ncache++;
        t->cname = realloc(t->cname, (size_t)t->ncache * sizeof *t->cname);
        t->cdata = realloc(t->cdata, (size_t)t->ncache * sizeof *t->cdata);
        t->cnumel = realloc(t->cnumel, (size_t)t->ncache * sizeof *t->cnumel);
        t->cname[k] = strdup(h.name);
        t->cdata[k] = f;
        t->cnumel[k] = qs_numel(h.ndim, h.shape);
        qs_tensor_clear(&h);
    }
    return NULL;
}

static void tin_close(tin *t)
{
    for (int i = 0; i < t->ncache; i++) {
        free(t->cname[i]);
        free(t->cdata[i]);
    }
    free(t->cname); free(t->cdata); free(t->cnumel);
    qsrc_close(t->src);
    if (t->rd)
        qs_reader_close(t->rd);
}

typedef struct {
    char *name;
    int64_t numel;
    double sa2, se2, sab, sb2, maxabs;
    int64_t zeros;
    double bits;                /* wire bits of B */
    double proxy, proxy_w;      /* tr(dW H dWᵀ), tr(W H Wᵀ); NAN without stats */
} tcmp;

static void cmp_values(tcmp *r, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        double x = a[i], y = b[i], e = x - y;
        r->sa2 += x * x; r->se2 += e * e; r->sab += x * y; r->sb2 += y * y;
        if (fabs(e) > r->maxabs) r->maxabs = fabs(e);
        r->zeros += b[i] == 0;
    }
}

/* tr(M H Mᵀ) for M (rows, d), H (d, d): Σ over M ∘ (M H). */
static double quad_trace(const float *M, const float *H, int64_t rows, int64_t d)
{
    float *MH = malloc((size_t)(rows * d) * sizeof *MH);
    if (!MH)
        die("out of memory for the proxy loss (%lld x %lld)", (long long)rows, (long long)d);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)d, (int)d, 1.0f, M, (int)d, H,
                (int)d, 0.0f, MH, (int)d);
    double s = 0;
    for (int64_t i = 0; i < rows * d; i++)
        s += (double)MH[i] * M[i];
    free(MH);
    return s;
}

static void cmp_proxy(tcmp *r, stats *st, const qs_tensor *h, const float *a, const float *b)
{
    r->proxy = r->proxy_w = NAN;
    size_t n = 0;
    if (st) stats_evict(st, h->name);
    const float *H = st ? stats_get(st, h->name, "hessian", &n) : NULL;
    if (st && !H && stats_error(st)) die("%s", stats_error(st));
    if (!H || h->ndim != 2 || (int64_t)n != h->shape[1] * h->shape[1])
        return;
    int64_t rows = h->shape[0], d = h->shape[1];
    float *dw = malloc((size_t)(rows * d) * sizeof *dw);
    for (int64_t i = 0; i < rows * d; i++)
        dw[i] = a[i] - b[i];
    r->proxy = quad_trace(dw, H, rows, d);
    r->proxy_w = quad_trace(a, H, rows, d);
    free(dw);
}

static double sqnr_db(double sig, double err) { return err > 0 ? 10 * log10(sig / err) : INFINITY; }

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* Layer index and linear kind of a weight name, for the chart; -1 if none. */
static int layer_of(const char *name, char *kind, size_t kn)
{
    int l, off = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &off) != 1 || !off)
        return -1;
    const char *k = name + off, *dot = strrchr(k, '.');
    const char *p = strchr(k, '.');
    if (p && p < dot) k = p + 1;        /* "self_attn.q_proj.weight" -> "q_proj.weight" */
    snprintf(kind, kn, "%.*s", (int)((dot ? dot : k + strlen(k)) - k), k);
    return strstr(name, ".weight") && !strstr(name, "norm") ? l : -1;
}

static void write_svg(const char *path, const tcmp *r, int n)
{
    static const char *const colors[] = { "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                                          "#e377c2", "#7f7f7f" };
    char kinds[8][32];
    int nk = 0, maxl = 0;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        char k[32];
        int l = layer_of(r[i].name, k, sizeof k);
        double s = sqnr_db(r[i].sa2, r[i].se2);
        if (l < 0 || !isfinite(s)) continue;
        int j = 0;
        while (j < nk && strcmp(kinds[j], k)) j++;
        if (j == nk && nk < 8) snprintf(kinds[nk++], sizeof kinds[0], "%s", k);
        if (l > maxl) maxl = l;
        lo = fmin(lo, s);
        hi = fmax(hi, s);
    }
    if (!nk) die("--svg: no per-layer linear weights with an error to draw");
    lo = floor(lo / 5) * 5; hi = ceil(hi / 5) * 5 + (hi == lo ? 5 : 0);
    const double W = 760, H = 360, X0 = 60, Y0 = 20;
    out_file o;
    out_create(&o, path);
    FILE *f = fdopen(dup(o.fd), "w");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
               "font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W + 200, H + 70);
    fprintf(f, "<text x=\"%.0f\" y=\"14\">SQNR (dB) per layer, higher is better</text>\n", X0);
    for (double v = lo; v <= hi + 1e-9; v += 5) {
        double y = Y0 + H - (v - lo) / (hi - lo) * H;
        fprintf(f, "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                   "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", X0, X0 + W, y, y, X0 - 5, y + 4, v);
    }
    for (int l = 0; l <= maxl; l++)
        fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%d</text>\n",
                X0 + (maxl ? W * l / maxl : W / 2), Y0 + H + 15, l);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">layer</text>\n", X0 + W / 2, Y0 + H + 32);
    for (int j = 0; j < nk; j++) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", colors[j]);
        for (int i = 0; i < n; i++) {
            char k[32];
            int l = layer_of(r[i].name, k, sizeof k);
            double s = sqnr_db(r[i].sa2, r[i].se2);
            if (l >= 0 && isfinite(s) && !strcmp(k, kinds[j]))
                fprintf(f, "%.1f,%.1f ", X0 + (maxl ? W * l / maxl : W / 2), Y0 + H - (s - lo) / (hi - lo) * H);
        }
        fprintf(f, "\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">%s</text>\n", X0 + W + 15, Y0 + 15 + 16.0 * j,
                colors[j], kinds[j]);
    }
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0)
        die_errno("%s: write error", path);
    out_commit(&o);
}

static void print_table(const tcmp *r, int n, int with_stats)
{
    printf("%-52s %6s %10s %8s %9s %10s %7s%s\n", "tensor", "bits/w", "rel_mse", "sqnr_dB", "cosine", "max_abs",
           "sparse", with_stats ? "   proxy_loss  proxy_rel" : "");
    for (int i = 0; i < n; i++) {
        const tcmp *t = &r[i];
        double rel = t->sa2 > 0 ? t->se2 / t->sa2 : 0, cos = t->sa2 > 0 && t->sb2 > 0 ? t->sab / sqrt(t->sa2 * t->sb2) : 1;
        printf("%-52s %6.2f %10.3e %8.2f %9.6f %10.3e %7.4f", t->name, t->bits / (double)t->numel, rel,
               sqnr_db(t->sa2, t->se2), cos, t->maxabs, (double)t->zeros / (double)t->numel);
        if (with_stats) {
            if (isnan(t->proxy)) printf("  %11s %10s", "-", "-");
            else printf("  %11.4e %10.3e", t->proxy, t->proxy_w > 0 ? t->proxy / t->proxy_w : 0);
        }
        printf("\n");
    }
}

static void cmd_compare(const struct cmdline *c)
{
    tin a, b;
    tin_open(&a, c->model[0]);
    tin_open(&b, c->model[1]);
    char *err = NULL;
    stats *st = NULL;
    if (c->stats && !(st = stats_open(c->stats, &err)))
        die_free(err);
    tcmp *res = NULL;
    int n = 0, only_b = 0;
    qs_tensor h;
    float *fb;
    while ((fb = tin_next(&b, &h))) {
        int64_t na = 0, nb = qs_numel(h.ndim, h.shape);
        float *fa = tin_find(&a, h.name, &na);
        if (!fa) {
            only_b++;
            warn_msg("'%s' is only in %s", h.name, c->model[1]);
        } else if (na != nb) {
            die("'%s': %lld values in %s, %lld in %s", h.name, (long long)na, c->model[0], (long long)nb, c->model[1]);
        } else {
            res = realloc(res, (size_t)(n + 1) * sizeof *res);
            tcmp *r = &res[n++];
            memset(r, 0, sizeof *r);
            r->name = strdup(h.name);
            r->numel = nb;
            r->bits = 8.0 * (double)qs_tensor_nbytes(&h);
            cmp_values(r, fa, fb, nb);
            cmp_proxy(r, st, &h, fa, fb);
        }
        free(fa);
        free(fb);
        qs_tensor_clear(&h);
    }
    if (!n)
        die("%s and %s have no tensor in common", c->model[0], c->model[1]);
    double sa2 = 0, se2 = 0, bits = 0, numel = 0;
    for (int i = 0; i < n; i++) {
        sa2 += res[i].sa2; se2 += res[i].se2; bits += res[i].bits; numel += (double)res[i].numel;
    }
    if (c->json) {
        json_t *arr = json_array();
        for (int i = 0; i < n; i++) {
            const tcmp *t = &res[i];
            json_t *o = json_pack("{s:s,s:I,s:f,s:f,s:o,s:f,s:f,s:f}", "name", t->name, "numel", (json_int_t)t->numel,
                                  "bits_per_weight", t->bits / (double)t->numel, "rel_mse",
                                  t->sa2 > 0 ? t->se2 / t->sa2 : 0, "sqnr_db", num_or_null(sqnr_db(t->sa2, t->se2)),
                                  "cosine", t->sa2 > 0 && t->sb2 > 0 ? t->sab / sqrt(t->sa2 * t->sb2) : 1,
                                  "max_abs_err", t->maxabs, "sparsity", (double)t->zeros / (double)t->numel);
            if (st) {
                json_object_set_new(o, "proxy_loss", num_or_null(t->proxy));
                json_object_set_new(o, "proxy_rel", num_or_null(t->proxy_w > 0 ? t->proxy / t->proxy_w : NAN));
            }
            json_array_append_new(arr, o);
        }
        print_json(json_pack("{s:s,s:s,s:o,s:{s:f,s:o,s:f,s:i}}", "a", c->model[0], "b", c->model[1], "tensors", arr,
                             "total", "rel_mse", sa2 > 0 ? se2 / sa2 : 0, "sqnr_db", num_or_null(sqnr_db(sa2, se2)),
                             "bits_per_weight", bits / numel, "only_in_b", only_b));
    } else {
        print_table(res, n, st != NULL);
        printf("%-52s %6.2f %10.3e %8.2f\n", "(all)", bits / numel, sa2 > 0 ? se2 / sa2 : 0, sqnr_db(sa2, se2));
    }
    if (c->svg)
        write_svg(c->svg, res, n);
    for (int i = 0; i < n; i++)
        free(res[i].name);
    free(res);
    stats_close(st);
    tin_close(&a);
    tin_close(&b);
}

int main(int argc, char **argv)
{
    proginit(&argc, argv, "qeval", usage);
    struct cmdline c;
    parse_cmdline(argc, argv, &c);
    openblas_set_num_threads(c.threads);
    if (c.generate)
        cmd_generate(&c);
    else if (c.kl)
        cmd_kl(&c);
    else if (c.nmodels == 2)
        cmd_compare(&c);
    else
        cmd_ppl(&c);
    close_stdout_or_die();
    return EXIT_OK;
}
