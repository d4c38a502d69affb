/* qmix — mixed-precision allocation under a bit budget (common/mix.h).
 *
 * Reads a model qstream on stdin; for every selected linear weight (default:
 * the decoder blocks' q/k/v/o, gate/up/down) estimates the loss of every
 * menu setting from the calibration Hessian, tr(ΔW H ΔWᵀ) of RTN (or GPTQ
 * with --gptq); picks one setting per tensor minimising the total estimated
 * loss with the total storage within the budget (exact multiple-choice
 * knapsack); prints the allocation; writes the stream with attrs "qmix"
 * {"grid","bits","group","sym","loss"} on each selected tensor, for qgptq to
 * honour, or (--apply) already quantized with those settings.
 *
 * Outlier settings (menu "GRID:BITS:GROUPS:K", K f16 input columns beside
 * the grid, LLM.int8()-style; common/mix.h) are counted in the budget; the
 * stream has no layout for grid + f16 columns yet, so --apply writes those
 * tensors as the f32 values such a decoder would produce (attrs.qmix
 * "fake_quant": true, "outlier_cols": [...]) — enough to measure them.
 *
 * The allocation needs every tensor's losses before the first tensor can be
 * written (the header's manifest comes first), so the input is spooled to an
 * unlinked temporary file (the stream as read; disk, not memory) and
 * replayed. Memory: one tensor in f32 and its Hessian at a time.
 */
#include "awq.h"
#include "cli.h"
#include "dequant.h"
#include "dtype.h"
#include "gptq.h"
#include "llama.h"
#include "mix.h"
#include "qstream.h"
#include "quant.h"
#include "stats.h"
#include "tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: qmix --stats cal.qs (--avg-bits B | --max-size SIZE) [options] < in.qs > out.qs\n"
    "  Choose a quantization setting per tensor minimising the estimated loss tr(dW H dW^T)\n"
    "  under a storage budget (exact multiple-choice knapsack); annotate the stream (attrs\n"
    "  \"qmix\") for qgptq, or quantize it (--apply).\n"
    "options:\n"
    "  --stats FILE        calibration statistics from qcal (Hessians)\n"
    "  --avg-bits B        budget: B bits per weight over the selected tensors, counting codes\n"
    "                      and the f16 scales/zeros of each group\n"
    "  --max-size SIZE     budget: total checkpoint bytes (e.g. 2.1GB); the other tensors count\n"
    "                      at their stream size\n"
    "  --menu SPEC         candidate settings (default " MIX_DEFAULT_MENU "):\n"
    "                      'GRID:BITS:GROUPS;...' with GRID int, sym or nf4, or 'f16'\n"
    "  --gptq              estimate losses with GPTQ instead of RTN (and --apply with GPTQ)\n"
    "  --apply             write the tensors quantized with their settings\n"
    "  --measure-text FILE calibrate the estimates end to end: per tensor, the KL divergence of\n"
    "                      the model with only that tensor at the menu's cheapest setting, on\n"
    "                      FILE (use calibration text, not the evaluation text); every setting's\n"
    "                      estimate of that tensor is scaled by KL / estimate. One forward pass\n"
    "                      per tensor; holds the model in f32 twice\n"
    "  --measure-tokens F  the same with token ids (uint32 LE)\n"
    "  --measure-len N     tokens used by --measure-* (default 4096), in windows of 256\n"
    "  --report FILE       write the allocation table to FILE (default: stderr unless -q)\n"
    "  --include GLOBS     allocate over these tensors instead of the default linears\n"
    "  --exclude GLOBS     never these\n"
    "  --threads N         worker threads (default: online CPUs); output is identical for any N\n"
    "  -f, --force         write the stream even to a terminal\n"
    "  -q, -v, --progress, --help, --version\n"
    "examples:\n"
    "  qcat model/ | qmix --stats cal.qs --avg-bits 3.5 | qgptq --stats cal.qs | qpack -o q/\n"
    "  qcat model/ | qmix --stats cal.qs --avg-bits 3.5 --apply --report alloc.txt > q.qs\n";

static const char default_linears[] =
    "*.self_attn.q_proj.weight,*.self_attn.k_proj.weight,*.self_attn.v_proj.weight,"
    "*.self_attn.o_proj.weight,*.mlp.gate_proj.weight,*.mlp.up_proj.weight,*.mlp.down_proj.weight";

