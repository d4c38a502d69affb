/* tokenizer_pipeline — normalizers, pre-tokenizers and decoders of
 * tokenizer.json, parsed into flat step lists and applied.
 *
 * Semantics follow HuggingFace tokenizers (tokenizers/src/normalizers/,
 * pre_tokenizers/, decoders/, tokenizer/pattern.rs and normalizer.rs
 * NormalizedString::split for the five SplitDelimiterBehaviors). Offsets
 * are not tracked (qpipe needs ids, not alignments); the only offset fact
 * kept is whether a piece starts at offset 0 of the original text, which
 * Metaspace's prepend_scheme "first" asks.
 */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include "tokenizer_priv.h"

/* GPT-2's pre-tokenizer regex (openai/gpt-2 src/encoder.py; HF
 * pre_tokenizers/byte_level.rs uses the same one). */
static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* pre_tokenizers/whitespace.rs */
static const char WHITESPACE_REGEX[] = "\\w+|[^\\w\\s]+";

/*-*** Parsing ***/

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jbool(json_t *o, const char *key, int dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static pcre2_code *regex_compile(const char *pat, size_t len, char **errp)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        *errp = tk_errf("regex '%.*s': %s at offset %zu", (int)len, pat, (const char *)msg, (size_t)off);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* optional: falls back to the interpreter */
    return re;
}

static int dup_bytes(const char *s, size_t n, char **out, size_t *outlen)
{
    *out = malloc(n + 1);
    if (!*out)
        return -1;
    memcpy(*out, s, n);
    (*out)[n] = '\0';
    *outlen = n;
    return 0;
}

static int dup_jstring(json_t *v, char **out, size_t *outlen)
{
    return dup_bytes(json_string_value(v), json_string_length(v), out, outlen);
}

/* {"String": "..."} or {"Regex": "..."} → literal in pat or regex in re. */
static int parse_pattern(json_t *o, tk_step *st, const char *what, char **errp)
{
    json_t *p = json_object_get(o, "pattern");
    json_t *lit = json_object_get(p, "String"), *rx = json_object_get(p, "Regex");
    if (json_is_string(lit)) {
        if (dup_jstring(lit, &st->pat, &st->pat_len) < 0)
            goto oom;
        return 0;
    }
    if (json_is_string(rx)) {
        if (dup_jstring(rx, &st->pat, &st->pat_len) < 0)
            goto oom;
        st->re = regex_compile(st->pat, st->pat_len, errp);
        return st->re ? 0 : -1;
    }
    *errp = tk_errf("%s: pattern is neither {\"String\"} nor {\"Regex\"}", what);
    return -1;
oom:
    *errp = tk_errf("out of memory");
    return -1;
}

typedef struct { tk_step *v; size_t n, cap; } step_list;

static tk_step *step_new(step_list *l, int kind)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        tk_step *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return NULL;
        l->v = v;
        l->cap = cap;
    }
    tk_step *s = &l->v[l->n++];
    memset(s, 0, sizeof *s);
    s->kind = kind;
    return s;
}

void tk_steps_free(tk_step *steps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(steps[i].pat);
        free(steps[i].rep);
        pcre2_code_free(steps[i].re);
    }
    free(steps);
}

#define NEW_STEP(kind) do { if (!(st = step_new(l, (kind)))) goto oom; } while (0)

static int norm_parse_one(json_t *j, step_list *l, char **errp)
{
    const char *type = jstr(j, "type");
    tk_step *st;
    if (!type) {
        *errp = tk_errf("normalizer without a type");
        return -1;
    }
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "normalizers"), *e;
        size_t i;
        json_array_foreach(arr, i, e)
            if (norm_parse_one(e, l, errp) < 0)
                return -1;
        return 0;
    }
    if (!strcmp(type, "Prepend")) {
        json_t *p = json_object_get(j, "prepend");
        if (!json_is_string(p)) {
            *errp = tk_errf("normalizer Prepend: no \"prepend\" string");
            return -1;
        }
        NEW_STEP(TK_NORM_PREPEND);
        if (dup_jstring(p, &st->pat, &st->pat_len) < 0)
            goto oom;
        return 0;
    }
    if (!strcmp(type, "Replace")) {
        json_t *c = json_object_get(j, "content");
        if (!json_is_string(c)) {
            *errp = tk_errf("normalizer Replace: no \"content\" string");
            return -1;
        }
        NEW_STEP(TK_NORM_REPLACE);
        if (dup_jstring(c, &st->rep, &st->rep_len) < 0)
            goto oom;
        return parse_pattern(j, st, "normalizer Replace", errp);
    }
    static const struct { const char *name; int kind; } simple[] = {
        { "NFC", TK_NORM_NFC }, { "NFD", TK_NORM_NFD }, { "NFKC", TK_NORM_NFKC },
        { "NFKD", TK_NORM_NFKD }, { "Lowercase", TK_NORM_LOWER },
        { "StripAccents", TK_NORM_STRIP_ACCENTS },
    };
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++)
        if (!strcmp(type, simple[i].name)) {
            NEW_STEP(simple[i].kind);
            return 0;
        }
    if (!strcmp(type, "Strip")) {
        NEW_STEP(TK_NORM_STRIP);
        st->flag_a = jbool(j, "strip_left", 1);
        st->flag_b = jbool(j, "strip_right", 1);
        return 0;
    }
    *errp = tk_errf("unsupported normalizer type '%s'", type);
    return -1;
