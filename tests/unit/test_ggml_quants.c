/* test_ggml_quants — ggml block formats against llama.cpp's own bytes
 * (tests/data/gguf excerpts of llama-quantize output), SIMD against _ref bit
 * for bit, encoders/decoders written here straight from the spec text
 * (/work/shared/specs/gguf.md §8), round-trip error bounds, and the type table.
 */
#include "testlib.h"
#include "ggml_quants.h"
#include "gguf.h"
#include "dtype.h"

#include <jansson.h>
#include <stdint.h>
#include <string.h>

#define DATA "tests/data/gguf/"


/* ggml test-quantize-fns.cpp style data: 0.1 + 2 cos(i + offset). */
static void cos_data(float *x, int64_t n, float offset)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = 0.1f + 2 * cosf((float)i + offset);
}

/* Deterministic noisy data with outliers (LCG), closer to real weights. */
static void noisy_data(float *x, int64_t n, uint32_t seed)
{
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        float u = (float)(seed >> 8) / 16777216.0f - 0.5f;
        x[i] = 0.05f * u + 0.02f * sinf(0.37f * (float)i) + ((i % 97) == 0 ? 0.3f * u : 0);
    }
}

/*-*** The gold test: llama-quantize's bytes ***/

TEST(gold_llama_quantize_bytes)
{
    size_t jl, il, ml, bl;
    char *js = tl_slurp(DATA "excerpts.json", &jl);
    float *in = tl_slurp(DATA "inputs.bin", &il);
    float *im = tl_slurp(DATA "imatrix.bin", &ml);
    uint8_t *blk = tl_slurp(DATA "blocks.bin", &bl);
    CHECK(js && in && im && blk);
    if (!js || !in || !im || !blk)
        return;
    json_t *root = json_loadb(js, jl, 0, NULL);
    json_t *tensors = json_object_get(root, "tensors"), *cases = json_object_get(root, "cases");
    CHECK(json_array_size(cases) == 91);
    int matched = 0, imatrix_cases = 0;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *tname = json_string_value(json_object_get(c, "tensor"));
        json_t *t = NULL, *tt;
        size_t k;
        json_array_foreach(tensors, k, tt)
            if (strcmp(json_string_value(json_object_get(tt, "name")), tname) == 0)
                t = tt;
        CHECK(t != NULL);
        if (!t)
            continue;
        int64_t rows = json_integer_value(json_object_get(t, "rows"));
        int64_t cols = json_integer_value(json_object_get(t, "cols"));
        const float *x = in + json_integer_value(json_object_get(t, "offset")) / 4;
        float *rowsbuf = malloc((size_t)(rows * cols) * sizeof *rowsbuf);
        if (json_is_true(json_object_get(t, "permute")))     /* one whole head, HF order */
            gguf_permute_qk_rows(x, rowsbuf, rows, cols, 1);
        else
            memcpy(rowsbuf, x, (size_t)(rows * cols) * sizeof *rowsbuf);
        const float *w = json_is_true(json_object_get(c, "imatrix"))
                       ? im + json_integer_value(json_object_get(t, "imatrix_offset")) / 4 : NULL;
        imatrix_cases += w != NULL;
        int type = ggml_qtype_from_name(json_string_value(json_object_get(c, "type")));
        size_t nb = (size_t)json_integer_value(json_object_get(c, "nbytes"));
        const uint8_t *want = blk + json_integer_value(json_object_get(c, "offset"));
        uint8_t *got = calloc(1, nb);
        size_t wrote = ggml_quantize_rows(type, rowsbuf, got, rows, cols, w);
        int same = wrote == nb && memcmp(got, want, nb) == 0;
        CHECK_MSG(same, "%s %s %s%s", json_string_value(json_object_get(c, "file")), tname,
                  json_string_value(json_object_get(c, "type")), w ? " imatrix" : "");
        matched += same;
        /* the scalar path must agree too (the SIMD one is used above when available) */
        ggml_quants_force_ref(1);
        memset(got, 0, nb);
        ggml_quantize_rows(type, rowsbuf, got, rows, cols, w);
        ggml_quants_force_ref(0);
        CHECK(memcmp(got, want, nb) == 0);
        free(got);
        free(rowsbuf);
    }
    CHECK(matched == 91);
    CHECK(imatrix_cases == 10);
    json_decref(root);
    free(js);
    free(in);
    free(im);
    free(blk);
}

