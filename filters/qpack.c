/* qpack — the sink of every pipeline: a qstream in, a checkpoint out.
 *
 * Writes safetensors: one file (`-o model.safetensors`) or a HuggingFace
 * model directory (`-o outdir/`: weights, sharded with an index past
 * --max-shard-size, plus the carried config/tokenizer files). The layout is
 * computed from the stream's manifest before any data arrives, so tensors
 * are written with pwrite at their final offsets as they stream by; memory
 * stays at one chunk. Outputs appear atomically (temp name + rename).
 */
#include "cli.h"
#include "plan.h"
#include "dequant.h"
#include "ggml_quants.h"
#include "gguf.h"
#include "hfquant.h"
#include "gguf_export.h"
#include "stats.h"
#include "tokenizer.h"
#include "qstream.h"
#include "safetensors.h"
#include "source.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: qpack [options] -o OUT < stream.qs\n"
    "  Write a qstream as a checkpoint.\n"
    "  OUT ending in .safetensors: one file; otherwise (or ending in /): a HF model directory\n"
    "options:\n"
    "  -o, --output PATH        output file or directory (required)\n"
    "  --dtype f32|f16|bf16     convert floating tensors (round to nearest even); quantized\n"
    "                           tensors are dequantized to this dtype\n"
    "  --format FMT             safetensors (default), or for quantized streams a checkpoint that\n"
    "                           transformers/vLLM load: gptq, gptq_v2, awq, compressed-tensors\n"
    "  --round-scales           with --format: round scales to f16 instead of refusing ones that\n"
    "                           are not f16 values (better: qgptq --f16-scales)\n"
    "  --max-shard-size SIZE    shard the weights (e.g. 5GB, 500MB) with model.safetensors.index.json\n"
    "  -i, --input FILE         read the stream from FILE instead of stdin\n"
    "  --gguf TYPE              write a llama.cpp GGUF file instead: f32, f16, bf16, q8_0, q4_0, q4_1,\n"
    "                           q5_0, q5_1, q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k (type choices per tensor\n"
    "                           as llama-quantize makes them; GGUF-quantized tensors pass as they are)\n"
    "  --type-for GLOB=TYPE,... override the GGUF type of matching tensors (HF or GGUF names)\n"
    "  --stats FILE             importance weights for GGUF quantization (qcal stats, like an imatrix)\n"
    "  --dry-run                print the layout, peak memory and a time estimate, write nothing\n"
    "  --max-memory SIZE        refuse, naming the tensor, before writing anything if one tensor's\n"
    "                           working memory (as --dry-run estimates it) would pass SIZE\n"
    "  --merge FILE...          read several streams (e.g. the parts of `qcat --shard K/N` runs)\n"
    "                           and write them as one checkpoint\n"
    "  -q, -v, --progress, --help, --version\n"
    "examples:\n"
    "  qcat model/ | qpack -o copy/\n"
    "  qcat model/ | qpack --dtype bf16 --max-shard-size 2GB -o model-bf16/\n"
    "  qcat model/ | qpack --gguf q4_k_m --stats cal.qs -o model-q4_k_m.gguf\n";

struct cmdline {
    const char *out;
    const char **ins;       /* input streams ("-" = stdin) */
    int nins;
    qdtype dtype;           /* DT_INVALID = keep */
    uint64_t max_shard;     /* 0 = no sharding */
    const char *gguf;       /* GGUF file type, NULL = safetensors */
    const char *type_for;   /* "glob=TYPE,..." */
    const char *stats;      /* importance weights */
    int dry_run;
    uint64_t max_memory;    /* 0 = no limit */
    const char *format;     /* NULL = plain safetensors, else an hfquant format */
    int round_scales;
};