oom:
    *errp = tk_errf("out of memory");
    return -1;
}

static int parse_behavior(json_t *j, int dflt, int *out, char **errp)
{
    static const char *names[] = { "Removed", "Isolated", "MergedWithPrevious",
                                   "MergedWithNext", "Contiguous" };
    const char *b = jstr(j, "behavior");
    if (!b) {
        *out = dflt;
        return 0;
    }
    for (int i = 0; i < 5; i++)
        if (!strcmp(b, names[i])) {
            *out = i;
            return 0;
        }
    *errp = tk_errf("unknown split behavior '%s'", b);
    return -1;
}

static int parse_metaspace(json_t *j, tk_step *st, char **errp)
{
    json_t *r = json_object_get(j, "replacement");
    if (!json_is_string(r) || json_string_length(r) == 0) {
        *errp = tk_errf("Metaspace: no \"replacement\" character");
        return -1;
    }
    if (dup_jstring(r, &st->pat, &st->pat_len) < 0) {
        *errp = tk_errf("out of memory");
        return -1;
    }
    st->flag_a = jbool(j, "split", 1);
    const char *scheme = jstr(j, "prepend_scheme");
    if (scheme) {
        if (!strcmp(scheme, "always")) st->prepend_scheme = TK_PREPEND_ALWAYS;
        else if (!strcmp(scheme, "first")) st->prepend_scheme = TK_PREPEND_FIRST;
        else if (!strcmp(scheme, "never")) st->prepend_scheme = TK_PREPEND_NEVER;
        else {
            *errp = tk_errf("Metaspace: unknown prepend_scheme '%s'", scheme);
            return -1;
        }
    } else {    /* legacy files: add_prefix_space */
        st->prepend_scheme = jbool(j, "add_prefix_space", 1) ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;
    }
    return 0;
}

static int pre_parse_one(json_t *j, step_list *l, char **errp)
{
    const char *type = jstr(j, "type");
    tk_step *st;
    if (!type) {
        *errp = tk_errf("pre_tokenizer without a type");
        return -1;
    }
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "pretokenizers"), *e;
        size_t i;
        json_array_foreach(arr, i, e)
            if (pre_parse_one(e, l, errp) < 0)
                return -1;
        return 0;
    }
    if (!strcmp(type, "Split")) {
        NEW_STEP(TK_PRE_SPLIT);
        st->invert = jbool(j, "invert", 0);
        if (parse_behavior(j, TK_SPLIT_ISOLATED, &st->behavior, errp) < 0)
            return -1;
        return parse_pattern(j, st, "pre_tokenizer Split", errp);
    }
    if (!strcmp(type, "ByteLevel")) {
        NEW_STEP(TK_PRE_BYTELEVEL);
        st->flag_a = jbool(j, "add_prefix_space", 1);
        st->flag_b = jbool(j, "use_regex", 1);
        if (st->flag_b && !(st->re = regex_compile(GPT2_REGEX, sizeof GPT2_REGEX - 1, errp)))
            return -1;
        return 0;
    }
    if (!strcmp(type, "Metaspace")) {
        NEW_STEP(TK_PRE_METASPACE);
        return parse_metaspace(j, st, errp);
    }
    if (!strcmp(type, "Digits")) {
        NEW_STEP(TK_PRE_DIGITS);
        st->flag_a = jbool(j, "individual_digits", 0);
        return 0;
    }
    if (!strcmp(type, "WhitespaceSplit")) {
        NEW_STEP(TK_PRE_WSPLIT);
        return 0;
    }
    if (!strcmp(type, "Whitespace")) {
        NEW_STEP(TK_PRE_WHITESPACE);
        st->re = regex_compile(WHITESPACE_REGEX, sizeof WHITESPACE_REGEX - 1, errp);
        return st->re ? 0 : -1;
    }
    if (!strcmp(type, "Punctuation")) {
        NEW_STEP(TK_PRE_PUNCT);
        return parse_behavior(j, TK_SPLIT_ISOLATED, &st->behavior, errp);
    }
    *errp = tk_errf("unsupported pre_tokenizer type '%s'", type);
    return -1;
