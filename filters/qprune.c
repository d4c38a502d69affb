/* qprune — prune the linear weights of a model stream: magnitude, Wanda or
 * SparseGPT masks (unstructured, N:M), and structured removal of MLP channels
 * and attention heads.
 *
 * Reads a model qstream on stdin, writes it on stdout. Selected weights keep
 * their dtype and get exact zeros where pruned, with attrs "mask": "zeros"
 * (qgptq keeps those weights at zero) and "sparsity": {method, pattern,
 * ratio}; SparseGPT with --bits quantizes at the same time (parts
 * codes/scales/zeros, attrs.quant, as qgptq writes them). Everything else
 * passes through byte for byte. The algorithms are common/prune.h's.
 *
 * Structured pruning (--structured mlp=R,heads=K) really shrinks tensors,
 * rewrites config.json in the header's carried files and the manifest:
 *  - MLP: removes prune_count(R, intermediate_size) channels in every layer
 *    (rows of gate_proj/up_proj, columns of down_proj), those with the lowest
 *    Wanda-sp score ||X_c||_2 * sum_i |W_down[i, c]| (x2_mean of down_proj's
 *    input; with --magnitude ||X|| = 1);
 *  - attention: removes K query heads per layer as whole key/value groups
 *    (with GQA, a group is the n_heads/n_kv_heads query heads sharing one
 *    k/v head; K must be a multiple of that): q_proj rows, k_proj/v_proj rows
 *    of the group's kv head, o_proj columns; a group's score is the same
 *    criterion summed over its o_proj input columns. Removing whole groups
 *    keeps HF's head-to-kv mapping (h -> h / (n_heads/n_kv)) valid.
 * HF's config has one intermediate_size and one head count for all layers, so
 * every layer loses the same number (uniform per-layer removal); which
 * channels go is chosen per layer. head_dim is written explicitly, since
 * hidden_size / num_attention_heads no longer gives it. Structured cuts apply
 * to every layer's projections (--skip only exempts a tensor from the
 * unstructured/N:M pass), then the unstructured pass prunes the smaller
 * tensors with the matching subset of the statistics.
 * Tensors of a layer are held back (in input order) until the layer's
 * down_proj / o_proj has arrived and the kept channels are known.
 */
#include "cli.h"
#include "plan.h"
#include "dtype.h"
#include "prune.h"
#include "qstream.h"
#include "quant.h"
#include "stats.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: qprune (--magnitude | --wanda [N:M] | --sparsegpt [N:M]) [options] < in.qs > out.qs\n"
    "  Prune the linear weights (q/k/v/o, gate/up/down of every decoder layer) of a model stream.\n"
    "methods:\n"
    "  --magnitude         |W_ij| (no statistics needed)\n"
    "  --wanda             |W_ij| * ||X_j||_2 within each output row (Sun et al. 2024); needs --stats\n"
    "  --sparsegpt         OBS mask and update with the Hessian (Frantar, Alistarh 2023); needs --stats\n"
    "patterns:\n"
    "  --sparsity R        fraction of each row's weights to zero (default 0.5)\n"
    "  --per-layer         the fraction holds over each whole matrix (SparseGPT: per 128-column\n"
    "                      block over all rows, as the reference; single-threaded) instead of each row\n"
    "  --nm N:M            keep N of every M consecutive inputs of each row (2:4, 4:8)\n"
    "  --structured mlp=R,heads=K  remove fraction R of the MLP channels and K query heads (whole\n"
    "                      key/value groups) in every layer; rewrites config.json\n"
    "  --sparsity-for GLOB=R  ratio R for tensors matching GLOB (repeatable; the last match wins;\n"
    "                      R = 0 leaves them dense; with --nm only 0 is allowed)\n"
    "  --skip GLOBS        never prune these (unstructured / N:M)\n"
    "  --dry-run           print the plan, peak memory and a time estimate; write nothing\n"
    "  --max-memory SIZE   refuse, naming the tensor, before any work if one tensor's working memory\n"
    "                      (as --dry-run estimates it) would pass SIZE (e.g. 8GB, 512MiB)\n"
    "  --include GLOBS     prune these instead of the default linears\n"
    "options:\n"
    "  --stats FILE        calibration statistics from qcal (x2_mean for Wanda, Hessians for SparseGPT)\n"
    "  --skip-missing      leave weights without statistics dense instead of failing\n"
    "  --bits B            SparseGPT only: quantize jointly to B-bit integers (2..8)\n"
    "  --group G           with --bits: columns per scale group, -1 = whole rows (default 128)\n"
    "  --sym               with --bits: symmetric grid\n"
    "  --damp F            SparseGPT dampening (default 0.01)\n"
    "  --block N           SparseGPT column block (default 128)\n"
    "  --threads N         worker threads (default: online CPUs); output is identical for any N\n"
    "  -f, --force         write the stream even to a terminal\n"
    "  -q, -v, --progress, --help, --version\n"
    "examples:\n"
    "  qcat model/ | qprune --wanda 2:4 --stats cal.qs | qgptq --bits 4 --stats cal.qs | qpack -o out/\n"
    "  qcat model/ | qprune --sparsegpt --sparsity 0.5 --stats cal.qs > sparse.qs\n"
    "  qcat model/ | qprune --magnitude --structured mlp=0.25 | qpack -o small/\n";

