/* test_mix — mixed-precision allocation (common/mix.h): the knapsack solver
 * against brute-force enumeration on random small instances (exact mode and
 * the rounded-unit fallback), the Lagrangian bound, storage costs written
 * out by hand, menu parsing, sensitivities against gptq_proxy_loss of an
 * independent RTN call, and the outlier-column (LLM.int8()-style) settings. */
#include "testlib.h"

#include <string.h>

#include "gptq.h"
#include "mix.h"

static unsigned long long rng_state = 0x2545f4914f6cdd1dull;
static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* Enumerate every choice vector: least total loss with Σ size <= budget (INFINITY if none). */
static double brute(int n, const int *nch, const uint64_t *const *size, const double *const *loss, uint64_t budget)
{
    int idx[8] = { 0 };
    double best = INFINITY;
    for (;;) {
        uint64_t s = 0;
        double l = 0;
        for (int i = 0; i < n; i++) { s += size[i][idx[i]]; l += loss[i][idx[i]]; }
        if (s <= budget && l < best) best = l;
        int i = 0;
        while (i < n && ++idx[i] == nch[i]) idx[i++] = 0;
        if (i == n) break;
    }
    return best;
}

TEST(knapsack_matches_brute_force)
{
    for (int trial = 0; trial < 300; trial++) {
        int n = 1 + (int)(urand() * 6), nch[8];
        uint64_t sz[8][6];
        double ls[8][6];
        const uint64_t *size[8];
        const double *loss[8];
        const uint64_t mult = trial % 3 == 0 ? 1 : 4096;   // gcd > 1 like real weight sizes
        uint64_t lo = 0, hi = 0;
        for (int i = 0; i < n; i++) {
            nch[i] = 1 + (int)(urand() * 5);
            uint64_t mn = UINT64_MAX, mx = 0;
            for (int c = 0; c < nch[i]; c++) {
                sz[i][c] = mult * (1 + (uint64_t)(urand() * 40));
                ls[i][c] = urand() < 0.1 ? INFINITY : floor(urand() * 1000) / 8;
                if (sz[i][c] < mn) mn = sz[i][c];
                if (sz[i][c] > mx) mx = sz[i][c];
            }
            lo += mn; hi += mx;
            size[i] = sz[i];
            loss[i] = ls[i];
        }
        uint64_t budget = lo + (uint64_t)(urand() * (double)(hi - lo + mult));
        double want = brute(n, nch, size, loss, budget);
        int choice[8];
        uint64_t unit;
        int exact;
        char *err = NULL;
        int rc = mix_solve(n, nch, size, loss, budget, 0, choice, &unit, &exact, &err);
        if (!isfinite(want)) { CHECK(rc == -1); free(err); err = NULL; continue; }
        CHECK(rc == 0);
        if (rc) continue;
        CHECK(exact);
        CHECK(unit % mult == 0);
        uint64_t s = 0;
        double l = 0;
        for (int i = 0; i < n; i++) { s += sz[i][choice[i]]; l += ls[i][choice[i]]; }
        CHECK_MSG(s <= budget, "trial %d: size %llu > budget %llu", trial, (unsigned long long)s, (unsigned long long)budget);
        CHECK_MSG(l == want, "trial %d: loss %g, brute force %g", trial, l, want);
        double bound = mix_lagrange_bound(n, nch, size, loss, budget);
        CHECK_MSG(bound <= want + 1e-9 * fabs(want), "trial %d: bound %g > optimum %g", trial, bound, want);
        // coarse units (tiny table): still within the budget, never better than the optimum
        rc = mix_solve(n, nch, size, loss, budget, (uint64_t)n * 8, choice, &unit, &exact, &err);
        if (rc == 0) {
            s = 0; l = 0;
            for (int i = 0; i < n; i++) { s += sz[i][choice[i]]; l += ls[i][choice[i]]; }
            CHECK(s <= budget);
            CHECK(l >= want);
        } else {
            free(err);
            err = NULL;
        }
    }
}

