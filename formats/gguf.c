/* gguf — GGUF reader (validating, mmap'd, also a qsrc), writer, and the
 * llama.cpp Llama export conventions. See gguf.h; spec digest
 * /work/shared/specs/gguf.md (ggml-org/ggml src/gguf.cpp reader checks,
 * gguf-py gguf_writer.py layout, convert_hf_to_gguf.py LlamaModel).
 */
#include "gguf.h"
#include "ggml_quants.h"
#include "tokenizer.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The tokenizer module is another helper's; weak so gguf.o links without it. */
#pragma weak tokenizer_vocab_size
#pragma weak tokenizer_piece
#pragma weak tokenizer_score
#pragma weak tokenizer_type
#pragma weak tokenizer_model_kind
#pragma weak tokenizer_merges
#pragma weak tokenizer_bos
#pragma weak tokenizer_eos

static char *errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *errf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

static void set_err(char **errp, char *msg)
{
    if (errp)
        *errp = msg;
    else
        free(msg);
}

static uint64_t align_up(uint64_t x, uint64_t a) { return x + (a - x % a) % a; }

/* Element sizes of scalar value types (0 for string/array). */
static const size_t value_size[GGUF_T_COUNT] = {
    [GGUF_T_UINT8] = 1, [GGUF_T_INT8] = 1, [GGUF_T_UINT16] = 2, [GGUF_T_INT16] = 2,
    [GGUF_T_UINT32] = 4, [GGUF_T_INT32] = 4, [GGUF_T_FLOAT32] = 4, [GGUF_T_BOOL] = 1,
    [GGUF_T_UINT64] = 8, [GGUF_T_INT64] = 8, [GGUF_T_FLOAT64] = 8,
};

static const char *const value_name[GGUF_T_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64",
};

const char *gguf_type_name(int t)
{
    return t >= 0 && t < GGUF_T_COUNT ? value_name[t] : "?";
}

static int type_from_name(const char *s)
{
    for (int t = 0; t < GGUF_T_COUNT; t++)
        if (strcmp(value_name[t], s) == 0)
            return t;
    return -1;
}

/*-*** Reader: a bounds-checked cursor over the file ***/

typedef struct {
    const uint8_t *b;
    size_t n, pos;
    const char *label;
    char *err;                     /* first error, malloc'd */
} cursor;

static int fail(cursor *c, char *msg)
{
    if (!c->err)
        c->err = msg;
    return -1;
}

static int take(cursor *c, void *dst, size_t k, const char *what)
{
    if (k > c->n - c->pos)
        return fail(c, errf("%s: truncated at byte %zu reading %s", c->label, c->pos, what));
    memcpy(dst, c->b + c->pos, k);
    c->pos += k;
    return 0;
}

static int take_u32(cursor *c, uint32_t *v, const char *what) { return take(c, v, 4, what); }
static int take_u64(cursor *c, uint64_t *v, const char *what) { return take(c, v, 8, what); }

/* A string: u64 length (≤ 2^30, inside the file) + bytes; *s points into the file. */
static int take_str(cursor *c, const char **s, uint64_t *len, const char *what)
{
    if (take_u64(c, len, what) < 0)
        return -1;
    if (*len > GGUF_MAX_STRING || *len > c->n - c->pos)
        return fail(c, errf("%s: %s: string length %llu at byte %zu exceeds the file", c->label,
                            what, (unsigned long long)*len, c->pos - 8));
    *s = (const char *)c->b + c->pos;
    c->pos += *len;
    return 0;
}

/* Length of a valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (!k || k > n || (k == 2 && c < 0xC2) || (k == 4 && c > 0xF4))
        return 0;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if (k == 3 && ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0)))
        return 0;                                  /* overlong / surrogate */
    if (k == 4 && ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90)))
        return 0;
    return k;
}

static int utf8_valid(const char *s, size_t len)
{
    for (size_t i = 0, k; i < len; i += k)
        if (!(k = utf8_seq((const unsigned char *)s + i, len - i)))
            return 0;
    return 1;
}

/* JSON string of len bytes; invalid UTF-8 bytes become U+FFFD (JSON can't
 * hold them). NULL only on out of memory. */
