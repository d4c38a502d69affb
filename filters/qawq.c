/* qawq — activation-aware channel scaling of a Llama model stream: AWQ
 * (Lin et al. MLSys 2024) or SmoothQuant (Xiao et al. 2023), folded exactly
 * into the preceding norms/linears (common/awq.h), optionally quantized.
 *
 * Reads a model qstream on stdin, writes it on stdout. The tensors of one
 * decoder layer (`*.layers.N.` + input_layernorm, post_attention_layernorm,
 * q/k/v/o_proj, gate/up/down_proj) arrive as separate tensors in stream order
 * (qcat: natural name order, so down_proj before the norm that scales it), so
 * they are buffered until the layer is complete — completeness is known from
 * the header's manifest — then scaled and emitted in their original order.
 * Memory bound: the f32 copies of one layer's nine tensors, plus any
 * tensors that arrive between the first and the last of them (none in qcat's
 * order), plus one Hessian copy per scaling group. Everything else passes
 * through byte for byte.
 *
 * Output: float (f32) layer tensors, the same model up to float rounding
 * (without --bits; or --float --bits B, which also applies the clipping for
 * that grid, so it is no longer exactly the same model), or with --bits the
 * layer's linears quantized (scheme int, method "awq", parts codes/scales/
 * zeros, docs/qstream.md §3). Each linear whose input was scaled carries
 * attrs "awq" {"alpha", "input_scale": [s_j]} (or "smooth" {"alpha",
 * "input_scale", "act_absmax", "act_scale"}): its input is now x / s, so its
 * calibration Hessian is diag(1/s) H diag(1/s); --stats-out writes the whole
 * stats file transformed that way for a later `qgptq --stats`.
 */
#include "awq.h"
#include "cli.h"
#include "plan.h"
#include "dtype.h"
#include "qstream.h"
#include "quant.h"
#include "stats.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: qawq --stats cal.qs [options] < in.qs > out.qs\n"
    "  Activation-aware scaling (AWQ, Lin et al. 2024) of a Llama model stream, folded into\n"
    "  the norms and linears so the float output is the same model; with --bits, quantized.\n"
    "options:\n"
    "  --stats FILE        calibration statistics from qcal (xabs_mean, absmax, hessian)\n"
    "  --bits B            quantize the layer linears to B bits (2..8) after scaling and\n"
    "                      clipping; without it the search targets 4 bits and the output is float\n"
    "  --group G           columns per scale group, -1 = whole rows (default 128)\n"
    "  --sym               symmetric grid; default asymmetric (AWQ's zero_point=True)\n"
    "  --float             with --bits: emit the scaled and clipped float weights instead\n"
    "  --dry-run           print the plan, peak memory and a time estimate; write nothing\n"
    "  --max-memory SIZE   refuse, naming the tensor, before any work if one tensor's working memory\n"
    "                      (as --dry-run estimates it) would pass SIZE (e.g. 8GB, 512MiB)\n"
    "  --f16-scales        with --bits: round scales to f16 first, so qpack --format awq packs exactly\n"
    "  --no-clip           skip the clipping search\n"
    "  --duo               AutoAWQ duo_scaling: s = x^a / (w^(1-a) + 1e-4)\n"
    "  --n-grid N          exponent grid points a = k/N, k = 0..N-1 (default 20)\n"
    "  --smooth [A]        SmoothQuant instead of AWQ: s = absmax^A / wmax^(1-A) (A default 0.5)\n"
    "  --stats-out FILE    write the stats transformed to the scaled model (stats qstream input)\n"
    "  --threads N         worker threads (default: online CPUs); output is identical for any N\n"
    "  -f, --force         write the stream even to a terminal\n"
    "  -q, -v, --progress, --help, --version\n"
    "examples:\n"
    "  qcat model/ | qawq --stats cal.qs --bits 4 --group 128 --f16-scales | qpack --format awq -o awq4/\n"
    "  qcat model/ | qawq --stats cal.qs --stats-out cal-awq.qs | qgptq --stats cal-awq.qs > q.qs\n"
    "  qcat model/ | qawq --stats cal.qs --smooth 0.85 > smooth.qs\n";

