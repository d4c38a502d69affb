/* test_hfquant — formats/hfquant: packed GPTQ / AWQ / compressed-tensors.
 *
 * Independent checks: compressed-tensors' own pack_to_int32 test vectors
 * (specs/compressed_tensors.md §4, from tests/test_compressors/
 * quantized_compressors/test_pack_quant.py); reference packers written here
 * straight from the source texts (AutoGPTQ's pack() loop with its explicit
 * 3-bit word straddling, AutoAWQ's order_map loop, pack_to_int32's
 * pseudocode), compared byte for byte; a hand-worked AWQ word. Then round
 * trips pack -> in-memory checkpoint -> hfq_wrap_source -> stream form. */
#include "testlib.h"
#include "hfquant.h"
#include "quant.h"
#include "safetensors.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

/*-*** A travelling quantized tensor ***/

typedef struct {
    qs_tensor t;
    uint8_t *data;          /* parts concatenated */
    uint8_t *codes;
    float *scales, *zeros;  /* point into data (aligned copies below) */
    int32_t *g_idx;
    int64_t rows, cols, ng;
} qt;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

/* A random f16-representable positive scale. */
static float rnd_scale(void)
{
    uint16_t h = (uint16_t)(0x1C00 + rnd() % 0x2000);   /* ~0.004 .. 0.5 */
    return f16_to_f32(h);
}

/* zlo: smallest zero point to draw (asym). gidx: 0 none, 1 act-order permutation. */
static void qt_make(qt *q, const char *name, int64_t rows, int64_t cols, int bits, int group,
                    int sym, int gidx, int zlo)
{
    memset(q, 0, sizeof *q);
    quant_grid g;
    quant_grid_default(&g);
    g.bits = bits;
    g.group = group;
    g.sym = sym;
    g.act_order = gidx;
    strcpy(g.method, "gptq");
    q->rows = rows;
    q->cols = cols;
    q->ng = quant_ngroups(&g, cols);
    int64_t shape[2] = {rows, cols}, sc[2] = {rows, q->ng};
    qs_tensor_init(&q->t, name, DT_F32, 2, shape);
    q->t.nparts = 0;
    qs_tensor_add_part(&q->t, "codes", DT_U8, 2, shape);
    qs_tensor_add_part(&q->t, "scales", DT_F32, 2, sc);
    qs_tensor_add_part(&q->t, "zeros", DT_F32, 2, sc);
    if (gidx) qs_tensor_add_part(&q->t, "g_idx", DT_I32, 1, &cols);
    q->t.attrs = json_pack("{s:o}", "quant", quant_grid_to_json(&g));
    q->data = calloc(qs_tensor_nbytes(&q->t), 1);
    q->codes = malloc((size_t)(rows * cols));
    q->scales = malloc((size_t)(rows * q->ng) * 4);
    q->zeros = malloc((size_t)(rows * q->ng) * 4);
    q->g_idx = malloc((size_t)cols * 4);
    const int maxq = (1 << bits) - 1;
    for (int64_t i = 0; i < rows * cols; i++) q->codes[i] = (uint8_t)(rnd() % (uint32_t)(maxq + 1));
    for (int64_t i = 0; i < rows * q->ng; i++) {
        q->scales[i] = rnd_scale();
        q->zeros[i] = sym ? (float)(1 << (bits - 1)) : (float)(zlo + (int)(rnd() % (uint32_t)(maxq + 1 - zlo)));
    }
    /* act order: a random permutation; g_idx[c] = position of c / group */
    int64_t *perm = malloc((size_t)cols * sizeof *perm);
    for (int64_t c = 0; c < cols; c++) perm[c] = c;
    for (int64_t c = cols - 1; c > 0; c--) {
        int64_t j = rnd() % (uint32_t)(c + 1), x = perm[c];
        perm[c] = perm[j];
        perm[j] = x;
    }
    for (int64_t p = 0; p < cols; p++) q->g_idx[perm[p]] = (int32_t)(group > 0 ? p / group : 0);
    free(perm);
    uint8_t *d = q->data;
    memcpy(d, q->codes, (size_t)(rows * cols));
    d += rows * cols;
    memcpy(d, q->scales, (size_t)(rows * q->ng) * 4);
    d += rows * q->ng * 4;
    memcpy(d, q->zeros, (size_t)(rows * q->ng) * 4);
    d += rows * q->ng * 4;
    if (gidx) memcpy(d, q->g_idx, (size_t)cols * 4);
}

static void qt_free(qt *q)
{
    qs_tensor_clear(&q->t);
    free(q->data);
    free(q->codes);
    free(q->scales);
    free(q->zeros);
    free(q->g_idx);
}

/* Pack q in format; returns the layout and malloc'd buffers (NULL on error, *err set). */
static uint8_t **pack_fmt(const hfq_opts *o, const qt *q, qs_tensor **lay, int *n, char **err)
{
    *err = NULL;
    if (hfq_layout_opts(o, &q->t, lay, n, err)) return NULL;
    uint8_t **outs = calloc((size_t)*n, sizeof *outs);
    for (int i = 0; i < *n; i++) outs[i] = calloc(qs_tensor_nbytes(&(*lay)[i]) + 1, 1);
    if (hfq_pack_opts(o, &q->t, q->data, (void *const *)outs, err)) {
        for (int i = 0; i < *n; i++) free(outs[i]);
        free(outs);
        hfq_layout_free(*lay, *n);
        *lay = NULL;
        return NULL;
    }
    return outs;
}

static void free_outs(uint8_t **outs, qs_tensor *lay, int n)
{
    for (int i = 0; i < n; i++) free(outs[i]);
    free(outs);
    hfq_layout_free(lay, n);
}

static uint32_t word(const uint8_t *b, int64_t i)
{
    uint32_t v;
    memcpy(&v, b + 4 * i, 4);
    return v;
}

static int find_lay(const qs_tensor *lay, int n, const char *suffix)
{
    size_t sl = strlen(suffix);
    for (int i = 0; i < n; i++) {
        size_t l = strlen(lay[i].name);
        if (l >= sl && strcmp(lay[i].name + l - sl, suffix) == 0) return i;
    }
    return -1;
}

/*-*** Reference packers written from the source texts ***/

/* AutoGPTQ qlinear_cuda_old.py pack(): intweight [in, out] (uint32),
 * qweight [in/32*bits, out]; the loop over row with the explicit 3-bit
 * branch (10 values, value 10 split 2+1 bits, 10 values shifted by 1, value 21
 * split 1+2 bits, 10 values shifted by 2). Same routine packs qzeros along
 * the other axis (ref_gptq_rows works on "lines" of length len, spaced 1). */
