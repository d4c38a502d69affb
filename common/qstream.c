/* qstream — reader and writer of the qpipe tensor stream (spec: docs/qstream.md).
 *
 * Wire layout, every object valid msgpack:
 *   "qstream"                                   fixstr magic (8 bytes)
 *   frame*                                      HEADER, (TENSOR, CHUNK*)*, END
 *   frame := [kind, info, data, xxh3]           fixarray(4)
 *            kind  positive fixint (1 HEADER, 2 TENSOR, 3 CHUNK, 4 END)
 *            info  bin32: a msgpack map (may be empty)
 *            data  bin32: raw bytes (tensor data in CHUNK frames, else empty)
 *            xxh3  uint64: XXH3-64 of the frame's bytes from the fixarray
 *                  marker through the last data byte
 * The END info carries the tensor count, the data byte count and the XXH3-64
 * of every stream byte before the END frame. The fixed framing lets a reader
 * take exact-length reads from a pipe; the checksums catch any flipped byte.
 */
#include "qstream.h"

#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY   /* XXH3_state_t's size, for hash_state_new */
#include <xxhash.h>

enum { FR_HEADER = 1, FR_TENSOR = 2, FR_CHUNK = 3, FR_END = 4 };
#define FRAME_PREFIX 2          /* 0x94, kind */
#define BIN_HDR      5          /* 0xc6 + u32 length */
#define HASH_LEN     9          /* 0xcf + u64 */

/*-*** Hash states ***/

/* XXH3 states on their own 64-byte-aligned blocks. XXH3_createState returns a
 * pointer into the middle of its allocation, so a state still held when a tool
 * exits through die() shows as "possibly lost" under valgrind; this one is the
 * block's start (reachable), and is freed with free(). */
static XXH3_state_t *hash_state_new(void)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(XXH3_state_t))) return NULL;
    XXH3_INITSTATE((XXH3_state_t *)p);
    return p;
}

/*-*** Tensor helpers ***/

/* An empty tensor still has rows that loops walk ([2^62, 0] would take
 * forever): its non-zero extents may multiply to at most this. Real empty
 * tensors are [0] or [0, hidden]. Found by fuzz_stats (regress/stats/timeout-6cfc...). */
#define QS_MAX_EMPTY_EXTENT ((int64_t)1 << 24)

int64_t qs_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1, extent = 1;       /* extent: product of the non-zero dims */
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] && extent > INT64_MAX / shape[i]) return -1;
        if (shape[i]) extent *= shape[i];
        n = shape[i] ? n * shape[i] : 0;
    }
    if (n == 0 && extent > QS_MAX_EMPTY_EXTENT) return -1;
    return n;
}

static int part_set(qs_part *p, const char *role, qdtype dtype, int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > QS_MAX_DIMS || dtype <= DT_INVALID || dtype >= DT_COUNT)
        return -1;
    int64_t n = qs_numel(ndim, shape);
    if (n < 0 || (uint64_t)n > UINT64_MAX / 8) return -1;
    memset(p, 0, sizeof *p);
    snprintf(p->role, sizeof p->role, "%s", role);
    p->dtype = dtype;
    p->ndim = ndim;
    if (ndim) memcpy(p->shape, shape, (size_t)ndim * sizeof *shape);   /* ndim 0: shape may be NULL */
    p->nbytes = (uint64_t)n * dtype_size(dtype);
    return 0;
}

int qs_tensor_init(qs_tensor *t, const char *name, qdtype dtype, int ndim, const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    if (ndim < 0 || ndim > QS_MAX_DIMS || qs_numel(ndim, shape) < 0) return -1;
    t->name = strdup(name);
    if (!t->name) return -1;
    t->dtype = dtype;
    t->ndim = ndim;
    if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    if (part_set(&t->parts[0], "data", dtype, ndim, shape) < 0) {
        free(t->name);
        t->name = NULL;
        return -1;
    }
    t->nparts = 1;
    return 0;
}

int qs_tensor_add_part(qs_tensor *t, const char *role, qdtype dtype, int ndim, const int64_t *shape)
{
    if (t->nparts >= QS_MAX_PARTS) return -1;
    if (part_set(&t->parts[t->nparts], role, dtype, ndim, shape) < 0) return -1;
    return t->nparts++;
}

void qs_tensor_clear(qs_tensor *t)
{
    free(t->name);
    if (t->attrs) json_decref(t->attrs);
    memset(t, 0, sizeof *t);
}

int qs_tensor_copy(qs_tensor *dst, const qs_tensor *src)
{
    *dst = *src;
    dst->name = strdup(src->name ? src->name : "");
    dst->attrs = src->attrs ? json_deep_copy(src->attrs) : NULL;
    return dst->name && (!src->attrs || dst->attrs) ? 0 : -1;
}

uint64_t qs_tensor_nbytes(const qs_tensor *t)
{
    uint64_t n = 0;
    for (int i = 0; i < t->nparts; i++) n += t->parts[i].nbytes;
    return n;
}

int qs_tensor_part(const qs_tensor *t, const char *role)
{
    for (int i = 0; i < t->nparts; i++)
        if (strcmp(t->parts[i].role, role) == 0) return i;
    return -1;
}

int64_t qs_tensor_rows(const qs_tensor *t) { return t->ndim >= 2 ? t->shape[0] : 1; }

int64_t qs_tensor_cols(const qs_tensor *t)
{
    if (t->ndim == 0) return 1;
    if (t->ndim == 1) return t->shape[0];
    return qs_numel(t->ndim - 1, t->shape + 1);
}

/*-*** Header helpers ***/

void qs_header_init(qs_header *h)
{
    memset(h, 0, sizeof *h);
    h->version = QS_VERSION;
    h->provenance = json_array();
    h->meta = json_object();
    h->manifest = json_array();
}

