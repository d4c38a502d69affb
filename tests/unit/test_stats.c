/* test_stats — calibration statistics (calib.c, written as a stats stream)
 * read back through stats.c, against an independent float64 forward pass
 * (ref_llama.h) and a stored digest (tests/data/ref/).
 *
 * Modes: no argument = the unit tests; `--check-file CAL.qs` = compare a
 * stats file made by `qcal tests/data/stories260k --tokens
 * tests/data/stories260k/greedy.tokens.u32 --samples all` with the float64
 * reference (used by tests/cli/qcal.bats); `--write-ref` = regenerate
 * tests/data/ref/stories260k-down4-hessian.json from the float64 reference. */
#include "testlib.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>

#include "calib.h"
#include "dtype.h"
#include "llama.h"
#include "qstream.h"
#include "ref_llama.h"
#include "ref_source.h"
#include "safetensors.h"
#include "source.h"
#include "stats.h"

#define STORIES "tests/data/stories260k"
#define REF_JSON "tests/data/ref/stories260k-down4-hessian.json"
#define DOWN4 "model.layers.4.mlp.down_proj.weight"
#define HID 172
#define REL_FRO_TOL 1e-4



/* The float64 reference: input X (n, HID) of layer 4's down_proj over the
 * greedy tokens as one window, and H = Xᵀ X. */
typedef struct { int n; double *X, *H; } ref_stats;

static ref_stats ref_compute(void)
{
    ref_stats r = { 0 };
    uint32_t *tok = read_u32(STORIES "/greedy.tokens.u32", &r.n);
    char *err = NULL;
    qsrc *s = qsrc_open(STORIES, &err);
    if (!tok || !s) { free(err); free(tok); r.n = 0; return r; }
    ref_model *m = ref_build(5, 64, HID, 8, 4, 512, 1e-5, 10000, 1, src_get_d, s);
    qsrc_close(s);
    r.X = calloc((size_t)r.n * HID, sizeof *r.X);
    r.H = calloc((size_t)HID * HID, sizeof *r.H);
    ref_forward(m, tok, r.n, NULL, 4, r.X);
    for (int i = 0; i < HID; i++)
        for (int j = 0; j < HID; j++)
            for (int t = 0; t < r.n; t++)
                r.H[i * HID + j] += r.X[t * HID + i] * r.X[t * HID + j];
    ref_free(m);
    free(tok);
    return r;
}

/* Run the engine with the calibration hook over the greedy tokens and write
 * the stats stream to path. Returns 0 on success. */
static int make_stats_file(const char *path, int threads)
{
    int n;
    uint32_t *tok = read_u32(STORIES "/greedy.tokens.u32", &n);
    char *err = NULL;
    qsrc *s = qsrc_open(STORIES, &err);
    llama_model *m = s ? llama_load_source(s, &err) : NULL;
    qsrc_close(s);
    calib *c = calib_new(256, &err);
    llama_state *st = m ? llama_state_new(m, n, n, &err) : NULL;
    int rc = -1;
    if (tok && m && c && st) {
        llama_set_threads(m, threads);
        llama_set_hook(m, calib_hook, c);
        rc = llama_eval(m, st, tok, n, NULL, 0, &err);
    }
    qs_header h;
    qs_header_init(&h);
    json_object_set_new(h.meta, "kind", json_string("stats"));
    FILE *f = rc == 0 ? fopen(path, "wb") : NULL;
    qs_writer *w = NULL;
    if (f && calib_manifest(c, &h, &err) == 0 && (w = qs_writer_open_fd(fileno(f), &h, 0, &err)))
        rc = calib_write(c, w, &err) == 0 ? qs_writer_close(w, &err) : (qs_writer_close(w, NULL), -1);
    else
        rc = -1;
    if (f) fclose(f);
    if (err) { fprintf(stderr, "  %s\n", err); free(err); }
    qs_header_clear(&h);
    llama_state_free(st);
    calib_free(c);
    llama_free(m);
    free(tok);
    return rc;
}

static double rel_fro(const float *H, const double *R, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (H[i] - R[i]) * (H[i] - R[i]);
        den += R[i] * R[i];
    }
    return sqrt(num / den);
}

