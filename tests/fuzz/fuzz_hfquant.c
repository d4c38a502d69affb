/* fuzz_hfquant — libFuzzer target for packed HF quantized checkpoints
 * (formats/hfquant.c, hfq_wrap_source: GPTQ v1/v2, AWQ gemm,
 * compressed-tensors pack-quantized), reached the way qcat reaches them: a
 * model directory whose config.json has a quantization_config. The input is
 * config.json, a NUL byte, then model.safetensors; both are written to a
 * scratch directory, opened with qsrc_open() and every (unpacked) tensor is
 * read.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul) return 0;
    size_t clen = (size_t)(nul - data);
    char path[512];
    fz_put_file("config.json", data, clen, path, sizeof path);
    fz_put_file("model.safetensors", nul + 1, size - clen - 1, path, sizeof path);
    char *err = NULL;
    qsrc *s = qsrc_open(fz_scratch_dir(), &err);
    fz_check_error(s, err, "qsrc_open(hf quantized dir)");
    if (s) {
        fz_sink += fz_drain_source(s);
        qsrc_close(s);
    }
    return 0;
}