void qs_header_clear(qs_header *h)
{
    json_decref(h->provenance);
    json_decref(h->meta);
    json_decref(h->manifest);
    for (int i = 0; i < h->nfiles; i++) {
        free(h->files[i].name);
        free(h->files[i].data);
    }
    free(h->files);
    memset(h, 0, sizeof *h);
}

int qs_header_copy(qs_header *dst, const qs_header *src)
{
    memset(dst, 0, sizeof *dst);
    dst->version = src->version;
    dst->provenance = json_deep_copy(src->provenance);
    dst->meta = json_deep_copy(src->meta);
    dst->manifest = json_deep_copy(src->manifest);
    if (!dst->provenance || !dst->meta || !dst->manifest) return -1;
    for (int i = 0; i < src->nfiles; i++)
        if (qs_header_add_file(dst, src->files[i].name, src->files[i].data, src->files[i].len) < 0)
            return -1;
    return 0;
}

int qs_header_add_provenance(qs_header *h, const char *prog, const char *version, int argc, char **argv)
{
    json_t *args = json_array();
    for (int i = 0; i < argc; i++) json_array_append_new(args, json_string(argv[i]));
    json_t *e = json_pack("{s:s, s:s, s:o}", "prog", prog, "version", version, "args", args);
    return e ? json_array_append_new(h->provenance, e) : -1;
}

int qs_header_add_file(qs_header *h, const char *name, const void *data, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return -1;
    memcpy(copy, data, len);
    for (int i = 0; i < h->nfiles; i++)
        if (strcmp(h->files[i].name, name) == 0) {
            free(h->files[i].data);
            h->files[i].data = copy;
            h->files[i].len = len;
            return 0;
        }
    qs_file *f = realloc(h->files, (size_t)(h->nfiles + 1) * sizeof *f);
    if (!f) { free(copy); return -1; }
    h->files = f;
    f[h->nfiles].name = strdup(name);
    f[h->nfiles].data = copy;
    f[h->nfiles].len = len;
    h->nfiles++;
    return 0;
}

const qs_file *qs_header_file(const qs_header *h, const char *name)
{
    for (int i = 0; i < h->nfiles; i++)
        if (strcmp(h->files[i].name, name) == 0) return &h->files[i];
    return NULL;
}

static json_t *shape_json(int ndim, const int64_t *shape)
{
    json_t *a = json_array();
    for (int i = 0; i < ndim; i++) json_array_append_new(a, json_integer(shape[i]));
    return a;
}

int qs_header_manifest_add(qs_header *h, const qs_tensor *t)
{
    json_t *e = json_pack("{s:s, s:s, s:o, s:I}", "name", t->name, "dtype", dtype_name(t->dtype),
                          "shape", shape_json(t->ndim, t->shape), "nbytes", (json_int_t)qs_tensor_nbytes(t));
    static const char *carried[] = { "quant", "alias", "sparsity" };   /* attrs a sink needs before the data */
    for (size_t i = 0; e && t->attrs && i < sizeof carried / sizeof *carried; i++)
        if (json_object_get(t->attrs, carried[i])) json_object_set(e, carried[i], json_object_get(t->attrs, carried[i]));
    return e ? json_array_append_new(h->manifest, e) : -1;
}

/*-*** JSON <-> msgpack ***/

static void pack_json(msgpack_packer *pk, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        msgpack_pack_map(pk, json_object_size(v));
        json_object_foreach((json_t *)v, k, x) {
            msgpack_pack_str_with_body(pk, k, strlen(k));
            pack_json(pk, x);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        msgpack_pack_array(pk, json_array_size(v));
        json_array_foreach(v, i, x) pack_json(pk, x);
        break;
    }
    case JSON_STRING:
        msgpack_pack_str_with_body(pk, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER: msgpack_pack_int64(pk, json_integer_value(v)); break;
    case JSON_REAL: msgpack_pack_double(pk, json_real_value(v)); break;
    case JSON_TRUE: msgpack_pack_true(pk); break;
    case JSON_FALSE: msgpack_pack_false(pk); break;
    default: msgpack_pack_nil(pk); break;
    }
}

/* Convert a decoded msgpack object to JSON; bin is refused (NULL) except
 * where the caller handles it. depth bounds hostile nesting. */
static json_t *obj_to_json(const msgpack_object *o, int depth)
{
    if (depth > 64) return NULL;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return json_null();
    case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return o->via.u64 > (uint64_t)INT64_MAX ? NULL : json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer(o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR: return json_stringn(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            json_t *x = obj_to_json(&o->via.array.ptr[i], depth + 1);
            if (!x) { json_decref(a); return NULL; }
            json_array_append_new(a, x);
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR) { json_decref(m); return NULL; }
            char *k = strndup(kv->key.via.str.ptr, kv->key.via.str.size);
            json_t *x = obj_to_json(&kv->val, depth + 1);
            if (!k || !x || json_object_get(m, k)) {   /* duplicate keys refused */
                free(k); json_decref(x); json_decref(m); return NULL;
            }
            json_object_set_new(m, k, x);
            free(k);
        }
        return m;
    }
    default: return NULL;
    }
}

static const msgpack_object *map_get(const msgpack_object *m, const char *key)
{
    if (m->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl && memcmp(k->via.str.ptr, key, kl) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

static int get_u64(const msgpack_object *m, const char *key, uint64_t *v)
{
    const msgpack_object *o = map_get(m, key);
    if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return -1;
    *v = o->via.u64;
    return 0;
}

static char *get_str(const msgpack_object *m, const char *key)
{
    const msgpack_object *o = map_get(m, key);
    if (!o || o->type != MSGPACK_OBJECT_STR) return NULL;
    return strndup(o->via.str.ptr, o->via.str.size);
}

static int get_shape(const msgpack_object *m, int *ndim, int64_t *shape)
{
    const msgpack_object *o = map_get(m, "shape");
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > QS_MAX_DIMS) return -1;
    *ndim = (int)o->via.array.size;
    for (int i = 0; i < *ndim; i++) {
        const msgpack_object *d = &o->via.array.ptr[i];
        if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER || d->via.u64 > (uint64_t)INT64_MAX) return -1;
        shape[i] = (int64_t)d->via.u64;
    }
    return qs_numel(*ndim, shape) < 0 ? -1 : 0;
}

