#!/usr/bin/env bats
# tests: the Makefile recipes in pipelines/ (docs/recipes.md's gallery): each
# recipe's output checked against the tools run by hand or an independent
# reader (tests/tools/gguf_facts.py, gguf_cmp.py, st_compare.py, python
# below); incremental rebuilds (a second run does nothing, touching an input
# re-runs exactly the steps that depend on it, changed options rebuild);
# make -n; provenance; inclusion of several recipes in one Makefile; outputs
# byte-identical for THREADS=1 and 2, run twice.
# requires: make, python3; the tools in bin/
load helpers

R="$ROOT/pipelines"

setup() {
    T="$BATS_TEST_TMPDIR"
    cd "$T" || return 1
    # a short evaluation: 512 tokens, 4 windows of 128
    head -c 2048 "$DATA/text/eval.tokens.u32" > ev.u32
    # the recipes use a copy of the tools: a tool relinked meanwhile in bin/ would
    # (rightly) make them rebuild. Under VALGRIND=1, copies of the memcheck
    # wrappers (helpers.bash), so the recipes' tools run under valgrind too.
    mkdir bin; cp "${VALGRIND_BIN:-$ROOT/bin}"/{qcat,qcal,qgptq,qpack,qeval,qprune,qawq,qmix} bin/
    knobs=(MODEL="$DATA/ts3m-bf16" TEXT="$DATA/text/calib.txt" EVAL=ev.u32
           "CAL_OPTS=--samples 8 --seqlen 128" "EVAL_OPTS=--ctx 128" THREADS=2 QPIPE_BIN="$T/bin")
}

# recipe NAME [VAR=value...]: run pipelines/NAME.mk quietly with the test knobs
recipe() { local r=$1; shift; make -s -f "$R/$r.mk" "${knobs[@]}" "$@"; }

facts() { python3 "$ROOT/tests/tools/gguf_facts.py" "$@"; }

# changed DIR: the outputs (not the option stamps) newer than the file "mark"
changed() {
    (cd "$1" && find . -newer ../mark -type f ! -name '*.opts' | sed 's|^\./||; s|^model/.*|model/|; s|^\.qpipe/model\.done$|model/|' | sort -u | xargs)
}
mark() { sleep 0.01; touch mark; sleep 0.01; }

# ftype FILE.gguf: its general.file_type (llama_ftype: 2 Q4_0, 7 Q8_0, 8 Q5_0, 15 Q4_K_M)
ftype() { facts "$1" --kv | sed -n 's/^kv general.file_type 4 //p'; }

# ppl_within OUT PCT: report.txt's output perplexity is within PCT % of the model's
ppl_within() {
    awk -v pct="$2" '$1 == "ppl" && $2 == "model" { b = $3 } $1 == "ppl" && $2 == "output" { q = $3 }
        END { if (!(b > 0 && q > 0 && q < b * (1 + pct / 100))) { print "ppl " b " -> " q; exit 1 } }' "$1/report.txt"
}

# embedded_prov FILE: the qpipe.provenance JSON, read independently of the recipe
embedded_prov() {
    case "$1" in
        *.gguf) facts "$1" --kv | sed -n "s/^kv qpipe.provenance 8 '\(.*\)'$/\1/p" ;;
        *) python3 -c 'import json,struct,sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]
print(json.loads(f.read(n))["__metadata__"]["qpipe.provenance"])' "$1" ;;
    esac
}