struct cmdline {
    double avg_bits;
    uint64_t max_size;
    const char *stats_path, *menu_spec, *report, *include, *exclude, *measure_text, *measure_tokens;
    int gptq, apply, force, threads, measure_len;
};

static void parse_cmdline(int argc, char **argv, struct cmdline *c)
{
    memset(c, 0, sizeof *c);
    c->menu_spec = MIX_DEFAULT_MENU;
    c->threads = default_threads();
    c->measure_len = 4096;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = v && (!strcmp(a, "--stats") || !strcmp(a, "--avg-bits") || !strcmp(a, "--max-size")
                          || !strcmp(a, "--menu") || !strcmp(a, "--report") || !strcmp(a, "--include")
                          || !strcmp(a, "--exclude") || !strcmp(a, "--threads") || !strcmp(a, "--measure-text")
                          || !strcmp(a, "--measure-tokens") || !strcmp(a, "--measure-len"));
        if (!strcmp(a, "--stats") && v) c->stats_path = v;
        else if (!strcmp(a, "--avg-bits") && v) c->avg_bits = parse_double("--avg-bits", v, 0.01, 64);
        else if (!strcmp(a, "--max-size") && v) c->max_size = parse_size("--max-size", v);
        else if (!strcmp(a, "--menu") && v) c->menu_spec = v;
        else if (!strcmp(a, "--report") && v) c->report = v;
        else if (!strcmp(a, "--include") && v) c->include = v;
        else if (!strcmp(a, "--exclude") && v) c->exclude = v;
        else if (!strcmp(a, "--threads") && v) c->threads = (int)parse_long("--threads", v, 1, 1024);
        else if (!strcmp(a, "--measure-text") && v) c->measure_text = v;
        else if (!strcmp(a, "--measure-tokens") && v) c->measure_tokens = v;
        else if (!strcmp(a, "--measure-len") && v) c->measure_len = (int)parse_long("--measure-len", v, 2, 1 << 24);
        else if (!strcmp(a, "--gptq")) c->gptq = 1;
        else if (!strcmp(a, "--apply")) c->apply = 1;
        else if (!strcmp(a, "-f") || !strcmp(a, "--force")) c->force = 1;
        else if (a[0] == '-' && a[1]) usage_error("unknown option '%s'%s", a, v || takes ? "" : " or missing value");
        else usage_error("unexpected argument '%s' (the stream comes on stdin)", a);
        if (takes) i++;
    }
    if (!c->stats_path) usage_error("needs --stats FILE (calibration statistics from qcal)");
    if ((c->avg_bits > 0) == (c->max_size > 0)) usage_error("give one budget: --avg-bits B or --max-size SIZE");
    if (c->measure_text && c->measure_tokens) usage_error("--measure-text and --measure-tokens: give one");
}

/*-*** Tensors and their choices ***/

typedef struct {
    char *name;
    int64_t rows, cols;
    uint64_t *size;             /* [nmenu] bits */
    double *loss;               /* [nmenu] estimates used by the allocation */
    double factor;              /* --measure: KL / estimate at the reference setting, else 1 */
    int choice;
} mtensor;

typedef struct {
    const struct cmdline *c;
    stats *st;
    mix_setting *menu;
    int nmenu;
    mtensor *t;
    int nt, cap;
    uint64_t other_bytes;       /* stream bytes of the tensors not allocated */
} state;

static int is_selected(const state *S, const qs_tensor *t)
{
    size_t n;
    if (t->ndim != 2 || !dtype_traits[t->dtype].is_float || t->nparts != 1) return 0;
    if (t->attrs && json_object_get(t->attrs, "quant")) return 0;
    if (!glob_list_match(S->c->include ? S->c->include : default_linears, t->name)) return 0;
    if (S->c->exclude && glob_list_match(S->c->exclude, t->name)) return 0;
    if (!stats_has(S->st, t->name, "hessian", &n)) die("'%s': no hessian in %s", t->name, S->c->stats_path);
    if (n != (size_t)(t->shape[1] * t->shape[1]))
        die("'%s': hessian has %zu values, expected %lld x %lld", t->name, n, (long long)t->shape[1], (long long)t->shape[1]);
    return 1;
}

