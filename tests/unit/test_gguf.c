/* test_gguf — the GGUF reader and writer: write → read round trip, the header
 * of a real llama.cpp file checked against facts printed by an independent
 * parser (tests/tools/gguf_facts.py, python struct), hostile headers refused
 * (built byte by byte here, not with our writer), and the Llama export
 * helpers (names, Q/K permutation, config.json KVs vs. what llama.cpp wrote).
 */
#include "testlib.h"
#include "gguf.h"
#include "ggml_quants.h"
#include "tokenizer.h"
#include "dequant.h"

#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>


#define HEADER_EXCERPT "tests/data/gguf/ts3m-q4_k_m.header"
#define FIXTURE_SIZE   2284352u           /* ts3m-q4_k_m.gguf */


/*-*** Facts of ts3m-q4_k_m.gguf, printed by tests/tools/gguf_facts.py ***/

static const struct { const char *key; int type; } fx_kv[] = {
    { "general.architecture", 8 }, { "general.type", 8 }, { "general.name", 8 },
    { "general.size_label", 8 }, { "llama.block_count", 4 }, { "llama.context_length", 4 },
    { "llama.embedding_length", 4 }, { "llama.feed_forward_length", 4 },
    { "llama.attention.head_count", 4 }, { "llama.attention.head_count_kv", 4 },
    { "llama.rope.freq_base", 6 }, { "llama.attention.layer_norm_rms_epsilon", 6 },
    { "llama.vocab_size", 4 }, { "llama.rope.dimension_count", 4 }, { "tokenizer.ggml.model", 8 },
    { "tokenizer.ggml.pre", 8 }, { "tokenizer.ggml.tokens", 9 }, { "tokenizer.ggml.scores", 9 },
    { "tokenizer.ggml.token_type", 9 }, { "tokenizer.ggml.bos_token_id", 4 },
    { "tokenizer.ggml.eos_token_id", 4 }, { "tokenizer.ggml.unknown_token_id", 4 },
    { "tokenizer.ggml.add_bos_token", 7 }, { "tokenizer.ggml.add_eos_token", 7 },
    { "general.quantization_version", 4 }, { "general.file_type", 4 },
};

static const struct { const char *name; int type, n_dims; int64_t ne0, ne1; uint64_t offset; } fx_t[] = {
    { "output.weight", 14, 2, 256, 1024, 0 },
    { "output_norm.weight", 0, 1, 256, 1, 215040 },
    { "token_embd.weight", 12, 2, 256, 1024, 216064 },
    { "blk.0.attn_k.weight", 12, 2, 256, 128, 363520 },
    { "blk.0.attn_norm.weight", 0, 1, 256, 1, 381952 },
    { "blk.0.attn_output.weight", 12, 2, 256, 256, 382976 },
    { "blk.0.attn_q.weight", 12, 2, 256, 256, 419840 },
    { "blk.0.attn_v.weight", 12, 2, 256, 128, 456704 },
    { "blk.0.ffn_down.weight", 12, 2, 768, 256, 475136 },
    { "blk.0.ffn_gate.weight", 12, 2, 256, 768, 585728 },
    { "blk.0.ffn_norm.weight", 0, 1, 256, 1, 696320 },
    { "blk.0.ffn_up.weight", 12, 2, 256, 768, 697344 },
    { "blk.1.attn_k.weight", 12, 2, 256, 128, 807936 },
    { "blk.1.attn_norm.weight", 0, 1, 256, 1, 826368 },
    { "blk.1.attn_output.weight", 12, 2, 256, 256, 827392 },
    { "blk.1.attn_q.weight", 12, 2, 256, 256, 864256 },
    { "blk.1.attn_v.weight", 12, 2, 256, 128, 901120 },
    { "blk.1.ffn_down.weight", 12, 2, 768, 256, 919552 },
    { "blk.1.ffn_gate.weight", 12, 2, 256, 768, 1030144 },
    { "blk.1.ffn_norm.weight", 0, 1, 256, 1, 1140736 },
    { "blk.1.ffn_up.weight", 12, 2, 256, 768, 1141760 },
    { "blk.2.attn_k.weight", 12, 2, 256, 128, 1252352 },
    { "blk.2.attn_norm.weight", 0, 1, 256, 1, 1270784 },
    { "blk.2.attn_output.weight", 12, 2, 256, 256, 1271808 },
    { "blk.2.attn_q.weight", 12, 2, 256, 256, 1308672 },
    { "blk.2.attn_v.weight", 14, 2, 256, 128, 1345536 },
    { "blk.2.ffn_down.weight", 14, 2, 768, 256, 1372416 },
    { "blk.2.ffn_gate.weight", 12, 2, 256, 768, 1533696 },
    { "blk.2.ffn_norm.weight", 0, 1, 256, 1, 1644288 },
    { "blk.2.ffn_up.weight", 12, 2, 256, 768, 1645312 },
    { "blk.3.attn_k.weight", 12, 2, 256, 128, 1755904 },
    { "blk.3.attn_norm.weight", 0, 1, 256, 1, 1774336 },
    { "blk.3.attn_output.weight", 12, 2, 256, 256, 1775360 },
    { "blk.3.attn_q.weight", 12, 2, 256, 256, 1812224 },
    { "blk.3.attn_v.weight", 14, 2, 256, 128, 1849088 },
    { "blk.3.ffn_down.weight", 14, 2, 768, 256, 1875968 },
    { "blk.3.ffn_gate.weight", 12, 2, 256, 768, 2037248 },
    { "blk.3.ffn_norm.weight", 0, 1, 256, 1, 2147840 },
    { "blk.3.ffn_up.weight", 12, 2, 256, 768, 2148864 },
};

