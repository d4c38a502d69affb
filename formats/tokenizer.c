/* tokenizer — loading tokenizer.json / tokenizer_config.json, the encode
 * and decode drivers, and the GGUF-facing accessors (see tokenizer.h).
 *
 * Encode follows HuggingFace tokenizers TokenizerImpl::encode_single_sequence
 * (tokenizers/src/tokenizer/mod.rs) and AddedVocabulary::extract_and_normalize
 * (added_vocabulary.rs): (1) split the raw text on the added tokens that are
 * not `normalized`, leftmost-longest, honouring single_word/lstrip/rstrip;
 * (2) normalize each remaining segment and split it on the `normalized` added
 * tokens; (3) pre-tokenize each remaining part; (4) BPE each piece. BOS comes
 * from the config / post-processor. Decode maps ids to token strings, drops
 * special tokens on request and runs the decoder chain (or joins with " "
 * when there is none).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tokenizer_priv.h"

#define TK_MAX_ID 0xFFFFFFu     /* 16M ids: 60x the largest real vocab, bounds allocations */

/*-*** Added tokens: leftmost-longest matching ***/

/* Per set (0 = raw-text tokens, 1 = normalized-text tokens): token indices
 * sorted by first byte, then by length descending; start[b]..start[b+1]. */
typedef struct {
    uint32_t *order;
    uint32_t  start[257];
} added_index;

typedef struct {
    tokenizer pub;               /* first member: a tokenizer* is a tk_full* */
    added_index idx[2];
} tk_full;

/* Order within an index: by first byte, then longer first. */
static int added_before(const tk_added *x, const tk_added *y)
{
    unsigned char fx = (unsigned char)x->content[0], fy = (unsigned char)y->content[0];
    return fx != fy ? fx < fy : x->len > y->len;
}

static int added_index_build(const tokenizer *tk, added_index idx[2])
{
    for (int set = 0; set < 2; set++) {
        added_index *ix = &idx[set];
        size_t n = 0;
        ix->order = malloc((tk->n_added + 1) * sizeof *ix->order);
        if (!ix->order)
            return -1;
        for (size_t i = 0; i < tk->n_added; i++)
            if (tk->added[i].len && !!tk->added[i].normalized == set)
                ix->order[n++] = (uint32_t)i;
        /* stable insertion sort: a few hundred tokens at most in practice */
        for (size_t i = 1; i < n; i++) {
            uint32_t v = ix->order[i];
            size_t j = i;
            while (j > 0 && added_before(&tk->added[v], &tk->added[ix->order[j - 1]])) {
                ix->order[j] = ix->order[j - 1];
                j--;
            }
            ix->order[j] = v;
        }
        size_t k = 0;
        for (unsigned b = 0; b < 256; b++) {
            ix->start[b] = (uint32_t)k;
            while (k < n && (unsigned char)tk->added[ix->order[k]].content[0] == b)
                k++;
        }
        ix->start[256] = (uint32_t)n;
    }
    return 0;
}

static int is_word_at_end(const char *s, size_t len)
{
    if (!len)
        return 0;
    size_t c = len - 1;
    while (c > 0 && ((unsigned char)s[c] & 0xC0) == 0x80)
        c--;
    uint32_t cp;
    return tk_utf8_dec((const unsigned char *)s + c, len - c, &cp) > 0 && tk_is_word_char(cp);
}

static int is_word_at_start(const char *s, size_t len)
{
    uint32_t cp;
    return len && tk_utf8_dec((const unsigned char *)s, len, &cp) > 0 && tk_is_word_char(cp);
}

typedef struct { size_t s, e; int64_t id; } segment;   /* id -1: plain text */
typedef struct { segment *v; size_t n, cap; } segments;

static int seg_add(segments *sg, size_t s, size_t e, int64_t id)
{
    if (sg->n == sg->cap) {
        size_t cap = sg->cap ? sg->cap * 2 : 16;
        segment *v = realloc(sg->v, cap * sizeof *v);
        if (!v)
            return -1;
        sg->v = v;
        sg->cap = cap;
    }
    sg->v[sg->n++] = (segment){ s, e, id };
    return 0;
}