struct cmdline {
    awq_opts awq;
    int bits_spec, emit_float, force, f16_scales, dry_run;
    uint64_t max_memory;         /* 0 = no limit */
    const char *stats_path, *stats_out;
};

static int is_number(const char *s)
{
    char *end;
    if (!s || !*s) return 0;
    strtod(s, &end);
    return *end == '\0';
}

static void parse_cmdline(int argc, char **argv, struct cmdline *c)
{
    memset(c, 0, sizeof *c);
    awq_opts_default(&c->awq);
    awq_opts *o = &c->awq;
    o->threads = default_threads();
    int group_spec = 0, no_clip = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = v && (!strcmp(a, "--bits") || !strcmp(a, "--group") || !strcmp(a, "--stats")
                          || !strcmp(a, "--stats-out") || !strcmp(a, "--n-grid") || !strcmp(a, "--threads")
                          || !strcmp(a, "--max-memory"));
        if (!strcmp(a, "--bits") && v) { o->grid.bits = (int)parse_long("--bits", v, 2, 8); c->bits_spec = 1; }
        else if (!strcmp(a, "--group") && v) {
            o->grid.group = (int)parse_long("--group", v, -1, 1 << 30);
            if (o->grid.group == 0) usage_error("--group: must be -1 (whole rows) or positive");
            group_spec = 1;
        }
        else if (!strcmp(a, "--stats") && v) c->stats_path = v;
        else if (!strcmp(a, "--stats-out") && v) c->stats_out = v;
        else if (!strcmp(a, "--n-grid") && v) o->n_grid = (int)parse_long("--n-grid", v, 1, 1000);
        else if (!strcmp(a, "--threads") && v) o->threads = (int)parse_long("--threads", v, 1, 1024);
        else if (!strcmp(a, "--max-memory") && v) c->max_memory = parse_size("--max-memory", v);
        else if (!strcmp(a, "--smooth")) {
            o->smooth = 0.5;
            if (is_number(v)) { o->smooth = parse_double("--smooth", v, 0.0, 1.0); i++; }
        }
        else if (!strcmp(a, "--sym")) o->grid.sym = 1;
        else if (!strcmp(a, "--float")) c->emit_float = 1;
        else if (!strcmp(a, "--no-clip")) no_clip = 1;
        else if (!strcmp(a, "--f16-scales")) c->f16_scales = 1;
        else if (!strcmp(a, "--dry-run")) c->dry_run = 1;
        else if (!strcmp(a, "--duo")) o->duo = 1;
        else if (!strcmp(a, "-f") || !strcmp(a, "--force")) c->force = 1;
        else if (a[0] == '-' && a[1]) usage_error("unknown option '%s'%s", a, v || takes ? "" : " or missing value");
        else usage_error("unexpected argument '%s' (the stream comes on stdin)", a);
        if (takes) i++;
    }
    if (!c->stats_path) usage_error("needs --stats FILE (calibration statistics from qcal)");
    if (c->emit_float && !c->bits_spec) usage_error("--float: goes with --bits (without --bits the output is float)");
    if (o->smooth >= 0 && o->duo) usage_error("--duo: an AWQ option, not for --smooth");
    // clipping changes the function: only when a target grid is asked for
    o->clip = c->bits_spec && !no_clip && o->smooth < 0;
    (void)group_spec;
    char *err = NULL;
    if (quant_grid_check(&o->grid, 0, &err)) usage_error("%s", err);
    snprintf(o->grid.method, sizeof o->grid.method, "%s", o->smooth >= 0 ? "smooth" : "awq");
}

/*-*** Layer roles ***/

