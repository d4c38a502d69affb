/* gguf_export — llama-quantize's tensor type choices (see gguf_export.h).
 * Reference: ggml-org/llama.cpp src/llama-quant.cpp, llama_tensor_get_type
 * and llama_model_quantize_impl (default types per ftype). */
#include "gguf_export.h"
#include "ggml_quants.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* llama_ftype values (llama.h) */
enum {
    FT_ALL_F32 = 0, FT_F16 = 1, FT_Q4_0 = 2, FT_Q4_1 = 3, FT_Q8_0 = 7, FT_Q5_0 = 8, FT_Q5_1 = 9,
    FT_Q2_K = 10, FT_Q3_K_S = 11, FT_Q3_K_M = 12, FT_Q3_K_L = 13, FT_Q4_K_S = 14, FT_Q4_K_M = 15,
    FT_Q5_K_S = 16, FT_Q5_K_M = 17, FT_Q6_K = 18, FT_BF16 = 32,
};

static const struct { const char *name; int ftype, type; } ftypes[] = {
    { "f32", FT_ALL_F32, GGML_T_F32 }, { "f16", FT_F16, GGML_T_F16 }, { "bf16", FT_BF16, GGML_T_BF16 },
    { "q8_0", FT_Q8_0, GGML_T_Q8_0 }, { "q4_0", FT_Q4_0, GGML_T_Q4_0 }, { "q4_1", FT_Q4_1, GGML_T_Q4_1 },
    { "q5_0", FT_Q5_0, GGML_T_Q5_0 }, { "q5_1", FT_Q5_1, GGML_T_Q5_1 }, { "q2_k", FT_Q2_K, GGML_T_Q2_K },
    { "q3_k_s", FT_Q3_K_S, GGML_T_Q3_K }, { "q3_k_m", FT_Q3_K_M, GGML_T_Q3_K }, { "q3_k", FT_Q3_K_M, GGML_T_Q3_K },
    { "q3_k_l", FT_Q3_K_L, GGML_T_Q3_K }, { "q4_k_s", FT_Q4_K_S, GGML_T_Q4_K }, { "q4_k_m", FT_Q4_K_M, GGML_T_Q4_K },
    { "q4_k", FT_Q4_K_M, GGML_T_Q4_K }, { "q5_k_s", FT_Q5_K_S, GGML_T_Q5_K }, { "q5_k_m", FT_Q5_K_M, GGML_T_Q5_K },
    { "q5_k", FT_Q5_K_M, GGML_T_Q5_K }, { "q6_k", FT_Q6_K, GGML_T_Q6_K },
};

int gguf_ftype_from_name(const char *name, gguf_type_state *st)
{
    for (size_t i = 0; i < sizeof ftypes / sizeof *ftypes; i++)
        if (!strcasecmp(name, ftypes[i].name)) {
            st->ftype = ftypes[i].ftype;
            st->default_type = ftypes[i].type;
            return 0;
        }
    return -1;
}

static int use_more_bits(int i_layer, int n_layers)
{
    return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

static int has(const char *name, const char *part) { return strstr(name, part) != NULL; }

static int attn_v_type(gguf_type_state *st, int t)
{
    int ft = st->ftype;
    if (ft == FT_Q2_K) t = st->n_gqa >= 4 ? GGML_T_Q4_K : GGML_T_Q3_K;
    else if (ft == FT_Q3_K_M) t = st->i_attn_v < 2 ? GGML_T_Q5_K : GGML_T_Q4_K;
    else if (ft == FT_Q3_K_L) t = GGML_T_Q5_K;
    else if ((ft == FT_Q4_K_M || ft == FT_Q5_K_M) && use_more_bits(st->i_attn_v, st->n_layer)) t = GGML_T_Q6_K;
    else if (ft == FT_Q4_K_S && st->i_attn_v < 4) t = GGML_T_Q5_K;
    st->i_attn_v++;
    return t;
}

static int ffn_down_type(gguf_type_state *st, int t)
{
    int ft = st->ftype, i = st->i_ffn_down, n = st->n_layer;
    if (ft == FT_Q2_K) t = GGML_T_Q3_K;
    else if (ft == FT_Q3_K_M) t = i < n / 16 ? GGML_T_Q5_K : GGML_T_Q4_K;   /* non-Falcon */
    else if (ft == FT_Q3_K_L) t = GGML_T_Q5_K;
    else if (ft == FT_Q4_K_M) { if (use_more_bits(i, n)) t = GGML_T_Q6_K; }
    else if (ft == FT_Q5_K_M && use_more_bits(i, n)) t = GGML_T_Q6_K;
    else if (ft == FT_Q4_K_S && i < n / 8) t = GGML_T_Q5_K;
    else if ((ft == FT_Q4_0 || ft == FT_Q5_0) && st->has_imatrix && i < n / 8)
        t = ft == FT_Q4_0 ? GGML_T_Q4_1 : GGML_T_Q5_1;
    st->i_ffn_down++;
    return t;
}

int gguf_tensor_type(gguf_type_state *st, const char *name, int ndim, int64_t ne0)
{
    int t = st->default_type;
    if (ndim < 2) return GGML_T_F32;
    if (t == GGML_T_F32 || t == GGML_T_F16 || t == GGML_T_BF16) return t;
    if (!strcmp(name, "output.weight") || (!st->has_output && !strcmp(name, "token_embd.weight"))) {
        const ggml_qtraits *tr = ggml_qtype_traits(t);
        if (tr && ne0 % tr->blck) t = GGML_T_Q8_0;
        else if (t != GGML_T_Q8_0) t = GGML_T_Q6_K;
    } else if (!strcmp(name, "token_embd.weight")) {
        /* default type */
    } else if (has(name, "attn_v.weight")) {
        t = attn_v_type(st, t);
    } else if (has(name, "ffn_down")) {
        t = ffn_down_type(st, t);
    } else if (has(name, "attn_output.weight")) {
        if (st->ftype == FT_Q2_K) t = GGML_T_Q3_K;
        else if (st->ftype == FT_Q3_K_M) t = GGML_T_Q4_K;
        else if (st->ftype == FT_Q3_K_L) t = GGML_T_Q5_K;
    }
    /* a row length the K-block does not divide falls back as llama-quantize does
     * (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0; Q2_K/Q3_K go to IQ4_NL there, which
     * this build lacks: Q4_0 here), then to F16 if even 32 does not divide it */
    const ggml_qtraits *tr = ggml_qtype_traits(t);
    if (tr && tr->blck > 1 && ne0 % tr->blck) {
        switch (t) {
        case GGML_T_Q4_K: t = GGML_T_Q5_0; break;
        case GGML_T_Q5_K: t = GGML_T_Q5_1; break;
        case GGML_T_Q6_K: t = GGML_T_Q8_0; break;
        case GGML_T_Q2_K: case GGML_T_Q3_K: t = GGML_T_Q4_0; break;
        default: break;
        }
        if (ne0 % 32) t = GGML_T_F16;
    }
    return t;
}
