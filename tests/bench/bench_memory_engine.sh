#!/usr/bin/env bash
# bench_memory_engine — peak RSS (/usr/bin/time -v) of qcal and qeval with
# the whole model in memory against --stream-layers (common/llama.h: all
# windows through one layer at a time), on ts3m-bf16 and on the synthetic
# 8-layer hidden-2048 Llama of qbench_llama (written once, bf16, as a
# safetensors checkpoint in $BENCH_DIR). Checks that both modes give the same
# result, and prints beside each streamed peak what it should be bounded by:
# one layer's f32 weights + the hidden states (+ one layer's Hessians for qcal).
set -euo pipefail
PATH="$PWD/bin:$PATH"
D=tests/data
W="${BENCH_DIR:-build/bench}"
mkdir -p "$W"
SYN="$W/synth-llama8"
if [ ! -s "$SYN/model.safetensors" ]; then
    echo "writing the synthetic model to $SYN/ (bf16, 755 MB)"
    qbench_llama --stream 8 | qpack -q -o "$SYN/"
fi
head -c 1024 "$D/text/eval.tokens.u32" > "$W/t256.u32"      # 256 ids < 1024: valid for both vocabularies
head -c 20000 "$D/text/eval.txt" > "$W/eval20k.txt"

# run LABEL CMD... : the command's stdout in $W/out.txt, its peak RSS (MiB) in RSS, wall time in WALL
run() {
    /usr/bin/time -v "$@" > "$W/out.txt" 2> "$W/time.txt" || { cat "$W/time.txt" >&2; exit 1; }
    RSS=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$W/time.txt")
    WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ { print $2 }' "$W/time.txt")
}

mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
# bound dim hidden qdim kvdim vocab tokens qcal: one layer f32 + hidden states, + one layer's
# Hessians (f64) for qcal, + the head (f32) for qeval
bound() {
    awk -v d="$1" -v h="$2" -v q="$3" -v kv="$4" -v v="$5" -v t="$6" -v cal="$7" 'BEGIN {
        layer = (2 * d * q + 2 * d * kv + 3 * d * h) * 4; states = t * d * 4;
        extra = cal ? (2 * d * d + q * q + h * h) * 8 : v * d * 4;
        printf "%.0f", (layer + states + extra) / 1048576 }'
}

printf '%-6s %-20s %-7s %10s %9s  %s\n' tool model mode "peak RSS" wall "streamed bound: 1 layer f32 + hidden states + (qcal) 1 layer of f64 Hessians / (qeval) the f32 head"
row() { printf '%-6s %-20s %-7s %6s MiB %9s  %s\n' "$@"; }
run qeval --version
row "-" "(process baseline)" "-" "$RSS" "$WALL" "libraries and buffers every run has"
echo "(wall times are only indicative when the machine is shared: load $(cut -d' ' -f1 /proc/loadavg))"

# model label, path, dims (dim hidden q_dim kv_dim), calibration input, eval input, tokens each
bench_model() {
    local label=$1 path=$2 dims=$3 cal=$4 ev=$5 ctx=$6
    local a b
    for mode in memory stream; do
        local flag=""; [ $mode = stream ] && flag=--stream-layers
        # qcal: stats to stdout, discarded (the output is the same bytes either way: tests/cli/qcal.bats)
        run qcal -v "$path" $cal --seqlen "$ctx" $flag
        local toks; toks=$(grep -o '[0-9]* tokens' "$W/time.txt" | head -1 | cut -d' ' -f1)
        local est; est=$(grep -o 'estimated peak: .*' "$W/time.txt" | sed 's/estimated peak: //')
        row qcal "$label" "$mode" "$RSS" "$WALL" "$([ $mode = stream ] && echo "$(bound $dims "$toks" 1) MiB   qcal -v estimates: $est")"
        run qeval "$path" $ev --ctx "$ctx" --json $flag
        if [ $mode = memory ]; then a=$(jq -c '[.ppl, .nll, .tokens]' "$W/out.txt"); else b=$(jq -c '[.ppl, .nll, .tokens]' "$W/out.txt"); fi
        local et; et=$(jq .input_tokens "$W/out.txt")
        row qeval "$label" "$mode" "$RSS" "$WALL" "$([ $mode = stream ] && echo "$(bound $dims "$et" 0) MiB")"
    done
    [ "$a" = "$b" ] && echo "  $label: qeval memory and stream agree: $a" || { echo "  $label: qeval DIFFERS: $a vs $b"; exit 1; }
}

bench_model ts3m-bf16 "$D/ts3m-bf16" "256 768 256 128 1024" "--text $D/text/calib.txt" "--text $W/eval20k.txt" 256
echo "  ts3m-bf16: bf16 file $(mib "$(stat -c %s "$D/ts3m-bf16/model.safetensors")") MiB"
bench_model synth-llama8 "$SYN" "2048 5632 2048 512 4096" "--tokens $W/t256.u32" "--tokens $W/t256.u32" 64
echo "  synth-llama8 (hidden 2048, MLP 5632, vocab 4096): bf16 file $(mib "$(stat -c %s "$SYN/model.safetensors")") MiB, f32 weights $(mib $((377487360 * 4))) MiB"
