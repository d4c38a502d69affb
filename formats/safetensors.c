/* safetensors — header validation, mmap'd reader, sharded index reader and
 * the reference writer's layout (see safetensors.h). */
#include "safetensors.h"
#include "source.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Rust enum order of the reference crate: the writer's sort key. */
static int st_rank(qdtype t)
{
    switch (t) {
    case DT_BOOL: return 0;
    case DT_U8: return 4;
    case DT_I8: return 5;
    case DT_F8_E5M2: return 6;
    case DT_F8_E4M3: return 7;
    case DT_I16: return 11;
    case DT_U16: return 12;
    case DT_F16: return 13;
    case DT_BF16: return 14;
    case DT_I32: return 15;
    case DT_U32: return 16;
    case DT_F32: return 17;
    case DT_F64: return 19;
    case DT_I64: return 20;
    case DT_U64: return 21;
    default: return -1;
    }
}

const char *st_dtype_name(qdtype t) { return dtype_traits[t].name; }

typedef struct { uint64_t begin, end; int idx; } span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int get_u64_json(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int st_parse_header(const char *label, const char *json, size_t len, uint64_t data_len,
                    qs_tensor **out, uint64_t **begins, json_t **metadata, char **errp)
{
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    *out = NULL;
    *begins = NULL;
    if (metadata) *metadata = NULL;
    if (!root) { *errp = qsrc_errf("%s: header: invalid JSON: %s", label, jerr.text); return -1; }
    if (!json_is_object(root)) { json_decref(root); *errp = qsrc_errf("%s: header: not a JSON object", label); return -1; }
    size_t cap = json_object_size(root);
    qs_tensor *ts = calloc(cap ? cap : 1, sizeof *ts);
    span *sp = calloc(cap ? cap : 1, sizeof *sp);
    int n = 0;
    const char *key;
    json_t *val;
    char *err = NULL;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (json_is_null(val)) continue;
            const char *mk;
            json_t *mv;
            if (!json_is_object(val)) { err = qsrc_errf("%s: header: __metadata__ is not an object", label); break; }
            json_object_foreach(val, mk, mv)
                if (!json_is_string(mv)) { err = qsrc_errf("%s: header: __metadata__ '%s' is not a string", label, mk); break; }
            if (err) break;
            if (metadata) *metadata = json_incref(val);
            continue;
        }
        json_t *dt = json_object_get(val, "dtype"), *shape = json_object_get(val, "shape"),
               *offs = json_object_get(val, "data_offsets");
        if (!json_is_object(val) || !json_is_string(dt) || !json_is_array(shape) || !json_is_array(offs) ||
            json_array_size(offs) != 2 || json_array_size(shape) > QS_MAX_DIMS) {
            err = qsrc_errf("%s: header: bad entry for tensor '%s'", label, key);
            break;
        }
        qdtype t = dtype_from_name(json_string_value(dt));
        if (t == DT_INVALID || st_rank(t) < 0 || strcmp(dtype_traits[t].name, json_string_value(dt)) != 0) {
            err = qsrc_errf("%s: header: tensor '%s': unsupported dtype '%s'", label, key, json_string_value(dt));
            break;
        }
        int64_t sh[QS_MAX_DIMS];
        int nd = (int)json_array_size(shape), bad = 0;
        for (int i = 0; i < nd; i++) {
            uint64_t d;
            if (get_u64_json(json_array_get(shape, i), &d) < 0 || d > (1ull << 48)) bad = 1;
            else sh[i] = (int64_t)d;
        }
        uint64_t b, e;
        if (bad || get_u64_json(json_array_get(offs, 0), &b) < 0 || get_u64_json(json_array_get(offs, 1), &e) < 0) {
            err = qsrc_errf("%s: header: tensor '%s': bad shape or data_offsets", label, key);
            break;
        }
        int64_t numel = qs_numel(nd, sh);
        if (numel < 0 || (uint64_t)numel > UINT64_MAX / dtype_size(t)) {
            err = qsrc_errf("%s: header: tensor '%s': size overflows", label, key);
            break;
        }
        if (e < b || e - b != (uint64_t)numel * dtype_size(t)) {
            err = qsrc_errf("%s: header: tensor '%s': data_offsets [%llu, %llu) do not match its %lld elements of %s",
                            label, key, (unsigned long long)b, (unsigned long long)e, (long long)numel,
                            dtype_traits[t].name);
            break;
        }
        if (qs_tensor_init(&ts[n], key, t, nd, sh) < 0) { err = qsrc_errf("%s: out of memory", label); break; }
        sp[n].begin = b;
        sp[n].end = e;
        sp[n].idx = n;
        n++;
    }
    json_decref(root);
    if (!err) {
        /* Reference validation: sorted by offsets, contiguous from 0, ends at the buffer's end. */
        qsort(sp, (size_t)n, sizeof *sp, span_cmp);
        uint64_t expected = 0;
        for (int i = 0; i < n && !err; i++) {
            if (sp[i].begin != expected)
                err = qsrc_errf("%s: header: tensor '%s': data_offsets %s at byte %llu", label, ts[sp[i].idx].name,
                                sp[i].begin < expected ? "overlap the previous tensor" : "leave a hole",
                                (unsigned long long)sp[i].begin);
            expected = sp[i].end;
        }
        if (!err && expected != data_len)
            err = qsrc_errf("%s: file size does not match the header: tensors end at byte %llu of a %llu-byte data buffer%s",
                            label, (unsigned long long)expected, (unsigned long long)data_len,
                            expected > data_len ? " (truncated file?)" : " (trailing bytes)");
    }
    if (err) {
        for (int i = 0; i < n; i++) qs_tensor_clear(&ts[i]);
        free(ts);
        free(sp);
        if (metadata && *metadata) { json_decref(*metadata); *metadata = NULL; }
        *errp = err;
        return -1;
    }
    /* Return tensors in offset order (the order they are best read). */
    qs_tensor *sorted = calloc(n ? (size_t)n : 1, sizeof *sorted);
    uint64_t *bg = calloc(n ? (size_t)n : 1, sizeof *bg);
    for (int i = 0; i < n; i++) {
        sorted[i] = ts[sp[i].idx];
        bg[i] = sp[i].begin;
    }
    free(ts);
    free(sp);
    *out = sorted;
    *begins = bg;
    return n;
}