static const char default_linears[] =
    "*.self_attn.q_proj.weight,*.self_attn.k_proj.weight,*.self_attn.v_proj.weight,"
    "*.self_attn.o_proj.weight,*.mlp.gate_proj.weight,*.mlp.up_proj.weight,*.mlp.down_proj.weight";

struct rule { char *glob; double ratio; };

struct cmdline {
    prune_opts prune;            /* method, ratio, per_layer, N:M, block, damp, threads */
    quant_grid grid;             /* --bits: joint quantization grid */
    int method_spec, joint, skip_missing, force, dry_run;
    uint64_t max_memory;         /* 0 = no limit */
    double mlp_ratio;            /* --structured mlp=R */
    int heads;                   /* --structured heads=K */
    struct rule *rules;
    int nrules;
    char *skip, *include;        /* comma-joined glob lists */
    const char *stats_path;
};

/*-*** Command line ***/

static int parse_nm(const char *s, int *n, int *m)
{
    char *end;
    long a = strtol(s, &end, 10);
    if (end == s || *end != ':') return -1;
    const char *t = end + 1;
    long b = strtol(t, &end, 10);
    if (end == t || *end || a < 1 || b <= a || b > 256) return -1;
    *n = (int)a;
    *m = (int)b;
    return 0;
}

static void parse_structured(struct cmdline *c, const char *v)
{
    char *copy = strdup(v), *save = NULL;
    for (char *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (!strncmp(p, "mlp=", 4)) c->mlp_ratio = parse_double("--structured mlp", p + 4, 0.0, 0.999);
        else if (!strncmp(p, "heads=", 6)) c->heads = (int)parse_long("--structured heads", p + 6, 0, 1 << 20);
        else usage_error("--structured: expected mlp=R and/or heads=K, got '%s'", p);
    }
    free(copy);
}

static void add_rule(struct cmdline *c, const char *v)
{
    const char *eq = strrchr(v, '=');
    if (!eq || eq == v) usage_error("--sparsity-for: expected GLOB=RATIO, got '%s'", v);
    c->rules = realloc(c->rules, (size_t)(c->nrules + 1) * sizeof *c->rules);
    c->rules[c->nrules].glob = strndup(v, (size_t)(eq - v));
    c->rules[c->nrules].ratio = parse_double("--sparsity-for", eq + 1, 0.0, 0.999);
    c->nrules++;
}

static void append_globs(char **list, const char *v)
{
    size_t a = *list ? strlen(*list) : 0, b = strlen(v);
    *list = realloc(*list, a + b + 2);
    if (a) (*list)[a++] = ',';
    memcpy(*list + a, v, b + 1);
}

static int set_method(struct cmdline *c, prune_method m, const char *next)
{
    if (c->method_spec) usage_error("choose one of --magnitude, --wanda, --sparsegpt");
    c->method_spec = 1;
    c->prune.method = m;
    // "--wanda 2:4" shorthand for "--wanda --nm 2:4"
    return next && parse_nm(next, &c->prune.nm_n, &c->prune.nm_m) == 0;
}

static void check_cmdline(struct cmdline *c, int sparsity_spec, int group_spec)
{
    prune_opts *o = &c->prune;
    if (!c->method_spec) usage_error("choose a method: --magnitude, --wanda or --sparsegpt");
    if (o->nm_m && sparsity_spec) usage_error("--sparsity: N:M fixes the ratio (%d:%d keeps %d of %d)",
                                              o->nm_n, o->nm_m, o->nm_n, o->nm_m);
    if (o->nm_m && o->per_layer) usage_error("--per-layer: N:M is always per row");
    for (int i = 0; o->nm_m && i < c->nrules; i++)
        if (c->rules[i].ratio != 0) usage_error("--sparsity-for: with --nm only ratio 0 (dense) is allowed");
    if (!sparsity_spec && !o->nm_m && (c->mlp_ratio > 0 || c->heads > 0)) o->ratio = 0;   // structured only
    if (o->method != PRUNE_MAGNITUDE && !c->stats_path)
        usage_error("--%s needs --stats FILE (from qcal)", prune_method_name(o->method));
    if (c->joint && o->method != PRUNE_SPARSEGPT) usage_error("--bits: joint quantization is SparseGPT's (use qgptq after qprune)");
    if (group_spec && !c->joint) usage_error("--group: only with --bits");
    if (c->grid.sym && !c->joint) usage_error("--sym: only with --bits");
    o->quant = c->joint ? &c->grid : NULL;
    char *err = NULL;
    if (prune_opts_check(o, 0, &err)) usage_error("%s", err);
}

