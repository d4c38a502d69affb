#!/usr/bin/env bats
# tests: qmix
# requires: qcat, qcal, qpack, qeval, qgptq, python3 (standard library only)
#
# ts3m-bf16 (tests/data), calibrated with qcal on calib.txt ($CALIB_TEXT);
# perplexities on eval.txt ($EVAL_TEXT).
load helpers

setup_file() {
    export TS="$BATS_FILE_TMPDIR"
    qcat "$DATA/ts3m-bf16" > "$TS/bf16.qs"
    qcal "$DATA/ts3m-bf16" --text "$CALIB_TEXT" -q -o "$TS/cal.qs"
}

ppl() {
    qeval "$1" --text "$EVAL_TEXT" --json | python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["ppl"]))'
}

@test "qmix needs exactly one budget" {
    fails_cleanly "qmix --stats '$TS/cal.qs' < '$TS/bf16.qs'"
    fails_cleanly "qmix --stats '$TS/cal.qs' --avg-bits 4 --max-size 3MB < '$TS/bf16.qs'"
    [[ "$ERR" == *"one budget"* ]]
}

@test "qmix refuses a bad menu and names the entry" {
    fails_cleanly "qmix --stats '$TS/cal.qs' --avg-bits 4 --menu 'int:9:32' < '$TS/bf16.qs'"
    [[ "$ERR" == *"int:9:32"* ]]
}

@test "qmix refuses a budget below the smallest allocation" {
    fails_cleanly "qmix --stats '$TS/cal.qs' --avg-bits 2 < '$TS/bf16.qs'"
    [[ "$ERR" == *"below the smallest"* ]]
}

@test "qmix meets the budget exactly: used + slack = budget, exact optimum" {
    qmix --stats "$TS/cal.qs" --avg-bits 3.5 --report rep.txt < "$TS/bf16.qs" > ann.qs
    cat rep.txt >&3
    python3 - <<'EOF'
import re
t = open('rep.txt').read()
b, u, s = map(int, re.search(r'budget: (\d+) bits .*used (\d+), slack (\d+) bits', t).groups())
assert u <= b and u + s == b, (b, u, s)
w = int(re.search(r'total: (\d+) weights', t).group(1))
assert b == int(3.5 * w), (b, w)
assert 'exact optimum' in t
rows = [l for l in t.splitlines() if l.startswith('model.layers.')]
assert len(rows) == 28, len(rows)
EOF
}

@test "qmix without --apply only annotates: the weights are unchanged" {
    qmix --stats "$TS/cal.qs" --avg-bits 3.5 -q < "$TS/bf16.qs" > ann.qs
    head -c 65536 ann.qs | grep -a -q 'qmix'
    qpack -o a.safetensors < ann.qs
    qpack -o b.safetensors < "$TS/bf16.qs"
    same_tensors a.safetensors b.safetensors
}

@test "at 3.5 bits/weight qmix beats the uniform RTN settings that fit the same budget" {
    skip_under_valgrind "three eval.txt perplexities"
    qmix --stats "$TS/cal.qs" --avg-bits 3.5 --apply -q < "$TS/bf16.qs" > mix.qs
    qgptq --rtn --bits 3 --group 64 < "$TS/bf16.qs" > u3g64.qs     # 3 + 32/64 = 3.5 bits/weight
    qgptq --rtn --bits 3 --group 128 < "$TS/bf16.qs" > u3g128.qs   # 3.25
    m=$(ppl mix.qs); a=$(ppl u3g64.qs); b=$(ppl u3g128.qs)
    echo "qmix 3.5: $m  uniform int3g64 (3.5): $a  int3g128 (3.25): $b" >&3
    python3 -c "import sys; m, a, b = map(float, sys.argv[1:]); sys.exit(0 if m < a and m < b else 1)" "$m" "$a" "$b"
}

@test "qmix --measure-text (KL-calibrated estimates, calibration text) also beats uniform int3g64 at 3.5 bits" {
    skip_under_valgrind "2048 measured tokens per tensor and two eval.txt perplexities"
    qmix --stats "$TS/cal.qs" --avg-bits 3.5 --apply -q --measure-text "$CALIB_TEXT" --measure-len 2048 \
        --report rep.txt < "$TS/bf16.qs" > mixm.qs
    grep -q 'exact optimum' rep.txt
    qgptq --rtn --bits 3 --group 64 < "$TS/bf16.qs" > u3g64.qs
    m=$(ppl mixm.qs); a=$(ppl u3g64.qs)
    echo "qmix --measure 3.5: $m  uniform int3g64: $a" >&3
    python3 -c "import sys; m, a = map(float, sys.argv[1:]); sys.exit(0 if m < a else 1)" "$m" "$a"
}

