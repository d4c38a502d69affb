/* hfquant — packed HF quantized checkpoints (GPTQ, AWQ GEMM,
 * compressed-tensors pack-quantized): layouts, bit packing, configs, and a
 * source wrapper that unpacks them into the qstream form. See hfquant.h for
 * the layouts and the sources they were read from.
 *
 * Primary sources: AutoGPTQ auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py
 * (pack / forward unpack, 3-bit word straddling); AutoAWQ
 * awq/modules/linear/gemm.py (WQLinear_GEMM.from_linear, order_map);
 * compressed-tensors compressors/quantized_compressors/pack_quantized.py
 * (pack_to_int32 / unpack_from_int32) and specs/compressed_tensors.md.
 *
 * Implementation note: int32 words are read and written through memcpy
 * (ld32/st32), so neither the caller's output buffers nor the parts inside a
 * tensor's bytes (codes are u8, so scales may start at an odd offset) need to
 * be aligned. Hosts are little-endian, like every other qpipe file format.
 */
#include "hfquant.h"
#include "quant.h"

#include <math.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "hfquant.c assumes a little-endian host"
#endif

#define SETERR(...) do { if (errp) *errp = qsrc_errf(__VA_ARGS__); } while (0)

/* AutoAWQ order_map = [0,2,4,6,1,3,5,7]: nibble i of a word holds output
 * column 8j + order_map[i]. awq_slot is its inverse: column k lives in nibble
 * awq_slot[k % 8]. */
static const int awq_slot[8] = {0, 4, 1, 5, 2, 6, 3, 7};

/*-*** Small helpers ***/

static inline uint32_t ld32(const void *base, int64_t i)
{
    uint32_t v;
    memcpy(&v, (const uint8_t *)base + 4 * i, 4);
    return v;
}
static inline void st32(void *base, int64_t i, uint32_t v) { memcpy((uint8_t *)base + 4 * i, &v, 4); }
static inline void or32(void *base, int64_t i, uint32_t v) { st32(base, i, ld32(base, i) | v); }
static inline float ldf(const void *base, int64_t i)
{
    float v;
    memcpy(&v, (const uint8_t *)base + 4 * i, 4);
    return v;
}

/* Continuous little-endian bit stream along a column of 32-bit words spaced
 * `stride` words apart: value k occupies bits [k*bits, k*bits+bits) of the
 * stream (AutoGPTQ's layout for 2/4/8 bits, and for 3 bits where values 10
 * and 21 of every 32 straddle two words). */
static void bits_put(void *w, int64_t stride, int64_t k, int bits, uint32_t v)
{
    int64_t pos = k * bits, i = pos >> 5;
    int sh = (int)(pos & 31);
    or32(w, i * stride, v << sh);
    if (sh + bits > 32) or32(w, (i + 1) * stride, v >> (32 - sh));
}

static uint32_t bits_get(const void *w, int64_t stride, int64_t k, int bits)
{
    int64_t pos = k * bits, i = pos >> 5;
    int sh = (int)(pos & 31);
    uint64_t x = ld32(w, i * stride) >> sh;
    if (sh + bits > 32) x |= (uint64_t)ld32(w, (i + 1) * stride) << (32 - sh);
    return (uint32_t)(x & ((1u << bits) - 1));
}

static const char *kind_name(hfq_kind k)
{
    switch (k) {
    case HFQ_GPTQ: return "gptq";
    case HFQ_GPTQ_V2: return "gptq_v2";
    case HFQ_AWQ: return "awq";
    case HFQ_CT: return "compressed-tensors";
    }
    return "?";
}

int hfq_opts_init(hfq_opts *o, const char *format, char **errp)
{
    memset(o, 0, sizeof *o);
    o->scale_dtype = DT_F16;
    if (!format) format = "";
    if (strcmp(format, "gptq") == 0) o->kind = HFQ_GPTQ;
    else if (strcmp(format, "gptq_v2") == 0) o->kind = HFQ_GPTQ_V2;
    else if (strcmp(format, "awq") == 0) o->kind = HFQ_AWQ;
    else if (strcmp(format, "compressed-tensors") == 0) o->kind = HFQ_CT;
    else {
        SETERR("unknown packed format '%s' (gptq, gptq_v2, awq, compressed-tensors)", format);
        return -1;
    }
    return 0;
}

int hfq_is_quantized(const qs_tensor *t)
{
    json_t *q = t->attrs ? json_object_get(t->attrs, "quant") : NULL;
    const char *s = q ? json_string_value(json_object_get(q, "scheme")) : NULL;
    return s && strcmp(s, "int") == 0;
}

static int is_gptq(hfq_kind k) { return k == HFQ_GPTQ || k == HFQ_GPTQ_V2; }

/*-*** Geometry of a travelling quantized tensor ***/

typedef struct {
    quant_grid g;
    int64_t rows, cols, ng;
    int ic, is, iz, ig;              /* part indices (ig -1: no g_idx) */
    uint64_t off[QS_MAX_PARTS];      /* byte offset of each part in the data */
    size_t plen;                     /* name length without ".weight" */
} geom;

static int geom_init(const qs_tensor *t, geom *m, char **errp)
{
    memset(m, 0, sizeof *m);
    const char *name = t->name ? t->name : "?";
    if (!hfq_is_quantized(t)) {
        SETERR("%s: not a quantized tensor (attrs.quant scheme \"int\")", name);
        return -1;
    }
    const char *e = quant_check_tensor(t);
    if (e) {
        SETERR("%s: %s", name, e);
        return -1;
    }
    char *qe = NULL;
    if (quant_grid_from_json(json_object_get(t->attrs, "quant"), &m->g, &qe)) {
        SETERR("%s: %s", name, qe ? qe : "bad quant attrs");
        free(qe);
        return -1;
    }
    size_t len = strlen(name);
    if (t->ndim != 2 || len <= 7 || strcmp(name + len - 7, ".weight") != 0) {
        SETERR("%s: packed formats take 2-D tensors named '<module>.weight'", name);
        return -1;
    }
    m->plen = len - 7;
    m->rows = t->shape[0];
    m->cols = t->shape[1];
    m->ng = quant_ngroups(&m->g, m->cols);
    m->ic = qs_tensor_part(t, "codes");
    m->is = qs_tensor_part(t, "scales");
    m->iz = qs_tensor_part(t, "zeros");
    m->ig = qs_tensor_part(t, "g_idx");
    uint64_t o = 0;
    for (int i = 0; i < t->nparts; i++) {
        m->off[i] = o;
        o += t->parts[i].nbytes;
    }
    return 0;
}

static int geom_check_format(const hfq_opts *o, const qs_tensor *t, const geom *m, char **errp)
{
    const char *fmt = kind_name(o->kind), *name = t->name;
    const int b = m->g.bits;
    if (is_gptq(o->kind)) {
        if (b != 2 && b != 3 && b != 4 && b != 8) {
            SETERR("%s: %s: bits %d (the format has 2, 3, 4 or 8)", name, fmt, b);
            return -1;
        }
        int64_t unit = b == 3 ? 32 : 32 / b;
        if (m->cols % unit || m->rows % unit) {
            SETERR("%s: %s: %d-bit packing needs d_in and d_out multiples of %lld, have [%lld, %lld]",
                   name, fmt, b, (long long)unit, (long long)m->rows, (long long)m->cols);
            return -1;
        }
    } else if (o->kind == HFQ_AWQ) {
        if (b != 4) {
            SETERR("%s: awq: bits %d (AutoAWQ GEMM is 4-bit only)", name, b);
            return -1;
        }
        if (m->g.group <= 0 || m->cols % m->g.group || m->rows % 8) {
            SETERR("%s: awq: needs a positive group dividing d_in and d_out %% 8 == 0 "
                   "(group %d, shape [%lld, %lld])", name, m->g.group, (long long)m->rows, (long long)m->cols);
            return -1;
        }
        if (m->ig >= 0) {
            SETERR("%s: awq: act-order g_idx cannot be stored in AWQ", name);
            return -1;
        }
    } else {
        if (b < 2 || b > 8) {
            SETERR("%s: %s: bits %d out of 2..8", name, fmt, b);
            return -1;
        }
    }
    qdtype sd = o->scale_dtype;
    if (sd != DT_F16 && !(o->kind == HFQ_CT && (sd == DT_BF16 || sd == DT_F32))) {
        SETERR("%s: %s: scales cannot be %s", name, fmt, dtype_name(sd));
        return -1;
    }
    return 0;
}

/*-*** Layout ***/

