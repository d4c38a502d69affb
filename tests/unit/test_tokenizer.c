/* test_tokenizer — formats/tokenizer against independent references:
 * the ts3m ids of eval.txt and tokenizer-cases.json (made with HF tokenizers /
 * tokenizers.js), llama.cpp's GGUF vocab of ts3m, and hand-built GPT-2
 * byte-level tokenizers whose ids are derived by hand from the BPE
 * definition (Sennrich et al. 2016; GPT-2's encoder.py) in the comments. */
#include <jansson.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "testlib.h"
#include "tokenizer.h"

#define TS3M "tests/data/ts3m-bf16"


static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static tokenizer *ts3m(void)
{
    char *err = NULL;
    tokenizer *tk = tokenizer_load_dir(TS3M, &err);
    if (!tk)
        fprintf(stderr, "  load: %s\n", err ? err : "?");
    free(err);
    return tk;
}

/* Encode s (NUL-terminated) and compare with want[0..n). */
static int ids_equal(const tokenizer *tk, const char *s, int add_bos, const uint32_t *want, size_t n)
{
    uint32_t *ids = NULL;
    char *err = NULL;
    int64_t got = tokenizer_encode(tk, s, strlen(s), add_bos, &ids, &err);
    int ok = got == (int64_t)n && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    if (!ok) {
        fprintf(stderr, "  '%s': got", s);
        for (int64_t i = 0; i < got; i++)
            fprintf(stderr, " %u", ids[i]);
        fprintf(stderr, "%s%s\n", err ? " error: " : "", err ? err : "");
    }
    free(ids);
    free(err);
    return ok;
}

/* decode(encode(s)) == s; special tokens (the BOS) skipped or kept. */
static int round_trips_sp(const tokenizer *tk, const char *s, size_t len, int skip_special)
{
    uint32_t *ids = NULL;
    char *err = NULL;
    int64_t n = tokenizer_encode(tk, s, len, 1, &ids, &err);
    char *back = n >= 0 ? tokenizer_decode(tk, ids, (size_t)n, skip_special) : NULL;
    int ok = back && strlen(back) == len && memcmp(back, s, len) == 0;
    if (!ok && back) {
        size_t i = 0;
        while (i < len && back[i] == s[i])
            i++;
        fprintf(stderr, "  round trip differs at byte %zu of %zu (got %zu bytes)\n", i, len, strlen(back));
    }
    free(ids);
    free(err);
    free(back);
    return ok;
}

static int round_trips(const tokenizer *tk, const char *s, size_t len)
{
    return round_trips_sp(tk, s, len, 1);
}

/*-*** 1. eval.txt against the reference ids; round trips ***/

TEST(eval_txt_matches_reference_ids)
{
    tokenizer *tk = ts3m();
    size_t tlen = 0, rlen = 0;
    char *text = tl_slurp("tests/data/text/eval.txt", &tlen);
    unsigned char *ref = (unsigned char *)tl_slurp("tests/data/text/eval.tokens.u32", &rlen);
    CHECK(tk && text && ref && rlen % 4 == 0);
    if (!tk || !text || !ref)
        goto out;
    uint32_t *ids = NULL;
    char *err = NULL;
    double t0 = now_s();
    int64_t n = tokenizer_encode(tk, text, tlen, 1, &ids, &err);
    double dt = now_s() - t0;
    fprintf(stderr, "  eval.txt: %zu bytes -> %lld ids in %.3f s\n", tlen, (long long)n, dt);
    CHECK_MSG(n == (int64_t)(rlen / 4), "%lld ids, reference %zu", (long long)n, rlen / 4);
    size_t first_diff = (size_t)-1;
    for (size_t i = 0; n > 0 && i < rlen / 4 && i < (size_t)n; i++) {
        uint32_t want = (uint32_t)ref[4 * i] | (uint32_t)ref[4 * i + 1] << 8 |
                        (uint32_t)ref[4 * i + 2] << 16 | (uint32_t)ref[4 * i + 3] << 24;
        if (ids[i] != want) {
            first_diff = i;
            fprintf(stderr, "  first difference at %zu: %u vs %u\n", i, ids[i], want);
            break;
        }
    }
    CHECK(first_diff == (size_t)-1);
    CHECK(n > 0 && ids[0] == 1);
    CHECK_MSG(dt < 1.0, "encode took %.3f s", dt);
    free(ids);
    free(err);
out:
    free(text);
    free(ref);
    tokenizer_free(tk);
}

TEST(eval_and_calib_round_trip)
{
    tokenizer *tk = ts3m();
    const char *files[] = { "tests/data/text/eval.txt", "tests/data/text/calib.txt" };
    CHECK(tk);
    for (int i = 0; tk && i < 2; i++) {
        size_t len = 0;
        char *text = tl_slurp(files[i], &len);
        CHECK(text && len > 1000);
        CHECK_MSG(text && round_trips(tk, text, len), "%s", files[i]);
        free(text);
    }
    tokenizer_free(tk);
}

