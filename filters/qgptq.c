/* qgptq — quantize the linear weights of a model stream with GPTQ (or RTN).
 *
 * Reads a model qstream on stdin and writes it on stdout with every selected
 * 2-D linear weight (by default the decoder blocks' q/k/v/o and gate/up/down
 * projections) replaced by a quantized tensor: parts codes/scales/zeros
 * [/g_idx] and attrs.quant (common/quant.h, docs/qstream.md). Everything else
 * passes through byte for byte. GPTQ needs the per-weight Hessians of a
 * `qcal` stats file (--stats); --rtn rounds to nearest without one.
 * The output header's manifest describes the quantized tensors, and a
 * provenance entry records the command.
 */
#include "cli.h"
#include "plan.h"
#include "dtype.h"
#include "ggml_quants.h"
#include "gptq.h"
#include "qstream.h"
#include "quant.h"
#include "stats.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: qgptq [options] --stats cal.qs < in.qs > out.qs\n"
    "  Quantize the linear weights of a model stream with GPTQ (Frantar et al. 2023).\n"
    "options:\n"
    "  --bits B            integer grid bits, 2..8 (default 4)\n"
    "  --group G           columns per scale group, or -1 for whole rows (default 128)\n"
    "  --sym               symmetric grid (zero point 2^(B-1)); default asymmetric\n"
    "  --act-order         visit columns by decreasing Hessian diagonal (desc_act)\n"
    "  --static-groups     with --act-order: group params from the original columns\n"
    "  --damp F            dampening, fraction of the mean Hessian diagonal (default 0.01)\n"
    "  --block N           lazy-update block width (default 128)\n"
    "  --grid NAME         int (default), nf4, fp8_e4m3, fp8_e5m2 (nf4/fp8 need --rtn), or the\n"
    "                      llama.cpp blocks q4_0, q4_1, q5_0, q5_1, q8_0 (exact ggml bytes)\n"
    "  --rtn               round to nearest instead of GPTQ (no stats needed)\n"
    "  --mse               search clipped ranges for the lowest |w-q|^2.4 (quant.py mse)\n"
    "  --weighted          with --rtn: weight errors by the stats' x2_mean (as llama.cpp's imatrix)\n"
    "  --stats FILE        calibration statistics from qcal (Hessians)\n"
    "  --skip-missing      leave weights without stats unquantized instead of failing\n"
    "  --include GLOBS     quantize these tensors instead of the default linears\n"
    "  --exclude GLOBS     never quantize these\n"
    "  --f16-scales        round scales to f16 before choosing codes (what GPTQ/AWQ/compressed-tensors\n"
    "                      checkpoints store), so qpack --format packs them exactly\n"
    "  --dry-run           print the plan, peak memory and a time estimate from the shapes; write nothing\n"
    "  --max-memory SIZE   refuse, naming the tensor, before any work if one tensor's working memory\n"
    "                      (as --dry-run estimates it) would pass SIZE (e.g. 8GB, 512MiB)\n"
    "  --threads N         worker threads (default: online CPUs); output is identical for any N\n"
    "  -f, --force         write the stream even to a terminal\n"
    "  -q, -v, --progress, --help, --version\n"
    "examples:\n"
    "  qcat model/ | qgptq --bits 4 --group 128 --act-order --stats cal.qs | qpack -o q4/\n"
    "  qcat model/ | qgptq --rtn --bits 8 --group -1 > rtn8.qs\n";

static const char default_linears[] =
    "*.self_attn.q_proj.weight,*.self_attn.k_proj.weight,*.self_attn.v_proj.weight,"
    "*.self_attn.o_proj.weight,*.mlp.gate_proj.weight,*.mlp.up_proj.weight,*.mlp.down_proj.weight";

struct cmdline {
    gptq_opts gptq;              /* grid, scale search, block, damp, threads */
    int rtn, weighted, skip_missing, force, dry_run;
    uint64_t max_memory;         /* 0 = no limit */
    const char *stats_path, *include, *exclude;
};