static void ref_gptq_line(const uint32_t *v, int64_t len, int bits, uint32_t *out)
{
    int64_t i = 0, row = 0, nrow = len / 32 * bits;
    for (int64_t k = 0; k < nrow; k++) out[k] = 0;
    while (row < nrow) {
        if (bits != 3) {
            for (int64_t j = i; j < i + 32 / bits; j++) out[row] |= v[j] << (bits * (j - i));
            i += 32 / bits;
            row++;
        } else {
            for (int64_t j = i; j < i + 10; j++) out[row] |= v[j] << (3 * (j - i));
            i += 10;
            out[row] |= v[i] << 30;
            row++;
            out[row] |= (v[i] >> 2) & 1;
            i++;
            for (int64_t j = i; j < i + 10; j++) out[row] |= v[j] << (3 * (j - i) + 1);
            i += 10;
            out[row] |= v[i] << 31;
            row++;
            out[row] |= (v[i] >> 1) & 0x3;
            i++;
            for (int64_t j = i; j < i + 10; j++) out[row] |= v[j] << (3 * (j - i) + 2);
            i += 10;
            row++;
        }
    }
}

/* AutoAWQ gemm.py from_linear: qweight[:, col] |= intweight[:, col*8 + order_map[i]] << (4i). */
static uint32_t ref_awq_word(const uint32_t vals[8])
{
    static const int order_map[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    uint32_t w = 0;
    for (int i = 0; i < 8; i++) w |= vals[order_map[i]] << (i * 4);
    return w;
}

/* pack_to_int32 pseudocode: unsigned values, pad with 0 to a multiple of
 * 32/bits, word = sum_k u_k << (bits*k), bit by bit. */
static void ref_ct_line(const uint32_t *u, int64_t len, int bits, uint32_t *out)
{
    int pf = 32 / bits;
    int64_t nw = (len + pf - 1) / pf;
    for (int64_t w = 0; w < nw; w++) {
        uint32_t x = 0;
        for (int k = 0; k < pf; k++) {
            int64_t idx = w * pf + k;
            uint32_t v = idx < len ? u[idx] : 0;
            for (int bit = 0; bit < bits; bit++)
                if (v >> bit & 1) x |= 1u << (bits * k + bit);
        }
        out[w] = x;
    }
}

/*-*** Tests: bit layouts ***/

/* compressed-tensors' own vectors (test_pack_quant.py test_pack_to_int32):
 * signed values v [rows, n]; codes = v + 2^(b-1); expect [rows, nexp]. */
static int ct_vector(int bits, int rows, const int *v, int n, const int32_t *expect, int nexp)
{
    qt q;
    qt_make(&q, "m.weight", rows, n, bits, -1, 1, 0, 0);
    for (int i = 0; i < rows * n; i++) q.data[i] = (uint8_t)(v[i] + (1 << (bits - 1)));
    hfq_opts o;
    hfq_opts_init(&o, "compressed-tensors", NULL);
    qs_tensor *lay;
    int nl, ok = 1;
    char *err;
    uint8_t **outs = pack_fmt(&o, &q, &lay, &nl, &err);
    if (!outs) { fprintf(stderr, "  %s\n", err); free(err); qt_free(&q); return 0; }
    int ip = find_lay(lay, nl, ".weight_packed");
    if (ip < 0 || lay[ip].shape[0] != rows || lay[ip].shape[1] != nexp) ok = 0;
    for (int i = 0; ok && i < rows * nexp; i++)
        if ((int32_t)word(outs[ip], i) != expect[i]) {
            fprintf(stderr, "  word %d = %d, expected %d\n", i, (int32_t)word(outs[ip], i), expect[i]);
            ok = 0;
        }
    free_outs(outs, lay, nl);
    qt_free(&q);
    return ok;
}

TEST(ct_pack_vectors)
{
    const int one[] = {1};
    const int a[] = {1, 2, 3, 4};
    const int b[] = {-8, -7, -6, -5, -4, -3, -2, -1};
    const int c[] = {-8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4};
    const int d[] = {-128, -127, -126, -125};
    const int e[] = {-8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, -8, -8, -8, -8,
                     1, 2, 3, 4, -8, -8, -8, -8, -8, -7, -6, -5, -4, -3, -2, -1};
    const int f[] = {1, 2, 3, 4, -128, -127, -126, -125, -128, -127, -126, -125, 1, 2, 3, 4};
    CHECK(ct_vector(4, 1, one, 1, (const int32_t[]){9}, 1));          /* padding is unsigned 0 */
    CHECK(ct_vector(8, 1, one, 1, (const int32_t[]){129}, 1));
    CHECK(ct_vector(4, 1, a, 4, (const int32_t[]){52137}, 1));
    CHECK(ct_vector(4, 1, b, 8, (const int32_t[]){1985229328}, 1));
    CHECK(ct_vector(4, 1, c, 12, (const int32_t[]){1985229328, 52137}, 2));
    CHECK(ct_vector(8, 1, a, 4, (const int32_t[]){-2071756159}, 1));
    CHECK(ct_vector(8, 1, d, 4, (const int32_t[]){50462976}, 1));
    CHECK(ct_vector(4, 2, e, 16, (const int32_t[]){1985229328, 52137, 52137, 1985229328}, 2));
    CHECK(ct_vector(8, 2, f, 8, (const int32_t[]){-2071756159, 50462976, 50462976, -2071756159}, 2));
}

/* GPTQ qweight and qzeros against the AutoGPTQ loop, all bit widths, v1/v2. */
TEST(gptq_bytes_vs_reference)
{
    const int bits_list[] = {2, 3, 4, 8};
    for (int bi = 0; bi < 4; bi++)
        for (int v2 = 0; v2 < 2; v2++) {
            const int bits = bits_list[bi];
            const int64_t rows = 64, cols = 96;   /* 96: three 3-bit word triples */
            qt q;
            qt_make(&q, "model.layers.0.mlp.up_proj.weight", rows, cols, bits, 32, 0, 0, 1);
            hfq_opts o;
            hfq_opts_init(&o, v2 ? "gptq_v2" : "gptq", NULL);
            qs_tensor *lay;
            int n;
            char *err;
            uint8_t **outs = pack_fmt(&o, &q, &lay, &n, &err);
            CHECK_MSG(outs != NULL, "%s", err ? err : "");
            if (!outs) { free(err); qt_free(&q); continue; }
            CHECK(n == 4 && strcmp(lay[0].name, "model.layers.0.mlp.up_proj.qweight") == 0);
            CHECK(lay[0].shape[0] == cols / 32 * bits && lay[0].shape[1] == rows);
            /* intweight[c][r] = codes[r][c]; reference per output column r */
            uint32_t *line = malloc((size_t)cols * 4), *ref = malloc((size_t)cols * 4);
            int bad = 0;
            for (int64_t r = 0; r < rows; r++) {
                for (int64_t c = 0; c < cols; c++) line[c] = q.codes[r * cols + c];
                ref_gptq_line(line, cols, bits, ref);
                for (int64_t k = 0; k < cols / 32 * bits; k++)
                    if (word(outs[0], k * rows + r) != ref[k]) bad++;
            }
            CHECK_MSG(bad == 0, "%d-bit qweight: %d words differ", bits, bad);
            /* qzeros [ng, rows/32*bits]: zeros - 1 (v1) along the output dim */
            bad = 0;
            uint32_t *zl = malloc((size_t)rows * 4), *zr = malloc((size_t)rows * 4);
            for (int64_t g = 0; g < q.ng; g++) {
                for (int64_t r = 0; r < rows; r++) zl[r] = (uint32_t)q.zeros[r * q.ng + g] - (v2 ? 0 : 1);
                ref_gptq_line(zl, rows, bits, zr);
                for (int64_t k = 0; k < rows / 32 * bits; k++)
                    if (word(outs[1], g * (rows / 32 * bits) + k) != zr[k]) bad++;
            }
            CHECK_MSG(bad == 0, "%d-bit qzeros (v%d): %d words differ", bits, v2 + 1, bad);
            /* scales [ng, rows] f16, g_idx = c / 32 */
            bad = 0;
            for (int64_t g = 0; g < q.ng; g++)
                for (int64_t r = 0; r < rows; r++) {
                    uint16_t h;
                    memcpy(&h, outs[2] + 2 * (g * rows + r), 2);
                    if (f16_to_f32(h) != q.scales[r * q.ng + g]) bad++;
                }
            for (int64_t c = 0; c < cols; c++) if ((int32_t)word(outs[3], c) != c / 32) bad++;
            CHECK(bad == 0);
            free(line); free(ref); free(zl); free(zr);
            free_outs(outs, lay, n);
            qt_free(&q);
        }
}

/* Hand-worked 3-bit case: codes 0..7,0..7,... in one column; bits of the
 * 96-bit stream checked one by one against value k at bits 3k..3k+2. */
TEST(gptq_3bit_straddle)
{
    qt q;
    qt_make(&q, "a.weight", 32, 32, 3, -1, 1, 0, 0);
    for (int64_t c = 0; c < 32; c++) q.data[c] = (uint8_t)(c % 8);   /* row 0 */
    hfq_opts o;
    hfq_opts_init(&o, "gptq", NULL);
    qs_tensor *lay;
    int n;
    char *err;
    uint8_t **outs = pack_fmt(&o, &q, &lay, &n, &err);
    CHECK(outs != NULL);
    if (outs) {
        int bad = 0;
        for (int bit = 0; bit < 96; bit++) {
            uint32_t w = word(outs[0], (bit / 32) * 32 + 0);   /* column 0 (row 0 of W) */
            int got = (int)(w >> (bit % 32) & 1);
            int want = ((bit / 3) % 8) >> (bit % 3) & 1;
            if (got != want) bad++;
        }
        CHECK(bad == 0);
        /* value 10 = 2 straddles: bits 30,31 of word 0 = 0b10 -> word0 bit31 set, word1 bit0 clear */
        CHECK((word(outs[0], 0) >> 30) == 2 && (word(outs[0], 32) & 1) == 0);
        /* sym 3-bit zero 4 stored as 3 (v1): qzeros words are the stream of 3s */
        CHECK(word(outs[1], 0) == 0xDB6DB6DBu);
        free_outs(outs, lay, n);
    }
    qt_free(&q);
}

TEST(awq_bytes_vs_reference)
{
    const int64_t rows = 64, cols = 128;
    qt q;
    qt_make(&q, "x.weight", rows, cols, 4, 64, 0, 0, 0);
    /* hand-worked word: input column 0, output columns 0..7 hold codes 0..7;
     * nibble i holds column order_map[i] -> 0x75316420 */
    for (int r = 0; r < 8; r++) q.data[r * cols] = (uint8_t)r;
    memcpy(q.codes, q.data, (size_t)(rows * cols));
    hfq_opts o;
    hfq_opts_init(&o, "awq", NULL);
    qs_tensor *lay;
    int n;
    char *err;
    uint8_t **outs = pack_fmt(&o, &q, &lay, &n, &err);
    CHECK_MSG(outs != NULL, "%s", err ? err : "");
    if (!outs) { free(err); qt_free(&q); return; }
    CHECK(n == 3 && lay[0].shape[0] == cols && lay[0].shape[1] == rows / 8);
    CHECK(lay[1].shape[0] == 2 && lay[1].shape[1] == rows / 8 && lay[2].dtype == DT_F16);
    CHECK(word(outs[0], 0) == 0x75316420u);
    int bad = 0;
    for (int64_t c = 0; c < cols; c++)
        for (int64_t j = 0; j < rows / 8; j++) {
            uint32_t v[8];
            for (int k = 0; k < 8; k++) v[k] = q.codes[(8 * j + k) * cols + c];
            if (word(outs[0], c * (rows / 8) + j) != ref_awq_word(v)) bad++;
        }
    for (int64_t g = 0; g < q.ng; g++)
        for (int64_t j = 0; j < rows / 8; j++) {
            uint32_t v[8];
            for (int k = 0; k < 8; k++) v[k] = (uint32_t)q.zeros[(8 * j + k) * q.ng + g];
            if (word(outs[1], g * (rows / 8) + j) != ref_awq_word(v)) bad++;
        }
    CHECK_MSG(bad == 0, "%d AWQ words differ", bad);
    free_outs(outs, lay, n);
    qt_free(&q);
}

TEST(ct_bytes_vs_reference)
{
    const int bits_list[] = {2, 3, 4, 8};
    for (int bi = 0; bi < 4; bi++) {
        const int bits = bits_list[bi], pf = 32 / bits;
        const int64_t rows = 37, cols = 70;      /* neither a multiple of pf: padding */
        qt q;
        qt_make(&q, "p.weight", rows, cols, bits, 16, 0, 1, 0);
        hfq_opts o;
        hfq_opts_init(&o, "compressed-tensors", NULL);
        o.scale_dtype = DT_BF16;
        o.round_scales = 1;
        qs_tensor *lay;
        int n;
        char *err;
        uint8_t **outs = pack_fmt(&o, &q, &lay, &n, &err);
        CHECK_MSG(outs != NULL, "%s", err ? err : "");
        if (!outs) { free(err); qt_free(&q); continue; }
        int ip = find_lay(lay, n, ".weight_packed"), iz = find_lay(lay, n, ".weight_zero_point");
        int ish = find_lay(lay, n, ".weight_shape"), ig = find_lay(lay, n, ".weight_g_idx");
        int is = find_lay(lay, n, ".weight_scale");
        CHECK(n == 5 && ip == 0 && is == 1 && iz == 2 && ish == 3 && ig == 4);
        CHECK(lay[ip].shape[0] == rows && lay[ip].shape[1] == (cols + pf - 1) / pf);
        CHECK(lay[iz].shape[0] == (rows + pf - 1) / pf && lay[iz].shape[1] == q.ng);
        CHECK(lay[is].dtype == DT_BF16 && lay[ish].dtype == DT_I64);
        int bad = 0;
        uint32_t *u = malloc((size_t)(cols > rows ? cols : rows) * 4), *ref = malloc(64 * 4);
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t c = 0; c < cols; c++) u[c] = q.codes[r * cols + c];
            ref_ct_line(u, cols, bits, ref);
            for (int64_t w = 0; w < lay[ip].shape[1]; w++)
                if (word(outs[ip], r * lay[ip].shape[1] + w) != ref[w]) bad++;
        }
        for (int64_t g = 0; g < q.ng; g++) {   /* zero points packed along rows (dim 0) */
            for (int64_t r = 0; r < rows; r++) u[r] = (uint32_t)q.zeros[r * q.ng + g];
            ref_ct_line(u, rows, bits, ref);
            for (int64_t w = 0; w < lay[iz].shape[0]; w++)
                if (word(outs[iz], w * q.ng + g) != ref[w]) bad++;
        }
        int64_t shp[2];
        memcpy(shp, outs[ish], 16);
        CHECK(shp[0] == rows && shp[1] == cols);
        for (int64_t c = 0; c < cols; c++) if ((int32_t)word(outs[ig], c) != q.g_idx[c]) bad++;
        CHECK_MSG(bad == 0, "%d-bit: %d words differ", bits, bad);
        free(u); free(ref);
        free_outs(outs, lay, n);
        qt_free(&q);
    }
}