/* The permutation matters: unpermuted q_proj rows do not give llama.cpp's bytes. */
TEST(gold_needs_qk_permutation)
{
    size_t jl, il, bl;
    char *js = tl_slurp(DATA "excerpts.json", &jl);
    float *in = tl_slurp(DATA "inputs.bin", &il);
    uint8_t *blk = tl_slurp(DATA "blocks.bin", &bl);
    CHECK(js && in && blk);
    if (!js || !in || !blk)
        return;
    json_t *root = json_loadb(js, jl, 0, NULL);
    json_t *t0 = json_array_get(json_object_get(root, "tensors"), 0);
    json_t *c = NULL, *cc;
    size_t i;
    json_array_foreach(json_object_get(root, "cases"), i, cc)
        if (!c && strcmp(json_string_value(json_object_get(cc, "file")), "ts3m-q8_0.gguf") == 0)
            c = cc;
    CHECK(strcmp(json_string_value(json_object_get(t0, "name")), "blk.0.attn_q.weight") == 0);
    CHECK(c && strcmp(json_string_value(json_object_get(c, "tensor")), "blk.0.attn_q.weight") == 0);
    if (c) {
        size_t nb = (size_t)json_integer_value(json_object_get(c, "nbytes"));
        uint8_t *got = malloc(nb);
        ggml_quantize_rows(GGML_T_Q8_0, in, got, 32, 256, NULL);     /* HF order, not permuted */
        CHECK(memcmp(got, blk + json_integer_value(json_object_get(c, "offset")), nb) != 0);
        /* row 1 of GGUF order is HF row 16 (hd = 32): its block bytes match HF row 16's */
        ggml_quantize_rows(GGML_T_Q8_0, in + 16 * 256, got, 1, 256, NULL);
        CHECK(memcmp(got, blk + json_integer_value(json_object_get(c, "offset")) + 272, 272) == 0);
        free(got);
    }
    json_decref(root);
    free(js);
    free(in);
    free(blk);
}

/*-*** Independent encoders from the spec text (§8) ***/

/* Q8_0 as the spec words it: amax, d = amax/127, id = d ? 1/d : 0, qs = roundf(x·id). */
static void spec_q8_0(const float *x, uint8_t *out)
{
    float amax = 0;
    for (int j = 0; j < 32; j++)
        if (fabsf(x[j]) > amax)
            amax = fabsf(x[j]);
    float d = amax / 127, id = d != 0 ? 1 / d : 0;
    uint16_t h = f32_to_f16(d);
    memcpy(out, &h, 2);
    for (int j = 0; j < 32; j++)
        out[2 + j] = (uint8_t)(int)roundf(x[j] * id);
}

/* Q4_0: max = signed largest-|x| (first), d = max/−8, q = min(15, (int8)(x·id + 8.5)),
 * qs[j] = q_j | q_{j+16} << 4. */
static void spec_q4_0(const float *x, uint8_t *out)
{
    int best = 0;
    for (int j = 1; j < 32; j++)
        if (fabsf(x[j]) > fabsf(x[best]))
            best = j;
    float max = fabsf(x[best]) > 0 ? x[best] : 0.0f;
    float d = max / -8, id = d != 0 ? 1 / d : 0;
    uint16_t h = f32_to_f16(d);
    memcpy(out, &h, 2);
    int q[32];
    for (int j = 0; j < 32; j++) {
        int v = (int8_t)(x[j] * id + 8.5f);
        q[j] = v > 15 ? 15 : v;
    }
    for (int j = 0; j < 16; j++)
        out[2 + j] = (uint8_t)(q[j] | q[j + 16] << 4);
}

/* Blocks exercising ties, zeros, sign ties of the max, and plain data. */
static void edge_blocks(float *x, int nblk)
{
    noisy_data(x, 32 * (int64_t)nblk, 7);
    for (int j = 0; j < 32; j++) {
        x[j] = 0;                                            /* all zero */
        x[32 + j] = (j % 2 ? -1.0f : 1.0f) * (float)(j % 8) * 0.5f;   /* Q8_0/Q4_0 ties */
        x[64 + j] = j == 3 ? 2.0f : j == 9 ? -2.0f : 0.25f * (float)(j % 5);  /* |max| tie */
        x[96 + j] = j == 0 ? -0.0f : -1e-30f * (float)j;     /* tiny negatives, -0 */
        x[128 + j] = j == 5 ? 127.0f : (float)j - 16.5f;     /* d = 1: exact half ties */
        x[160 + j] = j == 0 ? -8.0f : (float)j * 0.5f - 8.0f; /* Q4_0 d = 1 exactly */
    }
}