static int layout_add(qs_tensor *v, int *n, const char *name, size_t plen, const char *suffix,
                      qdtype dt, int ndim, int64_t d0, int64_t d1)
{
    char buf[1024];
    if (plen + strlen(suffix) + 1 > sizeof buf) return -1;
    memcpy(buf, name, plen);
    strcpy(buf + plen, suffix);
    int64_t shape[2] = {d0, d1};
    if (qs_tensor_init(&v[*n], buf, dt, ndim, shape) < 0) return -1;
    (*n)++;
    return 0;
}

void hfq_layout_free(qs_tensor *v, int n)
{
    if (!v) return;
    for (int i = 0; i < n; i++) qs_tensor_clear(&v[i]);
    free(v);
}

int hfq_layout_opts(const hfq_opts *o, const qs_tensor *t, qs_tensor **out, int *n, char **errp)
{
    geom m;
    *out = NULL;
    *n = 0;
    if (geom_init(t, &m, errp) || geom_check_format(o, t, &m, errp)) return -1;
    qs_tensor *v = calloc(6, sizeof *v);
    if (!v) { SETERR("%s: out of memory", t->name); return -1; }
    const int b = m.g.bits;
    const char *nm = t->name;
    int k = 0, rc = 0;
    if (is_gptq(o->kind)) {
        rc |= layout_add(v, &k, nm, m.plen, ".qweight", DT_I32, 2, m.cols * b / 32, m.rows);
        rc |= layout_add(v, &k, nm, m.plen, ".qzeros", DT_I32, 2, m.ng, m.rows * b / 32);
        rc |= layout_add(v, &k, nm, m.plen, ".scales", DT_F16, 2, m.ng, m.rows);
        rc |= layout_add(v, &k, nm, m.plen, ".g_idx", DT_I32, 1, m.cols, 0);
    } else if (o->kind == HFQ_AWQ) {
        rc |= layout_add(v, &k, nm, m.plen, ".qweight", DT_I32, 2, m.cols, m.rows / 8);
        rc |= layout_add(v, &k, nm, m.plen, ".qzeros", DT_I32, 2, m.ng, m.rows / 8);
        rc |= layout_add(v, &k, nm, m.plen, ".scales", DT_F16, 2, m.ng, m.rows);
    } else {
        const int64_t pf = 32 / b;
        rc |= layout_add(v, &k, nm, m.plen, ".weight_packed", DT_I32, 2, m.rows, (m.cols + pf - 1) / pf);
        rc |= layout_add(v, &k, nm, m.plen, ".weight_scale", o->scale_dtype, 2, m.rows, m.ng);
        if (!m.g.sym)
            rc |= layout_add(v, &k, nm, m.plen, ".weight_zero_point", DT_I32, 2, (m.rows + pf - 1) / pf, m.ng);
        rc |= layout_add(v, &k, nm, m.plen, ".weight_shape", DT_I64, 1, 2, 0);
        if (m.ig >= 0) rc |= layout_add(v, &k, nm, m.plen, ".weight_g_idx", DT_I32, 1, m.cols, 0);
    }
    if (rc) {
        hfq_layout_free(v, k);
        SETERR("%s: out of memory or name too long", nm);
        return -1;
    }
    *out = v;
    *n = k;
    return 0;
}

int hfq_layout(const char *format, const qs_tensor *t, qs_tensor **out, int *n, char **errp)
{
    hfq_opts o;
    *out = NULL;
    *n = 0;
    if (hfq_opts_init(&o, format, errp)) return -1;
    return hfq_layout_opts(&o, t, out, n, errp);
}

/*-*** Packing ***/

/* Integer zero point in [lo, hi], or -1. */
static int zero_int(float z, int lo, int hi)
{
    if (!(z >= (float)lo && z <= (float)hi) || z != floorf(z)) return -1;
    return (int)z;
}

/* Store scale s as element i of dst in dtype dt; -1 if not exact (unless round). */
static int scale_store(qdtype dt, int round, float s, void *dst, int64_t i)
{
    if (!isfinite(s)) return -1;
    if (dt == DT_F32) {
        memcpy((uint8_t *)dst + 4 * i, &s, 4);
        return 0;
    }
    uint16_t h = dt == DT_F16 ? f32_to_f16(s) : f32_to_bf16(s);
    float back = dt == DT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
    if (!isfinite(back) || (!round && back != s)) return -1;
    memcpy((uint8_t *)dst + 2 * i, &h, 2);
    return 0;
}

typedef struct {
    const hfq_opts *o;
    const qs_tensor *t;
    const geom *m;
    const uint8_t *codes;            /* [rows, cols] */
    const uint8_t *scales, *zeros;   /* f32 [rows, ng], possibly unaligned */
    const uint8_t *g_idx;            /* i32 [cols] or NULL */
} pack_in;

static int check_codes(const pack_in *p, char **errp)
{
    const int maxq = (1 << p->m->g.bits) - 1;
    const int64_t n = p->m->rows * p->m->cols;
    for (int64_t i = 0; i < n; i++)
        if (p->codes[i] > maxq) {
            SETERR("%s: code %d at [%lld, %lld] exceeds %d bits", p->t->name, p->codes[i],
                   (long long)(i / p->m->cols), (long long)(i % p->m->cols), p->m->g.bits);
            return -1;
        }
    if (p->g_idx)
        for (int64_t c = 0; c < p->m->cols; c++) {
            int32_t g = (int32_t)ld32(p->g_idx, c);
            if (g < 0 || g >= p->m->ng) {
                SETERR("%s: g_idx[%lld] = %d out of [0, %lld)", p->t->name, (long long)c, g, (long long)p->m->ng);
                return -1;
            }
        }
    return 0;
}

/* The stored integer of zero point (r, g): value - offset, range-checked
 * (sym: must be 2^(bits-1)). -1 on error. */
static int zero_stored(const pack_in *p, int64_t r, int64_t g, int offset, char **errp)
{
    const int b = p->m->g.bits, maxq = (1 << b) - 1;
    float z = ldf(p->zeros, r * p->m->ng + g);
    int zi = zero_int(z, offset, maxq + offset);
    if (zi >= 0 && p->m->g.sym && zi != 1 << (b - 1)) zi = -1;
    if (zi < 0) {
        SETERR("%s: %s: zero point %g at [%lld, %lld] not storable (%s%s)", p->t->name,
               kind_name(p->o->kind), (double)z, (long long)r, (long long)g,
               p->m->g.sym ? "sym needs 2^(bits-1)" : "needs an integer in range",
               offset ? "; v1 cannot store 0, use gptq_v2" : "");
        return -1;
    }
    return zi - offset;
}

/* scales [rows, ng] -> dst, transposed ([ng, rows]) or not. */
static int pack_scales(const pack_in *p, void *dst, int transpose, char **errp)
{
    const int64_t rows = p->m->rows, ng = p->m->ng;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            float s = ldf(p->scales, r * ng + g);
            if (scale_store(p->o->scale_dtype, p->o->round_scales, s, dst, transpose ? g * rows + r : r * ng + g)) {
                SETERR("%s: scale %.9g at [%lld, %lld] is not exactly representable in %s "
                       "(round scales to f16 before quantizing, or pack with round_scales)",
                       p->t->name, (double)s, (long long)r, (long long)g, dtype_name(p->o->scale_dtype));
                return -1;
            }
        }
    return 0;
}

static void pack_g_idx(const pack_in *p, void *dst)
{
    for (int64_t c = 0; c < p->m->cols; c++) {
        uint32_t g = p->g_idx ? ld32(p->g_idx, c)
                              : (uint32_t)(p->m->g.group <= 0 ? 0 : c / p->m->g.group);
        st32(dst, c, g);
    }
}

static int pack_gptq(const pack_in *p, void *const outs[], char **errp)
{
    const geom *m = p->m;
    const int b = m->g.bits, offset = p->o->kind == HFQ_GPTQ ? 1 : 0;
    const int64_t rows = m->rows, cols = m->cols, nzc = rows * b / 32;
    memset(outs[0], 0, (size_t)(cols * b / 32 * rows) * 4);
    for (int64_t r = 0; r < rows; r++)          /* qweight [cols*b/32, rows]: column r */
        for (int64_t c = 0; c < cols; c++)
            bits_put((uint8_t *)outs[0] + 4 * r, rows, c, b, p->codes[r * cols + c]);
    memset(outs[1], 0, (size_t)(m->ng * nzc) * 4);
    for (int64_t g = 0; g < m->ng; g++)         /* qzeros [ng, rows*b/32]: row g */
        for (int64_t r = 0; r < rows; r++) {
            int z = zero_stored(p, r, g, offset, errp);
            if (z < 0) return -1;
            bits_put((uint8_t *)outs[1] + 4 * g * nzc, 1, r, b, (uint32_t)z);
        }
    if (pack_scales(p, outs[2], 1, errp)) return -1;
    pack_g_idx(p, outs[3]);
    return 0;
}