oom:
    *errp = tk_errf("out of memory");
    return -1;
}

static int dec_parse_one(json_t *j, step_list *l, char **errp)
{
    const char *type = jstr(j, "type");
    tk_step *st;
    if (!type) {
        *errp = tk_errf("decoder without a type");
        return -1;
    }
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "decoders"), *e;
        size_t i;
        json_array_foreach(arr, i, e)
            if (dec_parse_one(e, l, errp) < 0)
                return -1;
        return 0;
    }
    if (!strcmp(type, "Replace")) {
        json_t *c = json_object_get(j, "content");
        if (!json_is_string(c)) {
            *errp = tk_errf("decoder Replace: no \"content\" string");
            return -1;
        }
        NEW_STEP(TK_DEC_REPLACE);
        if (dup_jstring(c, &st->rep, &st->rep_len) < 0)
            goto oom;
        return parse_pattern(j, st, "decoder Replace", errp);
    }
    if (!strcmp(type, "ByteFallback")) {
        NEW_STEP(TK_DEC_BYTEFALLBACK);
        return 0;
    }
    if (!strcmp(type, "Fuse")) {
        NEW_STEP(TK_DEC_FUSE);
        return 0;
    }
    if (!strcmp(type, "Strip")) {
        json_t *c = json_object_get(j, "content");
        json_t *a = json_object_get(j, "start"), *b = json_object_get(j, "stop");
        if (!json_is_string(c) || !json_is_integer(a) || !json_is_integer(b) ||
            json_integer_value(a) < 0 || json_integer_value(b) < 0 ||
            json_integer_value(a) > 1 << 20 || json_integer_value(b) > 1 << 20) {
            *errp = tk_errf("decoder Strip: needs \"content\", \"start\" and \"stop\"");
            return -1;
        }
        NEW_STEP(TK_DEC_STRIP);
        if (dup_jstring(c, &st->pat, &st->pat_len) < 0)
            goto oom;
        st->flag_a = (int)json_integer_value(a);
        st->flag_b = (int)json_integer_value(b);
        return 0;
    }
    if (!strcmp(type, "Metaspace")) {
        NEW_STEP(TK_DEC_METASPACE);
        return parse_metaspace(j, st, errp);
    }
    if (!strcmp(type, "ByteLevel")) {
        NEW_STEP(TK_DEC_BYTELEVEL);
        return 0;
    }
    *errp = tk_errf("unsupported decoder type '%s'", type);
    return -1;
oom:
    *errp = tk_errf("out of memory");
    return -1;
}

typedef int (*parse_fn)(json_t *, step_list *, char **);

static int parse_steps(json_t *j, parse_fn one, tk_step **steps, size_t *n, char **errp)
{
    step_list l = { 0 };
    *steps = NULL;
    *n = 0;
    if (!j || json_is_null(j))
        return 0;
    if (!json_is_object(j)) {
        *errp = tk_errf("expected an object or null");
        return -1;
    }
    if (one(j, &l, errp) < 0) {
        tk_steps_free(l.v, l.n);
        return -1;
    }
    *steps = l.v;
    *n = l.n;
    return 0;
}

int tk_norm_parse(json_t *j, tk_step **steps, size_t *n, char **errp)
{
    return parse_steps(j, norm_parse_one, steps, n, errp);
}

int tk_pre_parse(json_t *j, tk_step **steps, size_t *n, char **errp)
{
    return parse_steps(j, pre_parse_one, steps, n, errp);
}

int tk_dec_parse(json_t *j, tk_step **steps, size_t *n, char **errp)
{
    return parse_steps(j, dec_parse_one, steps, n, errp);
}

/*-*** Matching: spans covering a string, flagged match / gap (pattern.rs) ***/

typedef struct { size_t s, e; int m; } span;
typedef struct { span *v; size_t n, cap; } spans;

static int spans_add(spans *sp, size_t s, size_t e, int m)
{
    if (sp->n == sp->cap) {
        size_t cap = sp->cap ? sp->cap * 2 : 32;
        span *v = realloc(sp->v, cap * sizeof *v);
        if (!v)
            return -1;
        sp->v = v;
        sp->cap = cap;
    }
    sp->v[sp->n++] = (span){ s, e, m };
    return 0;
}