/*-*** Reader ***/

struct qs_reader {
    int       fd;
    char     *label;
    qs_header header;
    uint8_t   buf[1 << 16];          /* input buffer for small reads */
    size_t    bpos, blen;
    uint64_t  offset;                /* stream bytes consumed */
    XXH3_state_t *stream_hash;       /* over all bytes before the END frame */
    XXH3_state_t *frame_hash;
    uint64_t  frame_start;           /* offset of the current frame */
    /* current tensor */
    qs_tensor cur;
    int       have_cur;
    uint64_t  ntensors, data_bytes;
    uint64_t  cur_total, cur_done;   /* bytes of current tensor: total, consumed */
    uint64_t  cur_recv;              /* bytes received in chunks so far */
    uint8_t  *chunk;                 /* current verified chunk */
    size_t    chunk_cap, chunk_len, chunk_pos;
    uint64_t  cur_offset;            /* offset of the current tensor's header frame */
    int       ended, failed;
    int       seeked;                /* qs_reader_seek was used: no whole-stream check */
    char      err[512];
};

static int rd_fail(qs_reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int rd_fail(qs_reader *r, const char *fmt, ...)
{
    if (r->failed) return -1;        /* keep the first message */
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (r->have_cur && r->cur.name)
        snprintf(r->err, sizeof r->err, "%s: %s (tensor '%s', byte %llu)", r->label, msg, r->cur.name,
                 (unsigned long long)r->frame_start);
    else
        snprintf(r->err, sizeof r->err, "%s: %s (byte %llu)", r->label, msg, (unsigned long long)r->frame_start);
    r->failed = 1;
    return -1;
}

/* Read exactly n bytes, hashing them into the frame and stream hashes (the
 * stream hash is digested before each frame, so the END frame's own bytes
 * never count). */
static int rd_exact(qs_reader *r, void *dst, size_t n)
{
    uint8_t *d = dst;
    size_t want = n;
    while (want) {
        if (r->bpos < r->blen) {
            size_t k = r->blen - r->bpos < want ? r->blen - r->bpos : want;
            memcpy(d, r->buf + r->bpos, k);
            r->bpos += k; d += k; want -= k;
            continue;
        }
        ssize_t got;
        if (want >= sizeof r->buf) got = read(r->fd, d, want);
        else got = read(r->fd, r->buf, sizeof r->buf);
        if (got < 0) {
            if (errno == EINTR) continue;
            return rd_fail(r, "read error: %s", strerror(errno));
        }
        if (got == 0)
            return rd_fail(r, "truncated stream: ends in the middle of a frame");
        if (want >= sizeof r->buf) { d += got; want -= (size_t)got; }
        else { r->bpos = 0; r->blen = (size_t)got; }
    }
    XXH3_64bits_update(r->frame_hash, dst, n);
    XXH3_64bits_update(r->stream_hash, dst, n);
    r->offset += n;
    return 0;
}

/* Is there any more input? 1 yes, 0 clean EOF, -1 error. */
static int rd_more(qs_reader *r)
{
    if (r->bpos < r->blen) return 1;
    for (;;) {
        ssize_t got = read(r->fd, r->buf, sizeof r->buf);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return rd_fail(r, "read error: %s", strerror(errno));
        r->bpos = 0;
        r->blen = (size_t)got;
        return got > 0;
    }
}

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* Read one frame. info (malloc'd) and its length; data goes to r->chunk for
 * CHUNK frames (else must be empty). Verifies the frame hash. */
static int rd_frame(qs_reader *r, int *kind, uint8_t **info, size_t *info_len)
{
    uint8_t pre[FRAME_PREFIX + BIN_HDR];
    *info = NULL;
    r->frame_start = r->offset;
    XXH3_64bits_reset(r->frame_hash);
    int more = rd_more(r);
    if (more < 0) return -1;
    if (more == 0) return rd_fail(r, "truncated stream: no end record");
    if (rd_exact(r, pre, sizeof pre) < 0) return -1;
    if (pre[0] != 0x94 || pre[1] < FR_HEADER || pre[1] > FR_END)
        return rd_fail(r, "corrupt stream: bad frame marker 0x%02x 0x%02x", pre[0], pre[1]);
    *kind = pre[1];
    if (pre[2] != 0xc6) return rd_fail(r, "corrupt stream: bad frame info marker");
    size_t ilen = be32(pre + 3);
    if (ilen > QS_MAX_INFO) return rd_fail(r, "corrupt stream: frame info of %zu bytes", ilen);
    uint8_t *ib = malloc(ilen ? ilen : 1);
    if (!ib) return rd_fail(r, "out of memory");
    uint8_t dh[BIN_HDR];
    if (rd_exact(r, ib, ilen) < 0 || rd_exact(r, dh, BIN_HDR) < 0) { free(ib); return -1; }
    if (dh[0] != 0xc6) { free(ib); return rd_fail(r, "corrupt stream: bad frame data marker"); }
    size_t dlen = be32(dh + 1);
    if (dlen && *kind != FR_CHUNK) { free(ib); return rd_fail(r, "corrupt stream: data in a non-chunk frame"); }
    if (dlen > QS_MAX_CHUNK) { free(ib); return rd_fail(r, "corrupt stream: chunk of %zu bytes", dlen); }
    if (dlen > r->chunk_cap) {
        uint8_t *c = realloc(r->chunk, dlen);
        if (!c) { free(ib); return rd_fail(r, "out of memory"); }
        r->chunk = c;
        r->chunk_cap = dlen;
    }
    if (rd_exact(r, r->chunk, dlen) < 0) { free(ib); return -1; }
    uint64_t want = XXH3_64bits_digest(r->frame_hash);
    uint8_t hb[HASH_LEN];
    if (rd_exact(r, hb, HASH_LEN) < 0) { free(ib); return -1; }
    if (hb[0] != 0xcf || be64(hb + 1) != want) {
        free(ib);
        return rd_fail(r, "corrupt stream: checksum mismatch in %s frame",
                       *kind == FR_CHUNK ? "chunk" : *kind == FR_TENSOR ? "tensor header" :
                       *kind == FR_HEADER ? "stream header" : "end");
    }
    r->chunk_len = dlen;
    r->chunk_pos = 0;
    *info = ib;
    *info_len = ilen;
    return 0;
}

/* Walk one msgpack object at p (len bytes left) without allocating: every
 * length must fit the bytes left, and arrays/maps may not claim more
 * elements than there are bytes (each takes at least one), nor nest deeper
 * than 64. msgpack-c would allocate the claimed count first, so a 30-byte
 * hostile frame could ask for gigabytes. Returns bytes used, or 0 if bad. */
static size_t mp_check(const uint8_t *p, size_t len, int depth)
{
    if (!len || depth > 64) return 0;
    uint8_t c = p[0];
    uint64_t n = 0, elems = 0;
    size_t hdr = 1;
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) return 1;
    if ((c & 0xe0) == 0xa0) n = c & 0x1f;                       /* fixstr */
    else if ((c & 0xf0) == 0x90) elems = c & 0x0f;              /* fixarray */
    else if ((c & 0xf0) == 0x80) elems = 2u * (c & 0x0f);       /* fixmap */
    else {
        static const uint8_t fixed[] = { [0xca - 0xc4] = 4, [0xcb - 0xc4] = 8, [0xcc - 0xc4] = 1, [0xcd - 0xc4] = 2,
                                         [0xce - 0xc4] = 4, [0xcf - 0xc4] = 8, [0xd0 - 0xc4] = 1, [0xd1 - 0xc4] = 2,
                                         [0xd2 - 0xc4] = 4, [0xd3 - 0xc4] = 8 };
        if (c >= 0xca && c <= 0xd3) return (size_t)fixed[c - 0xc4] + 1 <= len ? (size_t)fixed[c - 0xc4] + 1 : 0;
        int w;
        switch (c) {
        case 0xc4: case 0xd9: w = 1; break;                     /* bin8, str8 */
        case 0xc5: case 0xda: case 0xdc: case 0xde: w = 2; break;
        case 0xc6: case 0xdb: case 0xdd: case 0xdf: w = 4; break;
        default: return 0;                                      /* ext types and the reserved 0xc1: refused */
        }
        if (len < 1 + (size_t)w) return 0;
        for (int i = 0; i < w; i++) n = n << 8 | p[1 + i];
        hdr = 1 + (size_t)w;
        if (c == 0xdc || c == 0xdd) { elems = n; n = 0; }
        else if (c == 0xde || c == 0xdf) { elems = 2 * n; n = 0; }
    }
    if (elems) {
        if (elems > len - hdr) return 0;
        size_t used = hdr;
        for (uint64_t i = 0; i < elems; i++) {
            size_t k = mp_check(p + used, len - used, depth + 1);
            if (!k) return 0;
            used += k;
        }
        return used;
    }
    return n <= len - hdr ? hdr + (size_t)n : 0;
}

static int unpack_info(qs_reader *r, const uint8_t *info, size_t len, msgpack_unpacked *u)
{
    msgpack_unpacked_init(u);
    if (mp_check(info, len, 0) != len) return rd_fail(r, "corrupt stream: undecodable frame info");
    size_t off = 0;
    if (msgpack_unpack_next(u, (const char *)info, len, &off) != MSGPACK_UNPACK_SUCCESS || off != len ||
        u->data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(u);
        return rd_fail(r, "corrupt stream: undecodable frame info");
    }
    return 0;
}

static int parse_header(qs_reader *r, const msgpack_object *m)
{
    uint64_t v;
    if (get_u64(m, "version", &v) < 0) return rd_fail(r, "corrupt stream: header without version");
    if (v != QS_VERSION)
        return rd_fail(r, "unsupported qstream version %llu (this build reads version %d)", (unsigned long long)v,
                       QS_VERSION);
    qs_header *h = &r->header;
    h->version = (int)v;
    const char *keys[3] = { "provenance", "meta", "manifest" };
    json_t **dst[3] = { &h->provenance, &h->meta, &h->manifest };
    for (int i = 0; i < 3; i++) {
        const msgpack_object *o = map_get(m, keys[i]);
        if (!o) continue;
        json_t *j = obj_to_json(o, 0);
        if (!j || (i == 1 ? !json_is_object(j) : !json_is_array(j))) {
            json_decref(j);
            return rd_fail(r, "corrupt stream: bad header field '%s'", keys[i]);
        }
        json_decref(*dst[i]);
        *dst[i] = j;
    }
    const msgpack_object *files = map_get(m, "files");
    if (files) {
        if (files->type != MSGPACK_OBJECT_ARRAY) return rd_fail(r, "corrupt stream: bad header field 'files'");
        for (uint32_t i = 0; i < files->via.array.size; i++) {
            const msgpack_object *f = &files->via.array.ptr[i];
            char *name = get_str(f, "name");
            const msgpack_object *d = map_get(f, "data");
            if (!name || !d || d->type != MSGPACK_OBJECT_BIN) {
                free(name);
                return rd_fail(r, "corrupt stream: bad carried file entry");
            }
            int rc = qs_header_add_file(h, name, d->via.bin.ptr, d->via.bin.size);
            free(name);
            if (rc < 0) return rd_fail(r, "out of memory");
        }
    }
    return 0;
}

static int parse_part(const msgpack_object *o, qs_part *p)
{
    char *role = get_str(o, "role"), *dt = get_str(o, "dtype");
    int ndim;
    int64_t shape[QS_MAX_DIMS];
    int rc = -1;
    if (role && dt && strlen(role) < sizeof p->role && get_shape(o, &ndim, shape) == 0)
        rc = part_set(p, role, dtype_from_name(dt), ndim, shape);
    free(role);
    free(dt);
    return rc;
}

static int parse_tensor(qs_reader *r, const msgpack_object *m)
{
    qs_tensor *t = &r->cur;
    qs_tensor_clear(t);
    t->name = get_str(m, "name");
    char *dt = get_str(m, "dtype");
    t->dtype = dt ? dtype_from_name(dt) : DT_INVALID;
    free(dt);
    uint64_t idx;
    const msgpack_object *parts = map_get(m, "parts");
    if (!t->name || t->dtype == DT_INVALID || get_shape(m, &t->ndim, t->shape) < 0 || !parts ||
        parts->type != MSGPACK_OBJECT_ARRAY || parts->via.array.size > QS_MAX_PARTS ||
        get_u64(m, "index", &idx) < 0)
        return rd_fail(r, "corrupt stream: bad tensor header");
    if (idx != r->ntensors) return rd_fail(r, "corrupt stream: tensor %llu out of order", (unsigned long long)idx);
    t->nparts = (int)parts->via.array.size;
    for (int i = 0; i < t->nparts; i++)
        if (parse_part(&parts->via.array.ptr[i], &t->parts[i]) < 0)
            return rd_fail(r, "corrupt stream: bad part %d of tensor '%s'", i, t->name);
    const msgpack_object *attrs = map_get(m, "attrs");
    if (attrs) {
        t->attrs = obj_to_json(attrs, 0);
        if (!t->attrs || !json_is_object(t->attrs)) return rd_fail(r, "corrupt stream: bad tensor attrs");
    }
    r->have_cur = 1;
    r->cur_total = qs_tensor_nbytes(t);
    r->cur_done = r->cur_recv = 0;
    r->chunk_len = r->chunk_pos = 0;
    return 0;
}

static int parse_end(qs_reader *r, const msgpack_object *m, uint64_t stream_hash)
{
    uint64_t n, bytes, hash;
    if (get_u64(m, "tensors", &n) < 0 || get_u64(m, "bytes", &bytes) < 0 || get_u64(m, "hash", &hash) < 0)
        return rd_fail(r, "corrupt stream: bad end record");
    if (n != r->ntensors || bytes != r->data_bytes)
        return rd_fail(r, "corrupt stream: end record counts %llu tensors, stream had %llu", (unsigned long long)n,
                       (unsigned long long)r->ntensors);
    if (hash != stream_hash) return rd_fail(r, "corrupt stream: whole-stream hash mismatch");
    int more = rd_more(r);
    if (more < 0) return -1;
    if (more) return rd_fail(r, "corrupt stream: trailing bytes after the end record");
    r->ended = 1;
    return 0;
}

qs_reader *qs_reader_open_fd(int fd, const char *label, char **errp)
{
    qs_reader *r = calloc(1, sizeof *r);
    if (!r) { *errp = strdup("out of memory"); return NULL; }
    r->fd = fd;
    r->label = strdup(label);
    r->stream_hash = hash_state_new();
    r->frame_hash = hash_state_new();
    qs_header_init(&r->header);
    if (!r->label || !r->stream_hash || !r->frame_hash) {
        r->fd = -1;                          /* the caller's to close */
        qs_reader_close(r);
        *errp = strdup("out of memory");
        return NULL;
    }
    XXH3_64bits_reset(r->stream_hash);
    XXH3_64bits_reset(r->frame_hash);
    uint8_t magic[8];
    int kind;
    uint8_t *info = NULL;
    size_t ilen;
    msgpack_unpacked u;
    if (rd_more(r) == 0) {
        rd_fail(r, "empty input: not a qstream (upstream failed?)");
    } else if (rd_exact(r, magic, 8) == 0 && memcmp(magic, "\xa7" QS_MAGIC, 8) != 0) {
        rd_fail(r, "not a qstream (bad magic)");
    } else if (!r->failed && rd_frame(r, &kind, &info, &ilen) == 0) {
        if (kind != FR_HEADER) rd_fail(r, "corrupt stream: first frame is not a header");
        else if (unpack_info(r, info, ilen, &u) == 0) {
            parse_header(r, &u.data);
            msgpack_unpacked_destroy(&u);
        }
    }
    free(info);
    if (r->failed) {
        *errp = strdup(r->err);
        qs_reader_close(r);
        return NULL;
    }
    return r;
}

qs_reader *qs_reader_open_path(const char *path, char **errp)
{
    if (strcmp(path, "-") == 0) return qs_reader_open_fd(0, "stdin", errp);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s: cannot open: %s", path, strerror(errno));
        *errp = strdup(msg);
        return NULL;
    }
    return qs_reader_open_fd(fd, path, errp);
}