static int pack_awq(const pack_in *p, void *const outs[], char **errp)
{
    const geom *m = p->m;
    const int64_t rows = m->rows, cols = m->cols, nw = rows / 8;
    memset(outs[0], 0, (size_t)(cols * nw) * 4);
    for (int64_t r = 0; r < rows; r++)          /* qweight [cols, rows/8] */
        for (int64_t c = 0; c < cols; c++)
            or32(outs[0], c * nw + r / 8, (uint32_t)p->codes[r * cols + c] << (4 * awq_slot[r % 8]));
    memset(outs[1], 0, (size_t)(m->ng * nw) * 4);
    for (int64_t g = 0; g < m->ng; g++)
        for (int64_t r = 0; r < rows; r++) {
            int z = zero_stored(p, r, g, 0, errp);
            if (z < 0) return -1;
            or32(outs[1], g * nw + r / 8, (uint32_t)z << (4 * awq_slot[r % 8]));
        }
    return pack_scales(p, outs[2], 1, errp);
}

static int pack_ct(const pack_in *p, void *const outs[], char **errp)
{
    const geom *m = p->m;
    const int b = m->g.bits, pf = 32 / b;
    const int64_t rows = m->rows, cols = m->cols, wc = (cols + pf - 1) / pf;
    int k = 0;
    memset(outs[k], 0, (size_t)(rows * wc) * 4);   /* weight_packed [rows, ceil(cols/pf)] */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            or32(outs[k], r * wc + c / pf, (uint32_t)p->codes[r * cols + c] << (b * (int)(c % pf)));
    k++;
    if (pack_scales(p, outs[k++], 0, errp)) return -1;
    if (m->g.sym) {                                /* no zero points: all must be 2^(b-1) */
        for (int64_t r = 0; r < rows; r++)
            for (int64_t g = 0; g < m->ng; g++)
                if (zero_stored(p, r, g, 0, errp) < 0) return -1;
    } else {                                       /* weight_zero_point [ceil(rows/pf), ng] */
        memset(outs[k], 0, (size_t)((rows + pf - 1) / pf * m->ng) * 4);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t g = 0; g < m->ng; g++) {
                int z = zero_stored(p, r, g, 0, errp);
                if (z < 0) return -1;
                or32(outs[k], (r / pf) * m->ng + g, (uint32_t)z << (b * (int)(r % pf)));
            }
        k++;
    }
    int64_t shape[2] = {rows, cols};
    memcpy(outs[k++], shape, sizeof shape);
    if (p->g_idx) pack_g_idx(p, outs[k]);
    return 0;
}

int hfq_pack_opts(const hfq_opts *o, const qs_tensor *t, const void *data, void *const outs[], char **errp)
{
    geom m;
    if (geom_init(t, &m, errp) || geom_check_format(o, t, &m, errp)) return -1;
    const uint8_t *d = data;
    pack_in p = {o, t, &m, d + m.off[m.ic], d + m.off[m.is], d + m.off[m.iz],
                 m.ig >= 0 ? d + m.off[m.ig] : NULL};
    if (check_codes(&p, errp)) return -1;
    if (is_gptq(o->kind)) return pack_gptq(&p, outs, errp);
    if (o->kind == HFQ_AWQ) return pack_awq(&p, outs, errp);
    return pack_ct(&p, outs, errp);
}

int hfq_pack(const char *format, const qs_tensor *t, const void *data, void *const outs[], char **errp)
{
    hfq_opts o;
    if (hfq_opts_init(&o, format, errp)) return -1;
    return hfq_pack_opts(&o, t, data, outs, errp);
}

/*-*** Manifest entries ***/

int hfq_tensor_from_manifest(const json_t *e, qs_tensor *t, char **errp)
{
    memset(t, 0, sizeof *t);
    const char *name = json_string_value(json_object_get(e, "name"));
    const char *dts = json_string_value(json_object_get(e, "dtype"));
    json_t *sh = json_object_get(e, "shape");
    qdtype dt = dts ? dtype_from_name(dts) : DT_INVALID;
    if (!name || dt == DT_INVALID || !json_is_array(sh) || json_array_size(sh) > QS_MAX_DIMS) {
        SETERR("manifest: entry without a valid name, dtype or shape");
        return -1;
    }
    int64_t shape[QS_MAX_DIMS];
    int nd = (int)json_array_size(sh);
    for (int i = 0; i < nd; i++) shape[i] = json_integer_value(json_array_get(sh, (size_t)i));
    if (qs_tensor_init(t, name, dt, nd, shape) < 0) {
        SETERR("manifest: %s: bad shape", name);
        return -1;
    }
    json_t *q = json_object_get(e, "quant");
    if (!q) return 0;
    quant_grid g;
    char *qe = NULL;
    if (quant_grid_from_json(q, &g, &qe)) {
        SETERR("manifest: %s: %s", name, qe ? qe : "bad quant");
        free(qe);
        qs_tensor_clear(t);
        return -1;
    }
    t->attrs = json_pack("{s:O}", "quant", q);
    if (g.scheme != QUANT_INT || nd != 2) return 0;   /* the caller's business */
    const int64_t rows = shape[0], cols = shape[1], ng = quant_ngroups(&g, cols);
    t->nparts = 0;
    int64_t sc[2] = {rows, ng}, cs[2] = {rows, cols};
    qs_tensor_add_part(t, "codes", DT_U8, 2, cs);
    qs_tensor_add_part(t, "scales", DT_F32, 2, sc);
    qs_tensor_add_part(t, "zeros", DT_F32, 2, sc);
    uint64_t base = qs_tensor_nbytes(t);
    json_int_t nb = json_integer_value(json_object_get(e, "nbytes"));
    if (json_object_get(e, "nbytes") && (uint64_t)nb == base + 4 * (uint64_t)cols)
        qs_tensor_add_part(t, "g_idx", DT_I32, 1, &cols);
    else if (json_object_get(e, "nbytes") && (uint64_t)nb != base) {
        SETERR("manifest: %s: nbytes %lld fits neither codes+scales+zeros nor +g_idx", name, (long long)nb);
        qs_tensor_clear(t);
        return -1;
    }
    return 0;
}

/*-*** quantization_config ***/

/* What a config needs to know about one quantized tensor. */
typedef struct {
    int bits, group, sym, act_order, has_gidx;
} qkey;

static int qkey_eq(const qkey *a, const qkey *b)
{
    return a->bits == b->bits && a->group == b->group && a->sym == b->sym
           && a->act_order == b->act_order && a->has_gidx == b->has_gidx;
}

static int qkey_from_attrs(const json_t *qa, int has_gidx, qkey *k, char **errp)
{
    quant_grid g;
    char *qe = NULL;
    if (quant_grid_from_json(qa, &g, &qe)) {
        SETERR("quant attrs: %s", qe ? qe : "bad");
        free(qe);
        return -1;
    }
    if (g.scheme != QUANT_INT) {
        SETERR("quant attrs: scheme is not \"int\"");
        return -1;
    }
    k->bits = g.bits;
    k->group = g.group;
    k->sym = g.sym;
    k->act_order = g.act_order;
    k->has_gidx = has_gidx;
    return 0;
}

static json_t *config_gptq(hfq_kind kind, const qkey *k, char **errp)
{
    if (k->bits != 2 && k->bits != 3 && k->bits != 4 && k->bits != 8) {
        SETERR("gptq: bits %d (the format has 2, 3, 4 or 8)", k->bits);
        return NULL;
    }
    /* GPTQModel's config keys (quantize_config.json); transformers and vLLM
     * read bits, group_size, desc_act, sym, lm_head, dynamic, checkpoint_format. */
    return json_pack("{s:i, s:i, s:b, s:b, s:b, s:b, s:b, s:f, s:s, s:s, s:s, s:{s:[s]}}",
                     "bits", k->bits, "group_size", k->group, "desc_act", k->act_order,
                     "sym", k->sym, "static_groups", k->act_order && !k->has_gidx,
                     "true_sequential", 1, "lm_head", 0, "damp_percent", 0.01,
                     "quant_method", "gptq", "checkpoint_format", kind == HFQ_GPTQ ? "gptq" : "gptq_v2",
                     "pack_dtype", "int32", "meta", "quantizer", "qpipe");
}