static gguf_file *open_fixture_header(char **buf)
{
    size_t len;
    *buf = tl_slurp(HEADER_EXCERPT, &len);
    if (!*buf)
        return NULL;
    char *err = NULL;
    gguf_file *f = gguf_file_parse_ex(*buf, len, FIXTURE_SIZE, "ts3m-q4_k_m.gguf", &err);
    if (!f)
        fprintf(stderr, "  %s\n", err);
    free(err);
    return f;
}

TEST(fixture_header_facts)
{
    char *buf;
    gguf_file *f = open_fixture_header(&buf);
    CHECK(f != NULL);
    if (!f) {
        free(buf);
        return;
    }
    CHECK(f->version == 3 && f->alignment == 32);
    CHECK(f->data_offset == 24896);                          /* infos end 24893, aligned */
    CHECK(f->ntensors == (int64_t)(sizeof fx_t / sizeof fx_t[0]));
    CHECK(json_object_size(f->kv) == sizeof fx_kv / sizeof fx_kv[0]);
    /* keys in file order with their value types */
    size_t i = 0;
    const char *key;
    json_t *v;
    json_object_foreach(f->kv, key, v) {
        if (i < sizeof fx_kv / sizeof fx_kv[0]) {
            CHECK_MSG(strcmp(key, fx_kv[i].key) == 0, "kv %zu: %s vs %s", i, key, fx_kv[i].key);
            const char *ty = json_string_value(json_object_get(f->kv_types, key));
            const char *want = fx_kv[i].type == 9 ? NULL : gguf_type_name(fx_kv[i].type);
            CHECK_MSG(want ? strcmp(ty, want) == 0 : strncmp(ty, "arr[", 4) == 0, "%s: %s", key, ty);
        }
        i++;
    }
    for (i = 0; i < sizeof fx_t / sizeof fx_t[0] && (int64_t)i < f->ntensors; i++) {
        const gguf_tensor_info *t = &f->tensors[i];
        CHECK_MSG(strcmp(t->name, fx_t[i].name) == 0 && t->type == fx_t[i].type &&
                  t->n_dims == fx_t[i].n_dims && t->ne[0] == fx_t[i].ne0 && t->ne[1] == fx_t[i].ne1 &&
                  t->offset == fx_t[i].offset, "tensor %zu %s", i, t->name);
    }
    /* a few values */
    CHECK(json_integer_value(json_object_get(f->kv, "llama.block_count")) == 4);
    CHECK(json_integer_value(json_object_get(f->kv, "general.file_type")) == 15);
    CHECK(strcmp(json_string_value(json_object_get(f->kv, "tokenizer.ggml.model")), "llama") == 0);
    json_t *tokens = json_object_get(f->kv, "tokenizer.ggml.tokens");
    CHECK(json_array_size(tokens) == 1024);
    CHECK(strcmp(json_string_value(json_array_get(tokens, 1)), "<s>") == 0);
    CHECK(strcmp(json_string_value(json_array_get(tokens, 3)), "<0x00>") == 0);
    CHECK(strcmp(json_string_value(json_object_get(f->kv_types, "tokenizer.ggml.token_type")), "arr[i32]") == 0);
    CHECK(strcmp(json_string_value(json_object_get(f->kv_types, "tokenizer.ggml.scores")), "arr[f32]") == 0);
    CHECK_NEAR(json_real_value(json_object_get(f->kv, "llama.attention.layer_norm_rms_epsilon")), 1e-5, 1e-11);
    CHECK(json_is_true(json_object_get(f->kv, "tokenizer.ggml.add_bos_token")));
    /* the excerpt without the claimed size: the data is missing, so it is refused */
    char *err = NULL;
    size_t len;
    char *b2 = tl_slurp(HEADER_EXCERPT, &len);
    gguf_file *g = gguf_file_parse(b2, len, "excerpt", &err);
    CHECK(g == NULL && err && strstr(err, "past the end"));
    free(err);
    free(b2);
    gguf_file_close(f);
    free(buf);
}

/*-*** Write → read round trip ***/