/* Compare a stats file with the reference; returns the number of failures. */
static void check_against_ref(const char *path, const ref_stats *r)
{
    char *err = NULL;
    stats *st = stats_open(path, &err);
    CHECK_MSG(st != NULL, "%s", err ? err : "");
    free(err);
    if (!st) return;
    size_t n = 0;
    const float *H = stats_get(st, DOWN4, "hessian", &n);
    CHECK(H && n == HID * HID);
    CHECK(stats_tokens(st, DOWN4) == r->n);
    if (H && n == HID * HID) {
        double e = rel_fro(H, r->H, n);
        printf("# %s: relative Frobenius error of the down_proj Hessian %.3g\n", path, e);
        CHECK(e < REL_FRO_TOL);
    }
    const float *x2 = stats_get(st, DOWN4, "x2_mean", &n), *xa = stats_get(st, DOWN4, "xabs_mean", NULL);
    const float *am = stats_get(st, DOWN4, "absmax", NULL);
    CHECK(x2 && xa && am && n == HID);
    for (int j = 0; x2 && xa && am && j < HID; j++) {
        double s2 = 0, sa = 0, mx = 0;
        for (int t = 0; t < r->n; t++) {
            double v = r->X[t * HID + j];
            s2 += v * v; sa += fabs(v); mx = fmax(mx, fabs(v));
        }
        CHECK_NEAR(x2[j], s2 / r->n, 1e-4 * s2 / r->n + 1e-9);
        CHECK_NEAR(xa[j], sa / r->n, 1e-4 * sa / r->n + 1e-9);
        CHECK_NEAR(am[j], mx, 1e-4 * mx + 1e-9);
    }
    stats_close(st);
}

/* ------------------------------------------------------------------------ */

static ref_stats R;
static char tmpdir[] = "/tmp/test_stats.XXXXXX";
static char path1[64], path2[64];

TEST(reference_matches_stored_digest)
{
    json_error_t je;
    json_t *d = json_load_file(REF_JSON, 0, &je);
    CHECK_MSG(d != NULL, "%s: %s", REF_JSON, je.text);
    if (!d || !R.n) { json_decref(d); return; }
    double tr = 0, fro = 0;
    for (int i = 0; i < HID; i++) tr += R.H[i * HID + i];
    for (int i = 0; i < HID * HID; i++) fro += R.H[i] * R.H[i];
    fro = sqrt(fro);
    CHECK(json_integer_value(json_object_get(d, "n_tokens")) == R.n);
    CHECK_NEAR(tr, json_real_value(json_object_get(d, "trace")), 1e-9 * tr);
    CHECK_NEAR(fro, json_real_value(json_object_get(d, "frobenius")), 1e-9 * fro);
    json_t *ent = json_object_get(d, "entries");
    size_t i;
    json_t *e;
    json_array_foreach(ent, i, e) {
        int r = (int)json_integer_value(json_array_get(e, 0)), c = (int)json_integer_value(json_array_get(e, 1));
        double v = json_real_value(json_array_get(e, 2));
        CHECK_NEAR(R.H[r * HID + c], v, 1e-9 * fabs(v) + 1e-12);
    }
    CHECK(json_array_size(ent) >= 4);
    json_decref(d);
}

TEST(qcal_hessian_of_last_down_proj_matches_float64)
{
    CHECK(make_stats_file(path1, 1) == 0);
    check_against_ref(path1, &R);
}

TEST(statistics_do_not_depend_on_threads)
{
    CHECK(make_stats_file(path2, 3) == 0);
    FILE *a = fopen(path1, "rb"), *b = fopen(path2, "rb");
    CHECK(a && b);
    int same = a && b;
    while (same) {
        int x = fgetc(a), y = fgetc(b);
        if (x != y) same = 0;
        if (x == EOF || y == EOF) break;
    }
    CHECK(same);
    if (a) fclose(a);
    if (b) fclose(b);
}