/*-*** Tests: refusals ***/

TEST(layout_refusals)
{
    qs_tensor *lay;
    int n;
    char *err = NULL;
    qt q;
    qt_make(&q, "w.weight", 64, 128, 3, 32, 0, 0, 1);
    CHECK(hfq_layout("awq", &q.t, &lay, &n, &err) == -1 && err && strstr(err, "4-bit"));
    free(err); err = NULL;
    CHECK(hfq_layout("gptq", &q.t, &lay, &n, &err) == 0 && n == 4);
    hfq_layout_free(lay, n);
    CHECK(hfq_layout("exl2", &q.t, &lay, &n, &err) == -1 && err);
    free(err); err = NULL;
    qt_free(&q);
    qt_make(&q, "w.weight", 64, 100, 4, 20, 0, 0, 1);    /* 100 not a multiple of 8 */
    CHECK(hfq_layout("gptq", &q.t, &lay, &n, &err) == -1 && err && strstr(err, "multiples"));
    free(err); err = NULL;
    CHECK(hfq_layout("compressed-tensors", &q.t, &lay, &n, &err) == 0);
    hfq_layout_free(lay, n);
    qt_free(&q);
    qt_make(&q, "w.weight", 64, 128, 4, 32, 0, 1, 1);    /* act order */
    CHECK(hfq_layout("awq", &q.t, &lay, &n, &err) == -1 && err && strstr(err, "g_idx"));
    free(err); err = NULL;
    qt_free(&q);
    qt_make(&q, "w.bias", 64, 128, 4, 32, 0, 0, 1);
    CHECK(hfq_layout("gptq", &q.t, &lay, &n, &err) == -1 && err);
    free(err);
    qt_free(&q);
}