/*-*** mmap'd reader (single file or shards) ***/

typedef struct {
    char    *path;
    int      fd;          /* kept open: reads use pread, so streaming never grows RSS */
    uint8_t *map;
    size_t   size;
    uint64_t data_start;
} st_shard;

typedef struct {
    int       nshards;
    st_shard *shards;
    int      *shard_of;   /* per tensor */
    uint64_t *begin;      /* per tensor, relative to its shard's data buffer */
} st_impl;

static int st_read(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp)
{
    st_impl *im = s->impl;
    st_shard *sh = &im->shards[im->shard_of[idx]];
    uint64_t nb = qs_tensor_nbytes(&s->tensors[idx]);
    if (off > nb || n > nb - off) { *errp = qsrc_errf("%s: read past tensor '%s'", sh->path, s->tensors[idx].name); return -1; }
    uint64_t at = sh->data_start + im->begin[idx] + off;
    uint8_t *p = buf;
    while (n) {
        ssize_t k = pread(sh->fd, p, n, (off_t)at);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            *errp = qsrc_errf("%s: read error in tensor '%s': %s", sh->path, s->tensors[idx].name,
                              k < 0 ? strerror(errno) : "file shrank while reading");
            return -1;
        }
        p += k; n -= (size_t)k; at += (uint64_t)k;
    }
    return 0;
}

static const void *st_map(qsrc *s, int idx)
{
    st_impl *im = s->impl;
    st_shard *sh = &im->shards[im->shard_of[idx]];
    return sh->map + sh->data_start + im->begin[idx];
}

