/* tokenizer_bpe — the BPE model: one pre-tokenized piece → token ids.
 *
 * Follows HuggingFace tokenizers' BPE (tokenizers/src/models/bpe/model.rs
 * merge_word, word.rs merge_all): the piece is split into characters, each
 * looked up in the vocab (continuing_subword_prefix on all but the first,
 * end_of_word_suffix on the last); a missing character becomes its
 * "<0xXX>" byte pieces under byte_fallback, else the unk token (runs fused
 * under fuse_unk). Then adjacent pairs are merged by ascending merge rank,
 * ties to the leftmost pair, with a binary heap of candidate merges whose
 * stale entries are skipped: O(n log n) for an n-character piece.
 */
#include <stdlib.h>
#include <string.h>
#include "tokenizer_priv.h"

typedef struct {
    uint32_t id;
    int32_t  prev, next;   /* neighbour symbol indices, -1 at the ends */
    uint32_t len;          /* bytes of the piece covered; 0 = merged away */
} bpe_sym;

typedef struct { uint32_t rank, pos, id; } bpe_cand;   /* merge sym[pos] with its next into id */

typedef struct { bpe_cand *v; size_t n, cap; } bpe_heap;

static int cand_less(const bpe_cand *a, const bpe_cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(bpe_heap *h, bpe_cand c)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        bpe_cand *v = realloc(h->v, cap * sizeof *v);
        if (!v)
            return -1;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {                         /* sift up */
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h->v[p]))
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = c;
    return 0;
}

static bpe_cand heap_pop(bpe_heap *h)
{
    bpe_cand top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {                              /* sift down */
        size_t l = 2 * i + 1, m = i;
        const bpe_cand *best = &last;
        if (l < h->n && cand_less(&h->v[l], best)) { m = l; best = &h->v[l]; }
        if (l + 1 < h->n && cand_less(&h->v[l + 1], best)) m = l + 1;
        if (m == i)
            break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (h->n)
        h->v[i] = last;
    return top;
}

typedef struct { bpe_sym *v; size_t n, cap; } bpe_word;

static int word_add(bpe_word *w, uint32_t id, uint32_t len)
{
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        bpe_sym *v = realloc(w->v, cap * sizeof *v);
        if (!v)
            return -1;
        w->v = v;
        w->cap = cap;
    }
    int32_t i = (int32_t)w->n;
    w->v[w->n++] = (bpe_sym){ id, i - 1, -1, len };
    if (i > 0)
        w->v[i - 1].next = i;
    return 0;
}

/* Vocab lookup of one character with the optional prefix/suffix attached. */
static int lookup_char(const tokenizer *tk, const char *c, size_t clen, int first, int last,
                       uint32_t *id, tk_buf *scratch)
{
    if ((first || !tk->cont_prefix) && (!last || !tk->eow_suffix))
        return tk_smap_get(&tk->vocab, c, clen, id);
    scratch->len = 0;
    if (!first && tk->cont_prefix && tk_buf_put(scratch, tk->cont_prefix, strlen(tk->cont_prefix)) < 0)
        return -1;
    if (tk_buf_put(scratch, c, clen) < 0)
        return -1;
    if (last && tk->eow_suffix && tk_buf_put(scratch, tk->eow_suffix, strlen(tk->eow_suffix)) < 0)
        return -1;
    return tk_smap_get(&tk->vocab, scratch->s, scratch->len, id);
}