TEST(spec_encoders_q8_0_q4_0)
{
    enum { NB = 64 };
    float x[32 * NB];
    edge_blocks(x, NB);
    uint8_t a[34 * NB], b[34];
    ggml_quantize_row_ref(GGML_T_Q8_0, x, a, 32 * NB, NULL);
    for (int i = 0; i < NB; i++) {
        spec_q8_0(x + 32 * i, b);
        CHECK_MSG(memcmp(a + 34 * i, b, 34) == 0, "q8_0 block %d", i);
    }
    ggml_quantize_row_ref(GGML_T_Q4_0, x, a, 32 * NB, NULL);
    for (int i = 0; i < NB; i++) {
        spec_q4_0(x + 32 * i, b);
        CHECK_MSG(memcmp(a + 18 * i, b, 18) == 0, "q4_0 block %d", i);
    }
    /* Q8_0 ignores an imatrix (as ggml's quantize_q8_0) */
    float w[32 * NB];
    for (int i = 0; i < 32 * NB; i++)
        w[i] = 1.0f + (float)(i % 3);
    uint8_t c[34 * NB];
    ggml_quantize_row(GGML_T_Q8_0, x, c, 32 * NB, w);
    ggml_quantize_row_ref(GGML_T_Q8_0, x, a, 32 * NB, NULL);
    CHECK(memcmp(a, c, sizeof c) == 0);
}

/*-*** Independent decoders from the spec text ***/

static float h16(const uint8_t *p) { return f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* Value of element e of a 256-block, written from §8's field descriptions. */
static float spec_k_value(int type, const uint8_t *b, int e)
{
    int j, l, c;
    switch (type) {
    case GGML_T_Q2_K: {                         /* scales[16] | qs[64] | d | dmin */
        c = e / 128, l = e % 32;
        int q = (b[16 + 32 * c + l] >> (2 * ((e % 128) / 32))) & 3;
        int sc = b[e / 16];
        return h16(b + 80) * (float)(sc & 0xF) * (float)q - h16(b + 82) * (float)(sc >> 4);
    }
    case GGML_T_Q3_K: {                         /* hmask[32] | qs[64] | scales[12] | d */
        c = e / 128, l = e % 32;
        int q = (b[32 + 32 * c + l] >> (2 * ((e % 128) / 32))) & 3;
        int high = (b[e % 32] >> (e / 32)) & 1;
        j = e / 16;
        int lo = j < 8 ? b[96 + j] & 0xF : b[96 + j - 8] >> 4;
        int s6 = lo | ((b[96 + 8 + j % 4] >> (2 * (j / 4))) & 3) << 4;
        return h16(b + 108) * (float)(s6 - 32) * (float)(q - (high ? 0 : 4));
    }
    case GGML_T_Q4_K: case GGML_T_Q5_K: {       /* d | dmin | scales[12] | (qh[32]) | qs[128] */
        j = e / 32;
        const uint8_t *s = b + 4;
        int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 0xF) | (s[j - 4] >> 6) << 4;
        int m = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | (s[j] >> 6) << 4;
        c = e / 64, l = e % 32;
        int hi_nib = (e % 64) >= 32;
        int qs_off = type == GGML_T_Q4_K ? 16 : 48;
        int q = (b[qs_off + 32 * c + l] >> (4 * hi_nib)) & 0xF;
        if (type == GGML_T_Q5_K)
            q += 16 * ((b[16 + l] >> (2 * c + hi_nib)) & 1);
        return h16(b) * (float)sc * (float)q - h16(b + 2) * (float)m;
    }
    default: {                                  /* Q6_K: ql[128] | qh[64] | scales[16] | d */
        int h = e / 128, r = e % 128, quarter = r / 32;
        l = r % 32;
        int a_or_c = quarter == 0 || quarter == 2;             /* a = +0, b = +32, c = +64, e = +96 */
        int ql = b[64 * h + l + (a_or_c ? 0 : 32)] >> (quarter >= 2 ? 4 : 0) & 0xF;
        int qh = (b[128 + 32 * h + l] >> (2 * quarter)) & 3;
        return h16(b + 208) * (float)(int8_t)b[192 + e / 16] * (float)((ql | qh << 4) - 32);
    }
    }
}