static void st_close(qsrc *s)
{
    st_impl *im = s->impl;
    if (!im) return;
    for (int i = 0; i < im->nshards; i++) {
        if (im->shards[i].map && im->shards[i].size) munmap(im->shards[i].map, im->shards[i].size);
        if (im->shards[i].fd >= 0) close(im->shards[i].fd);
        free(im->shards[i].path);
    }
    free(im->shards);
    free(im->shard_of);
    free(im->begin);
    free(im);
}

static const qsrc_ops st_ops = { st_read, st_map, st_close };

/* Map one shard and validate it; appends its tensors to s. */
static int st_add_shard(qsrc *s, st_impl *im, const char *path, json_t **metadata, char **errp)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { *errp = qsrc_errf("%s: cannot open: %s", path, strerror(errno)); return -1; }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        *errp = qsrc_errf("%s: not a regular file", path);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    uint8_t *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    if (size && map == MAP_FAILED) { close(fd); *errp = qsrc_errf("%s: mmap: %s", path, strerror(errno)); return -1; }
    char *err = NULL;
    uint64_t hlen = 0;
    if (size < 8) err = qsrc_errf("%s: too small for a safetensors file (%zu bytes)", path, size);
    else {
        memcpy(&hlen, map, 8);
        if (hlen > ST_MAX_HEADER) err = qsrc_errf("%s: header length %llu exceeds the 100 MB limit", path, (unsigned long long)hlen);
        else if (8 + hlen > size) err = qsrc_errf("%s: header length %llu runs past the end of the file (truncated?)", path, (unsigned long long)hlen);
    }
    qs_tensor *ts = NULL;
    uint64_t *bg = NULL;
    int n = -1;
    if (!err) n = st_parse_header(path, (const char *)map + 8, hlen, size - 8 - hlen, &ts, &bg, metadata, &err);
    if (err) {
        if (map) munmap(map, size);
        close(fd);
        *errp = err;
        return -1;
    }
    st_shard *shards = realloc(im->shards, (size_t)(im->nshards + 1) * sizeof *shards);
    im->shards = shards;
    shards[im->nshards] = (st_shard){ strdup(path), fd, map, size, 8 + hlen };
    im->shard_of = realloc(im->shard_of, (size_t)(s->ntensors + n + 1) * sizeof *im->shard_of);
    im->begin = realloc(im->begin, (size_t)(s->ntensors + n + 1) * sizeof *im->begin);
    for (int i = 0; i < n; i++) {
        im->shard_of[s->ntensors] = im->nshards;
        im->begin[s->ntensors] = bg[i];
        qsrc_add_tensor(s, &ts[i]);
        qs_tensor_clear(&ts[i]);
    }
    im->nshards++;
    free(ts);
    free(bg);
    return 0;
}

qsrc *safetensors_open(const char *path, char **errp)
{
    qsrc *s = qsrc_new(path);
    st_impl *im = calloc(1, sizeof *im);
    s->impl = im;
    s->ops = &st_ops;
    json_t *md = NULL;
    if (st_add_shard(s, im, path, &md, errp) < 0) { qsrc_close(s); return NULL; }
    json_object_set_new(s->header.meta, "format", json_string("safetensors"));
    if (md) json_object_set_new(s->header.meta, "safetensors_metadata", md);
    return s;
}