static void parse_cmdline(int argc, char **argv, struct cmdline *c)
{
    memset(c, 0, sizeof *c);
    static const char *std_in[] = { "-" };
    c->ins = std_in;
    c->nins = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((!strcmp(a, "-o") || !strcmp(a, "--output")) && v) { c->out = v; i++; }
        else if ((!strcmp(a, "-i") || !strcmp(a, "--input")) && v) { c->ins = (const char **)&argv[i + 1]; i++; }
        else if (!strcmp(a, "--gguf") && v) {
            gguf_type_state st;
            if (gguf_ftype_from_name(v, &st) < 0) usage_error("--gguf: unknown type '%s'", v);
            c->gguf = v;
            i++;
        }
        else if (!strcmp(a, "--dry-run")) c->dry_run = 1;
        else if (!strcmp(a, "--round-scales")) c->round_scales = 1;
        else if (!strcmp(a, "--format") && v) {
            hfq_opts o;
            char *err = NULL;
            if (strcmp(v, "safetensors") && hfq_opts_init(&o, v, &err) < 0)
                usage_error("--format: unknown format '%s' (safetensors, gptq, gptq_v2, awq, compressed-tensors)", v);
            free(err);
            c->format = strcmp(v, "safetensors") ? v : NULL;
            i++;
        }
        else if (!strcmp(a, "--type-for") && v) { c->type_for = v; i++; }
        else if (!strcmp(a, "--stats") && v) { c->stats = v; i++; }
        else if (!strcmp(a, "--merge")) {           /* the stream files up to the next option */
            c->ins = (const char **)&argv[i + 1];
            c->nins = 0;
            while (i + 1 < argc && (argv[i + 1][0] != '-' || !strcmp(argv[i + 1], "-"))) { c->nins++; i++; }
            if (!c->nins) usage_error("--merge needs at least one stream file");
        }
        else if (!strcmp(a, "--dtype") && v) {
            c->dtype = dtype_from_name(v);
            if (c->dtype != DT_F32 && c->dtype != DT_F16 && c->dtype != DT_BF16)
                usage_error("--dtype: invalid value '%s' (expected f32, f16 or bf16)", v);
            i++;
        }
        else if (!strcmp(a, "--max-memory") && v) { c->max_memory = parse_size("--max-memory", v); i++; }
        else if (!strcmp(a, "--max-shard-size") && v) {
            c->max_shard = parse_size("--max-shard-size", v);
            if (!c->max_shard) usage_error("--max-shard-size: must be positive");
            i++;
        }
        else usage_error("unknown option or missing value: '%s'", a);
    }
    if (!c->out) usage_error("no output given (-o PATH)");
    if (c->gguf && (c->dtype || c->max_shard)) usage_error("--gguf does not go with --dtype or --max-shard-size");
    if ((c->type_for || c->stats) && !c->gguf) usage_error("--type-for and --stats go with --gguf");
    if (c->format && c->gguf) usage_error("--format does not go with --gguf");
    if (c->round_scales && !c->format) usage_error("--round-scales goes with --format");
}

static int is_float(qdtype t) { return t == DT_F32 || t == DT_F16 || t == DT_BF16 || t == DT_F64; }

/* The tensor as it will be stored: dtype after conversion, one part. */
static void stored_form(const struct cmdline *c, const json_t *entry, qs_tensor *t)
{
    int64_t shape[QS_MAX_DIMS];
    json_t *sh = json_object_get(entry, "shape");
    int nd = (int)json_array_size(sh);
    if (nd > QS_MAX_DIMS) die("stream manifest: too many dimensions");
    for (int i = 0; i < nd; i++) shape[i] = json_integer_value(json_array_get(sh, i));
    qdtype dt = dtype_from_name(json_string_value(json_object_get(entry, "dtype")) ?: "");
    const char *name = json_string_value(json_object_get(entry, "name"));
    if (!name || dt == DT_INVALID) die("stream manifest: bad entry");
    int quantized = json_object_get(entry, "quant") != NULL;
    if (quantized && !c->dtype)
        die("tensor '%s': is quantized; use --dtype to write dequantized values, or --format gptq|awq|compressed-tensors", name);
    if (c->dtype && (is_float(dt) || quantized)) dt = c->dtype;
    if (qs_tensor_init(t, name, dt, nd, shape) < 0) die("tensor '%s': bad shape", name);
}

typedef struct {
    int       nshards;
    int      *shard_of;     /* per tensor */
    uint64_t *offset;       /* per tensor: absolute offset in its shard file */
    out_file *files;        /* per shard */
    char    **names;        /* per shard file name */
} layout;

/* Natural order: digit runs compare as numbers ("layers.2" < "layers.10"). */
static int natural_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            while (*a == '0') a++;
            while (*b == '0') b++;
            size_t la = strspn(a, "0123456789"), lb = strspn(b, "0123456789");
            if (la != lb) return la < lb ? -1 : 1;
            int c = strncmp(a, b, la);
            if (c) return c;
            a += la; b += lb;
        } else {
            if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++; b++;
        }
    }
    return *a ? 1 : *b ? -1 : 0;
}

static const qs_tensor *sort_base;
static int by_natural_name(const void *x, const void *y)
{
    return natural_cmp(sort_base[*(const int *)x].name, sort_base[*(const int *)y].name);
}

/* HF split (huggingface_hub split_state_dict_into_shards_factory): start a new
 * shard when the current one would pass max. Tensors are taken in natural
 * name order, not stream order, so the parts of a `qcat --shard` run merged
 * by `qpack --merge` shard exactly like a single run. */
static void plan_shards(const qs_tensor *ts, int n, uint64_t max, layout *L)
{
    L->shard_of = calloc((size_t)n + 1, sizeof *L->shard_of);
    L->offset = calloc((size_t)n + 1, sizeof *L->offset);
    int *order = malloc(((size_t)n + 1) * sizeof *order);
    for (int i = 0; i < n; i++) order[i] = i;
    sort_base = ts;
    qsort(order, (size_t)n, sizeof *order, by_natural_name);
    uint64_t cur = 0;
    int shard = 0;
    for (int k = 0; k < n; k++) {
        int i = order[k];
        uint64_t sz = qs_tensor_nbytes(&ts[i]);
        if (max && cur > 0 && cur + sz > max) { shard++; cur = 0; }
        L->shard_of[i] = shard;
        cur += sz;
    }
    free(order);
    L->nshards = n ? shard + 1 : 1;
}