TEST(shared_inputs_are_stored_once_and_aliases_resolve)
{
    char *err = NULL;
    stats *st = stats_open(path1, &err);
    CHECK(st != NULL);
    free(err);
    if (!st) return;
    static const char *whats[] = { "hessian", "x2_mean", "xabs_mean", "absmax", "act_hist", "act_range" };
    for (int l = 0; l < 5; l++)
        for (size_t w = 0; w < sizeof whats / sizeof *whats; w++) {
            char q[96], k[96], v[96], g[96], u[96];
            snprintf(q, sizeof q, "model.layers.%d.self_attn.q_proj.weight", l);
            snprintf(k, sizeof k, "model.layers.%d.self_attn.k_proj.weight", l);
            snprintf(v, sizeof v, "model.layers.%d.self_attn.v_proj.weight", l);
            snprintf(g, sizeof g, "model.layers.%d.mlp.gate_proj.weight", l);
            snprintf(u, sizeof u, "model.layers.%d.mlp.up_proj.weight", l);
            const float *pq = stats_get(st, q, whats[w], NULL), *pg = stats_get(st, g, whats[w], NULL);
            CHECK(pq && pq == stats_get(st, k, whats[w], NULL) && pq == stats_get(st, v, whats[w], NULL));
            CHECK(pg && pg == stats_get(st, u, whats[w], NULL));
            CHECK(pq != pg);
            CHECK(stats_tokens(st, v) == 201 && stats_tokens(st, u) == 201);
        }
    CHECK(stats_get(st, "model.layers.5.mlp.down_proj.weight", "hessian", NULL) == NULL);
    CHECK(stats_get(st, DOWN4, "nonsense", NULL) == NULL);
    CHECK(stats_tokens(st, "lm_head.weight") == -1);   /* tied head: no separate linear */
    /* the q/k/v Hessian is the Gram matrix of the normed input: trace = Σ x², per channel */
    size_t n;
    const float *H = stats_get(st, "model.layers.0.self_attn.q_proj.weight", "hessian", &n);
    const float *x2 = stats_get(st, "model.layers.0.self_attn.q_proj.weight", "x2_mean", NULL);
    CHECK(H && x2 && n == 64 * 64);
    for (int j = 0; H && x2 && j < 64; j++) CHECK_NEAR(H[j * 64 + j] / 201, x2[j], 1e-5 * x2[j]);
    stats_close(st);
}

TEST(activation_histogram_is_consistent)
{
    char *err = NULL;
    stats *st = stats_open(path1, &err);
    free(err);
    CHECK(st != NULL);
    if (!st) return;
    size_t nb, nd;
    const float *h = stats_get(st, DOWN4, "act_hist", &nb), *R2 = stats_get(st, DOWN4, "act_hist_max", NULL);
    const float *rg = stats_get(st, DOWN4, "act_range", NULL), *am = stats_get(st, DOWN4, "absmax", &nd);
    CHECK(h && R2 && rg && am && nb == 256);
    if (!h || !R2 || !rg || !am) { stats_close(st); return; }
    double sum = 0, mx = 0;
    for (size_t b = 0; b < nb; b++) sum += h[b];
    for (size_t j = 0; j < nd; j++) mx = fmax(mx, am[j]);
    CHECK_NEAR(sum, 1.0, 1e-5);
    CHECK(mx < R2[0] && mx >= R2[0] / 2);                 /* smallest power of two above */
    CHECK(fmax(-rg[0], rg[1]) == (float)mx);
    /* fraction below R/8 from the reference activations, exactly */
    double below = 0;
    for (int i = 0; i < R.n * HID; i++) below += fabs(R.X[i]) < R2[0] / 8;
    double hb = 0;
    for (size_t b = 0; b < nb / 8; b++) hb += h[b];
    CHECK_NEAR(hb, below / (R.n * HID), 2e-4);
    stats_close(st);
}

