#!/usr/bin/env bats
# tests: qpack (stats streams), qgptq --stats
# requires: qcal qcat
# A stats stream is an ordinary qstream: qpack stores it as safetensors (shared
# inputs as "alias:" metadata) and every --stats accepts either file.
load helpers

setup_file() {
    cd "$BATS_FILE_TMPDIR"
    qcal "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" --samples all -o cal.qs
    qpack -o cal.safetensors < cal.qs
}

@test "qpack stores shared-input stats as alias metadata, not as copies" {
    python3 - "$BATS_FILE_TMPDIR/cal.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n]); md = h.pop("__metadata__")
k = "alias:model.layers.0.self_attn.k_proj.weight.hessian"
assert md[k] == "model.layers.0.self_attn.q_proj.weight.hessian", md.get(k)
assert "model.layers.0.self_attn.k_proj.weight.hessian" not in h
assert "model.layers.0.self_attn.q_proj.weight.hessian" in h
PY
}

@test "qgptq gives the same result with the stats stream or its safetensors copy" {
    qcat "$DATA/stories260k/model.safetensors" > m.qs
    qgptq --bits 4 --group 32 --stats "$BATS_FILE_TMPDIR/cal.qs" < m.qs > a.qs
    qgptq --bits 4 --group 32 --stats "$BATS_FILE_TMPDIR/cal.safetensors" < m.qs > b.qs
    qpack --dtype f32 -o a.safetensors < a.qs
    qpack --dtype f32 -o b.safetensors < b.qs
    same_tensors a.safetensors b.safetensors
}