static json_t *st_metadata(const qs_header *h)
{
    json_t *md = json_object();
    json_t *src = json_object_get(h->meta, "safetensors_metadata");
    if (json_is_object(src)) json_object_update(md, src);
    else json_object_set_new(md, "format", json_string("pt"));
    char *prov = json_dumps(h->provenance, JSON_COMPACT);
    json_object_set_new(md, "qpipe.provenance", json_string(prov));
    free(prov);
    json_object_update(md, json_object_get(h->meta, "qpack_aliases"));
    return md;
}

static void write_headers(qs_tensor *ts, int n, const qs_header *h, layout *L, out_file *dir, const char *single)
{
    json_t *md = st_metadata(h);
    L->files = calloc((size_t)L->nshards, sizeof *L->files);
    L->names = calloc((size_t)L->nshards, sizeof *L->names);
    for (int s = 0; s < L->nshards; s++) {
        const qs_tensor **mine = calloc((size_t)n + 1, sizeof *mine);
        int *idx = calloc((size_t)n + 1, sizeof *idx), m = 0;
        for (int i = 0; i < n; i++) if (L->shard_of[i] == s) { idx[m] = i; mine[m++] = &ts[i]; }
        uint64_t *offs = calloc((size_t)m + 1, sizeof *offs);
        size_t hl;
        char *err = NULL;
        char *hdr = st_build_header(mine, m, md, offs, &hl, &err);
        if (!hdr) die_free(err);
        for (int j = 0; j < m; j++) L->offset[idx[j]] = offs[j];
        char name[64];
        if (L->nshards == 1) snprintf(name, sizeof name, "model.safetensors");
        else snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, L->nshards);
        L->names[s] = strdup(name);
        if (single) out_create(&L->files[s], single);
        else {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", dir->tmp, name);
            L->files[s].fd = -1;
            out_create(&L->files[s], p);
        }
        uint64_t end = m ? offs[m - 1] : hl;
        for (int j = 0; j < m; j++) if (offs[j] + qs_tensor_nbytes(mine[j]) > end) end = offs[j] + qs_tensor_nbytes(mine[j]);
        if (ftruncate(L->files[s].fd, (off_t)end) < 0) die_errno("%s: cannot size output", L->names[s]);
        if (pwrite(L->files[s].fd, hdr, hl, 0) != (ssize_t)hl) die_errno("%s: write error", L->names[s]);
        free(hdr); free(offs); free(idx); free(mine);
    }
    json_decref(md);
}

static void pwrite_or_die(int fd, const void *buf, size_t n, uint64_t off, const char *what)
{
    const char *p = buf;
    while (n) {
        ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) die_errno("%s: write error", what);
        p += k; n -= (size_t)k; off += (uint64_t)k;
    }
}

/* Stream one tensor's bytes to its place, converting floats on the way. */
static void pack_tensor(qs_reader *r, const qs_tensor *in, const qs_tensor *out, int fd, uint64_t off, const char *fname)
{
    if (tensor_is_quantized(in)) {          /* dequantize whole (bounded by the largest tensor) */
        size_t len;
        void *data = qs_reader_read_all(r, &len);
        if (!data) die("%s", qs_reader_error(r));
        char *err = NULL;
        float *f = tensor_to_f32(in, data, len, &err);
        if (!f) die_free(err);
        size_t n = (size_t)qs_numel(out->ndim, out->shape);
        dtype_from_f32(out->dtype, f, f, n);
        pwrite_or_die(fd, f, n * dtype_size(out->dtype), off, fname);
        free(f);
        free(data);
        return;
    }
    if (in->dtype == out->dtype) {          /* straight copy, chunk by chunk */
        const void *p;
        int64_t k;
        while ((k = qs_reader_peek(r, &p, SIZE_MAX)) > 0) {
            pwrite_or_die(fd, p, (size_t)k, off, fname);
            off += (uint64_t)k;
        }
        if (k < 0) die("%s", qs_reader_error(r));
        return;
    }
    enum { BLOCK = 1 << 18 };                /* elements per conversion step */
    static float f[BLOCK];
    static uint8_t src[BLOCK * 8], dst[BLOCK * 8];
    size_t isz = dtype_size(in->dtype), osz = dtype_size(out->dtype);
    for (uint64_t left = qs_tensor_nbytes(in) / isz; left;) {
        size_t n = left < BLOCK ? (size_t)left : BLOCK;
        if (qs_reader_read(r, src, n * isz) < 0) die("%s", qs_reader_error(r));
        dtype_to_f32(in->dtype, src, f, n);
        dtype_from_f32(out->dtype, f, dst, n);
        pwrite_or_die(fd, dst, n * osz, off, fname);
        off += n * osz;
        left -= n;
    }
}

static void write_index(out_file *dir, const qs_tensor *ts, int n, const layout *L)
{
    json_t *wm = json_object();
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        json_object_set_new(wm, ts[i].name, json_string(L->names[L->shard_of[i]]));
        total += qs_tensor_nbytes(&ts[i]);
    }
    json_t *idx = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total, "weight_map", wm);
    char *s = json_dumps(idx, JSON_INDENT(2) | JSON_SORT_KEYS);
    size_t len = strlen(s);
    s = realloc(s, len + 2);
    s[len++] = '\n';
    out_dir_write_file(dir, "model.safetensors.index.json", s, len);
    free(s);
    json_decref(idx);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/*-*** GGUF output ***/