static float *read_f32(qs_reader *r, const qs_tensor *t, void **rawp)
{
    size_t len;
    const int64_t n = qs_numel(t->ndim, t->shape);
    void *raw = qs_reader_read_all(r, &len);
    if (!raw) die("%s", qs_reader_error(r));
    if (len != (size_t)n * dtype_size(t->dtype)) die("'%s': expected %lld values", t->name, (long long)n);
    float *w = malloc((size_t)(n ? n : 1) * sizeof *w);
    if (!w) die("'%s': out of memory", t->name);
    dtype_to_f32(t->dtype, raw, w, (size_t)n);
    if (rawp) *rawp = raw; else free(raw);
    return w;
}

/* Pass 1: losses per setting, spooling the stream as read. */
static void measure(state *S, qs_reader *r, qs_writer *spool)
{
    const qs_tensor *t;
    int rc;
    uint64_t done = 0;
    while ((rc = qs_reader_next(r, &t)) == 1) {
        if (!is_selected(S, t)) {
            S->other_bytes += qs_tensor_nbytes(t);
            if (qs_copy_tensor(r, spool, NULL) < 0)
                die("%s", qs_writer_error(spool) ? qs_writer_error(spool) : qs_reader_error(r));
            progress_update(++done, 0);
            continue;
        }
        if (S->nt == S->cap) {
            S->cap = S->cap ? 2 * S->cap : 64;
            if (!(S->t = realloc(S->t, (size_t)S->cap * sizeof *S->t))) die("out of memory");
        }
        mtensor *m = &S->t[S->nt++];
        m->name = strdup(t->name);
        m->rows = t->shape[0];
        m->cols = t->shape[1];
        m->size = malloc((size_t)S->nmenu * sizeof *m->size);
        m->loss = malloc((size_t)S->nmenu * sizeof *m->loss);
        m->factor = 1;
        if (!m->name || !m->size || !m->loss) die("out of memory");
        void *raw;
        float *w = read_f32(r, t, &raw);
        size_t n;
        stats_evict(S->st, t->name);
        const float *h = stats_get(S->st, t->name, "hessian", &n);
        if (!h) die("%s", stats_error(S->st) ? stats_error(S->st) : "no hessian");
        char *err = NULL;
        if (mix_tensor_losses(w, m->rows, m->cols, h, S->menu, S->nmenu, S->c->gptq, S->c->threads, m->loss, &err))
            die("'%s': %s", t->name, err);
        for (int k = 0; k < S->nmenu; k++) m->size[k] = mix_setting_bits(&S->menu[k], m->rows, m->cols);
        if (qs_writer_put(spool, t, raw) < 0) die("spool: %s", qs_writer_error(spool));
        free(raw);
        free(w);
        progress_update(++done, 0);
    }
    if (rc < 0) die("%s", qs_reader_error(r));
}

/*-*** --measure-*: end-to-end calibration of the estimates ***/

/* Every tensor of the spooled stream in f32, served to llama_load; one
 * tensor can be overridden by a trial value. */
typedef struct {
    char *name;
    float *w;
    int ndim;
    int64_t shape[QS_MAX_DIMS];
} wt;

typedef struct {
    wt *t;
    int n;
    const char *over;           /* name of the overridden tensor, or NULL */
    const float *over_w;
} wstore;

static int store_get(void *ctx, const char *name, float **data, int64_t *shape, int *ndim, char **errp)
{
    const wstore *ws = ctx;
    (void)errp;
    for (int i = 0; i < ws->n; i++) {
        const wt *t = &ws->t[i];
        if (strcmp(t->name, name)) continue;
        const int64_t n = qs_numel(t->ndim, t->shape);
        if (!(*data = malloc((size_t)(n ? n : 1) * sizeof **data))) return -1;
        memcpy(*data, ws->over && !strcmp(ws->over, name) ? ws->over_w : t->w, (size_t)n * sizeof **data);
        memcpy(shape, t->shape, sizeof t->shape);
        *ndim = t->ndim;
        return 1;
    }
    return 0;
}

