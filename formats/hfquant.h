/* hfquant — the packed HuggingFace quantized checkpoint layouts, both ways:
 * GPTQ (AutoGPTQ / GPTQModel, checkpoint_format "gptq" and "gptq_v2"), AWQ
 * (AutoAWQ "gemm") and compressed-tensors "pack-quantized" (llm-compressor).
 *
 * Owns: the names, dtypes and shapes of the stored tensors of one quantized
 * Linear (hfq_layout), the bit packing from the qstream form (hfq_pack), the
 * quantization_config objects for config.json (hfq_quant_config*), and a
 * source wrapper that unpacks such a checkpoint back into the qstream form
 * (hfq_wrap_source).
 *
 * The qstream form (docs/qstream.md §3, common/quant.h): a tensor "X.weight",
 * logical f32 [rows = d_out, cols = d_in], attrs.quant scheme "int", parts
 *   codes u8 [rows, cols], scales f32 [rows, ng], zeros f32 [rows, ng],
 *   optional g_idx i32 [cols]
 * with w = scales[r][g(c)] * (codes[r][c] - zeros[r][g(c)]).
 *
 * Stored tensors (X = the module prefix, i.e. the name without ".weight"):
 *
 *  gptq  (AutoGPTQ auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py pack())
 *   X.qweight I32 [cols*bits/32, rows]  codes along the input dim as one
 *             little-endian bit stream per output column: code c at bit c*bits
 *             (for 3 bits a code may straddle two int32 words)
 *   X.qzeros  I32 [ng, rows*bits/32]    zero points, same bit stream along rows
 *   X.scales  F16 [ng, rows]
 *   X.g_idx   I32 [cols]                always written (c / group when absent)
 *   Zero-point convention: "gptq" is the v1 format, stored = zero - 1, which is
 *   what AutoGPTQ writes, what GPTQModel converts to on save by default, and
 *   what transformers and vLLM assume unless the config says
 *   checkpoint_format "gptq_v2" (vLLM gptq.py / GPTQModel). v1 cannot hold a
 *   zero point of 0 (AutoGPTQ wraps it into all-ones bits): hfq_pack refuses
 *   it; "gptq_v2" stores zeros as they are. With sym the zero points must be
 *   2^(bits-1) (kernels such as Marlin ignore qzeros then).
 *   bits 2, 3, 4, 8; cols and rows multiples of 32/bits (of 32 for 3 bits).
 *
 *  awq  (AutoAWQ awq/modules/linear/gemm.py WQLinear_GEMM.from_linear)
 *   X.qweight I32 [cols, rows/8]  word j of input row c holds output columns
 *             8j..8j+7 with nibble i (bits 4i..4i+3) = column 8j+order[i],
 *             order = [0,2,4,6,1,3,5,7]
 *   X.qzeros  I32 [ng, rows/8]    the zero points (no offset), same order
 *   X.scales  F16 [ng, rows]
 *   4 bits only; cols a multiple of the group; rows a multiple of 8; no g_idx.
 *   A sym stream is written with its explicit zero points (zero_point true).
 *
 *  compressed-tensors  (compressors/quantized_compressors/pack_quantized.py;
 *                       specs/compressed_tensors.md §3-4)
 *   X.weight_packed     I32 [rows, ceil(cols/pf)], pf = 32/bits; element k of
 *                       a word in bits [k*bits, k*bits+bits), unsigned code
 *                       (= signed value + 2^(bits-1)), zero padded
 *   X.weight_scale      F16 (or the opts' dtype) [rows, ng]
 *   X.weight_zero_point I32 [ceil(rows/pf), ng]  asym only, packed along rows
 *   X.weight_shape      I64 [2] = {rows, cols}
 *   X.weight_g_idx      I32 [cols]   only when the stream has g_idx
 *   bits 2..8 (llm-compressor itself uses pack-quantized for 4 and 8 only).
 *
 * Scales: these formats store scales in 16 bits. hfq_pack refuses a scale the
 * target dtype cannot hold exactly, so that unpacking gives back exactly the
 * stream's values; a producer aiming at these formats should round its scales
 * to f16 before computing codes (opts.round_scales = 1 instead rounds here,
 * and the dequantized values then differ from the stream's by that rounding).
 *
 * Errors: every function returns -1 / NULL with a malloc'd one-line message in
 * *errp naming the tensor ("model.layers.0.mlp.up_proj.weight: gptq: ...").
 * Nothing here prints or exits.
 */
#ifndef QPIPE_HFQUANT_H
#define QPIPE_HFQUANT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "qstream.h"
#include "source.h"

typedef enum { HFQ_GPTQ = 1, HFQ_GPTQ_V2, HFQ_AWQ, HFQ_CT } hfq_kind;

typedef struct {
    hfq_kind kind;
    qdtype   scale_dtype;   /* F16 (required by gptq/awq); compressed-tensors: F16, BF16 or F32 */
    int      round_scales;  /* 1: round scales to scale_dtype (RNE) instead of refusing */
} hfq_opts;

/* Options for a format name: "gptq", "gptq_v2", "awq", "compressed-tensors"
 * (scales F16, strict). -1 + *errp for an unknown name. */
int     hfq_opts_init(hfq_opts *o, const char *format, char **errp);

