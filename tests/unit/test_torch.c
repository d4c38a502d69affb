/* test_torch — the PyTorch zip reader (formats/torchzip.c) and its safe
 * unpickler (formats/pickle.c).
 *
 * Independent references: tests/data/stories260k/model.safetensors (same
 * weights, read here with a few lines of jansson, not with qpipe's reader);
 * the values of pytorch_model-views.bin's extra.* tensors, derived from the
 * fixture README and checked with python3 pickletools + struct (see
 * tests/data/torch/README.md): extra.transposed_view = gate0^T,
 * extra.slice_view = up1[10:20], extra.half = f16(gate0), extra.bf16 =
 * bf16_rne(gate0), extra.int8 = trunc(gate0 * 100), extra.int64 = 0..6,
 * extra.bool = gate0 > 0 (gate0 = model.layers.0.mlp.gate_proj.weight,
 * up1 = model.layers.1.mlp.up_proj.weight); and the formulas
 * tests/data/torch/make.py wrote its storages with.
 */
#include "testlib.h"
#include "source.h"

#include <jansson.h>
#include <stdint.h>
#include <string.h>

#define STORIES "tests/data/stories260k/"
#define TDIR    "tests/data/torch/"

/*-*** helpers ***/

/* Whole logical bytes of tensor idx, read in odd-sized pieces to exercise
 * partial elements. */
static uint8_t *read_all(qsrc *s, int idx, size_t *len)
{
    uint64_t n = qs_tensor_nbytes(&s->tensors[idx]);
    uint8_t *buf = malloc(n ? n : 1);
    char *err = NULL;
    for (uint64_t off = 0; off < n;) {
        size_t piece = (size_t)(n - off < 1013 ? n - off : 1013);
        if (qsrc_read(s, idx, off, buf + off, piece, &err) < 0) {
            fprintf(stderr, "  read: %s\n", err);
            free(err);
            free(buf);
            return NULL;
        }
        off += piece;
    }
    *len = (size_t)n;
    return buf;
}

static float *read_f32(qsrc *s, const char *name, size_t *count)
{
    int i = qsrc_find(s, name);
    if (i < 0 || s->tensors[i].dtype != DT_F32)
        return NULL;
    size_t len;
    float *f = (float *)read_all(s, i, &len);
    *count = len / 4;
    return f;
}

/* Minimal safetensors reader for the reference: header JSON + data start. */
typedef struct {
    json_t  *hdr;
    uint8_t *data;
    size_t   datalen;
} st_file;

static int st_load(st_file *st, const char *path)
{
    memset(st, 0, sizeof *st);
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    uint8_t n8[8];
    if (fread(n8, 1, 8, f) != 8) { fclose(f); return -1; }
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--)
        hn = hn << 8 | n8[i];
    char *h = malloc(hn + 1);
    if (fread(h, 1, hn, f) != hn) { free(h); fclose(f); return -1; }
    h[hn] = 0;
    st->hdr = json_loads(h, 0, NULL);
    free(h);
    fseek(f, 0, SEEK_END);
    long end = ftell(f);
    st->datalen = (size_t)(end - 8 - (long)hn);
    st->data = malloc(st->datalen);
    fseek(f, 8 + (long)hn, SEEK_SET);
    size_t got = fread(st->data, 1, st->datalen, f);
    fclose(f);
    return st->hdr && got == st->datalen ? 0 : -1;
}

static const uint8_t *st_tensor(const st_file *st, const char *name, const char **dtype,
                                int *ndim, int64_t *shape, size_t *len)
{
    json_t *t = json_object_get(st->hdr, name);
    if (!t)
        return NULL;
    *dtype = json_string_value(json_object_get(t, "dtype"));
    json_t *sh = json_object_get(t, "shape"), *off = json_object_get(t, "data_offsets");
    *ndim = (int)json_array_size(sh);
    for (int i = 0; i < *ndim; i++)
        shape[i] = json_integer_value(json_array_get(sh, (size_t)i));
    size_t a = (size_t)json_integer_value(json_array_get(off, 0));
    size_t b = (size_t)json_integer_value(json_array_get(off, 1));
    *len = b - a;
    return st->data + a;
}

static void st_free(st_file *st)
{
    json_decref(st->hdr);
    free(st->data);
}