static void store_load(int fd, wstore *ws)
{
    char *err = NULL;
    qs_reader *r = qs_reader_open_fd(fd, "spool", &err);
    const qs_tensor *t;
    int rc;
    if (!r) die("spool: %s", err);
    memset(ws, 0, sizeof *ws);
    while ((rc = qs_reader_next(r, &t)) == 1) {
        size_t len;
        void *raw = qs_reader_read_all(r, &len);
        if (!raw) die("spool: %s", qs_reader_error(r));
        if (!(ws->t = realloc(ws->t, (size_t)(ws->n + 1) * sizeof *ws->t))) die("out of memory");
        wt *e = &ws->t[ws->n++];
        if (!(e->w = tensor_to_f32(t, raw, len, &err))) die_free(err);
        if (!(e->name = strdup(t->name))) die("out of memory");
        e->ndim = t->ndim;
        memcpy(e->shape, t->shape, sizeof e->shape);
        free(raw);
    }
    if (rc < 0) die("spool: %s", qs_reader_error(r));
    qs_reader_close(r);
}

static void store_free(wstore *ws)
{
    for (int i = 0; i < ws->n; i++) { free(ws->t[i].name); free(ws->t[i].w); }
    free(ws->t);
}

static uint32_t *measure_ids(const struct cmdline *c, const qs_header *h, int *n)
{
    size_t len;
    char *err = NULL;
    uint8_t *d = read_file_or_die(c->measure_text ? c->measure_text : c->measure_tokens, &len);
    uint32_t *ids;
    if (c->measure_tokens) {
        if (len < 8 || len % 4) {
            free(d);   /* dead at die(): valgrind would call it lost */
            die("%s: not a whole number (>= 2) of uint32 ids", c->measure_tokens);
        }
        if (!(ids = malloc(len))) die("out of memory");
        for (size_t i = 0; i < len / 4; i++)
            ids[i] = (uint32_t)d[4 * i] | (uint32_t)d[4 * i + 1] << 8 | (uint32_t)d[4 * i + 2] << 16 | (uint32_t)d[4 * i + 3] << 24;
        *n = (int)(len / 4 < (size_t)c->measure_len ? len / 4 : (size_t)c->measure_len);
    } else {
        const qs_file *tj = qs_header_file(h, "tokenizer.json"), *tc = qs_header_file(h, "tokenizer_config.json");
        if (!tj) die("--measure-text: the stream carries no tokenizer.json (use --measure-tokens)");
        tokenizer *tk = tokenizer_load((const char *)tj->data, tj->len, tc ? (const char *)tc->data : NULL,
                                       tc ? tc->len : 0, &err);
        if (!tk) die("tokenizer.json: %s", err);
        int64_t k = tokenizer_encode(tk, (const char *)d, len, 1, &ids, &err);
        tokenizer_free(tk);
        if (k < 0) die("%s: %s", c->measure_text, err);
        if (k < 2) die("%s: fewer than 2 tokens", c->measure_text);
        *n = (int)(k < c->measure_len ? k : c->measure_len);
    }
    free(d);
    return ids;
}

/* Log-probabilities (n, V) of windows of ctx tokens (each window from scratch). */
static float *window_logp(llama_model *m, const uint32_t *ids, int n, int ctx, int V)
{
    char *err = NULL;
    llama_state *st = llama_state_new(m, ctx, ctx, &err);
    float *lp = malloc((size_t)n * (size_t)V * sizeof *lp);
    if (!st || !lp) die("measure: %s", err ? err : "out of memory");
    for (int off = 0; off < n; off += ctx) {
        int L = n - off < ctx ? n - off : ctx;
        llama_state_reset(st);
        if (llama_eval(m, st, ids + off, L, lp + (size_t)off * V, 0, &err) < 0) die("measure: %s", err);
        for (int j = off; j < off + L; j++) {
            float *row = lp + (size_t)j * V;
            double ls = llama_logsumexp(row, V);
            for (int v = 0; v < V; v++) row[v] = (float)(row[v] - ls);
        }
    }
    llama_state_free(st);
    return lp;
}

/* Mean KL(base || trial) per token. */
static double mean_kl(const float *base, const float *trial, int n, int V)
{
    double sum = 0;
    for (int j = 0; j < n; j++) {
        double kl = 0;
        for (int v = 0; v < V; v++) {
            const double a = base[(size_t)j * V + v];
            kl += exp(a) * (a - trial[(size_t)j * V + v]);
        }
        sum += kl > 0 ? kl : 0;
    }
    return sum / n;
}

/* The menu's cheapest setting for a [rows, cols] tensor (the reference). */
static int cheapest(const state *S, const mtensor *m)
{
    int best = -1;
    for (int k = 0; k < S->nmenu; k++)
        if (isfinite(m->loss[k]) && !S->menu[k].keep_f16 && (best < 0 || m->size[k] < m->size[best])) best = k;
    return best;
}