TEST(pack_refusals)
{
    hfq_opts o;
    qs_tensor *lay;
    int n;
    char *err = NULL;
    uint8_t **outs;
    qt q;
    /* a zero point of 0 cannot be stored in GPTQ v1, can in v2 */
    qt_make(&q, "w.weight", 32, 64, 4, 32, 0, 0, 1);
    q.zeros[5] = 0.0f;
    memcpy(q.data + 32 * 64 + 4 * 32 * 2, q.zeros, 4 * 32 * 2);
    hfq_opts_init(&o, "gptq", NULL);
    outs = pack_fmt(&o, &q, &lay, &n, &err);
    CHECK(!outs && err && strstr(err, "gptq_v2"));
    free(err); err = NULL;
    hfq_opts_init(&o, "gptq_v2", NULL);
    outs = pack_fmt(&o, &q, &lay, &n, &err);
    CHECK(outs != NULL);
    if (outs) free_outs(outs, lay, n);
    /* scales not representable in f16 */
    float s = 0.1f;
    memcpy(q.data + 32 * 64 + 4 * 3, &s, 4);
    outs = pack_fmt(&o, &q, &lay, &n, &err);
    CHECK(!outs && err && strstr(err, "not exactly representable"));
    free(err); err = NULL;
    o.round_scales = 1;
    outs = pack_fmt(&o, &q, &lay, &n, &err);
    CHECK(outs != NULL);
    if (outs) {
        uint16_t h;
        memcpy(&h, outs[2] + 2 * (1 * 32 + 1), 2);   /* scales[r=1][g=1] -> [g][r] */
        CHECK(h == f32_to_f16(0.1f));
        free_outs(outs, lay, n);
    }
    qt_free(&q);
    /* sym but a zero point that is not 2^(b-1); a non-integer zero */
    qt_make(&q, "w.weight", 32, 64, 4, 32, 1, 0, 0);
    float z = 7.0f;
    memcpy(q.data + 32 * 64 + 4 * 32 * 2, &z, 4);
    hfq_opts_init(&o, "compressed-tensors", NULL);
    outs = pack_fmt(&o, &q, &lay, &n, &err);
    CHECK(!outs && err && strstr(err, "sym"));
    free(err); err = NULL;
    qt_free(&q);
    qt_make(&q, "w.weight", 32, 64, 4, 32, 0, 0, 0);
    z = 3.5f;
    memcpy(q.data + 32 * 64 + 4 * 32 * 2, &z, 4);
    hfq_opts_init(&o, "awq", NULL);
    outs = pack_fmt(&o, &q, &lay, &n, &err);
    CHECK(!outs && err && strstr(err, "zero point"));
    free(err); err = NULL;
    /* a code above maxq */
    memcpy(q.data + 32 * 64 + 4 * 32 * 2, q.zeros, 4);
    q.data[7] = 16;
    outs = pack_fmt(&o, &q, &lay, &n, &err);
    CHECK(!outs && err && strstr(err, "exceeds"));
    free(err);
    qt_free(&q);
}