TEST(spec_decoders_k_quants)
{
    static const int types[] = { GGML_T_Q2_K, GGML_T_Q3_K, GGML_T_Q4_K, GGML_T_Q5_K, GGML_T_Q6_K };
    uint8_t b[4 * 210];
    float y[4 * 256];
    uint32_t s = 12345;
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        size_t bs = ggml_qtype_traits(types[t])->type_size;
        for (size_t i = 0; i < 4 * bs; i++) {                  /* random bytes, sane fp16 scales */
            s = s * 1103515245u + 12345u;
            b[i] = (uint8_t)(s >> 16);
        }
        for (int k = 0; k < 4; k++) {
            uint8_t *blk = b + k * bs;
            uint16_t d = f32_to_f16(0.01f * (float)(k + 1)), dm = f32_to_f16(0.003f);
            size_t doff = types[t] == GGML_T_Q2_K ? 80 : types[t] == GGML_T_Q3_K ? 108
                        : types[t] == GGML_T_Q6_K ? 208 : 0;
            memcpy(blk + doff, &d, 2);
            if (types[t] == GGML_T_Q2_K) memcpy(blk + 82, &dm, 2);
            if (types[t] == GGML_T_Q4_K || types[t] == GGML_T_Q5_K) memcpy(blk + 2, &dm, 2);
        }
        CHECK(ggml_dequantize_row(types[t], b, y, 4 * 256) == 0);
        int bad = 0;
        for (int e = 0; e < 4 * 256; e++) {
            float want = spec_k_value(types[t], b + (e / 256) * bs, e % 256);
            if (fabsf(want - y[e]) > 1e-6f * (1 + fabsf(want)))
                bad++;
        }
        CHECK_MSG(bad == 0, "%s: %d elements differ from the spec decoder", ggml_qtype_traits(types[t])->name, bad);
    }
}

/* Simple types decoded from the spec text, on random bytes. */
TEST(spec_decoders_simple)
{
    uint8_t b[34 * 8];
    float y[32 * 8];
    uint32_t s = 99;
    for (size_t i = 0; i < sizeof b; i++) {
        s = s * 1103515245u + 12345u;
        b[i] = (uint8_t)(s >> 16);
    }
    static const int types[] = { GGML_T_Q8_0, GGML_T_Q4_0, GGML_T_Q4_1, GGML_T_Q5_0, GGML_T_Q5_1 };
    for (size_t t = 0; t < 5; t++) {
        int ty = types[t];
        size_t bs = ggml_qtype_traits(ty)->type_size;
        uint8_t blocks[34 * 8];
        memcpy(blocks, b, sizeof blocks);
        for (int k = 0; k < 8; k++) {                           /* finite fp16 d, m */
            uint16_t d = f32_to_f16(0.02f * (float)(k - 3)), m = f32_to_f16(-0.1f * (float)k);
            memcpy(blocks + k * bs, &d, 2);
            if (ty == GGML_T_Q4_1 || ty == GGML_T_Q5_1) memcpy(blocks + k * bs + 2, &m, 2);
        }
        CHECK(ggml_dequantize_row(ty, blocks, y, 32 * 8) == 0);
        int bad = 0;
        for (int e = 0; e < 32 * 8; e++) {
            const uint8_t *bl = blocks + (e / 32) * bs;
            int j = e % 32;
            float d = h16(bl), want;
            if (ty == GGML_T_Q8_0) {
                want = (float)(int8_t)bl[2 + j] * d;
            } else {
                int qs_off = ty == GGML_T_Q4_0 ? 2 : ty == GGML_T_Q4_1 ? 4 : ty == GGML_T_Q5_0 ? 6 : 8;
                int q = (bl[qs_off + j % 16] >> (j < 16 ? 0 : 4)) & 0xF;
                if (ty == GGML_T_Q5_0 || ty == GGML_T_Q5_1) {
                    const uint8_t *qh = bl + (ty == GGML_T_Q5_0 ? 2 : 4);
                    q |= ((qh[j / 8] >> (j % 8)) & 1) << 4;
                }
                want = ty == GGML_T_Q4_0 ? (float)(q - 8) * d : ty == GGML_T_Q5_0 ? (float)(q - 16) * d
                     : (float)q * d + h16(bl + 2);
            }
            bad += want != y[e];
        }
        CHECK_MSG(bad == 0, "%s: %d elements differ", ggml_qtype_traits(ty)->name, bad);
    }
}