static float *dequantized(const state *S, const mix_setting *s, const float *w, const char *name, int64_t rows, int64_t cols)
{
    char *err = NULL;
    float *q = malloc((size_t)(rows * cols) * sizeof *q);
    if (!q) die("out of memory");
    if (mix_dequantized(s, w, rows, cols, stats_get(S->st, name, "hessian", &(size_t){ 0 }), S->c->gptq,
                        S->c->threads, q, &err))
        die("'%s': %s", name, err);
    return q;
}

/* Scale each tensor's estimates so that, at its cheapest setting, the
 * estimate equals the measured KL of quantizing that tensor alone. */
static void calibrate(state *S, int fd, const qs_header *h)
{
    const qs_file *cfg = qs_header_file(h, "config.json");
    if (!cfg) die("--measure: the stream carries no config.json");
    wstore ws;
    char *err = NULL;
    store_load(fd, &ws);
    int n;
    uint32_t *ids = measure_ids(S->c, h, &n);
    llama_model *m = llama_load((const char *)cfg->data, cfg->len, store_get, &ws, &err);
    if (!m) die("--measure: %s", err);
    llama_set_threads(m, S->c->threads);
    const int V = llama_model_config(m)->vocab, ctx = llama_model_config(m)->max_pos < 256 ? llama_model_config(m)->max_pos : 256;
    for (int i = 0; i < n; i++) if ((int)ids[i] >= V) die("--measure: token id %u outside the vocabulary", ids[i]);
    float *base = window_logp(m, ids, n, ctx, V);
    llama_free(m);
    for (int i = 0; i < S->nt; i++) {
        mtensor *t = &S->t[i];
        int k = cheapest(S, t), j;
        for (j = 0; j < ws.n && strcmp(ws.t[j].name, t->name); j++) {}
        if (k < 0 || j == ws.n || !(t->loss[k] > 0)) continue;
        float *q = dequantized(S, &S->menu[k], ws.t[j].w, t->name, t->rows, t->cols);
        ws.over = t->name;
        ws.over_w = q;
        if (!(m = llama_load((const char *)cfg->data, cfg->len, store_get, &ws, &err))) die("--measure: %s", err);
        llama_set_threads(m, S->c->threads);
        float *lp = window_logp(m, ids, n, ctx, V);
        const double kl = mean_kl(base, lp, n, V);
        t->factor = kl / t->loss[k];
        for (int c = 0; c < S->nmenu; c++) t->loss[c] *= t->factor;
        info_msg("'%s': KL %.6g at %d bits, factor %.4g", t->name, kl, S->menu[k].grid.bits, t->factor);
        free(lp);
        free(q);
        llama_free(m);
        ws.over = NULL;
    }
    free(base);
    free(ids);
    store_free(&ws);
}

/*-*** Allocation and report ***/

static uint64_t budget_bits(const state *S, uint64_t nweights)
{
    if (S->c->avg_bits > 0) return (uint64_t)floor(S->c->avg_bits * (double)nweights);
    if (S->c->max_size < S->other_bytes) die("--max-size: the tensors not allocated already take %llu bytes",
                                                 (unsigned long long)S->other_bytes);
    return (S->c->max_size - S->other_bytes) * 8;
}