/*-*** In-memory checkpoint source ***/

typedef struct { uint8_t **bufs; int n; int seq_next; int sequential; } memsrc;

static int mem_read(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp)
{
    memsrc *m = s->impl;
    if (m->sequential) {       /* emulate an archive: tensors in order only */
        if (idx < m->seq_next) { *errp = qsrc_errf("mem: out of order read of %d", idx); return -1; }
        m->seq_next = idx;
    }
    if (off + n > s->tensors[idx].parts[0].nbytes) { *errp = qsrc_errf("mem: past end"); return -1; }
    memcpy(buf, m->bufs[idx] + off, n);
    return 0;
}

static void mem_close(qsrc *s)
{
    memsrc *m = s->impl;
    for (int i = 0; i < m->n; i++) free(m->bufs[i]);
    free(m->bufs);
    free(m);
}

static const qsrc_ops mem_ops = {mem_read, NULL, mem_close};

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const qs_tensor *const *)a)->name, (*(const qs_tensor *const *)b)->name);
}

/* Source over tensors (copied, sorted by name like a safetensors file's
 * reader would list them when offsets follow names) with config.json. */
static qsrc *mem_source(qs_tensor *const *ts, uint8_t *const *data, int n, const json_t *qc, int sequential)
{
    qsrc *s = qsrc_new("mem");
    memsrc *m = calloc(1, sizeof *m);
    m->bufs = calloc((size_t)n, sizeof *m->bufs);
    m->sequential = sequential;
    const qs_tensor **order = malloc((size_t)n * sizeof *order);
    for (int i = 0; i < n; i++) order[i] = ts[i];
    qsort(order, (size_t)n, sizeof *order, cmp_name);
    for (int i = 0; i < n; i++) {
        int k = 0;
        while (ts[k] != order[i]) k++;
        qsrc_add_tensor(s, order[i]);
        m->bufs[i] = malloc(order[i]->parts[0].nbytes + 1);
        memcpy(m->bufs[i], data[k], order[i]->parts[0].nbytes);
    }
    m->n = n;
    free(order);
    if (qc) {
        json_t *cfg = json_pack("{s:s, s:O}", "model_type", "llama", "quantization_config", qc);
        char *txt = json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS);
        qs_header_add_file(&s->header, "config.json", txt, strlen(txt));
        free(txt);
        json_decref(cfg);
    }
    s->ops = &mem_ops;
    s->impl = m;
    s->sequential = sequential;
    return s;
}

/* Pack qs[0..nq) plus one plain f32 tensor "model.norm.weight" into a
 * source with the format's config; wrap; compare every tensor. */
static int roundtrip(const char *format, qt *qs, int nq, int sequential, int expect_gidx)
{
    hfq_opts o;
    hfq_opts_init(&o, format, NULL);
    qs_tensor *all[64];
    uint8_t *bufs[64];
    qs_tensor *lays[8];
    uint8_t **outs[8];
    int nl[8], n = 0, ok = 1;
    char *err = NULL;
    for (int i = 0; i < nq; i++) {
        outs[i] = pack_fmt(&o, &qs[i], &lays[i], &nl[i], &err);
        if (!outs[i]) { fprintf(stderr, "  pack: %s\n", err); free(err); return 0; }
        for (int k = 0; k < nl[i]; k++) { all[n] = &lays[i][k]; bufs[n++] = outs[i][k]; }
    }
    qs_tensor norm;
    int64_t nshape[1] = {16};
    qs_tensor_init(&norm, "model.norm.weight", DT_F32, 1, nshape);
    float nv[16];
    for (int i = 0; i < 16; i++) nv[i] = (float)i * 0.25f;
    all[n] = &norm;
    bufs[n++] = (uint8_t *)nv;
    json_t *qc = hfq_quant_config(format, json_object_get(qs[0].t.attrs, "quant"), &err);
    if (!qc) { fprintf(stderr, "  config: %s\n", err); free(err); return 0; }
    qsrc *plain = mem_source(all, bufs, n, qc, sequential);
    json_decref(qc);
    qsrc *s = hfq_wrap_source(plain, &err);
    if (!s || s == plain) {
        fprintf(stderr, "  wrap: %s\n", err ? err : "returned plain");
        free(err);
        qsrc_close(plain);
        ok = 0;
        goto done;
    }
    if (s->ntensors != nq + 1) { fprintf(stderr, "  %d tensors\n", s->ntensors); ok = 0; }
    for (int i = 0; i < s->ntensors && ok; i++) {
        const qs_tensor *t = &s->tensors[i];
        uint64_t nb = qs_tensor_nbytes(t);
        uint8_t *b = malloc(nb);
        /* read in two pieces, as a chunked consumer does */
        if (qsrc_read(s, i, 0, b, nb / 2, &err) || qsrc_read(s, i, nb / 2, b + nb / 2, nb - nb / 2, &err)) {
            fprintf(stderr, "  read %s: %s\n", t->name, err);
            free(err);
            err = NULL;
            ok = 0;
            free(b);
            break;
        }
        if (strcmp(t->name, "model.norm.weight") == 0) {
            ok &= nb == sizeof nv && memcmp(b, nv, sizeof nv) == 0;
            free(b);
            continue;
        }
        int j;
        for (j = 0; j < nq && strcmp(qs[j].t.name, t->name); j++) {}
        if (j == nq) { fprintf(stderr, "  unexpected %s\n", t->name); ok = 0; free(b); break; }
        const qt *q = &qs[j];
        const char *why = quant_check_tensor(t);
        int has_g = qs_tensor_part(t, "g_idx") >= 0;
        if (why || has_g != expect_gidx || t->shape[0] != q->rows || t->shape[1] != q->cols) {
            fprintf(stderr, "  %s: %s, g_idx %d\n", t->name, why ? why : "shape", has_g);
            ok = 0;
        } else {
            /* the unpacked bytes equal the stream's, part by part */
            const uint64_t nc = (uint64_t)(q->rows * q->cols), ns = (uint64_t)(q->rows * q->ng) * 4;
            ok &= memcmp(b, q->codes, nc) == 0;
            ok &= memcmp(b + nc, q->scales, ns) == 0;
            ok &= memcmp(b + nc + ns, q->zeros, ns) == 0;
            if (has_g) ok &= memcmp(b + nc + 2 * ns, q->g_idx, (size_t)q->cols * 4) == 0;
            /* and dequantize to the same values */
            const void *pa[QS_MAX_PARTS], *pb[QS_MAX_PARTS];
            uint64_t offa = 0, offb = 0;
            for (int p = 0; p < t->nparts; p++) { pa[p] = b + offa; offa += t->parts[p].nbytes; }
            for (int p = 0; p < q->t.nparts; p++) { pb[p] = q->data + offb; offb += q->t.parts[p].nbytes; }
            float *da = malloc(nc * 4), *db = malloc(nc * 4);
            float *sa = malloc(ns), *sb = malloc(ns), *za = malloc(ns), *zb = malloc(ns);
            /* quant_dequantize wants aligned f32 parts: copy them */
            memcpy(sa, pa[1], ns); memcpy(za, pa[2], ns); memcpy(sb, pb[1], ns); memcpy(zb, pb[2], ns);
            int32_t *ga = has_g ? malloc((size_t)q->cols * 4) : NULL;
            if (ga) memcpy(ga, pa[3], (size_t)q->cols * 4);
            const void *aa[4] = {pa[0], sa, za, ga}, *ab[4] = {pb[0], sb, zb, q->g_idx};
            int ra = quant_dequantize(t, aa, da), rb = quant_dequantize(&q->t, ab, db);
            ok &= ra == 0 && rb == 0 && memcmp(da, db, nc * 4) == 0;
            if (!ok) fprintf(stderr, "  %s: values differ (%d %d)\n", t->name, ra, rb);
            free(da); free(db); free(sa); free(sb); free(za); free(zb); free(ga);
            /* attrs: same grid */
            quant_grid ga_, gb_;
            quant_grid_from_json(json_object_get(t->attrs, "quant"), &ga_, NULL);
            quant_grid_from_json(json_object_get(q->t.attrs, "quant"), &gb_, NULL);
            ok &= ga_.bits == gb_.bits && ga_.group == gb_.group
                  && (ga_.sym == gb_.sym || strcmp(format, "awq") == 0);   /* awq stores zeros always */
        }
        free(b);
    }
    qsrc_close(s);
done:
    for (int i = 0; i < nq; i++) free_outs(outs[i], lays[i], nl[i]);
    qs_tensor_clear(&norm);
    return ok;
}