const qs_header *qs_reader_header(const qs_reader *r) { return &r->header; }
const char *qs_reader_error(const qs_reader *r) { return r->err; }
uint64_t qs_reader_offset(const qs_reader *r) { return r->offset; }
uint64_t qs_reader_remaining(const qs_reader *r) { return r->have_cur ? r->cur_total - r->cur_done : 0; }

/* Load the next chunk of the current tensor into r->chunk. */
static int next_chunk(qs_reader *r)
{
    int kind;
    uint8_t *info;
    size_t ilen;
    if (rd_frame(r, &kind, &info, &ilen) < 0) return -1;
    if (kind != FR_CHUNK) {
        free(info);
        return rd_fail(r, "truncated tensor: %llu of %llu bytes before the next record",
                       (unsigned long long)r->cur_recv, (unsigned long long)r->cur_total);
    }
    msgpack_unpacked u;
    if (unpack_info(r, info, ilen, &u) < 0) { free(info); return -1; }
    uint64_t t, o;
    int bad = get_u64(&u.data, "t", &t) < 0 || get_u64(&u.data, "o", &o) < 0;
    msgpack_unpacked_destroy(&u);
    free(info);
    if (bad) return rd_fail(r, "corrupt stream: bad chunk record");
    if (t != r->ntensors - 1 || o != r->cur_recv)
        return rd_fail(r, "corrupt stream: chunk out of order");
    if (r->chunk_len == 0 || r->chunk_len > r->cur_total - r->cur_recv)
        return rd_fail(r, "corrupt stream: chunk overruns the tensor");
    r->cur_recv += r->chunk_len;
    r->data_bytes += r->chunk_len;
    return 0;
}

