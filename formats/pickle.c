/* pickle — a safe, minimal unpickler for torch.save's data.pkl.
 *
 * Owns: the pickle stack machine restricted to the opcodes and allow-listed
 * globals a state dict needs (see pickle.h). Opcode meanings follow CPython
 * Lib/pickletools.py; the allow-list and the REDUCE/BUILD/BINPERSID rules
 * follow pytorch torch/_weights_only_unpickler.py and torch/_utils.py as
 * digested in /work/shared/specs/pytorch_checkpoint.md §3-§4.
 *
 * Security model: a GLOBAL yields an inert marker (pk_global_id), never code;
 * REDUCE is interpreted only for those markers with their documented
 * argument shapes; everything else is refused with a message naming the
 * opcode / global and the byte offset. Every length is checked against the
 * remaining input and the PK_MAX_* limits before anything is allocated.
 */
#include "pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pk_doc {
    const uint8_t *start, *p, *end;
    pk_obj  **objs;  size_t nobjs, capobjs;     /* every object, for freeing */
    pk_obj  **stack; size_t sp, capstack;
    size_t    marks[PK_MAX_MARKS]; int nmarks;  /* stack heights at MARK */
    pk_obj  **memo;  size_t capmemo, nmemo;     /* nmemo = len(memo) for MEMOIZE */
    pk_obj   *root;
    size_t    op_at;                             /* offset of the current opcode */
    char      err[256];
};

/*-*** Errors ***/