static void parse_cmdline(int argc, char **argv, struct cmdline *c)
{
    memset(c, 0, sizeof *c);
    gptq_opts_default(&c->gptq);
    gptq_opts *o = &c->gptq;
    quant_grid *g = &o->grid;
    int grid_spec = 0, group_spec = 0, bits_spec = 0;
    o->threads = default_threads();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = v && (!strcmp(a, "--bits") || !strcmp(a, "--group") || !strcmp(a, "--damp")
                          || !strcmp(a, "--block") || !strcmp(a, "--grid") || !strcmp(a, "--stats")
                          || !strcmp(a, "--include") || !strcmp(a, "--exclude") || !strcmp(a, "--threads")
                          || !strcmp(a, "--max-memory"));
        if (!strcmp(a, "--bits") && v) { g->bits = (int)parse_long("--bits", v, 2, 8); bits_spec = 1; }
        else if (!strcmp(a, "--group") && v) {
            g->group = (int)parse_long("--group", v, -1, 1 << 30);
            if (g->group == 0) usage_error("--group: must be -1 (whole rows) or positive");
            group_spec = 1;
        }
        else if (!strcmp(a, "--damp") && v) o->damp = parse_double("--damp", v, 0.0, 10.0);
        else if (!strcmp(a, "--block") && v) o->block = (int)parse_long("--block", v, 1, 1 << 20);
        else if (!strcmp(a, "--grid") && v) {
            if (quant_grid_set_scheme(g, v)) usage_error("--grid: unknown grid '%s'", v);
            grid_spec = 1;
        }
        else if (!strcmp(a, "--stats") && v) c->stats_path = v;
        else if (!strcmp(a, "--include") && v) c->include = v;
        else if (!strcmp(a, "--exclude") && v) c->exclude = v;
        else if (!strcmp(a, "--threads") && v) o->threads = (int)parse_long("--threads", v, 1, 1024);
        else if (!strcmp(a, "--max-memory") && v) c->max_memory = parse_size("--max-memory", v);
        else if (!strcmp(a, "--sym")) g->sym = 1;
        else if (!strcmp(a, "--act-order")) g->act_order = 1;
        else if (!strcmp(a, "--static-groups")) g->static_groups = 1;
        else if (!strcmp(a, "--rtn")) c->rtn = 1;
        else if (!strcmp(a, "--mse")) o->scale.mode = QSCALE_MSE;
        else if (!strcmp(a, "--weighted")) c->weighted = 1;
        else if (!strcmp(a, "--skip-missing")) c->skip_missing = 1;
        else if (!strcmp(a, "--dry-run")) c->dry_run = 1;
        else if (!strcmp(a, "--f16-scales")) o->scale.f16_scales = 1;
        else if (!strcmp(a, "-f") || !strcmp(a, "--force")) c->force = 1;
        else if (a[0] == '-' && a[1]) usage_error("unknown option '%s'%s", a, v || takes ? "" : " or missing value");
        else usage_error("unexpected argument '%s' (the stream comes on stdin)", a);
        if (takes) i++;
    }
    // grid-specific defaults and checks
    if (grid_spec && g->scheme == QUANT_FP8 && !group_spec) g->group = -1;
    if (grid_spec && g->scheme != QUANT_INT && bits_spec) usage_error("--bits: only for --grid int");
    if (g->scheme == QUANT_GGUF && group_spec) usage_error("--group: GGUF grids have blocks of 32");
    if (g->scheme == QUANT_GGUF && g->act_order) usage_error("--act-order: GGUF grids have no g_idx");
    if (g->scheme == QUANT_GGUF && c->gptq.block % 32) usage_error("--block: must be a multiple of 32 for GGUF grids");
    if ((g->scheme == QUANT_NF4 || g->scheme == QUANT_FP8) && !c->rtn) usage_error("--grid %s: needs --rtn (GPTQ is implemented for int grids)",
                                                       g->scheme == QUANT_NF4 ? "nf4" : "fp8");
    if (g->static_groups && !g->act_order) usage_error("--static-groups: goes with --act-order");
    if (c->rtn && g->act_order) usage_error("--act-order: means nothing with --rtn");
    if (c->weighted && !c->rtn) usage_error("--weighted: only with --rtn (GPTQ weighs errors by the Hessian)");
    if (c->weighted && !c->stats_path) usage_error("--weighted: needs --stats");
    if (!c->rtn && !c->stats_path) usage_error("GPTQ needs --stats FILE (or use --rtn)");
    char *err = NULL;
    if (quant_grid_check(g, 0, &err)) usage_error("%s", err);
    snprintf(g->method, sizeof g->method, "%s", c->rtn ? "rtn" : "gptq");
}

/*-*** Planning: which tensors, and what they become ***/

static int is_selected(const struct cmdline *c, const char *name, qdtype dt, int ndim)
{
    if (ndim != 2 || !dtype_traits[dt].is_float) return 0;
    if (!glob_list_match(c->include ? c->include : default_linears, name)) return 0;
    return !(c->exclude && glob_list_match(c->exclude, name));
}

