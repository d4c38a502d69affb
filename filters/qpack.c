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
#include "dequant.h"
#include "qstream.h"
#include "safetensors.h"
#include "source.h"

#include <ctype.h>
#include <errno.h>
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
    "  --max-shard-size SIZE    shard the weights (e.g. 5GB, 500MB) with model.safetensors.index.json\n"
    "  -i, --input FILE         read the stream from FILE instead of stdin\n"
    "  --merge FILE...          read several streams (e.g. the parts of `qcat --shard K/N` runs)\n"
    "                           and write them as one checkpoint; must be the last option\n"
    "  -q, -v, --progress, --help, --version\n"
    "examples:\n"
    "  qcat model/ | qpack -o copy/\n"
    "  qcat model/ | qpack --dtype bf16 --max-shard-size 2GB -o model-bf16/\n";

struct cmdline {
    const char *out;
    const char **ins;       /* input streams ("-" = stdin) */
    int nins;
    qdtype dtype;           /* DT_INVALID = keep */
    uint64_t max_shard;     /* 0 = no sharding */
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
        else if (!strcmp(a, "--merge")) {
            c->ins = (const char **)&argv[i + 1];
            c->nins = argc - i - 1;
            if (!c->nins) usage_error("--merge needs at least one stream file");
            break;
        }
        else if (!strcmp(a, "--dtype") && v) {
            c->dtype = dtype_from_name(v);
            if (c->dtype != DT_F32 && c->dtype != DT_F16 && c->dtype != DT_BF16)
                usage_error("--dtype: invalid value '%s' (expected f32, f16 or bf16)", v);
            i++;
        }
        else if (!strcmp(a, "--max-shard-size") && v) {
            c->max_shard = parse_size("--max-shard-size", v);
            if (!c->max_shard) usage_error("--max-shard-size: must be positive");
            i++;
        }
        else usage_error("unknown option or missing value: '%s'", a);
    }
    if (!c->out) usage_error("no output given (-o PATH)");
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
        die("tensor '%s': is quantized; use --dtype to write dequantized values", name);
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
        for (int f = 0; f < hk->nfiles; f++)
            if (!qs_header_file(h, hk->files[f].name))
                qs_header_add_file(h, hk->files[f].name, hk->files[f].data, hk->files[f].len);
    }
    qs_header_add_provenance(h, "qpack", QPIPE_VERSION, argc - 1, argv + 1);
    return rs;
}

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

int main(int argc, char **argv)
{
    struct cmdline c;
    proginit(&argc, argv, "qpack", usage);
    parse_cmdline(argc, argv, &c);

    qs_header h;
    qs_reader **rs = open_inputs(&c, &h, argc, argv);
    int n = (int)json_array_size(h.manifest);
    qs_tensor *ts = calloc((size_t)n + 1, sizeof *ts);
    for (int i = 0; i < n; i++) stored_form(&c, json_array_get(h.manifest, i), &ts[i]);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(ts[i].name, ts[j].name)) die("tensor '%s' appears twice in the input", ts[i].name);

    /* lay out the output, then fill it as tensors stream by */
    int single = ends_with(c.out, ".safetensors");
    if (single && c.max_shard) usage_error("--max-shard-size needs a directory output");
    layout L = { 0 };
    out_file dir = { 0 };
    plan_shards(ts, n, c.max_shard, &L);
    if (!single) out_dir_create(&dir, c.out);
    write_headers(ts, n, &h, &L, &dir, single ? c.out : NULL);
    progress_start((uint64_t)n, 0);
    int i = 0;
    for (int k = 0; k < c.nins; k++) {
        const qs_tensor *t;
        int rc;
        while ((rc = qs_reader_next(rs[k], &t)) == 1) {
            if (i >= n || strcmp(t->name, ts[i].name) != 0)
                die("%s: tensor '%s' is not the one the manifest announced next ('%s')", c.ins[k], t->name,
                    i < n ? ts[i].name : "none");
            pack_tensor(rs[k], t, &ts[i], L.files[L.shard_of[i]].fd, L.offset[i], L.names[L.shard_of[i]]);
            progress_update((uint64_t)++i, qs_reader_offset(rs[k]));
        }
        if (rc < 0) die("%s", qs_reader_error(rs[k]));
    }
    if (i != n) die("%s: stream ended after %d of the %d tensors its manifest announced", c.ins[c.nins - 1], i, n);
    progress_end();

    /* commit: shard files, index, carried files, then the directory */
    for (int s = 0; s < L.nshards; s++) out_commit(&L.files[s]);
    if (!single) {
        if (L.nshards > 1) write_index(&dir, ts, n, &L);
        write_carried_files(&dir, &h);
        out_dir_commit(&dir);
    }
    for (int k = 0; k < c.nins; k++) qs_reader_close(rs[k]);
    free(rs);
    qs_header_clear(&h);
    for (int k = 0; k < n; k++) qs_tensor_clear(&ts[k]);
    free(ts);
    return EXIT_OK;
}