static void parse_cmdline(int argc, char **argv, struct cmdline *c)
{
    memset(c, 0, sizeof *c);
    prune_opts_default(&c->prune);
    c->prune.threads = default_threads();
    quant_grid_default(&c->grid);
    strcpy(c->grid.method, "gptq");
    int sparsity_spec = 0, group_spec = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = v && (!strcmp(a, "--sparsity") || !strcmp(a, "--nm") || !strcmp(a, "--structured")
                          || !strcmp(a, "--sparsity-for") || !strcmp(a, "--skip") || !strcmp(a, "--include")
                          || !strcmp(a, "--stats") || !strcmp(a, "--bits") || !strcmp(a, "--group")
                          || !strcmp(a, "--damp") || !strcmp(a, "--block") || !strcmp(a, "--threads")
                          || !strcmp(a, "--max-memory"));
        if (!strcmp(a, "--magnitude")) takes = set_method(c, PRUNE_MAGNITUDE, v);
        else if (!strcmp(a, "--wanda")) takes = set_method(c, PRUNE_WANDA, v);
        else if (!strcmp(a, "--sparsegpt")) takes = set_method(c, PRUNE_SPARSEGPT, v);
        else if (!strcmp(a, "--sparsity") && v) { c->prune.ratio = parse_double("--sparsity", v, 0.0, 0.999); sparsity_spec = 1; }
        else if (!strcmp(a, "--nm") && v) {
            if (parse_nm(v, &c->prune.nm_n, &c->prune.nm_m)) usage_error("--nm: expected N:M with 0 < N < M <= 256, got '%s'", v);
        }
        else if (!strcmp(a, "--per-layer")) c->prune.per_layer = 1;
        else if (!strcmp(a, "--structured") && v) parse_structured(c, v);
        else if (!strcmp(a, "--sparsity-for") && v) add_rule(c, v);
        else if (!strcmp(a, "--skip") && v) append_globs(&c->skip, v);
        else if (!strcmp(a, "--include") && v) append_globs(&c->include, v);
        else if (!strcmp(a, "--stats") && v) c->stats_path = v;
        else if (!strcmp(a, "--skip-missing")) c->skip_missing = 1;
        else if (!strcmp(a, "--dry-run")) c->dry_run = 1;
        else if (!strcmp(a, "--bits") && v) { c->grid.bits = (int)parse_long("--bits", v, 2, 8); c->joint = 1; }
        else if (!strcmp(a, "--group") && v) {
            c->grid.group = (int)parse_long("--group", v, -1, 1 << 30);
            if (c->grid.group == 0) usage_error("--group: must be -1 (whole rows) or positive");
            group_spec = 1;
        }
        else if (!strcmp(a, "--sym")) c->grid.sym = 1;
        else if (!strcmp(a, "--damp") && v) c->prune.damp = parse_double("--damp", v, 0.0, 10.0);
        else if (!strcmp(a, "--block") && v) c->prune.block = (int)parse_long("--block", v, 1, 1 << 20);
        else if (!strcmp(a, "--threads") && v) c->prune.threads = (int)parse_long("--threads", v, 1, 1024);
        else if (!strcmp(a, "--max-memory") && v) c->max_memory = parse_size("--max-memory", v);
        else if (!strcmp(a, "-f") || !strcmp(a, "--force")) c->force = 1;
        else if (a[0] == '-' && a[1]) usage_error("unknown option '%s'%s", a, v || takes ? "" : " or missing value");
        else usage_error("unexpected argument '%s' (the stream comes on stdin)", a);
        if (takes) i++;
    }
    check_cmdline(c, sparsity_spec, group_spec);
}

/*-*** Structured plan: roles, sizes from config.json ***/

typedef enum { R_NONE = 0, R_MLP_ROWS, R_MLP_COLS, R_Q_ROWS, R_KV_ROWS, R_O_COLS } role;

static const struct { const char *suffix; role r; } role_table[] = {
    { ".mlp.gate_proj.weight", R_MLP_ROWS }, { ".mlp.up_proj.weight", R_MLP_ROWS },
    { ".mlp.gate_proj.bias", R_MLP_ROWS },   { ".mlp.up_proj.bias", R_MLP_ROWS },
    { ".mlp.down_proj.weight", R_MLP_COLS },
    { ".self_attn.q_proj.weight", R_Q_ROWS }, { ".self_attn.q_proj.bias", R_Q_ROWS },
    { ".self_attn.k_proj.weight", R_KV_ROWS }, { ".self_attn.k_proj.bias", R_KV_ROWS },
    { ".self_attn.v_proj.weight", R_KV_ROWS }, { ".self_attn.v_proj.bias", R_KV_ROWS },
    { ".self_attn.o_proj.weight", R_O_COLS },
};

typedef struct {
    int on;                      /* structured pruning requested */
    int64_t dim, inter, n_heads, n_kv, head_dim;
    int64_t inter_keep, heads_keep, kv_keep;
} splan;

/* Role of a tensor in structured pruning, and the layer prefix (before ".mlp."/".self_attn."). */
static role role_of(const splan *sp, const char *name, char *prefix, size_t plen)
{
    if (!sp->on) return R_NONE;
    const size_t n = strlen(name);
    for (size_t i = 0; i < sizeof role_table / sizeof role_table[0]; i++) {
        const size_t s = strlen(role_table[i].suffix);
        if (n <= s || strcmp(name + n - s, role_table[i].suffix)) continue;
        const role r = role_table[i].r;
        if ((r == R_MLP_ROWS || r == R_MLP_COLS) && sp->inter_keep == sp->inter) return R_NONE;
        if (r >= R_Q_ROWS && sp->heads_keep == sp->n_heads) return R_NONE;
        if (prefix) snprintf(prefix, plen, "%.*s", (int)(n - s), name);
        return r;
    }
    return R_NONE;
}

static int64_t cfg_int(const json_t *cfg, const char *key, int64_t dflt)
{
    const json_t *v = json_object_get(cfg, key);
    if (json_is_integer(v)) return json_integer_value(v);
    if (dflt < 0) die("config.json: no integer '%s' (needed by --structured)", key);
    return dflt;
}

