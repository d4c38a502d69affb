#!/usr/bin/env bats
# tests: qpack --format gptq|gptq_v2|awq|compressed-tensors, qcat of those checkpoints
# requires: qcat qgptq
# A packed checkpoint must give back exactly the values qgptq produced.
load helpers

setup_file() {
    cd "$BATS_FILE_TMPDIR"
    qcat "$DATA/ts3m-bf16" > model.qs
    qgptq --rtn --bits 4 --group 128 --f16-scales < model.qs > q4.qs
    qgptq --rtn --bits 4 --group 128 --sym --f16-scales < model.qs > q4sym.qs
    qpack --dtype f32 -o q4.safetensors < q4.qs
}

roundtrip() {   # roundtrip FORMAT STREAM — pack, read back, compare dequantized values
    qpack --format "$1" -o "ck-$1/" < "$BATS_FILE_TMPDIR/$2"
    qcat "ck-$1" | qpack --dtype f32 -o back.safetensors
    qpack --dtype f32 -o want.safetensors < "$BATS_FILE_TMPDIR/$2"
    same_tensors want.safetensors back.safetensors
}

@test "a GPTQ checkpoint dequantizes to exactly qgptq's values" {
    roundtrip gptq q4.qs
}

@test "a gptq_v2 checkpoint dequantizes to exactly qgptq's values" {
    roundtrip gptq_v2 q4.qs
}

@test "an AWQ GEMM checkpoint dequantizes to exactly the stream's values" {
    roundtrip awq q4.qs
}

@test "a compressed-tensors pack-quantized checkpoint dequantizes to exactly the stream's values" {
    roundtrip compressed-tensors q4sym.qs
}

@test "the GPTQ layout is AutoGPTQ's: qweight, qzeros, scales, g_idx and the configs" {
    qpack --format gptq -o ck/ < "$BATS_FILE_TMPDIR/q4.qs"
    python3 - <<'PY'
import json, struct
b = open("ck/model.safetensors", "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n])
p = "model.layers.0.mlp.down_proj."          # d_out 256, d_in 768, group 128
assert h[p + "qweight"]["dtype"] == "I32" and h[p + "qweight"]["shape"] == [768 * 4 // 32, 256], h[p + "qweight"]
assert h[p + "qzeros"]["shape"] == [6, 256 * 4 // 32] and h[p + "scales"]["dtype"] == "F16"
assert h[p + "scales"]["shape"] == [6, 256] and h[p + "g_idx"]["shape"] == [768]
assert p + "weight" not in h and "model.embed_tokens.weight" in h
cfg = json.load(open("ck/config.json"))["quantization_config"]
assert cfg["quant_method"] == "gptq" and cfg["bits"] == 4 and cfg["group_size"] == 128 and cfg["desc_act"] is False
assert json.load(open("ck/quantize_config.json"))["bits"] == 4
assert json.load(open("ck/config.json"))["torch_dtype"] == "float16"
PY
}

@test "qpack refuses scales that are not f16 values, and says what to do" {
    qgptq --rtn --bits 4 --group 128 < "$BATS_FILE_TMPDIR/model.qs" > raw.qs
    fails_cleanly "qpack --format gptq -o ck/ < raw.qs"
    [[ "$ERR" == *f16* ]]
    [ ! -e ck ]
    qpack --format gptq --round-scales -o ck/ < raw.qs
    [ -f ck/model.safetensors ]
}

@test "qpack refuses a quantized stream without --format or --dtype" {
    fails_cleanly "qpack -o out/ < '$BATS_FILE_TMPDIR/q4.qs'"
    [[ "$ERR" == *"--format"* ]]
    [ ! -e out ]
}

@test "writing the dequantized model drops quantization_config from config.json" {
    qpack --format gptq -o ck/ < "$BATS_FILE_TMPDIR/q4.qs"
    qcat ck | qpack --dtype bf16 -o plain/
    python3 -c 'import json; c = json.load(open("plain/config.json")); assert "quantization_config" not in c and c["torch_dtype"] == "bfloat16", c'
}