/*-*** 2. tokenizer-cases.json ***/

TEST(recorded_cases_give_recorded_ids)
{
    tokenizer *tk = ts3m();
    json_error_t je;
    json_t *root = json_load_file("tests/data/text/tokenizer-cases.json", 0, &je);
    json_t *cases = json_object_get(root, "cases"), *c;
    size_t i;
    CHECK(tk && json_array_size(cases) >= 20);
    json_array_foreach(cases, i, c) {
        if (!tk)
            break;
        const char *text = json_string_value(json_object_get(c, "text"));
        const char *decoded = json_string_value(json_object_get(c, "decoded"));
        json_t *jids = json_object_get(c, "ids");
        size_t n = json_array_size(jids);
        uint32_t *want = calloc(n + 1, sizeof *want);
        for (size_t k = 0; k < n; k++)
            want[k] = (uint32_t)json_integer_value(json_array_get(jids, k));
        CHECK_MSG(ids_equal(tk, text, 1, want, n), "case %zu", i);
        /* decoded = decode(ids without BOS, skip_special_tokens) */
        char *back = tokenizer_decode(tk, want + 1, n - 1, 1);
        CHECK_MSG(back && strcmp(back, decoded) == 0, "case %zu decodes to '%s', want '%s'", i,
                  back ? back : "(null)", decoded);
        free(back);
        free(want);
    }
    json_decref(root);
    tokenizer_free(tk);
}

/*-*** 3. errors and empty input ***/

TEST(invalid_utf8_is_an_error)
{
    tokenizer *tk = ts3m();
    static const struct { const char *s; size_t len; size_t at; } bad[] = {
        { "ab\xFFz", 4, 2 },              /* never-valid byte */
        { "a\xC3", 2, 1 },                /* truncated 2-byte sequence */
        { "xy\xC0\xAF", 4, 2 },           /* overlong '/' */
        { "\xED\xA0\x80", 3, 0 },         /* surrogate U+D800 */
        { "ok \xF4\x90\x80\x80", 7, 3 },  /* > U+10FFFF */
        { "\x80", 1, 0 },                 /* lone continuation */
        { "caf\xC3\xA9 \xE6\x97", 8, 6 }, /* valid é, then a truncated 3-byte */
    };
    CHECK(tk);
    for (size_t i = 0; tk && i < sizeof bad / sizeof bad[0]; i++) {
        uint32_t *ids = (uint32_t *)&ids;   /* must be reset to NULL */
        char *err = NULL, want[64];
        int64_t n = tokenizer_encode(tk, bad[i].s, bad[i].len, 1, &ids, &err);
        snprintf(want, sizeof want, "invalid UTF-8 at byte %zu", bad[i].at);
        CHECK_MSG(n == -1 && ids == NULL && err && strcmp(err, want) == 0, "case %zu: %lld '%s'", i,
                  (long long)n, err ? err : "");
        free(err);
    }
    tokenizer_free(tk);
}

TEST(empty_text_gives_just_bos)
{
    tokenizer *tk = ts3m();
    uint32_t bos = 1;
    CHECK(tk);
    if (!tk)
        return;
    CHECK(ids_equal(tk, "", 1, &bos, 1));
    CHECK(ids_equal(tk, "", 0, NULL, 0));
    uint32_t space[] = { 1, 948, 467, 800 };
    CHECK(ids_equal(tk, " space", 1, space, 4));
    uint32_t *ids = NULL;
    CHECK(tokenizer_encode(tk, "", 0, 0, &ids, NULL) == 0 && ids != NULL);
    free(ids);
    char *s = tokenizer_decode(tk, &bos, 1, 1);
    CHECK(s && s[0] == '\0');
    free(s);
    s = tokenizer_decode(tk, &bos, 1, 0);
    CHECK(s && strcmp(s, "<s>") == 0);
    free(s);
    uint32_t bad = 1024;
    CHECK(tokenizer_decode(tk, &bad, 1, 0) == NULL);
    tokenizer_free(tk);
}

TEST(bad_tokenizer_json_is_refused)
{
    static const char *bad[] = {
        "{",                                                        /* syntax */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"a\": 1}, \"merges\": []}}", /* dup key */
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
        "{\"normalizer\": {\"type\": \"Precompiled\"}, \"model\": {\"vocab\": {}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 2000000000}, \"merges\": []}}",
        ("{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}}, "
         "\"model\": {\"vocab\": {}, \"merges\": []}}"),
    };
    static const char *why[] = { "line", "duplicate", "Unigram", "missing", "merged token", "Precompiled", "bad id",
                                 "regex" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *err = NULL;
        tokenizer *tk = tokenizer_load(bad[i], strlen(bad[i]), NULL, 0, &err);
        CHECK_MSG(!tk && err && strstr(err, why[i]), "case %zu: %s", i, err ? err : "(no error)");
        tokenizer_free(tk);
        free(err);
    }
    char *err = NULL;
    CHECK(!tokenizer_load_dir("tests/data/no-such-dir", &err) && err && strstr(err, "tokenizer.json"));
    free(err);
}