static void allocate(state *S, FILE *rep)
{
    uint64_t nweights = 0;
    for (int i = 0; i < S->nt; i++) nweights += (uint64_t)(S->t[i].rows * S->t[i].cols);
    if (!S->nt) die("no tensors to allocate (check --include/--exclude)");
    const uint64_t budget = budget_bits(S, nweights);
    int *nch = malloc((size_t)S->nt * sizeof *nch), *choice = malloc((size_t)S->nt * sizeof *choice);
    const uint64_t **size = malloc((size_t)S->nt * sizeof *size);
    const double **loss = malloc((size_t)S->nt * sizeof *loss);
    if (!nch || !choice || !size || !loss) die("out of memory");
    for (int i = 0; i < S->nt; i++) { nch[i] = S->nmenu; size[i] = S->t[i].size; loss[i] = S->t[i].loss; }
    uint64_t unit;
    int exact;
    char *err = NULL;
    if (mix_solve(S->nt, nch, size, loss, budget, 0, choice, &unit, &exact, &err)) die("allocation: %s", err);
    const double bound = mix_lagrange_bound(S->nt, nch, size, loss, budget);
    uint64_t total = 0;
    double tloss = 0;
    char nm[32];
    if (rep) fprintf(rep, "%-56s %-10s %9s %14s\n", "tensor", "setting", "bits/w", "est. loss");
    for (int i = 0; i < S->nt; i++) {
        mtensor *m = &S->t[i];
        m->choice = choice[i];
        total += m->size[m->choice];
        tloss += m->loss[m->choice];
        mix_setting_name(&S->menu[m->choice], nm, sizeof nm);
        if (rep) fprintf(rep, "%-56s %-10s %9.4f %14.6g\n", m->name, nm,
                         (double)m->size[m->choice] / (double)(m->rows * m->cols), m->loss[m->choice]);
    }
    if (rep) {
        fprintf(rep, "total: %llu weights in %d tensors, %llu bits = %.6f bits/weight; est. loss %.6g\n",
                (unsigned long long)nweights, S->nt, (unsigned long long)total, (double)total / (double)nweights, tloss);
        fprintf(rep, "budget: %llu bits (%s), used %llu, slack %llu bits (%.6f bits/weight)\n",
                (unsigned long long)budget,
                S->c->avg_bits > 0 ? "floor(avg-bits x weights)" : "max-size minus other tensors",
                (unsigned long long)total, (unsigned long long)(budget - total),
                (double)(budget - total) / (double)nweights);
        fprintf(rep, "solver: %s, DP in units of %llu bits; Lagrangian lower bound %.6g\n",
                exact ? "exact optimum (unit = gcd of all setting sizes)" : "optimal for sizes rounded up to the unit",
                (unsigned long long)unit, bound);
        fprintf(rep, "uniform settings (same menu, est. loss, bits/weight):\n");
        for (int k = 0; k < S->nmenu; k++) {
            uint64_t us = 0;
            double ul = 0;
            for (int i = 0; i < S->nt; i++) { us += S->t[i].size[k]; ul += S->t[i].loss[k]; }
            mix_setting_name(&S->menu[k], nm, sizeof nm);
            fprintf(rep, "  %-10s %9.4f %14.6g%s\n", nm, (double)us / (double)nweights, ul,
                    us <= budget ? "  (fits)" : "");
        }
    }
    free(nch); free(choice); free(size); free(loss);
}

/*-*** Output ***/

static json_t *qmix_attr(const mix_setting *s, double loss)
{
    if (s->keep_f16) return json_pack("{s:s, s:i, s:f}", "grid", "f16", "bits", 16, "loss", loss);
    json_t *a = json_pack("{s:s, s:i, s:i, s:b, s:f}", "grid", s->grid.scheme == QUANT_NF4 ? "nf4" : "int",
                          "bits", s->grid.bits, "group", s->grid.group, "sym", s->grid.sym, "loss", isfinite(loss) ? loss : -1.0);
    if (s->outliers) json_object_set_new(a, "outliers", json_integer(s->outliers));
    return a;
}

/* Header of a selected tensor as written: annotated, and quantized with --apply. */
static void output_header(const state *S, const qs_tensor *in, const mtensor *m, qs_tensor *q)
{
    const mix_setting *s = &S->menu[m->choice];
    if (qs_tensor_copy(q, in)) die("out of memory");
    if (!q->attrs) q->attrs = json_object();
    json_object_set_new(q->attrs, "qmix", qmix_attr(s, m->loss[m->choice]));
    if (!S->c->apply || s->keep_f16) return;
    if (s->outliers) {   // no stream layout for grid + f16 columns yet: the dequantized values, in f32
        q->dtype = DT_F32;
        q->parts[0].dtype = DT_F32;
        q->parts[0].nbytes = (uint64_t)(m->rows * m->cols) * 4;
        json_object_set_new(json_object_get(q->attrs, "qmix"), "fake_quant", json_true());
        return;
    }
    quant_grid g = s->grid;
    snprintf(g.method, sizeof g.method, "%s", S->c->gptq && g.scheme == QUANT_INT ? "gptq" : "rtn");
    const int64_t shape[2] = { m->rows, m->cols }, ss[2] = { m->rows, quant_ngroups(&g, m->cols) };
    q->dtype = DT_F32;
    q->nparts = 0;
    json_object_set_new(q->attrs, "quant", quant_grid_to_json(&g));
    qs_tensor_add_part(q, "codes", DT_U8, 2, shape);
    qs_tensor_add_part(q, "scales", DT_F32, 2, ss);
    if (g.scheme == QUANT_INT) qs_tensor_add_part(q, "zeros", DT_F32, 2, ss);
}

