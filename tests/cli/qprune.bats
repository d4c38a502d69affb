#!/usr/bin/env bats
# tests: qprune
# requires: qcat, qpack, qeval, qgptq, python3 (standard library only); qcal for the
#   Wanda/SparseGPT tests (they skip while qcal is not built; QPRUNE_STATS=FILE
#   supplies a stats file instead)
#
# End to end on tests/data/ts3m-bf16 (4 layers, hidden 256, MLP 768, 8 heads in
# 4 key/value groups). Sparsity is checked on qpack's safetensors output by an
# independent Python reader; perplexities come from qeval on eval.txt.

load helpers

# helpers' setup() moves into the test's scratch dir; these tests run from the root.
setup() {
    T="$BATS_TEST_TMPDIR"
    cd "$ROOT" || return 1
}

setup_file() {
    export TMP="$BATS_FILE_TMPDIR"
    qcat tests/data/ts3m-bf16 > "$TMP/ts3m.qs"
    if [ -n "${QPRUNE_STATS:-}" ]; then
        cp "$QPRUNE_STATS" "$TMP/cal.qs"
    elif command -v qcal >/dev/null; then
        qcal tests/data/ts3m-bf16 --text "$CALIB_TEXT" -o "$TMP/cal.qs"
    fi
}

need_stats() {
    [ -s "$TMP/cal.qs" ] || skip "qcal is not built yet (no calibration statistics)"
}

