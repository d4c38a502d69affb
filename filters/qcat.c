/* qcat — the source of every pipeline: checkpoints in, a qstream out.
 *
 * Reads safetensors (single, sharded), PyTorch zip checkpoints, GGUF, HF
 * model directories and archives of them, and writes one qstream on stdout:
 * the carried files (config.json, tokenizer files) in the header, a manifest,
 * then every selected tensor in bounded chunks. `--list` prints the manifest
 * instead. Memory stays at one chunk whatever the model's size.
 */
#include "cli.h"
#include "plan.h"
#include "qstream.h"
#include "source.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: qcat [options] CHECKPOINT... > stream.qs\n"
    "  Read checkpoints and write a qstream on stdout.\n"
    "  CHECKPOINT: model dir, .safetensors, *.index.json, pytorch_model.bin, .gguf,\n"
    "              or a .tar/.tar.gz/.tar.zst/.zip of a model dir\n"
    "options:\n"
    "  --include GLOBS     only tensors whose name matches (comma-separated globs)\n"
    "  --exclude GLOBS     drop tensors whose name matches\n"
    "  --shard K/N         only shard K (1-based) of N, balanced by bytes\n"
    "  --list              print the manifest (name, dtype, shape, bytes) instead\n"
    "  --json              with --list: as JSON\n"
    "  --dry-run           print what would be streamed, peak memory and a time estimate\n"
    "  --chunk-size SIZE   bytes per chunk frame (default 4MiB)\n"
    "  -f, --force         write the stream even to a terminal\n"
    "  -q, -v, --progress, --help, --version\n"
    "examples:\n"
    "  qcat model/ | qpack -o copy/\n"
    "  qcat model.tar.zst --include 'model.layers.0.*' --list\n";

struct cmdline {
    char **srcs;
    int nsrcs;
    const char *include, *exclude;
    int shard_k, shard_n;
    int list, json, force, dry_run;
    size_t chunk;
};

static void parse_cmdline(int argc, char **argv, struct cmdline *c)
{
    memset(c, 0, sizeof *c);
    c->srcs = calloc((size_t)argc, sizeof *c->srcs);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--include") && v) { c->include = v; i++; }
        else if (!strcmp(a, "--exclude") && v) { c->exclude = v; i++; }
        else if (!strcmp(a, "--shard") && v) {
            if (sscanf(v, "%d/%d", &c->shard_k, &c->shard_n) != 2 || c->shard_n < 1 || c->shard_k < 1 ||
                c->shard_k > c->shard_n)
                usage_error("--shard: invalid value '%s' (expected K/N with 1 <= K <= N)", v);
            i++;
        }
        else if (!strcmp(a, "--list")) c->list = 1;
        else if (!strcmp(a, "--json")) c->json = 1;
        else if (!strcmp(a, "--dry-run")) c->dry_run = 1;
        else if (!strcmp(a, "-f") || !strcmp(a, "--force")) c->force = 1;
        else if (!strcmp(a, "--chunk-size") && v) {
            uint64_t n = parse_size("--chunk-size", v);
            if (n < 64 || n > QS_MAX_CHUNK) usage_error("--chunk-size: must be between 64 B and 64 MiB");
            c->chunk = (size_t)n;
            i++;
        }
        else if (a[0] == '-' && a[1]) usage_error("unknown option '%s'", a);
        else c->srcs[c->nsrcs++] = argv[i];
    }
    if (!c->nsrcs) usage_error("no checkpoint given");
    if (c->json && !c->list) usage_error("--json goes with --list");
}

typedef struct { qsrc *src; int idx; int selected; } pick;

static int want(const struct cmdline *c, const char *name)
{
    if (c->include && !glob_list_match(c->include, name)) return 0;
    if (c->exclude && glob_list_match(c->exclude, name)) return 0;
    return 1;
}