static json_t *json_str_lossy(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    if (j)
        return j;
    char *buf = malloc(len * 3 + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_seq((const unsigned char *)s + i, len - i);
        if (k && !(k == 1 && s[i] == 0)) {
            memcpy(buf + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    j = json_stringn(buf, o);
    free(buf);
    return j;
}

/* One scalar or string value of type t as JSON. */
static json_t *take_value(cursor *c, int t, const char *key)
{
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
            float f32; uint64_t u64; int64_t i64; double f64; } v;
    if (t == GGUF_T_STRING) {
        const char *s;
        uint64_t len;
        if (take_str(c, &s, &len, key) < 0)
            return NULL;
        json_t *j = json_str_lossy(s, (size_t)len);
        if (!j)
            fail(c, errf("%s: out of memory", c->label));
        return j;
    }
    if (take(c, &v, value_size[t], key) < 0)
        return NULL;
    switch (t) {
    case GGUF_T_UINT8:   return json_integer(v.u8);
    case GGUF_T_INT8:    return json_integer(v.i8);
    case GGUF_T_UINT16:  return json_integer(v.u16);
    case GGUF_T_INT16:   return json_integer(v.i16);
    case GGUF_T_UINT32:  return json_integer(v.u32);
    case GGUF_T_INT32:   return json_integer(v.i32);
    case GGUF_T_FLOAT32: return json_real(v.f32);
    case GGUF_T_BOOL:    return json_boolean(v.u8 != 0);
    case GGUF_T_UINT64:  return v.u64 <= INT64_MAX ? json_integer((json_int_t)v.u64) : json_real((double)v.u64);
    case GGUF_T_INT64:   return json_integer(v.i64);
    default:             return json_real(v.f64);
    }
}

/* Read one KV into f->kv / f->kv_types. */
static int take_kv(cursor *c, gguf_file *f, int64_t index)
{
    const char *ks;
    uint64_t klen;
    uint32_t t;
    char what[48];
    snprintf(what, sizeof what, "key of KV %lld", (long long)index);
    if (take_str(c, &ks, &klen, what) < 0)
        return -1;
    if (klen == 0 || memchr(ks, 0, (size_t)klen))
        return fail(c, errf("%s: KV %lld: empty key or key containing NUL", c->label, (long long)index));
    char *key = strndup(ks, (size_t)klen);
    if (!key)
        return fail(c, errf("%s: out of memory", c->label));
    int rc = -1;
    json_t *val = NULL;
    char tname[16];
    if (!utf8_valid(key, strlen(key))) {
        fail(c, errf("%s: KV %lld: key is not valid UTF-8", c->label, (long long)index));
        goto out;
    }
    if (json_object_get(f->kv, key)) {
        fail(c, errf("%s: duplicate key '%s'", c->label, key));
        goto out;
    }
    if (take_u32(c, &t, key) < 0)
        goto out;
    if (t >= GGUF_T_COUNT) {
        fail(c, errf("%s: key '%s': unknown value type %u", c->label, key, t));
        goto out;
    }
    if (t == GGUF_T_ARRAY) {
        uint32_t et;
        uint64_t count;
        if (take_u32(c, &et, key) < 0 || take_u64(c, &count, key) < 0)
            goto out;
        if (et >= GGUF_T_COUNT || et == GGUF_T_ARRAY) {
            fail(c, errf("%s: key '%s': bad array element type %u", c->label, key, et));
            goto out;
        }
        /* refuse absurd counts before allocating: each element takes ≥ 1 (8 for strings) bytes */
        uint64_t min_elem = et == GGUF_T_STRING ? 8 : value_size[et];
        if (count > GGUF_MAX_STRING || count > (c->n - c->pos) / min_elem) {
            fail(c, errf("%s: key '%s': array of %llu elements exceeds the file", c->label, key,
                         (unsigned long long)count));
            goto out;
        }
        val = json_array();
        for (uint64_t i = 0; val && i < count; i++) {
            json_t *e = take_value(c, (int)et, key);
            if (!e || json_array_append_new(val, e) < 0)
                goto out;
        }
        snprintf(tname, sizeof tname, "arr[%s]", value_name[et]);
    } else {
        val = take_value(c, (int)t, key);
        snprintf(tname, sizeof tname, "%s", value_name[t]);
    }
    if (!val)
        goto out;
    json_object_set_new(f->kv, key, val);
    json_object_set_new(f->kv_types, key, json_string(tname));
    val = NULL;
    rc = 0;
out:
    if (rc < 0 && !c->err)
        fail(c, errf("%s: out of memory", c->label));
    json_decref(val);
    free(key);
    return rc;
}

/* general.alignment: must be UINT32, non-zero power of two. */
static int check_alignment(cursor *c, gguf_file *f)
{
    f->alignment = GGUF_DEFAULT_ALIGN;
    json_t *a = json_object_get(f->kv, "general.alignment");
    if (!a)
        return 0;
    const char *ty = json_string_value(json_object_get(f->kv_types, "general.alignment"));
    json_int_t v = json_integer_value(a);
    if (strcmp(ty, "u32") != 0 || v <= 0 || (v & (v - 1)) != 0)
        return fail(c, errf("%s: general.alignment must be a UINT32 power of two (got %s %lld)",
                            c->label, ty, (long long)v));
    f->alignment = (uint32_t)v;
    return 0;
}

/* One tensor info, with every §3.6 check; nbytes computed overflow-safely. */
static int take_tensor_info(cursor *c, gguf_tensor_info *ti, int64_t index, json_t *names)
{
    const char *ns;
    uint64_t nlen;
    uint32_t nd, type;
    char what[48];
    snprintf(what, sizeof what, "name of tensor %lld", (long long)index);
    if (take_str(c, &ns, &nlen, what) < 0)
        return -1;
    if (nlen > GGUF_MAX_NAME || memchr(ns, 0, (size_t)nlen))
        return fail(c, errf("%s: tensor %lld: name of %llu bytes (ggml allows at most %d, no NUL)",
                            c->label, (long long)index, (unsigned long long)nlen, GGUF_MAX_NAME));
    ti->name = strndup(ns, (size_t)nlen);
    if (!ti->name)
        return fail(c, errf("%s: out of memory", c->label));
    if (json_object_get(names, ti->name))
        return fail(c, errf("%s: duplicate tensor name '%s'", c->label, ti->name));
    json_object_set_new_nocheck(names, ti->name, json_null());
    if (take_u32(c, &nd, ti->name) < 0)
        return -1;
    if (nd > GGUF_MAX_DIMS)
        return fail(c, errf("%s: tensor '%s': %u dims (max %d)", c->label, ti->name, nd, GGUF_MAX_DIMS));
    ti->n_dims = (int)nd;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        ti->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t ne;
        if (take_u64(c, &ne, ti->name) < 0)
            return -1;
        if (ne > INT64_MAX)
            return fail(c, errf("%s: tensor '%s': negative ne[%u]", c->label, ti->name, d));
        ti->ne[d] = (int64_t)ne;
    }
    if (take_u32(c, &type, ti->name) < 0 || take_u64(c, &ti->offset, ti->name) < 0)
        return -1;
    const ggml_qtraits *tr = ggml_qtype_traits((int)type);
    if (!tr)
        return fail(c, errf("%s: tensor '%s': unknown or removed ggml type %u", c->label, ti->name, type));
    ti->type = (int)type;
    if (ti->ne[0] % tr->blck)
        return fail(c, errf("%s: tensor '%s': ne[0] = %lld is not a multiple of the %s block (%d)",
                            c->label, ti->name, (long long)ti->ne[0], tr->name, tr->blck));
    /* element count and byte size without overflow */
    int64_t numel = 1;
    uint64_t nbytes = (uint64_t)(ti->ne[0] / tr->blck);
    int ovf = __builtin_mul_overflow(nbytes, (uint64_t)tr->type_size, &nbytes);
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        ovf |= __builtin_mul_overflow(numel, ti->ne[d], &numel);
        if (d > 0)
            ovf |= __builtin_mul_overflow(nbytes, (uint64_t)ti->ne[d], &nbytes);
    }
    if (ovf || nbytes > INT64_MAX)
        return fail(c, errf("%s: tensor '%s': size overflows", c->label, ti->name));
    if (qs_numel(GGUF_MAX_DIMS, ti->ne) < 0)
        return fail(c, errf("%s: tensor '%s': empty, yet its other dims claim more than 2^24 rows", c->label, ti->name));
    ti->nbytes = nbytes;
    return 0;
}