/* The grid of one tensor: the command line's, or the per-tensor setting qmix
 * chose (attrs/manifest "qmix": {"grid": "int"|"nf4"|"f16", "bits", "group",
 * "sym"}). Returns 1 when qmix kept the tensor in f16 (pass it through). */
static int tensor_grid(const struct cmdline *c, const json_t *qmix, quant_grid *g)
{
    *g = c->gptq.grid;
    if (!qmix) return 0;
    const char *grid = json_string_value(json_object_get(qmix, "grid"));
    if (grid && !strcmp(grid, "f16")) return 1;
    if (json_integer_value(json_object_get(qmix, "outliers")) > 0)
        die("qmix chose f16 outlier columns for a tensor: qgptq cannot keep them (use qmix --apply)");
    g->scheme = grid && !strcmp(grid, "nf4") ? QUANT_NF4 : QUANT_INT;
    g->bits = (int)json_integer_value(json_object_get(qmix, "bits"));
    g->group = (int)json_integer_value(json_object_get(qmix, "group"));
    g->sym = json_is_true(json_object_get(qmix, "sym"));
    if (g->scheme == QUANT_NF4) g->act_order = g->static_groups = 0;
    snprintf(g->method, sizeof g->method, "%s", c->rtn || g->scheme == QUANT_NF4 ? "rtn" : "gptq");
    return 0;
}

/* 1 quantize, 0 pass through (dies on a weight with no stats and no --skip-missing). */
static int plan_tensor(const struct cmdline *c, stats *st, const char *name, qdtype dt, int ndim,
                       int warn)
{
    if (!is_selected(c, name, dt, ndim)) return 0;
    if (c->rtn && !c->weighted) return 1;
    size_t n;
    const char *what = c->rtn ? "x2_mean" : "hessian";
    if (stats_has(st, name, what, &n)) return 1;
    if (c->skip_missing) {
        if (warn) warn_msg("'%s': no %s in %s, left unquantized", name, what, c->stats_path);
        return 0;
    }
    die("'%s': no %s in %s (use --skip-missing to leave it unquantized)", name, what, c->stats_path);
}

/* --dry-run and --max-memory: per tensor, GPTQ's working set (W and Q f32 row
 * blocks, H and its inverse in f64: 2 d_in² · 8 bytes) and arithmetic
 * (Cholesky and inverse d_in³, the column loop ~2 rows · d_in² multiply-adds),
 * from the shapes. */
static plan *gptq_plan(const struct cmdline *c, stats *st, const qs_header *in)
{
    plan *p = plan_new("qgptq", c->gptq.threads, QS_DEFAULT_CHUNK);
    size_t i;
    json_t *e;
    json_array_foreach(in->manifest, i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        json_t *sh = json_object_get(e, "shape");
        int nd = (int)json_array_size(sh);
        qdtype dt = dtype_from_name(json_string_value(json_object_get(e, "dtype")) ?: "");
        uint64_t nb = (uint64_t)json_integer_value(json_object_get(e, "nbytes"));
        if (json_object_get(e, "quant") || !plan_tensor(c, st, name, dt, nd, 1)) {
            plan_add(p, name, "copy", 0, 0, nb, nb);
            continue;
        }
        double rows = (double)json_integer_value(json_array_get(sh, 0)), cols = (double)json_integer_value(json_array_get(sh, 1));
        char act[48];
        snprintf(act, sizeof act, "%s %s%d g%d", c->rtn ? "rtn" : "gptq", c->gptq.grid.scheme == QUANT_INT ? "int" : "",
                 c->gptq.grid.bits, c->gptq.grid.group);
        double mem = rows * cols * (4 + 4 + 1) + (c->rtn ? 0 : 2 * cols * cols * 8);
        double flops = c->rtn ? 10 * rows * cols : cols * cols * cols + 2 * rows * cols * cols;
        plan_add(p, name, act, (uint64_t)mem, flops, nb, (uint64_t)(rows * cols * 1.1));
    }
    return p;
}

