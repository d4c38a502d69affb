#!/usr/bin/env bash
# bench_pipe — qcat | qpack on a generated 2 GB checkpoint (largest tensor 256 MB):
# time as a ratio to `cat in | cat > out` (the same two-process pipe hop), and
# the peak RSS of each process (/usr/bin/time -v).
set -euo pipefail
B="$BENCH_DIR"; PATH="$PWD/bin:$PATH"
SIZE="${PIPE_SIZE:-2GB}"
in="$B/big.safetensors"
[ -f "$in" ] || qgen --size "$SIZE" --largest 256MB --dtype f16 -o "$in" >/dev/null
sync
secs() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }
cat "$in" > /dev/null   # warm the page cache for both runs
t_cat=$(secs bash -c "cat '$in' | cat > '$B/out.cat'")
rm -f "$B/out.safetensors"
t_q=$(secs bash -c "/usr/bin/time -v qcat '$in' 2> '$B/rss.qcat' | /usr/bin/time -v qpack -o '$B/out.safetensors' 2> '$B/rss.qpack'")
rss() { awk -F: '/Maximum resident/ {printf "%.1f", $2/1024}' "$1"; }
bytes=$(stat -c %s "$in")
printf 'input: %s bytes (%s)\n' "$bytes" "$SIZE"
printf '%-26s %8.2f s  %7.0f MB/s\n' "cat | cat" "$t_cat" "$(echo "$bytes / $t_cat / 1000000" | bc -l)"
printf '%-26s %8.2f s  %7.0f MB/s  ratio %.2fx\n' "qcat | qpack" "$t_q" "$(echo "$bytes / $t_q / 1000000" | bc -l)" "$(echo "$t_q / $t_cat" | bc -l)"
printf 'peak RSS: qcat %s MB, qpack %s MB (bound: 100 MB each)\n' "$(rss "$B/rss.qcat")" "$(rss "$B/rss.qpack")"
python3 tests/tools/st_compare.py "$in" "$B/out.safetensors" >/dev/null && echo "output identical to input: yes"
rm -f "$B/out.cat" "$B/out.safetensors"