/* §3.7/3.8: offsets are the running padded sums and the data is inside the file. */
static int check_offsets(cursor *c, gguf_file *f)
{
    uint64_t expect = 0;
    for (int64_t i = 0; i < f->ntensors; i++) {
        const gguf_tensor_info *ti = &f->tensors[i];
        if (ti->offset != expect)
            return fail(c, errf("%s: tensor %lld '%s': offset %llu, expected %llu (offsets must be "
                                "the running padded sizes)", c->label, (long long)i, ti->name,
                                (unsigned long long)ti->offset, (unsigned long long)expect));
        const uint64_t n = f->file_size;
        if (f->data_offset > n || ti->nbytes > n - f->data_offset || ti->offset > n - f->data_offset - ti->nbytes)
            return fail(c, errf("%s: tensor '%s': data [%llu, +%llu) past the end of the file (%llu bytes)",
                                c->label, ti->name, (unsigned long long)(f->data_offset + ti->offset),
                                (unsigned long long)ti->nbytes, (unsigned long long)n));
        expect += align_up(ti->nbytes, f->alignment);
    }
    return 0;
}

gguf_file *gguf_file_parse(const void *buf, size_t len, const char *label, char **errp)
{
    return gguf_file_parse_ex(buf, len, len, label, errp);
}

gguf_file *gguf_file_parse_ex(const void *buf, size_t len, uint64_t file_size, const char *label, char **errp)
{
    cursor c = { buf, len, 0, label ? label : "gguf", NULL };
    gguf_file *f = calloc(1, sizeof *f);
    json_t *names = json_object();
    if (!f || !names || !(f->label = strdup(c.label)) || !(f->kv = json_object()) ||
        !(f->kv_types = json_object())) {
        fail(&c, errf("%s: out of memory", c.label));
        goto bad;
    }
    f->base = buf;
    f->size = len;
    f->file_size = file_size < len ? len : file_size;
    char magic[4];
    uint64_t nt, nkv;
    if (take(&c, magic, 4, "magic") < 0)
        goto bad;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0) {
        fail(&c, errf("%s: not a GGUF file (bad magic)", c.label));
        goto bad;
    }
    if (take_u32(&c, &f->version, "version") < 0)
        goto bad;
    if ((f->version & 0xFFFF) == 0) {
        fail(&c, errf("%s: version 0x%08x: byte-swapped (big-endian) GGUF is not supported",
                      c.label, f->version));
        goto bad;
    }
    if (f->version < 2 || f->version > GGUF_VERSION) {
        fail(&c, errf("%s: unsupported GGUF version %u (2 and 3 are)", c.label, f->version));
        goto bad;
    }
    if (take_u64(&c, &nt, "tensor count") < 0 || take_u64(&c, &nkv, "KV count") < 0)
        goto bad;
    /* a KV takes ≥ 8+1+4+1 bytes, a tensor info ≥ 8+1+4+8+4+8: refuse what can't fit */
    if (nkv > (len - c.pos) / 14 || nt > (len - c.pos) / 33) {
        fail(&c, errf("%s: %llu tensors / %llu KVs cannot fit in %zu bytes", c.label,
                      (unsigned long long)nt, (unsigned long long)nkv, len));
        goto bad;
    }
    for (uint64_t i = 0; i < nkv; i++)
        if (take_kv(&c, f, (int64_t)i) < 0)
            goto bad;
    if (check_alignment(&c, f) < 0)
        goto bad;
    f->tensors = calloc(nt ? nt : 1, sizeof *f->tensors);
    if (!f->tensors) {
        fail(&c, errf("%s: out of memory", c.label));
        goto bad;
    }
    for (uint64_t i = 0; i < nt; i++) {
        f->ntensors = (int64_t)i + 1;
        if (take_tensor_info(&c, &f->tensors[i], (int64_t)i, names) < 0)
            goto bad;
    }
    f->ntensors = (int64_t)nt;
    f->data_offset = align_up(c.pos, f->alignment);
    if (check_offsets(&c, f) < 0)
        goto bad;
    json_decref(names);
    return f;
bad:
    json_decref(names);
    set_err(errp, c.err ? c.err : errf("%s: out of memory", c.label));
    gguf_file_close(f);
    return NULL;
}