@test "qmix --measure-text on a short text still meets the budget exactly" {
    head -c 4000 "$CALIB_TEXT" > short.txt
    qmix --stats "$TS/cal.qs" --avg-bits 3.5 -q --measure-text short.txt --measure-len 256 \
        --report rep.txt < "$TS/bf16.qs" > m.qs
    python3 - <<'EOF'
import re
t = open('rep.txt').read()
b, u, s = map(int, re.search(r'budget: (\d+) bits .*used (\d+), slack (\d+) bits', t).groups())
assert u <= b and u + s == b, (b, u, s)
assert 'exact optimum' in t
EOF
}

@test "qmix --measure-text refuses a text and token file together" {
    fails_cleanly "qmix --stats '$TS/cal.qs' --avg-bits 4 --measure-text a --measure-tokens b < '$TS/bf16.qs'"
}

@test "qmix --max-size counts the other tensors at their stream size" {
    qmix --stats "$TS/cal.qs" --max-size 4MB --report rep.txt < "$TS/bf16.qs" > /dev/null
    grep -q 'max-size minus other tensors' rep.txt
    # 4e6 bytes minus embed_tokens, lm_head and the norms (bf16: 2 x 524288 + 9 x 512 bytes)
    python3 -c "
import re; t = open('rep.txt').read()
b = int(re.search(r'budget: (\d+) bits', t).group(1))
assert b == (4000000 - (2 * 524288 + 9 * 512)) * 8, b"
}

@test "qmix output is byte-identical for --threads 1 and 2" {
    qmix --stats "$TS/cal.qs" --avg-bits 4 --apply -q --threads 1 < "$TS/bf16.qs" > t1.qs
    qmix --stats "$TS/cal.qs" --avg-bits 4 --apply -q --threads 2 < "$TS/bf16.qs" > t2.qs
    cmp t1.qs t2.qs
}

@test "qmix outlier settings keep f16 columns: --apply writes the dequantized values with their columns" {
    qmix --stats "$TS/cal.qs" --avg-bits 5 --menu 'int:3:128:16' --apply -q \
        --include '*.layers.0.mlp.down_proj.weight' < "$TS/bf16.qs" > o.qs
    grep -a -q 'outlier_cols' o.qs
    grep -a -q 'fake_quant' o.qs
    qpack -o o.safetensors < o.qs
    qpack -o b.safetensors < "$TS/bf16.qs"
    python3 - <<'EOF2'
import json, struct
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
    e = h['model.layers.0.mlp.down_proj.weight']; a, z = e['data_offsets']; raw = b[8 + n + a:8 + n + z]
    if e['dtype'] == 'F32': return e['shape'], struct.unpack('<%df' % (len(raw) // 4), raw)
    return e['shape'], [struct.unpack('<f', b'\0\0' + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
(r, c), q = load('o.safetensors'); _, w = load('b.safetensors')
exact = [j for j in range(c) if all(q[i * c + j] == w[i * c + j] for i in range(r))]
assert len(exact) >= 16, len(exact)   # bf16 values are f16-exact here: 16 columns kept as they were
assert len(exact) < 40, len(exact)
EOF2
}

@test "qgptq honours qmix's per-tensor settings: qmix | qgptq --rtn equals qmix --apply" {
    qcal "$DATA/ts3m-bf16" --text "$CALIB_TEXT" --samples 8 --seqlen 128 -o cm.qs
    qcat "$DATA/ts3m-bf16" | qmix --avg-bits 3.5 --stats cm.qs 2>/dev/null > mix.qs
    qgptq --rtn < mix.qs | qpack --dtype f32 -o a.safetensors
    qcat "$DATA/ts3m-bf16" | qmix --avg-bits 3.5 --stats cm.qs --apply 2>/dev/null | qpack --dtype f32 -o b.safetensors
    same_tensors a.safetensors b.safetensors
}