TEST(roundtrip_gptq)
{
    const int bits_list[] = {2, 3, 4, 8};
    for (int bi = 0; bi < 4; bi++)
        for (int sym = 0; sym < 2; sym++) {
            qt q[2];
            qt_make(&q[0], "model.layers.0.self_attn.q_proj.weight", 64, 128, bits_list[bi], 32, sym, 0, 1);
            qt_make(&q[1], "model.layers.0.mlp.down_proj.weight", 32, 64, bits_list[bi], 32, sym, 0, 1);
            CHECK_MSG(roundtrip("gptq", q, 2, 0, 0), "gptq %d-bit sym %d", bits_list[bi], sym);
            CHECK_MSG(roundtrip("gptq_v2", q, 2, 1, 0), "gptq_v2 %d-bit sym %d (sequential)", bits_list[bi], sym);
            qt_free(&q[0]);
            qt_free(&q[1]);
        }
}

TEST(roundtrip_gptq_act_order)
{
    qt q[1];
    qt_make(&q[0], "model.layers.1.mlp.gate_proj.weight", 64, 256, 4, 64, 0, 1, 1);
    CHECK(roundtrip("gptq", q, 1, 0, 1));
    CHECK(roundtrip("gptq", q, 1, 1, 1));       /* sequential: trusts desc_act */
    qt_free(&q[0]);
    qt_make(&q[0], "model.layers.1.mlp.gate_proj.weight", 64, 256, 3, -1, 1, 0, 0);   /* per channel */
    CHECK(roundtrip("gptq", q, 1, 0, 0));
    qt_free(&q[0]);
}

TEST(roundtrip_awq)
{
    qt q[2];
    qt_make(&q[0], "model.layers.0.self_attn.o_proj.weight", 64, 128, 4, 32, 0, 0, 0);
    qt_make(&q[1], "model.layers.0.mlp.up_proj.weight", 128, 64, 4, 32, 1, 0, 0);   /* sym: read back as asym, zeros 8 */
    CHECK(roundtrip("awq", q, 2, 0, 0));
    CHECK(roundtrip("awq", q, 2, 1, 0));
    qt_free(&q[0]);
    qt_free(&q[1]);
}

TEST(roundtrip_ct)
{
    const int bits_list[] = {2, 3, 4, 8};
    for (int bi = 0; bi < 4; bi++)
        for (int sym = 0; sym < 2; sym++)
            for (int gi = 0; gi < 2; gi++) {
                qt q[1];
                qt_make(&q[0], "model.layers.2.mlp.down_proj.weight", 37, 70, bits_list[bi], gi ? 16 : -1, sym, gi, 0);
                CHECK_MSG(roundtrip("compressed-tensors", q, 1, 0, gi), "ct %d-bit sym %d g_idx %d", bits_list[bi], sym, gi);
                qt_free(&q[0]);
                /* sequential sources cannot read weight_shape ahead: d_in is taken from
                 * weight_packed (or g_idx), so a padded d_in needs g_idx */
                qt_make(&q[0], "model.layers.2.mlp.down_proj.weight", 37, gi ? 70 : 80, bits_list[bi], gi ? 16 : -1, sym, gi, 0);
                CHECK_MSG(roundtrip("compressed-tensors", q, 1, 1, gi), "ct %d-bit sym %d g_idx %d seq", bits_list[bi], sym, gi);
                qt_free(&q[0]);
            }
}

/*-*** Configs ***/

TEST(config_objects)
{
    char *err = NULL;
    json_t *qa = json_pack("{s:s, s:i, s:i, s:b, s:b, s:s}", "scheme", "int", "bits", 4, "group", 128,
                           "sym", 1, "act_order", 1, "method", "gptq");
    json_t *g = hfq_quant_config("gptq", qa, &err);
    CHECK(g && json_integer_value(json_object_get(g, "bits")) == 4
          && json_integer_value(json_object_get(g, "group_size")) == 128
          && json_is_true(json_object_get(g, "desc_act")) && json_is_true(json_object_get(g, "sym"))
          && strcmp(json_string_value(json_object_get(g, "quant_method")), "gptq") == 0
          && strcmp(json_string_value(json_object_get(g, "checkpoint_format")), "gptq") == 0);
    json_decref(g);
    CHECK(strcmp(hfq_extra_config_name("gptq"), "quantize_config.json") == 0 && !hfq_extra_config_name("awq"));
    json_t *a = hfq_quant_config("awq", qa, &err);
    CHECK(a && strcmp(json_string_value(json_object_get(a, "version")), "gemm") == 0
          && json_is_true(json_object_get(a, "zero_point"))
          && json_integer_value(json_object_get(a, "group_size")) == 128);
    json_decref(a);
    json_t *c = hfq_quant_config("compressed-tensors", qa, &err);
    json_t *w = json_object_get(json_object_get(json_object_get(c, "config_groups"), "group_0"), "weights");
    CHECK(c && strcmp(json_string_value(json_object_get(c, "format")), "pack-quantized") == 0
          && strcmp(json_string_value(json_object_get(c, "quant_method")), "compressed-tensors") == 0
          && strcmp(json_string_value(json_object_get(c, "quantization_status")), "compressed") == 0
          && json_integer_value(json_object_get(w, "num_bits")) == 4
          && strcmp(json_string_value(json_object_get(w, "strategy")), "group") == 0
          && json_is_true(json_object_get(w, "symmetric"))
          && strcmp(json_string_value(json_object_get(w, "actorder")), "group") == 0);
    json_decref(c);
    json_object_set_new(qa, "bits", json_integer(3));
    CHECK(hfq_quant_config("awq", qa, &err) == NULL && err);
    free(err);
    json_decref(qa);
}