TEST(histogram_is_exact_when_the_range_grows)
{
    char *err = NULL;
    calib *c = calib_new(16, &err);
    const char *names[1] = { "w" };
    float a[8] = { 0.1f, 0.2f, 0.3f, 0.45f, -0.05f, 0, 0.49f, 0.26f }, b[8] = { 3.0f, -1.1f, 0, 0, 0, 0, 0, 0 };
    CHECK(c && calib_hook(c, names, 1, a, 2, 4, &err) == 0 && calib_hook(c, names, 1, b, 2, 4, &err) == 0);
    qs_header h;
    qs_header_init(&h);
    json_object_set_new(h.meta, "kind", json_string("stats"));
    char p[96];
    snprintf(p, sizeof p, "%s/h.qs", tmpdir);
    FILE *f = fopen(p, "wb");
    qs_writer *w = qs_writer_open_fd(fileno(f), &h, 0, &err);
    CHECK(w && calib_write(c, w, &err) == 0 && qs_writer_close(w, &err) == 0);
    fclose(f);
    stats *st = stats_open(p, &err);
    CHECK(st != NULL);
    const float *hist = st ? stats_get(st, "w", "act_hist", NULL) : NULL;
    const float *R2 = st ? stats_get(st, "w", "act_hist_max", NULL) : NULL;
    CHECK(hist && R2 && R2[0] == 4.0f);
    /* bins of width 0.25 over [0, 4): directly */
    int want[16] = { 0 };
    for (int i = 0; i < 8; i++) want[(int)(fabsf(a[i]) / 0.25f)]++, want[(int)(fabsf(b[i]) / 0.25f)]++;
    for (int i = 0; hist && i < 16; i++) CHECK_NEAR(hist[i], want[i] / 16.0, 1e-7);
    CHECK(stats_tokens(st, "w") == 4);
    CHECK(calib_hook(c, names, 1, a, 1, 8, &err) == -1 && err && strstr(err, "width"));
    free(err); err = NULL;
    CHECK(calib_new(100, &err) == NULL && err);
    free(err);
    stats_close(st);
    qs_header_clear(&h);
    calib_free(c);
}

TEST(stats_open_reads_a_safetensors_copy_with_aliases)
{
    /* a hand-made safetensors file: a.hessian (2x2), a.n_tokens, alias b -> a */
    qs_tensor th, tn;
    int64_t s2[2] = { 2, 2 }, s1[1] = { 1 };
    qs_tensor_init(&th, "a.hessian", DT_F32, 2, s2);
    qs_tensor_init(&tn, "a.n_tokens", DT_I64, 1, s1);
    const qs_tensor *ts[2] = { &th, &tn };
    json_t *md = json_pack("{s:s,s:s}", "alias:b.hessian", "a.hessian", "alias:b.n_tokens", "a.n_tokens");
    uint64_t off[2];
    size_t hl;
    char *err = NULL;
    char *hdr = st_build_header(ts, 2, md, off, &hl, &err);
    CHECK(hdr != NULL);
    char p[96];
    snprintf(p, sizeof p, "%s/s.safetensors", tmpdir);
    FILE *f = fopen(p, "wb");
    float hv[4] = { 4, 1, 1, 9 };
    int64_t nt = 7;
    if (hdr && f) {
        size_t end = hl + 16 + 8;
        char *file = calloc(1, end);
        memcpy(file, hdr, hl);
        memcpy(file + off[0], hv, 16);
        memcpy(file + off[1], &nt, 8);
        fwrite(file, 1, end, f);
        free(file);
    }
    if (f) fclose(f);
    stats *st = stats_open(p, &err);
    CHECK_MSG(st != NULL, "%s", err ? err : "");
    size_t n = 0;
    const float *H = st ? stats_get(st, "b", "hessian", &n) : NULL;
    CHECK(H && n == 4 && H[3] == 9.0f && H[1] == 1.0f);
    CHECK(st && stats_tokens(st, "b") == 7 && stats_tokens(st, "a") == 7);
    stats_close(st);
    /* a model file is not a stats file */
    free(err); err = NULL;
    CHECK(stats_open(STORIES "/model.safetensors", &err) == NULL && err && strstr(err, "not a stats"));
    free(err);
    free(hdr);
    json_decref(md);
    qs_tensor_clear(&th);
    qs_tensor_clear(&tn);
}

/* A stats stream with Hessians over the lazy threshold (stats.c): three
 * weights w0..w2 of d_in 300 (w1 an alias of w0, as k_proj of q_proj), each
 * H[i][j] = 1000 w + i + j / 1000, x2_mean[i] = w + i. */