/*-*** GGUF facts: against llama.cpp's own conversion of ts3m ***/

TEST(gguf_vocab_matches_llama_cpp)
{
    tokenizer *tk = ts3m();
    json_error_t je;
    json_t *ref = json_load_file("tests/data/tokenizer/ts3m-gguf-vocab.json", 0, &je);
    json_t *toks = json_object_get(ref, "tokens"), *scores = json_object_get(ref, "scores");
    json_t *types = json_object_get(ref, "token_type");
    CHECK(tk && json_array_size(toks) == 1024);
    if (!tk || !ref)
        goto out;
    CHECK(strcmp(tokenizer_model_kind(tk), json_string_value(json_object_get(ref, "model"))) == 0);
    CHECK(tokenizer_vocab_size(tk) == json_array_size(toks));
    CHECK(tokenizer_bos(tk) == json_integer_value(json_object_get(ref, "bos_token_id")));
    CHECK(tokenizer_eos(tk) == json_integer_value(json_object_get(ref, "eos_token_id")));
    size_t bad_tok = 0, bad_score = 0, bad_type = 0;
    for (uint32_t id = 0; id < 1024; id++) {
        const char *p = tokenizer_piece(tk, id);
        bad_tok += !p || strcmp(p, json_string_value(json_array_get(toks, id))) != 0;
        bad_score += tokenizer_score(tk, id) != (float)json_real_value(json_array_get(scores, id));
        bad_type += tokenizer_type(tk, id) != json_integer_value(json_array_get(types, id));
    }
    CHECK_MSG(bad_tok == 0 && bad_score == 0 && bad_type == 0, "tokens %zu, scores %zu, types %zu differ",
              bad_tok, bad_score, bad_type);
    CHECK(tokenizer_piece(tk, 1024) == NULL);
    const char **merges = NULL;
    size_t nm = tokenizer_merges(tk, &merges);
    CHECK(nm == 880 && strcmp(merges[0], "h e") == 0 && strcmp(merges[1], "\xE2\x96\x81 t") == 0);
out:
    json_decref(ref);
    tokenizer_free(tk);
}

/*-*** Metaspace variants of ts3m (how newer HF exports write Llama-2) ***/

/* ts3m's tokenizer.json with the Prepend/Replace normalizer replaced by a
 * Metaspace pre-tokenizer and decoder. */
static tokenizer *ts3m_metaspace(const char *scheme, int split)
{
    json_error_t je;
    json_t *root = json_load_file(TS3M "/tokenizer.json", 0, &je);
    if (!root)
        return NULL;
    json_object_set_new(root, "normalizer", json_null());
    json_t *ms = json_pack("{s:s, s:s, s:s, s:b}", "type", "Metaspace", "replacement", "\xE2\x96\x81",
                           "prepend_scheme", scheme, "split", split);
    json_object_set(root, "pre_tokenizer", ms);
    json_object_set_new(root, "decoder",
                        json_pack("{s:s, s:[o, {s:s}, {s:s}]}", "type", "Sequence", "decoders", ms,
                                  "type", "ByteFallback", "type", "Fuse"));
    char *txt = json_dumps(root, 0);
    json_decref(root);
    char *err = NULL;
    tokenizer *tk = tokenizer_load(txt, strlen(txt), NULL, 0, &err);
    if (!tk)
        fprintf(stderr, "  load: %s\n", err);
    free(err);
    free(txt);
    return tk;
}

TEST(metaspace_variants_match_reference)
{
    size_t tlen = 0, rlen = 0;
    char *text = tl_slurp("tests/data/text/eval.txt", &tlen);
    unsigned char *ref = (unsigned char *)tl_slurp("tests/data/text/eval.tokens.u32", &rlen);
    static const char *schemes[] = { "first", "always" };
    CHECK(text && ref);
    for (int v = 0; text && ref && v < 4; v++) {
        tokenizer *tk = ts3m_metaspace(schemes[v & 1], v >> 1);
        CHECK(tk);
        if (!tk)
            continue;
        uint32_t *ids = NULL;
        int64_t n = tokenizer_encode(tk, text, tlen, 1, &ids, NULL);
        int same = n == (int64_t)(rlen / 4);
        for (size_t i = 0; same && i < (size_t)n; i++)
            same = ids[i] == ((uint32_t)ref[4 * i] | (uint32_t)ref[4 * i + 1] << 8 |
                              (uint32_t)ref[4 * i + 2] << 16 | (uint32_t)ref[4 * i + 3] << 24);
        CHECK_MSG(same, "variant %d", v);
        CHECK(round_trips(tk, text, tlen));
        /* HF Metaspace: after a special token, "first" does not prepend
         * (the piece is not at offset 0), "always" does: "▁li" merges
         * (▁ l) rank 25 then (▁l i) rank 185 into 412. A leading space is
         * itself the prefix: " space" → "▁space" → ▁sp ace, where the
         * Prepend normalizer of ts3m gives "▁▁space" → ▁ ▁sp ace. */
        uint32_t first[] = { 1, 1, 959, 955 }, always[] = { 1, 1, 412 };
        uint32_t space[] = { 1, 467, 800 };
        CHECK_MSG((v & 1) ? ids_equal(tk, "<s>li", 1, always, 3) : ids_equal(tk, "<s>li", 1, first, 4),
                  "variant %d", v);
        CHECK(ids_equal(tk, " space", 1, space, 3));
        free(ids);
        tokenizer_free(tk);
    }
    free(text);
    free(ref);
}