typedef struct {
    char gname[64];         /* GGUF name, "" = not exported */
    int  type;              /* ggml type */
    int  qk_heads;          /* rows to permute HF → GGUF: head count, 0 = none */
    int  passthrough;       /* already GGUF blocks of this type */
    int  index;             /* writer index */
} gguf_plan;

static int config_int(const json_t *cfg, const char *key, int dflt)
{
    json_t *v = json_object_get(cfg, key);
    return json_is_integer(v) ? (int)json_integer_value(v) : dflt;
}

/* "glob=TYPE,glob=TYPE": the type for name (HF or GGUF), or -1. */
static int type_override(const char *spec, const char *hf, const char *gname)
{
    if (!spec) return -1;
    char *copy = strdup(spec), *save = NULL;
    int t = -1;
    for (char *item = strtok_r(copy, ",", &save); item && t < 0; item = strtok_r(NULL, ",", &save)) {
        char *eq = strrchr(item, '=');
        if (!eq) usage_error("--type-for: '%s' is not GLOB=TYPE", item);
        *eq = 0;
        int ty = ggml_qtype_from_name(eq + 1);
        if (ty < 0) usage_error("--type-for: unknown type '%s'", eq + 1);
        if (glob_list_match(item, hf) || glob_list_match(item, gname)) t = ty;
    }
    free(copy);
    return t;
}

static const char *gguf_quant_type(const json_t *quant)
{
    const char *scheme = json_string_value(json_object_get(quant, "scheme"));
    return scheme && !strcmp(scheme, "gguf") ? json_string_value(json_object_get(quant, "type")) : NULL;
}

static gguf_plan *plan_gguf(const struct cmdline *c, const qs_header *h, const json_t *cfg, gguf_writer *g, int n)
{
    gguf_type_state st = { 0 };
    gguf_ftype_from_name(c->gguf, &st);
    st.n_layer = config_int(cfg, "num_hidden_layers", 0);
    int n_head = config_int(cfg, "num_attention_heads", 0);
    int n_kv = config_int(cfg, "num_key_value_heads", n_head);
    st.n_gqa = n_kv ? n_head / n_kv : 1;
    st.has_imatrix = c->stats != NULL;
    gguf_plan *p = calloc((size_t)n + 1, sizeof *p);
    for (int i = 0; i < n; i++) {
        json_t *e = json_array_get(h->manifest, i);
        if (gguf_llama_name(json_string_value(json_object_get(e, "name")), p[i].gname, sizeof p[i].gname) == 0 &&
            !strcmp(p[i].gname, "output.weight"))
            st.has_output = 1;
    }
    /* tensors go into the file in natural name order, whatever the stream order,
     * so a --merge of shard streams lays the file out like a single run */
    int *order = malloc(((size_t)n + 1) * sizeof *order);
    qs_tensor *names = calloc((size_t)n + 1, sizeof *names);
    for (int i = 0; i < n; i++) {
        order[i] = i;
        names[i].name = (char *)json_string_value(json_object_get(json_array_get(h->manifest, i), "name"));
    }
    sort_base = names;
    qsort(order, (size_t)n, sizeof *order, by_natural_name);
    free(names);
    for (int k = 0; k < n; k++) {
        int i = order[k];
        json_t *e = json_array_get(h->manifest, i);
        const char *name = json_string_value(json_object_get(e, "name"));
        json_t *sh = json_object_get(e, "shape");
        int nd = (int)json_array_size(sh);
        int64_t shape[QS_MAX_DIMS];
        for (int d = 0; d < nd && d < QS_MAX_DIMS; d++) shape[d] = json_integer_value(json_array_get(sh, d));
        p[i].index = -1;
        if (gguf_llama_name(name, p[i].gname, sizeof p[i].gname) < 0) {
            info_msg("tensor '%s': not part of a llama GGUF, dropped", name);
            p[i].gname[0] = 0;
            continue;
        }
        int64_t ne0 = nd ? shape[nd - 1] : 1;
        const char *qt = gguf_quant_type(json_object_get(e, "quant"));
        if (qt) {
            p[i].type = ggml_qtype_from_name(qt);
            p[i].passthrough = 1;
        } else {
            p[i].type = gguf_tensor_type(&st, p[i].gname, nd, ne0);
            int o = type_override(c->type_for, name, p[i].gname);
            if (o >= 0 && nd >= 2) p[i].type = o;
        }
        int kind = gguf_llama_qk_kind(name);
        p[i].qk_heads = kind == 1 ? n_head : kind == 2 ? n_kv : 0;
        uint64_t rows = nd >= 2 ? (uint64_t)qs_numel(nd - 1, shape) : 1;
        size_t rb = ggml_row_size(p[i].type, ne0);
        if (!rb) die("tensor '%s': rows of %lld values do not fit GGUF type %s", name, (long long)ne0,
                     ggml_qtype_traits(p[i].type)->name);
        p[i].index = gguf_writer_add_tensor(g, p[i].gname, p[i].type, nd, shape, rb * rows);
        if (p[i].index < 0) die("tensor '%s': %s", name, gguf_writer_error(g));
    }
    free(order);
    gguf_writer_set_kv_u32(g, "general.file_type", (uint32_t)st.ftype);
    if (st.default_type != GGML_T_F32 && st.default_type != GGML_T_F16 && st.default_type != GGML_T_BF16)
        gguf_writer_set_kv_u32(g, "general.quantization_version", 2);
    return p;
}