gguf_file *gguf_file_open(const char *path, char **errp)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(errp, errf("%s: %s", path, strerror(errno)));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        set_err(errp, errf("%s: %s", path, S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file"));
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    void *p = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (size && p == MAP_FAILED) {
        set_err(errp, errf("%s: mmap: %s", path, strerror(errno)));
        return NULL;
    }
    gguf_file *f = gguf_file_parse(p ? p : "", size, path, errp);
    if (!f) {
        if (p)
            munmap(p, size);
        return NULL;
    }
    f->mapped = p != NULL;
    return f;
}

void gguf_file_close(gguf_file *f)
{
    if (!f)
        return;
    for (int64_t i = 0; i < f->ntensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    json_decref(f->kv);
    json_decref(f->kv_types);
    if (f->mapped)
        munmap((void *)f->base, f->size);
    free(f->label);
    free(f);
}

int64_t gguf_file_find(const gguf_file *f, const char *name)
{
    for (int64_t i = 0; i < f->ntensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return i;
    return -1;
}

/*-*** qsrc adapter ***/

static int src_read(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp)
{
    gguf_file *f = s->impl;
    const gguf_tensor_info *ti = &f->tensors[idx];
    if (off > ti->nbytes || n > ti->nbytes - off) {
        set_err(errp, errf("%s: tensor '%s': read of %zu bytes at %llu past its %llu bytes", s->path,
                           ti->name, n, (unsigned long long)off, (unsigned long long)ti->nbytes));
        return -1;
    }
    memcpy(buf, f->base + f->data_offset + ti->offset + off, n);
    return 0;
}

static const void *src_map(qsrc *s, int idx)
{
    gguf_file *f = s->impl;
    return f->base + f->data_offset + f->tensors[idx].offset;
}

static void src_close(qsrc *s)
{
    gguf_file_close(s->impl);
    s->impl = NULL;
}

static const qsrc_ops gguf_ops = { src_read, src_map, src_close };

/* Plain dtype for ggml's float/int types, DT_INVALID for block types. */
static qdtype plain_dtype(int type)
{
    switch (type) {
    case GGML_T_F32:  return DT_F32;
    case GGML_T_F16:  return DT_F16;
    case GGML_T_BF16: return DT_BF16;
    case 24: return DT_I8;
    case 25: return DT_I16;
    case 26: return DT_I32;
    case 27: return DT_I64;
    case 28: return DT_F64;
    default: return DT_INVALID;
    }
}

/* The qs_tensor of a tensor info (row-major shape, parts and quant attrs). */
static int tensor_from_info(const gguf_tensor_info *ti, qs_tensor *t)
{
    int64_t shape[GGUF_MAX_DIMS];
    int nd = ti->n_dims ? ti->n_dims : 1;
    for (int d = 0; d < nd; d++)
        shape[d] = ti->ne[nd - 1 - d];
    qdtype dt = plain_dtype(ti->type);
    if (qs_tensor_init(t, ti->name, dt != DT_INVALID ? dt : DT_F32, nd, shape) < 0)
        return -1;
    if (dt != DT_INVALID)
        return 0;
    /* block types: one "blocks" part [rows, row_bytes] with rows = shape[0] and the
     * rest one row (qs_tensor_rows/cols; for 2-D this is ggml's ne1 x row size;
     * blocks never straddle ggml rows, so a 3-D row is whole ggml rows) */
    int64_t rows = nd == 1 ? 1 : shape[0];
    int64_t per_row = ti->ne[0] * ti->ne[1] * ti->ne[2] * ti->ne[3] / (rows ? rows : 1);
    int64_t pshape[2] = { rows, (int64_t)ggml_row_size(ti->type, per_row) };
    t->nparts = 0;
    char tname[16];
    snprintf(tname, sizeof tname, "%s", ggml_qtype_traits(ti->type)->name);
    for (char *p = tname; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    t->attrs = json_pack("{s:{s:s,s:s}}", "quant", "scheme", "gguf", "type", tname);
    if (qs_tensor_add_part(t, "blocks", DT_U8, 2, pshape) < 0 || !t->attrs) {
        qs_tensor_clear(t);
        return -1;
    }
    return 0;
}

qsrc *gguf_open(const char *path, char **errp)
{
    gguf_file *f = gguf_file_open(path, errp);
    if (!f)
        return NULL;
    qsrc *s = qsrc_new(path);
    if (!s) {
        gguf_file_close(f);
        set_err(errp, errf("%s: out of memory", path));
        return NULL;
    }
    s->impl = f;
    s->ops = &gguf_ops;
    json_t *meta = s->header.meta;
    if (json_object_set_new(meta, "format", json_string("gguf")) < 0 ||
        json_object_set_new(meta, "gguf_version", json_integer(f->version)) < 0 ||
        json_object_set(meta, "gguf", f->kv) < 0 || json_object_set(meta, "gguf_types", f->kv_types) < 0)
        goto oom;
    for (int64_t i = 0; i < f->ntensors; i++) {
        qs_tensor t;
        if (tensor_from_info(&f->tensors[i], &t) < 0)
            goto oom;
        int rc = qsrc_add_tensor(s, &t);
        qs_tensor_clear(&t);
        if (rc < 0)
            goto oom;
    }
    return s;
oom:
    set_err(errp, errf("%s: out of memory", path));
    qsrc_close(s);
    return NULL;
}

/*-*** Writer ***/

typedef struct {
    char    *key;
    uint8_t *bytes;              /* type + value, serialized */
    size_t   len;
} wkv;

typedef struct {
    char    *name;
    int      type, n_dims;
    int64_t  ne[GGUF_MAX_DIMS];
    uint64_t nbytes, offset;
} wtensor;

struct gguf_writer {
    wkv     *kvs;
    size_t   nkv, kvcap;
    wtensor *ts;
    size_t   nt, tcap;
    uint32_t alignment;
    int      frozen;             /* header written */
    char     err[256];
};

/* Growable byte buffer for serializing values. */
typedef struct { uint8_t *p; size_t n, cap; int oom; } bbuf;

static void bb_put(bbuf *b, const void *src, size_t k)
{
    if (b->oom)
        return;
    if (b->n + k > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + k)
            cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, k);
    b->n += k;
}

static void bb_u32(bbuf *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(bbuf *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_str(bbuf *b, const char *s, size_t len) { bb_u64(b, len); bb_put(b, s, len); }

static int werr(gguf_writer *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int werr(gguf_writer *g, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err, sizeof g->err, fmt, ap);
    va_end(ap);
    return -1;
}

gguf_writer *gguf_writer_new(void)
{
    gguf_writer *g = calloc(1, sizeof *g);
    if (g)
        g->alignment = GGUF_DEFAULT_ALIGN;
    return g;
}

void gguf_writer_free(gguf_writer *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->nkv; i++) {
        free(g->kvs[i].key);
        free(g->kvs[i].bytes);
    }
    for (size_t i = 0; i < g->nt; i++)
        free(g->ts[i].name);
    free(g->kvs);
    free(g->ts);
    free(g);
}

const char *gguf_writer_error(const gguf_writer *g) { return g->err; }

/* Install key → serialized value b (taken over), replacing an existing key. */
static int set_kv(gguf_writer *g, const char *key, bbuf *b)
{
    if (g->frozen) {
        free(b->p);
        return werr(g, "gguf: KV '%s' set after the header was written", key ? key : "");
    }
    if (!key || !*key || b->oom) {
        free(b->p);
        return werr(g, b->oom ? "gguf: out of memory" : "gguf: empty KV key");
    }
    for (size_t i = 0; i < g->nkv; i++)
        if (strcmp(g->kvs[i].key, key) == 0) {
            free(g->kvs[i].bytes);
            g->kvs[i].bytes = b->p;
            g->kvs[i].len = b->n;
            return 0;
        }
    if (g->nkv == g->kvcap) {
        size_t cap = g->kvcap ? g->kvcap * 2 : 32;
        wkv *nk = realloc(g->kvs, cap * sizeof *nk);
        if (!nk) {
            free(b->p);
            return werr(g, "gguf: out of memory");
        }
        g->kvs = nk;
        g->kvcap = cap;
    }
    char *k = strdup(key);
    if (!k) {
        free(b->p);
        return werr(g, "gguf: out of memory");
    }
    g->kvs[g->nkv++] = (wkv){ k, b->p, b->n };
    return 0;
}

static int set_scalar(gguf_writer *g, const char *key, uint32_t type, const void *v)
{
    bbuf b = { 0 };
    bb_u32(&b, type);
    bb_put(&b, v, value_size[type]);
    return set_kv(g, key, &b);
}

int gguf_writer_set_kv_u32(gguf_writer *g, const char *key, uint32_t v) { return set_scalar(g, key, GGUF_T_UINT32, &v); }
int gguf_writer_set_kv_i32(gguf_writer *g, const char *key, int32_t v) { return set_scalar(g, key, GGUF_T_INT32, &v); }
int gguf_writer_set_kv_u64(gguf_writer *g, const char *key, uint64_t v) { return set_scalar(g, key, GGUF_T_UINT64, &v); }
int gguf_writer_set_kv_f32(gguf_writer *g, const char *key, float v) { return set_scalar(g, key, GGUF_T_FLOAT32, &v); }

int gguf_writer_set_kv_bool(gguf_writer *g, const char *key, int v)
{
    uint8_t b = v != 0;
    return set_scalar(g, key, GGUF_T_BOOL, &b);
}

int gguf_writer_set_kv_str(gguf_writer *g, const char *key, const char *val)
{
    bbuf b = { 0 };
    bb_u32(&b, GGUF_T_STRING);
    bb_str(&b, val ? val : "", val ? strlen(val) : 0);
    return set_kv(g, key, &b);
}

int gguf_writer_set_kv_arr_str(gguf_writer *g, const char *key, const char *const *vals, size_t n)
{
    bbuf b = { 0 };
    bb_u32(&b, GGUF_T_ARRAY);
    bb_u32(&b, GGUF_T_STRING);
    bb_u64(&b, n);
    for (size_t i = 0; i < n; i++)
        bb_str(&b, vals[i] ? vals[i] : "", vals[i] ? strlen(vals[i]) : 0);
    return set_kv(g, key, &b);
}

static int set_arr(gguf_writer *g, const char *key, uint32_t et, const void *vals, size_t n)
{
    bbuf b = { 0 };
    bb_u32(&b, GGUF_T_ARRAY);
    bb_u32(&b, et);
    bb_u64(&b, n);
    bb_put(&b, vals, n * value_size[et]);
    return set_kv(g, key, &b);
}

int gguf_writer_set_kv_arr_f32(gguf_writer *g, const char *key, const float *v, size_t n) { return set_arr(g, key, GGUF_T_FLOAT32, v, n); }
int gguf_writer_set_kv_arr_i32(gguf_writer *g, const char *key, const int32_t *v, size_t n) { return set_arr(g, key, GGUF_T_INT32, v, n); }

/* Serialize one JSON value as type t (no tag). -1 if it doesn't fit the type. */
static int put_json_value(bbuf *b, const json_t *v, int t)
{
    if (t == GGUF_T_STRING) {
        if (!json_is_string(v))
            return -1;
        bb_str(b, json_string_value(v), json_string_length(v));
        return 0;
    }
    if (t == GGUF_T_BOOL) {
        if (!json_is_boolean(v))
            return -1;
        uint8_t x = json_is_true(v);
        bb_put(b, &x, 1);
        return 0;
    }
    if (!json_is_number(v))
        return -1;
    double d = json_number_value(v);
    json_int_t i = json_is_integer(v) ? json_integer_value(v) : (json_int_t)d;
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
            float f32; uint64_t u64; int64_t i64; double f64; } u;
    switch (t) {
    case GGUF_T_UINT8:   u.u8 = (uint8_t)i; break;
    case GGUF_T_INT8:    u.i8 = (int8_t)i; break;
    case GGUF_T_UINT16:  u.u16 = (uint16_t)i; break;
    case GGUF_T_INT16:   u.i16 = (int16_t)i; break;
    case GGUF_T_UINT32:  u.u32 = (uint32_t)i; break;
    case GGUF_T_INT32:   u.i32 = (int32_t)i; break;
    case GGUF_T_FLOAT32: u.f32 = (float)d; break;
    case GGUF_T_UINT64:  u.u64 = json_is_integer(v) ? (uint64_t)i : (uint64_t)d; break;
    case GGUF_T_INT64:   u.i64 = i; break;
    case GGUF_T_FLOAT64: u.f64 = d; break;
    default: return -1;
    }
    bb_put(b, &u, value_size[t]);
    return 0;
}

int gguf_writer_set_kv_json(gguf_writer *g, const char *key, const json_t *val, const char *type)
{
    bbuf b = { 0 };
    int t, et = -1;
    if (type && strncmp(type, "arr[", 4) == 0) {
        char inner[8] = { 0 };
        size_t l = strlen(type);
        if (l < 6 || l - 5 >= sizeof inner || type[l - 1] != ']')
            return werr(g, "gguf: KV '%s': bad type '%s'", key, type);
        memcpy(inner, type + 4, l - 5);
        t = GGUF_T_ARRAY;
        et = type_from_name(inner);
    } else {
        t = type ? type_from_name(type) : -1;
    }
    if (t < 0 || (t == GGUF_T_ARRAY && (et < 0 || et == GGUF_T_ARRAY)))
        return werr(g, "gguf: KV '%s': bad type '%s'", key, type ? type : "(null)");
    bb_u32(&b, (uint32_t)t);
    int bad = 0;
    if (t == GGUF_T_ARRAY) {
        if (!json_is_array(val)) {
            bad = 1;
        } else {
            bb_u32(&b, (uint32_t)et);
            bb_u64(&b, json_array_size(val));
            for (size_t i = 0; i < json_array_size(val) && !bad; i++)
                bad = put_json_value(&b, json_array_get(val, i), et) < 0;
        }
    } else {
        bad = put_json_value(&b, val, t) < 0;
    }
    if (bad) {
        free(b.p);
        return werr(g, "gguf: KV '%s': value does not fit type %s", key, type);
    }
    return set_kv(g, key, &b);
}

int gguf_writer_set_alignment(gguf_writer *g, uint32_t align)
{
    if (align < 8 || align > 65536 || (align & (align - 1)))
        return werr(g, "gguf: alignment %u is not a power of two in 8..65536", align);
    if (g->frozen || g->nt)
        return werr(g, "gguf: alignment must be set before tensors are added");
    g->alignment = align;
    return align == GGUF_DEFAULT_ALIGN ? 0 : gguf_writer_set_kv_u32(g, "general.alignment", align);
}

int gguf_writer_add_tensor(gguf_writer *g, const char *name, int type, int ndim,
                           const int64_t *shape, uint64_t nbytes)
{
    if (g->frozen)
        return werr(g, "gguf: tensor '%s' added after the header was written", name ? name : "");
    if (!name || !*name || strlen(name) > GGUF_MAX_NAME)
        return werr(g, "gguf: tensor name '%s' empty or longer than %d bytes", name ? name : "", GGUF_MAX_NAME);
    for (size_t i = 0; i < g->nt; i++)
        if (strcmp(g->ts[i].name, name) == 0)
            return werr(g, "gguf: duplicate tensor '%s'", name);
    if (ndim < 1 || ndim > GGUF_MAX_DIMS)
        return werr(g, "gguf: tensor '%s': %d dims (1..4)", name, ndim);
    const ggml_qtraits *tr = ggml_qtype_traits(type);
    if (!tr)
        return werr(g, "gguf: tensor '%s': unknown ggml type %d", name, type);
    wtensor t = { .type = type, .n_dims = ndim, .ne = { 1, 1, 1, 1 } };
    uint64_t rows = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] <= 0)
            return werr(g, "gguf: tensor '%s': dim %d is %lld", name, d, (long long)shape[d]);
        t.ne[d] = shape[ndim - 1 - d];
        if (d < ndim - 1 && __builtin_mul_overflow(rows, (uint64_t)shape[d], &rows))
            return werr(g, "gguf: tensor '%s': size overflows", name);
    }
    if (t.ne[0] % tr->blck)
        return werr(g, "gguf: tensor '%s': row length %lld is not a multiple of the %s block (%d)",
                    name, (long long)t.ne[0], tr->name, tr->blck);
    uint64_t expect;
    if (__builtin_mul_overflow((uint64_t)ggml_row_size(type, t.ne[0]), rows, &expect))
        return werr(g, "gguf: tensor '%s': size overflows", name);
    if (nbytes != expect)
        return werr(g, "gguf: tensor '%s': %llu bytes given, %s [%lld rows] needs %llu", name,
                    (unsigned long long)nbytes, tr->name, (long long)rows, (unsigned long long)expect);
    t.nbytes = nbytes;
    t.offset = g->nt ? align_up(g->ts[g->nt - 1].offset + g->ts[g->nt - 1].nbytes, g->alignment) : 0;
    if (g->nt == g->tcap) {
        size_t cap = g->tcap ? g->tcap * 2 : 64;
        wtensor *nt = realloc(g->ts, cap * sizeof *nt);
        if (!nt)
            return werr(g, "gguf: out of memory");
        g->ts = nt;
        g->tcap = cap;
    }
    if (!(t.name = strdup(name)))
        return werr(g, "gguf: out of memory");
    g->ts[g->nt] = t;
    return (int)g->nt++;
}