/*-*** 4. GPT-2 byte-level family, hand-built ***/

/* bytes_to_unicode as openai/gpt-2 src/encoder.py writes it: the printable
 * Latin-1 bytes keep their code point, the rest get 256, 257, ... in byte
 * order. Written here independently of the library's closed form. */
static void gpt2_byte_chars(uint32_t cp[256])
{
    int keep[256] = { 0 };
    for (int b = '!'; b <= '~'; b++) keep[b] = 1;
    for (int b = 0xA1; b <= 0xAC; b++) keep[b] = 1;
    for (int b = 0xAE; b <= 0xFF; b++) keep[b] = 1;
    uint32_t n = 0;
    for (int b = 0; b < 256; b++)
        cp[b] = keep[b] ? (uint32_t)b : 256 + n++;
}

static void put_utf8(char **p, uint32_t c)
{
    unsigned char *u = (unsigned char *)*p;
    if (c < 0x80) { *u++ = (unsigned char)c; }
    else if (c < 0x800) { *u++ = (unsigned char)(0xC0 | c >> 6); *u++ = (unsigned char)(0x80 | (c & 0x3F)); }
    else if (c < 0x10000) {
        *u++ = (unsigned char)(0xE0 | c >> 12); *u++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        *u++ = (unsigned char)(0x80 | (c & 0x3F));
    } else {
        *u++ = (unsigned char)(0xF0 | c >> 18); *u++ = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
        *u++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F)); *u++ = (unsigned char)(0x80 | (c & 0x3F));
    }
    *p = (char *)u;
}

/* The hand-built vocab: ids 0..255 are the 256 byte characters (id = byte
 * value), then the merges' results in rank order. "Ġ" is byte 0x20. */
static const char *const G_MERGES[] = {
    "\xC4\xA0 t",            /* 0: Ġ t    → Ġt    256 */
    "h e",                   /* 1: h e    → he    257 */
    "l l",                   /* 2: l l    → ll    258 */
    "\xC4\xA0t he",          /* 3: Ġt he  → Ġthe  259 */
    "he ll",                 /* 4: he ll  → hell  260 */
    "o r",                   /* 5: o r    → or    261 */
    "l o",                   /* 6: l o    → lo    262 */
    "1 2",                   /* 7: 1 2    → 12    263 */
    "3 4",                   /* 8: 3 4    → 34    264 */
};
enum { G_GT = 256, G_HE, G_LL, G_GTHE, G_HELL, G_OR, G_LO, G_12, G_34,
       G_WORLD = 265, G_EOT = 266, G_MASK = 267, G_HI = 268, G_HELLO = 269 };

/* pre: "gpt2" (ByteLevel with its own regex) or "llama3" (Split with the
 * Llama-3 regex, then ByteLevel without regex). */
static tokenizer *gpt2_build(const char *pre, int ignore_merges, const char *normalizer)
{
    uint32_t cp[256];
    gpt2_byte_chars(cp);
    json_t *vocab = json_object();
    for (int b = 0; b < 256; b++) {
        char buf[8], *p = buf;
        put_utf8(&p, cp[b]);
        *p = '\0';
        json_object_set_new(vocab, buf, json_integer(b));
    }
    json_t *merges = json_array();
    for (size_t r = 0; r < sizeof G_MERGES / sizeof G_MERGES[0]; r++) {
        char cat[32];
        const char *sp = strchr(G_MERGES[r], ' ');
        snprintf(cat, sizeof cat, "%.*s%s", (int)(sp - G_MERGES[r]), G_MERGES[r], sp + 1);
        json_object_set_new(vocab, cat, json_integer(256 + (json_int_t)r));
        json_array_append_new(merges, json_string(G_MERGES[r]));
    }
    json_object_set_new(vocab, "\xC4\xA0world", json_integer(G_WORLD));   /* reachable only whole */
    json_object_set_new(vocab, "hello", json_integer(G_HELLO));           /* ditto, for normalized added */
    json_t *pre_tok;
    if (!strcmp(pre, "llama3"))
        pre_tok = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}",
            "type", "Sequence", "pretokenizers",
            "type", "Split", "pattern", "Regex",
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
            "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
            "behavior", "Isolated", "invert", 0,
            "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0);
    else
        pre_tok = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                            "trim_offsets", 1, "use_regex", 1);
    json_t *added = json_pack("[{s:i, s:s, s:b, s:b, s:b, s:b, s:b},"
                              " {s:i, s:s, s:b, s:b, s:b, s:b, s:b},"
                              " {s:i, s:s, s:b, s:b, s:b, s:b, s:b}]",
        "id", G_EOT, "content", "<|endoftext|>", "single_word", 0, "lstrip", 0, "rstrip", 0,
        "normalized", 0, "special", 1,
        "id", G_MASK, "content", "<mask>", "single_word", 0, "lstrip", 1, "rstrip", 0,
        "normalized", 0, "special", 1,
        "id", G_HI, "content", "hi", "single_word", 1, "lstrip", 0, "rstrip", 0,
        "normalized", 0, "special", 0);
    if (normalizer)   /* plus a normalized added token matched after normalization */
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", G_HELLO,
            "content", "hello", "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 1, "special", 0));
    json_t *root = json_pack("{s:s, s:o, s:o, s:o, s:o, s:{s:s, s:b, s:b, s:b}, s:{s:s, s:o, s:o, s:b, s:b}}",
        "version", "1.0", "added_tokens", added,
        "normalizer", normalizer ? json_pack("{s:s}", "type", normalizer) : json_null(),
        "pre_tokenizer", pre_tok, "post_processor", json_null(),
        "decoder", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1,
        "model", "type", "BPE", "vocab", vocab, "merges", merges, "byte_fallback", 0,
        "ignore_merges", ignore_merges);
    char *txt = json_dumps(root, 0);
    json_decref(root);
    char *err = NULL;
    tokenizer *tk = txt ? tokenizer_load(txt, strlen(txt), NULL, 0, &err) : NULL;
    if (!tk)
        fprintf(stderr, "  gpt2 load: %s\n", err ? err : "?");
    free(err);
    free(txt);
    return tk;
}