/* Every torch tensor equals the safetensors one of that name (dtype, shape,
 * bytes); returns how many matched. */
static int match_safetensors(qsrc *s, const st_file *st)
{
    int ok = 0;
    for (int i = 0; i < s->ntensors; i++) {
        const qs_tensor *t = &s->tensors[i];
        const char *dt;
        int nd;
        int64_t shape[8];
        size_t len, got;
        const uint8_t *ref = st_tensor(st, t->name, &dt, &nd, shape, &len);
        if (!ref)
            continue;
        uint8_t *b = read_all(s, i, &got);
        int same = b && dt && strcmp(dt, dtype_traits[t->dtype].name) == 0 && nd == t->ndim &&
                   memcmp(shape, t->shape, (size_t)nd * sizeof *shape) == 0 && got == len &&
                   memcmp(b, ref, len) == 0;
        CHECK_MSG(same, "tensor %s differs from safetensors", t->name);
        ok += same;
        free(b);
    }
    return ok;
}

static qsrc *open_ok(const char *path)
{
    char *err = NULL;
    qsrc *s = torch_open(path, &err);
    CHECK_MSG(s != NULL, "%s: %s", path, err ? err : "?");
    free(err);
    return s;
}

/* torch_open must fail and the message must contain want. */
static void expect_refused(const char *path, const char *want)
{
    char *err = NULL;
    qsrc *s = torch_open(path, &err);
    CHECK_MSG(s == NULL, "%s was accepted", path);
    CHECK_MSG(err && strstr(err, want) && strstr(err, path), "%s: got '%s', want '%s'", path,
              err ? err : "(null)", want);
    if (s)
        qsrc_close(s);
    free(err);
}

/*-*** stories260k ***/

TEST(stories_bin_matches_safetensors)
{
    st_file st;
    CHECK(st_load(&st, STORIES "model.safetensors") == 0);
    qsrc *s = open_ok(STORIES "pytorch_model.bin");
    if (s) {
        CHECK(s->ntensors == 47);
        CHECK((size_t)s->ntensors == json_object_size(st.hdr));
        CHECK(match_safetensors(s, &st) == 47);
        CHECK(strcmp(s->tensors[0].name, "model.embed_tokens.weight") == 0);
        CHECK(strcmp(json_string_value(json_object_get(s->header.meta, "format")), "torch") == 0);
        qsrc_close(s);
    }
    st_free(&st);
}

/* bf16 round-to-nearest-even, written out here independently of dtype.c. */
static uint16_t ref_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

