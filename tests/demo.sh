#!/usr/bin/env bash
# make demo — the headline pipeline on the bundled tiny model (tests/data/ts3m-bf16).
# Each step prints what it did; the last table compares size and quality.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PWD/bin:$PATH"
M=tests/data/ts3m-bf16
D=build/demo
rm -rf "$D"; mkdir -p "$D"

echo "\$ qcat $M --list | head -3"
qcat "$M" --list | head -3
echo "\$ qcat $M | qpack -o $D/copy/"
qcat "$M" | qpack -o "$D/copy/"
python3 tests/tools/st_compare.py "$M" "$D/copy"
echo "\$ qcat $M | qpack --dtype f32 --max-shard-size 5MB -o $D/f32/"
qcat "$M" | qpack --dtype f32 --max-shard-size 5MB -o "$D/f32/"
ls -l "$D/f32" | awk 'NR>1 {printf "  %10d  %s\n", $5, $9}'
