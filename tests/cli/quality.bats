#!/usr/bin/env bats
# tests: qgptq quality on the ts3m fixture (eval.txt perplexity through qeval)
# requires: qcat qcal qeval
# RTN must reproduce the independent float64 figures of tests/data/text/REFERENCE.md
# (bf16 weights) within 0.1 %; GPTQ must beat RTN on the same grid; 8-bit must stay
# within 0.5 % of the unquantized model. Figures land in $BATS_FILE_TMPDIR/table.
load helpers

setup_file() {
    [ "${VALGRIND:-0}" != 1 ] || return 0     # every test here skips under valgrind
    cd "$BATS_FILE_TMPDIR"
    qcat "$DATA/ts3m-bf16" > model.qs
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" -o cal.qs
}

ppl() {   # ppl QGPTQ-ARGS... — eval.txt perplexity of the quantized model
    qgptq "$@" --stats "$BATS_FILE_TMPDIR/cal.qs" < "$BATS_FILE_TMPDIR/model.qs" \
        | qeval - --tokens "$DATA/text/eval.tokens.u32" --json \
        | python3 -c 'import json,sys; print("%.6f" % json.load(sys.stdin)["ppl"])'
}

ref() { python3 -c "import json; print(json.load(open('$DATA/text/REFERENCE.json'))['$1'])"; }
within() { python3 -c "import sys; a,b,t=map(float,sys.argv[1:]); sys.exit(0 if abs(a-b)<=t*b else 1)" "$@"; }
below() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$@"; }
record() { echo "$*" >> "$BATS_FILE_TMPDIR/table"; echo "# $*" >&3; }

@test "RTN reproduces the reference perplexities within 0.1 %" {
    skip_under_valgrind "eval.txt perplexities of five models"
    while read -r key args; do
        p=$(ppl --rtn $args)
        r=$(ref "$key")
        record "rtn $args: $p (reference $r)"
        within "$p" "$r" 0.001 || { echo "$args: $p vs $r"; return 1; }
    done <<EOF2
ppl_rtn_w8_asym_gch_bf16_eval --bits 8 --group -1
ppl_rtn_w4_asym_gch_bf16_eval --bits 4 --group -1
ppl_rtn_w4_asym_g128_bf16_eval --bits 4 --group 128
ppl_rtn_w3_asym_g128_bf16_eval --bits 3 --group 128
ppl_rtn_w4_sym_g32_bf16_eval --bits 4 --group 32 --sym
EOF2
}

@test "GPTQ beats RTN at 4 and 3 bits on the same grid and group" {
    skip_under_valgrind "GPTQ of ts3m and four eval.txt perplexities"
    for args in "--bits 4 --group 128" "--bits 3 --group 128" "--bits 4 --group -1"; do
        g=$(ppl $args); r=$(ppl --rtn $args)
        record "gptq $args: $g (rtn $r)"
        below "$g" "$r" || { echo "$args: gptq $g rtn $r"; return 1; }
    done
}

@test "8-bit GPTQ stays within 0.5 % of the unquantized model" {
    skip_under_valgrind "two eval.txt perplexities"
    base=$(qeval "$DATA/ts3m-bf16" --tokens "$DATA/text/eval.tokens.u32" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
    g=$(ppl --bits 8 --group -1)
    record "bf16: $base; gptq 8-bit per channel: $g"
    within "$g" "$base" 0.005
}