@test "rtn-gguf: the GGUF equals qcat | qpack --gguf q4_0 run by hand; report and provenance" {
    recipe rtn-gguf OUT=out > log
    qcat "$DATA/ts3m-bf16" | qpack --gguf q4_0 -o hand.gguf
    python3 "$ROOT/tests/tools/gguf_cmp.py" out/model.gguf hand.gguf | grep -q '^39/39 tensors identical'
    [ "$(ftype out/model.gguf)" = 2 ]           # LLAMA_FTYPE_MOSTLY_Q4_0
    # report: sizes of the weight files and both perplexities
    grep -q "^bytes model   $(stat -c %s "$DATA/ts3m-bf16/model.safetensors")$" out/report.txt
    grep -q "^bytes output  $(stat -c %s out/model.gguf) (" out/report.txt
    grep -qE '^ppl model     [0-9]+\.[0-9]+$' out/report.txt
    ppl_within out 5
    # provenance: embedded by qpack (read with gguf_facts.py), and in provenance.txt
    embedded_prov out/model.gguf > prov.json
    python3 - <<'PY'
import json
p = json.load(open("prov.json"))
assert [e["prog"] for e in p] == ["qcat", "qpack"], p
assert p[1]["args"] == ["--gguf", "q4_0", "-o", "out/model.gguf"], p
PY
    grep -q "^qpack (qpipe) [0-9.]*  $T/bin/qpack$" out/provenance.txt
    grep -q "^model.gguf: $T/bin/qcat $DATA/ts3m-bf16 | $T/bin/qpack --gguf q4_0 -o out/model.gguf$" out/provenance.txt
    grep -q '^qpack 0.1.0: --gguf q4_0 -o out/model.gguf$' out/provenance.txt
}

@test "rtn-gguf: a second run does nothing; TYPE=q8_0 re-runs only the model and what reads it" {
    recipe rtn-gguf OUT=out > /dev/null
    mark
    make -q -f "$R/rtn-gguf.mk" "${knobs[@]}" OUT=out
    run make -f "$R/rtn-gguf.mk" "${knobs[@]}" OUT=out
    [ "$status" -eq 0 ]
    [ "$output" = "make: Nothing to be done for 'rtn-gguf'." ]
    [ "$(changed out)" = "" ]
    # THREADS is not an option that rebuilds (outputs are identical for any N)
    make -q -f "$R/rtn-gguf.mk" "${knobs[@]}" OUT=out THREADS=1
    recipe rtn-gguf OUT=out TYPE=q8_0 > /dev/null
    [ "$(changed out)" = "eval-output.txt model.gguf provenance.txt report.txt" ]
    [ "$(ftype out/model.gguf)" = 7 ]           # MOSTLY_Q8_0
    ppl_within out 1
}

@test "gptq-gguf: touching an input re-runs exactly the steps that depend on it" {
    cp -a "$DATA/ts3m-bf16" m
    cp "$DATA/text/calib.txt" calib.txt
    knobs+=(MODEL=m TEXT=calib.txt)
    recipe gptq-gguf OUT=out > /dev/null
    all="cal.qs eval-model.txt eval-output.txt model.gguf provenance.txt report.txt"
    mark; touch calib.txt; recipe gptq-gguf OUT=out > /dev/null
    [ "$(changed out)" = "cal.qs eval-output.txt model.gguf provenance.txt report.txt" ]
    mark; touch ev.u32; recipe gptq-gguf OUT=out > /dev/null
    [ "$(changed out)" = "eval-model.txt eval-output.txt provenance.txt report.txt" ]
    mark; touch bin/qgptq; recipe gptq-gguf OUT=out > /dev/null
    [ "$(changed out)" = "eval-output.txt model.gguf provenance.txt report.txt" ]
    mark; touch bin/qcal; recipe gptq-gguf OUT=out > /dev/null
    [ "$(changed out)" = "cal.qs eval-output.txt model.gguf provenance.txt report.txt" ]
    mark; touch m/config.json; recipe gptq-gguf OUT=out > /dev/null
    [ "$(changed out)" = "$all" ]
    mark; recipe gptq-gguf OUT=out "CAL_OPTS=--samples 8 --seqlen 64" > /dev/null
    [ "$(changed out)" = "cal.qs eval-output.txt model.gguf provenance.txt report.txt" ]
    mark; recipe gptq-gguf OUT=out "CAL_OPTS=--samples 8 --seqlen 64" "EVAL_OPTS=--ctx 64" > /dev/null
    [ "$(changed out)" = "eval-model.txt eval-output.txt provenance.txt report.txt" ]
    # an option of the quantizer; then back to the old value rebuilds again
    mark; recipe gptq-gguf OUT=out "CAL_OPTS=--samples 8 --seqlen 64" "EVAL_OPTS=--ctx 64" GPTQ_GGUF_TYPE=q5_0 > /dev/null
    [ "$(changed out)" = "eval-output.txt model.gguf provenance.txt report.txt" ]
    [ "$(ftype out/model.gguf)" = 8 ]           # MOSTLY_Q5_0
    mark; recipe gptq-gguf OUT=out "CAL_OPTS=--samples 8 --seqlen 64" "EVAL_OPTS=--ctx 64" > /dev/null
    [ "$(changed out)" = "eval-output.txt model.gguf provenance.txt report.txt" ]
    [ "$(ftype out/model.gguf)" = 2 ]
    ls out/.qpipe/model.*.opts | wc -l | grep -qx 1                            # one stamp per step
    mark; run make -f "$R/gptq-gguf.mk" "${knobs[@]}" OUT=out "CAL_OPTS=--samples 8 --seqlen 64" "EVAL_OPTS=--ctx 64"
    [ "$output" = "make: Nothing to be done for 'gptq-gguf'." ]
    [ "$(changed out)" = "" ]
}