/* general.size_label as gguf-py writes it (model_weight_count_rounded_notation,
 * min_digits 2): "3.7M", "6.7B". */
static void gguf_size_label(const qs_header *h, char *out, size_t len)
{
    double n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(h->manifest, i, e) {
        double k = 1;
        size_t j;
        json_t *d;
        json_array_foreach(json_object_get(e, "shape"), j, d) k *= (double)json_integer_value(d);
        n += k;
    }
    const char *suffix = "K";
    double scaled = n * 1e-3;
    if (n > 1e12) { scaled = n * 1e-12; suffix = "T"; }
    else if (n > 1e9) { scaled = n * 1e-9; suffix = "B"; }
    else if (n > 1e6) { scaled = n * 1e-6; suffix = "M"; }
    char digits[64];
    snprintf(digits, sizeof digits, "%.0f", nearbyint(scaled));
    int fix = 2 - (int)strlen(digits + strspn(digits, "0"));
    snprintf(out, len, "%.*f%s", fix > 0 ? fix : 0, scaled, suffix);
}

static void gguf_metadata(gguf_writer *g, const qs_header *h, const struct cmdline *c)
{
    const qs_file *cfg = qs_header_file(h, "config.json");
    char *err = NULL;
    if (!cfg) die("the stream carries no config.json: GGUF needs the model's hyper-parameters");
    if (gguf_llama_metadata(g, (const char *)cfg->data, cfg->len, &err) < 0) die_free(err);
    const char *base = strrchr(c->out, '/') ? strrchr(c->out, '/') + 1 : c->out;
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)(strcspn(base, ".")), base);
    gguf_writer_set_kv_str(g, "general.name", name);
    char label[32];
    gguf_size_label(h, label, sizeof label);
    gguf_writer_set_kv_str(g, "general.size_label", label);
    const qs_file *tj = qs_header_file(h, "tokenizer.json"), *tc = qs_header_file(h, "tokenizer_config.json");
    if (tj) {
        tokenizer *tk = tokenizer_load((const char *)tj->data, tj->len, tc ? (const char *)tc->data : NULL,
                                       tc ? tc->len : 0, &err);
        if (!tk) die("tokenizer.json: %s", err);
        if (gguf_set_tokenizer(g, tk, &err) < 0) die_free(err);
        tokenizer_free(tk);
    } else {
        warn_msg("the stream carries no tokenizer.json: the GGUF will have no tokenizer");
    }
    char *prov = json_dumps(h->provenance, JSON_COMPACT);
    gguf_writer_set_kv_str(g, "qpipe.provenance", prov);
    free(prov);
}

/* Encode one tensor into its GGUF type at off. */
static void gguf_tensor(qs_reader *r, const qs_tensor *t, const gguf_plan *p, stats *st, int fd, uint64_t off)
{
    size_t len;
    uint8_t *data = qs_reader_read_all(r, &len);
    if (!data) die("%s", qs_reader_error(r));
    int64_t rows = qs_tensor_rows(t), cols = qs_tensor_cols(t);
    size_t rb = ggml_row_size(p->type, cols);
    uint8_t *out = malloc(rb * (size_t)rows + 1);
    if (p->passthrough) {
        if (len != rb * (size_t)rows) die("tensor '%s': GGUF blocks of the wrong size", t->name);
        if (p->qk_heads) {                   /* permute whole rows of blocks */
            int64_t hd = rows / p->qk_heads;
            for (int64_t h = 0; h < p->qk_heads; h++)
                for (int64_t j = 0; j < hd / 2; j++)
                    for (int64_t k = 0; k < 2; k++)
                        memcpy(out + (size_t)(h * hd + 2 * j + k) * rb, data + (size_t)(h * hd + k * hd / 2 + j) * rb, rb);
        } else {
            memcpy(out, data, len);
        }
    } else {
        char *err = NULL;
        float *f = tensor_to_f32(t, data, len, &err);
        if (!f) die_free(err);
        if (p->qk_heads) {
            float *pf = malloc((size_t)(rows * cols) * sizeof *pf);
            gguf_permute_qk_rows(f, pf, rows, cols, p->qk_heads);
            free(f);
            f = pf;
        }
        size_t ni = 0;
        const float *imat = st ? stats_get(st, t->name, "x2_mean", &ni) : NULL;
        if (imat && ni != (size_t)cols) imat = NULL;
        if (p->type == GGML_T_F32 || p->type == GGML_T_F16 || p->type == GGML_T_BF16) {
            qdtype dt = p->type == GGML_T_F32 ? DT_F32 : p->type == GGML_T_F16 ? DT_F16 : DT_BF16;
            dtype_from_f32(dt, f, out, (size_t)(rows * cols));
        } else if (ggml_quantize_rows(p->type, f, out, rows, cols, imat) != rb * (size_t)rows) {
            die("tensor '%s': cannot quantize to %s", t->name, ggml_qtype_traits(p->type)->name);
        }
        free(f);
    }
    pwrite_or_die(fd, out, rb * (size_t)rows, off, "gguf");
    free(out);
    free(data);
}