# check_sparsity OUT.safetensors MODE [SKIP_REGEX [ONLY_REGEX]]: every linear
# weight of the decoder blocks (those matching ONLY_REGEX, if given) has, per
# row, exactly round(r*cols) zeros (MODE "r=0.5"), or exactly M-N zeros in
# every run of M inputs (MODE "nm=2:4"), or at least that many ("nm>=2:4",
# after quantization); linears matching SKIP_REGEX and every non-linear tensor
# equal the input's; other linears are not looked at.
check_sparsity() {
    python3 - "$ROOT/tests/data/ts3m-bf16/model.safetensors" "$1" "$2" "${3:-^$}" "${4:-.}" <<'EOF'
import json, math, re, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
    out = {}
    for k, e in h.items():
        if k == '__metadata__': continue
        a, z = e['data_offsets']; raw = b[8 + n + a:8 + n + z]
        out[k] = (e['dtype'], e['shape'], raw)
    return out
def zero_flags(dt, raw):
    if dt == 'BF16' or dt == 'F16':
        return [(v & 0x7fff) == 0 for v in struct.unpack('<%dH' % (len(raw) // 2), raw)]
    return [v == 0.0 for v in struct.unpack('<%df' % (len(raw) // 4), raw)]
src, out, mode = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3]
skip, only = re.compile(sys.argv[4]), re.compile(sys.argv[5])
lin = re.compile(r'\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$')
assert sorted(src) == sorted(out), "tensor names differ"
checked = 0
for k in src:
    if not lin.search(k) or skip.search(k):
        assert src[k][2] == out[k][2], k + " changed"
        continue
    if not only.search(k): continue
    dt, (rows, cols), raw = out[k]
    z = zero_flags(dt, raw)
    for r in range(rows):
        row = z[r * cols:(r + 1) * cols]
        if mode.startswith('r='):
            want = math.floor(float(mode[2:]) * cols + 0.5)
            assert sum(row) == want, "%s row %d: %d zeros, want %d" % (k, r, sum(row), want)
        else:
            n, m = map(int, mode.split('=')[1].split(':'))
            for c in range(0, cols, m):
                zc = sum(row[c:c + m])
                ok = zc >= m - n if mode.startswith('nm>=') else zc == m - n
                assert ok, "%s row %d cols %d..: %d zeros in %d" % (k, r, c, zc, m)
    checked += 1
assert checked == sum(1 for k in src if lin.search(k) and only.search(k) and not skip.search(k)), checked
assert checked > 0
print("checked %d tensors" % checked)
EOF
}

ppl() {
    qeval "$1" --text "$EVAL_TEXT" --json | python3 -c 'import json,sys; print("%.6f" % json.load(sys.stdin)["ppl"])'
}

# ppl_between P LO HI: dense·LO < P < dense·HI, dense = the unpruned model's
# perplexity on the same $EVAL_TEXT (14.354144 on eval.txt)
ppl_between() {
    [ -s "$TMP/dense.ppl" ] || ppl tests/data/ts3m-bf16 > "$TMP/dense.ppl"
    python3 -c 'import sys; p, d, lo, hi = map(float, sys.argv[1:]); sys.exit(0 if d * lo < p < d * hi else 1)' \
        "$1" "$(cat "$TMP/dense.ppl")" "$2" "$3"
}

# --- exact sparsity (acceptance 1) ---------------------------------------------

@test "qprune --magnitude zeroes exactly half of every row and nothing else" {
    qprune --magnitude --sparsity 0.5 < "$TMP/ts3m.qs" | qpack -o "$TMP/mag50.safetensors"
    check_sparsity "$TMP/mag50.safetensors" r=0.5
}

@test "qprune --magnitude --nm 2:4 keeps exactly 2 of every 4 inputs" {
    qprune --magnitude --nm 2:4 < "$TMP/ts3m.qs" | qpack -o "$TMP/mag24.safetensors"
    check_sparsity "$TMP/mag24.safetensors" nm=2:4
}

@test "qprune --magnitude 4:8 and an odd ratio are exact too" {
    qprune --magnitude 4:8 < "$TMP/ts3m.qs" | qpack -o "$TMP/mag48.safetensors"
    check_sparsity "$TMP/mag48.safetensors" nm=4:8
    qprune --magnitude --sparsity 0.3 < "$TMP/ts3m.qs" | qpack -o "$TMP/mag30.safetensors"
    check_sparsity "$TMP/mag30.safetensors" r=0.3
}

@test "qprune --wanda and --sparsegpt give exact per-row and 2:4 sparsity on the fixture" {
    need_stats
    for m in wanda sparsegpt; do
        qprune --$m --sparsity 0.5 --stats "$TMP/cal.qs" < "$TMP/ts3m.qs" | qpack -o "$TMP/$m-50.safetensors"
        check_sparsity "$TMP/$m-50.safetensors" r=0.5
        qprune --$m 2:4 --stats "$TMP/cal.qs" < "$TMP/ts3m.qs" | qpack -o "$TMP/$m-24.safetensors"
        check_sparsity "$TMP/$m-24.safetensors" nm=2:4
    done
}

@test "qprune --skip leaves the matching weights untouched" {
    qprune --magnitude --skip '*.mlp.down_proj.weight' < "$TMP/ts3m.qs" | qpack -o "$TMP/skip.safetensors"
    check_sparsity "$TMP/skip.safetensors" r=0.5 'down_proj'
}

@test "qprune --sparsity-for sets per-tensor ratios, the last match winning" {
    qprune --magnitude --sparsity 0.5 --sparsity-for '*.self_attn.*=0.25' \
        --sparsity-for '*.self_attn.o_proj.weight=0' < "$TMP/ts3m.qs" | qpack -o "$TMP/sched.safetensors"
    check_sparsity "$TMP/sched.safetensors" r=0.5 '^$' 'mlp'
    check_sparsity "$TMP/sched.safetensors" r=0.25 'o_proj' 'self_attn'
}

@test "qprune output is byte-identical for any thread count" {
    qprune --magnitude --threads 1 < "$TMP/ts3m.qs" > "$TMP/t1.qs"
    qprune --magnitude --threads 3 < "$TMP/ts3m.qs" | cmp - "$TMP/t1.qs"
    [ -s "$TMP/cal.qs" ] || return 0
    qprune --sparsegpt --stats "$TMP/cal.qs" --threads 1 < "$TMP/ts3m.qs" > "$TMP/s1.qs"
    qprune --sparsegpt --stats "$TMP/cal.qs" --threads 4 < "$TMP/ts3m.qs" | cmp - "$TMP/s1.qs"
}

# --- perplexity (acceptance 2) -------------------------------------------------

@test "eval.txt perplexity orders SparseGPT <= Wanda < magnitude at 50 % and at 2:4" {
    skip_under_valgrind "six prunings and six eval.txt perplexities"
    need_stats
    for pat in "--sparsity 0.5" "--nm 2:4"; do
        for m in magnitude wanda sparsegpt; do
            qprune --$m $pat --stats "$TMP/cal.qs" < "$TMP/ts3m.qs" > "$TMP/p-$m.qs"
            eval "p_$m=\$(ppl '$TMP/p-$m.qs')"
        done
        echo "# $pat: magnitude $p_magnitude wanda $p_wanda sparsegpt $p_sparsegpt" >&3
        python3 -c 'import sys; m, w, s = map(float, sys.argv[1:]); sys.exit(0 if s <= w < m else 1)' \
            "$p_magnitude" "$p_wanda" "$p_sparsegpt"
    done
}

# --- structured (acceptance 3) -------------------------------------------------

@test "qprune --structured mlp=0.25 shrinks every MLP and config.json, and qeval runs it" {
    qprune --magnitude --structured mlp=0.25 < "$TMP/ts3m.qs" | qpack -o "$TMP/mlp25"
    python3 - "$TMP/mlp25" <<'EOF'
import json, struct, sys
d = sys.argv[1]; cfg = json.load(open(d + '/config.json'))
assert cfg['intermediate_size'] == 576, cfg['intermediate_size']
assert cfg['num_attention_heads'] == 8 and cfg['num_key_value_heads'] == 4
b = open(d + '/model.safetensors', 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
for l in range(4):
    p = 'model.layers.%d.mlp.' % l
    assert h[p + 'gate_proj.weight']['shape'] == [576, 256]
    assert h[p + 'up_proj.weight']['shape'] == [576, 256]
    assert h[p + 'down_proj.weight']['shape'] == [256, 576]
    assert h['model.layers.%d.self_attn.q_proj.weight' % l]['shape'] == [256, 256]
EOF
    p=$(ppl "$TMP/mlp25")
    echo "# magnitude structured mlp=0.25: ppl $p" >&3
    ppl_between "$p" 1 2.8      # 40 on eval.txt
}

@test "qprune --structured heads=2 removes one key/value group per layer" {
    qprune --magnitude --structured heads=2 < "$TMP/ts3m.qs" | qpack -o "$TMP/h2"
    python3 - "$TMP/h2" <<'EOF'
import json, struct, sys
d = sys.argv[1]; cfg = json.load(open(d + '/config.json'))
assert (cfg['num_attention_heads'], cfg['num_key_value_heads'], cfg['head_dim']) == (6, 3, 32), cfg
assert cfg['intermediate_size'] == 768
b = open(d + '/model.safetensors', 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
for l in range(4):
    p = 'model.layers.%d.self_attn.' % l
    assert h[p + 'q_proj.weight']['shape'] == [192, 256]
    assert h[p + 'k_proj.weight']['shape'] == [96, 256]
    assert h[p + 'v_proj.weight']['shape'] == [96, 256]
    assert h[p + 'o_proj.weight']['shape'] == [256, 192]
EOF
    qeval "$TMP/h2" --text "$EVAL_TEXT" > "$TMP/h2.txt"
    grep -q '^ppl' "$TMP/h2.txt"
}

@test "qprune --wanda --structured keeps the highest-scored channels and prunes the rest unstructured" {
    need_stats
    qprune --wanda --structured mlp=0.25 --sparsity 0.5 --stats "$TMP/cal.qs" < "$TMP/ts3m.qs" \
        | qpack -o "$TMP/both.safetensors"
    python3 - "$TMP/both.safetensors" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
e = h['model.layers.2.mlp.down_proj.weight']; assert e['shape'] == [256, 576]
a, z = e['data_offsets']; v = struct.unpack('<%dH' % ((z - a) // 2), b[8 + n + a:8 + n + z])
for r in range(256):
    assert sum((x & 0x7fff) == 0 for x in v[r * 576:(r + 1) * 576]) == 288
EOF
}

# --- the chain (acceptance 4) --------------------------------------------------

@test "qprune --wanda --nm 2:4 | qgptq --bits 4 | qpack stays 2:4 sparse" {
    need_stats
    qprune --wanda --nm 2:4 --stats "$TMP/cal.qs" < "$TMP/ts3m.qs" \
        | qgptq --bits 4 --group 128 --stats "$TMP/cal.qs" > "$TMP/w24q4.qs"
    qpack --dtype bf16 -o "$TMP/w24q4" < "$TMP/w24q4.qs"
    check_sparsity "$TMP/w24q4/model.safetensors" 'nm>=2:4'
    p=$(ppl "$TMP/w24q4")
    echo "# wanda 2:4 | qgptq 4-bit g128: ppl $p" >&3
    ppl_between "$p" 1 1.75     # 25 on eval.txt
}

@test "qprune --sparsegpt --bits 4 quantizes jointly and keeps 2:4" {
    need_stats
    qprune --sparsegpt 2:4 --bits 4 --group 128 --stats "$TMP/cal.qs" < "$TMP/ts3m.qs" \
        | qpack --dtype bf16 -o "$TMP/sg24q4.safetensors"
    check_sparsity "$TMP/sg24q4.safetensors" 'nm>=2:4'
    # with structured cuts too: quantized parts of the smaller shapes
    qprune --sparsegpt 2:4 --bits 4 --group 64 --structured mlp=0.25,heads=2 --stats "$TMP/cal.qs" \
        < "$TMP/ts3m.qs" | qeval - --text "$EVAL_TEXT" > "$TMP/sg-small.txt"
    grep -q '^ppl' "$TMP/sg-small.txt"
}

@test "the mask travels: qgptq keeps SparseGPT's zeros at zero" {
    need_stats
    qprune --sparsegpt --sparsity 0.6 --stats "$TMP/cal.qs" < "$TMP/ts3m.qs" \
        | qgptq --bits 3 --group 64 --stats "$TMP/cal.qs" | qpack --dtype f32 -o "$TMP/sg60q3.safetensors"
    python3 - "$TMP/sg60q3.safetensors" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
for k, e in h.items():
    if not k.endswith('proj.weight'): continue
    rows, cols = e['shape']; a, z = e['data_offsets']
    v = struct.unpack('<%df' % (rows * cols), b[8 + n + a:8 + n + z])
    for r in range(rows):
        zc = sum(x == 0.0 for x in v[r * cols:(r + 1) * cols])
        assert zc >= round(0.6 * cols), (k, r, zc)
EOF
}

# --- refusals --------------------------------------------------------------------

@test "qprune refuses a sparsity outside 0..1" {
    fails_cleanly "qprune --magnitude --sparsity 1.5 < '$TMP/ts3m.qs'"
    [[ "$ERR" == *--sparsity* ]]
}

@test "qprune needs exactly one method" {
    fails_cleanly "qprune --sparsity 0.5 < '$TMP/ts3m.qs'"
    [[ "$ERR" == *method* ]]
    fails_cleanly "qprune --magnitude --wanda < '$TMP/ts3m.qs'"
}

@test "qprune --wanda and --sparsegpt need --stats" {
    fails_cleanly "qprune --wanda < '$TMP/ts3m.qs'"
    [[ "$ERR" == *--stats* ]]
    fails_cleanly "qprune --sparsegpt 2:4 < '$TMP/ts3m.qs'"
}

@test "qprune refuses --bits without --sparsegpt and bad N:M" {
    fails_cleanly "qprune --magnitude --bits 4 < '$TMP/ts3m.qs'"
    [[ "$ERR" == *SparseGPT* ]]
    fails_cleanly "qprune --magnitude --nm 4:4 < '$TMP/ts3m.qs'"
    fails_cleanly "qprune --magnitude --nm 2:4 --sparsity 0.5 < '$TMP/ts3m.qs'"
    fails_cleanly "qprune --magnitude --nm 2:4 --per-layer < '$TMP/ts3m.qs'"
}

@test "qprune refuses to split a key/value group" {
    fails_cleanly "qprune --magnitude --structured heads=3 < '$TMP/ts3m.qs'"
    [[ "$ERR" == *"multiple of 2"* ]]
}

@test "qprune refuses an N:M that does not divide the inputs" {
    fails_cleanly "qprune --magnitude --nm 2:7 < '$TMP/ts3m.qs'"
    [[ "$ERR" == *multiple* ]]
}

@test "qprune refuses already quantized weights" {
    qgptq --rtn --bits 4 < "$TMP/ts3m.qs" > "$TMP/rtn4.qs"
    fails_cleanly "qprune --magnitude < '$TMP/rtn4.qs'"
    [[ "$ERR" == *"already quantized"* ]]
}

@test "qprune reports a truncated input stream and leaves a stream the next tool refuses" {
    head -c 100000 "$TMP/ts3m.qs" > "$TMP/trunc.qs"
    run sh -c "qprune --magnitude < '$TMP/trunc.qs' > '$TMP/trunc-out.qs' 2> '$TMP/err'"
    [ "$status" -eq 1 ]
    grep -q '^qprune: stdin: .*truncated' "$TMP/err"
    run sh -c "qpack -o '$TMP/never.safetensors' < '$TMP/trunc-out.qs'"
    [ "$status" -eq 1 ]
    [ ! -e "$TMP/never.safetensors" ]
}