@test "gptq-gguf: the GGUF equals the pipeline run by hand; a failing step leaves no output" {
    recipe gptq-gguf OUT=out > /dev/null
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 8 --seqlen 128 -o cal.qs
    qpack -i cal.qs -o a.safetensors; qpack -i out/cal.qs -o b.safetensors
    same_tensors a.safetensors b.safetensors
    qcat "$DATA/ts3m-bf16" | qgptq --grid q4_0 --stats cal.qs | qpack --gguf q4_0 -o hand.gguf
    python3 "$ROOT/tests/tools/gguf_cmp.py" out/model.gguf hand.gguf | grep -q '^39/39 tensors identical'
    ppl_within out 5
    # qgptq refuses --act-order with GGUF grids: make fails, no model.gguf
    run make -f "$R/gptq-gguf.mk" "${knobs[@]}" OUT=bad GPTQ_GGUF_GPTQ_OPTS=--act-order
    [ "$status" -ne 0 ]
    [[ "$output" == *"qgptq: --act-order"* ]]
    [ ! -e bad/model.gguf ]
}

@test "make -n prints the plan and writes nothing; MODEL unset is a clear error" {
    run make -n -f "$R/gptq-gguf.mk" "${knobs[@]}" OUT=out
    [ "$status" -eq 0 ]
    [[ "$output" == *"$T/bin/qcal $DATA/ts3m-bf16 --text $DATA/text/calib.txt --samples 8 --seqlen 128 --threads 2 -o out/cal.qs"* ]]
    [[ "$output" == *"$T/bin/qcat $DATA/ts3m-bf16 | $T/bin/qgptq --grid q4_0"*"--stats out/cal.qs --threads 2 | $T/bin/qpack --gguf q4_0"*"-o out/model.gguf"* ]]
    [[ "$output" == *"$T/bin/qeval out/model.gguf --tokens ev.u32 --ctx 128 --threads 2"* ]]
    [ ! -e out ]
    run make -s -f "$R/rtn-gguf.mk" OUT=out
    [ "$status" -ne 0 ]
    [[ "$output" == *"rtn-gguf.mk: set MODEL=path"* ]]
    run make -s -f "$R/gptq-gguf.mk" MODEL="$DATA/ts3m-bf16" OUT=out
    [ "$status" -ne 0 ]
    [[ "$output" == *"gptq-gguf.mk: set TEXT=calib.txt"* ]]
    [ ! -e out/cal.qs ]
    # up to date: the plan is empty
    recipe rtn-gguf OUT=done > /dev/null
    run make -n -f "$R/rtn-gguf.mk" "${knobs[@]}" OUT=done
    [ "$output" = "make: Nothing to be done for 'rtn-gguf'." ]
    # clean removes what the recipe made
    make -s -f "$R/rtn-gguf.mk" "${knobs[@]}" OUT=done clean
    [ ! -e done ]
}

@test "imatrix-gguf: q4_k_m weighted by the stats differs from plain q4_k_m and equals qpack --stats by hand" {
    recipe imatrix-gguf OUT=out > /dev/null
    [ "$(ftype out/model.gguf)" = 15 ]          # MOSTLY_Q4_K_M
    qcat "$DATA/ts3m-bf16" | qpack --gguf q4_k_m --stats out/cal.qs -o hand.gguf
    python3 "$ROOT/tests/tools/gguf_cmp.py" out/model.gguf hand.gguf | grep -q '^39/39 tensors identical'
    qcat "$DATA/ts3m-bf16" | qpack --gguf q4_k_m -o plain.gguf
    same=$(python3 "$ROOT/tests/tools/gguf_cmp.py" out/model.gguf plain.gguf | sed -n 's|^\([0-9]*\)/39 .*|\1|p')
    [ "$same" -lt 30 ]                      # the quantized tensors differ (norms are f32 in both)
    embedded_prov out/model.gguf | grep -q '"--stats","out/cal.qs"'
    ppl_within out 3
}