enum { R_IN_NORM = AWQ_NLIN, R_POST_NORM, R_COUNT };
static const char *const role_suffix[R_COUNT] = {
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
};

/* Role of a tensor ("<prefix>layers.N.<suffix>", float, 2-D linears / 1-D
 * norms) and its layer prefix length, or -1. */
static int tensor_role(const char *name, qdtype dt, int ndim, size_t *plen)
{
    const char *p = strstr(name, "layers.");
    if (!p || (dt != DT_INVALID && !dtype_traits[dt].is_float)) return -1;
    const char *q = p + 7;
    if (*q < '0' || *q > '9') return -1;
    while (*q >= '0' && *q <= '9') q++;
    if (*q++ != '.') return -1;
    for (int r = 0; r < R_COUNT; r++)
        if (!strcmp(q, role_suffix[r])) {
            if (ndim != (r < AWQ_NLIN ? 2 : 1)) return -1;
            *plen = (size_t)(q - name);
            return r;
        }
    return -1;
}

/*-*** Buffered tensors and layers ***/

typedef struct item {
    qs_tensor t;                /* input header (deep copy) */
    void *raw;                  /* pass-through bytes, or NULL */
    float *f;                   /* role tensors: f32 values */
    int role, layer;            /* -1 when not a role tensor */
    struct item *next;
} item;

typedef struct {
    char *prefix;
    int expected, arrived, done;
    item *roles[R_COUNT];
    int64_t mshape[R_COUNT][2];     /* shapes announced by the manifest (0 = not announced) */
} layer;

typedef struct {
    char *name;
    float *s;                   /* [n] input scale of this weight */
    int64_t n;
} scaled_input;

typedef struct {
    const struct cmdline *c;
    stats *st;
    qs_reader *r;
    qs_writer *w;
    item *head, *tail;
    layer *layers;
    int nlayers, cap;
    scaled_input *si;
    int nsi, capsi;
} state;

static int layer_find(state *S, const char *name, size_t plen, int create)
{
    for (int i = 0; i < S->nlayers; i++)
        if (strlen(S->layers[i].prefix) == plen && !strncmp(S->layers[i].prefix, name, plen)) return i;
    if (!create) return -1;
    if (S->nlayers == S->cap) {
        S->cap = S->cap ? 2 * S->cap : 16;
        if (!(S->layers = realloc(S->layers, (size_t)S->cap * sizeof *S->layers))) die("out of memory");
    }
    layer *L = &S->layers[S->nlayers];
    memset(L, 0, sizeof *L);
    if (!(L->prefix = strndup(name, plen))) die("out of memory");
    return S->nlayers++;
}

static void add_scaled_input(state *S, const char *name, const float *s, int64_t n)
{
    if (S->nsi == S->capsi) {
        S->capsi = S->capsi ? 2 * S->capsi : 64;
        if (!(S->si = realloc(S->si, (size_t)S->capsi * sizeof *S->si))) die("out of memory");
    }
    scaled_input *e = &S->si[S->nsi++];
    e->name = strdup(name);
    e->s = malloc((size_t)n * sizeof *e->s);
    if (!e->name || !e->s) die("out of memory");
    memcpy(e->s, s, (size_t)n * sizeof *e->s);
    e->n = n;
}

static const scaled_input *find_scaled_input(const state *S, const char *name, size_t len)
{
    for (int i = 0; i < S->nsi; i++)
        if (strlen(S->si[i].name) == len && !strncmp(S->si[i].name, name, len)) return &S->si[i];
    return NULL;
}

/*-*** Output headers ***/

static json_t *float_array(const float *v, int64_t n)
{
    json_t *a = json_array();
    for (int64_t i = 0; i < n; i++) json_array_append_new(a, json_real((double)v[i]));
    return a;
}