#define LZ_D 300
static float lz_h(int w, int i, int j) { return 1000.0f * (float)w + (float)i + (float)j / 1000.0f; }

static int write_lazy_stream(const char *path)
{
    qs_header h;
    qs_header_init(&h);
    json_object_set_new(h.meta, "kind", json_string("stats"));
    FILE *f = fopen(path, "wb");
    char *err = NULL;
    qs_writer *w = f ? qs_writer_open_fd(fileno(f), &h, 64 << 10, &err) : NULL;
    float *H = malloc(LZ_D * LZ_D * sizeof *H), x2[LZ_D];
    int rc = w && H ? 0 : -1;
    for (int k = 0; k < 3 && rc == 0; k++) {
        char name[64];
        qs_tensor t;
        const int wi = k == 2 ? 2 : 0;       /* stored: w0, w2; w1 is an alias */
        if (k == 1) {
            qs_tensor_init(&t, "w1.hessian", DT_F32, 0, NULL);
            t.nparts = 0;
            t.attrs = json_pack("{s:s}", "alias", "w0.hessian");
            rc = qs_writer_put(w, &t, NULL);
            qs_tensor_clear(&t);
            continue;
        }
        int64_t sh[2] = { LZ_D, LZ_D }, sv[1] = { LZ_D };
        for (int i = 0; i < LZ_D; i++)
            for (int j = 0; j < LZ_D; j++) H[i * LZ_D + j] = lz_h(wi, i, j);
        for (int i = 0; i < LZ_D; i++) x2[i] = (float)(wi + i);
        snprintf(name, sizeof name, "w%d.hessian", wi);
        qs_tensor_init(&t, name, DT_F32, 2, sh);
        rc = qs_writer_put(w, &t, H);
        qs_tensor_clear(&t);
        snprintf(name, sizeof name, "w%d.x2_mean", wi);
        qs_tensor_init(&t, name, DT_F32, 1, sv);
        if (rc == 0) rc = qs_writer_put(w, &t, x2);
        qs_tensor_clear(&t);
    }
    if (w && qs_writer_close(w, &err) < 0) rc = -1;
    if (f) fclose(f);
    free(err);
    free(H);
    qs_header_clear(&h);
    return rc;
}

static int lz_matches(const float *H, int w)
{
    if (!H) return 0;
    for (int i = 0; i < LZ_D; i += 37)
        for (int j = 0; j < LZ_D; j += 41)
            if (H[i * LZ_D + j] != lz_h(w, i, j)) return 0;
    return H[LZ_D * LZ_D - 1] == lz_h(w, LZ_D - 1, LZ_D - 1);
}

/* Write the lazy stream as tmpdir/NAME (path in p) and open it. */
static stats *open_lazy(const char *name, char *p, size_t cap)
{
    snprintf(p, cap, "%s/%s", tmpdir, name);
    CHECK(write_lazy_stream(p) == 0);
    char *err = NULL;
    stats *st = stats_open(p, &err);
    CHECK_MSG(st != NULL, "%s", err ? err : "");
    free(err);
    return st;
}

TEST(hessians_are_read_on_first_use_and_dropped_on_evict)
{
    char p[96];
    stats *st = open_lazy("lazy.qs", p, sizeof p);
    if (!st) return;
    const size_t vec = 2 * LZ_D * sizeof(float), hb = LZ_D * LZ_D * sizeof(float);
    CHECK(stats_resident(st) == vec);                       /* at open: the vectors only */
    size_t n = 0;
    CHECK(stats_has(st, "w1", "hessian", &n) && n == LZ_D * LZ_D && stats_resident(st) == vec);
    const float *h0 = stats_get(st, "w0", "hessian", &n);
    CHECK(lz_matches(h0, 0) && n == LZ_D * LZ_D && stats_resident(st) == vec + hb);
    CHECK(stats_get(st, "w1", "hessian", NULL) == h0);      /* the alias: same data, not read twice */
    const float *h2 = stats_get(st, "w2", "hessian", NULL);
    CHECK(lz_matches(h2, 2) && stats_resident(st) == vec + 2 * hb);
    stats_evict(st, "w2");                                  /* keeps w2's */
    CHECK(stats_resident(st) == vec + hb && lz_matches(h2, 2));
    stats_evict(st, NULL);
    CHECK(stats_resident(st) == vec);
    CHECK(lz_matches(stats_get(st, "w1", "hessian", NULL), 0));   /* read again after the evict */
    const float *x2 = stats_get(st, "w2", "x2_mean", &n);
    CHECK(x2 && n == LZ_D && x2[7] == 9.0f);
    CHECK(stats_error(st) == NULL);
    stats_close(st);
}