/* The quantized tensor's header: logical f32 [rows, cols], parts, attrs. */
static void quantized_header(const quant_grid *g, const char *name, const json_t *attrs,
                             int64_t rows, int64_t cols, qs_tensor *q)
{
    const int64_t shape[2] = { rows, cols }, ng = quant_ngroups(g, cols);
    if (qs_tensor_init(q, name, DT_F32, 2, shape)) die("'%s': bad shape", name);
    q->nparts = 0;
    q->attrs = attrs ? json_deep_copy(attrs) : json_object();
    json_object_set_new(q->attrs, "quant", quant_grid_to_json(g));
    if (g->scheme == QUANT_GGUF) {
        const int64_t bshape[2] = { rows, (int64_t)ggml_row_size(ggml_qtype_from_name(g->gguf_type), cols) };
        qs_tensor_add_part(q, "blocks", DT_U8, 2, bshape);
        return;
    }
    const int64_t cshape[2] = { rows, cols }, sshape[2] = { rows, ng }, fp8row[2] = { rows, 1 }, one[1] = { 1 };
    qs_tensor_add_part(q, "codes", DT_U8, 2, cshape);
    if (g->scheme == QUANT_FP8)
        qs_tensor_add_part(q, "scales", DT_F32, g->group == 0 ? 1 : 2, g->group == 0 ? one : fp8row);
    else
        qs_tensor_add_part(q, "scales", DT_F32, 2, sshape);
    if (g->scheme == QUANT_INT) qs_tensor_add_part(q, "zeros", DT_F32, 2, sshape);
    if (g->scheme == QUANT_INT && g->act_order && !g->static_groups && g->group > 0)
        qs_tensor_add_part(q, "g_idx", DT_I32, 1, &cols);
}


/* Output header: input's, manifest entries of quantized tensors replaced. */
static void build_header(const struct cmdline *c, stats *st, const qs_header *in,
                         int argc, char **argv, qs_header *out)
{
    if (qs_header_copy(out, in)) die("out of memory");
    json_t *old = out->manifest;
    out->manifest = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(old, i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        const json_t *shape = json_object_get(e, "shape");
        const char *dts = json_string_value(json_object_get(e, "dtype"));
        qdtype dt = dts ? dtype_from_name(dts) : DT_INVALID;
        int ndim = (int)json_array_size(shape);
        quant_grid g;
        if (!name || json_object_get(e, "quant") || !plan_tensor(c, st, name, dt, ndim, 1)
            || tensor_grid(c, json_object_get(e, "qmix"), &g)) {
            json_array_append(out->manifest, e);
            continue;
        }
        qs_tensor q;
        quantized_header(&g, name, NULL, json_integer_value(json_array_get(shape, 0)),
                         json_integer_value(json_array_get(shape, 1)), &q);
        qs_header_manifest_add(out, &q);
        qs_tensor_clear(&q);
    }
    json_decref(old);
    add_provenance_or_die(out, argc, argv);
}

/*-*** Quantizing one tensor ***/


static float *read_weight_f32(qs_reader *r, const qs_tensor *t, int64_t numel)
{
    size_t len;
    void *raw = qs_reader_read_all(r, &len);
    if (!raw) die("%s", qs_reader_error(r));
    if (t->nparts != 1 || len != (size_t)numel * dtype_size(t->dtype))
        die("'%s': expected one data part of %lld values", t->name, (long long)numel);
    float *w = malloc((size_t)numel * sizeof *w);
    if (!w) die("'%s': out of memory", t->name);
    dtype_to_f32(t->dtype, raw, w, (size_t)numel);
    free(raw);
    return w;
}

/* Round to nearest: quant.c grids, or llama-quantize's own quantizer for GGUF
 * blocks (x2_mean as its imatrix with --weighted). Fills res like GPTQ does. */
static void rtn_tensor(const struct cmdline *c, const quant_grid *g, stats *st, const char *name,
                       const float *wf, int64_t rows, int64_t cols, gptq_result *res)
{
    quant_scale_opts so = c->gptq.scale;
    size_t n = 0;
    char *err = NULL;
    so.importance = c->weighted ? stats_get(st, name, "x2_mean", &n) : NULL;
    if (c->weighted && n != (size_t)cols)
        die("'%s': x2_mean has %zu values, expected %lld", name, n, (long long)cols);
    memset(res, 0, sizeof *res);
    if (g->scheme == QUANT_GGUF) {
        const int type = ggml_qtype_from_name(g->gguf_type);
        res->row_bytes = ggml_row_size(type, cols);
        res->blocks = malloc(res->row_bytes * (size_t)rows);
        if (!res->blocks || ggml_quantize_rows(type, wf, res->blocks, rows, cols, so.importance) == 0)
            die("'%s': cannot quantize to %s", name, g->gguf_type);
        return;
    }
    res->ngroups = quant_ngroups(g, cols);
    res->codes = malloc((size_t)(rows * cols));
    res->scales = malloc((size_t)(rows * res->ngroups) * sizeof(float));
    res->zeros = malloc((size_t)(rows * res->ngroups) * sizeof(float));
    if (!res->codes || !res->scales || !res->zeros) die("'%s': out of memory", name);
    if (quant_rtn(g, &so, wf, rows, cols, res->codes, res->scales, g->scheme == QUANT_INT ? res->zeros : NULL,
                  NULL, c->gptq.threads, &err))
        die("'%s': %s", name, err);
}