/* The header a role tensor is written with: plain f32, or quantized linear. */
static void output_header(const struct cmdline *c, const char *name, const json_t *attrs, int role,
                          int ndim, const int64_t *shape, qs_tensor *q)
{
    if (qs_tensor_init(q, name, DT_F32, ndim, shape)) die("'%s': bad shape", name);
    q->attrs = attrs ? json_deep_copy(attrs) : NULL;
    if (role >= AWQ_NLIN || !c->bits_spec || c->emit_float) return;
    const quant_grid *g = &c->awq.grid;
    const int64_t sshape[2] = { shape[0], quant_ngroups(g, shape[1]) };
    q->nparts = 0;
    if (!q->attrs) q->attrs = json_object();
    json_object_set_new(q->attrs, "quant", quant_grid_to_json(g));
    qs_tensor_add_part(q, "codes", DT_U8, 2, shape);
    qs_tensor_add_part(q, "scales", DT_F32, 2, sshape);
    qs_tensor_add_part(q, "zeros", DT_F32, 2, sshape);
}


static void group_stats(const state *S, const char *wname, int64_t cols, awq_input *in);

/* Before anything is written: the statistics every announced layer needs
 * are there and fit (dies naming the weight otherwise). */
static void check_layer_stats(const state *S, const layer *L)
{
    static const int first[AWQ_NGROUPS] = { AWQ_Q, AWQ_O, AWQ_GATE, AWQ_DOWN };
    const int64_t (*m)[2] = L->mshape;
    for (int g = 0; g < AWQ_NGROUPS; g++) {
        const int r = first[g];
        if (!m[r][0]) continue;
        if (g == 1 && !(m[AWQ_V][0] == m[AWQ_O][0] && m[AWQ_V][1] == m[AWQ_O][1] && m[AWQ_V][0] == m[AWQ_O][1])) continue;
        if (g == 3 && !m[AWQ_UP][0]) continue;
        if (S->c->awq.smooth >= 0 && (g == 1 || g == 3)) continue;
        char name[1024];
        snprintf(name, sizeof name, "%s%s", L->prefix, role_suffix[r]);
        awq_input in;
        group_stats(S, name, m[r][1], &in);
        if (S->c->awq.smooth < 0 ? !in.xabs_mean : !in.absmax)
            die("'%s': no %s in %s", name, S->c->awq.smooth < 0 ? "xabs_mean" : "absmax", S->c->stats_path);
    }
}

/* Output header: role tensors become f32 (or quantized); counts the roles
 * each layer will receive so a layer is processed as soon as it is whole. */
static void build_header(state *S, const qs_header *in, int argc, char **argv, qs_header *out)
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
        size_t plen;
        int role = name && !json_object_get(e, "quant") && ndim <= 2 ? tensor_role(name, dt, ndim, &plen) : -1;
        if (role < 0) {
            json_array_append(out->manifest, e);
            continue;
        }
        int li = layer_find(S, name, plen, 1);   // may move S->layers
        S->layers[li].expected++;
        int64_t sh[2] = { json_integer_value(json_array_get(shape, 0)), json_integer_value(json_array_get(shape, 1)) };
        S->layers[li].mshape[role][0] = sh[0];
        S->layers[li].mshape[role][1] = ndim > 1 ? sh[1] : 1;
        qs_tensor q;
        output_header(S->c, name, NULL, role, ndim, sh, &q);
        qs_header_manifest_add(out, &q);
        qs_tensor_clear(&q);
    }
    json_decref(old);
    for (int l = 0; l < S->nlayers; l++) check_layer_stats(S, &S->layers[l]);
    add_provenance_or_die(out, argc, argv);
}

/*-*** Processing a layer ***/