qsrc *safetensors_open_index(const char *path, char **errp)
{
    size_t len;
    char *text = NULL;
    {
        FILE *f = fopen(path, "rb");
        if (!f) { *errp = qsrc_errf("%s: cannot open: %s", path, strerror(errno)); return NULL; }
        fseek(f, 0, SEEK_END);
        long sz = ftell(f);
        fseek(f, 0, SEEK_SET);
        if (sz < 0 || sz > (1 << 28)) { fclose(f); *errp = qsrc_errf("%s: index file too large", path); return NULL; }
        text = malloc((size_t)sz + 1);
        len = fread(text, 1, (size_t)sz, f);
        fclose(f);
    }
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    json_t *wm = root ? json_object_get(root, "weight_map") : NULL;
    if (!root || !json_is_object(wm)) {
        *errp = root ? qsrc_errf("%s: no weight_map object", path) : qsrc_errf("%s: invalid JSON: %s", path, jerr.text);
        json_decref(root);
        return NULL;
    }
    /* Shards in first-appearance order of the sorted weight_map. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[1] = 0; else dir[0] = 0;
    qsrc *s = qsrc_new(path);
    st_impl *im = calloc(1, sizeof *im);
    s->impl = im;
    s->ops = &st_ops;
    json_t *seen = json_object();
    const char *name;
    json_t *file;
    char *err = NULL;
    json_object_foreach(wm, name, file) {
        if (!json_is_string(file) || strchr(json_string_value(file), '/') || !strcmp(json_string_value(file), "..")) {
            err = qsrc_errf("%s: weight_map: bad shard name for '%s'", path, name);
            break;
        }
        const char *f = json_string_value(file);
        if (json_object_get(seen, f)) continue;
        json_object_set_new(seen, f, json_true());
        char sp[4600];
        snprintf(sp, sizeof sp, "%s%s", dir, f);
        if (st_add_shard(s, im, sp, NULL, &err) < 0) break;
    }
    /* Consistency: names in weight_map == union of the shards' tensors, each in its shard. */
    if (!err) {
        if ((size_t)s->ntensors != json_object_size(wm))
            err = qsrc_errf("%s: weight_map lists %zu tensors but the shards hold %d", path, json_object_size(wm), s->ntensors);
        for (int i = 0; i < s->ntensors && !err; i++) {
            json_t *f = json_object_get(wm, s->tensors[i].name);
            const char *shp = im->shards[im->shard_of[i]].path;
            const char *base = strrchr(shp, '/') ? strrchr(shp, '/') + 1 : shp;
            if (!f || strcmp(json_string_value(f), base) != 0)
                err = qsrc_errf("%s: tensor '%s' found in %s but the weight_map says %s", path, s->tensors[i].name,
                                base, f ? json_string_value(f) : "nothing");
        }
    }
    json_decref(seen);
    json_decref(root);
    if (err) { qsrc_close(s); *errp = err; return NULL; }
    json_object_set_new(s->header.meta, "format", json_string("safetensors"));
    return s;
}

/*-*** Writer layout ***/

typedef struct { const qs_tensor *t; int idx; } wslot;

static int wslot_cmp(const void *a, const void *b)
{
    const wslot *x = a, *y = b;
    int rx = st_rank(x->t->dtype), ry = st_rank(y->t->dtype);
    if (rx != ry) return rx > ry ? -1 : 1;
    return strcmp(x->t->name, y->t->name);
}

static void sb_put(char **out, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        while (*len + n + 1 > *cap) *cap = *cap ? *cap * 2 : 1024;
        *out = realloc(*out, *cap);
    }
    memcpy(*out + *len, s, n);
    *len += n;
}

/* serde_json string escaping: \" \\ \b \f \n \r \t, other controls as \u00xx. */
static void json_escape(char **out, size_t *len, size_t *cap, const char *s)
{
    sb_put(out, len, cap, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char e[8];
        const char *r = NULL;
        switch (c) {
        case '"': r = "\\\""; break;
        case '\\': r = "\\\\"; break;
        case '\b': r = "\\b"; break;
        case '\f': r = "\\f"; break;
        case '\n': r = "\\n"; break;
        case '\r': r = "\\r"; break;
        case '\t': r = "\\t"; break;
        default:
            if (c < 0x20) { snprintf(e, sizeof e, "\\u%04x", c); r = e; }
        }
        if (r) sb_put(out, len, cap, r, strlen(r));
        else sb_put(out, len, cap, (const char *)&c, 1);
    }
    sb_put(out, len, cap, "\"", 1);
}