static void write_gguf(const struct cmdline *c, qs_reader **rs, const qs_header *h)
{
    int n = (int)json_array_size(h->manifest);
    const qs_file *cf = qs_header_file(h, "config.json");
    json_t *cfg = cf ? json_loadb((const char *)cf->data, cf->len, 0, NULL) : NULL;
    gguf_writer *g = gguf_writer_new();
    gguf_metadata(g, h, c);
    gguf_plan *p = plan_gguf(c, h, cfg, g, n);
    stats *st = NULL;
    char *err = NULL;
    if (c->stats && !(st = stats_open(c->stats, &err))) die_free(err);
    out_file o;
    out_create(&o, c->out);
    if (gguf_writer_write_header(g, o.fd, &err) < 0) die_free(err);
    progress_start((uint64_t)n, 0);
    int i = 0;
    for (int k = 0; k < c->nins; k++) {
        const qs_tensor *t;
        int rc;
        while ((rc = qs_reader_next(rs[k], &t)) == 1) {
            json_t *e = json_array_get(h->manifest, i);
            if (i >= n || strcmp(t->name, json_string_value(json_object_get(e, "name"))) != 0)
                die("%s: tensor '%s' is not the one the manifest announced next", c->ins[k], t->name);
            if (p[i].index >= 0) gguf_tensor(rs[k], t, &p[i], st, o.fd, gguf_writer_data_offset(g, p[i].index));
            progress_update((uint64_t)++i, qs_reader_offset(rs[k]));
        }
        if (rc < 0) die("%s", qs_reader_error(rs[k]));
    }
    if (i != n) die("stream ended after %d of the %d tensors its manifest announced", i, n);
    progress_end();
    if (gguf_writer_finish(g, o.fd, &err) < 0) die_free(err);
    out_commit(&o);
    if (st) stats_close(st);
    gguf_writer_free(g);
    json_decref(cfg);
    free(p);
}

/* --dry-run and --max-memory: the work per manifest entry, from the shapes alone. */
static plan *pack_plan(const struct cmdline *c, const qs_header *h)
{
    plan *p = plan_new("qpack", 1, QS_DEFAULT_CHUNK);
    gguf_writer *g = c->gguf ? gguf_writer_new() : NULL;
    gguf_plan *gp = NULL;
    if (g) {
        const qs_file *cf = qs_header_file(h, "config.json");
        json_t *cfg = cf ? json_loadb((const char *)cf->data, cf->len, 0, NULL) : NULL;
        gp = plan_gguf(c, h, cfg, g, (int)json_array_size(h->manifest));
        json_decref(cfg);
    }
    size_t i;
    json_t *e;
    json_array_foreach(h->manifest, i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        uint64_t nb = (uint64_t)json_integer_value(json_object_get(e, "nbytes")), numel = 1;
        size_t j;
        json_t *d;
        json_array_foreach(json_object_get(e, "shape"), j, d) numel *= (uint64_t)json_integer_value(d);
        int quantized = json_object_get(e, "quant") != NULL;
        if (json_object_get(e, "alias")) plan_add(p, name, "alias", 0, 0, 0, 0);
        else if (g && gp[i].index < 0) plan_add(p, name, "dropped", 0, 0, nb, 0);
        else if (g) {
            char act[48];
            snprintf(act, sizeof act, "%s %s", gp[i].passthrough ? "pass" : "gguf", ggml_qtype_traits(gp[i].type)->name);
            uint64_t out = gguf_writer_data_offset(g, gp[i].index + 1) != UINT64_MAX
                               ? gguf_writer_data_offset(g, gp[i].index + 1) - gguf_writer_data_offset(g, gp[i].index) : nb;
            plan_add(p, name, act, nb + numel * 4 + out, gp[i].passthrough ? 0 : 30.0 * (double)numel, nb, out);
        } else if (quantized || c->dtype) {
            uint64_t out = numel * (c->dtype ? dtype_size(c->dtype) : 4);
            plan_add(p, name, quantized ? "dequantize" : "convert", quantized ? nb + numel * 4 : 0,
                     4.0 * (double)numel, nb, out);
        } else {
            plan_add(p, name, "copy", 0, 0, nb, nb);
        }
    }
    free(gp);
    gguf_writer_free(g);
    return p;
}

/*-*** Safetensors output ***/

