/* plan — the --dry-run report (see plan.h). */
#include "plan.h"

#include "cli.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name, *action;
    uint64_t mem, in, out;
    double flops;
} plan_item;

struct plan {
    char *prog;
    int threads;
    uint64_t base_mem;
    int n, cap;
    plan_item *items;
};

plan *plan_new(const char *prog, int threads, uint64_t base_mem)
{
    plan *p = calloc(1, sizeof *p);
    p->prog = strdup(prog);
    p->threads = threads > 0 ? threads : 1;
    p->base_mem = base_mem;
    return p;
}

void plan_add(plan *p, const char *name, const char *action, uint64_t mem, double flops, uint64_t bytes_in,
              uint64_t bytes_out)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->items = realloc(p->items, (size_t)p->cap * sizeof *p->items);
    }
    p->items[p->n++] = (plan_item){ strdup(name), strdup(action), mem, bytes_in, bytes_out, flops };
}

static const json_t *entry_named(const json_t *manifest, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(manifest, i, e)
        if (!strcmp(json_string_value(json_object_get(e, "name")) ?: "", name)) return e;
    return NULL;
}

void plan_manifest_diff(plan *p, const json_t *in_manifest, const json_t *out_manifest, const char *action,
                        void (*cost)(int64_t rows, int64_t cols, uint64_t *mem, double *flops))
{
    size_t i;
    json_t *e;
    json_array_foreach(in_manifest, i, e) {
        const char *name = json_string_value(json_object_get(e, "name")) ?: "";
        const json_t *o = entry_named(out_manifest, name);
        uint64_t nb = (uint64_t)json_integer_value(json_object_get(e, "nbytes"));
        if (o && json_equal((json_t *)e, (json_t *)o)) {
            plan_add(p, name, "copy", 0, 0, nb, nb);
            continue;
        }
        json_t *sh = json_object_get(e, "shape");
        int64_t rows = json_array_size(sh) ? json_integer_value(json_array_get(sh, 0)) : 1, cols = 1;
        for (size_t d = 1; d < json_array_size(sh); d++) cols *= json_integer_value(json_array_get(sh, d));
        uint64_t mem = 0;
        double flops = 0;
        cost(rows, cols, &mem, &flops);
        plan_add(p, name, o ? action : "dropped", mem, flops, nb,
                 o ? (uint64_t)json_integer_value(json_object_get(o, "nbytes")) : 0);
    }
}

static void human(char *buf, size_t len, double bytes)
{
    const char *u[] = { "B", "KB", "MB", "GB", "TB" };
    int i = 0;
    while (bytes >= 1000 && i < 4) { bytes /= 1000; i++; }
    snprintf(buf, len, i ? "%.1f %s" : "%.0f %s", bytes, u[i]);
}

void plan_print(plan *p, FILE *out, int verbose)
{
    uint64_t in = 0, outb = 0, peak = 0;
    double flops = 0;
    int busy = 0, peak_i = -1;
    for (int i = 0; i < p->n; i++) {
        plan_item *it = &p->items[i];
        in += it->in;
        outb += it->out;
        flops += it->flops;
        busy += strcmp(it->action, "copy") != 0;
        if (peak_i < 0 || it->mem > peak) { peak = it->mem; peak_i = i; }
    }
    char a[32], b[32], c[32];
    human(a, sizeof a, (double)in);
    human(b, sizeof b, (double)outb);
    human(c, sizeof c, (double)(peak + p->base_mem));
    fprintf(out, "%s --dry-run: %d tensors (%d processed, %d copied), %s in, %s out\n", p->prog, p->n, busy,
            p->n - busy, a, b);
    fprintf(out, "  peak memory  ~ %s", c);
    if (peak_i >= 0) fprintf(out, " (largest working set: %s, %s)", p->items[peak_i].name, p->items[peak_i].action);
    fputc('\n', out);
    double t_cpu = flops / (PLAN_GFLOPS * 1e9 * p->threads), t_io = (double)(in + outb) / (PLAN_MBS * 1e6);
    fprintf(out, "  time         ~ %.1f s (%.3g flops at %.0f GFLOP/s x %d threads, %.1f s of I/O at %.0f MB/s)\n",
            t_cpu + t_io, flops, PLAN_GFLOPS, p->threads, t_io, PLAN_MBS);
    for (int i = 0; verbose && i < p->n; i++) {
        human(a, sizeof a, (double)p->items[i].mem);
        fprintf(out, "  %-56s %-22s mem %-9s %.3g flops\n", p->items[i].name, p->items[i].action, a,
                p->items[i].flops);
    }
    plan_free(p);
}

void plan_free(plan *p)
{
    if (!p) return;
    for (int i = 0; i < p->n; i++) { free(p->items[i].name); free(p->items[i].action); }
    free(p->items);
    free(p->prog);
    free(p);
}

/* The first item over the limit, as a message (NULL: none is). */
static char *over_limit(const plan *p, uint64_t limit)
{
    char a[32], b[32], *msg;
    if (p->base_mem > limit) {
        human(a, sizeof a, (double)p->base_mem);
        human(b, sizeof b, (double)limit);
        if (asprintf(&msg, "--max-memory %s: below the %s that %s holds whatever the tensor", b, a, p->prog) < 0)
            msg = NULL;
        return msg ? msg : strdup("--max-memory: below the tool's fixed buffers");
    }
    for (int i = 0; i < p->n; i++) {
        uint64_t need = p->items[i].mem + p->base_mem;
        if (need <= limit) continue;
        human(a, sizeof a, (double)need);
        human(b, sizeof b, (double)limit);
        if (asprintf(&msg, "'%s': %s needs ~%s of working memory (%llu bytes), over --max-memory %s "
                     "(--dry-run -v lists each tensor's)", p->items[i].name, p->items[i].action, a,
                     (unsigned long long)need, b) < 0)
            msg = NULL;
        return msg ? msg : strdup("--max-memory: a tensor needs more working memory than the limit");
    }
    return NULL;
}

int plan_done(plan *p, uint64_t max_memory, int dry_run)
{
    char *msg = max_memory ? over_limit(p, max_memory) : NULL;
    if (msg) {
        plan_free(p);
        die_free(msg);
    }
    if (!dry_run) {
        plan_free(p);
        return 0;
    }
    plan_print(p, stdout, verbosity > 1);
    close_stdout_or_die();
    return 1;
}