/* Read the sizes, decide the kept counts, and rewrite config.json in h. */
static void plan_structured(const struct cmdline *c, qs_header *h, splan *sp)
{
    memset(sp, 0, sizeof *sp);
    if (!(c->mlp_ratio > 0) && c->heads == 0) return;
    sp->on = 1;
    const qs_file *f = qs_header_file(h, "config.json");
    if (!f) die("--structured: the stream carries no config.json");
    json_error_t je;
    json_t *cfg = json_loadb((const char *)f->data, f->len, 0, &je);
    if (!json_is_object(cfg)) die("config.json: %s", je.text);
    sp->dim = cfg_int(cfg, "hidden_size", -1);
    sp->inter = cfg_int(cfg, "intermediate_size", -1);
    sp->n_heads = cfg_int(cfg, "num_attention_heads", -1);
    sp->n_kv = cfg_int(cfg, "num_key_value_heads", sp->n_heads);
    sp->head_dim = cfg_int(cfg, "head_dim", sp->n_heads > 0 ? sp->dim / sp->n_heads : 0);
    if (sp->n_heads < 1 || sp->n_kv < 1 || sp->n_heads % sp->n_kv || sp->head_dim < 1 || sp->inter < 1)
        die("config.json: inconsistent head counts or sizes");
    const int64_t g = sp->n_heads / sp->n_kv;
    sp->inter_keep = sp->inter - prune_count(c->mlp_ratio, sp->inter);
    if (sp->inter_keep < 1) die("--structured mlp=%g: would remove all %lld channels", c->mlp_ratio, (long long)sp->inter);
    if (c->heads % g)
        die("--structured heads=%d: each of the %lld key/value heads serves %lld query heads; remove whole "
            "groups (a multiple of %lld)", c->heads, (long long)sp->n_kv, (long long)g, (long long)g);
    sp->heads_keep = sp->n_heads - c->heads;
    sp->kv_keep = sp->n_kv - c->heads / g;
    if (sp->kv_keep < 1) die("--structured heads=%d: the model has only %lld heads", c->heads, (long long)sp->n_heads);
    // the rewritten config (same for every layer: HF has one size per model)
    json_object_set_new(cfg, "intermediate_size", json_integer(sp->inter_keep));
    if (c->heads) {
        json_object_set_new(cfg, "num_attention_heads", json_integer(sp->heads_keep));
        json_object_set_new(cfg, "num_key_value_heads", json_integer(sp->kv_keep));
        json_object_set_new(cfg, "head_dim", json_integer(sp->head_dim));
    }
    char *text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    size_t len = strlen(text);
    text = realloc(text, len + 2);
    text[len++] = '\n';
    if (qs_header_add_file(h, "config.json", text, len)) die("out of memory");
    free(text);
    json_decref(cfg);
}

/* The shape a tensor of role r has after the cut; dies if it does not fit the config. */
static void cut_shape(const splan *sp, const char *name, role r, int ndim, const int64_t *in, int64_t *out)
{
    memcpy(out, in, (size_t)ndim * sizeof *out);
    if (r == R_NONE) return;
    const int64_t qd = sp->n_heads * sp->head_dim, kvd = sp->n_kv * sp->head_dim;
    int64_t want = 0, *d = NULL, keep = 0;
    switch (r) {
    case R_MLP_ROWS: want = sp->inter; d = &out[0]; keep = sp->inter_keep; break;
    case R_MLP_COLS: want = sp->inter; d = &out[1]; keep = sp->inter_keep; break;
    case R_Q_ROWS:   want = qd; d = &out[0]; keep = sp->heads_keep * sp->head_dim; break;
    case R_KV_ROWS:  want = kvd; d = &out[0]; keep = sp->kv_keep * sp->head_dim; break;
    case R_O_COLS:   want = qd; d = &out[1]; keep = sp->heads_keep * sp->head_dim; break;
    default: break;
    }
    const int col = r == R_MLP_COLS || r == R_O_COLS;
    if (ndim < 1 || ndim > 2 || (col && ndim != 2) || *d != want)
        die("'%s': shape does not match config.json (expected %lld along the pruned dimension)", name, (long long)want);
    *d = keep;
}

/*-*** Unstructured plan ***/

/* Ratio for a tensor (-1: not pruned). N:M uses 1 - N/M. */
static double ratio_for(const struct cmdline *c, const char *name, qdtype dt, int ndim)
{
    if (ndim != 2 || !dtype_traits[dt].is_float) return -1;
    if (!glob_list_match(c->include ? c->include : default_linears, name)) return -1;
    if (c->skip && glob_list_match(c->skip, name)) return -1;
    double r = c->prune.nm_m ? 1.0 - (double)c->prune.nm_n / c->prune.nm_m : c->prune.ratio;
    for (int i = 0; i < c->nrules; i++)
        if (glob_list_match(c->rules[i].glob, name)) r = c->rules[i].ratio;
    return r > 0 ? r : -1;
}