static json_t *config_awq(const qkey *k, char **errp)
{
    if (k->bits != 4 || k->group <= 0 || k->has_gidx) {
        SETERR("awq: needs 4 bits, a positive group and no act-order g_idx (have %d bits, group %d%s)",
               k->bits, k->group, k->has_gidx ? ", g_idx" : "");
        return NULL;
    }
    /* AutoAWQ AwqConfig.to_transformers_dict() */
    return json_pack("{s:s, s:i, s:i, s:b, s:s, s:n}", "quant_method", "awq", "bits", 4,
                     "group_size", k->group, "zero_point", 1, "version", "gemm",
                     "modules_to_not_convert");
}

/* compressed-tensors QuantizationArgs for the weights (specs/compressed_tensors.md §1). */
static json_t *ct_weight_args(const qkey *k, char **errp)
{
    if (k->bits < 2 || k->bits > 8) {
        SETERR("compressed-tensors: bits %d out of 2..8", k->bits);
        return NULL;
    }
    json_t *actorder = k->has_gidx ? json_string("group")
                       : k->act_order && k->group > 0 ? json_string("weight") : json_null();
    return json_pack("{s:o, s:n, s:b, s:o, s:i, s:s, s:{}, s:s, s:b, s:s}",
                     "actorder", actorder, "block_structure", "dynamic", 0,
                     "group_size", k->group > 0 ? json_integer(k->group) : json_null(),
                     "num_bits", k->bits, "observer", "minmax", "observer_kwargs",
                     "strategy", k->group > 0 ? "group" : "channel", "symmetric", k->sym, "type", "int");
}

static json_t *ct_group(json_t *weights, json_t *targets)
{
    return json_pack("{s:s, s:n, s:n, s:o, s:o}", "format", "pack-quantized", "input_activations",
                     "output_activations", "targets", targets, "weights", weights);
}

static json_t *ct_config(json_t *groups, json_t *ignore)
{
    return json_pack("{s:o, s:s, s:n, s:o, s:n, s:s, s:s, s:{}}", "config_groups", groups,
                     "format", "pack-quantized", "global_compression_ratio", "ignore", ignore,
                     "kv_cache_scheme", "quant_method", "compressed-tensors",
                     "quantization_status", "compressed", "sparsity_config");
}

json_t *hfq_quant_config(const char *format, const json_t *quant_attrs, char **errp)
{
    hfq_opts o;
    qkey k;
    if (hfq_opts_init(&o, format, errp) || qkey_from_attrs(quant_attrs, 0, &k, errp)) return NULL;
    k.has_gidx = o.kind != HFQ_AWQ && k.act_order;   /* qgptq: act order with dynamic groups has g_idx */
    if (is_gptq(o.kind)) return config_gptq(o.kind, &k, errp);
    if (o.kind == HFQ_AWQ) return config_awq(&k, errp);
    json_t *w = ct_weight_args(&k, errp);
    if (!w) return NULL;
    return ct_config(json_pack("{s:o}", "group_0", ct_group(w, json_pack("[s]", "Linear"))),
                     json_pack("[s]", "lm_head"));
}

const char *hfq_extra_config_name(const char *format)
{
    return format && (strcmp(format, "gptq") == 0 || strcmp(format, "gptq_v2") == 0)
           ? "quantize_config.json" : NULL;
}

/* "^" + name with regex metacharacters escaped + "$" (malloc'd). */
static char *regex_exact(const char *s, size_t len)
{
    char *r = malloc(2 * len + 3), *p = r;
    if (!r) return NULL;
    *p++ = '^';
    for (size_t i = 0; i < len; i++) {
        if (strchr(".^$|()[]{}*+?\\", s[i])) *p++ = '\\';
        *p++ = s[i];
    }
    *p++ = '$';
    *p = 0;
    return r;
}

static json_t *module_name(const char *weight_name)
{
    size_t len = strlen(weight_name);
    return json_stringn(weight_name, len - 7);   /* caller checked the ".weight" suffix */
}

static int is_weight_name(const char *n)
{
    size_t len = strlen(n);
    return len > 7 && strcmp(n + len - 7, ".weight") == 0;
}

static int is_lm_head(const char *n) { return strncmp(n, "lm_head.", 8) == 0; }

json_t *hfq_quant_config_manifest(const char *format, const json_t *manifest, char **errp)
{
    hfq_opts o;
    if (hfq_opts_init(&o, format, errp)) return NULL;
    size_t n = json_array_size(manifest), nk = 0, i;
    qkey *keys = calloc(n + 1, sizeof *keys);
    int *kid = calloc(n + 1, sizeof *kid), *count = calloc(n + 1, sizeof *count);
    json_t *floats = json_array(), *res = NULL;
    if (!keys || !kid || !count || !floats) { SETERR("out of memory"); goto done; }
    for (i = 0; i < n; i++) {
        json_t *e = json_array_get(manifest, i);
        const char *name = json_string_value(json_object_get(e, "name"));
        kid[i] = -1;
        if (!name) continue;
        json_t *q = json_object_get(e, "quant");
        if (!q) {
            json_t *sh = json_object_get(e, "shape");
            if (json_array_size(sh) == 2 && is_weight_name(name) && !strstr(name, "embed"))
                json_array_append_new(floats, module_name(name));
            continue;
        }
        qs_tensor t;
        if (hfq_tensor_from_manifest(e, &t, errp)) goto done;
        qkey k;
        int rc = qkey_from_attrs(q, qs_tensor_part(&t, "g_idx") >= 0, &k, errp);
        qs_tensor_clear(&t);
        if (rc) goto done;
        if (!is_weight_name(name)) {
            SETERR("%s: quantized tensors must be named '<module>.weight'", name);
            goto done;
        }
        size_t j;
        for (j = 0; j < nk && !qkey_eq(&keys[j], &k); j++) {}
        if (j == nk) keys[nk++] = k;
        kid[i] = (int)j;
        count[j]++;
    }
    if (nk == 0) { SETERR("%s: no quantized tensor in the manifest", format); goto done; }
    size_t base = 0;
    for (i = 1; i < nk; i++) if (count[i] > count[base]) base = i;

    if (is_gptq(o.kind)) {
        if (!(res = config_gptq(o.kind, &keys[base], errp))) goto done;
        json_t *dyn = json_object();
        for (i = 0; i < n; i++) {
            const char *name = json_string_value(json_object_get(json_array_get(manifest, i), "name"));
            if (kid[i] < 0) continue;
            if (is_lm_head(name)) json_object_set_new(res, "lm_head", json_true());
            if ((size_t)kid[i] == base) continue;
            const qkey *k = &keys[kid[i]];
            json_t *ov = config_gptq(o.kind, k, errp);
            if (!ov) { json_decref(dyn); json_decref(res); res = NULL; goto done; }
            json_decref(ov);
            char *re = regex_exact(name, strlen(name) - 7), key[2100];
            snprintf(key, sizeof key, "+:%s", re ? re : "");
            free(re);
            json_object_set_new(dyn, key, json_pack("{s:i, s:i, s:b, s:b}", "bits", k->bits,
                                "group_size", k->group, "desc_act", k->act_order, "sym", k->sym));
        }
        json_t *f;
        json_array_foreach(floats, i, f) {
            const char *mn = json_string_value(f);
            if (strcmp(mn, "lm_head") == 0) continue;   /* not quantized by default (lm_head false) */
            char *re = regex_exact(mn, strlen(mn)), key[2100];
            snprintf(key, sizeof key, "-:%s", re ? re : "");
            free(re);
            json_object_set_new(dyn, key, json_object());
        }
        if (json_object_size(dyn)) json_object_set_new(res, "dynamic", dyn);
        else json_decref(dyn);
    } else if (o.kind == HFQ_AWQ) {
        if (nk > 1) { SETERR("awq: tensors use %zu different grids; AWQ configs hold one", nk); goto done; }
        if (!(res = config_awq(&keys[0], errp))) goto done;
        json_t *keep = json_array(), *f;
        json_array_foreach(floats, i, f)
            if (strcmp(json_string_value(f), "lm_head")) json_array_append(keep, f);
        if (json_array_size(keep)) json_object_set_new(res, "modules_to_not_convert", keep);
        else json_decref(keep);
    } else {
        json_t *groups = json_object();
        for (size_t j = 0; j < nk; j++) {
            json_t *w = ct_weight_args(&keys[j], errp);
            if (!w) { json_decref(groups); goto done; }
            json_t *targets = json_array();
            if (nk == 1) json_array_append_new(targets, json_string("Linear"));
            else
                for (i = 0; i < n; i++)
                    if (kid[i] == (int)j)
                        json_array_append_new(targets, module_name(json_string_value(
                            json_object_get(json_array_get(manifest, i), "name"))));
            char gname[32];
            snprintf(gname, sizeof gname, "group_%zu", j);
            json_object_set_new(groups, gname, ct_group(w, targets));
        }
        res = ct_config(groups, json_incref(floats));
    }
done:
    free(keys);
    free(kid);
    free(count);
    json_decref(floats);
    return res;
}