/* Longest added token of the set matching at s[i..len), or -1. */
static int64_t match_at(const tokenizer *tk, const added_index *ix, const char *s, size_t len, size_t i)
{
    unsigned b = (unsigned char)s[i];
    for (uint32_t k = ix->start[b]; k < ix->start[b + 1]; k++) {
        const tk_added *a = &tk->added[ix->order[k]];
        if (a->len <= len - i && memcmp(s + i, a->content, a->len) == 0)
            return ix->order[k];
    }
    return -1;
}

/* added_vocabulary.rs find_matches: cut s into text and added-token segments. */
static int split_added(const tokenizer *tk, const added_index *ix, const char *s, size_t len, segments *out)
{
    size_t start_offset = 0, i = 0;
    if (ix->start[256] == 0)
        return len ? seg_add(out, 0, len, -1) : 0;
    while (i < len) {
        int64_t k = match_at(tk, ix, s, len, i);
        if (k < 0) {
            i++;
            continue;
        }
        const tk_added *a = &tk->added[k];
        size_t start = i, stop = i + a->len;
        if (a->single_word && (is_word_at_end(s, start) || is_word_at_start(s + stop, len - stop))) {
            i = stop;
            continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > start_offset) {
                size_t c = ns - 1;
                while (c > 0 && ((unsigned char)s[c] & 0xC0) == 0x80)
                    c--;
                uint32_t cp;
                if (tk_utf8_dec((const unsigned char *)s + c, ns - c, &cp) <= 0 || !tk_is_whitespace(cp))
                    break;
                ns = c;
            }
            start = ns;
        }
        if (a->rstrip) {
            while (stop < len) {
                uint32_t cp;
                int n = tk_utf8_dec((const unsigned char *)s + stop, len - stop, &cp);
                if (n <= 0 || !tk_is_whitespace(cp))
                    break;
                stop += (size_t)n;
            }
        }
        if (start_offset < start && seg_add(out, start_offset, start, -1) < 0)
            return -1;
        if (seg_add(out, start, stop, a->id) < 0)
            return -1;
        start_offset = i = stop;
    }
    if (start_offset < len && seg_add(out, start_offset, len, -1) < 0)
        return -1;
    return 0;
}

/*-*** Encode ***/

/* Steps (3)-(4) on one normalized text part. */
static int encode_part(const tokenizer *tk, const char *s, size_t len, int at_origin, tk_ids *out)
{
    tk_pieces pieces = { 0 };
    int rc = -1;
    if (tk_pieces_add(&pieces, s, len, at_origin) < 0 || tk_pre_apply(tk->pre, tk->n_pre, &pieces) < 0)
        goto done;
    for (size_t i = 0; i < pieces.n; i++)
        if (tk_bpe_encode(tk, pieces.v[i].s, pieces.v[i].len, out) < 0)
            goto done;
    rc = 0;
done:
    tk_pieces_free(&pieces);
    return rc;
}

/* Steps (2)-(4) on one raw text segment. */
static int encode_segment(const tk_full *f, const char *s, size_t len, int at_origin, tk_ids *out)
{
    const tokenizer *tk = &f->pub;
    tk_buf norm = { 0 };
    segments sg = { 0 };
    int rc = -1;
    if (tk_norm_apply(tk->norm, tk->n_norm, s, len, &norm) < 0)
        goto done;
    if (split_added(tk, &f->idx[1], norm.s, norm.len, &sg) < 0)
        goto done;
    for (size_t i = 0; i < sg.n; i++) {
        const segment *x = &sg.v[i];
        if (x->id >= 0 ? tk_ids_push(out, (uint32_t)x->id)
                       : encode_part(tk, norm.s + x->s, x->e - x->s, at_origin && x->s == 0, out))
            goto done;
    }
    rc = 0;
done:
    tk_buf_free(&norm);
    free(sg.v);
    return rc;
}

