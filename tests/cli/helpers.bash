# helpers.bash — shared by every bats suite: puts the built tools first on
# PATH, gives each test a scratch directory, and the failure check used
# everywhere (non-zero, not a signal, a message on stderr, nothing on stdout).
set -o pipefail
ROOT="$(cd "$BATS_TEST_DIRNAME/../.." && pwd)"
PATH="$ROOT/bin:$PATH"
DATA="$ROOT/tests/data"
export ROOT DATA

setup() {
    T="$BATS_TEST_TMPDIR"
    cd "$T" || return 1
}

# fails_cleanly CMD... — runs CMD (a shell string), requires status 1..127,
# a one-line "prog: ..." message on stderr and empty stdout.
fails_cleanly() {
    local out err rc
    out="$T/fc.out"; err="$T/fc.err"
    rc=0; bash -c "set -o pipefail; $1" >"$out" 2>"$err" || rc=$?
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then echo "status $rc for: $1"; cat "$err"; return 1; fi
    if [ -s "$out" ]; then echo "stdout not empty for: $1"; head -c 300 "$out"; return 1; fi
    if ! grep -qE '^q[a-z]+: ' "$err"; then echo "no 'prog: ' message for: $1"; cat "$err"; return 1; fi
    ERR="$(cat "$err")"
}

# same_tensors A B — the two checkpoints hold the same tensors (names, dtypes,
# shapes, bytes), checked by an independent Python reader of safetensors.
same_tensors() {
    python3 "$ROOT/tests/tools/st_compare.py" "$1" "$2"
}