TEST(knapsack_refuses_impossible_budget)
{
    uint64_t s0[2] = { 10, 20 }, s1[2] = { 5, 7 };
    double l0[2] = { 1, 0 }, l1[2] = { 1, 0 };
    const uint64_t *size[2] = { s0, s1 };
    const double *loss[2] = { l0, l1 };
    int nch[2] = { 2, 2 }, choice[2], exact;
    uint64_t unit;
    char *err = NULL;
    CHECK(mix_solve(2, nch, size, loss, 14, 0, choice, &unit, &exact, &err) == -1);
    CHECK(err && strstr(err, "below the smallest"));
    free(err);
    err = NULL;
    CHECK(mix_solve(2, nch, size, loss, 17, 0, choice, &unit, &exact, &err) == 0);
    CHECK(choice[0] == 0 && choice[1] == 1);   // 10 + 7 = 17, loss 1
    CHECK(unit == 1);
}

TEST(setting_bits_by_hand)
{
    mix_setting s;
    memset(&s, 0, sizeof s);
    quant_grid_default(&s.grid);
    s.grid.bits = 4;
    s.grid.group = 128;
    CHECK(mix_setting_bits(&s, 256, 768) == 256ull * 768 * 4 + 256ull * 6 * 32);   // f16 scale + f16 zero
    s.grid.sym = 1;
    CHECK(mix_setting_bits(&s, 256, 768) == 256ull * 768 * 4 + 256ull * 6 * 16);   // no zero
    s.grid.sym = 0;
    s.grid.group = -1;
    s.grid.bits = 3;
    CHECK(mix_setting_bits(&s, 10, 100) == 3000 + 10 * 32);
    s.keep_f16 = 1;
    CHECK(mix_setting_bits(&s, 10, 100) == 16000);
    s.keep_f16 = 0;
    s.grid.group = 64;
    CHECK(mix_setting_bits(&s, 10, 100) == 3000 + 10 * 2 * 32);   // a last, partial group still has a scale
    CHECK(mix_setting_fits(&s, 128));
}

TEST(menu_parse)
{
    mix_setting *m;
    int n;
    char *err = NULL, name[32];
    CHECK(mix_menu_parse(MIX_DEFAULT_MENU, &m, &n, &err) == 0);
    CHECK(n == 15);
    mix_setting_name(&m[0], name, sizeof name);
    CHECK(!strcmp(name, "int3g32"));
    free(m);
    CHECK(mix_menu_parse("sym:4:-1;nf4:4:64;f16", &m, &n, &err) == 0);
    CHECK(n == 3 && m[0].grid.sym && m[0].grid.group == -1 && m[1].grid.scheme == QUANT_NF4 && m[2].keep_f16);
    mix_setting_name(&m[0], name, sizeof name);
    CHECK(!strcmp(name, "sym4row"));
    free(m);
    const char *bad[] = { "int:9:32", "int:4", "foo:4:32", "int:4:0", "nf4:3:64", "int:4,:32", "" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err = NULL;
        CHECK_MSG(mix_menu_parse(bad[i], &m, &n, &err) == -1, "'%s' accepted", bad[i]);
        CHECK(err != NULL);
        free(err);
    }
}