int64_t tokenizer_encode(const tokenizer *tk, const char *text, size_t len, int add_bos,
                         uint32_t **ids, char **errp)
{
    const tk_full *f = (const tk_full *)tk;
    tk_ids out = { 0 };
    segments sg = { 0 };
    *ids = NULL;
    size_t bad = tk_utf8_check(text, len);
    if (bad != len) {
        if (errp)
            *errp = tk_errf("invalid UTF-8 at byte %zu", bad);
        return -1;
    }
    if (add_bos && tk->add_bos && tk->bos >= 0 && tk_ids_push(&out, (uint32_t)tk->bos) < 0)
        goto oom;
    if (split_added(tk, &f->idx[0], text, len, &sg) < 0)
        goto oom;
    for (size_t i = 0; i < sg.n; i++) {
        const segment *x = &sg.v[i];
        if (x->id >= 0 ? tk_ids_push(&out, (uint32_t)x->id)
                       : encode_segment(f, text + x->s, x->e - x->s, x->s == 0, &out))
            goto oom;
    }
    free(sg.v);
    if (!out.v && !(out.v = malloc(sizeof *out.v)))
        goto oom;
    *ids = out.v;
    return (int64_t)out.n;
oom:
    free(sg.v);
    free(out.v);
    if (errp)
        *errp = tk_errf("cannot tokenize: out of memory or regex match failure");
    return -1;
}

/*-*** Decode ***/

char *tokenizer_decode(const tokenizer *tk, const uint32_t *ids, size_t n, int skip_special)
{
    tk_pieces toks = { 0 };
    tk_buf all = { 0 };
    for (size_t i = 0; i < n; i++) {
        uint32_t id = ids[i];
        if (id >= tk->vocab_size || !tk->pieces[id])
            goto fail;
        if (skip_special && tk->is_added[id] == 2)
            continue;
        if (tk_pieces_add(&toks, tk->pieces[id], tk->piece_len[id], 0) < 0)
            goto fail;
    }
    if (tk->has_decoder && tk_dec_apply(tk->dec, tk->n_dec, &toks) < 0)
        goto fail;
    if (tk_buf_put(&all, "", 0) < 0)
        goto fail;
    for (size_t i = 0; i < toks.n; i++) {
        if (!tk->has_decoder && i > 0 && tk_buf_putc(&all, ' ') < 0)
            goto fail;
        if (tk_buf_put(&all, toks.v[i].s, toks.v[i].len) < 0)
            goto fail;
    }
    tk_pieces_free(&toks);
    return all.s;
fail:
    tk_pieces_free(&toks);
    tk_buf_free(&all);
    return NULL;
}

/*-*** Loading ***/

static void set_err(char **errp, char *msg)
{
    if (errp)
        *errp = msg;
    else
        free(msg);
}

static int id_from_json(json_t *v, uint32_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > TK_MAX_ID)
        return -1;
    *id = (uint32_t)json_integer_value(v);
    return 0;
}

/* Pass 1 over vocab and added tokens: the id space. */
static int load_id_space(tokenizer *tk, json_t *vocab, json_t *added, char **errp)
{
    const char *key;
    json_t *v;
    size_t max = 0, i;
    json_object_foreach(vocab, key, v) {
        uint32_t id;
        if (id_from_json(v, &id) < 0) {
            set_err(errp, tk_errf("model.vocab: bad id for '%s'", key));
            return -1;
        }
        if ((size_t)id + 1 > max)
            max = (size_t)id + 1;
    }
    json_array_foreach(added, i, v) {
        uint32_t id;
        if (!json_is_string(json_object_get(v, "content")) || id_from_json(json_object_get(v, "id"), &id) < 0) {
            set_err(errp, tk_errf("added_tokens[%zu]: needs \"id\" and \"content\"", i));
            return -1;
        }
        if ((size_t)id + 1 > max)
            max = (size_t)id + 1;
    }
    tk->vocab_size = max;
    tk->pieces = calloc(max + 1, sizeof *tk->pieces);
    tk->piece_len = calloc(max + 1, sizeof *tk->piece_len);
    tk->is_added = calloc(max + 1, 1);
    tk->scores = calloc(max + 1, sizeof *tk->scores);
    tk->types = calloc(max + 1, 1);
    if (!tk->pieces || !tk->piece_len || !tk->is_added || !tk->scores || !tk->types) {
        set_err(errp, tk_errf("out of memory"));
        return -1;
    }
    return 0;
}

static int set_piece(tokenizer *tk, uint32_t id, const char *s, size_t len)
{
    char *c = malloc(len + 1);
    if (!c)
        return -1;
    memcpy(c, s, len);
    c[len] = '\0';
    free(tk->pieces[id]);
    tk->pieces[id] = c;
    tk->piece_len[id] = (uint32_t)len;
    return 0;
}