/*-*** Reading packed checkpoints back ***/

/* Component slots of one packed module, as plain indices (-1 absent):
 *  gptq/awq: QW qweight, QZ qzeros, SC scales, GI g_idx
 *  ct:       QW weight_packed, QZ weight_zero_point, SC weight_scale,
 *            GI weight_g_idx, SH weight_shape */
enum { QW, QZ, SC, GI, SH, NCOMP };

typedef struct {
    int     comp[NCOMP];
    int     first;           /* smallest plain index among comp */
    int     bits, group, sym, act_order;
    int     v1;              /* gptq: stored zeros are zero - 1 */
    int     ct_tensor;       /* ct strategy "tensor": one scale / zero point */
    int     emit_gidx;       /* the stream tensor has a g_idx part */
    int     check_gidx;      /* verify at read time that g_idx is c / group */
    int64_t rows, cols, ng;
} wgroup;

typedef struct {
    qsrc    *plain;
    hfq_kind kind;
    int     *src;            /* per tensor: plain index, or -1 when packed */
    int     *grp;            /* per tensor: group index, or -1 */
    wgroup  *groups;
    int      ngroups;
    int      cached;         /* tensor whose unpacked bytes are in buf, or -1 */
    uint8_t *buf;
} wimpl;

/* Anchored (re.match-like) regex test: 1 match, 0 no, -1 bad pattern. */
static int re_match(const char *pat, const char *s)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED, &ec, &eo, NULL);
    if (!re) return -1;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = md ? pcre2_match(re, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL) : -1;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc >= 0 ? 1 : 0;
}

static int json_int_or(const json_t *o, const char *k, int def)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