/* Regex find_iter: gaps and matches in order. After an empty match the
 * search resumes one character later (matches are then never empty-looping). */
static int find_regex(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t len, spans *out)
{
    size_t prev = 0, at = 0;
    if (len == 0)
        return spans_add(out, 0, 0, 0);
    while (at <= len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, len, at, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0)
            return -1;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (prev != ms && spans_add(out, prev, ms, 0) < 0)
            return -1;
        if (spans_add(out, ms, me, 1) < 0)
            return -1;
        prev = me;
        if (me > ms) {
            at = me;
        } else {
            if (me >= len)
                break;
            at = me + 1;
            while (at < len && ((unsigned char)s[at] & 0xC0) == 0x80)
                at++;
        }
    }
    if (prev != len && spans_add(out, prev, len, 0) < 0)
        return -1;
    return 0;
}

static int find_literal(const char *pat, size_t plen, const char *s, size_t len, spans *out)
{
    size_t prev = 0, i = 0;
    if (len == 0 || plen == 0)
        return spans_add(out, 0, len, 0);
    while (i + plen <= len) {
        const char *hit = memmem(s + i, len - i, pat, plen);
        if (!hit)
            break;
        size_t ms = (size_t)(hit - s);
        if (prev != ms && spans_add(out, prev, ms, 0) < 0)
            return -1;
        if (spans_add(out, ms, ms + plen, 1) < 0)
            return -1;
        prev = i = ms + plen;
    }
    if (prev != len && spans_add(out, prev, len, 0) < 0)
        return -1;
    return 0;
}

/* Character-predicate pattern: every matching character is its own match. */
static int find_chars(int (*pred)(uint32_t), const char *s, size_t len, spans *out)
{
    size_t prev = 0, i = 0;
    if (len == 0)
        return spans_add(out, 0, 0, 0);
    while (i < len) {
        uint32_t cp;
        int k = tk_utf8_dec((const unsigned char *)s + i, len - i, &cp);
        size_t clen = k > 0 ? (size_t)k : 1;
        if (k > 0 && pred(cp)) {
            if (prev < i && spans_add(out, prev, i, 0) < 0)
                return -1;
            if (spans_add(out, i, i + clen, 1) < 0)
                return -1;
            prev = i + clen;
        }
        i += clen;
    }
    if (prev < len && spans_add(out, prev, len, 0) < 0)
        return -1;
    return 0;
}

/* NormalizedString::split: turn spans into pieces per behavior; sp->m
 * becomes "remove" and consecutive spans may fuse. In place. */
static void spans_behave(spans *sp, int behavior, int invert)
{
    if (invert)
        for (size_t i = 0; i < sp->n; i++)
            sp->v[i].m = !sp->v[i].m;
    size_t n = 0;
    int prev_match = 0;
    switch (behavior) {
    case TK_SPLIT_REMOVED:
        return;
    case TK_SPLIT_ISOLATED:
        for (size_t i = 0; i < sp->n; i++)
            sp->v[i].m = 0;
        return;
    case TK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < sp->n; i++) {
            int m = sp->v[i].m;
            if (n && m == prev_match)
                sp->v[n - 1].e = sp->v[i].e;
            else
                sp->v[n++] = (span){ sp->v[i].s, sp->v[i].e, 0 };
            prev_match = m;
        }
        break;
    case TK_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < sp->n; i++) {
            int m = sp->v[i].m;
            if (n && m && !prev_match)
                sp->v[n - 1].e = sp->v[i].e;
            else
                sp->v[n++] = (span){ sp->v[i].s, sp->v[i].e, 0 };
            prev_match = m;
        }
        break;
    case TK_SPLIT_MERGED_NEXT: {
        /* walk backwards, growing the following piece to the left */
        size_t w = sp->n;      /* output built from the top of the array down */
        for (size_t i = sp->n; i-- > 0;) {
            span cur = sp->v[i];
            if (w < sp->n && cur.m && !prev_match)
                sp->v[w].s = cur.s;
            else
                sp->v[--w] = (span){ cur.s, cur.e, 0 };
            prev_match = cur.m;
        }
        memmove(sp->v, sp->v + w, (sp->n - w) * sizeof *sp->v);
        n = sp->n - w;
        break;
    }
    }
    sp->n = n;
}