static void build_header(const state *S, const qs_header *in, int argc, char **argv, qs_header *out)
{
    if (qs_header_copy(out, in)) die("out of memory");
    json_t *old = out->manifest;
    out->manifest = json_array();
    size_t i;
    json_t *e;
    int k = 0;
    json_array_foreach(old, i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        if (!name || k >= S->nt || strcmp(name, S->t[k].name)) {
            json_array_append(out->manifest, e);
            continue;
        }
        qs_tensor t, q;
        const int64_t shape[2] = { S->t[k].rows, S->t[k].cols };
        const char *dts = json_string_value(json_object_get(e, "dtype"));
        if (qs_tensor_init(&t, name, dts ? dtype_from_name(dts) : DT_F32, 2, shape)) die("'%s': bad shape", name);
        output_header(S, &t, &S->t[k++], &q);
        qs_header_manifest_add(out, &q);
        // the setting in the manifest too, so that qgptq can plan its header before the data
        json_object_set(json_array_get(out->manifest, json_array_size(out->manifest) - 1), "qmix",
                        json_object_get(q.attrs, "qmix"));
        qs_tensor_clear(&t);
        qs_tensor_clear(&q);
    }
    json_decref(old);
    add_provenance_or_die(out, argc, argv);
}


static void write_quantized(const state *S, qs_reader *r, qs_writer *w, const qs_tensor *t,
                            const mtensor *m, const qs_tensor *q)
{
    const mix_setting *s = &S->menu[m->choice];
    float *wf = read_f32(r, t, NULL);
    gptq_result res;
    char *err = NULL;
    memset(&res, 0, sizeof res);
    if (S->c->gptq && s->grid.scheme == QUANT_INT) {
        gptq_opts o;
        gptq_opts_default(&o);
        o.grid = s->grid;
        o.threads = S->c->threads;
        if (gptq_quantize(wf, m->rows, m->cols, stats_get(S->st, t->name, "hessian", &(size_t){ 0 }), &o, &res, &err))
            die("'%s': %s", t->name, err);
    } else {
        res.ngroups = quant_ngroups(&s->grid, m->cols);
        res.codes = malloc((size_t)(m->rows * m->cols));
        res.scales = malloc((size_t)(m->rows * res.ngroups) * sizeof(float));
        res.zeros = malloc((size_t)(m->rows * res.ngroups) * sizeof(float));
        if (!res.codes || !res.scales || !res.zeros) die("'%s': out of memory", t->name);
        if (quant_rtn(&s->grid, NULL, wf, m->rows, m->cols, res.codes, res.scales,
                      s->grid.scheme == QUANT_INT ? res.zeros : NULL, NULL, S->c->threads, &err))
            die("'%s': %s", t->name, err);
    }
    const void *parts[3] = { res.codes, res.scales, res.zeros };
    if (qs_writer_begin(w, q) < 0) writer_die(w);
    for (int i = 0; i < q->nparts; i++)
        if (qs_writer_write(w, parts[i], q->parts[i].nbytes) < 0) writer_die(w);
    if (qs_writer_end(w) < 0) writer_die(w);
    gptq_result_free(&res);
    free(wf);
}

/* An outlier setting: Ŵ (grid values, f16 outlier columns) as f32, with the
 * chosen columns in attrs.qmix.outlier_cols. */
static void write_fake_quant(const state *S, qs_reader *r, qs_writer *w, const qs_tensor *t,
                             const mtensor *m, qs_tensor *q)
{
    const mix_setting *s = &S->menu[m->choice];
    const float *h = stats_get(S->st, t->name, "hessian", &(size_t){ 0 });
    float *wf = read_f32(r, t, NULL), *deq = dequantized(S, s, wf, t->name, m->rows, m->cols);
    int32_t *idx = malloc((size_t)s->outliers * sizeof *idx);
    if (!idx) die("out of memory");
    mix_outlier_columns(wf, m->rows, m->cols, h, s->outliers, idx);
    json_t *cols = json_array();
    for (int i = 0; i < s->outliers; i++) json_array_append_new(cols, json_integer(idx[i]));
    json_object_set_new(json_object_get(q->attrs, "qmix"), "outlier_cols", cols);
    if (qs_writer_put(w, q, deq) < 0) writer_die(w);
    free(idx);
    free(deq);
    free(wf);
}