TEST(a_hessian_corrupted_after_open_is_an_error_not_data)
{
    char p[96];
    stats *st = open_lazy("lazy2.qs", p, sizeof p);
    if (!st) return;
    /* flip a byte in the middle of the file: inside w2's Hessian (the last large tensor) */
    FILE *f = fopen(p, "r+b");
    CHECK(f != NULL);
    if (f) {
        fseek(f, 0, SEEK_END);
        long at = ftell(f) - 2 * LZ_D * 4 - 4000;
        fseek(f, at, SEEK_SET);
        int c = fgetc(f);
        fseek(f, at, SEEK_SET);
        fputc(c ^ 0x20, f);
        fclose(f);
    }
    CHECK(lz_matches(stats_get(st, "w0", "hessian", NULL), 0));
    CHECK(stats_get(st, "w2", "hessian", NULL) == NULL);
    const char *e = stats_error(st);
    CHECK_MSG(e && strstr(e, "w2.hessian") && strstr(e, "checksum"), "%s", e ? e : "(no error)");
    stats_close(st);
}

static int write_ref(void)
{
    if (!R.n) return 1;
    double tr = 0, fro = 0;
    for (int i = 0; i < HID; i++) tr += R.H[i * HID + i];
    for (int i = 0; i < HID * HID; i++) fro += R.H[i] * R.H[i];
    json_t *ent = json_array();
    static const int ij[][2] = { { 0, 0 }, { 0, 1 }, { 17, 5 }, { 100, 100 }, { 171, 3 }, { 171, 171 } };
    for (size_t k = 0; k < sizeof ij / sizeof *ij; k++)
        json_array_append_new(ent, json_pack("[i,i,f]", ij[k][0], ij[k][1], R.H[ij[k][0] * HID + ij[k][1]]));
    json_t *d = json_pack("{s:s,s:i,s:f,s:f,s:o}", "what",
                          "H = X^T X, X = input of model.layers.4.mlp.down_proj over stories260k greedy.tokens.u32 "
                          "as one window, float64 reference forward (tests/unit/ref_llama.h)",
                          "n_tokens", R.n, "trace", tr, "frobenius", sqrt(fro), "entries", ent);
    int rc = json_dump_file(d, REF_JSON, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
    json_decref(d);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    R = ref_compute();
    if (argc == 2 && !strcmp(argv[1], "--write-ref"))
        return write_ref();
    if (argc == 3 && !strcmp(argv[1], "--check-file")) {
        tl_cur_failed = 0;
        check_against_ref(argv[2], &R);
        printf("%s - check-file %s\n", tl_cur_failed ? "not ok" : "ok", argv[2]);
        free(R.X); free(R.H);
        return tl_cur_failed;
    }
    if (!mkdtemp(tmpdir)) return 1;
    snprintf(path1, sizeof path1, "%s/a.qs", tmpdir);
    snprintf(path2, sizeof path2, "%s/b.qs", tmpdir);
    RUN(reference_matches_stored_digest);
    RUN(qcal_hessian_of_last_down_proj_matches_float64);
    RUN(statistics_do_not_depend_on_threads);
    RUN(shared_inputs_are_stored_once_and_aliases_resolve);
    RUN(activation_histogram_is_consistent);
    RUN(histogram_is_exact_when_the_range_grows);
    RUN(stats_open_reads_a_safetensors_copy_with_aliases);
    RUN(hessians_are_read_on_first_use_and_dropped_on_evict);
    RUN(a_hessian_corrupted_after_open_is_an_error_not_data);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) {}
    free(R.X); free(R.H);
    return tl_summary();
}
