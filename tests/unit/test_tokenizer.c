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

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = (size_t)n;
    }
    return buf;
}

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

/* decode(encode(s)) == s, skipping the BOS as a special token. */
static int round_trips(const tokenizer *tk, const char *s, size_t len)
{
    uint32_t *ids = NULL;
    char *err = NULL;
    int64_t n = tokenizer_encode(tk, s, len, 1, &ids, &err);
    char *back = n >= 0 ? tokenizer_decode(tk, ids, (size_t)n, 1) : NULL;
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

/*-*** 1. eval.txt against the reference ids; round trips ***/

TEST(eval_txt_matches_reference_ids)
{
    tokenizer *tk = ts3m();
    size_t tlen = 0, rlen = 0;
    char *text = slurp("tests/data/text/eval.txt", &tlen);
    unsigned char *ref = (unsigned char *)slurp("tests/data/text/eval.tokens.u32", &rlen);
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
        char *text = slurp(files[i], &len);
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
        "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}}, "
        "\"model\": {\"vocab\": {}, \"merges\": []}}",
    };
    static const char *why[] = { "line", "duplicate", "Unigram", "missing", "merged token", "Precompiled",
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
    char *text = slurp("tests/data/text/eval.txt", &tlen);
    unsigned char *ref = (unsigned char *)slurp("tests/data/text/eval.tokens.u32", &rlen);
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
    return tl_summary();
}