/* The model's vocab: the string → id map (keys owned in vkeys) and the
 * id → string table. */
static int load_vocab(tokenizer *tk, json_t *vocab, char **errp)
{
    const char *key;
    json_t *v;
    tk->vkeys = calloc(json_object_size(vocab) + 1, sizeof *tk->vkeys);
    if (!tk->vkeys || tk_smap_init(&tk->vocab, json_object_size(vocab)) < 0)
        goto oom;
    size_t len;
    json_object_keylen_foreach(vocab, key, len, v) {
        uint32_t id = (uint32_t)json_integer_value(v);
        if (tk->pieces[id]) {
            set_err(errp, tk_errf("model.vocab: id %u used twice ('%s', '%s')", id, tk->pieces[id], key));
            return -1;
        }
        char *k = malloc(len + 1);
        if (!k)
            goto oom;
        memcpy(k, key, len + 1);
        tk->vkeys[tk->n_vkeys++] = k;
        if (set_piece(tk, id, key, len) < 0 || tk_smap_put(&tk->vocab, k, len, id) < 0)
            goto oom;
    }
    return 0;
oom:
    set_err(errp, tk_errf("out of memory"));
    return -1;
}

/* Added tokens; they override the id → string mapping, as HF's added
 * vocabulary does on decode. */
static int load_added(tokenizer *tk, json_t *added, char **errp)
{
    size_t i;
    json_t *v;
    tk->added = calloc(json_array_size(added) + 1, sizeof *tk->added);
    if (!tk->added)
        goto oom;
    json_array_foreach(added, i, v) {
        tk_added *a = &tk->added[tk->n_added];
        json_t *c = json_object_get(v, "content");
        a->id = (uint32_t)json_integer_value(json_object_get(v, "id"));
        a->len = json_string_length(c);
        if (!(a->content = malloc(a->len + 1)))
            goto oom;
        memcpy(a->content, json_string_value(c), a->len + 1);
        tk->n_added++;
        a->special = json_is_true(json_object_get(v, "special"));
        a->lstrip = json_is_true(json_object_get(v, "lstrip"));
        a->rstrip = json_is_true(json_object_get(v, "rstrip"));
        a->single_word = json_is_true(json_object_get(v, "single_word"));
        json_t *nz = json_object_get(v, "normalized");
        a->normalized = json_is_boolean(nz) ? json_is_true(nz) : !a->special;
        if (set_piece(tk, a->id, a->content, a->len) < 0)
            goto oom;
        tk->is_added[a->id] = a->special ? 2 : 1;
    }
    return 0;
oom:
    set_err(errp, tk_errf("out of memory"));
    return -1;
}

/* One merge, "a b" or ["a", "b"], split into its two halves. */
static int merge_halves(json_t *m, const char **a, size_t *alen, const char **b, size_t *blen)
{
    if (json_is_string(m)) {
        const char *s = json_string_value(m), *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return -1;
        *a = s; *alen = (size_t)(sp - s);
        *b = sp + 1; *blen = strlen(sp + 1);
        return 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0)); *alen = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1)); *blen = json_string_length(json_array_get(m, 1));
        return 0;
    }
    return -1;
}

/* Merges: the pair map (later duplicates win, as in HF's HashMap build) and
 * the "a b" strings for GGUF. The merged token is a + b, minus b's
 * continuing_subword_prefix (models/bpe/model.rs BpeBuilder::build). */