/* Stats of a group's input, by the name of its first linear; dies on bad lengths. */
static void group_stats(const state *S, const char *wname, int64_t cols, awq_input *in)
{
    size_t n;
    in->xabs_mean = stats_get(S->st, wname, "xabs_mean", &n);
    if (in->xabs_mean && n != (size_t)cols) die("'%s': xabs_mean has %zu values, expected %lld", wname, n, (long long)cols);
    in->absmax = stats_get(S->st, wname, "absmax", &n);
    if (in->absmax && n != (size_t)cols) die("'%s': absmax has %zu values, expected %lld", wname, n, (long long)cols);
    in->hessian = stats_get(S->st, wname, "hessian", &n);
    if (in->hessian && n != (size_t)(cols * cols))
        die("'%s': hessian has %zu values, expected %lld x %lld", wname, n, (long long)cols, (long long)cols);
    if (!in->hessian && stats_error(S->st)) die("%s", stats_error(S->st));
    if (!in->hessian) die("'%s': no statistics in %s", wname, S->c->stats_path);
}

/* The attrs recording what was done to a linear's input. */
static void record_scale(const state *S, const awq_layer *A, int lin, item *it)
{
    const int g = awq_input_group(lin);
    const float *s = A->scale[g];
    const int64_t n = it->t.shape[1];
    if (!s) return;
    if (!it->t.attrs) it->t.attrs = json_object();
    json_t *rec = json_object();
    json_object_set_new(rec, "alpha", json_real(A->alpha[g]));
    json_object_set_new(rec, "input_scale", float_array(s, n));
    if (S->c->awq.smooth >= 0) {
        // static activation quantization: per-channel |x/s| max and the int8 scale
        float *am = malloc((size_t)n * sizeof *am), mx = 0.0f;
        if (!am) die("out of memory");
        for (int64_t j = 0; j < n; j++) { am[j] = A->in[g].absmax[j] / s[j]; mx = fmaxf(mx, am[j]); }
        json_object_set_new(rec, "act_absmax", float_array(am, n));
        json_object_set_new(rec, "act_scale", json_real((double)mx / 127.0));
        free(am);
    }
    json_object_set_new(it->t.attrs, S->c->awq.smooth >= 0 ? "smooth" : "awq", rec);
}

static void process_layer(state *S, layer *L)
{
    static const char *const gname[AWQ_NGROUPS] = { "qkv", "v->o", "gate/up", "up->down" };
    awq_layer A;
    memset(&A, 0, sizeof A);
    for (int r = 0; r < AWQ_NLIN; r++)
        if (L->roles[r]) A.lin[r] = (awq_mat){ L->roles[r]->f, L->roles[r]->t.shape[0], L->roles[r]->t.shape[1] };
    if (L->roles[R_IN_NORM]) { A.in_norm = L->roles[R_IN_NORM]->f; A.n_in_norm = L->roles[R_IN_NORM]->t.shape[0]; }
    if (L->roles[R_POST_NORM]) { A.post_norm = L->roles[R_POST_NORM]->f; A.n_post_norm = L->roles[R_POST_NORM]->t.shape[0]; }
    stats_evict(S->st, NULL);      /* the previous layer's Hessians: one layer's held at a time */
    for (int g = 0; g < AWQ_NGROUPS; g++) {
        int mem[3];
        awq_group_members(g, mem);
        if (awq_group_applies(&A, g)) group_stats(S, L->roles[mem[0]]->t.name, A.lin[mem[0]].cols, &A.in[g]);
    }
    char *err = NULL;
    if (awq_layer_scale(&A, &S->c->awq, &err)) die("%s: %s", L->prefix, err);
    if (S->c->awq.clip && awq_layer_clip(&A, &S->c->awq, &err)) die("%s: %s", L->prefix, err);
    for (int g = 0; g < AWQ_NGROUPS; g++)
        if (A.scale[g])
            info_msg("%s %s: alpha %.2f, error %.6g -> %.6g (RTN -> scaled)", L->prefix, gname[g],
                     A.alpha[g], A.loss_rtn[g], A.loss_best[g]);
        else
            info_msg("%s %s: skipped", L->prefix, gname[g]);
    if (S->c->awq.clip) info_msg("%s clip: error %.6g -> %.6g", L->prefix, A.clip_before, A.clip_after);
    for (int r = 0; r < AWQ_NLIN; r++) {
        if (!L->roles[r] || !A.scale[awq_input_group(r)]) continue;
        record_scale(S, &A, r, L->roles[r]);
        add_scaled_input(S, L->roles[r]->t.name, A.scale[awq_input_group(r)], A.lin[r].cols);
    }
    awq_layer_free(&A);
    L->done = 1;
}

