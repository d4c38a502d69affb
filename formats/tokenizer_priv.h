/* tokenizer_priv — internals shared by formats/tokenizer*.c (not a public API).
 *
 * Owns: the tokenizer struct, growable byte buffers and piece lists, the
 * UTF-8 and Unicode-property helpers, the hash maps behind the vocab and the
 * merges, and the step tables of the normalizer / pre-tokenizer / decoder
 * pipelines. Every function returning int gives 0 on success and -1 on out of
 * memory unless its comment says otherwise.
 */
#ifndef QPIPE_TOKENIZER_PRIV_H
#define QPIPE_TOKENIZER_PRIV_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "tokenizer.h"

/*-*** Buffers and piece lists ***/
typedef struct { char *s; size_t len, cap; } tk_buf;          /* s NUL-terminated when non-NULL */
int  tk_buf_put(tk_buf *b, const void *p, size_t n);
int  tk_buf_putc(tk_buf *b, char c);
int  tk_buf_put_cp(tk_buf *b, uint32_t cp);                   /* UTF-8 encode cp */
void tk_buf_free(tk_buf *b);

typedef struct { char *s; size_t len; int at_origin; } tk_piece;  /* s owned, NUL-terminated */
typedef struct { tk_piece *v; size_t n, cap; } tk_pieces;
int  tk_pieces_add(tk_pieces *p, const char *s, size_t len, int at_origin);  /* copies s */
int  tk_pieces_take(tk_pieces *p, tk_buf *b, int at_origin);  /* moves b's bytes in, resets b */
void tk_pieces_free(tk_pieces *p);

typedef struct { uint32_t *v; size_t n, cap; } tk_ids;
int tk_ids_push(tk_ids *a, uint32_t id);

/* malloc'd printf-formatted message ("out of memory" if that fails, NULL
 * only if even that fails). */
char *tk_errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*-*** UTF-8 and Unicode ***/
/* Decode one code point at s[0..n): returns its length (1..4) and sets *cp,
 * or, for an ill-formed sequence, minus the length of its maximal subpart
 * (Unicode §3.9 "U+FFFD substitution of maximal subparts"), i.e. -1..-3.
 * Overlongs, surrogates and > U+10FFFF are ill-formed. n must be > 0. */
int    tk_utf8_dec(const unsigned char *s, size_t n, uint32_t *cp);
/* Offset of the first ill-formed byte, or n if s[0..n) is valid UTF-8. */
size_t tk_utf8_check(const char *s, size_t n);
/* Append s with each ill-formed maximal subpart replaced by U+FFFD (Rust's
 * String::from_utf8_lossy). */
int    tk_buf_put_lossy(tk_buf *b, const char *s, size_t n);
int    tk_is_whitespace(uint32_t cp);    /* Unicode White_Space (Rust char::is_whitespace) */
int    tk_is_word_char(uint32_t cp);     /* \w: letter, mark, number Nd, connector punctuation */
int    tk_is_numeric(uint32_t cp);       /* Rust char::is_numeric: Nd, Nl, No */
int    tk_is_punct(uint32_t cp);         /* ASCII punctuation or Unicode P* */

/* GPT-2 bytes↔unicode table (openai/gpt-2 src/encoder.py bytes_to_unicode). */
uint32_t tk_byte_to_cp(uint8_t b);
int      tk_cp_to_byte(uint32_t cp);     /* -1 when cp is not in the table */

/*-*** Hash maps ***/
/* String → u32 map; keys are borrowed (must outlive the map). */
typedef struct { const char *key; uint32_t len, val; } tk_smap_slot;
typedef struct { tk_smap_slot *slots; size_t mask, count; } tk_smap;
int  tk_smap_init(tk_smap *m, size_t expected);
int  tk_smap_put(tk_smap *m, const char *key, size_t len, uint32_t val);   /* overwrites */
int  tk_smap_get(const tk_smap *m, const char *key, size_t len, uint32_t *val);  /* 1 found, 0 not */
void tk_smap_free(tk_smap *m);

/* (left id, right id) → (rank, merged id). */
typedef struct { uint64_t key; uint32_t rank, id; } tk_pmap_slot;   /* key 0 = empty (stored +1) */
typedef struct { tk_pmap_slot *slots; size_t mask, count; } tk_pmap;
int  tk_pmap_init(tk_pmap *m, size_t expected);
int  tk_pmap_put(tk_pmap *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t id);  /* overwrites */
const tk_pmap_slot *tk_pmap_get(const tk_pmap *m, uint32_t a, uint32_t b);     /* NULL if absent */
void tk_pmap_free(tk_pmap *m);

