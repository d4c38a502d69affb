#!/usr/bin/env bats
# tests: qcal
# requires: build/tests/test_stats (its --check-file mode holds the float64
#           reference), qcat, qpack, python3 (standard library: st_compare.py)
# Hessians against an independent float64 forward pass, deterministic
# sampling, the stats-stream contract, bad inputs.
load helpers

CHECKER="$ROOT/build/tests/test_stats"

@test "the Hessian of stories260k's last down_proj over greedy.tokens.u32 (--samples all) equals the float64 reference within 1e-4" {
    [ -x "$CHECKER" ] || skip "build/tests/test_stats not built"
    qcal "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" --samples all -o cal.qs
    (cd "$ROOT" && "$CHECKER" --check-file "$T/cal.qs") > check.txt
    grep -q '^ok - check-file' check.txt
}

@test "qcal reads the model as a qstream from stdin and gives the same statistics" {
    [ -x "$CHECKER" ] || skip "build/tests/test_stats not built"
    qcat "$DATA/stories260k" | qcal - --tokens "$DATA/stories260k/greedy.tokens.u32" -o cal.qs
    (cd "$ROOT" && "$CHECKER" --check-file "$T/cal.qs") > check.txt
    grep -q '^ok - check-file' check.txt
}

@test "statistics are identical for every thread count" {
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 4 --seqlen 64 --threads 1 | qpack -o a.safetensors
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 4 --seqlen 64 --threads 2 | qpack -o b.safetensors
    same_tensors a.safetensors b.safetensors
}

@test "--samples N --seed S is deterministic and the seed matters" {
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 3 --seqlen 32 --seed 7 | qpack -o a.safetensors
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 3 --seqlen 32 --seed 7 | qpack -o b.safetensors
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 3 --seqlen 32 --seed 8 | qpack -o c.safetensors
    same_tensors a.safetensors b.safetensors
    ! same_tensors a.safetensors c.safetensors > /dev/null
}

@test "every linear of ts3m has its statistics, shared inputs stored once, n_tokens = windows x seqlen" {
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 5 --seqlen 50 -o cal.qs
    qpack -i cal.qs -o cal.safetensors
    python3 - cal.safetensors <<'EOF'
import json, struct, sys
f = open(sys.argv[1], 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); base = 8 + n
def get(name):
    e = h[name]; f.seek(base + e['data_offsets'][0]); b = f.read(e['data_offsets'][1] - e['data_offsets'][0])
    return e, b
for l in range(4):
    # the stored names (k/v alias q, up aliases gate: checked through qeval below)
    for lin, d in [('self_attn.q_proj', 256), ('self_attn.o_proj', 256), ('mlp.gate_proj', 256),
                   ('mlp.down_proj', 768)]:
        w = 'model.layers.%d.%s.weight' % (l, lin)
        e, b = get(w + '.hessian'); assert e['shape'] == [d, d] and e['dtype'] == 'F32', (w, e)
        e, b = get(w + '.n_tokens'); assert e['dtype'] == 'I64' and struct.unpack('<q', b)[0] == 250, w
        for s in ('x2_mean', 'xabs_mean', 'absmax'):
            assert h[w + '.' + s]['shape'] == [d], (w, s)
        e, b = get(w + '.act_hist'); assert e['shape'] == [2048]
        assert abs(sum(struct.unpack('<2048f', b)) - 1) < 1e-4
e, b = get('lm_head.weight.hessian'); assert e['shape'] == [256, 256]
EOF
    # every linear name resolves in the stream, aliases included: qeval finds a Hessian for all 28
    qeval "$DATA/ts3m-bf16" "$DATA/ts3m-bf16" --stats cal.qs --json > cmp.json
    jq -e '[.tensors[] | select(.name | test("proj")) | select(.proxy_loss == 0)] | length == 28' cmp.json
    jq -e '[.tensors[] | select(.name == "lm_head.weight") | .proxy_loss] == [0]' cmp.json
}

