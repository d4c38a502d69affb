/* stats — loading a calibration stats file, stream or safetensors (see
 * stats.h). Tensors under LAZY_MIN_BYTES (the per-channel vectors, n_tokens)
 * are read into memory as f32 at open (n_tokens also as i64); larger ones
 * (the Hessians) are only indexed then, and read again on first use: from
 * their recorded offset in a stream file, or through the safetensors reader.
 * A pipe cannot be read again, so from one everything is held. Aliases are
 * kept as a name -> target map and resolved on lookup. */
#include "stats.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <jansson.h>

#include "dequant.h"
#include "dtype.h"
#include "qstream.h"
#include "source.h"

/* Tensors of at least this many bytes are read on first use, not at open. */
#define LAZY_MIN_BYTES (256u << 10)

typedef struct {
    char    *name;
    float   *data;              /* NULL for an alias, or a lazy entry not loaded now */
    size_t   n;
    int64_t  i64;               /* first value of an integer tensor (n_tokens) */
    char    *alias;             /* target name, or NULL */
    int      lazy;              /* read on demand, from offset/index */
    uint64_t offset;            /* stream: the tensor's header frame */
    int64_t  index;             /* stream: position in the stream; safetensors: source index */
} entry;

struct stats {
    int        n, cap;
    entry     *e;
    char      *path;
    qs_reader *r;               /* lazy entries of a stats stream file */
    qsrc      *src;             /* lazy entries of a safetensors copy */
    char       err[700];
};

__attribute__((format(printf, 2, 3)))
static void *fail(char **errp, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(errp, fmt, ap) < 0)
        *errp = NULL;
    va_end(ap);
    return NULL;
}

static entry *entry_add(stats *st, const char *name)
{
    if (st->n == st->cap) {
        int cap = st->cap ? 2 * st->cap : 64;
        entry *e = realloc(st->e, (size_t)cap * sizeof *e);
        if (!e)
            return NULL;
        st->e = e;
        st->cap = cap;
    }
    entry *e = &st->e[st->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name)))
        return NULL;
    st->n++;
    return e;
}

static int is_lazy(int seekable, const qs_tensor *t)
{
    return seekable && qs_tensor_nbytes(t) >= LAZY_MIN_BYTES;
}

/* What a lazy entry will hold, checked now so a bad header fails at open. */
static int entry_index(entry *e, const qs_tensor *t, char **errp)
{
    int64_t n = qs_numel(t->ndim, t->shape);
    if (n < 0)
        return fail(errp, "'%s': bad shape", t->name), -1;
    if (!tensor_is_quantized(t) && t->nparts == 1 && qs_tensor_nbytes(t) != (uint64_t)n * dtype_size(t->dtype))
        return fail(errp, "'%s': %llu bytes for %lld elements", t->name, (unsigned long long)qs_tensor_nbytes(t),
                    (long long)n), -1;
    e->lazy = 1;
    e->n = (size_t)n;
    return 0;
}

/* Decode one tensor's bytes into e (f32, and the first value as i64 for integers). */
static int entry_fill(entry *e, const qs_tensor *t, const void *data, size_t len, char **errp)
{
    int64_t n = qs_numel(t->ndim, t->shape);
    if (n < 0)
        return fail(errp, "'%s': bad shape", t->name), -1;
    if (t->dtype == DT_I64 && t->nparts == 1 && len == (size_t)n * 8 && n > 0)
        memcpy(&e->i64, data, 8);
    if (tensor_is_quantized(t) || t->nparts != 1) {
        if (!(e->data = tensor_to_f32(t, data, len, errp)))
            return -1;
    } else {
        if (len != (size_t)n * dtype_size(t->dtype))
            return fail(errp, "'%s': %zu bytes for %lld elements", t->name, len, (long long)n), -1;
        if (!(e->data = malloc((size_t)(n ? n : 1) * sizeof(float))))
            return fail(errp, "out of memory"), -1;
        dtype_to_f32(t->dtype, data, e->data, (size_t)n);
    }
    if (t->dtype != DT_I64 && n > 0) {     /* a token count stored as float: only a sane one */
        float v = e->data[0];
        e->i64 = v >= 0 && v < 9.2e18f ? (int64_t)v : -1;
    }
    e->n = (size_t)n;
    return 0;
}