/*-*** Emitting ***/

static void emit_role(state *S, item *it)
{
    qs_tensor q;
    const int64_t rows = it->t.shape[0], cols = it->t.ndim > 1 ? it->t.shape[1] : 1;
    output_header(S->c, it->t.name, it->t.attrs, it->role, it->t.ndim, it->t.shape, &q);
    if (q.nparts == 1) {
        if (qs_writer_put(S->w, &q, it->f) < 0) writer_die(S->w);
    } else {
        const quant_grid *g = &S->c->awq.grid;
        const int64_t ng = quant_ngroups(g, cols);
        uint8_t *codes = malloc((size_t)(rows * cols));
        float *sc = malloc((size_t)(rows * ng) * sizeof *sc), *zr = malloc((size_t)(rows * ng) * sizeof *zr);
        char *err = NULL;
        if (!codes || !sc || !zr) die("'%s': out of memory", it->t.name);
        if (quant_grid_check(g, cols, &err)) die("'%s': %s", it->t.name, err);
        quant_scale_opts so;
        quant_scale_opts_default(&so);
        so.f16_scales = S->c->f16_scales;
        if (quant_rtn(g, &so, it->f, rows, cols, codes, sc, zr, NULL, S->c->awq.threads, &err))
            die("'%s': %s", it->t.name, err);
        if (qs_writer_begin(S->w, &q) < 0 || qs_writer_write(S->w, codes, q.parts[0].nbytes) < 0
            || qs_writer_write(S->w, sc, q.parts[1].nbytes) < 0 || qs_writer_write(S->w, zr, q.parts[2].nbytes) < 0
            || qs_writer_end(S->w) < 0)
            writer_die(S->w);
        free(codes); free(sc); free(zr);
    }
    qs_tensor_clear(&q);
}

/* Write queued tensors from the head while they are ready. */
static void flush_ready(state *S, uint64_t *done)
{
    while (S->head && (S->head->layer < 0 || S->layers[S->head->layer].done)) {
        item *it = S->head;
        if (it->role >= 0) emit_role(S, it);
        else if (qs_writer_put(S->w, &it->t, it->raw) < 0) writer_die(S->w);
        S->head = it->next;
        if (!S->head) S->tail = NULL;
        qs_tensor_clear(&it->t);
        free(it->raw);
        free(it->f);
        free(it);
        progress_update(++*done, 0);
    }
}

static void enqueue(state *S, const qs_tensor *t, int role, int li)
{
    item *it = calloc(1, sizeof *it);
    size_t len;
    if (!it || qs_tensor_copy(&it->t, t)) die("out of memory");
    it->role = role;
    it->layer = li;
    if (!(it->raw = qs_reader_read_all(S->r, &len))) die("%s", qs_reader_error(S->r));
    if (role >= 0) {
        const int64_t n = qs_numel(t->ndim, t->shape);
        if (t->nparts != 1 || len != (size_t)n * dtype_size(t->dtype))
            die("'%s': expected one data part of %lld values", t->name, (long long)n);
        if (!(it->f = malloc((size_t)(n ? n : 1) * sizeof *it->f))) die("'%s': out of memory", t->name);
        dtype_to_f32(t->dtype, it->raw, it->f, (size_t)n);
        free(it->raw);
        it->raw = NULL;
        S->layers[li].roles[role] = it;
        S->layers[li].arrived++;
    }
    if (S->tail) S->tail->next = it; else S->head = it;
    S->tail = it;
}

