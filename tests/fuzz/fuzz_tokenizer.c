/* fuzz_tokenizer — libFuzzer target for tokenizer.json loading and use
 * (formats/tokenizer*.c): the input is a tokenizer.json, optionally followed
 * by a NUL byte and a tokenizer_config.json. A loaded tokenizer encodes a
 * fixed text (ASCII, multi-byte UTF-8, special-token spellings, whitespace
 * runs) and an invalid-UTF-8 one, decodes the ids back, and is asked for
 * every id's piece, score and type, the merges, BOS/EOS.
 */
#include "fuzz.h"

#include "tokenizer.h"

static const char sample[] = "Hello, world!  It's 2024: "
                             "\xc3\xbc" "n" "\xc3\xaf" "c" "\xc3\xb6" "d" "\xc3\xa9"     /* üniçödé-ish */
                             " \xe2\x96\x81 " "\xf0\x9f\x98\x80"                         /* ▁, an emoji */
                             " <s>x</s> <unk>\n\n\t  tab\r\nend  ";
static const char invalid[] = "ok \xff\xfe bad \xc3";

static void use(const tokenizer *tk)
{
    uint32_t *ids = NULL;
    char *err = NULL;
    int64_t n = tokenizer_encode(tk, sample, sizeof sample - 1, 1, &ids, &err);
    if (n < 0) {
        if (!err || ids) abort();
        free(err);
    } else {
        if (err || !ids) abort();
        size_t vs = tokenizer_vocab_size(tk);
        for (int64_t i = 0; i < n; i++)
            if (ids[i] >= vs) abort();                  /* ids must be in the vocab */
        for (int skip = 0; skip < 2; skip++) free(tokenizer_decode(tk, ids, (size_t)n, skip));
        free(ids);
    }
    ids = NULL;
    err = NULL;
    n = tokenizer_encode(tk, invalid, sizeof invalid - 1, 0, &ids, &err);
    if (n >= 0) free(ids);
    free(err);
    size_t vs = tokenizer_vocab_size(tk);
    for (size_t id = 0; id < vs && id < 4096; id++) {
        const char *p = tokenizer_piece(tk, (uint32_t)id);
        if (p) fz_sink += (unsigned)strlen(p);
        fz_sink += fz_fbits(tokenizer_score(tk, (uint32_t)id)) + (unsigned)tokenizer_type(tk, (uint32_t)id);
    }
    uint32_t probe[3] = { 0, (uint32_t)vs, UINT32_MAX };
    free(tokenizer_decode(tk, probe, 3, 0));            /* out of range: NULL, no crash */
    const char **merges;
    size_t nm = tokenizer_merges(tk, &merges);
    if (nm) fz_sink += (unsigned)strlen(merges[nm - 1]);
    fz_sink += (unsigned)tokenizer_bos(tk) + (unsigned)tokenizer_eos(tk) + (unsigned)strlen(tokenizer_model_kind(tk));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t jlen = nul ? (size_t)(nul - data) : size;
    /* exact-size copies, so reads past either document are caught */
    char *json = malloc(jlen ? jlen : 1), *cfg = NULL;
    memcpy(json, data, jlen);
    size_t clen = 0;
    if (nul) {
        clen = size - jlen - 1;
        cfg = malloc(clen ? clen : 1);
        memcpy(cfg, nul + 1, clen);
    }
    char *err = NULL;
    tokenizer *tk = tokenizer_load(json, jlen, cfg, clen, &err);
    fz_check_error(tk, err, "tokenizer_load");
    if (tk) {
        use(tk);
        tokenizer_free(tk);
    }
    free(json);
    free(cfg);
    return 0;
}