static void write_carried_files(out_file *dir, const qs_header *h)
{
    for (int f = 0; f < h->nfiles; f++) {
        const char *fn = h->files[f].name;
        if (!*fn || fn[0] == '/' || strstr(fn, "..") || ends_with(fn, ".safetensors") ||
            !strcmp(fn, "model.safetensors.index.json"))
            die("refusing to write carried file '%s' (unsafe or clashing name)", fn);
        out_dir_write_file(dir, fn, h->files[f].data, h->files[f].len);
    }
}


/* What each manifest entry becomes: stored tensors [first, first + count) of
 * the layout (count 0 for an alias), packed by hfq_pack when `packed`. */
typedef struct { int first, count, packed; } stored_map;

static qs_tensor *plan_stored(const struct cmdline *c, qs_header *h, const hfq_opts *ho, stored_map *map, int *nout)
{
    int nm = (int)json_array_size(h->manifest), n = 0, cap = nm + 8;
    qs_tensor *ts = calloc((size_t)cap, sizeof *ts);
    json_t *aliases = json_object();
    for (int i = 0; i < nm; i++) {
        json_t *e = json_array_get(h->manifest, i), *al = json_object_get(e, "alias");
        map[i] = (stored_map){ n, 0, 0 };
        if (al) {   /* a stats stream's shared inputs become "alias:<name>" metadata */
            char key[600];
            snprintf(key, sizeof key, "alias:%s", json_string_value(json_object_get(e, "name")) ?: "");
            json_object_set(aliases, key, al);
            continue;
        }
        if (c->format && json_object_get(e, "quant")) {
            qs_tensor q, *parts;
            int k;
            char *err = NULL;
            if (hfq_tensor_from_manifest(e, &q, &err) < 0 || hfq_layout_opts(ho, &q, &parts, &k, &err) < 0) die_free(err);
            if (n + k >= cap) { cap = 2 * (n + k); ts = realloc(ts, (size_t)cap * sizeof *ts); }
            for (int j = 0; j < k; j++) qs_tensor_copy(&ts[n + j], &parts[j]);
            hfq_layout_free(parts, k);
            qs_tensor_clear(&q);
            map[i] = (stored_map){ n, k, 1 };
            n += k;
            continue;
        }
        if (n + 1 >= cap) { cap = 2 * (n + 1); ts = realloc(ts, (size_t)cap * sizeof *ts); }
        stored_form(c, e, &ts[n]);
        map[i] = (stored_map){ n++, 1, 0 };
    }
    json_object_set_new(h->meta, "qpack_aliases", aliases);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(ts[i].name, ts[j].name)) die("tensor '%s' appears twice in the output", ts[i].name);
    *nout = n;
    return ts;
}

/* The config.json to write: a packed format's quantization_config (and
 * torch_dtype f16 for gptq/awq, whose kernels want it), or, for float output,
 * none (a dequantized GPTQ checkpoint is a plain model again). */
