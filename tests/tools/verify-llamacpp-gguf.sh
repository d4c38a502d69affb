#!/usr/bin/env bash
# verify-llamacpp-gguf.sh FIXTURES — re-make llama.cpp's ts3m GGUF files with
# `qcat ts3m | qpack --gguf TYPE` and compare every tensor's bytes with the
# files llama-quantize wrote (FIXTURES/ts3m-gguf). Needs the shared fixtures
# (not in the repo: the f32 model and the GGUF files are 50 MB), so it is a
# verification script, not part of make check.
set -euo pipefail
F=${1:?usage: verify-llamacpp-gguf.sh FIXTURES_DIR}
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for t in f16 q8_0 q4_0 q4_1 q5_0 q5_1 q6_k q4_k_m q5_k_m q3_k_m q2_k; do
    bin/qcat "$F/ts3m" | bin/qpack --gguf $t -o "$tmp/$t.gguf"
    printf '%-7s ' "$t"; python3 tests/tools/gguf_cmp.py "$tmp/$t.gguf" "$F/ts3m-gguf/ts3m-$t.gguf"
done