/* Cut piece p by spans (after behavior) into out: kept, non-empty pieces. */
static int emit_spans(const tk_piece *p, const spans *sp, tk_pieces *out)
{
    for (size_t i = 0; i < sp->n; i++) {
        const span *x = &sp->v[i];
        if (x->m || x->e <= x->s)
            continue;
        if (tk_pieces_add(out, p->s + x->s, x->e - x->s, p->at_origin && x->s == 0) < 0)
            return -1;
    }
    return 0;
}

/*-*** Normalizers ***/

/* Replace every non-overlapping occurrence (literal or regex) with rep. */
static int replace_all(const tk_step *st, pcre2_match_data *md, const char *s, size_t len, tk_buf *out)
{
    spans sp = { 0 };
    int rc = -1;
    if ((st->re ? find_regex(st->re, md, s, len, &sp) : find_literal(st->pat, st->pat_len, s, len, &sp)) < 0)
        goto done;
    out->len = 0;
    if (tk_buf_put(out, "", 0) < 0)
        goto done;
    for (size_t i = 0; i < sp.n; i++) {
        const span *x = &sp.v[i];
        if (x->m ? tk_buf_put(out, st->rep, st->rep_len) : tk_buf_put(out, s + x->s, x->e - x->s))
            goto done;
    }
    rc = 0;
done:
    free(sp.v);
    return rc;
}

static int norm_unicode(int kind, const char *s, size_t len, tk_buf *out)
{
    int opts = UTF8PROC_STABLE;
    switch (kind) {
    case TK_NORM_NFC:  opts |= UTF8PROC_COMPOSE; break;
    case TK_NORM_NFD:  opts |= UTF8PROC_DECOMPOSE; break;
    case TK_NORM_NFKC: opts |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default:           opts |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &dst,
                                      (utf8proc_option_t)opts);
    if (n < 0)
        return -1;
    out->len = 0;
    int rc = tk_buf_put(out, dst, (size_t)n);
    free(dst);
    return rc;
}

/* Per-character filters/maps: Lowercase (Rust char::to_lowercase, with its
 * one multi-character case U+0130), StripAccents (drop Mn). */
static int norm_chars(int kind, const char *s, size_t len, tk_buf *out)
{
    out->len = 0;
    if (tk_buf_put(out, "", 0) < 0)
        return -1;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int k = tk_utf8_dec((const unsigned char *)s + i, len - i, &cp);
        size_t clen = k > 0 ? (size_t)k : 1;
        int rc = 0;
        if (kind == TK_NORM_LOWER) {
            if (cp == 0x130)
                rc = tk_buf_put(out, "i\xCC\x87", 3);
            else
                rc = tk_buf_put_cp(out, (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp));
        } else if (utf8proc_category((utf8proc_int32_t)cp) != UTF8PROC_CATEGORY_MN) {
            rc = tk_buf_put(out, s + i, clen);
        }
        if (rc < 0)
            return -1;
        i += clen;
    }
    return 0;
}

static int norm_strip(const tk_step *st, const char *s, size_t len, tk_buf *out)
{
    size_t a = 0, b = len;
    uint32_t cp;
    while (st->flag_a && a < b) {
        int k = tk_utf8_dec((const unsigned char *)s + a, b - a, &cp);
        if (k <= 0 || !tk_is_whitespace(cp))
            break;
        a += (size_t)k;
    }
    while (st->flag_b && b > a) {
        size_t c = b - 1;
        while (c > a && ((unsigned char)s[c] & 0xC0) == 0x80)
            c--;
        int k = tk_utf8_dec((const unsigned char *)s + c, b - c, &cp);
        if (k <= 0 || !tk_is_whitespace(cp))
            break;
        b = c;
    }
    out->len = 0;
    return tk_buf_put(out, s + a, b - a);
}

static int norm_step(const tk_step *st, pcre2_match_data *md, const char *s, size_t len, tk_buf *out)
{
    switch (st->kind) {
    case TK_NORM_PREPEND:
        out->len = 0;
        if (tk_buf_put(out, "", 0) < 0)
            return -1;
        if (len && tk_buf_put(out, st->pat, st->pat_len) < 0)
            return -1;
        return tk_buf_put(out, s, len);
    case TK_NORM_REPLACE:
        return replace_all(st, md, s, len, out);
    case TK_NORM_NFC: case TK_NORM_NFD: case TK_NORM_NFKC: case TK_NORM_NFKD:
        return norm_unicode(st->kind, s, len, out);
    case TK_NORM_LOWER: case TK_NORM_STRIP_ACCENTS:
        return norm_chars(st->kind, s, len, out);
    case TK_NORM_STRIP:
        return norm_strip(st, s, len, out);
    default:
        return -1;
    }
}