#define IDS(...) ((const uint32_t[]){ __VA_ARGS__ }), sizeof((const uint32_t[]){ __VA_ARGS__ }) / sizeof(uint32_t)

TEST(gpt2_bpe_ids_derived_by_hand)
{
    tokenizer *tk = gpt2_build("gpt2", 0, NULL);
    CHECK(tk);
    if (!tk)
        return;
    CHECK(strcmp(tokenizer_model_kind(tk), "gpt2") == 0);
    CHECK(tokenizer_bos(tk) == -1 && tokenizer_eos(tk) == G_EOT);
    /* "hello the world": regex pieces "hello" " the" " world".
     * hello: pairs (h e)1 (l l)2 (l o)6 → he l l o → he ll o, new pair
     *   (he ll)4 → hell o; the stale (l o) is skipped → hell o.
     * Ġthe: (Ġ t)0 → Ġt h e; (h e)1 → Ġt he; (Ġt he)3 → Ġthe.
     * Ġworld: only (o r)5 → Ġ w or l d ("Ġworld" is in the vocab but
     *   unreachable by merges). No BOS: the gpt2 kind does not add one. */
    CHECK(ids_equal(tk, "hello the world", 1, IDS(G_HELL, 'o', G_GTHE, ' ', 'w', G_OR, 'l', 'd')));
    /* equal ranks: leftmost first. "lll" → (l l) at 0 → ll l */
    CHECK(ids_equal(tk, "lll", 0, IDS(G_LL, 'l')));
    /* "a  b": "a", " " (\s+(?!\S) backs off one space), " b" */
    CHECK(ids_equal(tk, "a  b", 0, IDS('a', ' ', ' ', 'b')));
    /* " 12345" is one piece " ?\p{N}+": Ġ 1 2 3 4 5 → (1 2)7 (3 4)8 */
    CHECK(ids_equal(tk, " 12345", 0, IDS(' ', G_12, G_34, '5')));
    /* contractions split off; newline runs: "a", "\n" (backs off), "\n", "b" */
    CHECK(ids_equal(tk, "it's", 0, IDS('i', 't', '\'', 's')));
    CHECK(ids_equal(tk, "a\n\nb", 0, IDS('a', '\n', '\n', 'b')));
    /* non-ASCII: é is C3 A9, each byte its own character/id */
    CHECK(ids_equal(tk, "\xC3\xA9", 0, IDS(0xC3, 0xA9)));
    /* added tokens: a literal "<|endoftext|>" is the special token */
    CHECK(ids_equal(tk, "he<|endoftext|>he", 0, IDS(G_HE, G_EOT, G_HE)));
    /* lstrip: the space before <mask> goes into the token */
    CHECK(ids_equal(tk, "a <mask> b", 0, IDS('a', G_MASK, ' ', 'b')));
    /* single_word "hi": a whole word matches, inside "this" it does not */
    CHECK(ids_equal(tk, "hi", 0, IDS(G_HI)));
    CHECK(ids_equal(tk, "this", 0, IDS('t', 'h', 'i', 's')));
    CHECK(ids_equal(tk, "hi!", 0, IDS(G_HI, '!')));
    /* decode: special skipped or kept; "hi" is not special */
    char *s = tokenizer_decode(tk, IDS(G_HELL, 'o', G_EOT, G_GTHE, G_HI), 1);
    CHECK(s && strcmp(s, "hello thehi") == 0);
    free(s);
    s = tokenizer_decode(tk, IDS(G_HELL, G_EOT, G_WORLD), 0);
    CHECK(s && strcmp(s, "hell<|endoftext|> world") == 0);
    free(s);
    /* GGUF facts for the byte-level kind */
    CHECK(tokenizer_type(tk, 'a') == TOK_TYPE_NORMAL && tokenizer_type(tk, G_EOT) == TOK_TYPE_CONTROL);
    CHECK(tokenizer_type(tk, G_HI) == TOK_TYPE_USER_DEFINED);
    CHECK(tokenizer_score(tk, G_GTHE) == -3.0f && tokenizer_score(tk, 'a') == 0.0f);
    CHECK(tokenizer_vocab_size(tk) == G_HELLO + 1);
    tokenizer_free(tk);
}