/* Header bytes without the final padding. */
static uint64_t header_unpadded(const gguf_writer *g)
{
    uint64_t n = 4 + 4 + 8 + 8;
    for (size_t i = 0; i < g->nkv; i++)
        n += 8 + strlen(g->kvs[i].key) + g->kvs[i].len;
    for (size_t i = 0; i < g->nt; i++)
        n += 8 + strlen(g->ts[i].name) + 4 + 8 * (uint64_t)g->ts[i].n_dims + 4 + 8;
    return n;
}

uint64_t gguf_writer_header_size(const gguf_writer *g) { return align_up(header_unpadded(g), g->alignment); }

uint64_t gguf_writer_data_offset(const gguf_writer *g, int i)
{
    if (i < 0 || (size_t)i >= g->nt)
        return UINT64_MAX;
    return gguf_writer_header_size(g) + g->ts[i].offset;
}

uint64_t gguf_writer_file_size(const gguf_writer *g)
{
    uint64_t data = g->nt ? align_up(g->ts[g->nt - 1].offset + g->ts[g->nt - 1].nbytes, g->alignment) : 0;
    return gguf_writer_header_size(g) + data;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int gguf_writer_write_header(gguf_writer *g, int fd, char **errp)
{
    bbuf b = { 0 };
    bb_put(&b, GGUF_MAGIC, 4);
    bb_u32(&b, GGUF_VERSION);
    bb_u64(&b, g->nt);
    bb_u64(&b, g->nkv);
    for (size_t i = 0; i < g->nkv; i++) {
        bb_str(&b, g->kvs[i].key, strlen(g->kvs[i].key));
        bb_put(&b, g->kvs[i].bytes, g->kvs[i].len);
    }
    for (size_t i = 0; i < g->nt; i++) {
        const wtensor *t = &g->ts[i];
        bb_str(&b, t->name, strlen(t->name));
        bb_u32(&b, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++)
            bb_u64(&b, (uint64_t)t->ne[d]);
        bb_u32(&b, (uint32_t)t->type);
        bb_u64(&b, t->offset);
    }
    static const uint8_t zeros[64];
    while (!b.oom && b.n % g->alignment)
        bb_put(&b, zeros, g->alignment - b.n % g->alignment < sizeof zeros
                              ? g->alignment - b.n % g->alignment : sizeof zeros);
    if (b.oom) {
        free(b.p);
        set_err(errp, errf("gguf: out of memory"));
        return -1;
    }
    assert(b.n == gguf_writer_header_size(g));
    int rc = write_all(fd, b.p, b.n);
    int e = errno;
    free(b.p);
    if (rc < 0) {
        set_err(errp, errf("gguf: writing the header: %s", strerror(e)));
        return -1;
    }
    g->frozen = 1;
    return 0;
}

int gguf_writer_finish(gguf_writer *g, int fd, char **errp)
{
    if (ftruncate(fd, (off_t)gguf_writer_file_size(g)) < 0) {
        set_err(errp, errf("gguf: extending the file to %llu bytes: %s",
                           (unsigned long long)gguf_writer_file_size(g), strerror(errno)));
        return -1;
    }
    return 0;
}

/*-*** Llama conventions (§9, §10) ***/

int gguf_llama_name(const char *hf, char *out, size_t outlen)
{
    static const struct { const char *hf, *gguf; } top[] = {
        { "model.embed_tokens", "token_embd" }, { "model.norm", "output_norm" }, { "lm_head", "output" },
    };
    static const struct { const char *hf, *gguf; } layer[] = {
        { "input_layernorm", "attn_norm" }, { "self_attn.q_proj", "attn_q" },
        { "self_attn.k_proj", "attn_k" }, { "self_attn.v_proj", "attn_v" },
        { "self_attn.o_proj", "attn_output" }, { "post_attention_layernorm", "ffn_norm" },
        { "mlp.gate_proj", "ffn_gate" }, { "mlp.up_proj", "ffn_up" }, { "mlp.down_proj", "ffn_down" },
    };
    const char *dot = strrchr(hf, '.');
    if (!dot || (strcmp(dot, ".weight") != 0 && strcmp(dot, ".bias") != 0))
        return -1;
    size_t stem = (size_t)(dot - hf);
    int n;
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (strlen(top[i].hf) == stem && strncmp(hf, top[i].hf, stem) == 0) {
            n = snprintf(out, outlen, "%s%s", top[i].gguf, dot);
            return n < 0 || (size_t)n >= outlen ? -1 : 0;
        }
    unsigned blk;
    int used = 0;
    if (sscanf(hf, "model.layers.%u.%n", &blk, &used) != 1 || used == 0 || !(hf[13] >= '0' && hf[13] <= '9'))
        return -1;
    const char *rest = hf + used;
    size_t rlen = (size_t)(dot - rest);
    for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++)
        if (strlen(layer[i].hf) == rlen && strncmp(rest, layer[i].hf, rlen) == 0) {
            n = snprintf(out, outlen, "blk.%u.%s%s", blk, layer[i].gguf, dot);
            return n < 0 || (size_t)n >= outlen ? -1 : 0;
        }
    return -1;
}