/*-*** Pipeline steps ***/
typedef enum { TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_NFC, TK_NORM_NFD, TK_NORM_NFKC,
               TK_NORM_NFKD, TK_NORM_LOWER, TK_NORM_STRIP, TK_NORM_STRIP_ACCENTS } tk_norm_kind;
typedef enum { TK_PRE_SPLIT, TK_PRE_BYTELEVEL, TK_PRE_METASPACE, TK_PRE_DIGITS,
               TK_PRE_WSPLIT, TK_PRE_WHITESPACE, TK_PRE_PUNCT } tk_pre_kind;
typedef enum { TK_DEC_REPLACE, TK_DEC_BYTEFALLBACK, TK_DEC_FUSE, TK_DEC_STRIP,
               TK_DEC_METASPACE, TK_DEC_BYTELEVEL } tk_dec_kind;
/* HF SplitDelimiterBehavior */
typedef enum { TK_SPLIT_REMOVED, TK_SPLIT_ISOLATED, TK_SPLIT_MERGED_PREV,
               TK_SPLIT_MERGED_NEXT, TK_SPLIT_CONTIGUOUS } tk_split_behavior;
typedef enum { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER } tk_prepend_scheme;

/* One step of any of the three pipelines; which fields matter depends on kind. */
typedef struct {
    int kind;                 /* tk_norm_kind, tk_pre_kind or tk_dec_kind */
    char *pat; size_t pat_len;     /* literal pattern (Replace/Split String, Prepend text, Metaspace char) */
    char *rep; size_t rep_len;     /* replacement content (Replace) */
    pcre2_code *re;           /* regex pattern (Split/Replace Regex, ByteLevel's GPT-2 regex) */
    int behavior, invert;     /* Split / Punctuation */
    int flag_a, flag_b;       /* Strip: left/right (norm) or start/stop counts (dec);
                                 ByteLevel: add_prefix_space/use_regex; Metaspace: split/-;
                                 Digits: individual_digits */
    int prepend_scheme;       /* Metaspace */
} tk_step;

/* Parse a normalizer / pre_tokenizer / decoder JSON value (NULL or JSON null
 * = none) into a flat step list (Sequences flattened). -1 with *errp. */
int tk_norm_parse(json_t *j, tk_step **steps, size_t *n, char **errp);
int tk_pre_parse(json_t *j, tk_step **steps, size_t *n, char **errp);
int tk_dec_parse(json_t *j, tk_step **steps, size_t *n, char **errp);
void tk_steps_free(tk_step *steps, size_t n);

/* Run the normalizer steps over s[0..len) into *out (reset first). */
int tk_norm_apply(const tk_step *steps, size_t n, const char *s, size_t len, tk_buf *out);
/* Run the pre-tokenizer steps: *pieces holds the input pieces and receives
 * the output pieces (empty ones dropped, as HF does). */
int tk_pre_apply(const tk_step *steps, size_t n, tk_pieces *pieces);
/* Run the decoder steps over the token strings in *toks (in place). */
int tk_dec_apply(const tk_step *steps, size_t n, tk_pieces *toks);

/*-*** The tokenizer ***/
typedef struct {
    char *content; size_t len;
    uint32_t id;
    int special, lstrip, rstrip, normalized, single_word;
} tk_added;

struct tokenizer {
    /* id → string; vocab_size entries, NULL for unassigned ids */
    char    **pieces;
    uint32_t *piece_len;
    size_t    vocab_size;
    unsigned char *is_added;      /* per id: 0, 1 added, 2 added+special */
    float    *scores;             /* per id, GGUF score */
    unsigned char *types;         /* per id, GGUF type */
    tk_smap   vocab;              /* model vocab: string → id, keys in vkeys */
    char    **vkeys;              /* the model vocab's strings (owned) */
    size_t    n_vkeys;

    /* BPE model */
    tk_pmap   merge_map;
    char    **merges;             /* "a b" strings, rank order */
    size_t    n_merges;
    int64_t   unk_id;             /* -1 if none */
    int       byte_fallback, fuse_unk, ignore_merges;
    char     *cont_prefix, *eow_suffix;   /* NULL if none */
    int64_t   byte_ids[256];      /* "<0xXX>" ids, -1 if absent */

    /* added tokens, in tokenizer.json order (their matching index lives in
     * tokenizer.c) */
    tk_added *added;
    size_t    n_added;

    tk_step  *norm; size_t n_norm;
    tk_step  *pre;  size_t n_pre;
    tk_step  *dec;  size_t n_dec;
    int       has_decoder;

    int64_t   bos, eos;
    int       add_bos;
    int       kind_gpt2;          /* 0 "llama", 1 "gpt2" */
};

/* BPE-encode one pre-tokenized piece, appending ids. -1 on OOM. */
int tk_bpe_encode(const tokenizer *tk, const char *s, size_t len, tk_ids *out);

#endif