/*-*** SIMD = _ref, bit for bit ***/

TEST(simd_matches_ref)
{
    if (!ggml_quants_have_avx2()) {
        printf("# no AVX2 on this CPU: dispatch stays scalar\n");
        return;
    }
    static const int nblocks[] = { 1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 33, 63, 67, 127, 128, 255 };
    for (size_t s = 0; s < sizeof nblocks / sizeof nblocks[0]; s++) {
        int64_t n = 32 * nblocks[s];
        float *x = malloc((size_t)n * 4), *ya = malloc((size_t)n * 4), *yb = malloc((size_t)n * 4);
        uint8_t *qa = malloc((size_t)n * 2), *qb = malloc((size_t)n * 2);
        for (int variant = 0; variant < 3; variant++) {
            if (variant == 0) cos_data(x, n, (float)s);
            else if (variant == 1) noisy_data(x, n, (uint32_t)s + 1);
            else if (n >= 192) edge_blocks(x, (int)(n / 32));
            else continue;
            static const int types[] = { GGML_T_Q8_0, GGML_T_Q4_0 };
            for (int t = 0; t < 2; t++) {
                size_t rs = ggml_row_size(types[t], n);
                memset(qa, 0xAA, rs);
                memset(qb, 0x55, rs);
                ggml_quantize_row_ref(types[t], x, qa, n, NULL);
                CHECK(ggml_quantize_row(types[t], x, qb, n, NULL) == rs);
                CHECK_MSG(memcmp(qa, qb, rs) == 0, "%s quantize, %d blocks, variant %d",
                          ggml_qtype_traits(types[t])->name, nblocks[s], variant);
                ggml_dequantize_row_ref(types[t], qa, ya, n);
                ggml_dequantize_row(types[t], qa, yb, n);
                CHECK_MSG(memcmp(ya, yb, (size_t)n * 4) == 0, "%s dequantize, %d blocks",
                          ggml_qtype_traits(types[t])->name, nblocks[s]);
            }
        }
        free(x); free(ya); free(yb); free(qa); free(qb);
    }
}

/*-*** dequantize(quantize(x)) error bounds ***/

TEST(roundtrip_error_bounds)
{
    /* relative RMS error limits, ~1.3x the measured values on this data
     * (f16 2.1e-4, bf16 1.8e-3, q8_0 .0069, q6_K .021, q5_1 .041, q5_K .040,
     * q5_0 .055, q4_K .079, q4_1 .084, q4_0 .110, q3_K .175, q2_K .320) */
    static const struct { int type; float max_rel; } lim[] = {
        { GGML_T_F16, 0.0003f }, { GGML_T_BF16, 0.0024f }, { GGML_T_Q8_0, 0.009f },
        { GGML_T_Q6_K, 0.027f }, { GGML_T_Q5_0, 0.072f }, { GGML_T_Q5_1, 0.054f },
        { GGML_T_Q5_K, 0.054f }, { GGML_T_Q4_0, 0.143f }, { GGML_T_Q4_1, 0.11f },
        { GGML_T_Q4_K, 0.104f }, { GGML_T_Q3_K, 0.23f }, { GGML_T_Q2_K, 0.42f },
        { GGML_T_F32, 0.0f },
    };
    enum { N = 256 * 16 };
    float *x = malloc(N * 4), *y = malloc(N * 4), *w = malloc(N * 4);
    uint8_t *q = malloc(N * 4);
    noisy_data(x, N, 3);
    for (int i = 0; i < N; i++)
        w[i] = 0.5f + (float)(i % 7);
    double ss = 0;
    for (int i = 0; i < N; i++)
        ss += (double)x[i] * x[i];
    for (size_t t = 0; t < sizeof lim / sizeof lim[0]; t++)
        for (int with_w = 0; with_w < 2; with_w++) {
            CHECK(ggml_quantize_row(lim[t].type, x, q, N, with_w ? w : NULL) == ggml_row_size(lim[t].type, N));
            CHECK(ggml_dequantize_row(lim[t].type, q, y, N) == 0);
            double se = 0;
            for (int i = 0; i < N; i++)
                se += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            double rel = sqrt(se / ss);
            CHECK_MSG(rel <= lim[t].max_rel, "%s%s: relative RMS error %.5f > %.5f",
                      ggml_qtype_traits(lim[t].type)->name, with_w ? " (imatrix)" : "", rel, lim[t].max_rel);
            if (getenv("QPIPE_TEST_VERBOSE"))
                printf("# %-5s %s rel rms %.5f\n", ggml_qtype_traits(lim[t].type)->name, with_w ? "w" : " ", rel);
        }
    /* Q8_0 per-element bound: |x − y| ≤ d/2 + fp16 rounding of d (≤ 2^-11 relative · 127 · d) */
    ggml_quantize_row(GGML_T_Q8_0, x, q, N, NULL);
    ggml_dequantize_row(GGML_T_Q8_0, q, y, N);
    int bad = 0;
    for (int b = 0; b < N / 32; b++) {
        float d = h16(q + 34 * b);
        for (int j = 0; j < 32; j++)
            bad += fabsf(x[32 * b + j] - y[32 * b + j]) > d * (0.5f + 127.0f / 2048.0f);
    }
    CHECK(bad == 0);
    /* the imatrix changes the K-quant choice (else the weights would be ignored) */
    uint8_t *q2 = malloc(N * 4);
    ggml_quantize_row(GGML_T_Q4_K, x, q, N, NULL);
    ggml_quantize_row(GGML_T_Q4_K, x, q2, N, w);
    CHECK(memcmp(q, q2, ggml_row_size(GGML_T_Q4_K, N)) != 0);
    free(q2);
    free(x); free(y); free(w); free(q);
}