int64_t qs_reader_peek(qs_reader *r, const void **p, size_t max)
{
    if (r->failed) return -1;
    if (!r->have_cur || r->cur_done == r->cur_total) return 0;
    if (r->chunk_pos == r->chunk_len && next_chunk(r) < 0) return -1;
    size_t k = r->chunk_len - r->chunk_pos;
    if (k > max) k = max;
    *p = r->chunk + r->chunk_pos;
    r->chunk_pos += k;
    r->cur_done += k;
    return (int64_t)k;
}

int qs_reader_read(qs_reader *r, void *buf, size_t n)
{
    if (r->failed) return -1;
    if (n > qs_reader_remaining(r)) return rd_fail(r, "read past the end of the tensor");
    uint8_t *d = buf;
    while (n) {
        const void *p;
        int64_t k = qs_reader_peek(r, &p, n);
        if (k <= 0) return -1;
        memcpy(d, p, (size_t)k);
        d += k;
        n -= (size_t)k;
    }
    return 0;
}

void *qs_reader_read_all(qs_reader *r, size_t *len)
{
    uint64_t n = qs_reader_remaining(r);
    if (n > SIZE_MAX - 1) { rd_fail(r, "tensor too large for memory"); return NULL; }
    void *buf = malloc(n ? n : 1);
    if (!buf) { rd_fail(r, "out of memory for %llu bytes", (unsigned long long)n); return NULL; }
    if (qs_reader_read(r, buf, n) < 0) { free(buf); return NULL; }
    *len = n;
    return buf;
}