@test "gptq-w4g128: a GPTQ checkpoint (4 bits, groups of 128) that qcat reads back" {
    recipe gptq-w4g128 OUT=out > /dev/null
    python3 - <<'PY'
import json, struct
cfg = json.load(open("out/model/config.json"))["quantization_config"]
assert cfg["quant_method"] == "gptq" and cfg["bits"] == 4 and cfg["group_size"] == 128, cfg
f = open("out/model/model.safetensors", "rb"); n = struct.unpack("<Q", f.read(8))[0]
h = json.loads(f.read(n))
q = h["model.layers.0.mlp.down_proj.qweight"]          # [in/8, out] int32, 8 codes each
assert q["dtype"] == "I32" and q["shape"] == [768 // 8, 256], q
assert h["model.layers.0.mlp.down_proj.scales"]["shape"] == [768 // 128, 256]
prov = json.loads(h["__metadata__"]["qpipe.provenance"])
assert [e["prog"] for e in prov] == ["qcat", "qgptq", "qpack"], prov
assert prov[1]["args"] == ["--bits", "4", "--group", "128", "--f16-scales", "--stats", "out/cal.qs"], prov
PY
    ppl_within out 5
    qcat out/model --list > list
    grep -q '^model.layers.0.mlp.down_proj.weight ' list
}

@test "awq-w4: an AWQ checkpoint whose perplexity is near the model's" {
    recipe awq-w4 OUT=out "AWQ_W4_AWQ_OPTS=--bits 4 --group 128 --n-grid 4 --no-clip" > /dev/null
    python3 - <<'PY'
import json
cfg = json.load(open("out/model/config.json"))["quantization_config"]
assert cfg["quant_method"] == "awq" and cfg["bits"] == 4 and cfg["group_size"] == 128, cfg
PY
    embedded_prov out/model/model.safetensors | grep -q '"prog":"qawq"'
    grep -q '^model: .*/qawq --stats out/cal.qs --bits 4 --group 128 --n-grid 4 --no-clip | ' out/provenance.txt
    ppl_within out 5
}

@test "wanda24-gptq-w4: every 4 inputs of every linear row keep at most 2 weights" {
    recipe wanda24-gptq-w4 OUT=out > /dev/null
    ppl_within out 30
    grep -q '"quant_method": "gptq"' out/model/config.json
    # the same calibration, written dequantized (f32) to check the pattern: only the model step re-runs
    mark; recipe wanda24-gptq-w4 OUT=out WANDA24_PACK_OPTS="--dtype f32" > /dev/null
    [ "$(changed out)" = "eval-output.txt model/ provenance.txt report.txt" ]
    python3 - <<'PY'
import array, json, struct
b = open("out/model/model.safetensors", "rb").read()
n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
lin = [k for k in h if k.endswith("_proj.weight")]
assert len(lin) == 28, len(lin)
for k in lin:
    r, c = h[k]["shape"]; s, e = h[k]["data_offsets"]
    w = array.array("f", b[8 + n + s:8 + n + e])
    for i in range(r):
        for j in range(0, c, 4):
            assert sum(x != 0.0 for x in w[i * c + j:i * c + j + 4]) <= 2, (k, i, j)
PY
}

@test "qmix-gguf: per-tensor GGUF types as allocated, about 3.5 bits per linear weight" {
    recipe qmix-gguf OUT=out > /dev/null
    ppl_within out 5
    facts out/model.gguf --tensors > t.txt
    python3 - <<'PY'
import re
# ggml type ids and bits per weight (ggml.c type traits: block bytes * 8 / block values)
bpw = {10: 2.625, 11: 3.4375, 12: 4.5, 13: 5.5, 14: 6.5625, 8: 8.5, 2: 4.5, 3: 5.0, 6: 5.5, 7: 6.0}
name = {"q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14, "q8_0": 8}
hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
      "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
types = {}
for l in open("t.txt"):
    m = re.match(r"tensor blk\.(\d+)\.(\w+)\.weight (\d+) \[(\d+), (\d+)\]", l)
    if m and m.group(2) in hf:
        types[f"model.layers.{m.group(1)}.{hf[m.group(2)]}.weight"] = (int(m.group(3)), int(m.group(4)) * int(m.group(5)))
want = dict(kv.split("=") for kv in open("out/gguf-types.txt").read().strip().split(","))
assert set(want) == set(types), (len(want), len(types))
for k, t in want.items():
    assert types[k][0] == name[t], (k, t, types[k])
settings = {l.split()[1] for l in open("out/alloc.txt") if l.startswith("model.")}
assert len(settings) >= 2, settings                       # a mix, not one setting
bits = sum(bpw[t] * n for t, n in types.values()) / sum(n for _, n in types.values())
assert 3.3 < bits < 3.6, bits
PY
}

@test "several recipes included in one Makefile: own outputs, no clashes, the user's goal stays" {
    cat > Makefile <<EOF
RTN_GGUF_OUT  = out/rtn
GPTQ_GGUF_OUT = out/gptq
include $R/rtn-gguf.mk
include $R/gptq-gguf.mk
summary.txt: rtn-gguf gptq-gguf
	grep -h '^ppl output' out/rtn/report.txt out/gptq/report.txt > \$@
EOF
    make -n -s "${knobs[@]}" > plan 2> err
    [ ! -s err ] || { cat err; false; }                     # no "overriding recipe" warnings
    grep -q 'qpack --gguf q4_0 *-o out/rtn/model.gguf' plan
    grep -q 'qgptq --grid q4_0 *--stats out/gptq/cal.qs' plan
    make -s "${knobs[@]}" > /dev/null                         # the default goal: summary.txt
    [ "$(wc -l < summary.txt)" -eq 2 ]
    [ -f out/rtn/provenance.txt ]
    [ -f out/gptq/provenance.txt ]
    [ ! -e out/rtn/cal.qs ]
    # a Makefile whose first target comes after the includes keeps it as the goal
    printf 'include %s/rtn-gguf.mk\nmine:\n\t@echo mine\n' "$R" > Makefile2
    [ "$(make -s -f Makefile2 "${knobs[@]}")" = mine ]
    make -q -f Makefile2 "${knobs[@]}" RTN_GGUF_OUT=out/rtn rtn-gguf
}

@test "reproducible: the same recipe gives byte-identical outputs with THREADS=1 and 2, run twice" {
    # model files, GGUF files, stats, evals and reports; only report.txt's "time" lines and
    # the evals' "speed" lines (timings) are left out
    snap() {
        mkdir -p "$1"
        cp out/cal.qs out/model.gguf out/provenance.txt "$1"/
        grep -v '^time' out/report.txt > "$1/report.txt"
        for e in eval-model eval-output; do grep -v '^speed' out/$e.txt > "$1/$e.txt"; done
        cp out2/model/model.safetensors out2/model/config.json out2/model/quantize_config.json "$1"/
        cp out2/provenance.txt "$1/provenance2.txt"
    }
    for run in 1a 2a 1b 2b; do
        t=${run%?}
        recipe gptq-gguf OUT=out THREADS=$t > /dev/null
        recipe wanda24-gptq-w4 OUT=out2 THREADS=$t EVAL= > /dev/null
        snap "s$run"
        qpack -i out/cal.qs -o "s$run/cal.safetensors"; rm "s$run/cal.qs"
        make -s -f "$R/gptq-gguf.mk" "${knobs[@]}" OUT=out clean
        make -s -f "$R/wanda24-gptq-w4.mk" "${knobs[@]}" OUT=out2 clean
    done
    # cal.qs: qcal records --threads in its provenance, so its tensors are compared
    for run in 2a 1b 2b; do
        diff -r -x cal.safetensors s1a "s$run"
        same_tensors s1a/cal.safetensors "s$run/cal.safetensors"
    done
    [ "$(ls s1a | wc -l)" -eq 10 ]
}
