/* tokenizer — HuggingFace `tokenizer.json` BPE tokenizers, in C.
 *
 * Owns: loading tokenizer.json (+ tokenizer_config.json) and encoding /
 * decoding text with the same semantics as HuggingFace `tokenizers` (Rust,
 * tokenizers/src/tokenizer/mod.rs: added tokens split first, then the
 * normalizer, the pre-tokenizer, the BPE model; decode through the decoder
 * chain). Two families are covered:
 *   - SentencePiece-style BPE with byte_fallback (Llama-1/2, Mistral, the
 *     ts3m fixture): Prepend/Replace normalizers or the Metaspace
 *     pre-tokenizer; Replace/ByteFallback/Fuse/Strip or Metaspace decoders.
 *   - GPT-2 byte-level BPE (GPT-2, Llama-3, Qwen2): Split regex + ByteLevel
 *     pre-tokenizer, ByteLevel decoder, `ignore_merges`.
 * Only the BPE model is supported (not WordPiece/Unigram/WordLevel); a
 * tokenizer.json using anything unsupported is refused at load time with a
 * message naming it, never tokenized approximately.
 *
 * How to think of it: a loaded tokenizer is immutable; every function takes
 * a const pointer and allocates its own scratch, so one tokenizer can be used
 * from several threads at once.
 *
 * Errors: load and encode return NULL / -1 with a malloc'd one-line message
 * in *errp (when errp is non-NULL; the caller frees it). Nothing here prints
 * or exits.
 */
#ifndef QPIPE_TOKENIZER_H
#define QPIPE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

/* GGUF token types (tokenizer.ggml.token_type). */
enum {
    TOK_TYPE_NORMAL = 1, TOK_TYPE_UNKNOWN = 2, TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4, TOK_TYPE_UNUSED = 5, TOK_TYPE_BYTE = 6
};

/* Load from memory: tokenizer_json (len bytes, need not be NUL-terminated)
 * and optionally tokenizer_config_json (cfg_len bytes; NULL = none), which
 * supplies bos_token / eos_token / add_bos_token. Returns NULL with *errp on
 * malformed JSON (duplicate keys are refused), a model other than BPE, an
 * unsupported normalizer/pre-tokenizer/decoder type, a bad regex, or merges
 * naming tokens missing from the vocab. */
tokenizer *tokenizer_load(const char *tokenizer_json, size_t len,
                          const char *tokenizer_config_json, size_t cfg_len, char **errp);
/* Reads <model_dir>/tokenizer.json (required) and tokenizer_config.json
 * (optional). NULL with *errp naming the file on any error. */
tokenizer *tokenizer_load_dir(const char *model_dir, char **errp);

/* Encode len bytes of UTF-8 text. When add_bos is non-zero, BOS is
 * prepended if the tokenizer adds it (add_bos_token from the config; else
 * the post-processor template; else true for the "llama" kind). Stores a
 * malloc'd array in *ids (never NULL on success, even for 0 ids) and returns
 * the number of ids; -1 with *errp ("invalid UTF-8 at byte N", or out of
 * memory) on error, *ids then NULL. EOS is never appended. */
int64_t tokenizer_encode(const tokenizer *tk, const char *text, size_t len, int add_bos,
                         uint32_t **ids, char **errp);
/* Decode n ids to malloc'd NUL-terminated UTF-8, dropping special added
 * tokens when skip_special is non-zero; bytes that do not form UTF-8 become
 * U+FFFD as HF does (one per byte under ByteFallback, one per maximal
 * subpart under ByteLevel). A decoded NUL byte (e.g. "<0x00>") is kept but
 * ends the C string early. Returns NULL when an id is out of range or
 * unassigned, or on out of memory. */
char *tokenizer_decode(const tokenizer *tk, const uint32_t *ids, size_t n, int skip_special);

/* BOS / EOS ids, or -1 when the tokenizer has none. Can't fail. */
int tokenizer_bos(const tokenizer *tk);
int tokenizer_eos(const tokenizer *tk);
/* 1 + the largest id in the vocab or the added tokens. Can't fail. */
size_t tokenizer_vocab_size(const tokenizer *tk);
/* The token string as spelled in the vocab (byte-level tokens in their
 * bytes→unicode spelling, "<0x0A>" for byte-fallback pieces); NULL when id
 * is out of range or unassigned. Owned by tk. */
const char *tokenizer_piece(const tokenizer *tk, uint32_t id);
/* GGUF score (tokenizer.ggml.scores), as llama.cpp's converter writes it:
 * added tokens -1000; "llama" kind: byte pieces 0, others -(their index
 * among the ordinary pieces, in id order), i.e. the SentencePiece score
 * order; "gpt2" kind: -(rank of the first merge producing the token), 0 for
 * tokens no merge produces. 0 for an out-of-range id. */
float tokenizer_score(const tokenizer *tk, uint32_t id);
/* GGUF token type (TOK_TYPE_*): special added tokens 3, other added tokens
 * 4, "<0xXX>" pieces of a byte_fallback model 6, the model's unk token 2
 * unless it is an added token, unassigned ids 5, else 1. */
int tokenizer_type(const tokenizer *tk, uint32_t id);
/* "llama" (SentencePiece-style BPE) or "gpt2" (byte-level BPE), as GGUF's
 * tokenizer.ggml.model. Can't fail. */
const char *tokenizer_model_kind(const tokenizer *tk);
/* Merges in rank order as "a b" strings; *merges points into tk (valid until
 * tokenizer_free). Returns their number. Can't fail. */
size_t tokenizer_merges(const tokenizer *tk, const char ***merges);
/* Frees everything; NULL is fine. */
void tokenizer_free(tokenizer *tk);

#endif