/* Does the tensor get pruned? Dies on missing stats unless --skip-missing. */
static int will_prune(const struct cmdline *c, stats *st, const char *name, qdtype dt, int ndim,
                      int quantized, int warn)
{
    if (ratio_for(c, name, dt, ndim) < 0) return 0;
    if (quantized) die("'%s' is already quantized: prune before quantizing", name);
    if (c->prune.method == PRUNE_MAGNITUDE) return 1;
    const char *what = c->prune.method == PRUNE_WANDA ? "x2_mean" : "hessian";
    size_t n;
    if (stats_has(st, name, what, &n)) return 1;
    if (!c->skip_missing) die("'%s': no %s in %s (use --skip-missing to leave it dense)", name, what, c->stats_path);
    if (warn) warn_msg("'%s': no %s in %s, left dense", name, what, c->stats_path);
    return 0;
}

enum { OUT_SAME = 0, OUT_CUT, OUT_PRUNED };

/* Output header of a tensor: cut shape, and for pruned ones mask/sparsity
 * attrs (and the quantized parts with --bits). Returns OUT_SAME (o is a copy
 * of in), OUT_CUT (structured cut only) or OUT_PRUNED. */
static int out_header(const struct cmdline *c, const splan *sp, stats *st, const qs_tensor *in,
                       int warn, qs_tensor *o)
{
    const int quantized = in->attrs && json_object_get(in->attrs, "quant");
    const role r = role_of(sp, in->name, NULL, 0);
    if (r != R_NONE && (quantized || in->nparts != 1))
        die("'%s' is already quantized: structured pruning needs plain tensors", in->name);
    int64_t shape[QS_MAX_DIMS];
    cut_shape(sp, in->name, r, in->ndim, in->shape, shape);
    const int pruned = will_prune(c, st, in->name, in->dtype, in->ndim, quantized, warn);
    if (r == R_NONE && !pruned) {
        if (qs_tensor_copy(o, in)) die("out of memory");
        return OUT_SAME;
    }
    if (qs_tensor_init(o, in->name, c->joint && pruned ? DT_F32 : in->dtype, in->ndim, shape)) die("'%s': bad shape", in->name);
    o->attrs = in->attrs ? json_deep_copy(in->attrs) : json_object();
    if (!pruned) return OUT_CUT;
    char buf[16], *err = NULL;
    const double ratio = ratio_for(c, in->name, in->dtype, in->ndim);
    prune_opts po = c->prune;          // shape checks (N:M divides, groups) before any output
    po.ratio = po.nm_m ? 0 : ratio;
    if (prune_opts_check(&po, shape[1], &err)) die("'%s': %s", in->name, err);
    json_object_set_new(o->attrs, "mask", json_string("zeros"));
    json_object_set_new(o->attrs, "sparsity", json_pack("{s:s, s:s, s:f}", "method", prune_method_name(c->prune.method),
                                                        "pattern", prune_pattern_name(&c->prune, buf, sizeof buf),
                                                        "ratio", ratio));
    if (!c->joint) return OUT_PRUNED;
    const int64_t ng = quant_ngroups(&c->grid, shape[1]), sshape[2] = { shape[0], ng };
    o->nparts = 0;
    json_object_set_new(o->attrs, "quant", quant_grid_to_json(&c->grid));
    qs_tensor_add_part(o, "codes", DT_U8, 2, shape);
    qs_tensor_add_part(o, "scales", DT_F32, 2, sshape);
    qs_tensor_add_part(o, "zeros", DT_F32, 2, sshape);
    return OUT_PRUNED;
}


/* Output header: config.json rewritten (structured), manifest of the new tensors. */
static void build_header(const struct cmdline *c, stats *st, const qs_header *in, int argc, char **argv,
                         qs_header *out, splan *sp)
{
    if (qs_header_copy(out, in)) die("out of memory");
    plan_structured(c, out, sp);
    json_t *old = out->manifest;
    out->manifest = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(old, i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        const char *dts = json_string_value(json_object_get(e, "dtype"));
        const json_t *js = json_object_get(e, "shape");
        qdtype dt = dts ? dtype_from_name(dts) : DT_INVALID;
        int64_t shape[QS_MAX_DIMS];
        const int nd = (int)json_array_size(js);
        for (int d = 0; d < nd && d < QS_MAX_DIMS; d++) shape[d] = json_integer_value(json_array_get(js, d));
        qs_tensor t, o;
        if (!name || dt == DT_INVALID || nd > QS_MAX_DIMS || qs_tensor_init(&t, name, dt, nd, shape)) {
            json_array_append(out->manifest, e);
            continue;
        }
        if (json_object_get(e, "quant")) t.attrs = json_pack("{s:O}", "quant", json_object_get(e, "quant"));
        if (out_header(c, sp, st, &t, 1, &o) == OUT_SAME) json_array_append(out->manifest, e);
        else qs_header_manifest_add(out, &o);
        qs_tensor_clear(&t);
        qs_tensor_clear(&o);
    }
    json_decref(old);
    add_provenance_or_die(out, argc, argv);
}

/*-*** Structured decisions ***/

typedef struct {
    char prefix[256];
    int attn;                    /* 0: MLP channels, 1: attention heads */
    int64_t *rows;               /* kept rows of gate/up, or of q */
    int64_t nrows;
    int64_t *kv;                 /* kept rows of k/v (attention) */
    int64_t nkv;
} decision;

typedef struct {
    decision *d;
    int n;
} decisions;

static const decision *find_decision(const decisions *ds, const char *prefix, int attn)
{
    for (int i = 0; i < ds->n; i++)
        if (ds->d[i].attn == attn && !strcmp(ds->d[i].prefix, prefix)) return &ds->d[i];
    return NULL;
}