int gguf_llama_qk_kind(const char *hf)
{
    const char *q = strstr(hf, ".self_attn.q_proj.");
    const char *k = strstr(hf, ".self_attn.k_proj.");
    return strncmp(hf, "model.layers.", 13) != 0 ? 0 : q ? 1 : k ? 2 : 0;
}

/* dir 1: HF → GGUF, dir 0: GGUF → HF. */
static void permute_rows(const float *src, float *dst, int64_t rows, int64_t cols, int n_head, int fwd)
{
    assert(n_head > 0 && rows % n_head == 0 && (rows / n_head) % 2 == 0);
    const int64_t hd = rows / n_head, half = hd / 2;
    for (int64_t h = 0; h < n_head; h++)
        for (int64_t j = 0; j < half; j++)
            for (int t = 0; t < 2; t++) {
                int64_t gg = h * hd + 2 * j + t, hf = h * hd + t * half + j;
                int64_t to = fwd ? gg : hf, from = fwd ? hf : gg;
                memcpy(dst + to * cols, src + from * cols, (size_t)cols * sizeof *src);
            }
}

void gguf_permute_qk_rows(const float *src, float *dst, int64_t rows, int64_t cols, int n_head)
{
    permute_rows(src, dst, rows, cols, n_head, 1);
}