TEST(config_from_manifest)
{
    qs_header h;
    qs_header_init(&h);
    qt q[3];
    qt_make(&q[0], "model.layers.0.mlp.up_proj.weight", 64, 128, 4, 32, 1, 0, 0);
    qt_make(&q[1], "model.layers.0.mlp.down_proj.weight", 128, 64, 4, 32, 1, 0, 0);
    qt_make(&q[2], "model.layers.0.self_attn.q_proj.weight", 64, 64, 8, 32, 1, 1, 0);
    for (int i = 0; i < 3; i++) qs_header_manifest_add(&h, &q[i].t);
    const char *floats[] = {"model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight", "lm_head.weight"};
    for (int i = 0; i < 3; i++) {
        qs_tensor t;
        int64_t sh[2] = {64, 64};
        qs_tensor_init(&t, floats[i], DT_F32, 2, sh);
        qs_header_manifest_add(&h, &t);
        qs_tensor_clear(&t);
    }
    /* the manifest entry reproduces the tensor's parts (g_idx from nbytes) */
    qs_tensor t;
    char *err = NULL;
    CHECK(hfq_tensor_from_manifest(json_array_get(h.manifest, 2), &t, &err) == 0
          && t.nparts == 4 && qs_tensor_part(&t, "g_idx") == 3 && qs_tensor_nbytes(&t) == qs_tensor_nbytes(&q[2].t));
    qs_tensor_clear(&t);
    json_t *c = hfq_quant_config_manifest("compressed-tensors", h.manifest, &err);
    json_t *groups = json_object_get(c, "config_groups"), *ign = json_object_get(c, "ignore");
    CHECK(c && json_object_size(groups) == 2 && json_array_size(ign) == 2
          && strcmp(json_string_value(json_array_get(ign, 0)), "model.layers.0.self_attn.k_proj") == 0
          && strcmp(json_string_value(json_array_get(ign, 1)), "lm_head") == 0);
    json_t *t1 = json_object_get(json_object_get(groups, "group_1"), "targets");
    CHECK(json_array_size(t1) == 1 && strcmp(json_string_value(json_array_get(t1, 0)), "model.layers.0.self_attn.q_proj") == 0);
    CHECK(strcmp(json_string_value(json_object_get(json_object_get(json_object_get(groups, "group_1"), "weights"), "actorder")), "group") == 0);
    json_decref(c);
    json_t *g = hfq_quant_config_manifest("gptq", h.manifest, &err);
    json_t *dyn = json_object_get(g, "dynamic");
    CHECK(g && json_integer_value(json_object_get(g, "bits")) == 4 && json_object_size(dyn) == 2);
    json_t *ov = json_object_get(dyn, "+:^model\\.layers\\.0\\.self_attn\\.q_proj$");
    CHECK(ov && json_integer_value(json_object_get(ov, "bits")) == 8);
    CHECK(json_object_get(dyn, "-:^model\\.layers\\.0\\.self_attn\\.k_proj$") != NULL);
    json_decref(g);
    CHECK(hfq_quant_config_manifest("awq", h.manifest, &err) == NULL && err && strstr(err, "grids"));
    free(err);
    for (int i = 0; i < 3; i++) qt_free(&q[i]);
    qs_header_clear(&h);
}

/* The dynamic override written above is honoured when reading back. */
TEST(gptq_dynamic_roundtrip)
{
    qt q[2];
    qt_make(&q[0], "model.layers.0.mlp.up_proj.weight", 64, 128, 4, 32, 0, 0, 1);
    qt_make(&q[1], "model.layers.0.self_attn.q_proj.weight", 64, 64, 8, 32, 0, 0, 1);
    qs_header h;
    qs_header_init(&h);
    for (int i = 0; i < 2; i++) qs_header_manifest_add(&h, &q[i].t);
    char *err = NULL;
    json_t *qc = hfq_quant_config_manifest("gptq", h.manifest, &err);
    qs_header_clear(&h);
    /* ties: the first grid is the base */
    hfq_opts o;
    hfq_opts_init(&o, "gptq", NULL);
    qs_tensor *lays[2], *all[8];
    uint8_t **outs[2], *bufs[8];
    int nl[2], n = 0;
    for (int i = 0; i < 2; i++) {
        outs[i] = pack_fmt(&o, &q[i], &lays[i], &nl[i], &err);
        for (int k = 0; k < nl[i]; k++) { all[n] = &lays[i][k]; bufs[n++] = outs[i][k]; }
    }
    qsrc *plain = mem_source(all, bufs, n, qc, 0);
    qsrc *s = hfq_wrap_source(plain, &err);
    CHECK(s && s != plain && s->ntensors == 2);
    for (int i = 0; s && i < s->ntensors; i++) {
        quant_grid g;
        quant_grid_from_json(json_object_get(s->tensors[i].attrs, "quant"), &g, NULL);
        int want = strstr(s->tensors[i].name, "q_proj") ? 8 : 4;
        CHECK_MSG(g.bits == want, "%s: %d bits", s->tensors[i].name, g.bits);
        uint64_t nb = qs_tensor_nbytes(&s->tensors[i]);
        uint8_t *b = malloc(nb);
        CHECK(qsrc_read(s, i, 0, b, nb, &err) == 0);
        const qt *src = strstr(s->tensors[i].name, "q_proj") ? &q[1] : &q[0];
        CHECK(memcmp(b, src->codes, (size_t)(src->rows * src->cols)) == 0);
        free(b);
    }
    if (s) qsrc_close(s);
    json_decref(qc);
    for (int i = 0; i < 2; i++) { free_outs(outs[i], lays[i], nl[i]); qt_free(&q[i]); }
}