static stats *open_stream(const char *path, char **errp)
{
    qs_reader *r = qs_reader_open_path(path, errp);
    if (!r)
        return NULL;
    const qs_header *h = qs_reader_header(r);
    const char *kind = json_string_value(json_object_get(h->meta, "kind"));
    if (!kind || strcmp(kind, "stats")) {
        fail(errp, "%s: not a stats stream (kind '%s')", path, kind ? kind : "none");
        qs_reader_close(r);     /* after the message: kind points into the reader's header */
        return NULL;
    }
    struct stat sb;
    const int seekable = strcmp(path, "-") && stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
    stats *st = calloc(1, sizeof *st);
    const qs_tensor *t;
    int rc = 0, lazy = 0;
    char *err = NULL;
    for (int64_t index = 0; st && !err && (rc = qs_reader_next(r, &t)) == 1; index++) {
        entry *e = entry_add(st, t->name);
        if (!e)
            goto oom;
        const char *al = t->attrs ? json_string_value(json_object_get(t->attrs, "alias")) : NULL;
        if (al) {
            if (!(e->alias = strdup(al)))
                goto oom;
            continue;
        }
        if (is_lazy(seekable, t)) {     /* qs_reader_next verifies its bytes on the way past */
            e->offset = qs_reader_tensor_offset(r);
            e->index = index;
            lazy |= entry_index(e, t, &err) == 0;
            continue;
        }
        size_t len;
        void *data = qs_reader_read_all(r, &len);
        if (!data)
            break;
        entry_fill(e, t, data, len, &err);
        free(data);
    }
    if (!st)
        goto oom;
    if (err || rc != 0) {
        const char *re = qs_reader_error(r);
        fail(errp, "%s: %s", path, err ? err : re && *re ? re : "read error");
        free(err);
        stats_close(st);
        qs_reader_close(r);
        return NULL;
    }
    if (lazy)
        st->r = r;              /* kept open for the lazy entries */
    else
        qs_reader_close(r);
    return st;
oom:
    stats_close(st);
    qs_reader_close(r);
    return fail(errp, "%s: out of memory", path);
}

static stats *open_source(const char *path, char **errp)
{
    qsrc *s = qsrc_open(path, errp);
    if (!s)
        return NULL;
    stats *st = calloc(1, sizeof *st);
    char *err = NULL;
    int lazy = 0;
    for (int i = 0; st && i < s->ntensors && !err; i++) {
        const qs_tensor *t = &s->tensors[i];
        entry *e = entry_add(st, t->name);
        if (e && is_lazy(!s->sequential, t)) {
            e->index = i;
            lazy |= entry_index(e, t, &err) == 0;
            continue;
        }
        size_t len = (size_t)qs_tensor_nbytes(t);
        void *buf = malloc(len ? len : 1);
        if (!e || !buf)
            err = strdup("out of memory");
        else if (qsrc_read(s, i, 0, buf, len, &err) == 0)
            entry_fill(e, t, buf, len, &err);
        free(buf);
    }
    /* safetensors copies keep aliases as __metadata__ "alias:<name>" = target */
    json_t *md = json_object_get(s->header.meta, "safetensors_metadata");
    const char *k;
    json_t *v;
    json_object_foreach(md, k, v) {
        if (err || !st || strncmp(k, "alias:", 6) || !json_is_string(v))
            continue;
        entry *e = entry_add(st, k + 6);
        if (!e || !(e->alias = strdup(json_string_value(v))))
            err = strdup("out of memory");
    }
    int nt = s->ntensors;
    if (st && !err && lazy)
        st->src = s;            /* kept open for the lazy entries */
    else
        qsrc_close(s);
    if (!st || err) {
        stats_close(st);
        fail(errp, "%s: %s", path, err ? err : "out of memory");
        free(err);
        return NULL;
    }
    int any = 0;
    for (int i = 0; i < st->n; i++)
        any |= strstr(st->e[i].name, ".hessian") || strstr(st->e[i].name, ".x2_mean");
    if (!any) {
        stats_close(st);
        return fail(errp, "%s: not a stats file (%d tensors, none named W.hessian or W.x2_mean)", path, nt);
    }
    return st;
}

stats *stats_open(const char *path, char **errp)
{
    int is = strcmp(path, "-") ? qs_path_is_stream(path) : 1;
    if (is < 0)
        return fail(errp, "%s: cannot read", path);
    stats *st = is ? open_stream(path, errp) : open_source(path, errp);
    if (st && !(st->path = strdup(path))) {
        stats_close(st);
        return fail(errp, "%s: out of memory", path);
    }
    return st;
}

static const entry *entry_find(const stats *st, const char *name)
{
    for (int i = 0; i < st->n; i++)
        if (!strcmp(st->e[i].name, name))
            return &st->e[i];
    return NULL;
}