TEST(stories_views_logical_values)
{
    st_file st;
    CHECK(st_load(&st, STORIES "model.safetensors") == 0);
    qsrc *s = open_ok(STORIES "pytorch_model-views.bin");
    if (!s) {
        st_free(&st);
        return;
    }
    CHECK(s->ntensors == 47 + 1 + 7);
    CHECK(match_safetensors(s, &st) == 47);      /* every model.* tensor */
    size_t ng, nu, nt, nsl, ne, nl;
    float *g = read_f32(s, "model.layers.0.mlp.gate_proj.weight", &ng);   /* (172, 64) */
    float *up = read_f32(s, "model.layers.1.mlp.up_proj.weight", &nu);    /* (172, 64) */
    float *tv = read_f32(s, "extra.transposed_view", &nt);                /* (64, 172) */
    float *sv = read_f32(s, "extra.slice_view", &nsl);                    /* (10, 64) */
    float *emb = read_f32(s, "model.embed_tokens.weight", &ne);           /* (512, 64) */
    float *lm = read_f32(s, "lm_head.weight", &nl);
    CHECK(g && up && tv && sv && emb && lm);
    if (g && up && tv && sv && emb && lm) {
        CHECK(ng == 172 * 64 && nt == 64 * 172 && nsl == 640 && nl == 512 * 64);
        int bad = 0;
        for (int i = 0; i < 64; i++)
            for (int j = 0; j < 172; j++)
                bad += tv[i * 172 + j] != g[j * 64 + i];
        CHECK(bad == 0);
        CHECK(memcmp(sv, up + 10 * 64, 640 * sizeof(float)) == 0);
        CHECK(ne == nl && memcmp(emb, lm, ne * sizeof(float)) == 0);
        int it = qsrc_find(s, "extra.transposed_view");
        CHECK(s->tensors[it].ndim == 2 && s->tensors[it].shape[0] == 64 && s->tensors[it].shape[1] == 172);
    }
    size_t len;
    int ih = qsrc_find(s, "extra.half"), ib = qsrc_find(s, "extra.bf16"), i8 = qsrc_find(s, "extra.int8");
    int i64 = qsrc_find(s, "extra.int64"), ibo = qsrc_find(s, "extra.bool");
    CHECK(ih >= 0 && ib >= 0 && i8 >= 0 && i64 >= 0 && ibo >= 0);
    if (g && ih >= 0 && ib >= 0 && i8 >= 0 && i64 >= 0 && ibo >= 0) {
        CHECK(s->tensors[ih].dtype == DT_F16 && s->tensors[ib].dtype == DT_BF16 &&
              s->tensors[i8].dtype == DT_I8 && s->tensors[i64].dtype == DT_I64 &&
              s->tensors[ibo].dtype == DT_BOOL);
        uint16_t *h = (uint16_t *)read_all(s, ih, &len);
        int badh = 0, badb = 0, bad8 = 0, badbool = 0;
        for (size_t k = 0; k < ng; k++)        /* f16 of gate0, within half an ulp (2^-11 rel) */
            badh += fabs(f16_to_f32(h[k]) - g[k]) > fabs(g[k]) * 0x1p-11 + 0x1p-25;
        CHECK(len == ng * 2 && badh == 0);
        free(h);
        uint16_t *b = (uint16_t *)read_all(s, ib, &len);
        for (size_t k = 0; k < ng; k++)
            badb += b[k] != ref_bf16(g[k]);
        CHECK(len == ng * 2 && badb == 0);
        free(b);
        int8_t *c = (int8_t *)read_all(s, i8, &len);
        for (size_t k = 0; k < ng; k++)
            bad8 += c[k] != (int8_t)(int)(g[k] * 100.0f);
        CHECK(len == ng && bad8 == 0);
        free(c);
        int64_t *l = (int64_t *)read_all(s, i64, &len);
        CHECK(len == 56 && l[0] == 0 && l[3] == 3 && l[6] == 6);
        free(l);
        uint8_t *bo = read_all(s, ibo, &len);
        for (size_t k = 0; k < ng; k++)
            badbool += bo[k] != (g[k] > 0);
        CHECK(len == ng && badbool == 0);
        free(bo);
    }
    free(g); free(up); free(tv); free(sv); free(emb); free(lm);
    qsrc_close(s);
    st_free(&st);
}

/* Reads at every offset/length near element boundaries agree with a full read. */
TEST(views_unaligned_reads)
{
    qsrc *s = open_ok(STORIES "pytorch_model-views.bin");
    if (!s)
        return;
    int i = qsrc_find(s, "extra.transposed_view");
    size_t len;
    uint8_t *all = read_all(s, i, &len), piece[64];
    int bad = 0;
    char *err = NULL;
    for (uint64_t off = 0; off < 700; off += 3)
        for (size_t n = 0; n < 40; n += 7) {
            if (qsrc_read(s, i, off, piece, n, &err) < 0 || memcmp(piece, all + off, n) != 0)
                bad++;
        }
    CHECK(bad == 0);
    CHECK(qsrc_read(s, i, len - 2, piece, 4, &err) < 0 && err && strstr(err, "past"));
    free(err);
    free(all);
    qsrc_close(s);
}

/*-*** hand-made files (tests/data/torch, see make.py) ***/

static float v0(int k) { return (float)k * 0.5f - 3.0f; }   /* storage 0 */

