#!/usr/bin/env bats
# tests: qgptq
# requires: qcat, qpack, python3 (standard library only, to make a tiny model and stats)
#
# A synthetic two-linear "model" and a stats file with one Hessian are made
# in setup_file from a fixed seed; ts3m (tests/data) is used for the RTN runs.

load helpers       # the tools on PATH (under valgrind with VALGRIND=1)
setup() { cd "$ROOT"; }   # this suite names its files from the repository root
QGPTQ=qgptq

setup_file() {
    export TMP="$BATS_FILE_TMPDIR"
    python3 - "$TMP" <<'EOF'
import json, random, struct, sys
d = sys.argv[1]
rnd = random.Random(20240611)
def st_write(path, tensors):
    hdr, blobs, off = {}, [], 0
    for name, shape, vals in tensors:
        b = struct.pack('<%df' % len(vals), *vals)
        hdr[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(hdr, separators=(',', ':')).encode()
    h += b' ' * (-len(h) % 8)
    open(path, 'wb').write(struct.pack('<Q', len(h)) + h + b''.join(blobs))
R, C, N = 16, 64, 256
# correlated inputs: a few latent directions plus noise, uneven channel scales
lat = [[rnd.gauss(0, 1) for _ in range(C)] for _ in range(4)]
scl = [0.3 + 3 * rnd.random() for _ in range(C)]
X = []
for _ in range(N):
    z = [rnd.gauss(0, 1) for _ in range(4)]
    X.append([scl[j] * (sum(z[k] * lat[k][j] for k in range(4)) + 0.3 * rnd.gauss(0, 1)) for j in range(C)])
H = [sum(X[t][i] * X[t][j] for t in range(N)) for i in range(C) for j in range(C)]
W1 = [rnd.gauss(0, 0.05) for _ in range(R * C)]
W2 = [rnd.gauss(0, 0.05) for _ in range(R * C)]
st_write(d + '/model.safetensors', [
    ("model.layers.0.mlp.down_proj.weight", [R, C], W1),
    ("model.layers.0.self_attn.q_proj.weight", [R, C], W2),
    ("model.norm.weight", [C], [1.0 + 0.01 * j for j in range(C)]),
])
st_write(d + '/stats.safetensors', [("model.layers.0.mlp.down_proj.weight.hessian", [C, C], H)])
json.dump({"R": R, "C": C}, open(d + '/dims.json', 'w'))
EOF
    qcat "$TMP/model.safetensors" > "$TMP/model.qs"
    qcat tests/data/ts3m-bf16 > "$TMP/ts3m.qs"
}

# tr((W-Q) H (W-Q)^T) of down_proj for a qpack'd output
proxy_loss() {
    python3 - "$TMP" "$1" <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
    out = {}
    for k, e in h.items():
        if k == '__metadata__': continue
        a, z = e['data_offsets']; raw = b[8 + n + a:8 + n + z]
        out[k] = struct.unpack('<%df' % (len(raw) // 4), raw)
    return out
d = sys.argv[1]
w = load(d + '/model.safetensors'); q = load(sys.argv[2]); H = load(d + '/stats.safetensors')
k = "model.layers.0.mlp.down_proj.weight"; h = H[k + ".hessian"]; C = 64
loss = 0.0
for r in range(16):
    e = [w[k][r * C + j] - q[k][r * C + j] for j in range(C)]
    loss += sum(e[i] * h[i * C + j] * e[j] for i in range(C) for j in range(C))
print("%.9g" % loss)
EOF
}

# Failure: usage or runtime error code (not a signal), a message, no output.
assert_refused() {
    [ "$status" -ne 0 ] && [ "$status" -lt 128 ]
    [ -n "$(cat "$TMP/err")" ]
    [ ! -s "$TMP/out" ]
}

@test "qgptq refuses bits outside 2..8" {
    run sh -c "$QGPTQ --rtn --bits 9 < '$TMP/model.qs' > '$TMP/out' 2> '$TMP/err'"
    assert_refused
    [ "$status" -eq 2 ]
    grep -q -- '--bits' "$TMP/err"
}

@test "qgptq refuses group 0" {
    run sh -c "$QGPTQ --rtn --group 0 < '$TMP/model.qs' > '$TMP/out' 2> '$TMP/err'"
    assert_refused
    [ "$status" -eq 2 ]
}

@test "qgptq needs stats unless --rtn" {
    run sh -c "$QGPTQ --bits 4 < '$TMP/model.qs' > '$TMP/out' 2> '$TMP/err'"
    assert_refused
    grep -q -- '--stats' "$TMP/err"
}

@test "qgptq refuses static groups without act order and nf4 without rtn" {
    run sh -c "$QGPTQ --static-groups --stats '$TMP/stats.safetensors' < '$TMP/model.qs' > '$TMP/out' 2> '$TMP/err'"
    assert_refused
    run sh -c "$QGPTQ --grid nf4 --stats '$TMP/stats.safetensors' < '$TMP/model.qs' > '$TMP/out' 2> '$TMP/err'"
    assert_refused
    grep -q 'rtn' "$TMP/err"
}

@test "qgptq names a weight that has no Hessian in the stats" {
    run sh -c "$QGPTQ --stats '$TMP/stats.safetensors' < '$TMP/model.qs' > '$TMP/out' 2> '$TMP/err'"
    assert_refused
    grep -q "model.layers.0.self_attn.q_proj.weight" "$TMP/err"
    grep -q -- "--skip-missing" "$TMP/err"
}

@test "qgptq --skip-missing leaves weights without stats unquantized and says so" {
    set -o pipefail
    $QGPTQ --skip-missing --stats "$TMP/stats.safetensors" < "$TMP/model.qs" > "$TMP/skip.qs" 2> "$TMP/err"
    grep -q "q_proj.weight': no hessian" "$TMP/err"
    qpack --dtype f32 -o "$TMP/skip.safetensors" < "$TMP/skip.qs"
    # q_proj and the norm are byte-identical to the input, down_proj changed
    python3 - "$TMP" <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: b[8 + n + e['data_offsets'][0]:8 + n + e['data_offsets'][1]] for k, e in h.items() if k != '__metadata__'}
d = sys.argv[1]; a = load(d + '/model.safetensors'); b = load(d + '/skip.safetensors')
assert a["model.layers.0.self_attn.q_proj.weight"] == b["model.layers.0.self_attn.q_proj.weight"]
assert a["model.norm.weight"] == b["model.norm.weight"]
assert a["model.layers.0.mlp.down_proj.weight"] != b["model.layers.0.mlp.down_proj.weight"]
EOF
}

@test "qgptq loss is well below RTN's on a correlated layer" {
    set -o pipefail
    $QGPTQ --bits 3 --group 32 --include '*.down_proj.weight' --stats "$TMP/stats.safetensors" \
        < "$TMP/model.qs" | qpack --dtype f32 -o "$TMP/gptq.safetensors"
    $QGPTQ --rtn --bits 3 --group 32 --include '*.down_proj.weight' \
        < "$TMP/model.qs" | qpack --dtype f32 -o "$TMP/rtn.safetensors"
    g=$(proxy_loss "$TMP/gptq.safetensors")
    r=$(proxy_loss "$TMP/rtn.safetensors")
    echo "gptq $g rtn $r" >&3
    python3 -c "import sys; g, r = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if 0 < g < 0.8 * r else 1)" "$g" "$r"
}

@test "qgptq output is byte-identical for --threads 1 and 2" {
    $QGPTQ --threads 1 --act-order --sym --include '*.down_proj.weight' --stats "$TMP/stats.safetensors" \
        < "$TMP/model.qs" > "$TMP/t1.qs"
    $QGPTQ --threads 2 --act-order --sym --include '*.down_proj.weight' --stats "$TMP/stats.safetensors" \
        < "$TMP/model.qs" > "$TMP/t2.qs"
    cmp "$TMP/t1.qs" "$TMP/t2.qs"
    $QGPTQ --rtn --threads 1 < "$TMP/ts3m.qs" > "$TMP/r1.qs"
    $QGPTQ --rtn --threads 2 < "$TMP/ts3m.qs" > "$TMP/r2.qs"
    cmp "$TMP/r1.qs" "$TMP/r2.qs"
}

@test "qgptq --rtn quantizes only the decoder linears of ts3m" {
    set -o pipefail
    $QGPTQ --rtn --bits 4 --group 128 < "$TMP/ts3m.qs" | qpack --dtype f32 -o "$TMP/ts3m-rtn.safetensors"
    python3 - "$TMP/ts3m-rtn.safetensors" tests/data/ts3m-bf16/model.safetensors <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
    out = {}
    for k, e in h.items():
        if k == '__metadata__': continue
        raw = b[8 + n + e['data_offsets'][0]:8 + n + e['data_offsets'][1]]
        if e['dtype'] == 'BF16':
            raw = b''.join(b'\0\0' + raw[i:i + 2] for i in range(0, len(raw), 2))
        out[k] = struct.unpack('<%df' % (len(raw) // 4), raw)
    return out
q = load(sys.argv[1]); w = load(sys.argv[2])
lin = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
assert set(q) == set(w)
for k in w:
    if any(x in k for x in lin):
        assert q[k] != w[k], k
        # 4-bit asym, group 128: at most 16 distinct values per (row, group)
        assert len(set(q[k][:128])) <= 16, k
        assert max(abs(a - b) for a, b in zip(q[k], w[k])) < 0.02, k
    else:
        assert q[k] == w[k], k
EOF
}

@test "qgptq records itself in the provenance and the quant grid in the manifest" {
    $QGPTQ --rtn --bits 8 --group -1 --sym < "$TMP/model.qs" > "$TMP/p.qs"
    head -c 4096 "$TMP/p.qs" | grep -a -q 'qgptq'
    head -c 4096 "$TMP/p.qs" | grep -a -q 'scheme'
}

@test "qgptq reports a truncated input stream and writes no end record" {
    head -c 3000 "$TMP/model.qs" > "$TMP/trunc.qs"
    run sh -c "$QGPTQ --rtn < '$TMP/trunc.qs' > '$TMP/out' 2> '$TMP/err'"
    [ "$status" -ne 0 ] && [ "$status" -lt 128 ]
    grep -q 'stdin' "$TMP/err"
}

@test "qgptq nf4 and fp8 grids round-trip through qpack" {
    set -o pipefail
    $QGPTQ --rtn --grid nf4 --group 64 < "$TMP/model.qs" | qpack --dtype f32 -o "$TMP/nf4.safetensors"
    $QGPTQ --rtn --grid fp8_e4m3 < "$TMP/model.qs" | qpack --dtype f32 -o "$TMP/fp8.safetensors"
    [ -s "$TMP/nf4.safetensors" ] && [ -s "$TMP/fp8.safetensors" ]
}

@test "qgptq --grid q4_0 writes llama.cpp blocks with a lower loss than llama-quantize's rounding" {
    set -o pipefail
    $QGPTQ --grid q4_0 --include '*.down_proj.weight' --stats "$TMP/stats.safetensors" \
        < "$TMP/model.qs" | qpack --dtype f32 -o "$TMP/gq4.safetensors"
    $QGPTQ --rtn --grid q4_0 --include '*.down_proj.weight' \
        < "$TMP/model.qs" | qpack --dtype f32 -o "$TMP/rq4.safetensors"
    g=$(proxy_loss "$TMP/gq4.safetensors")
    r=$(proxy_loss "$TMP/rq4.safetensors")
    echo "q4_0 gptq $g rtn $r" >&3
    python3 -c "import sys; g, r = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if 0 < g < 0.8 * r else 1)" "$g" "$r"
}

@test "qgptq refuses act order and groups on GGUF grids" {
    run sh -c "$QGPTQ --grid q4_0 --act-order --stats '$TMP/stats.safetensors' < '$TMP/model.qs' > '$TMP/out' 2> '$TMP/err'"
    assert_refused
    run sh -c "$QGPTQ --grid q4_0 --group 64 --rtn < '$TMP/model.qs' > '$TMP/out' 2> '$TMP/err'"
    assert_refused
}