int qs_reader_next(qs_reader *r, const qs_tensor **t)
{
    if (r->failed) return -1;
    if (r->ended) return 0;
    /* drain (and verify) the rest of the current tensor */
    while (r->have_cur && r->cur_done < r->cur_total) {
        const void *p;
        if (qs_reader_peek(r, &p, SIZE_MAX) < 0) return -1;
    }
    int kind;
    uint8_t *info;
    size_t ilen;
    uint64_t stream_hash = XXH3_64bits_digest(r->stream_hash);
    const uint64_t at = r->offset;
    if (rd_frame(r, &kind, &info, &ilen) < 0) return -1;
    msgpack_unpacked u;
    if (unpack_info(r, info, ilen, &u) < 0) { free(info); return -1; }
    int rc;
    if (kind == FR_TENSOR) {
        rc = parse_tensor(r, &u.data);
        if (rc == 0) { r->ntensors++; r->cur_offset = at; *t = &r->cur; rc = 1; }
    } else if (kind == FR_END && r->seeked) {
        r->have_cur = 0;     /* counts and the whole-stream hash were checked by the pass that recorded the offsets */
        r->ended = 1;
        rc = 0;
    } else if (kind == FR_END) {
        r->have_cur = 0;
        rc = parse_end(r, &u.data, stream_hash);
    } else {
        rc = rd_fail(r, kind == FR_CHUNK ? "corrupt stream: chunk beyond the tensor's size"
                                         : "corrupt stream: unexpected frame");
    }
    msgpack_unpacked_destroy(&u);
    free(info);
    return rc;
}

uint64_t qs_reader_tensor_offset(const qs_reader *r) { return r->have_cur ? r->cur_offset : 0; }

int qs_reader_seek(qs_reader *r, uint64_t offset, uint64_t index)
{
    if (r->failed) return -1;
    struct stat sb;
    if (fstat(r->fd, &sb) < 0 || !S_ISREG(sb.st_mode)) return rd_fail(r, "cannot seek: not a regular file");
    if (offset > (uint64_t)sb.st_size || lseek(r->fd, (off_t)offset, SEEK_SET) < 0)
        return rd_fail(r, "cannot seek to byte %llu", (unsigned long long)offset);
    r->bpos = r->blen = 0;
    r->offset = r->frame_start = offset;
    r->ntensors = index;
    r->have_cur = 0;
    r->cur_total = r->cur_done = r->cur_recv = 0;
    r->chunk_len = r->chunk_pos = 0;
    r->ended = 0;
    r->seeked = 1;
    return 0;
}

void qs_reader_close(qs_reader *r)
{
    if (!r) return;
    if (r->fd > 0) close(r->fd);
    qs_tensor_clear(&r->cur);
    qs_header_clear(&r->header);
    free(r->stream_hash);
    free(r->frame_hash);
    free(r->chunk);
    free(r->label);
    free(r);
}

/*-*** Writer ***/

struct qs_writer {
    int       fd;
    size_t    chunk;
    XXH3_state_t *stream_hash;
    uint8_t  *buf;                   /* pending chunk bytes */
    size_t    blen;
    qs_tensor cur;
    int       in_tensor;
    uint64_t  cur_total, cur_written, cur_sent;
    uint64_t  ntensors, data_bytes;
    int       failed, err_no;
    char      err[400];
};

