/* dtype — element type table and float conversions (see dtype.h). */
#include "dtype.h"

#include <math.h>
#include <string.h>
#include <strings.h>

const qdtype_traits dtype_traits[DT_COUNT] = {
    [DT_INVALID] = { "INVALID", "invalid", 0, 0 },
    [DT_F32]     = { "F32",  "f32",  4, 1 },
    [DT_F16]     = { "F16",  "f16",  2, 1 },
    [DT_BF16]    = { "BF16", "bf16", 2, 1 },
    [DT_F64]     = { "F64",  "f64",  8, 1 },
    [DT_I8]      = { "I8",   "i8",   1, 0 },
    [DT_U8]      = { "U8",   "u8",   1, 0 },
    [DT_I16]     = { "I16",  "i16",  2, 0 },
    [DT_I32]     = { "I32",  "i32",  4, 0 },
    [DT_I64]     = { "I64",  "i64",  8, 0 },
    [DT_BOOL]    = { "BOOL", "bool", 1, 0 },
    [DT_F8_E4M3] = { "F8_E4M3", "f8_e4m3", 1, 1 },
    [DT_F8_E5M2] = { "F8_E5M2", "f8_e5m2", 1, 1 },
    [DT_U16]     = { "U16",  "u16",  2, 0 },
    [DT_U32]     = { "U32",  "u32",  4, 0 },
    [DT_U64]     = { "U64",  "u64",  8, 0 },
};

qdtype dtype_from_name(const char *name)
{
    for (int t = 1; t < DT_COUNT; t++)
        if (strcasecmp(name, dtype_traits[t].name) == 0)
            return (qdtype)t;
    return DT_INVALID;
}

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)          /* NaN: keep sign, force quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);               /* round half to even */
    return (uint16_t)(u >> 16);
}

float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)                           /* NaN: quiet, keep top payload */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u)                          /* rounds to >= 65520: Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {                         /* below f16 min normal: subnormal */
        /* value = a_float; subnormal unit = 2^-24 */
        if (a < 0x33000000u)                       /* < 2^-25: rounds to zero (2^-25 exactly ties to 0) */
            return (uint16_t)sign;
        uint32_t e = a >> 23;                      /* biased f32 exponent, 102..112 */
        uint32_t m = (a & 0x7fffffu) | 0x800000u;  /* 24-bit significand */
        uint32_t shift = 126 - e;                  /* so that result = m >> shift in 2^-24 units */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u)))
            q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias exponent 127 -> 15, round mantissa 23 -> 10 bits */
    uint32_t r = a - 0x38000000u;                  /* exponent -= 112 */
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f)
        return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* Generic RNE encoder for small floats with ebits/mbits and bias; `finite_only`
 * is the e4m3fn convention (no Inf, S.1111.111 = NaN, max 448). */
static uint8_t f32_to_small(float f, int ebits, int mbits, int bias, int finite_only)
{
    uint8_t sign = signbit(f) ? 0x80 : 0;
    if (isnan(f))
        return (uint8_t)(finite_only ? 0x7f : (0x7c | 0x02));
    float a = fabsf(f);
    int emax = (1 << ebits) - 1;
    /* largest finite value */
    double maxv = finite_only ? ldexp(1.0 + (double)((1 << mbits) - 2) / (1 << mbits), emax - bias)
                              : ldexp(1.0 + (double)((1 << mbits) - 1) / (1 << mbits), emax - 1 - bias);
    if (isinf(a))
        return (uint8_t)(finite_only ? (sign | 0x7e) : (sign | (emax << mbits)));
    /* quantize to the grid: find exponent */
    int e;
    frexp(a, &e);                                  /* a = fr * 2^e, fr in [0.5,1) */
    int ue = e - 1;                                /* a in [2^ue, 2^(ue+1)) */
    int emin = 1 - bias;
    if (ue < emin) ue = emin;                      /* subnormal spacing */
    double step = ldexp(1.0, ue - mbits);
    double q = nearbyint((double)a / step);        /* RNE in default rounding mode */
    double v = q * step;
    if (v > maxv) {
        if (finite_only) return (uint8_t)(sign | 0x7e);       /* saturate, like torch's e4m3fn cast of finite values */
        /* IEEE: values past max+half-ulp go to Inf */
        return (uint8_t)(sign | (emax << mbits));
    }
    if (v == 0) return sign;
    int ve;
    frexp(v, &ve);
    int vue = ve - 1;
    uint32_t bits;
    if (vue < emin) {                              /* subnormal */
        bits = (uint32_t)(v / ldexp(1.0, emin - mbits));
    } else {
        uint32_t mant = (uint32_t)((v / ldexp(1.0, vue) - 1.0) * (1 << mbits) + 0.5);
        bits = ((uint32_t)(vue + bias) << mbits) | mant;
    }
    return (uint8_t)(sign | bits);
}

