/* tokenizer_util — the small pieces under the tokenizer: growable buffers,
 * piece lists, strict UTF-8 decoding (Unicode 15 §3.9, Table 3-7), the
 * Unicode properties HF's pre-tokenizers ask for (through utf8proc), the
 * GPT-2 bytes↔unicode table, and two open-addressing hash maps.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include "tokenizer_priv.h"

/*-*** Buffers ***/

static int buf_reserve(tk_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    char *s = realloc(b->s, cap);
    if (!s)
        return -1;
    b->s = s;
    b->cap = cap;
    return 0;
}

int tk_buf_put(tk_buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
    return 0;
}

int tk_buf_putc(tk_buf *b, char c)
{
    return tk_buf_put(b, &c, 1);
}

int tk_buf_put_cp(tk_buf *b, uint32_t cp)
{
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp; n = 1;
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | (cp >> 6)); u[1] = (unsigned char)(0x80 | (cp & 0x3F)); n = 2;
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | (cp >> 12)); u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | (cp >> 18)); u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (unsigned char)(0x80 | (cp & 0x3F)); n = 4;
    }
    return tk_buf_put(b, u, n);
}

void tk_buf_free(tk_buf *b)
{
    free(b->s);
    b->s = NULL;
    b->len = b->cap = 0;
}

/*-*** Piece lists ***/

static int pieces_grow(tk_pieces *p)
{
    if (p->n < p->cap)
        return 0;
    size_t cap = p->cap ? p->cap * 2 : 16;
    tk_piece *v = realloc(p->v, cap * sizeof *v);
    if (!v)
        return -1;
    p->v = v;
    p->cap = cap;
    return 0;
}

int tk_pieces_add(tk_pieces *p, const char *s, size_t len, int at_origin)
{
    if (pieces_grow(p) < 0)
        return -1;
    char *c = malloc(len + 1);
    if (!c)
        return -1;
    if (len)
        memcpy(c, s, len);
    c[len] = '\0';
    p->v[p->n++] = (tk_piece){ c, len, at_origin };
    return 0;
}

int tk_pieces_take(tk_pieces *p, tk_buf *b, int at_origin)
{
    if (!b->s && tk_buf_put(b, "", 0) < 0)
        return -1;
    if (pieces_grow(p) < 0)
        return -1;
    p->v[p->n++] = (tk_piece){ b->s, b->len, at_origin };
    b->s = NULL;
    b->len = b->cap = 0;
    return 0;
}

void tk_pieces_free(tk_pieces *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->v[i].s);
    free(p->v);
    p->v = NULL;
    p->n = p->cap = 0;
}

int tk_ids_push(tk_ids *a, uint32_t id)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        uint32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v)
            return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

char *tk_errf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    int r = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (r < 0)
        return strdup("out of memory");
    return msg;
}

/*-*** UTF-8 ***/

/* Table 3-7 of the Unicode standard: the valid range of the second byte
 * depends on the lead byte; later bytes are always 80..BF. */
int tk_utf8_dec(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int need;
    unsigned lo = 0x80, hi = 0xBF;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) { need = 1; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2; v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3; v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return -1;
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n)
            return -k;
        unsigned d = s[k];
        if (d < lo || d > hi)
            return -k;
        lo = 0x80; hi = 0xBF;
        v = (v << 6) | (d & 0x3F);
    }
    *cp = v;
    return need + 1;
}

size_t tk_utf8_check(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) { i++; continue; }
        uint32_t cp;
        int k = tk_utf8_dec(u + i, n - i, &cp);
        if (k < 0)
            return i;
        i += (size_t)k;
    }
    return n;
}

int tk_buf_put_lossy(tk_buf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;      /* run: start of the pending valid stretch */
    while (i < n) {
        uint32_t cp;
        int k = tk_utf8_dec(u + i, n - i, &cp);
        if (k > 0) { i += (size_t)k; continue; }
        if (tk_buf_put(b, s + run, i - run) < 0 || tk_buf_put(b, "\xEF\xBF\xBD", 3) < 0)
            return -1;
        i += (size_t)-k;
        run = i;
    }
    return tk_buf_put(b, s + run, n - run);
}

/*-*** Unicode properties ***/