static int wr_fail(qs_writer *w, int e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int wr_fail(qs_writer *w, int e, const char *fmt, ...)
{
    if (w->failed) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
    w->failed = 1;
    w->err_no = e;
    return -1;
}

static int write_iov(qs_writer *w, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t k = writev(w->fd, iov, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return wr_fail(w, errno, "write error: %s", strerror(errno));
        }
        while (n > 0 && (size_t)k >= iov->iov_len) { k -= (ssize_t)iov->iov_len; iov++; n--; }
        if (n > 0) { iov->iov_base = (uint8_t *)iov->iov_base + k; iov->iov_len -= (size_t)k; }
    }
    return 0;
}

static void put_be32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v; }

/* Emit one frame: kind, info (msgpack map bytes), data. */
static int wr_frame(qs_writer *w, int kind, const void *info, size_t ilen, const void *data, size_t dlen)
{
    if (w->failed) return -1;
    uint8_t pre[FRAME_PREFIX + BIN_HDR], dh[BIN_HDR], hb[HASH_LEN];
    pre[0] = 0x94; pre[1] = (uint8_t)kind; pre[2] = 0xc6; put_be32(pre + 3, (uint32_t)ilen);
    dh[0] = 0xc6; put_be32(dh + 1, (uint32_t)dlen);
    XXH3_state_t *fh = hash_state_new();
    XXH3_64bits_reset(fh);
    XXH3_64bits_update(fh, pre, sizeof pre);
    XXH3_64bits_update(fh, info, ilen);
    XXH3_64bits_update(fh, dh, sizeof dh);
    XXH3_64bits_update(fh, data, dlen);
    uint64_t h = XXH3_64bits_digest(fh);
    free(fh);
    hb[0] = 0xcf;
    put_be32(hb + 1, (uint32_t)(h >> 32));
    put_be32(hb + 5, (uint32_t)h);
    if (kind != FR_END) {
        XXH3_64bits_update(w->stream_hash, pre, sizeof pre);
        XXH3_64bits_update(w->stream_hash, info, ilen);
        XXH3_64bits_update(w->stream_hash, dh, sizeof dh);
        XXH3_64bits_update(w->stream_hash, data, dlen);
        XXH3_64bits_update(w->stream_hash, hb, sizeof hb);
    }
    struct iovec iov[5] = {
        { pre, sizeof pre }, { (void *)info, ilen }, { dh, sizeof dh }, { (void *)data, dlen }, { hb, sizeof hb },
    };
    return write_iov(w, iov, 5);
}

static void pack_kstr(msgpack_packer *pk, const char *k, const char *v)
{
    msgpack_pack_str_with_body(pk, k, strlen(k));
    msgpack_pack_str_with_body(pk, v, strlen(v));
}

static void pack_shape(msgpack_packer *pk, int ndim, const int64_t *shape)
{
    msgpack_pack_str_with_body(pk, "shape", 5);
    msgpack_pack_array(pk, (size_t)ndim);
    for (int i = 0; i < ndim; i++) msgpack_pack_uint64(pk, (uint64_t)shape[i]);
}

qs_writer *qs_writer_open_fd(int fd, const qs_header *h, size_t chunk, char **errp)
{
    qs_writer *w = calloc(1, sizeof *w);
    if (!w) { *errp = strdup("out of memory"); return NULL; }
    w->fd = fd;
    w->chunk = chunk ? chunk : QS_DEFAULT_CHUNK;
    if (w->chunk > QS_MAX_CHUNK) w->chunk = QS_MAX_CHUNK;
    w->buf = malloc(w->chunk);
    w->stream_hash = hash_state_new();
    if (!w->buf || !w->stream_hash) {
        free(w->buf);
        free(w->stream_hash);
        free(w);
        *errp = strdup("out of memory");
        return NULL;
    }
    XXH3_64bits_reset(w->stream_hash);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    msgpack_pack_str_with_body(&pk, "version", 7);
    msgpack_pack_int(&pk, QS_VERSION);
    msgpack_pack_str_with_body(&pk, "provenance", 10);
    pack_json(&pk, h->provenance ? h->provenance : json_array());
    msgpack_pack_str_with_body(&pk, "meta", 4);
    pack_json(&pk, h->meta ? h->meta : json_object());
    msgpack_pack_str_with_body(&pk, "manifest", 8);
    pack_json(&pk, h->manifest ? h->manifest : json_array());
    msgpack_pack_str_with_body(&pk, "files", 5);
    msgpack_pack_array(&pk, (size_t)h->nfiles);
    for (int i = 0; i < h->nfiles; i++) {
        msgpack_pack_map(&pk, 2);
        pack_kstr(&pk, "name", h->files[i].name);
        msgpack_pack_str_with_body(&pk, "data", 4);
        msgpack_pack_bin_with_body(&pk, h->files[i].data, h->files[i].len);
    }
    const char magic[8] = "\xa7" QS_MAGIC;
    XXH3_64bits_update(w->stream_hash, magic, 8);
    struct iovec iov = { (void *)magic, 8 };
    if (!w->buf || write_iov(w, &iov, 1) < 0 || wr_frame(w, FR_HEADER, sb.data, sb.size, NULL, 0) < 0) {
        *errp = strdup(w->failed ? w->err : "out of memory");
        msgpack_sbuffer_destroy(&sb);
        qs_writer_close(w, NULL);
        return NULL;
    }
    msgpack_sbuffer_destroy(&sb);
    return w;
}

const char *qs_writer_error(const qs_writer *w) { return w->err; }
int qs_writer_errno(const qs_writer *w) { return w->err_no; }

