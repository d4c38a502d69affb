/* stats — loading a calibration stats file, stream or safetensors (see
 * stats.h). Everything is read into memory as f32 (n_tokens also as i64);
 * aliases are kept as a name -> target map and resolved on lookup. */
#include "stats.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "dequant.h"
#include "dtype.h"
#include "qstream.h"
#include "source.h"

typedef struct {
    char    *name;
    float   *data;              /* NULL for an alias */
    size_t   n;
    int64_t  i64;               /* first value of an integer tensor (n_tokens) */
    char    *alias;             /* target name, or NULL */
} entry;

struct stats {
    int    n, cap;
    entry *e;
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
    stats *st = calloc(1, sizeof *st);
    const qs_tensor *t;
    int rc = 0;
    while (st && (rc = qs_reader_next(r, &t)) == 1) {
        entry *e = entry_add(st, t->name);
        if (!e)
            goto oom;
        const char *al = t->attrs ? json_string_value(json_object_get(t->attrs, "alias")) : NULL;
        if (al) {
            if (!(e->alias = strdup(al)))
                goto oom;
            continue;
        }
        size_t len;
        void *data = qs_reader_read_all(r, &len);
        if (!data)
            break;
        char *err = NULL;
        int ok = entry_fill(e, t, data, len, &err);
        free(data);
        if (ok < 0) {
            fail(errp, "%s: %s", path, err ? err : "bad tensor");
            free(err);
            stats_close(st);
            qs_reader_close(r);
            return NULL;
        }
    }
    if (!st)
        goto oom;
    if (rc != 0) {
        const char *e = qs_reader_error(r);
        fail(errp, "%s: %s", path, e && *e ? e : "read error");
        stats_close(st);
        qs_reader_close(r);
        return NULL;
    }
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
    for (int i = 0; st && i < s->ntensors && !err; i++) {
        const qs_tensor *t = &s->tensors[i];
        entry *e = entry_add(st, t->name);
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
    return is ? open_stream(path, errp) : open_source(path, errp);
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

const float *stats_get(const stats *st, const char *weight, const char *what, size_t *n)
{
    const entry *e = resolve(st, weight, what);
    if (!e)
        return NULL;
    if (n)
        *n = e->n;
    return e->data;
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
    free(st);
}