/* W.what, following aliases: a tensor alias names the stored W'.what; an
 * alias of the weight itself (W -> W') is followed too. */
static const entry *resolve(const stats *st, const char *weight, const char *what)
{
    char name[1024];
    snprintf(name, sizeof name, "%s.%s", weight, what);
    for (int hop = 0; hop < 8; hop++) {
        const entry *e = entry_find(st, name);
        if (e && !e->alias)
            return e;
        if (e) {
            snprintf(name, sizeof name, "%s", e->alias);
            continue;
        }
        const entry *w = entry_find(st, weight);
        if (!w || !w->alias || hop)
            return NULL;
        snprintf(name, sizeof name, "%s.%s", w->alias, what);
    }
    return NULL;
}

/* Read a lazy entry's tensor again: from its recorded offset in the stream
 * (every frame re-verified), or through the safetensors reader. */
static int load_lazy(stats *st, entry *e)
{
    char *err = NULL;
    const size_t n = e->n;
    if (st->r) {
        const qs_tensor *t;
        int rc = qs_reader_seek(st->r, e->offset, (uint64_t)e->index);
        if (rc == 0 && (rc = qs_reader_next(st->r, &t)) == 1 && strcmp(t->name, e->name))
            err = strdup("changed since it was opened");
        else if (rc == 1) {
            size_t len;
            void *data = qs_reader_read_all(st->r, &len);
            if (data)
                entry_fill(e, t, data, len, &err);
            free(data);
            if (!data) rc = -1;
        }
        if (rc != 1 && !err) {
            const char *re = qs_reader_error(st->r);
            err = strdup(re && *re ? re : "truncated");
        }
    } else if (st->src) {
        const qs_tensor *t = &st->src->tensors[e->index];
        size_t len = (size_t)qs_tensor_nbytes(t);
        void *buf = malloc(len ? len : 1);
        if (!buf)
            err = strdup("out of memory");
        else if (qsrc_read(st->src, (int)e->index, 0, buf, len, &err) == 0)
            entry_fill(e, t, buf, len, &err);
        free(buf);
    }
    if (!err && e->data && e->n != n)
        err = strdup("changed since it was opened");
    if (err || !e->data) {
        snprintf(st->err, sizeof st->err, "%s: '%s': %s", st->path ? st->path : "stats", e->name,
                 err ? err : "cannot read");
        free(err);
        free(e->data);
        e->data = NULL;
        e->n = n;
        return -1;
    }
    return 0;
}

const float *stats_get(stats *st, const char *weight, const char *what, size_t *n)
{
    entry *e = (entry *)resolve(st, weight, what);
    if (!e)
        return NULL;
    if (e->lazy && !e->data && load_lazy(st, e) < 0)
        return NULL;
    if (n)
        *n = e->n;
    return e->data;
}

int stats_has(const stats *st, const char *weight, const char *what, size_t *n)
{
    const entry *e = resolve(st, weight, what);
    if (e && n)
        *n = e->n;
    return e != NULL;
}

static const char *const kinds[] = { "hessian", "x2_mean", "xabs_mean", "absmax" };

void stats_evict(stats *st, const char *keep)
{
    const entry *k[4] = { NULL, NULL, NULL, NULL };
    for (int i = 0; keep && i < 4; i++)
        k[i] = resolve(st, keep, kinds[i]);
    for (int i = 0; i < st->n; i++) {
        entry *e = &st->e[i];
        if (e->lazy && e->data && e != k[0] && e != k[1] && e != k[2] && e != k[3]) {
            free(e->data);
            e->data = NULL;
        }
    }
}

size_t stats_resident(const stats *st)
{
    size_t b = 0;
    for (int i = 0; i < st->n; i++)
        if (st->e[i].data)
            b += st->e[i].n * sizeof(float);
    return b;
}

const char *stats_error(const stats *st)
{
    return st->err[0] ? st->err : NULL;
}

int64_t stats_tokens(const stats *st, const char *weight)
{
    const entry *e = resolve(st, weight, "n_tokens");
    return e && e->n ? e->i64 : -1;
}

void stats_close(stats *st)
{
    if (!st)
        return;
    for (int i = 0; i < st->n; i++) {
        free(st->e[i].name);
        free(st->e[i].data);
        free(st->e[i].alias);
    }
    free(st->e);
    free(st->path);
    qs_reader_close(st->r);
    qsrc_close(st->src);
    free(st);
}