static float *raw_to_f32(const qs_tensor *t, const void *raw, int64_t numel)
{
    float *w = malloc((size_t)numel * sizeof *w);
    if (!w) die("'%s': out of memory", t->name);
    dtype_to_f32(t->dtype, raw, w, (size_t)numel);
    return w;
}

/* x2_mean of a weight (NULL with --magnitude), checked against d_in. */
static const float *get_x2(const struct cmdline *c, stats *st, const char *name, int64_t cols, int64_t *ntok)
{
    *ntok = 0;
    if (c->prune.method == PRUNE_MAGNITUDE) return NULL;
    size_t n = 0;
    const float *x2 = stats_get(st, name, "x2_mean", &n);
    if (!x2) die("'%s': no x2_mean in %s (structured scores need it)", name, c->stats_path);
    if (n != (size_t)cols) die("'%s': x2_mean has %zu values, expected %lld", name, n, (long long)cols);
    *ntok = stats_tokens(st, name);
    if (*ntok < 1) die("'%s': no n_tokens in %s", name, c->stats_path);
    return x2;
}

/* Expand kept unit indices (channels or heads) of width w into element rows. */
static int64_t *expand(const int64_t *units, int64_t n, int64_t w)
{
    int64_t *rows = malloc((size_t)(n * w) * sizeof *rows);
    for (int64_t k = 0; k < n; k++)
        for (int64_t j = 0; j < w; j++) rows[k * w + j] = units[k] * w + j;
    return rows;
}

/* From the layer's down_proj / o_proj (t, raw): which channels / kv groups stay. */
static void decide(const struct cmdline *c, const splan *sp, stats *st, const qs_tensor *t,
                   const void *raw, const char *prefix, role r, decisions *ds)
{
    const int64_t rows = t->shape[0], cols = t->shape[1];
    const int64_t want = r == R_O_COLS ? sp->n_heads * sp->head_dim : sp->inter;
    if (t->ndim != 2 || cols != want || t->nparts != 1)
        die("'%s': expected a plain [*, %lld] weight (config.json)", t->name, (long long)want);
    float *w = raw_to_f32(t, raw, rows * cols);
    int64_t ntok;
    const float *x2 = get_x2(c, st, t->name, cols, &ntok);
    double *s = malloc((size_t)cols * sizeof *s);
    prune_channel_scores(w, rows, cols, x2, ntok, s);
    ds->d = realloc(ds->d, (size_t)(ds->n + 1) * sizeof *ds->d);
    decision *d = &ds->d[ds->n++];
    memset(d, 0, sizeof *d);
    snprintf(d->prefix, sizeof d->prefix, "%s", prefix);
    d->attn = r == R_O_COLS;
    char *err = NULL;
    if (!d->attn) {
        d->nrows = sp->inter_keep;
        d->rows = malloc((size_t)d->nrows * sizeof *d->rows);
        if (prune_keep_largest(s, cols, d->nrows, d->rows, &err)) die("'%s': %s", t->name, err);
    } else {
        // a kv group's score: the sum over its query heads' o_proj columns
        const int64_t g = sp->n_heads / sp->n_kv, gw = g * sp->head_dim;
        double *gs = calloc((size_t)sp->n_kv, sizeof *gs);
        int64_t *kept = malloc((size_t)sp->kv_keep * sizeof *kept);
        for (int64_t j = 0; j < cols; j++) gs[j / gw] += s[j];
        if (prune_keep_largest(gs, sp->n_kv, sp->kv_keep, kept, &err)) die("'%s': %s", t->name, err);
        d->nrows = sp->kv_keep * gw;
        d->rows = expand(kept, sp->kv_keep, gw);
        d->nkv = sp->kv_keep * sp->head_dim;
        d->kv = expand(kept, sp->kv_keep, sp->head_dim);
        free(gs);
        free(kept);
    }
    free(s);
    free(w);
}

/*-*** Processing one tensor ***/


/* Apply the structured cut to raw bytes (returns a new buffer, frees raw). */
static void *cut_raw(const qs_tensor *t, role r, const decision *d, void *raw, const qs_tensor *o)
{
    if (r == R_NONE) return raw;
    const size_t es = dtype_size(t->dtype);
    void *out = malloc((size_t)qs_numel(o->ndim, o->shape) * es);   // t's dtype, o's shape
    if (!out) die("'%s': out of memory", t->name);
    const int64_t cols = t->ndim == 2 ? t->shape[1] : 1;
    if (r == R_MLP_COLS || r == R_O_COLS) prune_take_cols(raw, t->shape[0], cols, es, d->rows, d->nrows, out);
    else if (r == R_KV_ROWS) prune_take_rows(raw, cols, es, d->kv, d->nkv, out);
    else prune_take_rows(raw, cols, es, d->rows, d->nrows, out);
    free(raw);
    return out;
}

/* Statistics for the (possibly column-cut) weight: subsets of x2_mean and H. */
typedef struct { prune_stats ps; float *x2_own, *h_own; } tensor_stats;