/* Is t a quantized tensor these formats can take (attrs.quant scheme "int")?
 * 1 yes, 0 no. Can't fail. */
int     hfq_is_quantized(const qs_tensor *t);

/* Rebuild the tensor header (parts included) a manifest entry announces
 * ({"name","dtype","shape","nbytes","quant"}): codes/scales/zeros, plus g_idx
 * when nbytes says so. Plain entries become a one-part tensor. -1 + *errp. */
int     hfq_tensor_from_manifest(const json_t *entry, qs_tensor *t, char **errp);

/* The stored tensors for quantized t, in this order (see above):
 *   gptq: qweight, qzeros, scales, g_idx; awq: qweight, qzeros, scales;
 *   compressed-tensors: weight_packed, weight_scale, [weight_zero_point],
 *   weight_shape, [weight_g_idx].
 * *out = malloc'd array of *n plain tensors (one "data" part each; free with
 * hfq_layout_free). -1 + *errp if t is not quantized, its name does not end
 * in ".weight", or the format cannot hold its grid / shape. */
int     hfq_layout(const char *format, const qs_tensor *t, qs_tensor **out, int *n, char **errp);
int     hfq_layout_opts(const hfq_opts *o, const qs_tensor *t, qs_tensor **out, int *n, char **errp);
void    hfq_layout_free(qs_tensor *v, int n);

/* Fill outs[i] (each of the byte size hfq_layout announced for entry i) from
 * data = t's bytes (its parts concatenated). -1 + *errp when hfq_layout would
 * fail, or a value does not fit: zero points not integers in range (v1: 0),
 * sym zero points != 2^(bits-1), g_idx out of range, scales not exactly
 * representable in the scale dtype (unless round_scales). outs may have been
 * partly written on error. */
int     hfq_pack(const char *format, const qs_tensor *t, const void *data, void *const outs[], char **errp);
int     hfq_pack_opts(const hfq_opts *o, const qs_tensor *t, const void *data, void *const outs[], char **errp);

/* quantization_config for one grid (attrs.quant) as each ecosystem writes it.
 * The grid alone does not say whether act-order tensors carry g_idx (dynamic
 * groups) or not (static groups): this assumes g_idx iff act_order, which
 * matters for compressed-tensors (actorder "group" makes loaders expect
 * weight_g_idx); hfq_quant_config_manifest knows and is exact.
 * New reference, or NULL + *errp (grid the format cannot hold).
 *   gptq: bits, group_size, desc_act, sym, static_groups, true_sequential,
 *         lm_head false, damp_percent, quant_method "gptq", checkpoint_format
 *         "gptq"|"gptq_v2", pack_dtype "int32" (also the quantize_config.json);
 *   awq:  quant_method "awq", bits, group_size, zero_point true, version "gemm",
 *         modules_to_not_convert null;
 *   compressed-tensors: one config group "group_0" targeting "Linear",
 *         format "pack-quantized", ignore ["lm_head"], quantization_status
 *         "compressed". */
json_t *hfq_quant_config(const char *format, const json_t *quant_attrs, char **errp);

/* The same from a whole stream manifest: the quantized entries' grids and the
 * 2-D "*.weight" entries left in float (except names containing "embed"),
 * which become: gptq "dynamic" {"-:^X$": {}} skip rules (and "+:^X$"
 * overrides for grids that differ from the most common one); awq
 * modules_to_not_convert (awq refuses several grids); compressed-tensors the
 * ignore list (several grids become several config groups targeting module
 * names). NULL + *errp if no entry is quantized or a grid does not fit. */
json_t *hfq_quant_config_manifest(const char *format, const json_t *manifest, char **errp);

/* Extra carried file the format writes beside config.json, with the same
 * quantization_config content: "quantize_config.json" for gptq, else NULL. */
const char *hfq_extra_config_name(const char *format);

/* If plain's carried config.json (or, for old AutoGPTQ checkpoints,
 * quantize_config.json) has a quantization_config with quant_method "gptq",
 * "awq" or "compressed-tensors", return a source over plain (which it then
 * owns and closes) listing each packed group as one quantized tensor
 * "X.weight" in the qstream form (placed where its first stored tensor was;
 * g_idx kept only when it is not c / group), the rest unchanged. Reading such
 * a tensor reads its stored tensors through plain in plain's order and
 * unpacks them whole (memory: the unpacked tensor, kept until another one is
 * read). Sequential plain sources (archives): nothing is read ahead at open,
 * so g_idx is kept exactly when the config says act order (and checked to be
 * c / group otherwise), and d_in comes from weight_packed / weight_g_idx
 * (weight_shape is checked when unpacking); a module's stored tensors are not
 * adjacent in a safetensors file (I32 before F16), so unpacking one skips
 * ahead and the archive reader reopens for the next tensor: correct but slow.
 * Wrapping a wrapped source returns it unchanged (meta "hf_quant_method").
 * Returns plain itself when it is not a quantized checkpoint of these
 * methods. NULL + *errp (plain left open, still the caller's) for a bad or
 * unsupported config (awq other than gemm, compressed-tensors formats other
 * than pack-quantized, non-int types) or inconsistent packed tensors. */
qsrc   *hfq_wrap_source(qsrc *plain, char **errp);

#endif