static int json_bool_or(const json_t *o, const char *k, int def)
{
    json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

/* GPTQ grid of module `mod`: the config, then the first matching positive
 * "dynamic" rule (GPTQModel: keys "+:regex" or "regex"; "-:regex" skips). */
static void gptq_module_grid(const json_t *qc, const char *mod, wgroup *w)
{
    w->bits = json_int_or(qc, "bits", 4);
    w->group = json_int_or(qc, "group_size", 128);
    w->sym = json_bool_or(qc, "sym", 1);
    w->act_order = json_bool_or(qc, "desc_act", 0);
    const char *k;
    json_t *ov;
    json_object_foreach(json_object_get(qc, "dynamic"), k, ov) {
        if (strncmp(k, "-:", 2) == 0) continue;
        const char *pat = strncmp(k, "+:", 2) == 0 ? k + 2 : k;
        if (re_match(pat, mod) == 1) {
            w->bits = json_int_or(ov, "bits", w->bits);
            w->group = json_int_or(ov, "group_size", w->group);
            w->sym = json_bool_or(ov, "sym", w->sym);
            w->act_order = json_bool_or(ov, "desc_act", w->act_order);
            break;
        }
    }
    if (w->group <= 0) w->group = -1;
}

/* compressed-tensors: the config group whose targets match module `mod`
 * (exact name or "re:" regex first, else a class name such as "Linear"),
 * its weight args into w. 0 ok, -1 + *errp. */
static int ct_module_grid(const json_t *qc, const char *mod, wgroup *w, char **errp)
{
    const json_t *groups = json_object_get(qc, "config_groups");
    const char *gname, *gfound = NULL, *gclass = NULL;
    json_t *scheme, *found = NULL, *byclass = NULL;
    json_object_foreach((json_t *)groups, gname, scheme) {
        json_t *targets = json_is_array(scheme) ? scheme : json_object_get(scheme, "targets");
        size_t i;
        json_t *tv;
        json_array_foreach(targets, i, tv) {
            const char *t = json_string_value(tv);
            if (!t) continue;
            if (strncmp(t, "re:", 3) == 0 ? re_match(t + 3, mod) == 1 : strcmp(t, mod) == 0) {
                found = scheme;
                gfound = gname;
            } else if (!byclass && t[0] >= 'A' && t[0] <= 'Z' && !strchr(t, '.')) {
                byclass = scheme;     /* a class name: matches every packed Linear */
                gclass = gname;
            }
            if (found) break;
        }
        if (found) break;
    }
    if (!found) { found = byclass; gfound = gclass; }
    if (!found) {
        SETERR("compressed-tensors: %s has packed weights but no config group targets it", mod);
        return -1;
    }
    int bits, gs, sym = 1;
    const char *strategy = NULL;
    if (json_is_array(found)) {      /* preset name -> targets */
        if (strcmp(gfound, "W4A16") == 0) bits = 4, gs = 128;
        else if (strcmp(gfound, "W4A16_ASYM") == 0) bits = 4, gs = 128, sym = 0;
        else if (strcmp(gfound, "W8A16") == 0) bits = 8, gs = -1;
        else {
            SETERR("compressed-tensors: preset scheme '%s' is not a packed int weight scheme", gfound);
            return -1;
        }
        w->act_order = 0;
    } else {
        const char *fmt = json_string_value(json_object_get(found, "format"));
        const char *gfmt = json_string_value(json_object_get(qc, "format"));
        if (!fmt) fmt = gfmt;
        if (!fmt || strcmp(fmt, "pack-quantized") != 0) {
            SETERR("compressed-tensors: %s: format '%s' is not supported (pack-quantized only)",
                   mod, fmt ? fmt : "?");
            return -1;
        }
        const json_t *wa = json_object_get(found, "weights");
        const char *type = json_string_value(json_object_get(wa, "type"));
        if (!json_is_object(wa) || (type && strcmp(type, "int") != 0)) {
            SETERR("compressed-tensors: %s: weights are not int-quantized", mod);
            return -1;
        }
        json_t *gsv = json_object_get(wa, "group_size");
        bits = json_int_or(wa, "num_bits", 8);
        gs = json_is_integer(gsv) ? (int)json_integer_value(gsv) : 0;
        sym = json_bool_or(wa, "symmetric", 1);
        strategy = json_string_value(json_object_get(wa, "strategy"));
        json_t *ao = json_object_get(wa, "actorder");
        w->act_order = (json_is_string(ao) || json_is_true(ao)) ? 1 : 0;
    }
    if (!strategy) strategy = gs > 0 ? "group" : gs < 0 ? "channel" : "tensor";
    w->ct_tensor = 0;
    if (strcmp(strategy, "group") == 0 && gs > 0) w->group = gs;
    else if (strcmp(strategy, "channel") == 0) w->group = -1;
    else if (strcmp(strategy, "tensor") == 0) w->group = -1, w->ct_tensor = 1;
    else {
        SETERR("compressed-tensors: %s: strategy '%s' is not supported", mod, strategy);
        return -1;
    }
    w->bits = bits;
    w->sym = sym;
    if (bits < 2 || bits > 8) {
        SETERR("compressed-tensors: %s: num_bits %d", mod, bits);
        return -1;
    }
    return 0;
}

static int dims_are(const qs_tensor *t, int nd, int64_t d0, int64_t d1)
{
    if (t->ndim != nd) return 0;
    if (nd >= 1 && d0 >= 0 && t->shape[0] != d0) return 0;
    if (nd >= 2 && d1 >= 0 && t->shape[1] != d1) return 0;
    return 1;
}

static int float_dtype(qdtype d) { return d == DT_F16 || d == DT_BF16 || d == DT_F32; }

/* Read a whole plain tensor (malloc'd). */
static void *read_whole(qsrc *p, int idx, char **errp)
{
    uint64_t nb = p->tensors[idx].parts[0].nbytes;
    void *b = malloc(nb ? nb : 1);
    if (!b) { SETERR("%s: out of memory", p->tensors[idx].name); return NULL; }
    if (qsrc_read(p, idx, 0, b, nb, errp)) { free(b); return NULL; }
    return b;
}

static int64_t ld_int(const void *b, qdtype dt, int64_t i)
{
    if (dt == DT_I64) {
        int64_t v;
        memcpy(&v, (const uint8_t *)b + 8 * i, 8);
        return v;
    }
    if (dt == DT_I8) return ((const int8_t *)b)[i];
    return (int32_t)ld32(b, i);
}

/* g_idx of the group trivial (c / group)? 1 yes, 0 no, -1 out of range. */
static int gidx_trivial(const wgroup *w, const void *gi, qdtype dt)
{
    int triv = 1;
    for (int64_t c = 0; c < w->cols; c++) {
        int64_t g = ld_int(gi, dt, c);
        if (g < 0 || g >= w->ng) return -1;
        if (g != (w->group <= 0 ? 0 : c / w->group)) triv = 0;
    }
    return triv;
}

/* Shapes of a GPTQ/AWQ module's stored tensors -> w->rows/cols/ng. */
static int check_gptq_awq(qsrc *p, hfq_kind kind, const char *mod, wgroup *w, char **errp)
{
    const qs_tensor *qw = &p->tensors[w->comp[QW]], *qz = &p->tensors[w->comp[QZ]];
    const qs_tensor *sc = &p->tensors[w->comp[SC]];
    const int b = w->bits;
    const char *fmt = kind == HFQ_AWQ ? "awq" : "gptq";
    if (qw->dtype != DT_I32 || qw->ndim != 2 || qz->dtype != DT_I32 || !float_dtype(sc->dtype)
        || sc->ndim != 2) {
        SETERR("%s: %s: qweight/qzeros must be I32 2-D and scales 2-D float", mod, fmt);
        return -1;
    }
    if (kind == HFQ_AWQ) {
        if (b != 4) { SETERR("%s: awq: bits %d (GEMM layout is 4-bit)", mod, b); return -1; }
        w->cols = qw->shape[0];
        w->rows = qw->shape[1] * 8;
    } else {
        if (b != 2 && b != 3 && b != 4 && b != 8) { SETERR("%s: gptq: bits %d", mod, b); return -1; }
        if (qw->shape[0] * 32 % b) { SETERR("%s: gptq: qweight rows %lld not a multiple of %d bits", mod, (long long)qw->shape[0], b); return -1; }
        w->cols = qw->shape[0] * 32 / b;
        w->rows = qw->shape[1];
    }
    w->ng = w->group > 0 ? (w->cols + w->group - 1) / w->group : 1;
    int64_t zc = kind == HFQ_AWQ ? w->rows / 8 : w->rows * b / 32;
    if (!dims_are(qz, 2, w->ng, zc) || !dims_are(sc, 2, w->ng, w->rows)
        || (kind != HFQ_AWQ && w->rows * b % 32)) {
        SETERR("%s: %s: qzeros/scales shapes do not match qweight [%lld, %lld] with group %d",
               mod, fmt, (long long)qw->shape[0], (long long)qw->shape[1], w->group);
        return -1;
    }
    if (w->comp[GI] >= 0) {
        const qs_tensor *gi = &p->tensors[w->comp[GI]];
        if ((gi->dtype != DT_I32 && gi->dtype != DT_I64) || !dims_are(gi, 1, w->cols, -1)) {
            SETERR("%s: %s: g_idx must be I32/I64 [%lld]", mod, fmt, (long long)w->cols);
            return -1;
        }
    }
    return 0;
}

static int check_ct(qsrc *p, const char *mod, wgroup *w, char **errp)
{
    const qs_tensor *pk = &p->tensors[w->comp[QW]], *sc = &p->tensors[w->comp[SC]];
    const int pf = 32 / w->bits;
    if (pk->dtype != DT_I32 || pk->ndim != 2 || !float_dtype(sc->dtype)) {
        SETERR("%s: compressed-tensors: weight_packed must be I32 2-D, weight_scale float", mod);
        return -1;
    }
    w->rows = pk->shape[0];
    w->cols = pk->shape[1] * pf;
    if (w->comp[GI] >= 0 && p->tensors[w->comp[GI]].ndim == 1) {   /* g_idx knows d_in */
        int64_t c = p->tensors[w->comp[GI]].shape[0];
        if (c <= w->cols && c > w->cols - pf) w->cols = c;
    }
    if (w->comp[SH] >= 0) {
        const qs_tensor *sh = &p->tensors[w->comp[SH]];
        if ((sh->dtype != DT_I64 && sh->dtype != DT_I32) || qs_numel(sh->ndim, sh->shape) != 2) {
            SETERR("%s: compressed-tensors: weight_shape must be 2 integers", mod);
            return -1;
        }
        if (!p->sequential) {    /* read it now; sequential sources: checked when unpacking */
            void *b = read_whole(p, w->comp[SH], errp);
            if (!b) return -1;
            int64_t r = ld_int(b, sh->dtype, 0), c = ld_int(b, sh->dtype, 1);
            free(b);
            if (r != w->rows || c > w->cols || c <= w->cols - pf) {
                SETERR("%s: compressed-tensors: weight_shape [%lld, %lld] does not fit weight_packed",
                       mod, (long long)r, (long long)c);
                return -1;
            }
            w->cols = c;
        }
    }
    w->ng = w->group > 0 ? (w->cols + w->group - 1) / w->group : 1;
    int ok = w->ct_tensor ? qs_numel(sc->ndim, sc->shape) == 1 : dims_are(sc, 2, w->rows, w->ng);
    if (ok && !w->sym) {
        if (w->comp[QZ] < 0) ok = 0;
        else {
            const qs_tensor *z = &p->tensors[w->comp[QZ]];
            ok = w->ct_tensor ? qs_numel(z->ndim, z->shape) == 1 && (z->dtype == DT_I8 || z->dtype == DT_I32)
                              : z->dtype == DT_I32 && dims_are(z, 2, (w->rows + pf - 1) / pf, w->ng);
        }
    }
    if (ok && w->comp[GI] >= 0) {
        const qs_tensor *gi = &p->tensors[w->comp[GI]];
        ok = (gi->dtype == DT_I32 || gi->dtype == DT_I64) && dims_are(gi, 1, w->cols, -1);
    }
    if (!ok) {
        SETERR("%s: compressed-tensors: weight_scale/weight_zero_point/weight_g_idx shapes do not "
               "match [%lld, %lld] with group %d (%s)", mod, (long long)w->rows, (long long)w->cols,
               w->group, w->sym ? "sym" : "asym");
        return -1;
    }
    return 0;
}

/* Decide whether the stream tensor carries g_idx. */
static int decide_gidx(qsrc *p, const char *mod, wgroup *w, char **errp)
{
    w->emit_gidx = w->check_gidx = 0;
    if (w->comp[GI] < 0) return 0;
    if (p->sequential) {          /* can't look ahead: trust the config */
        w->emit_gidx = w->act_order;
        w->check_gidx = !w->act_order;
        return 0;
    }
    void *b = read_whole(p, w->comp[GI], errp);
    if (!b) return -1;
    int t = gidx_trivial(w, b, p->tensors[w->comp[GI]].dtype);
    free(b);
    if (t < 0) { SETERR("%s: g_idx has a group index out of [0, %lld)", mod, (long long)w->ng); return -1; }
    w->emit_gidx = !t;
    if (!t) w->act_order = 1;
    return 0;
}

/* The stream tensor for group w named mod + ".weight" -> t. */
static int group_tensor(const wgroup *w, const char *mod, hfq_kind kind, qs_tensor *t)
{
    char name[1100];
    snprintf(name, sizeof name, "%s.weight", mod);
    int64_t shape[2] = {w->rows, w->cols}, sc[2] = {w->rows, w->ng};
    if (qs_tensor_init(t, name, DT_F32, 2, shape) < 0) return -1;
    t->nparts = 0;
    if (qs_tensor_add_part(t, "codes", DT_U8, 2, shape) < 0 || qs_tensor_add_part(t, "scales", DT_F32, 2, sc) < 0
        || qs_tensor_add_part(t, "zeros", DT_F32, 2, sc) < 0
        || (w->emit_gidx && qs_tensor_add_part(t, "g_idx", DT_I32, 1, &shape[1]) < 0))
        return -1;
    quant_grid g;
    quant_grid_default(&g);
    g.bits = w->bits;
    g.group = w->group;
    g.sym = w->sym;
    g.act_order = w->act_order;
    snprintf(g.method, sizeof g.method, "%s", is_gptq(kind) ? "gptq" : kind == HFQ_AWQ ? "awq" : "unknown");
    t->attrs = json_pack("{s:o}", "quant", quant_grid_to_json(&g));
    return t->attrs ? 0 : -1;
}

/* Decode n scales of dtype dt into f32. */
static void scales_f32(const void *src, qdtype dt, float *dst, size_t n) { dtype_to_f32(dt, src, dst, n); }

/* Unpack group w from its stored tensors raw[] into out (the stream bytes). */
static int unpack_group(const wimpl *wi, const wgroup *w, const char *mod, void *const raw[],
                        uint8_t *out, char **errp)
{
    const qsrc *p = wi->plain;
    const int b = w->bits, pf = 32 / b;
    const int64_t rows = w->rows, cols = w->cols, ng = w->ng;
    uint8_t *codes = out, *scales = out + rows * cols, *zeros = scales + 4 * rows * ng;
    uint8_t *gout = zeros + 4 * rows * ng;
    const qs_tensor *sct = &p->tensors[w->comp[SC]];
    float *s32 = malloc((size_t)qs_numel(sct->ndim, sct->shape) * sizeof *s32);
    if (!s32) { SETERR("%s: out of memory", mod); return -1; }
    scales_f32(raw[SC], sct->dtype, s32, (size_t)qs_numel(sct->ndim, sct->shape));
    const float mid = (float)(1 << (b - 1));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            float s, z;
            if (is_gptq(wi->kind)) {
                s = s32[g * rows + r];
                z = (float)bits_get((uint8_t *)raw[QZ] + 4 * g * (rows * b / 32), 1, r, b) + (w->v1 ? 1.0f : 0.0f);
            } else if (wi->kind == HFQ_AWQ) {
                s = s32[g * rows + r];
                z = (float)((ld32(raw[QZ], g * (rows / 8) + r / 8) >> (4 * awq_slot[r % 8])) & 15);
            } else {
                s = w->ct_tensor ? s32[0] : s32[r * ng + g];
                if (w->sym) z = mid;
                else if (w->ct_tensor) z = (float)ld_int(raw[QZ], p->tensors[w->comp[QZ]].dtype, 0) + mid;
                else z = (float)((ld32(raw[QZ], (r / pf) * ng + g) >> (b * (int)(r % pf))) & ((1u << b) - 1));
            }
            memcpy(scales + 4 * (r * ng + g), &s, 4);
            memcpy(zeros + 4 * (r * ng + g), &z, 4);
        }
    free(s32);
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *cr = codes + r * cols;
        if (is_gptq(wi->kind)) {
            const uint8_t *col = (const uint8_t *)raw[QW] + 4 * r;
            for (int64_t c = 0; c < cols; c++) cr[c] = (uint8_t)bits_get(col, rows, c, b);
        } else if (wi->kind == HFQ_AWQ) {
            const int64_t nw = rows / 8;
            const int sh = 4 * awq_slot[r % 8];
            for (int64_t c = 0; c < cols; c++) cr[c] = (uint8_t)((ld32(raw[QW], c * nw + r / 8) >> sh) & 15);
        } else {
            const int64_t wc = p->tensors[w->comp[QW]].shape[1];
            for (int64_t c = 0; c < cols; c++)
                cr[c] = (uint8_t)((ld32(raw[QW], r * wc + c / pf) >> (b * (int)(c % pf))) & ((1u << b) - 1));
        }
    }
    if (w->comp[GI] >= 0) {
        qdtype gdt = p->tensors[w->comp[GI]].dtype;
        int t = gidx_trivial(w, raw[GI], gdt);
        if (t < 0 || (w->check_gidx && !t)) {
            SETERR("%s: g_idx %s", mod, t < 0 ? "out of range" : "is not c / group although the config has no act order");
            return -1;
        }
        if (w->emit_gidx)
            for (int64_t c = 0; c < cols; c++) st32(gout, c, (uint32_t)(int32_t)ld_int(raw[GI], gdt, c));
    }
    return 0;
}