static void get_stats(const struct cmdline *c, stats *st, const char *name, int64_t cols_in,
                      const decision *cutcols, tensor_stats *ts)
{
    memset(ts, 0, sizeof *ts);
    if (c->prune.method == PRUNE_MAGNITUDE) return;
    size_t n = 0;
    const int64_t n_in = cols_in;
    if (c->prune.method == PRUNE_WANDA) {
        ts->ps.x2_mean = stats_get(st, name, "x2_mean", &n);
        ts->ps.n_tokens = stats_tokens(st, name);
        if (!ts->ps.x2_mean || n != (size_t)n_in || ts->ps.n_tokens < 1)
            die("'%s': x2_mean has %zu values (expected %lld) or n_tokens is missing", name, n, (long long)n_in);
    } else {
        stats_evict(st, name);        /* one weight's Hessian held at a time */
        ts->ps.hessian = stats_get(st, name, "hessian", &n);
        if (!ts->ps.hessian && stats_error(st)) die("%s", stats_error(st));
        if (!ts->ps.hessian || n != (size_t)(n_in * n_in))
            die("'%s': hessian has %zu values, expected %lld x %lld", name, n, (long long)n_in, (long long)n_in);
    }
    if (!cutcols) return;
    const int64_t k = cutcols->nrows, *keep = cutcols->rows;
    if (ts->ps.x2_mean) {
        ts->x2_own = malloc((size_t)k * sizeof *ts->x2_own);
        for (int64_t j = 0; j < k; j++) ts->x2_own[j] = ts->ps.x2_mean[keep[j]];
        ts->ps.x2_mean = ts->x2_own;
    }
    if (ts->ps.hessian) {
        ts->h_own = malloc((size_t)(k * k) * sizeof *ts->h_own);
        if (!ts->h_own) die("'%s': out of memory", name);
        for (int64_t a = 0; a < k; a++)
            for (int64_t b = 0; b < k; b++) ts->h_own[a * k + b] = ts->ps.hessian[keep[a] * n_in + keep[b]];
        ts->ps.hessian = ts->h_own;
    }
}

/* Unstructured / N:M pass on the (cut) tensor, then write it. */
static void prune_and_write(const struct cmdline *c, stats *st, qs_writer *wr, const qs_tensor *t,
                            const qs_tensor *o, void *raw, const decision *cutcols)
{
    const int64_t rows = o->shape[0], cols = o->shape[1];
    float *w = raw_to_f32(t, raw, rows * cols);   // raw: t's dtype, o's (cut) shape
    tensor_stats ts;
    get_stats(c, st, t->name, t->shape[1], cutcols, &ts);
    prune_opts po = c->prune;
    po.ratio = ratio_for(c, t->name, t->dtype, t->ndim);
    if (po.nm_m) po.ratio = 0;
    prune_qresult q;
    memset(&q, 0, sizeof q);
    char *err = NULL;
    if (prune_matrix(&po, w, rows, cols, &ts.ps, &q, &err)) die("'%s': %s", t->name, err);
    if (qs_writer_begin(wr, o) < 0) writer_die(wr);
    if (c->joint) {
        if (qs_writer_write(wr, q.codes, o->parts[0].nbytes) < 0 || qs_writer_write(wr, q.scales, o->parts[1].nbytes) < 0
            || qs_writer_write(wr, q.zeros, o->parts[2].nbytes) < 0)
            writer_die(wr);
    } else {
        if (dtype_from_f32(o->dtype, w, raw, (size_t)(rows * cols))) die("'%s': cannot store as %s", t->name, dtype_name(o->dtype));
        if (qs_writer_write(wr, raw, o->parts[0].nbytes) < 0) writer_die(wr);
    }
    if (qs_writer_end(wr) < 0) writer_die(wr);
    prune_qresult_free(&q);
    free(ts.x2_own);
    free(ts.h_own);
    free(w);
}

/* One tensor with all its bytes in memory: cut, prune, write. Frees raw. */
static void emit(const struct cmdline *c, const splan *sp, stats *st, const decisions *ds, qs_writer *wr,
                 const qs_tensor *t, void *raw)
{
    char prefix[256];
    const role r = role_of(sp, t->name, prefix, sizeof prefix);
    const decision *d = r == R_NONE ? NULL : find_decision(ds, prefix, r >= R_Q_ROWS);
    qs_tensor o;
    const int kind = out_header(c, sp, st, t, 0, &o);
    raw = cut_raw(t, r, d, raw, &o);
    if (kind == OUT_PRUNED)
        prune_and_write(c, st, wr, t, &o, raw, r == R_MLP_COLS || r == R_O_COLS ? d : NULL);
    else if (qs_writer_put(wr, &o, raw) < 0)
        writer_die(wr);
    qs_tensor_clear(&o);
    free(raw);
}

/*-*** The stream loop, with tensors held back until their layer's decision ***/

typedef struct { qs_tensor t; void *raw; } pending;

typedef struct {
    pending *q;
    int head, n, cap;
} queue;

static void *read_raw(qs_reader *r, const qs_tensor *t)
{
    size_t len;
    void *raw = qs_reader_read_all(r, &len);
    if (!raw && qs_tensor_nbytes(t) > 0) die("%s", qs_reader_error(r));
    return raw ? raw : malloc(1);
}

static int ready(const splan *sp, const decisions *ds, const qs_tensor *t)
{
    char prefix[256];
    const role r = role_of(sp, t->name, prefix, sizeof prefix);
    return r == R_NONE || find_decision(ds, prefix, r >= R_Q_ROWS) != NULL;
}