/* Characters → initial symbols (model.rs merge_word, before merge_all). */
static int word_init(const tokenizer *tk, const char *s, size_t len, bpe_word *w)
{
    tk_buf scratch = { 0 };
    int have_unk = 0, rc = -1;
    uint32_t unk_len = 0;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        int k = tk_utf8_dec((const unsigned char *)s + i, len - i, &cp);
        size_t clen = k > 0 ? (size_t)k : 1;   /* input is valid UTF-8; be safe anyway */
        uint32_t id;
        int found = lookup_char(tk, s + i, clen, i == 0, i + clen >= len, &id, &scratch);
        if (found < 0)
            goto out;
        if (found) {
            if (have_unk && word_add(w, (uint32_t)tk->unk_id, unk_len) < 0)
                goto out;
            have_unk = 0;
            if (word_add(w, id, (uint32_t)clen) < 0)
                goto out;
        } else {
            int all_bytes = tk->byte_fallback;
            for (size_t b = 0; all_bytes && b < clen; b++)
                all_bytes = tk->byte_ids[(unsigned char)s[i + b]] >= 0;
            if (all_bytes) {
                /* as in HF, a pending unk is not flushed before byte pieces */
                for (size_t b = 0; b < clen; b++)
                    if (word_add(w, (uint32_t)tk->byte_ids[(unsigned char)s[i + b]], 1) < 0)
                        goto out;
            } else if (tk->unk_id >= 0) {
                if (have_unk && tk->fuse_unk) {
                    unk_len += (uint32_t)clen;
                } else {
                    if (have_unk && word_add(w, (uint32_t)tk->unk_id, unk_len) < 0)
                        goto out;
                    have_unk = 1;
                    unk_len = (uint32_t)clen;
                }
            }
            /* no unk token: the character is dropped, as HF does */
        }
        i += clen;
    }
    if (have_unk && word_add(w, (uint32_t)tk->unk_id, unk_len) < 0)
        goto out;
    rc = 0;
out:
    tk_buf_free(&scratch);
    return rc;
}

/* Push the candidate merge of sym[pos] with its right neighbour, if any. */
static int push_pair(const tokenizer *tk, const bpe_word *w, int32_t pos, bpe_heap *h)
{
    if (pos < 0 || w->v[pos].next < 0)
        return 0;
    const tk_pmap_slot *m = tk_pmap_get(&tk->merge_map, w->v[pos].id, w->v[w->v[pos].next].id);
    if (!m)
        return 0;
    return heap_push(h, (bpe_cand){ m->rank, (uint32_t)pos, m->id });
}

/* word.rs merge_all: lowest rank first, leftmost on ties. */
static int word_merge_all(const tokenizer *tk, bpe_word *w)
{
    bpe_heap h = { 0 };
    for (size_t i = 0; i + 1 < w->n; i++)
        if (push_pair(tk, w, (int32_t)i, &h) < 0)
            goto oom;
    while (h.n) {
        bpe_cand top = heap_pop(&h);
        bpe_sym *left = &w->v[top.pos];
        if (left->len == 0 || left->next < 0)
            continue;                               /* merged away, or last symbol */
        int32_t rpos = left->next;
        const tk_pmap_slot *m = tk_pmap_get(&tk->merge_map, left->id, w->v[rpos].id);
        if (!m || m->id != top.id)
            continue;                               /* stale entry */
        bpe_sym right = w->v[rpos];
        left->id = top.id;
        left->len += right.len;
        left->next = right.next;
        w->v[rpos].len = 0;
        if (right.next >= 0)
            w->v[right.next].prev = (int32_t)top.pos;
        if (push_pair(tk, w, left->prev, &h) < 0 || push_pair(tk, w, (int32_t)top.pos, &h) < 0)
            goto oom;
    }
    free(h.v);
    return 0;
oom:
    free(h.v);
    return -1;
}

int tk_bpe_encode(const tokenizer *tk, const char *s, size_t len, tk_ids *out)
{
    if (len == 0)
        return 0;
    uint32_t whole;
    if (tk->ignore_merges && tk_smap_get(&tk->vocab, s, len, &whole))
        return tk_ids_push(out, whole);
    bpe_word w = { 0 };
    int rc = -1;
    if (word_init(tk, s, len, &w) < 0 || word_merge_all(tk, &w) < 0)
        goto out;
    for (size_t i = 0; i < w.n; i++)
        if (w.v[i].len && tk_ids_push(out, w.v[i].id) < 0)
            goto out;
    rc = 0;
out:
    free(w.v);
    return rc;
}