static void process_stream(state *S)
{
    const qs_tensor *t;
    int rc;
    uint64_t done = 0;
    while ((rc = qs_reader_next(S->r, &t)) == 1) {
        size_t plen;
        int role = t->attrs && json_object_get(t->attrs, "quant") ? -1 : tensor_role(t->name, t->dtype, t->ndim, &plen);
        int li = role >= 0 ? layer_find(S, t->name, plen, 1) : -1;
        if (li >= 0 && (S->layers[li].done || S->layers[li].roles[role]))
            die("'%s': arrives after its layer was processed (tensors of a layer must not repeat)", t->name);
        // without a manifest entry, a layer is whole when the stream moves on to another
        for (int i = 0; i < S->nlayers; i++) {
            layer *L = &S->layers[i];
            if (!L->done && L->arrived && L->arrived >= L->expected && i != li) process_layer(S, L);
        }
        if (li < 0 && !S->head) {
            if (qs_copy_tensor(S->r, S->w, NULL) < 0) {
                exit_if_epipe(qs_writer_errno(S->w));
                die("%s", qs_writer_error(S->w) ? qs_writer_error(S->w) : qs_reader_error(S->r));
            }
            progress_update(++done, 0);
            continue;
        }
        enqueue(S, t, role, li);
        if (li >= 0 && S->layers[li].expected && S->layers[li].arrived == S->layers[li].expected)
            process_layer(S, &S->layers[li]);
        flush_ready(S, &done);
    }
    if (rc < 0) die("%s", qs_reader_error(S->r));
    for (int i = 0; i < S->nlayers; i++)
        if (!S->layers[i].done && S->layers[i].arrived) process_layer(S, &S->layers[i]);
    flush_ready(S, &done);
}

/*-*** --stats-out: the statistics of the scaled model ***/

/* Transform one stats tensor in place (float values of W.what); returns 0
 * keep, 1 drop (per-tensor histograms cannot be rescaled per channel). */
static int transform_stat(const scaled_input *si, const char *what, float *v, size_t n)
{
    if (!strcmp(what, "hessian") && n == (size_t)(si->n * si->n)) awq_scale_hessian(v, si->n, si->s);
    else if (!strcmp(what, "x2_mean") && n == (size_t)si->n) awq_scale_moment(v, si->n, si->s, 2);
    else if ((!strcmp(what, "xabs_mean") || !strcmp(what, "absmax")) && n == (size_t)si->n)
        awq_scale_moment(v, si->n, si->s, 1);
    else if (!strncmp(what, "act_", 4)) return 1;
    return 0;
}

static const scaled_input *stat_owner(const state *S, const char *name, const char **what)
{
    const char *dot = strrchr(name, '.');
    if (!dot) return NULL;
    *what = dot + 1;
    return find_scaled_input(S, name, (size_t)(dot - name));
}