static void flush_ready(const struct cmdline *c, const splan *sp, stats *st, const decisions *ds,
                        qs_writer *wr, queue *qu)
{
    while (qu->n > 0 && ready(sp, ds, &qu->q[qu->head].t)) {
        pending *p = &qu->q[qu->head];
        emit(c, sp, st, ds, wr, &p->t, p->raw);
        qs_tensor_clear(&p->t);
        qu->head++;
        qu->n--;
    }
    if (qu->n == 0) qu->head = 0;
}

static void push(queue *qu, const qs_tensor *t, void *raw)
{
    if (qu->head + qu->n == qu->cap) {
        qu->cap = qu->cap ? 2 * qu->cap : 16;
        qu->q = realloc(qu->q, (size_t)qu->cap * sizeof *qu->q);
        if (!qu->q) die("out of memory");
    }
    pending *p = &qu->q[qu->head + qu->n++];
    if (qs_tensor_copy(&p->t, t)) die("out of memory");
    p->raw = raw;
}

static void process_stream(const struct cmdline *c, const splan *sp, stats *st, qs_reader *r, qs_writer *wr)
{
    decisions ds = { NULL, 0 };
    queue qu = { NULL, 0, 0, 0 };
    const qs_tensor *t;
    int rc;
    uint64_t done = 0;
    while ((rc = qs_reader_next(r, &t)) == 1) {
        char prefix[256];
        const role ro = role_of(sp, t->name, prefix, sizeof prefix);
        const int quantized = t->attrs && json_object_get(t->attrs, "quant");
        if (qu.n == 0 && ro == R_NONE && !will_prune(c, st, t->name, t->dtype, t->ndim, quantized, 0)) {
            if (qs_copy_tensor(r, wr, NULL)) {
                exit_if_epipe(qs_writer_errno(wr));
                die("%s", qs_writer_error(wr) ? qs_writer_error(wr) : qs_reader_error(r));
            }
        } else {
            void *raw = read_raw(r, t);
            if ((ro == R_MLP_COLS || ro == R_O_COLS) && !find_decision(&ds, prefix, ro == R_O_COLS))
                decide(c, sp, st, t, raw, prefix, ro, &ds);
            push(&qu, t, raw);
            flush_ready(c, sp, st, &ds, wr, &qu);
        }
        progress_update(++done, 0);
    }
    if (rc < 0) die("%s", qs_reader_error(r));
    if (qu.n) {
        char prefix[256];
        const role ro = role_of(sp, qu.q[qu.head].t.name, prefix, sizeof prefix);
        die("'%s': structured pruning needs '%s%s' in the stream to choose what to remove", qu.q[qu.head].t.name,
            prefix, ro >= R_Q_ROWS ? ".self_attn.o_proj.weight" : ".mlp.down_proj.weight");
    }
    for (int i = 0; i < ds.n; i++) { free(ds.d[i].rows); free(ds.d[i].kv); }
    free(ds.d);
    free(qu.q);
}

/* --dry-run costs: SparseGPT is GPTQ's engine (H^-1 ~d_in³, updates ~2 rows
 * d_in²; W, its copy and H, H^-1 in f64); magnitude/Wanda sort each row. */
static void sparsegpt_cost(int64_t rows, int64_t cols, uint64_t *mem, double *flops)
{
    *mem = (uint64_t)(rows * cols * 8 + cols * cols * 16);
    *flops = (double)cols * cols * cols + 2.0 * rows * cols * cols;
}

static void score_cost(int64_t rows, int64_t cols, uint64_t *mem, double *flops)
{
    *mem = (uint64_t)(rows * cols * 8);
    *flops = 20.0 * rows * cols;
}

int main(int argc, char **argv)
{
    struct cmdline c;
    proginit(&argc, argv, "qprune", usage);
    parse_cmdline(argc, argv, &c);
    char *err = NULL;
    stats *st = NULL;
    if (c.stats_path && !(st = stats_open(c.stats_path, &err))) die_free(err);
    if (!c.force && !c.dry_run) refuse_tty(1, "qstream");
    qs_reader *r = qs_reader_open_fd(0, "stdin", &err);
    if (!r) die_free(err);

    qs_header h;
    splan sp;
    build_header(&c, st, qs_reader_header(r), argc, argv, &h, &sp);
    int stop = 0;
    if (c.dry_run || c.max_memory) {
        plan *p = plan_new("qprune", c.prune.threads, QS_DEFAULT_CHUNK);
        int sgpt = c.prune.method == PRUNE_SPARSEGPT;
        plan_manifest_diff(p, qs_reader_header(r)->manifest, h.manifest, sgpt ? "sparsegpt" : "prune",
                           sgpt ? sparsegpt_cost : score_cost);
        stop = plan_done(p, c.max_memory, c.dry_run);
    }
    if (!stop) {
        qs_writer *w = qs_writer_open_fd(1, &h, 0, &err);
        if (!w) { exit_if_epipe(errno); die("stdout: %s", err); }
        progress_start(json_array_size(h.manifest), 0);
        process_stream(&c, &sp, st, r, w);
        progress_end();
        if (qs_writer_close(w, &err) < 0) { exit_if_epipe(errno); die("stdout: %s", err); }
    }
    qs_reader_close(r);
    qs_header_clear(&h);
    if (st) stats_close(st);
    for (int i = 0; i < c.nrules; i++) free(c.rules[i].glob);
    free(c.rules);
    free(c.skip);
    free(c.include);
    return EXIT_OK;
}