/* A temp file name per tag (the buffer is per tag, so two can be alive). */
static const char *tmp_path(const char *tag)
{
    static char p[4][256];
    static int next;
    char *b = p[next++ % 4];
    snprintf(b, sizeof p[0], "/tmp/test_gguf_%d_%s.gguf", (int)getpid(), tag);
    return b;
}

TEST(write_read_roundtrip)
{
    gguf_writer *g = gguf_writer_new();
    const char *toks[] = { "<unk>", "a", "\xe2\x96\x81the" };
    const float sc[] = { 0.f, -1.5f, -2.f };
    const int32_t tt[] = { 2, 1, 1 };
    CHECK(gguf_writer_set_kv_str(g, "general.architecture", "llama") == 0);
    CHECK(gguf_writer_set_kv_u32(g, "llama.block_count", 7) == 0);
    CHECK(gguf_writer_set_kv_i32(g, "x.i32", -5) == 0);
    CHECK(gguf_writer_set_kv_u64(g, "x.u64", 1ull << 40) == 0);
    CHECK(gguf_writer_set_kv_f32(g, "x.f32", 0.25f) == 0);
    CHECK(gguf_writer_set_kv_bool(g, "x.bool", 1) == 0);
    CHECK(gguf_writer_set_kv_arr_str(g, "tokenizer.ggml.tokens", toks, 3) == 0);
    CHECK(gguf_writer_set_kv_arr_f32(g, "tokenizer.ggml.scores", sc, 3) == 0);
    CHECK(gguf_writer_set_kv_arr_i32(g, "tokenizer.ggml.token_type", tt, 3) == 0);
    CHECK(gguf_writer_set_kv_u32(g, "llama.block_count", 4) == 0);       /* replaces in place */
    CHECK(gguf_writer_set_kv_str(g, "", "x") == -1);
    /* tensors: f32 [3, 64], q4_0 [2, 64] (permuted rows irrelevant here), f16 [5], q6_K [1, 256] */
    int64_t s0[] = { 3, 64 }, s1[] = { 2, 64 }, s2[] = { 5 }, s3[] = { 1, 256 };
    CHECK(gguf_writer_add_tensor(g, "a.weight", GGML_T_F32, 2, s0, 3 * 64 * 4) == 0);
    CHECK(gguf_writer_add_tensor(g, "b.weight", GGML_T_Q4_0, 2, s1, 2 * 2 * 18) == 1);
    CHECK(gguf_writer_add_tensor(g, "c.weight", GGML_T_F16, 1, s2, 10) == 2);
    CHECK(gguf_writer_add_tensor(g, "d.weight", GGML_T_Q6_K, 2, s3, 210) == 3);
    CHECK(gguf_writer_add_tensor(g, "b.weight", GGML_T_F32, 1, s2, 20) == -1);   /* duplicate */
    CHECK(gguf_writer_add_tensor(g, "e", GGML_T_Q4_0, 1, s2, 18) == -1);         /* 5 % 32 */
    CHECK(gguf_writer_add_tensor(g, "e", GGML_T_F32, 1, s2, 21) == -1);          /* nbytes */
    CHECK(gguf_writer_add_tensor(g, "0123456789012345678901234567890123456789012345678901234567890123",
                                 GGML_T_F32, 1, s2, 20) == -1);                  /* 64-byte name */
    /* data */
    float a[3 * 64], bsrc[2 * 64], d6[256];
    for (int i = 0; i < 3 * 64; i++) a[i] = (float)i * 0.5f - 7;
    for (int i = 0; i < 2 * 64; i++) bsrc[i] = sinf((float)i);
    for (int i = 0; i < 256; i++) d6[i] = cosf(0.1f * (float)i);
    uint8_t bq[72], c16[10], q6[210];
    ggml_quantize_rows(GGML_T_Q4_0, bsrc, bq, 2, 64, NULL);
    for (int i = 0; i < 5; i++) { uint16_t h = f32_to_f16((float)i); memcpy(c16 + 2 * i, &h, 2); }
    ggml_quantize_row(GGML_T_Q6_K, d6, q6, 256, NULL);
    const char *path = tmp_path("rt");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    char *err = NULL;
    CHECK(fd >= 0 && gguf_writer_write_header(g, fd, &err) == 0);
    CHECK(gguf_writer_data_offset(g, 0) == gguf_writer_header_size(g));
    CHECK(gguf_writer_header_size(g) % 32 == 0);
    CHECK(gguf_writer_data_offset(g, 1) == gguf_writer_header_size(g) + 768);
    CHECK(gguf_writer_data_offset(g, 2) == gguf_writer_header_size(g) + 768 + 96);
    CHECK(gguf_writer_data_offset(g, 3) == gguf_writer_header_size(g) + 768 + 96 + 32);
    CHECK(gguf_writer_data_offset(g, 4) == UINT64_MAX);
    CHECK(gguf_writer_set_kv_u32(g, "late", 1) == -1);                           /* frozen */
    CHECK(pwrite(fd, a, sizeof a, (off_t)gguf_writer_data_offset(g, 0)) == (ssize_t)sizeof a);
    CHECK(pwrite(fd, bq, sizeof bq, (off_t)gguf_writer_data_offset(g, 1)) == (ssize_t)sizeof bq);
    CHECK(pwrite(fd, c16, sizeof c16, (off_t)gguf_writer_data_offset(g, 2)) == (ssize_t)sizeof c16);
    CHECK(pwrite(fd, q6, sizeof q6, (off_t)gguf_writer_data_offset(g, 3)) == (ssize_t)sizeof q6);
    CHECK(gguf_writer_finish(g, fd, &err) == 0);
    CHECK(lseek(fd, 0, SEEK_END) == (off_t)gguf_writer_file_size(g));
    CHECK(gguf_writer_file_size(g) % 32 == 0);
    close(fd);
    gguf_writer_free(g);

    /* raw bytes: magic, version, counts */
    size_t len;
    uint8_t *raw = tl_slurp(path, &len);
    uint32_t ver;
    uint64_t nt, nkv;
    memcpy(&ver, raw + 4, 4);
    memcpy(&nt, raw + 8, 8);
    memcpy(&nkv, raw + 16, 8);
    CHECK(memcmp(raw, "GGUF", 4) == 0 && ver == 3 && nt == 4 && nkv == 9);
    free(raw);

    qsrc *s = gguf_open(path, &err);
    CHECK_MSG(s != NULL, "%s", err ? err : "");
    if (!s)
        return;
    CHECK(s->ntensors == 4);
    CHECK(strcmp(s->tensors[0].name, "a.weight") == 0 && s->tensors[0].dtype == DT_F32 &&
          s->tensors[0].ndim == 2 && s->tensors[0].shape[0] == 3 && s->tensors[0].shape[1] == 64 &&
          s->tensors[0].nparts == 1 && strcmp(s->tensors[0].parts[0].role, "data") == 0);
    const qs_tensor *tb = &s->tensors[1];
    CHECK(tb->dtype == DT_F32 && tb->shape[0] == 2 && tb->shape[1] == 64 && tb->nparts == 1 &&
          strcmp(tb->parts[0].role, "blocks") == 0 && tb->parts[0].dtype == DT_U8 &&
          tb->parts[0].shape[0] == 2 && tb->parts[0].shape[1] == 36 && tb->parts[0].nbytes == 72);
    json_t *q = json_object_get(tb->attrs, "quant");
    CHECK(q && strcmp(json_string_value(json_object_get(q, "scheme")), "gguf") == 0 &&
          strcmp(json_string_value(json_object_get(q, "type")), "q4_0") == 0);
    CHECK(strcmp(json_string_value(json_object_get(json_object_get(s->tensors[3].attrs, "quant"), "type")), "q6_k") == 0);
    CHECK(s->tensors[2].dtype == DT_F16 && s->tensors[2].ndim == 1 && s->tensors[2].shape[0] == 5);
    float a2[3 * 64];
    CHECK(qsrc_read(s, 0, 0, a2, sizeof a2, &err) == 0 && memcmp(a, a2, sizeof a) == 0);
    CHECK(memcmp(qsrc_map(s, 1), bq, sizeof bq) == 0);
    CHECK(memcmp(qsrc_map(s, 3), q6, sizeof q6) == 0);
    uint8_t part[10];
    CHECK(qsrc_read(s, 1, 70, part, 10, &err) == -1);                              /* past the end */
    free(err);
    err = NULL;
    json_t *kv = json_object_get(s->header.meta, "gguf"), *ty = json_object_get(s->header.meta, "gguf_types");
    CHECK(strcmp(json_string_value(json_object_get(s->header.meta, "format")), "gguf") == 0);
    CHECK(json_integer_value(json_object_get(kv, "llama.block_count")) == 4);
    CHECK(json_integer_value(json_object_get(kv, "x.i32")) == -5);
    CHECK(json_integer_value(json_object_get(kv, "x.u64")) == (json_int_t)(1ull << 40));
    CHECK(json_real_value(json_object_get(kv, "x.f32")) == 0.25);
    CHECK(json_is_true(json_object_get(kv, "x.bool")));
    CHECK(strcmp(json_string_value(json_array_get(json_object_get(kv, "tokenizer.ggml.tokens"), 2)), "\xe2\x96\x81the") == 0);
    CHECK(json_real_value(json_array_get(json_object_get(kv, "tokenizer.ggml.scores"), 1)) == -1.5);
    CHECK(json_integer_value(json_array_get(json_object_get(kv, "tokenizer.ggml.token_type"), 0)) == 2);
    CHECK(strcmp(json_string_value(json_object_get(ty, "llama.block_count")), "u32") == 0);
    CHECK(strcmp(json_string_value(json_object_get(ty, "x.u64")), "u64") == 0);
    CHECK(strcmp(json_string_value(json_object_get(ty, "tokenizer.ggml.tokens")), "arr[str]") == 0);
    /* KV order kept, replacement in place: block_count is still second */
    const char *k;
    json_t *vv;
    int pos = 0, bc_pos = -1;
    json_object_foreach(kv, k, vv) {
        if (strcmp(k, "llama.block_count") == 0)
            bc_pos = pos;
        pos++;
    }
    CHECK(bc_pos == 1);

    /* pass-through: the source's KVs re-written from JSON give the same bytes */
    gguf_writer *g2 = gguf_writer_new();
    json_object_foreach(kv, k, vv)
        CHECK(gguf_writer_set_kv_json(g2, k, vv, json_string_value(json_object_get(ty, k))) == 0);
    for (int i = 0; i < s->ntensors; i++) {
        const qs_tensor *t = &s->tensors[i];
        int gt = t->nparts && strcmp(t->parts[0].role, "blocks") == 0
               ? ggml_qtype_from_name(json_string_value(json_object_get(json_object_get(t->attrs, "quant"), "type")))
               : t->dtype == DT_F16 ? GGML_T_F16 : GGML_T_F32;
        CHECK(gguf_writer_add_tensor(g2, t->name, gt, t->ndim, t->shape, qs_tensor_nbytes(t)) == i);
    }
    const char *path2 = tmp_path("rt2");
    fd = open(path2, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(gguf_writer_write_header(g2, fd, &err) == 0);
    close(fd);
    size_t l1, l2;
    uint8_t *h1 = tl_slurp(path, &l1), *h2 = tl_slurp(path2, &l2);
    CHECK(l2 == gguf_writer_header_size(g2) && l1 > l2 && memcmp(h1, h2, l2) == 0);
    free(h1);
    free(h2);
    gguf_writer_free(g2);
    qsrc_close(s);
    /* a 3-D quantized tensor: blocks [shape[0], rest], decoded by dequant.c */
    {
        gguf_writer *g3 = gguf_writer_new();
        int64_t sh[] = { 2, 3, 64 };
        float v[2 * 3 * 64], back[2 * 3 * 64];
        uint8_t q8[2 * 3 * 68];
        for (int i = 0; i < 2 * 3 * 64; i++) v[i] = cosf(0.3f * (float)i);
        ggml_quantize_rows(GGML_T_Q8_0, v, q8, 6, 64, NULL);
        CHECK(gguf_writer_add_tensor(g3, "moe", GGML_T_Q8_0, 3, sh, sizeof q8) == 0);
        const char *p3 = tmp_path("3d");
        int fd3 = open(p3, O_RDWR | O_CREAT | O_TRUNC, 0644);
        CHECK(gguf_writer_write_header(g3, fd3, &err) == 0);
        CHECK(pwrite(fd3, q8, sizeof q8, (off_t)gguf_writer_data_offset(g3, 0)) == (ssize_t)sizeof q8);
        CHECK(gguf_writer_finish(g3, fd3, &err) == 0);
        close(fd3);
        gguf_writer_free(g3);
        qsrc *src3 = gguf_open(p3, &err);
        CHECK(src3 != NULL);
        if (src3) {
            const qs_tensor *t = &src3->tensors[0];
            CHECK(t->ndim == 3 && t->shape[0] == 2 && t->shape[1] == 3 && t->shape[2] == 64);
            CHECK(t->parts[0].shape[0] == 2 && t->parts[0].shape[1] == 3 * 68);
            float *y = tensor_to_f32(t, qsrc_map(src3, 0), sizeof q8, &err);
            ggml_dequantize_row(GGML_T_Q8_0, q8, back, 2 * 3 * 64);
            CHECK_MSG(y && memcmp(y, back, sizeof back) == 0, "%s", y ? "values" : err);
            free(y);
        }
        qsrc_close(src3);
        unlink(p3);
    }
    /* qsrc_open dispatches a .gguf path to this reader */
    qsrc *sd = qsrc_open(path, &err);
    CHECK(sd && sd->ntensors == 4 && strcmp(json_string_value(json_object_get(sd->header.meta, "format")), "gguf") == 0);
    qsrc_close(sd);
    unlink(path);
    unlink(path2);
}

/*-*** Hostile headers, built byte by byte ***/

typedef struct { uint8_t b[4096]; size_t n; } bytes;
static void put(bytes *o, const void *p, size_t k) { memcpy(o->b + o->n, p, k); o->n += k; }
static void u32(bytes *o, uint32_t v) { put(o, &v, 4); }
static void u64(bytes *o, uint64_t v) { put(o, &v, 8); }
static void str(bytes *o, const char *s) { u64(o, strlen(s)); put(o, s, strlen(s)); }

/* Knobs of a small file: 2 KVs, 2 tensors (q8_0 [2,32] and f32 [8]). */
typedef struct {
    uint32_t version;
    uint64_t nt, nkv;
    const char *key2;
    uint32_t align_type, align;
    const char *t0name, *t1name;
    uint32_t t0dims, t0type;
    uint64_t t0ne0, t0ne1, t1off;
    int truncate_by;             /* bytes cut from the end */
    int extra_kv;                /* 1 nested array, 2 unknown type, 3 huge string, 4 huge array */
} knobs;

static knobs base_knobs(void)
{
    knobs k = { 3, 2, 2, "general.alignment", 4, 32, "q", "n", 2, 8, 32, 2, 96, 0, 0 };
    return k;
}

static size_t build(bytes *o, const knobs *k)
{
    o->n = 0;
    put(o, "GGUF", 4);
    u32(o, k->version);
    u64(o, k->nt);
    u64(o, k->nkv + (k->extra_kv ? 1 : 0));
    str(o, "general.architecture"); u32(o, 8); str(o, "llama");
    str(o, k->key2); u32(o, k->align_type);
    if (k->align_type == 10) u64(o, k->align); else u32(o, k->align);
    switch (k->extra_kv) {
    case 1: str(o, "x.nested"); u32(o, 9); u32(o, 9); u64(o, 1); u32(o, 4); u64(o, 0); break;
    case 2: str(o, "x.unknown"); u32(o, 13); u32(o, 0); break;
    case 3: str(o, "x.huge"); u32(o, 8); u64(o, 1ull << 40); break;
    case 4: str(o, "x.arr"); u32(o, 9); u32(o, 4); u64(o, 1ull << 29); break;
    default: break;
    }
    str(o, k->t0name); u32(o, k->t0dims);
    u64(o, k->t0ne0);
    for (uint32_t d = 1; d < k->t0dims && d < 8; d++) u64(o, d == 1 ? k->t0ne1 : 1);
    u32(o, k->t0type); u64(o, 0);
    str(o, k->t1name); u32(o, 1); u64(o, 8); u32(o, 0); u64(o, k->t1off);
    while (o->n % 32) o->b[o->n++] = 0;
    memset(o->b + o->n, 0x11, 128);                          /* 68 + pad, then 32 bytes of f32 */
    o->n += 128;
    o->n -= (size_t)k->truncate_by;
    return o->n;
}

static int refused(const knobs *k, const char *want)
{
    bytes o;
    build(&o, k);
    char *err = NULL;
    gguf_file *f = gguf_file_parse(o.b, o.n, "h.gguf", &err);
    int ok = !f && err && (!want || strstr(err, want));
    if (!ok)
        fprintf(stderr, "  expected refusal '%s', got %s\n", want ? want : "", f ? "success" : err);
    gguf_file_close(f);
    free(err);
    return ok;
}

TEST(hostile_headers)
{
    knobs k = base_knobs();
    bytes o;
    build(&o, &k);
    char *err = NULL;
    gguf_file *f = gguf_file_parse(o.b, o.n, "h.gguf", &err);
    CHECK_MSG(f != NULL, "base file: %s", err ? err : "");          /* the base itself is valid */
    if (f)
        CHECK(f->ntensors == 2 && f->tensors[1].offset == 96 && f->data_offset % 32 == 0);
    gguf_file_close(f);
    free(err);
    /* version 2 has the same layout */
    k = base_knobs(); k.version = 2;
    build(&o, &k);
    err = NULL;
    f = gguf_file_parse(o.b, o.n, "h.gguf", &err);
    CHECK(f != NULL);
    gguf_file_close(f);
    free(err);

    k = base_knobs(); k.version = 1;               CHECK(refused(&k, "version"));
    k = base_knobs(); k.version = 4;               CHECK(refused(&k, "version"));
    k = base_knobs(); k.version = 0x03000000;      CHECK(refused(&k, "byte-swapped"));
    k = base_knobs(); k.nt = 1ull << 40;           CHECK(refused(&k, "cannot fit"));
    k = base_knobs(); k.nkv = UINT64_MAX;          CHECK(refused(&k, "cannot fit"));
    k = base_knobs(); k.nkv = 40;                  CHECK(refused(&k, NULL));   /* KVs run into infos */
    k = base_knobs(); k.key2 = "general.architecture"; CHECK(refused(&k, "duplicate key"));
    k = base_knobs(); k.key2 = "";                 CHECK(refused(&k, "empty key"));
    k = base_knobs(); k.align = 48;                CHECK(refused(&k, "power of two"));
    k = base_knobs(); k.align = 0;                 CHECK(refused(&k, "power of two"));
    k = base_knobs(); k.align_type = 10;           CHECK(refused(&k, "UINT32"));
    k = base_knobs(); k.extra_kv = 1;              CHECK(refused(&k, "array element type"));
    k = base_knobs(); k.extra_kv = 2;              CHECK(refused(&k, "unknown value type"));
    k = base_knobs(); k.extra_kv = 3;              CHECK(refused(&k, "string length"));
    k = base_knobs(); k.extra_kv = 4;              CHECK(refused(&k, "exceeds the file"));
    k = base_knobs(); k.t1name = "q";              CHECK(refused(&k, "duplicate tensor"));
    k = base_knobs(); k.t0name = "0123456789012345678901234567890123456789012345678901234567890123";
                                                   CHECK(refused(&k, "name of 64 bytes"));
    k = base_knobs(); k.t0dims = 5;                CHECK(refused(&k, "dims"));
    k = base_knobs(); k.t0type = 4;                CHECK(refused(&k, "removed"));
    k = base_knobs(); k.t0type = 99;               CHECK(refused(&k, "unknown"));
    k = base_knobs(); k.t0ne0 = 48;                CHECK(refused(&k, "multiple"));
    k = base_knobs(); k.t0ne0 = 1ull << 63;        CHECK(refused(&k, "negative"));
    k = base_knobs(); k.t0ne0 = 32; k.t0ne1 = 1ull << 62; CHECK(refused(&k, "overflow"));
    k = base_knobs(); k.t1off = 64;                CHECK(refused(&k, "expected 96"));   /* overlap */
    k = base_knobs(); k.t1off = 128;               CHECK(refused(&k, "expected 96"));   /* gap */
    k = base_knobs(); k.t1off = 100;               CHECK(refused(&k, "expected 96"));   /* misaligned */
    k = base_knobs(); k.truncate_by = 8;           CHECK(refused(&k, "past the end"));  /* data cut */
    /* the last tensor may end without its padding (llama.cpp's loader accepts that) */
    k = base_knobs(); k.truncate_by = 0;
    build(&o, &k);
    err = NULL;
    f = gguf_file_parse(o.b, o.n - 0, "h.gguf", &err);
    CHECK(f != NULL);
    gguf_file_close(f);
    free(err);
    /* every truncation of the header is refused without reading out of bounds */
    k = base_knobs();
    size_t full = build(&o, &k);
    int all = 1;
    for (size_t cut = 0; cut < full - 128; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1);              /* exact size, so ASan sees overreads */
        memcpy(copy, o.b, cut);
        err = NULL;
        f = gguf_file_parse(copy, cut, "h.gguf", &err);
        all &= f == NULL && err != NULL;
        gguf_file_close(f);
        free(err);
        free(copy);
    }
    CHECK(all);
    /* not GGUF at all, and a missing file */
    err = NULL;
    CHECK(gguf_file_parse("GGML....", 8, "x", &err) == NULL && strstr(err, "magic"));
    free(err);
    err = NULL;
    CHECK(gguf_open("/nonexistent/x.gguf", &err) == NULL && err && strstr(err, "/nonexistent/x.gguf"));
    free(err);
}