static int pk_fail(pk_doc *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int pk_fail(pk_doc *d, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(d->err, sizeof d->err, "%s at byte %zu", msg, d->op_at);
    return -1;
}

/* Copy s into out (size cap) replacing non-printable bytes, for messages. */
static void pk_printable(char *out, size_t cap, const char *s, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < cap; i++)
        out[j++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[j] = '\0';
}

/*-*** Objects ***/

static pk_obj *pk_new(pk_doc *d, pk_kind kind)
{
    if (d->nobjs >= PK_MAX_OBJECTS) {
        pk_fail(d, "more than %d objects", PK_MAX_OBJECTS);
        return NULL;
    }
    if (d->nobjs == d->capobjs) {
        size_t cap = d->capobjs ? d->capobjs * 2 : 256;
        pk_obj **o = realloc(d->objs, cap * sizeof *o);
        if (!o) { pk_fail(d, "out of memory"); return NULL; }
        d->objs = o;
        d->capobjs = cap;
    }
    pk_obj *o = calloc(1, sizeof *o);
    if (!o) { pk_fail(d, "out of memory"); return NULL; }
    o->kind = kind;
    d->objs[d->nobjs++] = o;
    return o;
}

static void pk_obj_free(pk_obj *o)
{
    switch (o->kind) {
    case PK_STR: case PK_BYTES: free(o->u.str.s); break;
    case PK_TUPLE: case PK_LIST: free(o->u.seq.items); break;
    case PK_DICT: free(o->u.dict.keys); free(o->u.dict.vals); free(o->u.dict.slots); break;
    case PK_STORAGE: free(o->u.storage.key); break;
    case PK_TENSOR: free(o->u.tensor.shape); break;
    default: break;
    }
    free(o);
}

/* Raise container c's depth to hold child; fails past PK_MAX_DEPTH. */
static int pk_nest(pk_doc *d, pk_obj *c, const pk_obj *child)
{
    if (child->depth + 1 > c->depth)
        c->depth = child->depth + 1;
    if (c->depth > PK_MAX_DEPTH)
        return pk_fail(d, "nesting deeper than %d", PK_MAX_DEPTH);
    return 0;
}

static int pk_seq_push(pk_doc *d, pk_obj *c, pk_obj *item)
{
    if (pk_nest(d, c, item) < 0)
        return -1;
    if (c->u.seq.n == c->u.seq.cap) {
        size_t cap = c->u.seq.cap ? c->u.seq.cap * 2 : 4;
        pk_obj **it = realloc(c->u.seq.items, cap * sizeof *it);
        if (!it) return pk_fail(d, "out of memory");
        c->u.seq.items = it;
        c->u.seq.cap = cap;
    }
    c->u.seq.items[c->u.seq.n++] = item;
    return 0;
}

static int pk_key_equal(const pk_obj *a, const pk_obj *b)
{
    if (a->kind != b->kind)
        return 0;
    if (a->kind == PK_STR || a->kind == PK_BYTES)
        return a->u.str.hash == b->u.str.hash && a->u.str.len == b->u.str.len && memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0;
    if (a->kind == PK_INT || a->kind == PK_BOOL)
        return a->u.i == b->u.i;
    if (a->kind == PK_NONE)
        return 1;
    return a == b;
}

static uint32_t pk_key_hash(const pk_obj *k)
{
    if (k->kind == PK_STR || k->kind == PK_BYTES)
        return k->u.str.hash;
    if (k->kind == PK_INT || k->kind == PK_BOOL)
        return (uint32_t)(((uint64_t)k->u.i * 0x9E3779B97F4A7C15ull) >> 32);
    return 0;                                   /* rare key kinds: they just collide */
}

/* Rebuild the slot index of dict with nslots (a power of two > 2n). */
static int pk_dict_reindex(pk_doc *d, pk_obj *dict, size_t nslots)
{
    uint32_t *sl = calloc(nslots, sizeof *sl);
    if (!sl)
        return pk_fail(d, "out of memory");
    for (size_t i = 0; i < dict->u.dict.n; i++) {
        size_t j = pk_key_hash(dict->u.dict.keys[i]) & (nslots - 1);
        while (sl[j])
            j = (j + 1) & (nslots - 1);
        sl[j] = (uint32_t)(i + 1);
    }
    free(dict->u.dict.slots);
    dict->u.dict.slots = sl;
    dict->u.dict.nslots = nslots;
    return 0;
}

/* Grow the entry arrays (and the index) to hold one more entry. */
static int pk_dict_grow(pk_doc *d, pk_obj *dict)
{
    if (dict->u.dict.n == dict->u.dict.cap) {
        size_t cap = dict->u.dict.cap ? dict->u.dict.cap * 2 : 8;
        pk_obj **nk = realloc(dict->u.dict.keys, cap * sizeof *nk);
        if (!nk) return pk_fail(d, "out of memory");
        dict->u.dict.keys = nk;
        pk_obj **nv = realloc(dict->u.dict.vals, cap * sizeof *nv);
        if (!nv) return pk_fail(d, "out of memory");
        dict->u.dict.vals = nv;
        dict->u.dict.cap = cap;
    }
    if ((dict->u.dict.n + 1) * 2 > dict->u.dict.nslots)
        return pk_dict_reindex(d, dict, dict->u.dict.nslots ? dict->u.dict.nslots * 2 : 16);
    return 0;
}

/* dict[k] = v, keeping first-insertion order like Python dicts. */
static int pk_dict_set(pk_doc *d, pk_obj *dict, pk_obj *k, pk_obj *v)
{
    if (dict->kind != PK_DICT)
        return pk_fail(d, "SETITEM on a non-dict");
    switch (k->kind) {
    case PK_STR: case PK_BYTES: case PK_INT: case PK_BOOL: case PK_NONE: case PK_FLOAT: case PK_TUPLE:
        break;
    default:
        return pk_fail(d, "unhashable dict key");
    }
    if (pk_nest(d, dict, v) < 0 || pk_nest(d, dict, k) < 0 || pk_dict_grow(d, dict) < 0)
        return -1;
    size_t mask = dict->u.dict.nslots - 1, j = pk_key_hash(k) & mask;
    for (; dict->u.dict.slots[j]; j = (j + 1) & mask) {
        size_t i = dict->u.dict.slots[j] - 1;
        if (pk_key_equal(dict->u.dict.keys[i], k)) {
            dict->u.dict.vals[i] = v;           /* existing key: new value, old position */
            return 0;
        }
    }
    dict->u.dict.slots[j] = (uint32_t)(dict->u.dict.n + 1);
    dict->u.dict.keys[dict->u.dict.n] = k;
    dict->u.dict.vals[dict->u.dict.n] = v;
    dict->u.dict.n++;
    return 0;
}

/*-*** Stack, marks, memo ***/

static int pk_push(pk_doc *d, pk_obj *o)
{
    if (!o)
        return -1;
    if (d->sp >= PK_MAX_STACK)
        return pk_fail(d, "stack deeper than %d", PK_MAX_STACK);
    if (d->sp == d->capstack) {
        size_t cap = d->capstack ? d->capstack * 2 : 64;
        pk_obj **s = realloc(d->stack, cap * sizeof *s);
        if (!s) return pk_fail(d, "out of memory");
        d->stack = s;
        d->capstack = cap;
    }
    d->stack[d->sp++] = o;
    return 0;
}

/* Lowest stack index usable above the innermost mark (Python's "fence"). */
static size_t pk_fence(const pk_doc *d)
{
    return d->nmarks ? d->marks[d->nmarks - 1] : 0;
}

static pk_obj *pk_pop(pk_doc *d)
{
    if (d->sp <= pk_fence(d)) {
        pk_fail(d, "stack underflow");
        return NULL;
    }
    return d->stack[--d->sp];
}

static pk_obj *pk_top(pk_doc *d)
{
    if (d->sp <= pk_fence(d)) {
        pk_fail(d, "stack underflow");
        return NULL;
    }
    return d->stack[d->sp - 1];
}

/* Pop the innermost mark: items are stack[*from .. sp). */
static int pk_pop_mark(pk_doc *d, size_t *from)
{
    if (d->nmarks == 0)
        return pk_fail(d, "no MARK on the stack");
    *from = d->marks[--d->nmarks];
    return 0;
}

static int pk_memo_put(pk_doc *d, uint64_t idx)
{
    pk_obj *top = pk_top(d);
    if (!top)
        return -1;
    /* The memo is a dense array. CPython numbers memo entries densely, one
     * per pickled object; sparse indices are accepted while they stay within
     * 64 Ki of twice the objects made so far, so the array stays
     * proportional to the real work instead of to a hostile index. */
    if (idx >= PK_MAX_MEMO || idx > 2 * (uint64_t)d->nobjs + 65536)
        return pk_fail(d, "memo index %llu too large", (unsigned long long)idx);
    if (idx >= d->capmemo) {
        size_t cap = d->capmemo ? d->capmemo : 64;
        while (cap <= idx)
            cap *= 2;
        pk_obj **m = realloc(d->memo, cap * sizeof *m);
        if (!m) return pk_fail(d, "out of memory");
        memset(m + d->capmemo, 0, (cap - d->capmemo) * sizeof *m);
        d->memo = m;
        d->capmemo = cap;
    }
    if (!d->memo[idx])
        d->nmemo++;
    d->memo[idx] = top;
    return 0;
}

static int pk_memo_get(pk_doc *d, uint64_t idx)
{
    if (idx >= d->capmemo || !d->memo[idx])
        return pk_fail(d, "memo key %llu not found", (unsigned long long)idx);
    return pk_push(d, d->memo[idx]);
}

/*-*** Input ***/

static const uint8_t *pk_take(pk_doc *d, uint64_t n)
{
    if (n > (uint64_t)(d->end - d->p)) {
        pk_fail(d, "truncated pickle");
        return NULL;
    }
    const uint8_t *q = d->p;
    d->p += n;
    return q;
}

static int pk_read_uint(pk_doc *d, int nbytes, uint64_t *v)
{
    const uint8_t *q = pk_take(d, (uint64_t)nbytes);
    if (!q)
        return -1;
    *v = 0;
    for (int i = nbytes - 1; i >= 0; i--)
        *v = (*v << 8) | q[i];
    return 0;
}

/* A string / bytes object of n bytes taken from the input. */
static int pk_push_str(pk_doc *d, pk_kind kind, uint64_t n)
{
    if (n > PK_MAX_STR)
        return pk_fail(d, "string of %llu bytes exceeds the %d limit", (unsigned long long)n, PK_MAX_STR);
    const uint8_t *q = pk_take(d, n);
    if (!q)
        return -1;
    pk_obj *o = pk_new(d, kind);
    if (!o)
        return -1;
    o->u.str.s = malloc((size_t)n + 1);
    if (!o->u.str.s)
        return pk_fail(d, "out of memory");
    memcpy(o->u.str.s, q, (size_t)n);
    o->u.str.s[n] = '\0';
    o->u.str.len = (size_t)n;
    uint32_t h = 2166136261u;                   /* FNV-1a, to make duplicate-key checks cheap */
    for (uint64_t i = 0; i < n; i++)
        h = (h ^ q[i]) * 16777619u;
    o->u.str.hash = h;
    return pk_push(d, o);
}

static int pk_push_int(pk_doc *d, pk_kind kind, int64_t v)
{
    pk_obj *o = pk_new(d, kind);
    if (!o)
        return -1;
    o->u.i = v;
    return pk_push(d, o);
}

/* LONG1 / LONG4 payload: little-endian two's complement, must fit int64. */
static int pk_push_long(pk_doc *d, uint64_t n)
{
    if (n > 8)
        return pk_fail(d, "integer of %llu bytes does not fit in 64 bits", (unsigned long long)n);
    const uint8_t *q = pk_take(d, n);
    if (!q)
        return -1;
    uint64_t u = 0;
    for (uint64_t i = 0; i < n; i++)
        u |= (uint64_t)q[i] << (8 * i);
    if (n > 0 && n < 8 && (q[n - 1] & 0x80))
        u |= ~(uint64_t)0 << (8 * n);           /* sign-extend */
    int64_t v;
    memcpy(&v, &u, sizeof v);
    return pk_push_int(d, PK_INT, v);
}

/*-*** Globals: the allow-list ***/

static const struct {
    const char *module, *name;
    pk_global_id id;
    qdtype dtype;
} pk_allow[] = {
    { "collections",  "OrderedDict",               PKG_ORDERED_DICT,            DT_INVALID },
    { "torch._utils", "_rebuild_tensor",           PKG_REBUILD_TENSOR,          DT_INVALID },
    { "torch._utils", "_rebuild_tensor_v2",        PKG_REBUILD_TENSOR_V2,       DT_INVALID },
    { "torch._utils", "_rebuild_tensor_v3",        PKG_REBUILD_TENSOR_V3,       DT_INVALID },
    { "torch._utils", "_rebuild_parameter",        PKG_REBUILD_PARAMETER,       DT_INVALID },
    { "torch._utils", "_rebuild_parameter_with_state", PKG_REBUILD_PARAMETER_STATE, DT_INVALID },
    { "torch", "Size",            PKG_SIZE,         DT_INVALID },
    /* legacy typed storages (torch/storage.py _dtype_to_storage_type_map) */
    { "torch", "DoubleStorage",   PKG_STORAGE_TYPE, DT_F64 },
    { "torch", "FloatStorage",    PKG_STORAGE_TYPE, DT_F32 },
    { "torch", "HalfStorage",     PKG_STORAGE_TYPE, DT_F16 },
    { "torch", "BFloat16Storage", PKG_STORAGE_TYPE, DT_BF16 },
    { "torch", "LongStorage",     PKG_STORAGE_TYPE, DT_I64 },
    { "torch", "IntStorage",      PKG_STORAGE_TYPE, DT_I32 },
    { "torch", "ShortStorage",    PKG_STORAGE_TYPE, DT_I16 },
    { "torch", "CharStorage",     PKG_STORAGE_TYPE, DT_I8 },
    { "torch", "ByteStorage",     PKG_STORAGE_TYPE, DT_U8 },
    { "torch", "BoolStorage",     PKG_STORAGE_TYPE, DT_BOOL },
    { "torch", "UntypedStorage",  PKG_STORAGE_TYPE, DT_INVALID },
    /* dtypes, for _rebuild_tensor_v3 */
    { "torch", "float32",  PKG_DTYPE, DT_F32 },  { "torch", "float",  PKG_DTYPE, DT_F32 },
    { "torch", "float16",  PKG_DTYPE, DT_F16 },  { "torch", "half",   PKG_DTYPE, DT_F16 },
    { "torch", "bfloat16", PKG_DTYPE, DT_BF16 },
    { "torch", "float64",  PKG_DTYPE, DT_F64 },  { "torch", "double", PKG_DTYPE, DT_F64 },
    { "torch", "int8",     PKG_DTYPE, DT_I8 },   { "torch", "uint8",  PKG_DTYPE, DT_U8 },
    { "torch", "int16",    PKG_DTYPE, DT_I16 },  { "torch", "short",  PKG_DTYPE, DT_I16 },
    { "torch", "int32",    PKG_DTYPE, DT_I32 },  { "torch", "int",    PKG_DTYPE, DT_I32 },
    { "torch", "int64",    PKG_DTYPE, DT_I64 },  { "torch", "long",   PKG_DTYPE, DT_I64 },
    { "torch", "bool",     PKG_DTYPE, DT_BOOL },
    { "torch", "uint16",   PKG_DTYPE, DT_U16 },  { "torch", "uint32", PKG_DTYPE, DT_U32 },
    { "torch", "uint64",   PKG_DTYPE, DT_U64 },
    { "torch", "float8_e4m3fn", PKG_DTYPE, DT_F8_E4M3 },
    { "torch", "float8_e5m2",   PKG_DTYPE, DT_F8_E5M2 },
};

/* Names torch may legitimately write but qpipe has no dtype for. */
static const char *const pk_unsupported[] = {
    "ComplexDoubleStorage", "ComplexFloatStorage", "QInt8Storage", "QUInt8Storage",
    "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage",
    "complex32", "complex64", "complex128", "cfloat", "cdouble", "chalf",
    "float8_e5m2fnuz", "float8_e4m3fnuz", "float8_e8m0fnu", "qint8", "quint8", "qint32",
};

static int pk_push_global(pk_doc *d, const char *mod, size_t mlen, const char *name, size_t nlen)
{
    for (size_t i = 0; i < sizeof pk_allow / sizeof pk_allow[0]; i++)
        if (strlen(pk_allow[i].module) == mlen && memcmp(pk_allow[i].module, mod, mlen) == 0 &&
            strlen(pk_allow[i].name) == nlen && memcmp(pk_allow[i].name, name, nlen) == 0) {
            pk_obj *o = pk_new(d, PK_GLOBAL);
            if (!o)
                return -1;
            o->u.global.id = pk_allow[i].id;
            o->u.global.dtype = pk_allow[i].dtype;
            o->u.global.name = pk_allow[i].name;
            return pk_push(d, o);
        }
    char m[96], n[96];
    pk_printable(m, sizeof m, mod, mlen);
    pk_printable(n, sizeof n, name, nlen);
    if (mlen == 5 && memcmp(mod, "torch", 5) == 0)
        for (size_t i = 0; i < sizeof pk_unsupported / sizeof pk_unsupported[0]; i++)
            if (strlen(pk_unsupported[i]) == nlen && memcmp(pk_unsupported[i], name, nlen) == 0)
                return pk_fail(d, "unsupported type 'torch.%s'", n);
    return pk_fail(d, "forbidden global '%s.%s'", m, n);
}

/* GLOBAL: "module\nname\n". */
static int pk_op_global(pk_doc *d)
{
    const char *line[2];
    size_t len[2];
    for (int k = 0; k < 2; k++) {
        const uint8_t *nl = memchr(d->p, '\n', (size_t)(d->end - d->p));
        if (!nl)
            return pk_fail(d, "truncated GLOBAL");
        line[k] = (const char *)d->p;
        len[k] = (size_t)(nl - d->p);
        if (len[k] > 256)
            return pk_fail(d, "GLOBAL name longer than 256 bytes");
        d->p = nl + 1;
    }
    return pk_push_global(d, line[0], len[0], line[1], len[1]);
}

static int pk_op_stack_global(pk_doc *d)
{
    pk_obj *name = pk_pop(d);
    pk_obj *mod = name ? pk_pop(d) : NULL;
    if (!mod)
        return -1;
    if (name->kind != PK_STR || mod->kind != PK_STR)
        return pk_fail(d, "STACK_GLOBAL needs two strings");
    return pk_push_global(d, mod->u.str.s, mod->u.str.len, name->u.str.s, name->u.str.len);
}

/*-*** Containers ***/

static int pk_op_tuple_n(pk_doc *d, size_t n)
{
    if (d->sp - pk_fence(d) < n)
        return pk_fail(d, "stack underflow");
    pk_obj *t = pk_new(d, PK_TUPLE);
    if (!t)
        return -1;
    for (size_t i = d->sp - n; i < d->sp; i++)
        if (pk_seq_push(d, t, d->stack[i]) < 0)
            return -1;
    d->sp -= n;
    return pk_push(d, t);
}

/* TUPLE / LIST: everything above the mark becomes one sequence. */
static int pk_op_seq_mark(pk_doc *d, pk_kind kind)
{
    size_t from = 0;
    if (pk_pop_mark(d, &from) < 0)
        return -1;
    pk_obj *t = pk_new(d, kind);
    if (!t)
        return -1;
    for (size_t i = from; i < d->sp; i++)
        if (pk_seq_push(d, t, d->stack[i]) < 0)
            return -1;
    d->sp = from;
    return pk_push(d, t);
}

/* SETITEMS / DICT: pairs above the mark go into dict (DICT: a new one). */
static int pk_op_setitems(pk_doc *d, int new_dict)
{
    size_t from = 0;
    if (pk_pop_mark(d, &from) < 0)
        return -1;
    if ((d->sp - from) % 2)
        return pk_fail(d, "odd number of items for a dict");
    pk_obj *dict;
    if (new_dict) {
        if (!(dict = pk_new(d, PK_DICT)))
            return -1;
    } else {
        if (from <= pk_fence(d))
            return pk_fail(d, "stack underflow");
        dict = d->stack[from - 1];
    }
    for (size_t i = from; i < d->sp; i += 2)
        if (pk_dict_set(d, dict, d->stack[i], d->stack[i + 1]) < 0)
            return -1;
    d->sp = from;
    return new_dict ? pk_push(d, dict) : 0;
}

static int pk_op_setitem(pk_doc *d)
{
    pk_obj *v = pk_pop(d);
    pk_obj *k = v ? pk_pop(d) : NULL;
    pk_obj *dict = k ? pk_top(d) : NULL;
    if (!dict)
        return -1;
    return pk_dict_set(d, dict, k, v);
}

static int pk_op_appends(pk_doc *d)
{
    size_t from = 0;
    if (pk_pop_mark(d, &from) < 0)
        return -1;
    if (from <= pk_fence(d))
        return pk_fail(d, "stack underflow");
    pk_obj *list = d->stack[from - 1];
    if (list->kind != PK_LIST)
        return pk_fail(d, "APPENDS to a non-list");
    for (size_t i = from; i < d->sp; i++)
        if (pk_seq_push(d, list, d->stack[i]) < 0)
            return -1;
    d->sp = from;
    return 0;
}

static int pk_op_append(pk_doc *d)
{
    pk_obj *v = pk_pop(d);
    pk_obj *list = v ? pk_top(d) : NULL;
    if (!list)
        return -1;
    if (list->kind != PK_LIST)
        return pk_fail(d, "APPEND to a non-list");
    return pk_seq_push(d, list, v);
}

/*-*** Persistent ids and REDUCE of the rebuild markers ***/

/* Storage keys name zip records "data/<key>": keep them path-safe. */
static int pk_key_ok(const pk_obj *k)
{
    if (k->kind != PK_STR || k->u.str.len == 0 || k->u.str.len > 64 || strstr(k->u.str.s, ".."))
        return 0;
    for (size_t i = 0; i < k->u.str.len; i++) {
        char c = k->u.str.s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

/* BINPERSID: ('storage', <storage type>, key, location, numel) → PK_STORAGE. */
static int pk_op_binpersid(pk_doc *d)
{
    pk_obj *pid = pk_pop(d);
    if (!pid)
        return -1;
    if (pid->kind != PK_TUPLE || pid->u.seq.n != 5)
        return pk_fail(d, "persistent id is not a 5-tuple");
    pk_obj **a = pid->u.seq.items;
    if (a[0]->kind != PK_STR || strcmp(a[0]->u.str.s, "storage") != 0)
        return pk_fail(d, "persistent id is not a 'storage' reference");
    if (a[1]->kind != PK_GLOBAL || a[1]->u.global.id != PKG_STORAGE_TYPE)
        return pk_fail(d, "persistent id: second item is not a storage type");
    if (!pk_key_ok(a[2]))
        return pk_fail(d, "persistent id: bad storage key");
    if (a[3]->kind != PK_STR)
        return pk_fail(d, "persistent id: location is not a string");
    if (a[4]->kind != PK_INT || a[4]->u.i < 0)
        return pk_fail(d, "persistent id: bad element count");
    pk_obj *s = pk_new(d, PK_STORAGE);
    if (!s)
        return -1;
    if (!(s->u.storage.key = strdup(a[2]->u.str.s)))
        return pk_fail(d, "out of memory");
    s->u.storage.dtype = a[1]->u.global.dtype;
    s->u.storage.numel = a[4]->u.i;
    return pk_push(d, s);
}

/* A tuple of non-negative ints → dims; -1 if not one or too many. */
static int pk_int_tuple(const pk_obj *t, int64_t *out)
{
    if (t->kind != PK_TUPLE || t->u.seq.n > PK_MAX_DIMS)
        return -1;
    for (size_t i = 0; i < t->u.seq.n; i++) {
        const pk_obj *v = t->u.seq.items[i];
        if (v->kind != PK_INT || v->u.i < 0)
            return -1;
        out[i] = v->u.i;
    }
    return (int)t->u.seq.n;
}

/* _rebuild_tensor*(storage, storage_offset, size, stride, ...) → PK_TENSOR. */
static int pk_make_tensor(pk_doc *d, pk_obj **a, qdtype dtype, const char *fn)
{
    if (a[0]->kind != PK_STORAGE)
        return pk_fail(d, "%s: first argument is not a storage", fn);
    if (a[1]->kind != PK_INT || a[1]->u.i < 0)
        return pk_fail(d, "%s: bad storage_offset", fn);
    pk_obj *t = pk_new(d, PK_TENSOR);
    if (!t)
        return -1;
    if (!(t->u.tensor.shape = calloc(2 * PK_MAX_DIMS, sizeof *t->u.tensor.shape)))
        return pk_fail(d, "out of memory");
    t->u.tensor.stride = t->u.tensor.shape + PK_MAX_DIMS;
    int nd = pk_int_tuple(a[2], t->u.tensor.shape);
    int ns = pk_int_tuple(a[3], t->u.tensor.stride);
    if (nd < 0 || ns < 0)
        return pk_fail(d, "%s: size/stride must be tuples of at most %d non-negative ints", fn, PK_MAX_DIMS);
    if (nd != ns)
        return pk_fail(d, "%s: size has %d dims but stride %d", fn, nd, ns);
    if (dtype == DT_INVALID)
        return pk_fail(d, "%s: tensor on an untyped storage", fn);
    t->depth = 1;
    t->u.tensor.storage = a[0];
    t->u.tensor.dtype = dtype;
    t->u.tensor.ndim = nd;
    t->u.tensor.offset = a[1]->u.i;
    return pk_push(d, t);
}

static int pk_op_reduce(pk_doc *d)
{
    pk_obj *args = pk_pop(d);
    pk_obj *fn = args ? pk_pop(d) : NULL;
    if (!fn)
        return -1;
    if (fn->kind != PK_GLOBAL)
        return pk_fail(d, "REDUCE on a non-callable");
    if (args->kind != PK_TUPLE)
        return pk_fail(d, "REDUCE arguments are not a tuple");
    pk_obj **a = args->u.seq.items;
    size_t n = args->u.seq.n;
    switch (fn->u.global.id) {
    case PKG_ORDERED_DICT: {
        if (n != 0)
            return pk_fail(d, "OrderedDict() with arguments");
        pk_obj *o = pk_new(d, PK_DICT);
        if (!o)
            return -1;
        o->u.dict.ordered = 1;
        return pk_push(d, o);
    }
    case PKG_REBUILD_TENSOR:
        if (n != 4)
            return pk_fail(d, "_rebuild_tensor takes 4 arguments, got %zu", n);
        return pk_make_tensor(d, a, a[0]->kind == PK_STORAGE ? a[0]->u.storage.dtype : DT_INVALID,
                              "_rebuild_tensor");
    case PKG_REBUILD_TENSOR_V2:
        if (n != 6 && n != 7)
            return pk_fail(d, "_rebuild_tensor_v2 takes 6 or 7 arguments, got %zu", n);
        return pk_make_tensor(d, a, a[0]->kind == PK_STORAGE ? a[0]->u.storage.dtype : DT_INVALID,
                              "_rebuild_tensor_v2");
    case PKG_REBUILD_TENSOR_V3:
        if (n != 7 && n != 8)
            return pk_fail(d, "_rebuild_tensor_v3 takes 7 or 8 arguments, got %zu", n);
        if (a[6]->kind != PK_GLOBAL || a[6]->u.global.id != PKG_DTYPE)
            return pk_fail(d, "_rebuild_tensor_v3: 7th argument is not a dtype");
        return pk_make_tensor(d, a, a[6]->u.global.dtype, "_rebuild_tensor_v3");
    case PKG_REBUILD_PARAMETER:
    case PKG_REBUILD_PARAMETER_STATE:
        if (n != (fn->u.global.id == PKG_REBUILD_PARAMETER ? 3u : 4u))
            return pk_fail(d, "%s: wrong number of arguments (%zu)", fn->u.global.name, n);
        if (a[0]->kind != PK_TENSOR)
            return pk_fail(d, "%s: data is not a tensor", fn->u.global.name);
        return pk_push(d, a[0]);                /* a Parameter is its tensor */
    case PKG_SIZE:
        if (n != 1 || a[0]->kind != PK_TUPLE)
            return pk_fail(d, "torch.Size takes one tuple");
        return pk_push(d, a[0]);
    case PKG_STORAGE_TYPE:
    case PKG_DTYPE:
        break;
    }
    return pk_fail(d, "REDUCE of 'torch.%s' is not allowed", fn->u.global.name);
}

/* BUILD: only an OrderedDict's instance state (state_dict()._metadata), ignored. */
static int pk_op_build(pk_doc *d)
{
    pk_obj *state = pk_pop(d);
    pk_obj *obj = state ? pk_top(d) : NULL;
    if (!obj)
        return -1;
    if (obj->kind != PK_DICT || !obj->u.dict.ordered)
        return pk_fail(d, "BUILD is only allowed on an OrderedDict");
    return 0;
}

/*-*** The machine ***/

/* Pickle opcodes (CPython Lib/pickletools.py). */
enum {
    OP_MARK = '(', OP_STOP = '.', OP_BINFLOAT = 'G', OP_BININT = 'J', OP_BININT1 = 'K',
    OP_BININT2 = 'M', OP_NONE = 'N', OP_BINPERSID = 'Q', OP_REDUCE = 'R', OP_BINSTRING = 'T',
    OP_SHORT_BINSTRING = 'U', OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b',
    OP_GLOBAL = 'c', OP_DICT = 'd', OP_EMPTY_DICT = '}', OP_APPENDS = 'e', OP_BINGET = 'h',
    OP_LONG_BINGET = 'j', OP_LIST = 'l', OP_EMPTY_LIST = ']', OP_BINPUT = 'q',
    OP_LONG_BINPUT = 'r', OP_SETITEM = 's', OP_TUPLE = 't', OP_EMPTY_TUPLE = ')',
    OP_SETITEMS = 'u', OP_BINBYTES = 'B', OP_SHORT_BINBYTES = 'C',
    OP_PROTO = 0x80, OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87,
    OP_NEWTRUE = 0x88, OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a, OP_LONG4 = 0x8b,
    OP_SHORT_BINUNICODE = 0x8c, OP_BINUNICODE8 = 0x8d, OP_STACK_GLOBAL = 0x93,
    OP_MEMOIZE = 0x94, OP_FRAME = 0x95
};

static int pk_op_mark(pk_doc *d)
{
    if (d->nmarks >= PK_MAX_MARKS)
        return pk_fail(d, "MARKs nested deeper than %d", PK_MAX_MARKS);
    d->marks[d->nmarks++] = d->sp;
    return 0;
}

static int pk_op_binfloat(pk_doc *d)
{
    const uint8_t *q = pk_take(d, 8);
    if (!q)
        return -1;
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u = (u << 8) | q[i];                    /* big-endian, unlike everything else */
    pk_obj *o = pk_new(d, PK_FLOAT);
    if (!o)
        return -1;
    memcpy(&o->u.f, &u, sizeof u);
    return pk_push(d, o);
}

/* Length-prefixed string / bytes opcodes: width of the length and kind. */
static int pk_op_sized(pk_doc *d, int width, pk_kind kind, int is_signed)
{
    uint64_t n;
    if (pk_read_uint(d, width, &n) < 0)
        return -1;
    if (is_signed && (n & 0x80000000u))
        return pk_fail(d, "negative string length");
    return pk_push_str(d, kind, n);
}

/* Execute one opcode; 1 after STOP, 0 to continue, -1 on error. */
static int pk_step(pk_doc *d)
{
    uint64_t v;
    int op = *d->p++;
    switch (op) {
    case OP_PROTO:
        if (pk_read_uint(d, 1, &v) < 0) return -1;
        if (v > 5) return pk_fail(d, "unsupported pickle protocol %llu", (unsigned long long)v);
        return 0;
    case OP_FRAME:                              /* a framing hint; contents follow inline */
        if (pk_read_uint(d, 8, &v) < 0) return -1;
        if (v > (uint64_t)(d->end - d->p)) return pk_fail(d, "truncated frame");
        return 0;
    case OP_STOP:
        if (!(d->root = pk_pop(d))) return -1;
        return 1;
    case OP_MARK:        return pk_op_mark(d);
    case OP_EMPTY_DICT:  return pk_push(d, pk_new(d, PK_DICT));
    case OP_EMPTY_LIST:  return pk_push(d, pk_new(d, PK_LIST));
    case OP_EMPTY_TUPLE: return pk_push(d, pk_new(d, PK_TUPLE));
    case OP_NONE:        return pk_push(d, pk_new(d, PK_NONE));
    case OP_NEWTRUE:     return pk_push_int(d, PK_BOOL, 1);
    case OP_NEWFALSE:    return pk_push_int(d, PK_BOOL, 0);
    case OP_BININT1:
        if (pk_read_uint(d, 1, &v) < 0) return -1;
        return pk_push_int(d, PK_INT, (int64_t)v);
    case OP_BININT2:
        if (pk_read_uint(d, 2, &v) < 0) return -1;
        return pk_push_int(d, PK_INT, (int64_t)v);
    case OP_BININT:
        if (pk_read_uint(d, 4, &v) < 0) return -1;
        return pk_push_int(d, PK_INT, (int64_t)(int32_t)(uint32_t)v);
    case OP_LONG1:
        if (pk_read_uint(d, 1, &v) < 0) return -1;
        return pk_push_long(d, v);
    case OP_LONG4:
        if (pk_read_uint(d, 4, &v) < 0) return -1;
        return pk_push_long(d, v);
    case OP_BINFLOAT:          return pk_op_binfloat(d);
    case OP_SHORT_BINUNICODE:  return pk_op_sized(d, 1, PK_STR, 0);
    case OP_BINUNICODE:        return pk_op_sized(d, 4, PK_STR, 0);
    case OP_BINUNICODE8:       return pk_op_sized(d, 8, PK_STR, 0);
    case OP_SHORT_BINSTRING:   return pk_op_sized(d, 1, PK_STR, 0);
    case OP_BINSTRING:         return pk_op_sized(d, 4, PK_STR, 1);
    case OP_SHORT_BINBYTES:    return pk_op_sized(d, 1, PK_BYTES, 0);
    case OP_BINBYTES:          return pk_op_sized(d, 4, PK_BYTES, 0);
    case OP_GLOBAL:            return pk_op_global(d);
    case OP_STACK_GLOBAL:      return pk_op_stack_global(d);
    case OP_TUPLE:             return pk_op_seq_mark(d, PK_TUPLE);
    case OP_LIST:              return pk_op_seq_mark(d, PK_LIST);
    case OP_TUPLE1:            return pk_op_tuple_n(d, 1);
    case OP_TUPLE2:            return pk_op_tuple_n(d, 2);
    case OP_TUPLE3:            return pk_op_tuple_n(d, 3);
    case OP_DICT:              return pk_op_setitems(d, 1);
    case OP_SETITEMS:          return pk_op_setitems(d, 0);
    case OP_SETITEM:           return pk_op_setitem(d);
    case OP_APPENDS:           return pk_op_appends(d);
    case OP_APPEND:            return pk_op_append(d);
    case OP_BINPUT:
        if (pk_read_uint(d, 1, &v) < 0) return -1;
        return pk_memo_put(d, v);
    case OP_LONG_BINPUT:
        if (pk_read_uint(d, 4, &v) < 0) return -1;
        return pk_memo_put(d, v);
    case OP_MEMOIZE:           return pk_memo_put(d, d->nmemo);
    case OP_BINGET:
        if (pk_read_uint(d, 1, &v) < 0) return -1;
        return pk_memo_get(d, v);
    case OP_LONG_BINGET:
        if (pk_read_uint(d, 4, &v) < 0) return -1;
        return pk_memo_get(d, v);
    case OP_BINPERSID:         return pk_op_binpersid(d);
    case OP_REDUCE:            return pk_op_reduce(d);
    case OP_BUILD:             return pk_op_build(d);
    default:
        if (op >= 0x20 && op < 0x7f)
            return pk_fail(d, "unsupported opcode 0x%02x '%c'", op, op);
        return pk_fail(d, "unsupported opcode 0x%02x", op);
    }
}

pk_doc *pickle_load(const uint8_t *buf, size_t len, char **errp)
{
    pk_doc *d = calloc(1, sizeof *d);
    if (!d) {
        *errp = strdup("out of memory");
        return NULL;
    }
    d->start = d->p = buf;
    d->end = buf + len;
    int rc = 0;
    while (rc == 0) {
        d->op_at = (size_t)(d->p - d->start);
        if (d->p >= d->end)
            rc = pk_fail(d, "pickle ends without STOP");
        else
            rc = pk_step(d);
    }
    free(d->stack);
    free(d->memo);
    d->stack = NULL;
    d->memo = NULL;
    if (rc < 0) {
        *errp = strdup(d->err);
        pickle_free(d);
        return NULL;
    }
    return d;
}

const pk_obj *pickle_root(const pk_doc *d)
{
    return d->root;
}

size_t pickle_nobjects(const pk_doc *d)
{
    return d->nobjs;
}

void pickle_free(pk_doc *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nobjs; i++)
        pk_obj_free(d->objs[i]);
    free(d->objs);
    free(d->stack);
    free(d->memo);
    free(d);
}

const pk_obj *pickle_dict_get(const pk_obj *o, const char *key)
{
    if (!o || o->kind != PK_DICT)
        return NULL;
    size_t len = strlen(key);
    for (size_t i = 0; i < o->u.dict.n; i++) {
        const pk_obj *k = o->u.dict.keys[i];
        if (k->kind == PK_STR && k->u.str.len == len && memcmp(k->u.str.s, key, len) == 0)
            return o->u.dict.vals[i];
    }
    return NULL;
}