TEST(wrap_passthrough_and_errors)
{
    qs_tensor t, *all[1];
    int64_t sh[1] = {4};
    qs_tensor_init(&t, "x.weight", DT_F32, 1, sh);
    all[0] = &t;
    float v[4] = {1, 2, 3, 4};
    uint8_t *bufs[1] = {(uint8_t *)v};
    char *err = NULL;
    qsrc *plain = mem_source(all, bufs, 1, NULL, 0);
    CHECK(hfq_wrap_source(plain, &err) == plain);
    qsrc_close(plain);
    json_t *bnb = json_pack("{s:s}", "quant_method", "bitsandbytes");
    plain = mem_source(all, bufs, 1, bnb, 0);
    CHECK(hfq_wrap_source(plain, &err) == plain);
    qsrc_close(plain);
    json_decref(bnb);
    json_t *gemv = json_pack("{s:s, s:s, s:i, s:i}", "quant_method", "awq", "version", "gemv", "bits", 4, "group_size", 128);
    plain = mem_source(all, bufs, 1, gemv, 0);
    CHECK(hfq_wrap_source(plain, &err) == NULL && err && strstr(err, "gemv"));
    free(err);
    err = NULL;
    qsrc_close(plain);
    json_decref(gemv);
    qs_tensor_clear(&t);
    /* a qweight without its scales */
    qt q;
    qt_make(&q, "m.weight", 32, 64, 4, 32, 0, 0, 1);
    hfq_opts o;
    hfq_opts_init(&o, "gptq", NULL);
    qs_tensor *lay;
    int n;
    uint8_t **outs = pack_fmt(&o, &q, &lay, &n, &err);
    qs_tensor *two[2] = {&lay[0], &lay[1]};
    json_t *qc = hfq_quant_config("gptq", json_object_get(q.t.attrs, "quant"), &err);
    plain = mem_source(two, outs, 2, qc, 0);
    CHECK(hfq_wrap_source(plain, &err) == NULL && err && strstr(err, "scales"));
    free(err);
    qsrc_close(plain);
    json_decref(qc);
    free_outs(outs, lay, n);
    qt_free(&q);
}

/* Through the real readers: pack into model.safetensors (laid out by
 * st_build_header, like the reference writer: I32 first, F16 scales later)
 * plus config.json in a directory, qsrc_open it, wrap, and compare. */
static int write_file(const char *path, const void *a, size_t na)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int rc = fwrite(a, 1, na, f) == na ? 0 : -1;
    return fclose(f) == 0 ? rc : -1;
}

static int disk_roundtrip(const char *format, qt *q)
{
    char dir[] = "/tmp/test_hfquant_XXXXXX", path[256];
    if (!mkdtemp(dir)) return 0;
    qs_tensor *lay;
    int n, ok = 1;
    char *err = NULL;
    hfq_opts o;
    hfq_opts_init(&o, format, NULL);
    uint8_t **outs = pack_fmt(&o, q, &lay, &n, &err);
    if (!outs) { fprintf(stderr, "  %s\n", err); free(err); return 0; }
    const qs_tensor *tp[8];
    uint64_t offs[8];
    for (int i = 0; i < n; i++) tp[i] = &lay[i];
    size_t hl;
    char *hdr = st_build_header(tp, n, NULL, offs, &hl, &err);
    uint64_t end = hl;
    for (int i = 0; i < n; i++) if (offs[i] + lay[i].parts[0].nbytes > end) end = offs[i] + lay[i].parts[0].nbytes;
    uint8_t *file = calloc(end, 1);
    memcpy(file, hdr, hl);
    for (int i = 0; i < n; i++) memcpy(file + offs[i], outs[i], lay[i].parts[0].nbytes);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ok &= write_file(path, file, end) == 0;
    json_t *qc = hfq_quant_config(format, json_object_get(q->t.attrs, "quant"), &err);
    json_t *cfg = json_pack("{s:s, s:s, s:o}", "model_type", "llama", "torch_dtype", "float16", "quantization_config", qc);
    char *txt = json_dumps(cfg, JSON_INDENT(2));
    snprintf(path, sizeof path, "%s/config.json", dir);
    ok &= write_file(path, txt, strlen(txt)) == 0;
    free(txt);
    json_decref(cfg);
    qsrc *plain = qsrc_open(dir, &err);
    qsrc *s = plain ? hfq_wrap_source(plain, &err) : NULL;
    ok &= s != NULL && s->ntensors == 1 && strcmp(s->tensors[0].name, q->t.name) == 0;
    if (!ok) fprintf(stderr, "  %s: %s\n", format, err ? err : "wrong tensor list");
    if (ok) {
        ok &= hfq_wrap_source(s, &err) == s;   /* wrapping twice is a no-op */
        uint64_t nb = qs_tensor_nbytes(&s->tensors[0]);
        uint8_t *b = malloc(nb);
        ok &= nb == qs_tensor_nbytes(&q->t) && qsrc_read(s, 0, 0, b, nb, &err) == 0
              && memcmp(b, q->data, nb) == 0;
        free(b);
    }
    if (s) qsrc_close(s);
    else if (plain) qsrc_close(plain);
    free(err);
    free(hdr);
    free(file);
    free_outs(outs, lay, n);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
    return ok;
}

TEST(roundtrip_on_disk)
{
    qt q;
    qt_make(&q, "model.layers.0.mlp.down_proj.weight", 64, 256, 4, 64, 0, 1, 1);
    CHECK(disk_roundtrip("gptq", &q));
    CHECK(disk_roundtrip("compressed-tensors", &q));
    qt_free(&q);
    qt_make(&q, "model.layers.0.mlp.down_proj.weight", 64, 256, 3, 32, 1, 0, 1);
    CHECK(disk_roundtrip("gptq", &q));
    qt_free(&q);
    qt_make(&q, "model.layers.0.mlp.down_proj.weight", 64, 256, 4, 128, 0, 0, 0);
    CHECK(disk_roundtrip("awq", &q));
    CHECK(disk_roundtrip("compressed-tensors", &q));
    qt_free(&q);
}

int main(void)
{
    RUN(ct_pack_vectors);
    RUN(gptq_bytes_vs_reference);
    RUN(gptq_3bit_straddle);
    RUN(awq_bytes_vs_reference);
    RUN(ct_bytes_vs_reference);
    RUN(layout_refusals);
    RUN(pack_refusals);
    RUN(roundtrip_gptq);
    RUN(roundtrip_gptq_act_order);
    RUN(roundtrip_awq);
    RUN(roundtrip_ct);
    RUN(config_objects);
    RUN(config_from_manifest);
    RUN(gptq_dynamic_roundtrip);
    RUN(wrap_passthrough_and_errors);
    RUN(roundtrip_on_disk);
    return tl_summary();
}