/*-*** Llama conventions ***/

TEST(llama_names)
{
    static const char *const map[][2] = {
        { "model.embed_tokens.weight", "token_embd.weight" },
        { "model.norm.weight", "output_norm.weight" },
        { "lm_head.weight", "output.weight" },
        { "model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight" },
        { "model.layers.11.self_attn.q_proj.weight", "blk.11.attn_q.weight" },
        { "model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias" },
        { "model.layers.3.self_attn.v_proj.weight", "blk.3.attn_v.weight" },
        { "model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight" },
        { "model.layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight" },
        { "model.layers.3.mlp.gate_proj.weight", "blk.3.ffn_gate.weight" },
        { "model.layers.3.mlp.up_proj.weight", "blk.3.ffn_up.weight" },
        { "model.layers.3.mlp.down_proj.weight", "blk.3.ffn_down.weight" },
    };
    char out[64];
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        CHECK_MSG(gguf_llama_name(map[i][0], out, sizeof out) == 0 && strcmp(out, map[i][1]) == 0,
                  "%s", map[i][0]);
    CHECK(gguf_llama_name("model.layers.0.self_attn.rotary_emb.inv_freq", out, sizeof out) == -1);
    CHECK(gguf_llama_name("model.layers.x.mlp.up_proj.weight", out, sizeof out) == -1);
    CHECK(gguf_llama_name("model.layers.-1.mlp.up_proj.weight", out, sizeof out) == -1);
    CHECK(gguf_llama_name("model.layers.0.mlp.up_proj.weight", out, 8) == -1);   /* too small */
    CHECK(gguf_llama_qk_kind("model.layers.2.self_attn.q_proj.weight") == 1);
    CHECK(gguf_llama_qk_kind("model.layers.2.self_attn.k_proj.weight") == 2);
    CHECK(gguf_llama_qk_kind("model.layers.2.self_attn.v_proj.weight") == 0);
    /* general.file_type of the fixtures (gguf_facts.py): q4_k_m 15, q3_k_m 12, q8_0 7, f16 1 */
    CHECK(gguf_llama_ftype(GGML_T_Q4_K) == 15 && gguf_llama_ftype(GGML_T_Q3_K) == 12);
    CHECK(gguf_llama_ftype(GGML_T_Q8_0) == 7 && gguf_llama_ftype(GGML_T_F16) == 1);
    CHECK(gguf_llama_ftype(GGML_T_Q5_0) == 8 && gguf_llama_ftype(GGML_T_Q6_K) == 18);
    CHECK(gguf_llama_ftype(16) == -1);
}