static int load_merges(tokenizer *tk, json_t *merges, char **errp)
{
    size_t n = json_array_size(merges), i;
    size_t plen = tk->cont_prefix ? strlen(tk->cont_prefix) : 0;
    json_t *m;
    tk_buf cat = { 0 };
    tk->merges = calloc(n + 1, sizeof *tk->merges);
    if (!tk->merges || tk_pmap_init(&tk->merge_map, n) < 0)
        goto oom;
    json_array_foreach(merges, i, m) {
        const char *a, *b;
        size_t alen, blen;
        uint32_t ia, ib, inew;
        if (merge_halves(m, &a, &alen, &b, &blen) < 0) {
            set_err(errp, tk_errf("model.merges[%zu]: not \"a b\" nor [a, b]", i));
            goto fail;
        }
        if (!tk_smap_get(&tk->vocab, a, alen, &ia) || !tk_smap_get(&tk->vocab, b, blen, &ib)) {
            set_err(errp, tk_errf("model.merges[%zu]: '%.*s %.*s' uses a token missing from the vocab",
                                  i, (int)alen, a, (int)blen, b));
            goto fail;
        }
        size_t skip = plen && blen >= plen && !memcmp(b, tk->cont_prefix, plen) ? plen : 0;
        cat.len = 0;
        if (tk_buf_put(&cat, a, alen) < 0 || tk_buf_put(&cat, b + skip, blen - skip) < 0)
            goto oom;
        if (!tk_smap_get(&tk->vocab, cat.s, cat.len, &inew)) {
            set_err(errp, tk_errf("model.merges[%zu]: merged token '%s' is missing from the vocab", i, cat.s));
            goto fail;
        }
        if (tk_pmap_put(&tk->merge_map, ia, ib, (uint32_t)i, inew) < 0)
            goto oom;
        cat.len = 0;
        if (tk_buf_put(&cat, a, alen) < 0 || tk_buf_putc(&cat, ' ') < 0 || tk_buf_put(&cat, b, blen) < 0)
            goto oom;
        tk->merges[tk->n_merges++] = cat.s;
        cat.s = NULL;
        cat.cap = 0;
    }
    tk_buf_free(&cat);
    return 0;
oom:
    set_err(errp, tk_errf("out of memory"));
fail:
    tk_buf_free(&cat);
    return -1;
}

static int load_model(tokenizer *tk, json_t *model, char **errp)
{
    const char *type = json_string_value(json_object_get(model, "type"));
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (type && strcmp(type, "BPE") != 0) {
        set_err(errp, tk_errf("unsupported model type '%s' (only BPE)", type));
        return -1;
    }
    if (!json_is_object(vocab) || !json_is_array(merges)) {
        set_err(errp, tk_errf("model: needs a \"vocab\" object and a \"merges\" array"));
        return -1;
    }
    json_t *dropout = json_object_get(model, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0) {
        set_err(errp, tk_errf("model: BPE dropout is not supported"));
        return -1;
    }
    tk->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    tk->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    tk->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    const char *cp = json_string_value(json_object_get(model, "continuing_subword_prefix"));
    const char *ew = json_string_value(json_object_get(model, "end_of_word_suffix"));
    if ((cp && !(tk->cont_prefix = strdup(cp))) || (ew && !(tk->eow_suffix = strdup(ew)))) {
        set_err(errp, tk_errf("out of memory"));
        return -1;
    }
    if (load_vocab(tk, vocab, errp) < 0 || load_merges(tk, merges, errp) < 0)
        return -1;
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    uint32_t id;
    tk->unk_id = unk && tk_smap_get(&tk->vocab, unk, strlen(unk), &id) ? (int64_t)id : -1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tk->byte_ids[b] = tk_smap_get(&tk->vocab, name, 6, &id) ? (int64_t)id : -1;
    }
    return 0;
}

static int steps_have(const tk_step *st, size_t n, int kind)
{
    for (size_t i = 0; i < n; i++)
        if (st[i].kind == kind)
            return 1;
    return 0;
}

/* Token id of a config value: "<s>", {"content": "<s>", ...}, or null. */
static int64_t token_from_config(const tokenizer *tk, json_t *v)
{
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v))
        return -1;
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    for (size_t i = 0; i < tk->n_added; i++)
        if (tk->added[i].len == len && !memcmp(tk->added[i].content, s, len))
            return tk->added[i].id;
    uint32_t id;
    return tk_smap_get(&tk->vocab, s, len, &id) ? (int64_t)id : -1;
}

static int64_t token_named(const tokenizer *tk, const char *s)
{
    json_t *v = json_string(s);
    int64_t id = token_from_config(tk, v);
    json_decref(v);
    return id;
}

/* A TemplateProcessing (possibly inside a post-processor Sequence) whose
 * single-sequence template starts with a special token: that token's id. */