static int key_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

char *st_build_header(const qs_tensor *const *tensors, int n, const json_t *metadata,
                      uint64_t *offsets, size_t *hdr_len, char **errp)
{
    wslot *ws = calloc(n ? (size_t)n : 1, sizeof *ws);
    for (int i = 0; i < n; i++) {
        if (st_rank(tensors[i]->dtype) < 0 || tensors[i]->nparts != 1) {
            *errp = qsrc_errf("tensor '%s': cannot be stored in safetensors as %s", tensors[i]->name,
                              tensors[i]->nparts != 1 ? "a multi-part tensor" : dtype_name(tensors[i]->dtype));
            free(ws);
            return NULL;
        }
        ws[i].t = tensors[i];
        ws[i].idx = i;
    }
    qsort(ws, (size_t)n, sizeof *ws, wslot_cmp);
    for (int i = 1; i < n; i++)
        if (strcmp(ws[i].t->name, ws[i - 1].t->name) == 0) {
            *errp = qsrc_errf("tensor '%s' appears twice", ws[i].t->name);
            free(ws);
            return NULL;
        }
    char *out = NULL;
    size_t len = 0, cap = 0;
    sb_put(&out, &len, &cap, "\0\0\0\0\0\0\0\0{", 9);
    int first = 1;
    if (metadata && json_object_size(metadata)) {
        size_t nk = json_object_size(metadata), k = 0;
        char **keys = malloc(nk * sizeof *keys);
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)metadata, key, v) keys[k++] = (char *)key;
        qsort(keys, nk, sizeof *keys, key_cmp);
        sb_put(&out, &len, &cap, "\"__metadata__\":{", 16);
        for (size_t i = 0; i < nk; i++) {
            if (i) sb_put(&out, &len, &cap, ",", 1);
            json_escape(&out, &len, &cap, keys[i]);
            sb_put(&out, &len, &cap, ":", 1);
            json_t *sv = json_object_get(metadata, keys[i]);
            json_escape(&out, &len, &cap, json_is_string(sv) ? json_string_value(sv) : "");
        }
        sb_put(&out, &len, &cap, "}", 1);
        free(keys);
        first = 0;
    }
    uint64_t off = 0;
    uint64_t *rel = calloc(n ? (size_t)n : 1, sizeof *rel);
    for (int i = 0; i < n; i++) {
        const qs_tensor *t = ws[i].t;
        uint64_t nb = qs_tensor_nbytes(t);
        char tmp[128];
        if (!first) sb_put(&out, &len, &cap, ",", 1);
        first = 0;
        json_escape(&out, &len, &cap, t->name);
        snprintf(tmp, sizeof tmp, ":{\"dtype\":\"%s\",\"shape\":[", dtype_traits[t->dtype].name);
        sb_put(&out, &len, &cap, tmp, strlen(tmp));
        for (int d = 0; d < t->ndim; d++) {
            snprintf(tmp, sizeof tmp, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            sb_put(&out, &len, &cap, tmp, strlen(tmp));
        }
        snprintf(tmp, sizeof tmp, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + nb));
        sb_put(&out, &len, &cap, tmp, strlen(tmp));
        rel[ws[i].idx] = off;
        off += nb;
    }
    sb_put(&out, &len, &cap, "}", 1);
    while ((len - 8) % 8) sb_put(&out, &len, &cap, " ", 1);
    uint64_t hl = len - 8;
    if (hl > ST_MAX_HEADER) {
        *errp = qsrc_errf("safetensors header of %llu bytes exceeds the 100 MB limit", (unsigned long long)hl);
        free(out); free(rel); free(ws);
        return NULL;
    }
    for (int i = 0; i < 8; i++) out[i] = (char)(hl >> (8 * i));
    for (int i = 0; i < n; i++) offsets[i] = len + rel[i];
    free(rel);
    free(ws);
    *hdr_len = len;
    return out;
}