int tk_norm_apply(const tk_step *steps, size_t n, const char *s, size_t len, tk_buf *out)
{
    tk_buf a = { 0 }, b = { 0 };
    pcre2_match_data *md = NULL;
    int rc = -1;
    if (tk_buf_put(&a, s, len) < 0)
        goto done;
    for (size_t i = 0; i < n; i++) {
        if (steps[i].re) {
            pcre2_match_data_free(md);
            if (!(md = pcre2_match_data_create_from_pattern(steps[i].re, NULL)))
                goto done;
        }
        if (norm_step(&steps[i], md, a.s, a.len, &b) < 0)
            goto done;
        tk_buf t = a; a = b; b = t;
    }
    tk_buf_free(out);
    *out = a;
    a.s = NULL;
    rc = 0;
done:
    tk_buf_free(&a);
    tk_buf_free(&b);
    pcre2_match_data_free(md);
    return rc;
}

/*-*** Pre-tokenizers ***/

static int is_ws(uint32_t cp) { return tk_is_whitespace(cp); }

/* Replace each byte by its GPT-2 unicode character (byte_level.rs). */
static int bytes_to_unicode(tk_piece *p)
{
    tk_buf b = { 0 };
    for (size_t i = 0; i < p->len; i++)
        if (tk_buf_put_cp(&b, tk_byte_to_cp((uint8_t)p->s[i])) < 0) {
            tk_buf_free(&b);
            return -1;
        }
    if (!b.s && tk_buf_put(&b, "", 0) < 0)
        return -1;
    free(p->s);
    p->s = b.s;
    p->len = b.len;
    return 0;
}

/* Metaspace on one piece: spaces → replacement, maybe prepend it. */
static int metaspace_prepare(const tk_step *st, tk_piece *p)
{
    tk_buf b = { 0 };
    /* HF replaces spaces first, then prepends unless the piece now starts
     * with the replacement: a leading space counts as one */
    int starts = (p->len > 0 && p->s[0] == ' ') ||
                 (p->len >= st->pat_len && memcmp(p->s, st->pat, st->pat_len) == 0);
    int prepend = !starts && (st->prepend_scheme == TK_PREPEND_ALWAYS ||
                              (st->prepend_scheme == TK_PREPEND_FIRST && p->at_origin));
    if (tk_buf_put(&b, "", 0) < 0 || (prepend && tk_buf_put(&b, st->pat, st->pat_len) < 0))
        goto oom;
    for (size_t i = 0; i < p->len; i++)
        if (p->s[i] == ' ' ? tk_buf_put(&b, st->pat, st->pat_len) : tk_buf_putc(&b, p->s[i]))
            goto oom;
    free(p->s);
    p->s = b.s;
    p->len = b.len;
    return 0;
oom:
    tk_buf_free(&b);
    return -1;
}

/* One pre-tokenizer step over one piece, appending to out. */
static int pre_step_piece(const tk_step *st, pcre2_match_data *md, tk_piece *p, tk_pieces *out)
{
    spans sp = { 0 };
    int rc = -1;
    switch (st->kind) {
    case TK_PRE_SPLIT:
        if ((st->re ? find_regex(st->re, md, p->s, p->len, &sp)
                    : find_literal(st->pat, st->pat_len, p->s, p->len, &sp)) < 0)
            goto done;
        spans_behave(&sp, st->behavior, st->invert);
        break;
    case TK_PRE_BYTELEVEL:
        if (st->flag_a && (p->len == 0 || p->s[0] != ' ')) {
            tk_buf b = { 0 };
            if (tk_buf_putc(&b, ' ') < 0 || tk_buf_put(&b, p->s, p->len) < 0) {
                tk_buf_free(&b);
                goto done;
            }
            free(p->s);
            p->s = b.s;
            p->len = b.len;
        }
        if (st->flag_b) {
            if (find_regex(st->re, md, p->s, p->len, &sp) < 0)
                goto done;
            spans_behave(&sp, TK_SPLIT_ISOLATED, 0);
        } else if (spans_add(&sp, 0, p->len, 0) < 0) {
            goto done;
        }
        break;
    case TK_PRE_METASPACE:
        if (metaspace_prepare(st, p) < 0)
            goto done;
        if (st->flag_a) {
            if (find_literal(st->pat, st->pat_len, p->s, p->len, &sp) < 0)
                goto done;
            spans_behave(&sp, TK_SPLIT_MERGED_NEXT, 0);
        } else if (spans_add(&sp, 0, p->len, 0) < 0) {
            goto done;
        }
        break;
    case TK_PRE_DIGITS:
        if (find_chars(tk_is_numeric, p->s, p->len, &sp) < 0)
            goto done;
        spans_behave(&sp, st->flag_a ? TK_SPLIT_ISOLATED : TK_SPLIT_CONTIGUOUS, 0);
        break;
    case TK_PRE_WSPLIT:
        if (find_chars(is_ws, p->s, p->len, &sp) < 0)
            goto done;
        spans_behave(&sp, TK_SPLIT_REMOVED, 0);
        break;
    case TK_PRE_WHITESPACE:
        if (find_regex(st->re, md, p->s, p->len, &sp) < 0)
            goto done;
        spans_behave(&sp, TK_SPLIT_REMOVED, 1);
        break;
    case TK_PRE_PUNCT:
        if (find_chars(tk_is_punct, p->s, p->len, &sp) < 0)
            goto done;
        spans_behave(&sp, st->behavior, 0);
        break;
    default:
        goto done;
    }
    size_t first = out->n;
    if (emit_spans(p, &sp, out) < 0)
        goto done;
    if (st->kind == TK_PRE_BYTELEVEL)
        for (size_t i = first; i < out->n; i++)
            if (bytes_to_unicode(&out->v[i]) < 0)
                goto done;
    rc = 0;
done:
    free(sp.v);
    return rc;
}

