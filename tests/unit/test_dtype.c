/* test_dtype — float conversions against independent implementations:
 * the compiler's own _Float16 (IEEE RNE) and hand-computed bf16 edge cases. */
#include "testlib.h"
#include "dtype.h"

#include <stdint.h>
#include <string.h>

static float bits_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

#if defined(__FLT16_MAX__)
static uint16_t f16_hw(float f) { _Float16 h = (_Float16)f; uint16_t u; memcpy(&u, &h, 2); return u; }
#endif

TEST(f32_to_f16_matches_the_compilers_ieee_rounding_on_a_sweep_of_bit_patterns)
{
#if defined(__FLT16_MAX__)
    int bad = 0;
    for (uint64_t u = 0; u < 0x100000000ull; u += 0x1001) {   /* ~1M patterns over the whole range */
        float f = bits_f((uint32_t)u);
        uint16_t a = f32_to_f16(f), b = f16_hw(f);
        if (f != f) { bad += (a & 0x7c00) != 0x7c00 || !(a & 0x3ff) || (a & 0x8000) != (b & 0x8000); continue; }
        if (a != b && bad++ < 5) fprintf(stderr, "  %08llx: %04x vs %04x\n", (unsigned long long)u, a, b);
    }
    CHECK(bad == 0);
#else
    printf("# skipped: this compiler has no _Float16 to compare with (the gcc build runs it)\n");
#endif
}

TEST(f32_to_f16_rounds_halfway_cases_to_even_and_keeps_specials)
{
    CHECK(f32_to_f16(0.0f) == 0x0000);
    CHECK(f32_to_f16(-0.0f) == 0x8000);
    CHECK(f32_to_f16(INFINITY) == 0x7c00);
    CHECK(f32_to_f16(-INFINITY) == 0xfc00);
    CHECK((f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (f32_to_f16(NAN) & 0x3ff));
    CHECK(f32_to_f16(65504.0f) == 0x7bff);
    CHECK(f32_to_f16(65519.99f) == 0x7bff);
    CHECK(f32_to_f16(65520.0f) == 0x7c00);            /* halfway to 65536: rounds to even = Inf */
    CHECK(f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);     /* halfway, even below */
    CHECK(f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02); /* halfway, even above */
    CHECK(f32_to_f16(0x1p-24f) == 0x0001);            /* smallest subnormal */
    CHECK(f32_to_f16(0x1p-25f) == 0x0000);            /* half of it: ties to even (0) */
    CHECK(f32_to_f16(0x1.8p-24f) == 0x0002);          /* 1.5 ulp: ties to even (2) */
    CHECK(f32_to_f16(0x1p-14f) == 0x0400);            /* smallest normal */
}

TEST(f16_to_f32_is_exact_for_every_half_value)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        if (f != f) { bad += (h & 0x7c00) != 0x7c00 || !(h & 0x3ff); continue; }
        bad += f32_to_f16(f) != h;                    /* round trip is the identity */
#if defined(__FLT16_MAX__)
        _Float16 x; uint16_t hh = (uint16_t)h; memcpy(&x, &hh, 2);
        bad += (float)x != f;
#endif
    }
    CHECK(bad == 0);
}

TEST(f32_to_bf16_rounds_to_nearest_even_and_keeps_specials)
{
    CHECK(f32_to_bf16(1.0f) == 0x3f80);
    CHECK(f32_to_bf16(bits_f(0x3f808000)) == 0x3f80); /* halfway, even below */
    CHECK(f32_to_bf16(bits_f(0x3f818000)) == 0x3f82); /* halfway, even above */
    CHECK(f32_to_bf16(bits_f(0x3f808001)) == 0x3f81); /* just past halfway */
    CHECK(f32_to_bf16(-0.0f) == 0x8000);
    CHECK(f32_to_bf16(INFINITY) == 0x7f80 && f32_to_bf16(-INFINITY) == 0xff80);
    CHECK(f32_to_bf16(bits_f(0x7f7fffff)) == 0x7f80); /* max float rounds to Inf */
    uint16_t n = f32_to_bf16(bits_f(0x7f800001));     /* NaN with payload only in low bits stays NaN */
    CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f));
    CHECK(f32_to_bf16(bits_f(0x00000001)) == 0x0000); /* tiny subnormal rounds to 0 */
    CHECK(f32_to_bf16(bits_f(0x00008000)) == 0x0000); /* halfway, even */
    CHECK(f32_to_bf16(bits_f(0x00018000)) == 0x0002);
    CHECK(f_bits(bf16_to_f32(0x3f80)) == 0x3f800000);
}

TEST(f8_conversions_round_trip_every_code)
{
    int bad = 0;
    for (int v = 0; v < 256; v++) {
        float a = f8_e4m3_to_f32((uint8_t)v), b = f8_e5m2_to_f32((uint8_t)v);
        if (a == a) bad += f32_to_f8_e4m3(a) != v && !(a == 0 && (v & 0x7f) == 0 && f32_to_f8_e4m3(a) == v);
        if (b == b) bad += f32_to_f8_e5m2(b) != v;
    }
    CHECK(bad == 0);
    CHECK(f8_e4m3_to_f32(0x7e) == 448.0f);
    CHECK(f32_to_f8_e4m3(1000.0f) == 0x7e);           /* saturates (e4m3fn has no Inf) */
    CHECK(f8_e5m2_to_f32(0x7b) == 57344.0f);
    CHECK(f32_to_f8_e5m2(INFINITY) == 0x7c);
    CHECK(f8_e4m3_to_f32(0x01) == 0x1p-9f);           /* smallest subnormal */
}

TEST(dtype_names_resolve_in_both_spellings)
{
    CHECK(dtype_from_name("BF16") == DT_BF16);
    CHECK(dtype_from_name("bf16") == DT_BF16);
    CHECK(dtype_from_name("F8_E4M3") == DT_F8_E4M3);
    CHECK(dtype_from_name("nope") == DT_INVALID);
    CHECK(dtype_size(DT_I64) == 8 && dtype_size(DT_BOOL) == 1);
}

int main(void)
{
    RUN(f32_to_f16_matches_the_compilers_ieee_rounding_on_a_sweep_of_bit_patterns);
    RUN(f32_to_f16_rounds_halfway_cases_to_even_and_keeps_specials);
    RUN(f16_to_f32_is_exact_for_every_half_value);
    RUN(f32_to_bf16_rounds_to_nearest_even_and_keeps_specials);
    RUN(f8_conversions_round_trip_every_code);
    RUN(dtype_names_resolve_in_both_spellings);
    return tl_summary();
}