int qs_writer_begin(qs_writer *w, const qs_tensor *t)
{
    if (w->failed) return -1;
    if (w->in_tensor) return wr_fail(w, 0, "tensor '%s' begun before '%s' ended", t->name, w->cur.name);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, t->attrs ? 6 : 5);
    pack_kstr(&pk, "name", t->name);
    pack_kstr(&pk, "dtype", dtype_name(t->dtype));
    pack_shape(&pk, t->ndim, t->shape);
    msgpack_pack_str_with_body(&pk, "index", 5);
    msgpack_pack_uint64(&pk, w->ntensors);
    msgpack_pack_str_with_body(&pk, "parts", 5);
    msgpack_pack_array(&pk, (size_t)t->nparts);
    for (int i = 0; i < t->nparts; i++) {
        msgpack_pack_map(&pk, 3);
        pack_kstr(&pk, "role", t->parts[i].role);
        pack_kstr(&pk, "dtype", dtype_name(t->parts[i].dtype));
        pack_shape(&pk, t->parts[i].ndim, t->parts[i].shape);
    }
    if (t->attrs) {
        msgpack_pack_str_with_body(&pk, "attrs", 5);
        pack_json(&pk, t->attrs);
    }
    int rc = wr_frame(w, FR_TENSOR, sb.data, sb.size, NULL, 0);
    msgpack_sbuffer_destroy(&sb);
    if (rc < 0) return -1;
    qs_tensor_clear(&w->cur);
    if (qs_tensor_copy(&w->cur, t) < 0) return wr_fail(w, 0, "out of memory");
    w->in_tensor = 1;
    w->ntensors++;
    w->cur_total = qs_tensor_nbytes(t);
    w->cur_written = w->cur_sent = 0;
    w->blen = 0;
    return 0;
}

static int emit_chunk(qs_writer *w, const void *data, size_t n)
{
    uint8_t info[32];
    msgpack_sbuffer sb = { 0 };
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "t", 1);
    msgpack_pack_uint64(&pk, w->ntensors - 1);
    msgpack_pack_str_with_body(&pk, "o", 1);
    msgpack_pack_uint64(&pk, w->cur_sent);
    memcpy(info, sb.data, sb.size);
    size_t ilen = sb.size;
    msgpack_sbuffer_destroy(&sb);
    if (wr_frame(w, FR_CHUNK, info, ilen, data, n) < 0) return -1;
    w->cur_sent += n;
    w->data_bytes += n;
    return 0;
}

int qs_writer_write(qs_writer *w, const void *buf, size_t n)
{
    if (w->failed) return -1;
    if (!w->in_tensor) return wr_fail(w, 0, "data written outside a tensor");
    if (n > w->cur_total - w->cur_written)
        return wr_fail(w, 0, "tensor '%s': more data than its %llu bytes", w->cur.name,
                       (unsigned long long)w->cur_total);
    const uint8_t *p = buf;
    w->cur_written += n;
    while (n) {
        if (w->blen == 0 && n >= w->chunk) {           /* whole chunk straight from the caller */
            if (emit_chunk(w, p, w->chunk) < 0) return -1;
            p += w->chunk; n -= w->chunk;
            continue;
        }
        size_t k = w->chunk - w->blen < n ? w->chunk - w->blen : n;
        memcpy(w->buf + w->blen, p, k);
        w->blen += k; p += k; n -= k;
        if (w->blen == w->chunk) {
            if (emit_chunk(w, w->buf, w->blen) < 0) return -1;
            w->blen = 0;
        }
    }
    return 0;
}

int qs_writer_end(qs_writer *w)
{
    if (w->failed) return -1;
    if (!w->in_tensor) return wr_fail(w, 0, "end of a tensor that was not begun");
    if (w->cur_written != w->cur_total)
        return wr_fail(w, 0, "tensor '%s': %llu of %llu bytes written", w->cur.name,
                       (unsigned long long)w->cur_written, (unsigned long long)w->cur_total);
    if (w->blen && emit_chunk(w, w->buf, w->blen) < 0) return -1;
    w->blen = 0;
    w->in_tensor = 0;
    return 0;
}

int qs_writer_put(qs_writer *w, const qs_tensor *t, const void *data)
{
    if (qs_writer_begin(w, t) < 0) return -1;
    if (qs_writer_write(w, data, qs_tensor_nbytes(t)) < 0) return -1;
    return qs_writer_end(w);
}

int qs_copy_tensor(qs_reader *r, qs_writer *w, const qs_tensor *t)
{
    if (!t) t = &r->cur;
    if (qs_tensor_nbytes(t) != qs_reader_remaining(r))
        return wr_fail(w, 0, "tensor '%s': copy of a partly read tensor", t->name);
    if (qs_writer_begin(w, t) < 0) return -1;
    for (;;) {
        const void *p;
        int64_t k = qs_reader_peek(r, &p, SIZE_MAX);
        if (k < 0) return wr_fail(w, 0, "%s", qs_reader_error(r));
        if (k == 0) break;
        if (qs_writer_write(w, p, (size_t)k) < 0) return -1;
    }
    return qs_writer_end(w);
}

int qs_writer_close(qs_writer *w, char **errp)
{
    int rc = -1;
    if (!w->failed && w->in_tensor) wr_fail(w, 0, "stream closed inside tensor '%s'", w->cur.name);
    if (!w->failed && w->buf) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 3);
        msgpack_pack_str_with_body(&pk, "tensors", 7);
        msgpack_pack_uint64(&pk, w->ntensors);
        msgpack_pack_str_with_body(&pk, "bytes", 5);
        msgpack_pack_uint64(&pk, w->data_bytes);
        msgpack_pack_str_with_body(&pk, "hash", 4);
        msgpack_pack_uint64(&pk, XXH3_64bits_digest(w->stream_hash));
        rc = wr_frame(w, FR_END, sb.data, sb.size, NULL, 0);
        msgpack_sbuffer_destroy(&sb);
    }
    if (rc < 0 && errp) *errp = strdup(w->err[0] ? w->err : "out of memory");
    qs_tensor_clear(&w->cur);
    free(w->stream_hash);
    free(w->buf);
    free(w);
    return rc;
}

int qs_path_is_stream(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char m[8];
    ssize_t k = read(fd, m, 8);
    close(fd);
    if (k < 0) return -1;
    return k == 8 && memcmp(m, "\xa7" QS_MAGIC, 8) == 0;
}