/* Balanced by bytes: largest first onto the lightest shard (ties: lowest). */
static void select_shard(pick *p, int n, int k, int nshards)
{
    int *order = malloc((size_t)n * sizeof *order);
    uint64_t *load = calloc((size_t)nshards, sizeof *load);
    int m = 0;
    for (int i = 0; i < n; i++) if (p[i].selected) order[m++] = i;
    for (int i = 1; i < m; i++)                      /* stable insertion sort by size desc */
        for (int j = i; j > 0; j--) {
            uint64_t a = qs_tensor_nbytes(&p[order[j - 1]].src->tensors[p[order[j - 1]].idx]);
            uint64_t b = qs_tensor_nbytes(&p[order[j]].src->tensors[p[order[j]].idx]);
            if (a >= b) break;
            int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
    for (int i = 0; i < m; i++) {
        int best = 0;
        for (int s = 1; s < nshards; s++) if (load[s] < load[best]) best = s;
        load[best] += qs_tensor_nbytes(&p[order[i]].src->tensors[p[order[i]].idx]);
        if (best != k - 1) p[order[i]].selected = 0;
    }
    free(order);
    free(load);
}

static void list_manifest(const qs_header *h, int json)
{
    if (json) {
        char *s = json_dumps(h->manifest, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
        printf("%s\n", s);
        free(s);
        return;
    }
    size_t i;
    json_t *e;
    json_array_foreach(h->manifest, i, e) {
        char shape[256] = "";
        size_t j;
        json_t *d;
        json_array_foreach(json_object_get(e, "shape"), j, d)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", j ? "x" : "",
                     (long long)json_integer_value(d));
        printf("%-60s %-6s %-16s %12lld\n", json_string_value(json_object_get(e, "name")),
               json_string_value(json_object_get(e, "dtype")), shape,
               (long long)json_integer_value(json_object_get(e, "nbytes")));
    }
}

static void write_tensor(qs_writer *w, qsrc *s, int idx, uint8_t *buf, size_t bufsize)
{
    const qs_tensor *t = &s->tensors[idx];
    char *err = NULL;
    if (qs_writer_begin(w, t) < 0) goto werr;
    for (uint64_t off = 0, n = qs_tensor_nbytes(t); off < n;) {
        size_t k = n - off < bufsize ? (size_t)(n - off) : bufsize;
        if (qsrc_read(s, idx, off, buf, k, &err) < 0) die_free(err);
        if (qs_writer_write(w, buf, k) < 0) goto werr;
        off += k;
    }
    if (qs_writer_end(w) < 0) goto werr;
    return;
werr:
    writer_die(w);
}

static void dry_run(const struct cmdline *c, const pick *picks, int npicks)
{
    plan *p = plan_new("qcat", 1, c->chunk ? c->chunk : QS_DEFAULT_CHUNK);
    for (int i = 0; i < npicks; i++)
        if (picks[i].selected) {
            const qs_tensor *t = &picks[i].src->tensors[picks[i].idx];
            plan_add(p, t->name, "copy", 0, 0, qs_tensor_nbytes(t), qs_tensor_nbytes(t));
        }
    plan_print(p, stdout, verbosity > 1);
}

static void stream_all(const struct cmdline *c, const qs_header *h, const pick *picks, int npicks, uint64_t ntot,
                       uint64_t total)
{
    if (!c->force) refuse_tty(1, "qstream");
    char *err = NULL;
    qs_writer *w = qs_writer_open_fd(1, h, c->chunk, &err);
    if (!w) { exit_if_epipe(errno); die("stdout: %s", err); }
    size_t bufsize = c->chunk ? c->chunk : QS_DEFAULT_CHUNK;
    uint8_t *buf = malloc(bufsize);
    progress_start(ntot, total);
    uint64_t done_b = 0, done_t = 0;
    for (int i = 0; i < npicks; i++) {
        if (!picks[i].selected) continue;
        write_tensor(w, picks[i].src, picks[i].idx, buf, bufsize);
        done_b += qs_tensor_nbytes(&picks[i].src->tensors[picks[i].idx]);
        progress_update(++done_t, done_b);
    }
    progress_end();
    if (qs_writer_close(w, &err) < 0) { exit_if_epipe(errno); die("stdout: %s", err); }
    free(buf);
}

int main(int argc, char **argv)
{
    struct cmdline c;
    proginit(&argc, argv, "qcat", usage);
    parse_cmdline(argc, argv, &c);

    /* open every source and pick the tensors */
    qs_header h;
    qs_header_init(&h);
    pick *picks = NULL;
    int npicks = 0;
    qsrc **srcs = calloc((size_t)c.nsrcs, sizeof *srcs);
    for (int i = 0; i < c.nsrcs; i++) {
        char *err = NULL;
        if (!(srcs[i] = qsrc_open(c.srcs[i], &err))) die_free(err);
        const qs_header *sh = &srcs[i]->header;
        for (int f = 0; f < sh->nfiles; f++)
            if (!qs_header_file(&h, sh->files[f].name))
                qs_header_add_file(&h, sh->files[f].name, sh->files[f].data, sh->files[f].len);
        json_object_update_missing(h.meta, sh->meta);
        picks = realloc(picks, (size_t)(npicks + srcs[i]->ntensors) * sizeof *picks);
        for (int t = 0; t < srcs[i]->ntensors; t++)
            picks[npicks++] = (pick){ srcs[i], t, want(&c, srcs[i]->tensors[t].name) };
    }
    for (int i = 0; i < npicks; i++)          /* one name, one tensor: refuse clashing sources */
        for (int j = 0; j < i && picks[i].selected; j++)
            if (picks[j].selected && !strcmp(picks[i].src->tensors[picks[i].idx].name, picks[j].src->tensors[picks[j].idx].name))
                die("%s: tensor '%s' is also in %s", picks[i].src->path, picks[i].src->tensors[picks[i].idx].name,
                    picks[j].src->path);
    if (c.shard_n) select_shard(picks, npicks, c.shard_k, c.shard_n);
    json_object_set_new(h.meta, "kind", json_string("model"));
    add_provenance_or_die(&h, argc, argv);
    uint64_t total = 0, ntot = 0;
    for (int i = 0; i < npicks; i++)
        if (picks[i].selected) {
            qs_header_manifest_add(&h, &picks[i].src->tensors[picks[i].idx]);
            total += qs_tensor_nbytes(&picks[i].src->tensors[picks[i].idx]);
            ntot++;
        }
    if (c.dry_run) dry_run(&c, picks, npicks);
    else if (c.list) list_manifest(&h, c.json);
    else stream_all(&c, &h, picks, npicks, ntot, total);
    if (c.dry_run || c.list) close_stdout_or_die();
    for (int i = 0; i < c.nsrcs; i++) qsrc_close(srcs[i]);
    free(srcs); free(picks); free(c.srcs);
    qs_header_clear(&h);
    return EXIT_OK;
}