/* Pass 2: replay the spool with annotations (or quantized). */
static void replay(const state *S, qs_reader *r, qs_writer *w)
{
    const qs_tensor *t;
    int rc, k = 0;
    uint64_t done = 0;
    while ((rc = qs_reader_next(r, &t)) == 1) {
        if (k < S->nt && !strcmp(t->name, S->t[k].name)) {
            const mtensor *m = &S->t[k++];
            qs_tensor q;
            output_header(S, t, m, &q);
            if (S->menu[m->choice].outliers && S->c->apply) write_fake_quant(S, r, w, t, m, &q);
            else if (q.nparts > 1 || q.dtype != t->dtype) write_quantized(S, r, w, t, m, &q);
            else if (qs_copy_tensor(r, w, &q) < 0) writer_die(w);
            qs_tensor_clear(&q);
        } else if (qs_copy_tensor(r, w, NULL) < 0) {
            writer_die(w);
        }
        progress_update(++done, 0);
    }
    if (rc < 0) die("spool: %s", qs_reader_error(r));
}

int main(int argc, char **argv)
{
    struct cmdline c;
    state S;
    proginit(&argc, argv, "qmix", usage);
    parse_cmdline(argc, argv, &c);
    memset(&S, 0, sizeof S);
    S.c = &c;
    char *err = NULL;
    if (mix_menu_parse(c.menu_spec, &S.menu, &S.nmenu, &err)) usage_error("--menu: %s", err);
    if (!(S.st = stats_open(c.stats_path, &err))) die_free(err);
    if (!c.force) refuse_tty(1, "qstream");
    qs_reader *r = qs_reader_open_fd(0, "stdin", &err);
    if (!r) die_free(err);

    // pass 1 into an unlinked temporary file
    FILE *tmp = tmpfile();
    if (!tmp) die_errno("cannot create a temporary file");
    int fd = dup(fileno(tmp));
    fclose(tmp);
    if (fd < 0) die_errno("cannot create a temporary file");
    qs_writer *sw = qs_writer_open_fd(fd, qs_reader_header(r), 0, &err);
    if (!sw) die("spool: %s", err);
    progress_start(json_array_size(qs_reader_header(r)->manifest), 0);
    measure(&S, r, sw);
    if (qs_writer_close(sw, &err) < 0) die("spool: %s", err);
    if (lseek(fd, 0, SEEK_SET) != 0) die_errno("spool: cannot rewind");
    if (c.measure_text || c.measure_tokens) {
        int dfd = dup(fd);   // the store's reader closes its descriptor
        if (dfd < 0) die_errno("spool");
        calibrate(&S, dfd, qs_reader_header(r));
        if (lseek(fd, 0, SEEK_SET) != 0) die_errno("spool: cannot rewind");
    }

    FILE *rep = NULL;
    out_file ro;
    if (c.report) { out_create(&ro, c.report); rep = fdopen(dup(ro.fd), "w"); if (!rep) die_errno("%s", c.report); }
    else if (verbosity > 0) rep = stderr;
    allocate(&S, rep);
    if (c.report) { if (fclose(rep) != 0) die_errno("%s", c.report); out_commit(&ro); }

    qs_reader *sr = qs_reader_open_fd(fd, "spool", &err);
    if (!sr) die("spool: %s", err);
    qs_header h;
    build_header(&S, qs_reader_header(r), argc, argv, &h);
    qs_writer *w = qs_writer_open_fd(1, &h, 0, &err);
    if (!w) { exit_if_epipe(errno); die("stdout: %s", err); }
    replay(&S, sr, w);
    progress_end();
    if (qs_writer_close(w, &err) < 0) { exit_if_epipe(errno); die("stdout: %s", err); }
    qs_reader_close(sr);
    qs_reader_close(r);
    qs_header_clear(&h);
    stats_close(S.st);
    for (int i = 0; i < S.nt; i++) { free(S.t[i].name); free(S.t[i].size); free(S.t[i].loss); }
    free(S.t);
    free(S.menu);
    return EXIT_OK;
}