TEST(qk_permutation)
{
    /* spec example: 1 head, hd = 8 → new order of old rows 0,4,1,5,2,6,3,7 */
    float src[8 * 3], dst[8 * 3], back[8 * 3];
    for (int r = 0; r < 8; r++)
        for (int c = 0; c < 3; c++)
            src[r * 3 + c] = (float)(r * 10 + c);
    gguf_permute_qk_rows(src, dst, 8, 3, 1);
    static const int order[8] = { 0, 4, 1, 5, 2, 6, 3, 7 };
    for (int r = 0; r < 8; r++)
        CHECK(dst[r * 3] == (float)(order[r] * 10) && dst[r * 3 + 2] == (float)(order[r] * 10 + 2));
    gguf_unpermute_qk_rows(dst, back, 8, 3, 1);
    CHECK(memcmp(src, back, sizeof src) == 0);
    /* 2 heads of 4: heads permute independently (0,2,1,3 | 4,6,5,7) */
    gguf_permute_qk_rows(src, dst, 8, 3, 2);
    static const int order2[8] = { 0, 2, 1, 3, 4, 6, 5, 7 };
    for (int r = 0; r < 8; r++)
        CHECK(dst[r * 3 + 1] == (float)(order2[r] * 10 + 1));
}

/* config.json → the llama.* KVs llama.cpp's converter wrote into the fixture. */
TEST(llama_metadata_matches_fixture)
{
    size_t len;
    char *cfg = tl_slurp("tests/data/ts3m-bf16/config.json", &len);
    CHECK(cfg != NULL);
    if (!cfg)
        return;
    gguf_writer *g = gguf_writer_new();
    char *err = NULL;
    CHECK(gguf_llama_metadata(g, cfg, len, &err) == 0);
    tokenizer *tk = tokenizer_load_dir("tests/data/ts3m-bf16", &err);
    CHECK_MSG(tk != NULL, "%s", err ? err : "");
    if (tk)
        CHECK_MSG(gguf_set_tokenizer(g, tk, &err) == 0, "%s", err ? err : "");
    const char *path = tmp_path("meta");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(gguf_writer_write_header(g, fd, &err) == 0);
    close(fd);
    gguf_writer_free(g);
    gguf_file *mine = gguf_file_open(path, &err);
    char *buf;
    gguf_file *ref = open_fixture_header(&buf);
    CHECK(mine && ref);
    if (mine && ref) {
        /* every KV we write exists in llama.cpp's file with the same type and value */
        const char *k;
        json_t *v;
        int n = 0;
        json_object_foreach(mine->kv, k, v) {
            json_t *rv = json_object_get(ref->kv, k);
            const char *mt = json_string_value(json_object_get(mine->kv_types, k));
            const char *rt = json_string_value(json_object_get(ref->kv_types, k));
            CHECK_MSG(rv && rt && strcmp(mt, rt) == 0, "%s: type %s vs %s", k, mt, rt ? rt : "(absent)");
            CHECK_MSG(rv && json_equal(v, rv), "%s: value differs", k);
            n++;
        }
        /* and every llama.* / general.{architecture,type} key of the fixture is written */
        json_object_foreach(ref->kv, k, v)
            if (strncmp(k, "llama.", 6) == 0 || !strcmp(k, "general.architecture") || !strcmp(k, "general.type") ||
                (tk && strncmp(k, "tokenizer.", 10) == 0))
                CHECK_MSG(json_object_get(mine->kv, k) != NULL, "missing %s", k);
        CHECK(n >= 12);
    }
    gguf_file_close(mine);
    gguf_file_close(ref);
    free(buf);
    free(cfg);
    tokenizer_free(tk);
    free(err);
    unlink(path);
    /* a config without a required field is refused with its name */
    gguf_writer *g2 = gguf_writer_new();
    err = NULL;
    const char bad[] = "{\"hidden_size\": 256}";
    CHECK(gguf_llama_metadata(g2, bad, sizeof bad - 1, &err) == -1 && err && strstr(err, "num_hidden_layers"));
    free(err);
    gguf_writer_free(g2);
}

int main(void)
{
    RUN(fixture_header_facts);
    RUN(write_read_roundtrip);
    RUN(hostile_headers);
    RUN(llama_names);
    RUN(qk_permutation);
    RUN(llama_metadata_matches_fixture);
    return tl_summary();
}