TEST(gpt2_ignore_merges_llama3_split_and_normalizers)
{
    /* ignore_merges: a piece that is itself in the vocab is one token */
    tokenizer *tk = gpt2_build("gpt2", 1, NULL);
    CHECK(tk && ids_equal(tk, " world", 0, IDS(G_WORLD)));
    CHECK(tk && ids_equal(tk, " worlds", 0, IDS(' ', 'w', G_OR, 'l', 'd', 's')));
    tokenizer_free(tk);
    /* Llama-3 regex: digits in groups of three, so (3 4) cannot merge:
     * " 12345" → " ", "123", "45" */
    tk = gpt2_build("llama3", 0, NULL);
    CHECK(tk && ids_equal(tk, " 12345", 0, IDS(' ', G_12, '3', '4', '5')));
    CHECK(tk && ids_equal(tk, "hello the world", 0, IDS(G_HELL, 'o', G_GTHE, ' ', 'w', G_OR, 'l', 'd')));
    tokenizer_free(tk);
    /* NFC composes e + U+0301 into é (C3 A9); without it the bytes stay */
    tk = gpt2_build("gpt2", 0, "NFC");
    CHECK(tk && ids_equal(tk, "e\xCC\x81", 0, IDS(0xC3, 0xA9)));
    tokenizer_free(tk);
    tk = gpt2_build("gpt2", 0, NULL);
    CHECK(tk && ids_equal(tk, "e\xCC\x81", 0, IDS('e', 0xCC, 0x81)));
    tokenizer_free(tk);
    /* a normalized added token matches the lowercased text */
    tk = gpt2_build("gpt2", 0, "Lowercase");
    CHECK(tk && ids_equal(tk, "HELLO THE", 0, IDS(G_HELLO, G_GTHE)));
    tokenizer_free(tk);
}

/* Tiny deterministic PRNG (splitmix64). */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