static void check_small(qsrc *s)
{
    static const char *names[] = { "a", "a_t", "win", "scalar", "empty", "bcast", "d", "h16",
                                   "u8", "f8", "param", "i32_3d" };
    CHECK(s->ntensors == 12);
    for (int i = 0; i < s->ntensors && i < 12; i++)
        CHECK_MSG(strcmp(s->tensors[i].name, names[i]) == 0, "tensor %d is %s", i, s->tensors[i].name);
    size_t len, n;
    float *f;
    int bad = 0;
    if ((f = read_f32(s, "a", &n))) {                       /* (4, 6) contiguous */
        for (int k = 0; k < 24; k++) bad += f[k] != v0(k);
        CHECK(n == 24);
        free(f);
    }
    if ((f = read_f32(s, "a_t", &n))) {                     /* (6, 4) stride (1, 6) */
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < 4; j++) bad += f[i * 4 + j] != v0(i + 6 * j);
        CHECK(n == 24);
        free(f);
    }
    if ((f = read_f32(s, "win", &n))) {                     /* (2, 3) offset 7 stride (6, 2) */
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++) bad += f[i * 3 + j] != v0(7 + 6 * i + 2 * j);
        CHECK(n == 6);
        free(f);
    }
    if ((f = read_f32(s, "scalar", &n))) {                  /* () offset 5 */
        CHECK(n == 1 && f[0] == v0(5));
        free(f);
    }
    int ie = qsrc_find(s, "empty");
    CHECK(ie >= 0 && s->tensors[ie].ndim == 2 && s->tensors[ie].shape[0] == 0 &&
          qs_tensor_nbytes(&s->tensors[ie]) == 0);
    if ((f = read_f32(s, "bcast", &n))) {                   /* (3, 4) offset 2 stride (0, 1) */
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++) bad += f[i * 4 + j] != v0(2 + j);
        CHECK(n == 12);
        free(f);
    }
    int id = qsrc_find(s, "d");
    double *dd = id >= 0 ? (double *)read_all(s, id, &len) : NULL;
    CHECK(dd && s->tensors[id].dtype == DT_F64 && len == 40);
    for (int k = 0; dd && k < 5; k++) bad += dd[k] != k / 3.0;
    free(dd);
    int ih = qsrc_find(s, "h16");
    int16_t *hh = ih >= 0 ? (int16_t *)read_all(s, ih, &len) : NULL;
    CHECK(hh && s->tensors[ih].dtype == DT_I16 && len == 12);
    for (int k = 0; hh && k < 6; k++) bad += hh[k] != -1000 * k;
    free(hh);
    int iu = qsrc_find(s, "u8");
    uint8_t *uu = iu >= 0 ? read_all(s, iu, &len) : NULL;
    CHECK(uu && s->tensors[iu].dtype == DT_U8 && len == 8);
    for (int k = 0; uu && k < 8; k++) bad += uu[k] != (uint8_t)(250 + k);
    free(uu);
    int i8 = qsrc_find(s, "f8");                            /* v3 on an UntypedStorage */
    uint8_t *ff = i8 >= 0 ? read_all(s, i8, &len) : NULL;
    CHECK(ff && s->tensors[i8].dtype == DT_F8_E4M3 && len == 6 && f8_e4m3_to_f32(ff[0]) == 1.0f);
    for (int k = 0; ff && k < 6; k++) bad += ff[k] != 0x38 + k;
    free(ff);
    if ((f = read_f32(s, "param", &n))) {                   /* _rebuild_parameter */
        for (int k = 0; k < 24; k++) bad += f[k] != v0(k);
        CHECK(n == 24);
        free(f);
    }
    int ii = qsrc_find(s, "i32_3d");                        /* (2, 3, 4) stride (1, 2, 6) */
    int32_t *w = ii >= 0 ? (int32_t *)read_all(s, ii, &len) : NULL;
    CHECK(w && len == 96 && s->tensors[ii].ndim == 3);
    for (int i = 0; w && i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 4; k++) bad += w[(i * 3 + j) * 4 + k] != 7 * (i + 2 * j + 6 * k) - 50;
    free(w);
    CHECK(bad == 0);
}

TEST(small_zip64_protocol2)
{
    qsrc *s = open_ok(TDIR "small.pt");
    if (s) { check_small(s); qsrc_close(s); }
}

TEST(small_big_endian_protocol4)
{
    qsrc *s = open_ok(TDIR "small-be.pt");
    if (s) { check_small(s); qsrc_close(s); }
}

TEST(nested_state_dict)
{
    qsrc *s = open_ok(TDIR "nested.pt");
    if (s) {
        check_small(s);
        json_t *sk = json_object_get(s->header.meta, "torch_skipped");
        CHECK(sk == NULL);      /* the wrapper's epoch/lr are not in the chosen dict */
        qsrc_close(s);
    }
}