static float small_to_f32(uint8_t v, int ebits, int mbits, int bias, int finite_only)
{
    int sign = v & 0x80;
    int e = (v >> mbits) & ((1 << ebits) - 1);
    int m = v & ((1 << mbits) - 1);
    float r;
    if (finite_only) {
        if (e == (1 << ebits) - 1 && m == (1 << mbits) - 1) return NAN;
    } else if (e == (1 << ebits) - 1) {
        r = m ? NAN : INFINITY;
        return sign ? -r : r;
    }
    if (e == 0) r = (float)ldexp((double)m, 1 - bias - mbits);
    else r = (float)ldexp(1.0 + (double)m / (1 << mbits), e - bias);
    return sign ? -r : r;
}

uint8_t f32_to_f8_e4m3(float f) { return f32_to_small(f, 4, 3, 7, 1); }
float f8_e4m3_to_f32(uint8_t v) { return small_to_f32(v, 4, 3, 7, 1); }
uint8_t f32_to_f8_e5m2(float f) { return f32_to_small(f, 5, 2, 15, 0); }
float f8_e5m2_to_f32(uint8_t v) { return small_to_f32(v, 5, 2, 15, 0); }

void dtype_to_f32(qdtype t, const void *src, float *dst, size_t n)
{
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) {
        switch (t) {
        case DT_F32: { float v; memcpy(&v, p + 4 * i, 4); dst[i] = v; break; }
        case DT_F16: { uint16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = f16_to_f32(v); break; }
        case DT_BF16: { uint16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = bf16_to_f32(v); break; }
        case DT_F64: { double v; memcpy(&v, p + 8 * i, 8); dst[i] = (float)v; break; }
        case DT_I8: dst[i] = (float)(int8_t)p[i]; break;
        case DT_U8: dst[i] = (float)p[i]; break;
        case DT_BOOL: dst[i] = p[i] ? 1.0f : 0.0f; break;
        case DT_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = (float)v; break; }
        case DT_U16: { uint16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = (float)v; break; }
        case DT_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = (float)v; break; }
        case DT_U32: { uint32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = (float)v; break; }
        case DT_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); dst[i] = (float)v; break; }
        case DT_U64: { uint64_t v; memcpy(&v, p + 8 * i, 8); dst[i] = (float)v; break; }
        case DT_F8_E4M3: dst[i] = f8_e4m3_to_f32(p[i]); break;
        case DT_F8_E5M2: dst[i] = f8_e5m2_to_f32(p[i]); break;
        default: dst[i] = NAN; break;
        }
    }
}

int dtype_from_f32(qdtype t, const float *src, void *dst, size_t n)
{
    uint8_t *p = dst;
    switch (t) {
    case DT_F32: memmove(dst, src, n * 4); return 0;
    case DT_F16: for (size_t i = 0; i < n; i++) { uint16_t v = f32_to_f16(src[i]); memcpy(p + 2 * i, &v, 2); } return 0;
    case DT_BF16: for (size_t i = 0; i < n; i++) { uint16_t v = f32_to_bf16(src[i]); memcpy(p + 2 * i, &v, 2); } return 0;
    case DT_F64: for (size_t i = n; i-- > 0;) { double v = src[i]; memcpy(p + 8 * i, &v, 8); } return 0;
    case DT_F8_E4M3: for (size_t i = 0; i < n; i++) p[i] = f32_to_f8_e4m3(src[i]); return 0;
    case DT_F8_E5M2: for (size_t i = 0; i < n; i++) p[i] = f32_to_f8_e5m2(src[i]); return 0;
    default: return -1;
    }
}