static void quantize_tensor(const struct cmdline *c, stats *st, qs_reader *r, qs_writer *w,
                            const qs_tensor *t, const quant_grid *grid)
{
    const int64_t rows = t->shape[0], cols = t->shape[1];
    const char *json_mask = t->attrs ? json_string_value(json_object_get(t->attrs, "mask")) : NULL;
    gptq_opts o = c->gptq;
    o.mask_zeros = json_mask && !strcmp(json_mask, "zeros");
    o.grid = *grid;
    char *err = NULL;
    if (quant_grid_check(&o.grid, cols, &err)) die("'%s': %s", t->name, err);
    float *wf = read_weight_f32(r, t, rows * cols);
    gptq_result res;
    memset(&res, 0, sizeof res);
    if (c->rtn || o.grid.scheme == QUANT_NF4 || o.grid.scheme == QUANT_FP8) rtn_tensor(c, &o.grid, st, t->name, wf, rows, cols, &res);
    else {
        size_t n = 0;
        stats_evict(st, t->name);     /* one weight's Hessian held at a time (q/k/v share one) */
        const float *h = stats_get(st, t->name, "hessian", &n);
        if (!h) die("%s", stats_error(st) ? stats_error(st) : "no hessian");
        if (n != (size_t)(cols * cols))
            die("'%s': hessian has %zu values, expected %lld x %lld", t->name, n, (long long)cols, (long long)cols);
        if (gptq_quantize(wf, rows, cols, h, &o, &res, &err)) die("'%s': %s", t->name, err);
    }
    qs_tensor q;
    quantized_header(&o.grid, t->name, t->attrs, rows, cols, &q);
    if (qs_writer_begin(w, &q) < 0) writer_die(w);
    const void *parts[4] = { res.codes, res.scales, res.zeros, res.g_idx };
    if (res.blocks) parts[0] = res.blocks;
    for (int i = 0; i < q.nparts; i++)
        if (qs_writer_write(w, parts[i], q.parts[i].nbytes) < 0) writer_die(w);
    if (qs_writer_end(w) < 0) writer_die(w);
    qs_tensor_clear(&q);
    gptq_result_free(&res);
    free(wf);
}

static void copy_tensor(qs_reader *r, qs_writer *w)
{
    if (qs_copy_tensor(r, w, NULL) == 0) return;
    exit_if_epipe(qs_writer_errno(w));
    die("%s", qs_writer_error(w) ? qs_writer_error(w) : qs_reader_error(r));
}

int main(int argc, char **argv)
{
    struct cmdline c;
    proginit(&argc, argv, "qgptq", usage);
    parse_cmdline(argc, argv, &c);
    char *err = NULL;
    stats *st = NULL;
    if (c.stats_path && !(st = stats_open(c.stats_path, &err))) die_free(err);
    if (!c.force && !c.dry_run) refuse_tty(1, "qstream");
    qs_reader *r = qs_reader_open_fd(0, "stdin", &err);
    if (!r) die_free(err);
    if ((c.dry_run || c.max_memory) && plan_done(gptq_plan(&c, st, qs_reader_header(r)), c.max_memory, c.dry_run)) {
        qs_reader_close(r);
        if (st) stats_close(st);
        return EXIT_OK;
    }

    qs_header h;
    build_header(&c, st, qs_reader_header(r), argc, argv, &h);
    qs_writer *w = qs_writer_open_fd(1, &h, 0, &err);
    if (!w) { exit_if_epipe(errno); die("stdout: %s", err); }
    progress_start(json_array_size(h.manifest), 0);
    const qs_tensor *t;
    int rc;
    uint64_t done = 0;
    while ((rc = qs_reader_next(r, &t)) == 1) {
        quant_grid g;
        if (!(t->attrs && json_object_get(t->attrs, "quant")) && plan_tensor(&c, st, t->name, t->dtype, t->ndim, 0)
            && !tensor_grid(&c, t->attrs ? json_object_get(t->attrs, "qmix") : NULL, &g))
            quantize_tensor(&c, st, r, w, t, &g);
        else
            copy_tensor(r, w);
        progress_update(++done, 0);
    }
    if (rc < 0) die("%s", qs_reader_error(r));
    progress_end();
    if (qs_writer_close(w, &err) < 0) { exit_if_epipe(errno); die("stdout: %s", err); }
    qs_reader_close(r);
    qs_header_clear(&h);
    if (st) stats_close(st);
    return EXIT_OK;
}