static void write_stats_out(state *S, int argc, char **argv)
{
    char *err = NULL;
    if (qs_path_is_stream(S->c->stats_path) != 1)
        die("--stats-out: '%s' is not a stats qstream (convert it back with qcat)", S->c->stats_path);
    qs_reader *r = qs_reader_open_path(S->c->stats_path, &err);
    if (!r) die_free(err);
    qs_header h;
    if (qs_header_copy(&h, qs_reader_header(r))) die("out of memory");
    json_t *old = h.manifest;
    h.manifest = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(old, i, e) {
        const char *name = json_string_value(json_object_get(e, "name")), *what;
        const scaled_input *si = name ? stat_owner(S, name, &what) : NULL;
        if (!si || strncmp(what, "act_", 4)) json_array_append(h.manifest, e);
    }
    json_decref(old);
    // mark the file: consumers must not apply the recorded input_scale a second time
    json_object_set_new(h.meta, "awq_input_scaled", json_true());
    add_provenance_or_die(&h, argc, argv);
    out_file o;
    out_create(&o, S->c->stats_out);
    qs_writer *w = qs_writer_open_fd(o.fd, &h, 0, &err);
    if (!w) die("%s: %s", S->c->stats_out, err);
    const qs_tensor *t;
    int rc;
    while ((rc = qs_reader_next(r, &t)) == 1) {
        const char *what;
        const scaled_input *si = stat_owner(S, t->name, &what);
        if (!si || t->nparts == 0) {
            if (si && !strncmp(what, "act_", 4)) continue;
            if (qs_copy_tensor(r, w, NULL) < 0) die("%s: %s", S->c->stats_out, qs_writer_error(w) ? qs_writer_error(w) : qs_reader_error(r));
            continue;
        }
        size_t len;
        void *raw = qs_reader_read_all(r, &len);
        const int64_t n = qs_numel(t->ndim, t->shape);
        if (!raw) die("%s: %s", S->c->stats_path, qs_reader_error(r));
        if (t->dtype != DT_F32 || t->nparts != 1 || len != (size_t)n * 4) {   // n_tokens etc.
            if (qs_writer_put(w, t, raw) < 0) die("%s: %s", S->c->stats_out, qs_writer_error(w));
        } else if (!transform_stat(si, what, raw, (size_t)n)) {
            if (qs_writer_put(w, t, raw) < 0) die("%s: %s", S->c->stats_out, qs_writer_error(w));
        }
        free(raw);
    }
    if (rc < 0) die("%s: %s", S->c->stats_path, qs_reader_error(r));
    if (qs_writer_close(w, &err) < 0) die("%s: %s", S->c->stats_out, err);
    out_commit(&o);
    qs_reader_close(r);
    qs_header_clear(&h);
}

/* --dry-run cost per scaled linear: the 20-point scale search and the clip
 * search each quantize the weight and take tr(dW H dW^T) (~2 rows d_in² per
 * evaluation); memory: the layer's f32 copies and the group's Hessian. */
static void awq_cost(int64_t rows, int64_t cols, uint64_t *mem, double *flops)
{
    *mem = (uint64_t)(9 * rows * cols * 4 + cols * cols * 4);
    *flops = 40.0 * 2.0 * rows * cols * cols;
}

int main(int argc, char **argv)
{
    struct cmdline c;
    state S;
    proginit(&argc, argv, "qawq", usage);
    parse_cmdline(argc, argv, &c);
    memset(&S, 0, sizeof S);
    S.c = &c;
    char *err = NULL;
    if (!(S.st = stats_open(c.stats_path, &err))) die_free(err);
    if (!c.force && !c.dry_run) refuse_tty(1, "qstream");
    if (!(S.r = qs_reader_open_fd(0, "stdin", &err))) die_free(err);

    qs_header h;
    build_header(&S, qs_reader_header(S.r), argc, argv, &h);
    int stop = 0;
    if (c.dry_run || c.max_memory) {
        plan *p = plan_new("qawq", c.awq.threads, QS_DEFAULT_CHUNK);
        plan_manifest_diff(p, qs_reader_header(S.r)->manifest, h.manifest, "awq", awq_cost);
        stop = plan_done(p, c.max_memory, c.dry_run);
    }
    if (!stop) {
        if (!(S.w = qs_writer_open_fd(1, &h, 0, &err))) { exit_if_epipe(errno); die("stdout: %s", err); }
        progress_start(json_array_size(h.manifest), 0);
        process_stream(&S);
        progress_end();
        if (qs_writer_close(S.w, &err) < 0) { exit_if_epipe(errno); die("stdout: %s", err); }
        if (c.stats_out) write_stats_out(&S, argc, argv);
    }
    qs_reader_close(S.r);
    qs_header_clear(&h);
    stats_close(S.st);
    for (int i = 0; i < S.nlayers; i++) free(S.layers[i].prefix);
    free(S.layers);
    for (int i = 0; i < S.nsi; i++) { free(S.si[i].name); free(S.si[i].s); }
    free(S.si);
    return EXIT_OK;
}