TEST(sharded_index)
{
    char *err = NULL;
    qsrc *s = torch_open_index(TDIR "sharded.bin.index.json", &err);
    CHECK_MSG(s, "%s", err ? err : "?");
    free(err);
    if (s) {
        CHECK(s->ntensors == 6);
        size_t n;
        float *f = read_f32(s, "a_t", &n);
        int bad = !f;
        for (int i = 0; f && i < 6; i++)
            for (int j = 0; j < 4; j++) bad += f[i * 4 + j] != v0(i + 6 * j);
        CHECK(bad == 0);
        free(f);
        size_t len;
        int ih = qsrc_find(s, "h16");
        int16_t *hh = ih >= 0 ? (int16_t *)read_all(s, ih, &len) : NULL;
        CHECK(hh && hh[5] == -5000);
        free(hh);
        qsrc_close(s);
    }
    s = torch_open_index(TDIR "bad-shard.bin.index.json", &err);
    CHECK(!s && err && strstr(err, "'h16'") && strstr(err, "weight_map says"));
    free(err);
    err = NULL;
    s = torch_open_index(TDIR "missing.bin.index.json", &err);
    CHECK(!s && err && strstr(err, "'ghost'"));
    free(err);
}

TEST(hostile_globals_refused)
{
    expect_refused(TDIR "os-system.pt", "forbidden global 'os.system'");
    expect_refused(TDIR "builtins-eval.pt", "forbidden global 'builtins.eval'");
    expect_refused(TDIR "posix-system.pt", "forbidden global 'posix.system'");
    expect_refused(TDIR "subprocess-stack-global.pt", "forbidden global 'subprocess.Popen'");
    expect_refused(TDIR "reduce-storage-type.pt", "REDUCE of 'torch.FloatStorage' is not allowed");
    expect_refused(TDIR "build-on-list.pt", "BUILD is only allowed on an OrderedDict");
}

TEST(hostile_opcodes_refused)
{
    expect_refused(TDIR "unknown-opcode.pt", "unsupported opcode 0x69");
    expect_refused(TDIR "newobj.pt", "unsupported opcode 0x81");
    expect_refused(TDIR "no-stop.pt", "without STOP");
    expect_refused(TDIR "legacy.pt", "legacy");
}

TEST(hostile_bounds_refused)
{
    expect_refused(TDIR "deep-nesting.pt", "nesting deeper than");
    expect_refused(TDIR "deep-marks.pt", "MARKs nested deeper than");
    expect_refused(TDIR "self-append.pt", "nesting deeper than");
    expect_refused(TDIR "huge-string.pt", "exceeds");
    expect_refused(TDIR "huge-memo.pt", "memo index");
    expect_refused(TDIR "huge-shape.pt", "shape overflows");
    expect_refused(TDIR "huge-stride.pt", "shape/stride overflow");
    expect_refused(TDIR "past-storage.pt", "reach element 24 of storage 'data/0', which has 24");
}

TEST(hostile_archive_refused)
{
    expect_refused(TDIR "truncated.pt", "truncated");
    expect_refused(TDIR "missing-storage.pt", "storage record 'data/7' not found");
    expect_refused(TDIR "numel-mismatch.pt", "holds 96 bytes, its persistent id says 100");
    expect_refused(TDIR "bad-key.pt", "bad storage key");
    expect_refused(TDIR "bad-crc.pt", "CRC mismatch");
    expect_refused(TDIR "bad-byteorder.pt", "byteorder record says 'middle'");
    expect_refused(TDIR "no-such-file.pt", "No such file");
    expect_refused(STORIES "model.safetensors", "not a zip file");
}

int main(void)
{
    RUN(stories_bin_matches_safetensors);
    RUN(stories_views_logical_values);
    RUN(views_unaligned_reads);
    RUN(small_zip64_protocol2);
    RUN(small_big_endian_protocol4);
    RUN(nested_state_dict);
    RUN(sharded_index);
    RUN(hostile_globals_refused);
    RUN(hostile_opcodes_refused);
    RUN(hostile_bounds_refused);
    RUN(hostile_archive_refused);
    return tl_summary();
}