static int64_t template_bos(json_t *pp)
{
    const char *type = json_string_value(json_object_get(pp, "type"));
    if (!type)
        return -1;
    if (!strcmp(type, "Sequence")) {
        json_t *e;
        size_t i;
        json_array_foreach(json_object_get(pp, "processors"), i, e) {
            int64_t id = template_bos(e);
            if (id >= 0)
                return id;
        }
        return -1;
    }
    if (strcmp(type, "TemplateProcessing") != 0)
        return -1;
    json_t *first = json_object_get(json_array_get(json_object_get(pp, "single"), 0), "SpecialToken");
    const char *name = json_string_value(json_object_get(first, "id"));
    if (!name)
        return -1;
    json_t *ids = json_object_get(json_object_get(json_object_get(pp, "special_tokens"), name), "ids");
    json_t *id = json_array_get(ids, 0);
    return json_is_integer(id) && json_integer_value(id) >= 0 ? json_integer_value(id) : -1;
}

/* BOS/EOS and add_bos, from tokenizer_config.json, then the post-processor,
 * then the family's usual names. */
static void load_specials(tokenizer *tk, json_t *root, json_t *cfg)
{
    int64_t tmpl = template_bos(json_object_get(root, "post_processor"));
    json_t *b = json_object_get(cfg, "bos_token"), *e = json_object_get(cfg, "eos_token");
    json_t *ab = json_object_get(cfg, "add_bos_token");
    if (b)
        tk->bos = token_from_config(tk, b);
    else if (tmpl >= 0)
        tk->bos = tmpl;
    else
        tk->bos = tk->kind_gpt2 ? -1 : token_named(tk, "<s>");
    if (e)
        tk->eos = token_from_config(tk, e);
    else
        tk->eos = tk->kind_gpt2 ? token_named(tk, "<|endoftext|>") : token_named(tk, "</s>");
    if (json_is_boolean(ab))
        tk->add_bos = json_is_true(ab);
    else if (tmpl >= 0)
        tk->add_bos = 1;
    else
        tk->add_bos = !tk->kind_gpt2;
    if (tk->bos >= (int64_t)tk->vocab_size)
        tk->bos = -1;
    if (tk->eos >= (int64_t)tk->vocab_size)
        tk->eos = -1;
}

/* llama.cpp convert_hf_to_gguf.py does_token_look_special. */
static int looks_special(const char *s, size_t n)
{
    if (!strcmp(s, "<pad>") || !strcmp(s, "<mask>") || !strcmp(s, "<2mass>") || !strcmp(s, "[@BOS@]"))
        return 1;
    if (n >= 4 && !memcmp(s, "<|", 2) && !memcmp(s + n - 2, "|>", 2))
        return 1;
    if (n >= 8 && !memcmp(s, "<\xEF\xBD\x9C", 4) && !memcmp(s + n - 4, "\xEF\xBD\x9C>", 4))
        return 1;
    return n >= 8 && !memcmp(s, "<unused", 7) && s[n - 1] == '>';
}

/* GGUF token types and scores, as llama.cpp's converter derives them. */
static int load_gguf_facts(tokenizer *tk)
{
    uint32_t *first_rank = NULL;
    if (tk->kind_gpt2) {
        if (!(first_rank = malloc((tk->vocab_size + 1) * sizeof *first_rank)))
            return -1;
        for (size_t i = 0; i < tk->vocab_size; i++)
            first_rank[i] = UINT32_MAX;
        for (size_t r = 0; r < tk->n_merges; r++) {
            const char *m = tk->merges[r], *sp = strchr(m, ' ');
            tk_buf cat = { 0 };
            uint32_t id;
            if (tk_buf_put(&cat, m, (size_t)(sp - m)) < 0 || tk_buf_put(&cat, sp + 1, strlen(sp + 1)) < 0) {
                tk_buf_free(&cat);
                free(first_rank);
                return -1;
            }
            if (tk_smap_get(&tk->vocab, cat.s, cat.len, &id) && first_rank[id] == UINT32_MAX)
                first_rank[id] = (uint32_t)r;
            tk_buf_free(&cat);
        }
    }
    uint32_t normal_index = 0;
    for (size_t id = 0; id < tk->vocab_size; id++) {
        const char *p = tk->pieces[id];
        int type;
        float score = 0.0f;
        if (!p) {
            type = TOK_TYPE_UNUSED;
            score = -1000.0f;
        } else if (tk->is_added[id]) {
            type = tk->is_added[id] == 2 || looks_special(p, tk->piece_len[id]) ? TOK_TYPE_CONTROL
                                                                                : TOK_TYPE_USER_DEFINED;
            score = -1000.0f;
        } else if (!tk->kind_gpt2 && tk->byte_fallback && tk->piece_len[id] == 6 && p[0] == '<' &&
                   tk->byte_ids[strtol(p + 3, NULL, 16) & 0xFF] == (int64_t)id) {
            type = TOK_TYPE_BYTE;
        } else if ((int64_t)id == tk->unk_id) {
            type = TOK_TYPE_UNKNOWN;
        } else {
            type = TOK_TYPE_NORMAL;
            if (!tk->kind_gpt2)
                score = -(float)normal_index++;
            else if (first_rank[id] != UINT32_MAX)
                score = -(float)first_rank[id];
        }
        tk->types[id] = (unsigned char)type;
        tk->scores[id] = score;
    }
    free(first_rank);
    return 0;
}