int tk_is_whitespace(uint32_t cp)
{
    /* PropList.txt White_Space */
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

int tk_is_word_char(uint32_t cp)
{
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

int tk_is_numeric(uint32_t cp)
{
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

int tk_is_punct(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) ||
               (cp >= 0x5B && cp <= 0x60) || (cp >= 0x7B && cp <= 0x7E);
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE: case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
        return 1;
    default:
        return 0;
    }
}

/*-*** GPT-2 bytes↔unicode ***/

/* Bytes that are printable Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') map to the
 * same code point; the other 68 map to U+0100.. in byte order. */
static int byte_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

/* The non-printable bytes, in order, are 00..20 (33 of them), 7F..A0 (34)
 * and AD: closed forms of their rank below. */
uint32_t tk_byte_to_cp(uint8_t b)
{
    if (byte_printable(b))
        return b;
    if (b <= 0x20)
        return 256u + b;
    if (b <= 0xA0)
        return 256u + 33u + (uint32_t)(b - 0x7F);
    return 256u + 67u;                  /* 0xAD */
}

int tk_cp_to_byte(uint32_t cp)
{
    if (cp < 256)
        return byte_printable(cp) ? (int)cp : -1;
    uint32_t n = cp - 256;
    if (n < 33)
        return (int)n;
    if (n < 67)
        return (int)(0x7F + n - 33);
    if (n == 67)
        return 0xAD;
    return -1;
}

/*-*** Hash maps ***/

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;          /* FNV-1a 64 */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static size_t table_size(size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2 + 16)
        cap *= 2;
    return cap;
}

int tk_smap_init(tk_smap *m, size_t expected)
{
    size_t cap = table_size(expected);
    m->slots = calloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    m->count = 0;
    return m->slots ? 0 : -1;
}

static int smap_grow(tk_smap *m)
{
    tk_smap bigger;
    if (tk_smap_init(&bigger, (m->mask + 1)) < 0)
        return -1;
    for (size_t i = 0; i <= m->mask; i++)
        if (m->slots[i].key)
            tk_smap_put(&bigger, m->slots[i].key, m->slots[i].len, m->slots[i].val);
    free(m->slots);
    *m = bigger;
    return 0;
}

int tk_smap_put(tk_smap *m, const char *key, size_t len, uint32_t val)
{
    if ((m->count + 1) * 2 > m->mask + 1 && smap_grow(m) < 0)
        return -1;
    size_t i = hash_bytes(key, len) & m->mask;
    while (m->slots[i].key) {
        if (m->slots[i].len == len && memcmp(m->slots[i].key, key, len) == 0) {
            m->slots[i].val = val;
            return 0;
        }
        i = (i + 1) & m->mask;
    }
    m->slots[i] = (tk_smap_slot){ key, (uint32_t)len, val };
    m->count++;
    return 0;
}

int tk_smap_get(const tk_smap *m, const char *key, size_t len, uint32_t *val)
{
    if (!m->slots)
        return 0;
    size_t i = hash_bytes(key, len) & m->mask;
    while (m->slots[i].key) {
        if (m->slots[i].len == len && memcmp(m->slots[i].key, key, len) == 0) {
            *val = m->slots[i].val;
            return 1;
        }
        i = (i + 1) & m->mask;
    }
    return 0;
}

void tk_smap_free(tk_smap *m)
{
    free(m->slots);
    m->slots = NULL;
}

static uint64_t pair_key(uint32_t a, uint32_t b)
{
    return (((uint64_t)a << 32) | b) + 1;   /* never 0 while ids < 2^32-1 */
}

static size_t pair_hash(uint64_t k)
{
    k ^= k >> 33;                /* splitmix64 finaliser */
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return (size_t)k;
}

int tk_pmap_init(tk_pmap *m, size_t expected)
{
    size_t cap = table_size(expected);
    m->slots = calloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    m->count = 0;
    return m->slots ? 0 : -1;
}

int tk_pmap_put(tk_pmap *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t id)
{
    if ((m->count + 1) * 2 > m->mask + 1) {
        tk_pmap bigger;
        if (tk_pmap_init(&bigger, m->mask + 1) < 0)
            return -1;
        for (size_t i = 0; i <= m->mask; i++) {
            const tk_pmap_slot *s = &m->slots[i];
            if (!s->key)
                continue;
            size_t j = pair_hash(s->key) & bigger.mask;
            while (bigger.slots[j].key)
                j = (j + 1) & bigger.mask;
            bigger.slots[j] = *s;
            bigger.count++;
        }
        free(m->slots);
        *m = bigger;
    }
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k) & m->mask;
    while (m->slots[i].key && m->slots[i].key != k)
        i = (i + 1) & m->mask;
    if (!m->slots[i].key)
        m->count++;
    m->slots[i] = (tk_pmap_slot){ k, rank, id };
    return 0;
}

const tk_pmap_slot *tk_pmap_get(const tk_pmap *m, uint32_t a, uint32_t b)
{
    if (!m->slots)
        return NULL;
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k) & m->mask;
    while (m->slots[i].key) {
        if (m->slots[i].key == k)
            return &m->slots[i];
        i = (i + 1) & m->mask;
    }
    return NULL;
}

void tk_pmap_free(tk_pmap *m)
{
    free(m->slots);
    m->slots = NULL;
}