int tk_pre_apply(const tk_step *steps, size_t n, tk_pieces *pieces)
{
    pcre2_match_data *md = NULL;
    for (size_t i = 0; i < n; i++) {
        if (steps[i].re) {
            pcre2_match_data_free(md);
            if (!(md = pcre2_match_data_create_from_pattern(steps[i].re, NULL)))
                return -1;
        }
        tk_pieces out = { 0 };
        for (size_t k = 0; k < pieces->n; k++)
            if (pre_step_piece(&steps[i], md, &pieces->v[k], &out) < 0) {
                tk_pieces_free(&out);
                pcre2_match_data_free(md);
                return -1;
            }
        tk_pieces_free(pieces);
        *pieces = out;
    }
    pcre2_match_data_free(md);
    /* HF drops empty pieces after every split */
    size_t w = 0;
    for (size_t k = 0; k < pieces->n; k++) {
        if (pieces->v[k].len)
            pieces->v[w++] = pieces->v[k];
        else
            free(pieces->v[k].s);
    }
    pieces->n = w;
    return 0;
}

/*-*** Decoders ***/

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "<0xXX>" → byte value, else -1 (decoders/byte_fallback.rs). */
static int byte_token(const tk_piece *t)
{
    if (t->len != 6 || memcmp(t->s, "<0x", 3) != 0 || t->s[5] != '>')
        return -1;
    int h = hexval(t->s[3]), l = hexval(t->s[4]);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
}

static int flush_bytes(tk_buf *bytes, tk_pieces *out)
{
    if (!bytes->len)
        return 0;
    int rc;
    if (tk_utf8_check(bytes->s, bytes->len) == bytes->len) {
        rc = tk_pieces_add(out, bytes->s, bytes->len, 0);
    } else {
        rc = 0;
        for (size_t i = 0; i < bytes->len && rc == 0; i++)
            rc = tk_pieces_add(out, "\xEF\xBF\xBD", 3, 0);
    }
    bytes->len = 0;
    return rc;
}

static int dec_byte_fallback(tk_pieces *toks)
{
    tk_pieces out = { 0 };
    tk_buf bytes = { 0 };
    for (size_t i = 0; i < toks->n; i++) {
        int b = byte_token(&toks->v[i]);
        if (b >= 0) {
            if (tk_buf_putc(&bytes, (char)b) < 0)
                goto oom;
            continue;
        }
        if (flush_bytes(&bytes, &out) < 0 || tk_pieces_add(&out, toks->v[i].s, toks->v[i].len, 0) < 0)
            goto oom;
    }
    if (flush_bytes(&bytes, &out) < 0)
        goto oom;
    tk_buf_free(&bytes);
    tk_pieces_free(toks);
    *toks = out;
    return 0;
oom:
    tk_buf_free(&bytes);
    tk_pieces_free(&out);
    return -1;
}