static json_t *parse_json(const char *what, const char *buf, size_t len, char **errp)
{
    json_error_t je;
    json_t *j = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!j)
        set_err(errp, tk_errf("%s: line %d column %d: %s", what, je.line, je.column, je.text));
    else if (!json_is_object(j)) {
        set_err(errp, tk_errf("%s: not a JSON object", what));
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* Prefix a message already in *errp with "tokenizer.json: ". */
static void err_prefix(char **errp, const char *what)
{
    if (!errp || !*errp)
        return;
    char *m = tk_errf("%s: %s", what, *errp);
    free(*errp);
    *errp = m;
}

tokenizer *tokenizer_load(const char *tokenizer_json, size_t len,
                          const char *tokenizer_config_json, size_t cfg_len, char **errp)
{
    char *err = NULL;
    json_t *root = parse_json("tokenizer.json", tokenizer_json, len, errp), *cfg = NULL;
    if (!root)
        return NULL;
    if (tokenizer_config_json && !(cfg = parse_json("tokenizer_config.json", tokenizer_config_json, cfg_len, errp))) {
        json_decref(root);
        return NULL;
    }
    tk_full *f = calloc(1, sizeof *f);
    if (!f) {
        set_err(errp, tk_errf("out of memory"));
        json_decref(root);
        json_decref(cfg);
        return NULL;
    }
    tokenizer *tk = &f->pub;
    json_t *model = json_object_get(root, "model"), *added = json_object_get(root, "added_tokens");
    if (!json_is_object(model)) {
        err = tk_errf("no \"model\" object");
        goto fail;
    }
    if (added && !json_is_array(added) && !json_is_null(added)) {
        err = tk_errf("\"added_tokens\" is not an array");
        goto fail;
    }
    if (json_is_object(json_object_get(model, "vocab")) &&
        load_id_space(tk, json_object_get(model, "vocab"), added, &err) < 0)
        goto fail;
    if (load_model(tk, model, &err) < 0 || load_added(tk, added, &err) < 0)
        goto fail;
    if (tk_norm_parse(json_object_get(root, "normalizer"), &tk->norm, &tk->n_norm, &err) < 0 ||
        tk_pre_parse(json_object_get(root, "pre_tokenizer"), &tk->pre, &tk->n_pre, &err) < 0 ||
        tk_dec_parse(json_object_get(root, "decoder"), &tk->dec, &tk->n_dec, &err) < 0)
        goto fail;
    json_t *dec = json_object_get(root, "decoder");
    tk->has_decoder = dec && !json_is_null(dec);
    tk->kind_gpt2 = steps_have(tk->pre, tk->n_pre, TK_PRE_BYTELEVEL) ||
                    steps_have(tk->dec, tk->n_dec, TK_DEC_BYTELEVEL);
    load_specials(tk, root, cfg);
    if (added_index_build(tk, f->idx) < 0 || load_gguf_facts(tk) < 0) {
        err = tk_errf("out of memory");
        goto fail;
    }
    json_decref(root);
    json_decref(cfg);
    return tk;
fail:
    if (err) {
        set_err(errp, err);
        err_prefix(errp, "tokenizer.json");
    }
    json_decref(root);
    json_decref(cfg);
    tokenizer_free(tk);
    return NULL;
}

static char *read_whole(const char *path, size_t *len, char **errp, int optional)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        if (!(optional && errno == ENOENT))
            set_err(errp, tk_errf("cannot open '%s': %s", path, strerror(errno)));
        return NULL;
    }
    tk_buf b = { 0 };
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0)
        if (tk_buf_put(&b, chunk, n) < 0) {
            set_err(errp, tk_errf("'%s': out of memory", path));
            goto fail;
        }
    if (ferror(fp)) {
        set_err(errp, tk_errf("cannot read '%s': %s", path, strerror(errno)));
        goto fail;
    }
    fclose(fp);
    if (!b.s && tk_buf_put(&b, "", 0) < 0) {
        set_err(errp, tk_errf("'%s': out of memory", path));
        return NULL;
    }
    *len = b.len;
    return b.s;