static const char *mod_of(const qs_tensor *t)
{
    return t->name;   /* stream names are "<mod>.weight"; messages use the full name */
}

static int wrap_unpack(qsrc *s, int idx, char **errp)
{
    wimpl *wi = s->impl;
    const wgroup *w = &wi->groups[wi->grp[idx]];
    const qs_tensor *t = &s->tensors[idx];
    free(wi->buf);
    wi->buf = NULL;
    wi->cached = -1;
    void *raw[NCOMP] = {0};
    int order[NCOMP], n = 0, rc = -1;
    for (int k = 0; k < NCOMP; k++) if (w->comp[k] >= 0) order[n++] = k;
    for (int i = 1; i < n; i++)       /* read in plain's order (sequential sources) */
        for (int j = i; j > 0 && w->comp[order[j]] < w->comp[order[j - 1]]; j--) {
            int x = order[j]; order[j] = order[j - 1]; order[j - 1] = x;
        }
    for (int i = 0; i < n; i++)
        if (!(raw[order[i]] = read_whole(wi->plain, w->comp[order[i]], errp))) goto done;
    if (w->comp[SH] >= 0 && wi->plain->sequential) {
        qdtype dt = wi->plain->tensors[w->comp[SH]].dtype;
        if (ld_int(raw[SH], dt, 0) != w->rows || ld_int(raw[SH], dt, 1) != w->cols) {
            SETERR("%s: weight_shape [%lld, %lld] differs from the [%lld, %lld] assumed when reading in order",
                   t->name, (long long)ld_int(raw[SH], dt, 0), (long long)ld_int(raw[SH], dt, 1),
                   (long long)w->rows, (long long)w->cols);
            goto done;
        }
    }
    uint64_t nb = qs_tensor_nbytes(t);
    if (!(wi->buf = malloc(nb ? nb : 1))) { SETERR("%s: out of memory", t->name); goto done; }
    if (unpack_group(wi, w, mod_of(t), raw, wi->buf, errp)) goto done;
    wi->cached = idx;
    rc = 0;
done:
    for (int k = 0; k < NCOMP; k++) free(raw[k]);
    if (rc) { free(wi->buf); wi->buf = NULL; }
    return rc;
}

static int wrap_read(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp)
{
    wimpl *wi = s->impl;
    if (wi->src[idx] >= 0) {
        if (wi->cached >= 0) { free(wi->buf); wi->buf = NULL; wi->cached = -1; }
        return qsrc_read(wi->plain, wi->src[idx], off, buf, n, errp);
    }
    if (wi->cached != idx && wrap_unpack(s, idx, errp)) return -1;
    uint64_t nb = qs_tensor_nbytes(&s->tensors[idx]);
    if (off > nb || n > nb - off) {
        SETERR("%s: %s: read of %zu bytes at %llu past the end (%llu)", s->path, s->tensors[idx].name,
               n, (unsigned long long)off, (unsigned long long)nb);
        return -1;
    }
    memcpy(buf, wi->buf + off, n);
    return 0;
}

static const void *wrap_map(qsrc *s, int idx)
{
    wimpl *wi = s->impl;
    return wi->src[idx] >= 0 ? qsrc_map(wi->plain, wi->src[idx]) : NULL;
}

static void wrap_close(qsrc *s)
{
    wimpl *wi = s->impl;
    if (!wi) return;
    qsrc_close(wi->plain);
    free(wi->src);
    free(wi->grp);
    free(wi->groups);
    free(wi->buf);
    free(wi);
    s->impl = NULL;
}

static const qsrc_ops wrap_ops = {wrap_read, wrap_map, wrap_close};

/* quantization_config of the carried config.json (or quantize_config.json,
 * then taken as gptq). New reference or NULL. */
static json_t *carried_quant_config(const qsrc *p)
{
    const qs_file *f = qs_header_file(&p->header, "config.json");
    json_t *qc = NULL;
    if (f) {
        json_t *cfg = json_loadb((const char *)f->data, f->len, 0, NULL);
        qc = json_incref(json_object_get(cfg, "quantization_config"));
        json_decref(cfg);
    }
    if (!qc && (f = qs_header_file(&p->header, "quantize_config.json"))) {
        qc = json_loadb((const char *)f->data, f->len, 0, NULL);
        if (qc && !json_object_get(qc, "quant_method")) json_object_set_new(qc, "quant_method", json_string("gptq"));
    }
    if (qc && !json_is_object(qc)) { json_decref(qc); qc = NULL; }
    return qc;
}

/* Find prefix + suffix in p (-1 if absent). */
static int find_comp(const qsrc *p, const char *prefix, size_t plen, const char *suffix)
{
    char name[1100];
    if (plen + strlen(suffix) + 1 > sizeof name) return -1;
    memcpy(name, prefix, plen);
    strcpy(name + plen, suffix);
    return qsrc_find(p, name);
}

/* Collect the packed groups of p into wi->groups; used[i] marks consumed
 * plain tensors. */