static void update_config(const struct cmdline *c, qs_header *h)
{
    const qs_file *f = qs_header_file(h, "config.json");
    if (!f) return;
    json_t *cfg = json_loadb((const char *)f->data, f->len, 0, NULL);
    if (!json_is_object(cfg)) { json_decref(cfg); return; }
    int changed = 0;
    if (c->format) {
        char *err = NULL;
        json_t *qc = hfq_quant_config_manifest(c->format, h->manifest, &err);
        if (!qc) die_free(err);
        json_object_set(cfg, "quantization_config", qc);
        if (strcmp(c->format, "compressed-tensors")) json_object_set_new(cfg, "torch_dtype", json_string("float16"));
        const char *extra = hfq_extra_config_name(c->format);
        if (extra) {
            char *s = json_dumps(qc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            qs_header_add_file(h, extra, s, strlen(s));
            free(s);
        }
        json_decref(qc);
        changed = 1;
    } else if (json_object_get(cfg, "quantization_config")) {
        json_object_del(cfg, "quantization_config");
        changed = 1;
    }
    if (c->dtype && !c->format) {
        json_object_set_new(cfg, "torch_dtype", json_string(c->dtype == DT_F32 ? "float32" : c->dtype == DT_F16 ? "float16" : "bfloat16"));
        changed = 1;
    }
    if (changed) {
        char *s = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        size_t len = strlen(s);
        s = realloc(s, len + 2);
        s[len++] = '\n';
        qs_header_add_file(h, "config.json", s, len);
        free(s);
    }
    json_decref(cfg);
}

/* A quantized tensor into its packed stored tensors. */
static void pack_quantized(qs_reader *r, const qs_tensor *t, const hfq_opts *ho, const qs_tensor *ts,
                           const stored_map *mp, const layout *L)
{
    size_t len;
    void *data = qs_reader_read_all(r, &len);
    if (!data) die("%s", qs_reader_error(r));
    void *outs[QS_MAX_PARTS * 2];
    for (int j = 0; j < mp->count; j++) outs[j] = malloc(qs_tensor_nbytes(&ts[mp->first + j]) + 1);
    char *err = NULL;
    if (hfq_pack_opts(ho, t, data, outs, &err) < 0) die_free(err);
    for (int j = 0; j < mp->count; j++) {
        int i = mp->first + j;
        pwrite_or_die(L->files[L->shard_of[i]].fd, outs[j], qs_tensor_nbytes(&ts[i]), L->offset[i], L->names[L->shard_of[i]]);
        free(outs[j]);
    }
    free(data);
}

static void write_safetensors(const struct cmdline *c, qs_reader **rs, qs_header *h)
{
    hfq_opts ho = { 0 };
    char *err = NULL;
    if (c->format && hfq_opts_init(&ho, c->format, &err) < 0) die_free(err);
    ho.round_scales = c->round_scales;
    int nm = (int)json_array_size(h->manifest), n;
    stored_map *map = calloc((size_t)nm + 1, sizeof *map);
    qs_tensor *ts = plan_stored(c, h, &ho, map, &n);
    update_config(c, h);

    /* lay out the output, then fill it as tensors stream by */
    int single = ends_with(c->out, ".safetensors");
    if (single && c->max_shard) usage_error("--max-shard-size needs a directory output");
    layout L = { 0 };
    out_file dir = { 0 };
    plan_shards(ts, n, c->max_shard, &L);
    if (!single) out_dir_create(&dir, c->out);
    write_headers(ts, n, h, &L, &dir, single ? c->out : NULL);
    progress_start((uint64_t)nm, 0);
    int m = 0;
    for (int k = 0; k < c->nins; k++) {
        const qs_tensor *t;
        int rc;
        while ((rc = qs_reader_next(rs[k], &t)) == 1) {
            const char *want = m < nm ? json_string_value(json_object_get(json_array_get(h->manifest, m), "name")) : NULL;
            if (!want || strcmp(t->name, want) != 0)
                die("%s: tensor '%s' is not the one the manifest announced next ('%s')", c->ins[k], t->name,
                    want ? want : "none");
            const stored_map *mp = &map[m++];
            int i = mp->first;
            if (mp->packed) pack_quantized(rs[k], t, &ho, ts, mp, &L);
            else if (mp->count) pack_tensor(rs[k], t, &ts[i], L.files[L.shard_of[i]].fd, L.offset[i], L.names[L.shard_of[i]]);
            else if (qs_tensor_nbytes(t)) die("tensor '%s': an alias with data", t->name);
            progress_update((uint64_t)m, qs_reader_offset(rs[k]));
        }
        if (rc < 0) die("%s", qs_reader_error(rs[k]));
    }
    if (m != nm) die("%s: stream ended after %d of the %d tensors its manifest announced", c->ins[c->nins - 1], m, nm);
    progress_end();

    /* commit: shard files, index, carried files, then the directory */
    for (int s = 0; s < L.nshards; s++) out_commit(&L.files[s]);
    if (!single) {
        if (L.nshards > 1) write_index(&dir, ts, n, &L);
        write_carried_files(&dir, h);
        out_dir_commit(&dir);
    }
    for (int k = 0; k < n; k++) qs_tensor_clear(&ts[k]);
    for (int k = 0; k < L.nshards; k++) free(L.names[k]);
    free(L.names); free(L.files); free(L.shard_of); free(L.offset);
    free(ts);
    free(map);
}

/* Open every input and build one header: the first input's, with the other
 * inputs' manifests appended and their carried files added. */
static qs_reader **open_inputs(const struct cmdline *c, qs_header *h, int argc, char **argv)
{
    qs_reader **rs = calloc((size_t)c->nins, sizeof *rs);
    for (int k = 0; k < c->nins; k++) {
        char *err = NULL;
        if (!(rs[k] = qs_reader_open_path(c->ins[k], &err))) die_free(err);
        const qs_header *hk = qs_reader_header(rs[k]);
        if (k == 0) {
            if (qs_header_copy(h, hk) < 0) die("out of memory");
            continue;
        }
        json_array_extend(h->manifest, hk->manifest);
        size_t pi;
        json_t *pe;
        json_array_foreach(hk->provenance, pi, pe)     /* every part's chain, marked */
            json_array_append_new(h->provenance, json_pack("{s:i, s:O}", "merge_part", k + 1, "step", pe));
        for (int f = 0; f < hk->nfiles; f++)
            if (!qs_header_file(h, hk->files[f].name))
                qs_header_add_file(h, hk->files[f].name, hk->files[f].data, hk->files[f].len);
    }
    add_provenance_or_die(h, argc, argv);
    return rs;
}


int main(int argc, char **argv)
{
    struct cmdline c;
    proginit(&argc, argv, "qpack", usage);
    parse_cmdline(argc, argv, &c);

    qs_header h;
    qs_reader **rs = open_inputs(&c, &h, argc, argv);
    /* --max-memory may refuse here; with --dry-run the plan is the output */
    const int planned_only = (c.dry_run || c.max_memory) && plan_done(pack_plan(&c, &h), c.max_memory, c.dry_run);
    if (!planned_only && c.gguf) write_gguf(&c, rs, &h);
    else if (!planned_only) write_safetensors(&c, rs, &h);
    for (int k = 0; k < c.nins; k++) qs_reader_close(rs[k]);
    free(rs);
    qs_header_clear(&h);
    return EXIT_OK;
}