TEST(gpt2_round_trips_any_text)
{
    tokenizer *tk = gpt2_build("gpt2", 0, NULL);
    tokenizer *l3 = gpt2_build("llama3", 0, NULL);
    static const char *texts[] = {
        "emoji \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD and flags \xF0\x9F\x87\xAB\xF0\x9F\x87\xB7",
        "CJK \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xE4\xB8\xAD\xE6\x96\x87\xEF\xBC\x8C\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4",
        "new\nlines\r\n\n\ttabs   and  spaces \n",
        "   leading and trailing   ",
        "<|endoftext|>hello<|endoftext|>",
        "x\xC2\xA0y\xE2\x80\x83z\xE3\x80\x80",      /* NBSP, em space, ideographic space */
    };
    CHECK(tk && l3);
    for (size_t i = 0; tk && l3 && i < sizeof texts / sizeof texts[0]; i++) {
        CHECK_MSG(round_trips_sp(tk, texts[i], strlen(texts[i]), 0), "text %zu", i);
        CHECK_MSG(round_trips_sp(l3, texts[i], strlen(texts[i]), 0), "llama3 text %zu", i);
    }
    /* random valid UTF-8: code points from every plane, no NUL, no surrogates */
    uint64_t seed = 42;
    for (int t = 0; tk && l3 && t < 200; t++) {
        char buf[512], *p = buf;
        int n = 1 + (int)(rng_next(&seed) % 100);
        for (int k = 0; k < n; k++) {
            uint64_t r = rng_next(&seed);
            uint32_t c;
            switch (r % 4) {
            case 0: c = 1 + (uint32_t)(r >> 8) % 0x7F; break;
            case 1: c = 0x80 + (uint32_t)(r >> 8) % 0x780; break;
            case 2: c = 0x800 + (uint32_t)(r >> 8) % 0xF800; break;
            default: c = 0x10000 + (uint32_t)(r >> 8) % 0x100000; break;
            }
            if (c >= 0xD800 && c <= 0xDFFF)
                c = 'x';
            put_utf8(&p, c);
        }
        *p = '\0';
        CHECK_MSG(round_trips(tk, buf, (size_t)(p - buf)), "random %d", t);
        CHECK_MSG(round_trips(l3, buf, (size_t)(p - buf)), "llama3 random %d", t);
    }
    /* the whole of eval.txt through the regex path: fast, and round trips */
    size_t tlen = 0;
    char *text = tl_slurp("tests/data/text/eval.txt", &tlen);
    CHECK(text);
    if (tk && text) {
        uint32_t *ids = NULL;
        double t0 = now_s();
        int64_t n = tokenizer_encode(tk, text, tlen, 0, &ids, NULL);
        double dt = now_s() - t0;
        CHECK_MSG(n > 0 && dt < 1.0, "%lld ids in %.3f s", (long long)n, dt);
        free(ids);
        CHECK(round_trips(tk, text, tlen));
    }
    free(text);
    /* ids that are not valid UTF-8 decode with U+FFFD per maximal subpart:
     * E6 97 (truncated 3-byte) is one, FF is one */
    char *s = tk ? tokenizer_decode(tk, IDS('a', 0xE6, 0x97, 'b', 0xFF), 0) : NULL;
    CHECK(s && strcmp(s, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD") == 0);
    free(s);
    tokenizer_free(tk);
    tokenizer_free(l3);
}

TEST(byte_fallback_decodes_invalid_bytes_per_byte)
{
    /* HF ByteFallback: byte pieces that are not valid UTF-8 give one U+FFFD
     * each (ts3m: <0xXX> is id 3 + XX) */
    tokenizer *tk = ts3m();
    CHECK(tk);
    if (!tk)
        return;
    char *s = tokenizer_decode(tk, IDS(261, 3 + 0xE6, 3 + 0x97, 261), 1);
    CHECK(s && strcmp(s, "a\xEF\xBF\xBD\xEF\xBF\xBD a") == 0);
    free(s);
    s = tokenizer_decode(tk, IDS(261, 3 + 0xE6, 3 + 0x97, 3 + 0xA5), 1);
    CHECK(s && strcmp(s, "a\xE6\x97\xA5") == 0);
    free(s);
    tokenizer_free(tk);
}

/*-*** Pre-tokenizer split behaviours, unk handling, rstrip ***/

/* A character-level BPE: ids 32..126 are the ASCII characters, <unk> is 1,
 * merges 0 "a -" → "a-" 200, 1 "- b" → "-b" 201, 2 "- -" → "--" 202,
 * 3 "1 2" → "12" 203; added token "[X]" (300) with rstrip. pre is the
 * pre_tokenizer JSON text ("null" for none). */
static tokenizer *chars_build(const char *pre, int fuse_unk)
{
    char buf[8192], *p = buf;
    p += sprintf(p, "{\"added_tokens\": [{\"id\": 300, \"content\": \"[X]\", \"single_word\": false, "
                    "\"lstrip\": false, \"rstrip\": true, \"normalized\": false, \"special\": false}], "
                    "\"pre_tokenizer\": %s, \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", "
                    "\"fuse_unk\": %s, \"vocab\": {\"<unk>\": 1, \"a-\": 200, \"-b\": 201, \"--\": 202, "
                    "\"12\": 203", pre, fuse_unk ? "true" : "false");
    for (int c = 32; c < 127; c++)
        p += sprintf(p, c == '"' || c == '\\' ? ", \"\\%c\": %d" : ", \"%c\": %d", c, c);
    sprintf(p, "}, \"merges\": [\"a -\", \"- b\", \"- -\", \"1 2\"]}}");
    char *err = NULL;
    tokenizer *tk = tokenizer_load(buf, strlen(buf), NULL, 0, &err);
    if (!tk)
        fprintf(stderr, "  chars load: %s\n", err ? err : "?");
    free(err);
    return tk;
}

static int split_case(const char *behavior, int invert, const char *text, const uint32_t *want, size_t n)
{
    char pre[256];
    snprintf(pre, sizeof pre, "{\"type\": \"Split\", \"pattern\": {\"String\": \"-\"}, \"behavior\": \"%s\", "
             "\"invert\": %s}", behavior, invert ? "true" : "false");
    tokenizer *tk = chars_build(pre, 1);
    int ok = tk && ids_equal(tk, text, 0, want, n);
    if (!ok)
        fprintf(stderr, "  behavior %s invert %d\n", behavior, invert);
    tokenizer_free(tk);
    return ok;
}

TEST(split_behaviours_follow_hf)
{
    /* whole "a--b": (a -)0 first → a- - b, then (- b)1 → a- -b */
    tokenizer *tk = chars_build("null", 1);
    CHECK(tk && ids_equal(tk, "a--b", 0, IDS(200, 201)));
    tokenizer_free(tk);
    /* spans a | - | - | b; matches are the two "-" */
    CHECK(split_case("Isolated", 0, "a--b", IDS('a', '-', '-', 'b')));
    CHECK(split_case("Removed", 0, "a--b", IDS('a', 'b')));
    CHECK(split_case("Removed", 1, "a--b", IDS('-', '-')));          /* inverted: keep the matches */
    CHECK(split_case("Contiguous", 0, "a--b", IDS('a', 202, 'b')));   /* a | -- | b */
    CHECK(split_case("MergedWithPrevious", 0, "a--b", IDS(200, '-', 'b')));  /* a- | - | b */
    CHECK(split_case("MergedWithNext", 0, "a--b", IDS('a', '-', 201)));      /* a | - | -b */
    /* Digits: "a12" → a | 1 | 2, or a | 12 with individual_digits false */
    tk = chars_build("{\"type\": \"Digits\", \"individual_digits\": true}", 1);
    CHECK(tk && ids_equal(tk, "a12", 0, IDS('a', '1', '2')));
    tokenizer_free(tk);
    tk = chars_build("{\"type\": \"Digits\", \"individual_digits\": false}", 1);
    CHECK(tk && ids_equal(tk, "a12", 0, IDS('a', 203)));
    tokenizer_free(tk);
    /* WhitespaceSplit drops the space: "a- b" → a- | b; Whitespace (\w+|[^\w\s]+)
     * gives a | - | b; a Sequence applies both in turn */
    tk = chars_build("{\"type\": \"WhitespaceSplit\"}", 1);
    CHECK(tk && ids_equal(tk, "a- b", 0, IDS(200, 'b')));
    tokenizer_free(tk);
    tk = chars_build("{\"type\": \"Whitespace\"}", 1);
    CHECK(tk && ids_equal(tk, "a- b", 0, IDS('a', '-', 'b')));
    tokenizer_free(tk);
    tk = chars_build("{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"WhitespaceSplit\"}, "
                     "{\"type\": \"Punctuation\", \"behavior\": \"MergedWithNext\"}]}", 1);
    CHECK(tk && ids_equal(tk, "a -b c", 0, IDS('a', 201, 'c')));
    tokenizer_free(tk);
}

TEST(unk_fusing_and_rstrip)
{
    /* é and è are not in the vocab and there is no byte fallback */
    tokenizer *tk = chars_build("null", 1);
    CHECK(tk && ids_equal(tk, "a\xC3\xA9\xC3\xA8" "b", 0, IDS('a', 1, 'b')));
    /* rstrip: the space after [X] belongs to the token; the one before stays */
    CHECK(tk && ids_equal(tk, "a [X] b", 0, IDS('a', ' ', 300, 'b')));
    tokenizer_free(tk);
    tk = chars_build("null", 0);
    CHECK(tk && ids_equal(tk, "a\xC3\xA9\xC3\xA8" "b", 0, IDS('a', 1, 1, 'b')));
    /* no decoder: tokens joined with spaces, as HF does */
    char *s = tk ? tokenizer_decode(tk, IDS('a', 200, 300), 0) : NULL;
    CHECK(s && strcmp(s, "a a- [X]") == 0);
    free(s);
    CHECK(tk && strcmp(tokenizer_model_kind(tk), "llama") == 0 && tokenizer_type(tk, 1) == TOK_TYPE_UNKNOWN);
    tokenizer_free(tk);
}

TEST(array_form_merges)
{
    /* newer tokenizer.json files write merges as pairs, which lets a token
     * contain a space: ["a", " b"] → "a b" (id 3); then ["a b", "c"] → 4 */
    static const char js[] =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \" b\": 1, \"c\": 2, \"a b\": 3, \"a bc\": 4,"
        " \" \": 5, \"b\": 6}, \"merges\": [[\" \", \"b\"], [\"a\", \" b\"], [\"a b\", \"c\"]]}}";
    char *err = NULL;
    tokenizer *tk = tokenizer_load(js, sizeof js - 1, NULL, 0, &err);
    CHECK_MSG(tk, "%s", err ? err : "");
    free(err);
    if (!tk)
        return;
    /* "a bc": pairs (a,' ') none, (' ',b) rank 0, (b,c) none → a [ b] c;
     * (a, b) rank 1 → [a b] c; ([a b], c) rank 2 → [a bc] */
    CHECK(ids_equal(tk, "a bc", 0, IDS(4)));
    const char **m = NULL;
    CHECK(tokenizer_merges(tk, &m) == 3 && strcmp(m[1], "a  b") == 0);
    tokenizer_free(tk);
}

int main(void)
{
    RUN(eval_txt_matches_reference_ids);
    RUN(eval_and_calib_round_trip);
    RUN(recorded_cases_give_recorded_ids);
    RUN(invalid_utf8_is_an_error);
    RUN(empty_text_gives_just_bos);
    RUN(bad_tokenizer_json_is_refused);
    RUN(gguf_vocab_matches_llama_cpp);
    RUN(metaspace_variants_match_reference);
    RUN(gpt2_bpe_ids_derived_by_hand);
    RUN(gpt2_ignore_merges_llama3_split_and_normalizers);
    RUN(gpt2_round_trips_any_text);
    RUN(byte_fallback_decodes_invalid_bytes_per_byte);
    RUN(split_behaviours_follow_hf);
    RUN(unk_fusing_and_rstrip);
    RUN(array_form_merges);
    return tl_summary();
}