void gguf_unpermute_qk_rows(const float *src, float *dst, int64_t rows, int64_t cols, int n_head)
{
    permute_rows(src, dst, rows, cols, n_head, 0);
}

int gguf_llama_ftype(int t)
{
    switch (t) {
    case GGML_T_F32: return 0;   case GGML_T_F16: return 1;   case GGML_T_Q4_0: return 2;
    case GGML_T_Q4_1: return 3;  case GGML_T_Q8_0: return 7;  case GGML_T_Q5_0: return 8;
    case GGML_T_Q5_1: return 9;  case GGML_T_Q2_K: return 10; case GGML_T_Q3_K: return 12;
    case GGML_T_Q4_K: return 15; case GGML_T_Q5_K: return 17; case GGML_T_Q6_K: return 18;
    case GGML_T_BF16: return 32;
    default: return -1;
    }
}

/* Positive integer field of config.json, or -1 if absent / not one. */
static int64_t cfg_int(const json_t *cfg, const char *k)
{
    const json_t *v = json_object_get(cfg, k);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (int64_t)json_integer_value(v) : -1;
}

int gguf_llama_metadata(gguf_writer *g, const char *config_json, size_t len, char **errp)
{
    json_error_t je;
    json_t *cfg = json_loadb(config_json, len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(cfg)) {
        set_err(errp, errf("config.json: %s (line %d)", cfg ? "not an object" : je.text, je.line));
        json_decref(cfg);
        return -1;
    }
    int rc = -1;
    int64_t n_layer = cfg_int(cfg, "num_hidden_layers"), n_embd = cfg_int(cfg, "hidden_size");
    int64_t n_head = cfg_int(cfg, "num_attention_heads"), n_ff = cfg_int(cfg, "intermediate_size");
    int64_t n_ctx = cfg_int(cfg, "max_position_embeddings"), n_kv = cfg_int(cfg, "num_key_value_heads");
    int64_t n_vocab = cfg_int(cfg, "vocab_size"), head_dim = cfg_int(cfg, "head_dim");
    const json_t *eps = json_object_get(cfg, "rms_norm_eps"), *theta = json_object_get(cfg, "rope_theta");
    const char *missing = n_layer < 0 ? "num_hidden_layers" : n_embd < 0 ? "hidden_size"
                        : n_head < 0 ? "num_attention_heads" : n_ff < 0 ? "intermediate_size"
                        : n_ctx < 0 ? "max_position_embeddings" : !json_is_number(eps) ? "rms_norm_eps" : NULL;
    if (missing) {
        set_err(errp, errf("config.json: missing or invalid '%s'", missing));
        goto out;
    }
    if (n_kv < 0)
        n_kv = n_head;
    int64_t rot = head_dim > 0 ? head_dim : n_embd / n_head;
    /* same keys, order and types as convert_hf_to_gguf.py (LlamaModel) */
    int bad = gguf_writer_set_kv_str(g, "general.architecture", "llama") |
              gguf_writer_set_kv_str(g, "general.type", "model") |
              gguf_writer_set_kv_u32(g, "llama.block_count", (uint32_t)n_layer) |
              gguf_writer_set_kv_u32(g, "llama.context_length", (uint32_t)n_ctx) |
              gguf_writer_set_kv_u32(g, "llama.embedding_length", (uint32_t)n_embd) |
              gguf_writer_set_kv_u32(g, "llama.feed_forward_length", (uint32_t)n_ff) |
              gguf_writer_set_kv_u32(g, "llama.attention.head_count", (uint32_t)n_head) |
              gguf_writer_set_kv_u32(g, "llama.attention.head_count_kv", (uint32_t)n_kv);
    if (json_is_number(theta))
        bad |= gguf_writer_set_kv_f32(g, "llama.rope.freq_base", (float)json_number_value(theta));
    bad |= gguf_writer_set_kv_f32(g, "llama.attention.layer_norm_rms_epsilon", (float)json_number_value(eps));
    if (head_dim > 0 && head_dim != n_embd / n_head)
        bad |= gguf_writer_set_kv_u32(g, "llama.attention.key_length", (uint32_t)head_dim) |
               gguf_writer_set_kv_u32(g, "llama.attention.value_length", (uint32_t)head_dim);
    const json_t *rs = json_object_get(cfg, "rope_scaling");
    const char *rtype = json_string_value(json_object_get(rs, "rope_type"));
    if (!rtype)
        rtype = json_string_value(json_object_get(rs, "type"));
    if (rtype && strcmp(rtype, "linear") == 0 && json_is_number(json_object_get(rs, "factor")))
        bad |= gguf_writer_set_kv_str(g, "llama.rope.scaling.type", "linear") |
               gguf_writer_set_kv_f32(g, "llama.rope.scaling.factor",
                                      (float)json_number_value(json_object_get(rs, "factor")));
    if (n_vocab > 0)
        bad |= gguf_writer_set_kv_u32(g, "llama.vocab_size", (uint32_t)n_vocab);
    bad |= gguf_writer_set_kv_u32(g, "llama.rope.dimension_count", (uint32_t)rot);
    if (bad) {
        set_err(errp, errf("%s", gguf_writer_error(g)));
        goto out;
    }
    rc = 0;
out:
    json_decref(cfg);
    return rc;
}