/* Fuse (all tokens → one) and ByteLevel (all → one, chars → bytes, lossy). */
static int dec_join(tk_pieces *toks, int byte_level)
{
    tk_buf all = { 0 };
    if (tk_buf_put(&all, "", 0) < 0)
        return -1;
    for (size_t i = 0; i < toks->n; i++) {
        const tk_piece *t = &toks->v[i];
        size_t mark = all.len;
        int ok = 1;
        for (size_t k = 0; byte_level && k < t->len;) {
            uint32_t cp;
            int n = tk_utf8_dec((const unsigned char *)t->s + k, t->len - k, &cp);
            int b = n > 0 ? tk_cp_to_byte(cp) : -1;
            if (b < 0) { ok = 0; break; }
            if (tk_buf_putc(&all, (char)b) < 0)
                goto oom;
            k += (size_t)n;
        }
        if (!byte_level || !ok) {    /* a token outside the table keeps its bytes */
            all.len = mark;
            if (tk_buf_put(&all, t->s, t->len) < 0)
                goto oom;
        }
    }
    tk_pieces out = { 0 };
    if (byte_level) {
        tk_buf fixed = { 0 };
        if (tk_buf_put_lossy(&fixed, all.s, all.len) < 0 || tk_pieces_take(&out, &fixed, 0) < 0) {
            tk_buf_free(&fixed);
            goto oom;
        }
        tk_buf_free(&all);
    } else if (tk_pieces_take(&out, &all, 0) < 0) {
        goto oom;
    }
    tk_pieces_free(toks);
    *toks = out;
    return 0;
oom:
    tk_buf_free(&all);
    return -1;
}

/* Strip: up to flag_a leading and flag_b trailing copies of the content char. */
static void dec_strip(const tk_step *st, tk_piece *t)
{
    size_t a = 0, b = t->len, c = st->pat_len;
    for (int k = 0; k < st->flag_a && a + c <= b && memcmp(t->s + a, st->pat, c) == 0; k++)
        a += c;
    for (int k = 0; k < st->flag_b && b >= a + c && memcmp(t->s + b - c, st->pat, c) == 0; k++)
        b -= c;
    memmove(t->s, t->s + a, b - a);
    t->len = b - a;
    t->s[t->len] = '\0';
}

/* Metaspace decoder: replacement → ' ', except in the first token where it
 * is dropped unless prepend_scheme is "never" (decoders/metaspace.rs). */
static int dec_metaspace(const tk_step *st, tk_piece *t, int first)
{
    tk_buf b = { 0 };
    if (tk_buf_put(&b, "", 0) < 0)
        return -1;
    for (size_t i = 0; i < t->len;) {
        if (i + st->pat_len <= t->len && memcmp(t->s + i, st->pat, st->pat_len) == 0) {
            if (!(first && st->prepend_scheme != TK_PREPEND_NEVER) && tk_buf_putc(&b, ' ') < 0)
                goto oom;
            i += st->pat_len;
        } else {
            if (tk_buf_putc(&b, t->s[i]) < 0)
                goto oom;
            i++;
        }
    }
    free(t->s);
    t->s = b.s;
    t->len = b.len;
    return 0;
oom:
    tk_buf_free(&b);
    return -1;
}

int tk_dec_apply(const tk_step *steps, size_t n, tk_pieces *toks)
{
    int rc = 0;
    pcre2_match_data *md = NULL;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const tk_step *st = &steps[i];
        switch (st->kind) {
        case TK_DEC_BYTEFALLBACK: rc = dec_byte_fallback(toks); break;
        case TK_DEC_FUSE:         rc = dec_join(toks, 0); break;
        case TK_DEC_BYTELEVEL:    rc = dec_join(toks, 1); break;
        case TK_DEC_STRIP:
            for (size_t k = 0; k < toks->n; k++)
                dec_strip(st, &toks->v[k]);
            break;
        case TK_DEC_METASPACE:
            for (size_t k = 0; k < toks->n && rc == 0; k++)
                rc = dec_metaspace(st, &toks->v[k], k == 0);
            break;
        case TK_DEC_REPLACE: {
            if (st->re) {
                pcre2_match_data_free(md);
                if (!(md = pcre2_match_data_create_from_pattern(st->re, NULL)))
                    return -1;
            }
            for (size_t k = 0; k < toks->n && rc == 0; k++) {
                tk_buf b = { 0 };
                rc = replace_all(st, md, toks->v[k].s, toks->v[k].len, &b);
                if (rc == 0) {
                    free(toks->v[k].s);
                    toks->v[k].s = b.s;
                    toks->v[k].len = b.len;
                } else {
                    tk_buf_free(&b);
                }
            }
            break;
        }
        default:
            rc = -1;
        }
    }
    pcre2_match_data_free(md);
    return rc;
}