TEST(losses_match_independent_rtn)
{
    enum { R = 24, C = 64 };
    float *w = malloc(sizeof(float) * R * C), *h = calloc((size_t)C * C, sizeof(float)), x[C];
    for (int i = 0; i < R * C; i++) w[i] = (float)(urand() - 0.5);
    for (int t = 0; t < 100; t++) {
        for (int j = 0; j < C; j++) x[j] = (float)((urand() - 0.5) * (1 + (j % 7)));
        for (int a = 0; a < C; a++)
            for (int b = 0; b < C; b++) h[a * C + b] += x[a] * x[b];
    }
    mix_setting *m;
    int n;
    char *err = NULL;
    CHECK(mix_menu_parse("int:2,4,8:32,-1;nf4:4:32;f16", &m, &n, &err) == 0);
    double loss[8];
    CHECK(mix_tensor_losses(w, R, C, h, m, n, 0, 2, loss, &err) == 0);
    for (int k = 0; k < n; k++) {
        if (m[k].keep_f16) { CHECK(loss[k] == 0); continue; }
        const int64_t ng = quant_ngroups(&m[k].grid, C);
        uint8_t *codes = malloc((size_t)R * C);
        float *sc = malloc(sizeof(float) * (size_t)(R * ng)), *zr = malloc(sizeof(float) * (size_t)(R * ng)),
              *deq = malloc(sizeof(float) * R * C);
        CHECK(quant_rtn_rows(&m[k].grid, NULL, w, R, C, codes, sc, zr, deq, NULL) == 0);
        CHECK_NEAR(loss[k] / gptq_proxy_loss(w, deq, h, R, C), 1.0, 1e-5);
        free(codes); free(sc); free(zr); free(deq);
    }
    CHECK(loss[0] > loss[2] && loss[2] > loss[4]);   // more bits, less loss
    // GPTQ estimates are lower than RTN's on the same grid
    double lg[8];
    CHECK(mix_tensor_losses(w, R, C, h, m, n, 1, 2, lg, &err) == 0);
    CHECK(lg[0] < loss[0] && lg[2] < loss[2]);
    free(m); free(w); free(h);
}

TEST(outlier_columns)
{
    enum { R = 16, C = 64 };
    float *w = malloc(sizeof(float) * R * C), *h = calloc((size_t)C * C, sizeof(float)), x[C];
    for (int i = 0; i < R * C; i++) w[i] = (float)(urand() - 0.5);
    for (int r = 0; r < R; r++) w[r * C + 40] *= 30;          // a salient weight column
    for (int t = 0; t < 64; t++) {
        for (int j = 0; j < C; j++) x[j] = (float)((urand() - 0.5) * (j == 9 ? 40 : 1));   // an activation outlier
        for (int a = 0; a < C; a++)
            for (int b = 0; b < C; b++) h[a * C + b] += x[a] * x[b];
    }
    int32_t idx[2];
    mix_outlier_columns(w, R, C, h, 2, idx);
    CHECK(idx[0] == 9 && idx[1] == 40);
    mix_setting *m;
    int n;
    char *err = NULL;
    CHECK(mix_menu_parse("int:3:32:0,2", &m, &n, &err) == 0);
    CHECK(n == 2 && m[0].outliers == 0 && m[1].outliers == 2);
    char name[32];
    mix_setting_name(&m[1], name, sizeof name);
    CHECK(!strcmp(name, "int3g32+o2"));
    CHECK(mix_setting_bits(&m[1], R, C) == mix_setting_bits(&m[0], R, C) + R * 2 * 16 + 2 * 32);
    double loss[2];
    CHECK(mix_tensor_losses(w, R, C, h, m, n, 0, 1, loss, &err) == 0);
    CHECK(loss[1] < 0.5 * loss[0]);   // the outlier column no longer stretches its group's scale
    // the kept columns are exact up to f16 rounding, the others are on the grid
    float *q = malloc(sizeof(float) * R * C);
    CHECK(mix_dequantized(&m[1], w, R, C, h, 0, 1, q, &err) == 0);
    for (int r = 0; r < R; r++) {
        CHECK(fabsf(q[r * C + 40] - w[r * C + 40]) <= 1e-3f * fabsf(w[r * C + 40]));
        CHECK(q[r * C + 41] != w[r * C + 41]);
    }
    double lg[2];
    CHECK(mix_tensor_losses(w, R, C, h, m, n, 1, 1, lg, &err) == 0);
    CHECK(isfinite(lg[0]) && isinf(lg[1]));   // GPTQ with outlier columns is not offered
    free(q); free(m); free(w); free(h);
}

int main(void)
{
    RUN(knapsack_matches_brute_force);
    RUN(knapsack_refuses_impossible_budget);
    RUN(setting_bits_by_hand);
    RUN(menu_parse);
    RUN(losses_match_independent_rtn);
    RUN(outlier_columns);
    return tl_summary();
}