fail:
    fclose(fp);
    tk_buf_free(&b);
    return NULL;
}

tokenizer *tokenizer_load_dir(const char *model_dir, char **errp)
{
    char *p1 = tk_errf("%s/tokenizer.json", model_dir), *p2 = tk_errf("%s/tokenizer_config.json", model_dir);
    char *err = NULL, *j = NULL, *c = NULL;
    size_t jl = 0, cl = 0;
    tokenizer *tk = NULL;
    if (!p1 || !p2) {
        set_err(errp, tk_errf("out of memory"));
        goto done;
    }
    if (!(j = read_whole(p1, &jl, errp, 0)))
        goto done;
    c = read_whole(p2, &cl, &err, 1);
    if (!c && err) {
        set_err(errp, err);
        goto done;
    }
    tk = tokenizer_load(j, jl, c, c ? cl : 0, &err);
    if (!tk) {
        set_err(errp, tk_errf("%s: %s", model_dir, err ? err : "cannot load tokenizer"));
        free(err);
    }
done:
    free(p1);
    free(p2);
    free(j);
    free(c);
    return tk;
}

/*-*** Accessors ***/

int tokenizer_bos(const tokenizer *tk) { return (int)tk->bos; }
int tokenizer_eos(const tokenizer *tk) { return (int)tk->eos; }
size_t tokenizer_vocab_size(const tokenizer *tk) { return tk->vocab_size; }

const char *tokenizer_piece(const tokenizer *tk, uint32_t id)
{
    return id < tk->vocab_size ? tk->pieces[id] : NULL;
}

float tokenizer_score(const tokenizer *tk, uint32_t id)
{
    return id < tk->vocab_size ? tk->scores[id] : 0.0f;
}

int tokenizer_type(const tokenizer *tk, uint32_t id)
{
    return id < tk->vocab_size ? tk->types[id] : TOK_TYPE_UNUSED;
}

const char *tokenizer_model_kind(const tokenizer *tk)
{
    return tk->kind_gpt2 ? "gpt2" : "llama";
}

size_t tokenizer_merges(const tokenizer *tk, const char ***merges)
{
    *merges = (const char **)tk->merges;
    return tk->n_merges;
}

void tokenizer_free(tokenizer *tk)
{
    if (!tk)
        return;
    tk_full *f = (tk_full *)tk;
    for (size_t i = 0; tk->pieces && i < tk->vocab_size; i++)
        free(tk->pieces[i]);
    free(tk->pieces);
    free(tk->piece_len);
    free(tk->is_added);
    free(tk->scores);
    free(tk->types);
    for (size_t i = 0; i < tk->n_vkeys; i++)
        free(tk->vkeys[i]);
    free(tk->vkeys);
    tk_smap_free(&tk->vocab);
    tk_pmap_free(&tk->merge_map);
    for (size_t i = 0; i < tk->n_merges; i++)
        free(tk->merges[i]);
    free(tk->merges);
    free(tk->cont_prefix);
    free(tk->eow_suffix);
    for (size_t i = 0; i < tk->n_added; i++)
        free(tk->added[i].content);
    free(tk->added);
    tk_steps_free(tk->norm, tk->n_norm);
    tk_steps_free(tk->pre, tk->n_pre);
    tk_steps_free(tk->dec, tk->n_dec);
    free(f->idx[0].order);
    free(f->idx[1].order);
    free(f);
}
