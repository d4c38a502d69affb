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
#include "pickle.h"

#include <jansson.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

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

/* The same through qsrc_open (dispatch by magic) against qpipe's own
 * safetensors reader. */
TEST(qsrc_open_torch_equals_safetensors_reader)
{
    char *err = NULL;
    qsrc *t = qsrc_open(STORIES "pytorch_model.bin", &err);
    CHECK_MSG(t, "%s", err ? err : "?");
    free(err);
    err = NULL;
    qsrc *st = qsrc_open(STORIES "model.safetensors", &err);
    CHECK_MSG(st, "%s", err ? err : "?");
    free(err);
    if (t && st) {
        CHECK(t->ntensors == st->ntensors);
        int same = 0;
        for (int i = 0; i < t->ntensors; i++) {
            int j = qsrc_find(st, t->tensors[i].name);
            if (j < 0)
                continue;
            size_t la, lb;
            uint8_t *a = read_all(t, i, &la), *b = read_all(st, j, &lb);
            same += a && b && la == lb && memcmp(a, b, la) == 0 &&
                    t->tensors[i].dtype == st->tensors[j].dtype && t->tensors[i].ndim == st->tensors[j].ndim &&
                    memcmp(t->tensors[i].shape, st->tensors[j].shape, sizeof t->tensors[i].shape[0] * (size_t)t->tensors[i].ndim) == 0;
            free(a);
            free(b);
        }
        CHECK(same == 47);
    }
    qsrc_close(t);
    qsrc_close(st);
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
        /* map(): contiguous tensors point into the file, views do not */
        const float *me = qsrc_map(s, qsrc_find(s, "model.embed_tokens.weight"));
        const float *ms = qsrc_map(s, qsrc_find(s, "extra.slice_view"));
        CHECK(me && memcmp(me, emb, ne * sizeof(float)) == 0);
        CHECK(me == qsrc_map(s, qsrc_find(s, "lm_head.weight")));
        CHECK(ms && memcmp(ms, sv, 640 * sizeof(float)) == 0);
        CHECK(qsrc_map(s, qsrc_find(s, "extra.transposed_view")) == NULL);
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
    if (s) {
        check_small(s);
        CHECK(qsrc_map(s, 0) == NULL);      /* big-endian bytes are never handed out */
        CHECK(qsrc_map(s, qsrc_find(s, "u8")) != NULL);
        qsrc_close(s);
    }
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

/*-*** the unpickler on its own ***/

static const pk_obj *load(pk_doc **d, const char *bytes, size_t n, char **err)
{
    *err = NULL;
    *d = pickle_load((const uint8_t *)bytes, n, err);
    return *d ? pickle_root(*d) : NULL;
}
#define LOAD(lit, d, err) load(d, lit, sizeof lit - 1, err)

TEST(pickle_scalars_and_dicts)
{
    pk_doc *d;
    char *err;
    const pk_obj *o;
    /* LONG1: little-endian two's complement (pickletools: decode_long) */
    o = LOAD("\x8a\x01\xff.", &d, &err);
    CHECK(o && o->kind == PK_INT && o->u.i == -1);
    pickle_free(d);
    o = LOAD("\x8a\x02\x00\x80.", &d, &err);
    CHECK(o && o->kind == PK_INT && o->u.i == -32768);
    pickle_free(d);
    o = LOAD("\x8a\x00.", &d, &err);
    CHECK(o && o->kind == PK_INT && o->u.i == 0);
    pickle_free(d);
    o = LOAD("\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.", &d, &err);
    CHECK(!o && err && strstr(err, "does not fit"));
    free(err);
    o = LOAD("J\xfe\xff\xff\xff.", &d, &err);                    /* BININT is signed */
    CHECK(o && o->kind == PK_INT && o->u.i == -2);
    pickle_free(d);
    /* BINFLOAT is big-endian: 0x3ff8... = 1.5 */
    o = LOAD("G\x3f\xf8\x00\x00\x00\x00\x00\x00.", &d, &err);
    CHECK(o && o->kind == PK_FLOAT && o->u.f == 1.5);
    pickle_free(d);
    /* SETITEMS with a repeated key keeps the first position, last value */
    o = LOAD("}(X\x01\x00\x00\x00" "aK\x01X\x01\x00\x00\x00" "bK\x02X\x01\x00\x00\x00" "aK\x03u.", &d, &err);
    CHECK(o && o->kind == PK_DICT && o->u.dict.n == 2);
    if (o && o->kind == PK_DICT && o->u.dict.n == 2) {
        CHECK(strcmp(o->u.dict.keys[0]->u.str.s, "a") == 0 && o->u.dict.vals[0]->u.i == 3);
        CHECK(pickle_dict_get(o, "b")->u.i == 2 && pickle_dict_get(o, "c") == NULL);
    }
    pickle_free(d);
    /* DICT pops to the mark (candle maps it to EMPTY_DICT, a bug) */
    o = LOAD("K\x07(X\x01\x00\x00\x00" "kK\x05" "d.", &d, &err);
    CHECK(o && o->kind == PK_DICT && o->u.dict.n == 1 && pickle_dict_get(o, "k")->u.i == 5);
    pickle_free(d);
    /* memo: BINPUT / BINGET share the object, MEMOIZE numbers by len(memo) */
    o = LOAD("]q\x05K\x01" "ah\x05\x86.", &d, &err);
    CHECK(o && o->kind == PK_TUPLE && o->u.seq.n == 2 && o->u.seq.items[0] == o->u.seq.items[1]);
    pickle_free(d);
    o = LOAD("Nr\x00\xf0\x00\x00j\x00\xf0\x00\x00\x85.", &d, &err);   /* sparse memo index 61440 */
    CHECK(o && o->kind == PK_TUPLE && o->u.seq.items[0]->kind == PK_NONE);
    pickle_free(d);
    o = LOAD("\x80\x04\x8c\x01x\x94\x8c\x01y\x94h\x01h\x00\x86.", &d, &err);
    CHECK(o && o->kind == PK_TUPLE && strcmp(o->u.seq.items[0]->u.str.s, "y") == 0 &&
          strcmp(o->u.seq.items[1]->u.str.s, "x") == 0);
    pickle_free(d);
}

TEST(pickle_refusals)
{
    pk_doc *d;
    char *err;
    static const struct { const char *bytes; size_t n; const char *want; } cases[] = {
#define C(lit, want) { lit, sizeof lit - 1, want }
        C("}(NK\x01s.", "stack underflow"),                 /* SETITEM may not reach below MARK */
        C("N)R.", "REDUCE on a non-callable"),
        C("ctorch\nQInt8Storage\n.", "unsupported type 'torch.QInt8Storage'"),
        C("ctorch\nload\n.", "forbidden global 'torch.load'"),
        C("c__builtin__\ngetattr\n.", "forbidden global '__builtin__.getattr'"),
        C("ccollections\nOrderedDict\nK\x01\x85R.", "OrderedDict() with arguments"),
        C("cos\nsys\x01tem\n.", "forbidden global 'os.sys?tem'"),
        C("h\x00.", "memo key 0 not found"),
        C("Nr\x00\x00\x02\x00.", "memo index 131072 too large"),   /* no objects yet: >64Ki refused */
        C("\x80\x06.", "unsupported pickle protocol 6"),
        C("X\x05\x00\x00\x00" "ab", "truncated"),
        C("(t)Q.", "persistent id is not a 5-tuple"),
        C(".", "stack underflow"),
        C("\x95\xff\x00\x00\x00\x00\x00\x00\x00N.", "truncated frame"),
        C("ctorch._utils\n_rebuild_tensor_v2\n(NtR.", "_rebuild_tensor_v2 takes 6 or 7"),
        C("K\x01u.", "no MARK"),
#undef C
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err = NULL;
        d = pickle_load((const uint8_t *)cases[i].bytes, cases[i].n, &err);
        CHECK_MSG(!d && err && strstr(err, cases[i].want), "case %zu: got '%s', want '%s'", i,
                  err ? err : "(accepted)", cases[i].want);
        pickle_free(d);
        free(err);
    }
}

/* Deterministic mutation fuzzing: corrupted pickles and zips must be refused
 * or read cleanly, never crash (meaningful under ASan/UBSan). */
static uint32_t lcg(uint32_t *st)
{
    *st = *st * 1664525u + 1013904223u;
    return *st >> 8;
}

TEST(fuzz_mutated_inputs)
{
    FILE *f = fopen(TDIR "small.pt", "rb");
    CHECK(f != NULL);
    if (!f)
        return;
    uint8_t orig[8192];
    size_t n = fread(orig, 1, sizeof orig, f);
    fclose(f);
    char tmp[] = "/tmp/test_torch.XXXXXX";
    int tfd = mkstemp(tmp);
    CHECK(tfd >= 0);
    if (tfd < 0)
        return;
    close(tfd);
    uint32_t st = 12345;
    int opened = 0, refused = 0;
    for (int it = 0; it < 400; it++) {
        uint8_t buf[8192];
        memcpy(buf, orig, n);
        int flips = 1 + (int)(lcg(&st) % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = lcg(&st) % n;
            if (at < 2048 && lcg(&st) % 2)     /* favour data.pkl and the headers */
                at %= 1024;
            buf[at] = (uint8_t)lcg(&st);
        }
        FILE *o = fopen(tmp, "wb");
        if (!o)
            break;
        fwrite(buf, 1, n, o);
        fclose(o);
        char *err = NULL;
        qsrc *s = torch_open(tmp, &err);
        if (s) {
            opened++;
            for (int t = 0; t < s->ntensors; t++) {
                size_t len;
                free(read_all(s, t, &len));
            }
            qsrc_close(s);
        } else {
            refused += err != NULL;
        }
        free(err);
    }
    remove(tmp);
    CHECK(opened + refused == 400);
    CHECK(refused > 0);
    /* and the raw unpickler on mutated copies of a real data.pkl */
    pk_doc *d;
    char *err;
    static const char pk[] = /* {"a": _rebuild_tensor_v2(FloatStorage "0" x6, 0, (2,3), (3,1), False, {})} */
        "\200\002}q\000(X\001\000\000\000aq\001ctorch._utils\n_rebuild_tensor_v2\nq\002"
        "((X\007\000\000\000storageq\003ctorch\nFloatStorage\nq\004X\001\000\000\0000X\003\000\000\000cp"
        "uK\006tQK\000K\002K\003\206K\003K\001\206\211}tRu.";
    size_t pn = sizeof pk - 1;
    err = NULL;
    d = pickle_load((const uint8_t *)pk, pn, &err);
    CHECK_MSG(d && pickle_root(d)->kind == PK_DICT, "%s", err ? err : "not a dict");
    pickle_free(d);
    free(err);
    for (int it = 0; it < 20000; it++) {
        uint8_t b[256];
        memcpy(b, pk, pn);
        b[lcg(&st) % pn] = (uint8_t)lcg(&st);
        size_t cut = lcg(&st) % 8 == 0 ? lcg(&st) % pn : pn;
        err = NULL;
        d = pickle_load(b, cut, &err);
        CHECK(d || err);
        pickle_free(d);
        free(err);
    }
}

int main(void)
{
    RUN(stories_bin_matches_safetensors);
    RUN(qsrc_open_torch_equals_safetensors_reader);
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
    RUN(pickle_scalars_and_dicts);
    RUN(pickle_refusals);
    RUN(fuzz_mutated_inputs);
    return tl_summary();
}