/*-*** Type table ***/

TEST(type_table)
{
    static const struct { int t; const char *name; int blck; size_t size; } want[] = {
        { 0, "f32", 1, 4 }, { 1, "f16", 1, 2 }, { 2, "q4_0", 32, 18 }, { 3, "q4_1", 32, 20 },
        { 6, "q5_0", 32, 22 }, { 7, "q5_1", 32, 24 }, { 8, "q8_0", 32, 34 }, { 10, "q2_K", 256, 84 },
        { 11, "q3_K", 256, 110 }, { 12, "q4_K", 256, 144 }, { 13, "q5_K", 256, 176 },
        { 14, "q6_K", 256, 210 }, { 30, "bf16", 1, 2 },
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const ggml_qtraits *tr = ggml_qtype_traits(want[i].t);
        CHECK(tr && strcmp(tr->name, want[i].name) == 0 && tr->blck == want[i].blck &&
              tr->type_size == want[i].size && tr->supported);
        CHECK(ggml_qtype_from_name(want[i].name) == want[i].t);
    }
    CHECK(ggml_qtype_from_name("Q4_K") == GGML_T_Q4_K);
    CHECK(ggml_qtype_from_name("F16") == GGML_T_F16);
    CHECK(ggml_qtype_from_name("q4_2") == -1 && ggml_qtype_from_name("iq2_xxs") == -1);
    CHECK(ggml_qtype_traits(4) == NULL && ggml_qtype_traits(5) == NULL && ggml_qtype_traits(-1) == NULL);
    CHECK(ggml_qtype_traits(43) == NULL);
    CHECK(ggml_qtype_traits(16) && !ggml_qtype_traits(16)->supported);   /* iq2_xxs: sized, not coded */
    CHECK(ggml_row_size(GGML_T_Q4_K, 768) == 3 * 144);
    CHECK(ggml_row_size(GGML_T_Q4_0, 4096) == 128 * 18);
    CHECK(ggml_row_size(GGML_T_Q4_K, 100) == 0);
    float x[64] = { 0 };
    uint8_t q[64];
    CHECK(ggml_quantize_row(GGML_T_Q4_K, x, q, 64, NULL) == 0);          /* not a multiple of 256 */
    CHECK(ggml_quantize_row(16, x, q, 256, NULL) == 0);                  /* unsupported type */
    CHECK(ggml_dequantize_row(16, q, x, 256) == -1);
    CHECK(ggml_dequantize_row(GGML_T_Q8_0, q, x, 31) == -1);
}

int main(void)
{
    RUN(gold_llama_quantize_bytes);
    RUN(gold_needs_qk_permutation);
    RUN(spec_encoders_q8_0_q4_0);
    RUN(spec_decoders_k_quants);
    RUN(spec_decoders_simple);
    RUN(simd_matches_ref);
    RUN(roundtrip_error_bounds);
    RUN(type_table);
    return tl_summary();
}