static int collect_groups(qsrc *p, wimpl *wi, const json_t *qc, char *used, char **errp)
{
    const hfq_kind kind = wi->kind;
    const char *key = kind == HFQ_CT ? ".weight_packed" : ".qweight";
    const size_t klen = strlen(key);
    for (int i = 0; i < p->ntensors; i++) {
        const char *nm = p->tensors[i].name;
        size_t len = strlen(nm);
        if (len <= klen || strcmp(nm + len - klen, key) != 0) continue;
        size_t plen = len - klen;
        char mod[1024];
        if (plen >= sizeof mod) { SETERR("%s: name too long", nm); return -1; }
        memcpy(mod, nm, plen);
        mod[plen] = 0;
        wgroup w;
        memset(&w, 0, sizeof w);
        for (int k = 0; k < NCOMP; k++) w.comp[k] = -1;
        w.comp[QW] = i;
        if (kind == HFQ_CT) {
            w.comp[QZ] = find_comp(p, mod, plen, ".weight_zero_point");
            w.comp[SC] = find_comp(p, mod, plen, ".weight_scale");
            w.comp[GI] = find_comp(p, mod, plen, ".weight_g_idx");
            w.comp[SH] = find_comp(p, mod, plen, ".weight_shape");
            if (ct_module_grid(qc, mod, &w, errp)) return -1;
            if (w.sym) w.comp[QZ] = -1;    /* a stray zero point of a sym scheme is dropped */
            else if (w.comp[QZ] < 0) {
                SETERR("%s: asymmetric scheme but no weight_zero_point", mod);
                return -1;
            }
        } else {
            w.comp[QZ] = find_comp(p, mod, plen, ".qzeros");
            w.comp[SC] = find_comp(p, mod, plen, ".scales");
            if (kind != HFQ_AWQ) w.comp[GI] = find_comp(p, mod, plen, ".g_idx");
            if (kind == HFQ_AWQ) {
                w.bits = json_int_or(qc, "bits", json_int_or(qc, "w_bit", 4));
                w.group = json_int_or(qc, "group_size", json_int_or(qc, "q_group_size", 128));
                w.sym = 0;
                if (w.group <= 0) w.group = -1;
            } else {
                gptq_module_grid(qc, mod, &w);
                w.v1 = kind == HFQ_GPTQ;
            }
            if (w.comp[QZ] < 0 || w.comp[SC] < 0) {
                SETERR("%s: has qweight but no qzeros or scales", mod);
                return -1;
            }
        }
        if (w.comp[SC] < 0) { SETERR("%s: has weight_packed but no weight_scale", mod); return -1; }
        if ((kind == HFQ_CT ? check_ct(p, mod, &w, errp) : check_gptq_awq(p, kind, mod, &w, errp))
            || decide_gidx(p, mod, &w, errp))
            return -1;
        w.first = i;
        for (int k = 0; k < NCOMP; k++)
            if (w.comp[k] >= 0) {
                used[w.comp[k]] = 1;
                if (w.comp[k] < w.first) w.first = w.comp[k];
            }
        if (kind == HFQ_CT && w.sym) {   /* drop an unused zero point tensor too */
            int z = find_comp(p, mod, plen, ".weight_zero_point");
            if (z >= 0) used[z] = 1;
        }
        wgroup *ng = realloc(wi->groups, (size_t)(wi->ngroups + 1) * sizeof *ng);
        if (!ng) { SETERR("out of memory"); return -1; }
        wi->groups = ng;
        wi->groups[wi->ngroups++] = w;
    }
    return 0;
}

/* Method of qc: kind, 0 = not ours (plain passes through), -1 + *errp unsupported. */
static int config_kind(const json_t *qc, hfq_kind *kind, char **errp)
{
    const char *m = json_string_value(json_object_get(qc, "quant_method"));
    if (!m) return 0;
    if (strcmp(m, "gptq") == 0) {
        const char *cf = json_string_value(json_object_get(qc, "checkpoint_format"));
        if (!cf) cf = json_string_value(json_object_get(qc, "format"));   /* older GPTQModel key */
        if (cf && strcmp(cf, "gptq") && strcmp(cf, "gptq_v2")) {
            SETERR("gptq: checkpoint_format '%s' is not supported (gptq, gptq_v2)", cf);
            return -1;
        }
        *kind = cf && strcmp(cf, "gptq_v2") == 0 ? HFQ_GPTQ_V2 : HFQ_GPTQ;
        return 1;
    }
    if (strcmp(m, "awq") == 0) {
        const char *v = json_string_value(json_object_get(qc, "version"));
        if (v && strcasecmp(v, "gemm") != 0) {
            SETERR("awq: version '%s' is not supported (gemm only)", v);
            return -1;
        }
        if (!json_bool_or(qc, "zero_point", 1)) {
            SETERR("awq: zero_point false is not supported");
            return -1;
        }
        *kind = HFQ_AWQ;
        return 1;
    }
    if (strcmp(m, "compressed-tensors") == 0) {
        json_t *sp = json_object_get(qc, "sparsity_config");
        const char *sf = json_string_value(json_object_get(sp, "format"));
        if (sf && strcmp(sf, "dense") != 0) {
            SETERR("compressed-tensors: sparsity format '%s' is not supported", sf);
            return -1;
        }
        if (json_object_size(json_object_get(qc, "config_groups")) == 0) return 0;
        *kind = HFQ_CT;
        return 1;
    }
    return 0;
}

qsrc *hfq_wrap_source(qsrc *plain, char **errp)
{
    if (json_object_get(plain->header.meta, "hf_quant_method")) return plain;   /* already unpacked */
    json_t *qc = carried_quant_config(plain);
    hfq_kind kind;
    int k = qc ? config_kind(qc, &kind, errp) : 0;
    if (k <= 0) {
        json_decref(qc);
        return k < 0 ? NULL : plain;
    }
    wimpl *wi = calloc(1, sizeof *wi);
    char *used = calloc((size_t)plain->ntensors + 1, 1);
    qsrc *s = qsrc_new(plain->path);
    int ok = wi && used && s;
    if (ok) {
        wi->plain = plain;
        wi->kind = kind;
        wi->cached = -1;
        ok = collect_groups(plain, wi, qc, used, errp) == 0;
        if (!ok) used = (free(used), NULL);
    } else SETERR("%s: out of memory", plain->path);
    int *first_of = ok ? malloc(((size_t)plain->ntensors + 1) * sizeof *first_of) : NULL;
    if (ok && !first_of) { ok = 0; SETERR("out of memory"); }
    if (ok) {
        for (int i = 0; i < plain->ntensors; i++) first_of[i] = -1;
        for (int g = 0; g < wi->ngroups; g++) first_of[wi->groups[g].first] = g;
        wi->src = malloc(((size_t)plain->ntensors + 1) * sizeof *wi->src);
        wi->grp = malloc(((size_t)plain->ntensors + 1) * sizeof *wi->grp);
        qs_header_clear(&s->header);         /* qsrc_new initialised it; copy over it */
        ok = wi->src && wi->grp && qs_header_copy(&s->header, &plain->header) == 0;
        if (!ok) SETERR("out of memory");
    }
    for (int i = 0; ok && i < plain->ntensors; i++) {
        qs_tensor t;
        int g = first_of[i];
        if (g >= 0) {
            const qs_tensor *qw = &plain->tensors[wi->groups[g].comp[QW]];
            const char *key = kind == HFQ_CT ? ".weight_packed" : ".qweight";
            char mod[1024];
            size_t plen = strlen(qw->name) - strlen(key);
            memcpy(mod, qw->name, plen);
            mod[plen] = 0;
            if (group_tensor(&wi->groups[g], mod, kind, &t)) { ok = 0; break; }
        } else if (used[i]) continue;
        else if (qs_tensor_copy(&t, &plain->tensors[i]) < 0) { ok = 0; break; }
        wi->src[s->ntensors] = g >= 0 ? -1 : i;
        wi->grp[s->ntensors] = g;
        int rc = qsrc_add_tensor(s, &t);
        qs_tensor_clear(&t);
        if (rc < 0) { ok = 0; break; }
    }
    if (!ok && errp && !*errp) SETERR("%s: out of memory", plain->path);
    free(first_of);
    free(used);
    json_decref(qc);
    if (!ok) {
        if (wi) { free(wi->src); free(wi->grp); free(wi->groups); free(wi); }
        if (s) qsrc_close(s);
        return NULL;
    }
    json_object_set_new(s->header.meta, "hf_quant_method", json_string(kind_name(kind)));
    s->sequential = plain->sequential;
    s->ops = &wrap_ops;
    s->impl = wi;
    return s;
}