int gguf_set_tokenizer(gguf_writer *g, const struct tokenizer *tk, char **errp)
{
    if (!tokenizer_vocab_size || !tokenizer_piece || !tokenizer_score || !tokenizer_type ||
        !tokenizer_model_kind || !tokenizer_merges || !tokenizer_bos || !tokenizer_eos) {
        set_err(errp, errf("gguf: the tokenizer module is not linked in"));
        return -1;
    }
    size_t n = tokenizer_vocab_size(tk);
    const char **pieces = malloc((n ? n : 1) * sizeof *pieces);
    float *scores = malloc((n ? n : 1) * sizeof *scores);
    int32_t *types = malloc((n ? n : 1) * sizeof *types);
    int rc = -1, unk = -1;
    if (!pieces || !scores || !types) {
        set_err(errp, errf("gguf: out of memory"));
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        pieces[i] = tokenizer_piece(tk, (uint32_t)i);
        if (!pieces[i]) {
            set_err(errp, errf("gguf: token id %zu is unassigned (GGUF needs a dense vocab)", i));
            goto out;
        }
        scores[i] = tokenizer_score(tk, (uint32_t)i);
        types[i] = tokenizer_type(tk, (uint32_t)i);
        if (types[i] == TOK_TYPE_UNKNOWN && unk < 0)
            unk = (int)i;
    }
    /* tokenizer.h has no unk accessor: an added "<unk>" (type control) is the
     * SentencePiece convention convert_hf_to_gguf.py reads from the model */
    for (size_t i = 0; unk < 0 && i < n; i++)
        if (strcmp(pieces[i], "<unk>") == 0)
            unk = (int)i;
    const char *kind = tokenizer_model_kind(tk);
    int bad = gguf_writer_set_kv_str(g, "tokenizer.ggml.model", kind) |
              gguf_writer_set_kv_str(g, "tokenizer.ggml.pre", "default") |
              gguf_writer_set_kv_arr_str(g, "tokenizer.ggml.tokens", pieces, n) |
              gguf_writer_set_kv_arr_f32(g, "tokenizer.ggml.scores", scores, n) |
              gguf_writer_set_kv_arr_i32(g, "tokenizer.ggml.token_type", types, n);
    if (strcmp(kind, "gpt2") == 0) {
        const char **merges;
        size_t nm = tokenizer_merges(tk, &merges);
        bad |= gguf_writer_set_kv_arr_str(g, "tokenizer.ggml.merges", merges, nm);
    }
    if (tokenizer_bos(tk) >= 0)
        bad |= gguf_writer_set_kv_u32(g, "tokenizer.ggml.bos_token_id", (uint32_t)tokenizer_bos(tk));
    if (tokenizer_eos(tk) >= 0)
        bad |= gguf_writer_set_kv_u32(g, "tokenizer.ggml.eos_token_id", (uint32_t)tokenizer_eos(tk));
    if (unk >= 0)
        bad |= gguf_writer_set_kv_u32(g, "tokenizer.ggml.unknown_token_id", (uint32_t)unk);
    bad |= gguf_writer_set_kv_bool(g, "tokenizer.ggml.add_bos_token", strcmp(kind, "llama") == 0) |
           gguf_writer_set_kv_bool(g, "tokenizer.ggml.add_eos_token", 0);
    if (bad) {
        set_err(errp, errf("%s", gguf_writer_error(g)));
        goto out;
    }
    rc = 0;
out:
    free(pieces);
    free(scores);
    free(types);
    return rc;
}
