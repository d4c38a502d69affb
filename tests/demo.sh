#!/usr/bin/env bash
# make demo — the headline pipelines on the bundled tiny model (tests/data/ts3m-bf16,
# a 3.7M-parameter Llama): calibrate, quantize with RTN and GPTQ onto llama.cpp's and
# AutoGPTQ's formats, and print a size/quality table (eval.txt perplexity, REFERENCE.md's
# definition). Takes about a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PWD/bin:$PATH"
M=tests/data/ts3m-bf16
TXT=tests/data/text
D=build/demo
rm -rf "$D"; mkdir -p "$D"
run() { echo "\$ $*"; bash -c "set -o pipefail; $*"; }

run "qcat $M --list | head -3"
run "qcal $M --text $TXT/calib.txt -o $D/cal.qs"
run "qcat $M | qpack --gguf f16 -o $D/f16.gguf"
run "qcat $M | qpack --gguf q4_0 -o $D/rtn-q4_0.gguf"
run "qcat $M | qgptq --grid q4_0 --stats $D/cal.qs | qpack --gguf q4_0 -o $D/gptq-q4_0.gguf"
run "qcat $M | qgptq --bits 4 --group 128 --f16-scales --stats $D/cal.qs | qpack --format gptq -o $D/gptq-w4g128/"
if command -v qprune >/dev/null; then
    run "qcat $M | qprune --wanda --nm 2:4 --stats $D/cal.qs | qgptq --bits 4 --group 128 --f16-scales --stats $D/cal.qs | qpack --format gptq -o $D/wanda24-gptq-w4g128/"
fi

echo
printf '%-34s %10s %10s %10s\n' model bytes bits/w ppl
params=$(qcat $M --list --json | python3 -c 'import json,sys; print(sum(__import__("math").prod(e["shape"]) for e in json.load(sys.stdin)))')
for m in "$M" "$D/f16.gguf" "$D/rtn-q4_0.gguf" "$D/gptq-q4_0.gguf" "$D/gptq-w4g128" "$D/wanda24-gptq-w4g128"; do
    [ -e "$m" ] || continue
    if [ -d "$m" ]; then bytes=$(cat "$m"/*.safetensors | wc -c); else bytes=$(wc -c < "$m"); fi
    ppl=$(qeval "$m" --tokens $TXT/eval.tokens.u32 --json | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])')
    printf '%-34s %10d %10.2f %10s\n' "${m#$D/}" "$bytes" "$(echo "$bytes * 8 / $params" | bc -l)" "$ppl"
done
echo "(ts3m-bf16 is the bundled model; reference perplexity of its bf16 weights: 14.354144)"