@test "the stream says what it is: kind stats and the sampling used" {
    qcal "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" --samples 2 --seqlen 100 --seed 3 -o cal.qs
    qpack -i cal.qs -o out.safetensors
    # a model is not a stats file, and a stats file is not a model
    fails_cleanly "qeval cal.qs --tokens '$DATA/stories260k/greedy.tokens.u32'"
    [[ "$ERR" == *"kind 'stats'"* ]]
    fails_cleanly "qeval '$DATA/stories260k' '$DATA/stories260k' --stats '$DATA/stories260k/model.safetensors'"
    [[ "$ERR" == *"not a stats"* ]]
}

@test "empty or invalid UTF-8 calibration text fails cleanly and leaves no output" {
    : > empty.txt
    fails_cleanly "qcal '$DATA/ts3m-bf16' --text empty.txt -o cal.qs"
    [[ "$ERR" == "qcal: empty.txt: empty text" ]]
    printf 'ok\xc3(' > bad.txt
    fails_cleanly "qcal '$DATA/ts3m-bf16' --text bad.txt -o cal.qs"
    [[ "$ERR" == "qcal: bad.txt: invalid UTF-8 at byte 2" ]]
    [ ! -e cal.qs ]
    ! ls -a | grep -q 'cal.qs.tmp'
}

@test "bad arguments fail cleanly: too few tokens for --seqlen, no tokenizer, two inputs, a bad model" {
    fails_cleanly "qcal '$DATA/stories260k' --tokens '$DATA/stories260k/greedy.tokens.u32' --samples 4 --seqlen 300 -o cal.qs"
    [[ "$ERR" == *"fewer than --seqlen"* ]]
    [ ! -e cal.qs ]
    fails_cleanly "qcal '$DATA/stories260k' --text '$DATA/text/calib.txt' -o cal.qs"
    fails_cleanly "qcal '$DATA/stories260k' --text a --tokens b"
    fails_cleanly "qcal '$DATA/stories260k' --tokens '$DATA/stories260k/greedy.tokens.u32' --bins 1000"
    fails_cleanly "qcal nonexistent --tokens '$DATA/stories260k/greedy.tokens.u32' -o cal.qs"
    [ ! -e cal.qs ]
}

@test "--stream-layers writes the same statistics as the in-memory run (ts3m random windows, stories260k all, a stdin stream)" {
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 5 --seqlen 80 --seed 2 | qpack -o a.safetensors
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 5 --seqlen 80 --seed 2 --stream-layers --threads 2 | qpack -o b.safetensors
    same_tensors a.safetensors b.safetensors
    qcat "$DATA/ts3m-bf16" | qcal - --text "$DATA/text/calib.txt" --samples 5 --seqlen 80 --seed 2 --stream-layers | qpack -o c.safetensors
    same_tensors a.safetensors c.safetensors
    qcal "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" --seqlen 70 | qpack -o d.safetensors
    qcal "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" --seqlen 70 --stream-layers | qpack -o e.safetensors
    same_tensors d.safetensors e.safetensors
    # a different sampling really is different (the comparison can fail)
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 5 --seqlen 80 --seed 3 --stream-layers | qpack -o f.safetensors
    ! same_tensors a.safetensors f.safetensors > /dev/null
}

@test "--stream-layers passes the float64 Hessian check and names its memory with -v" {
    [ -x "$CHECKER" ] || skip "build/tests/test_stats not built"
    qcal -v "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" --stream-layers -o cal.qs 2> err.txt
    (cd "$ROOT" && "$CHECKER" --check-file "$T/cal.qs") > check.txt
    grep -q '^ok - check-file' check.txt
    grep -q 'with --stream-layers' err.txt
    grep -q 'statistics in memory at most .* MiB (one layer)' err.txt
}

@test "--stream-layers on a truncated stream fails cleanly at the layer it reaches, leaving no output" {
    qcat "$DATA/stories260k" > full.qs
    head -c 600000 full.qs > cut.qs
    fails_cleanly "qcal cut.qs --tokens '$DATA/stories260k/greedy.tokens.u32' --stream-layers -o cal.qs"
    [[ "$ERR" == "qcal: layer 2: "*"truncated"* ]]
    [ ! -e cal.qs ]
    ! ls -a | grep -q 'cal.qs.tmp'
}
