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

# VALGRIND=1: every qpipe tool found through PATH runs under valgrind
# memcheck (`valgrind --error-exitcode=99 --leak-check=full -q`), via wrapper
# scripts that exec it (so signals sent to the tool's pid reach it). Each
# process writes its report to $VALGRIND_LOGS/<tool>.<pid>.log (default
# ${TMPDIR:-/tmp}/qpipe-valgrind-logs); VALGRIND_OPTS adds options (e.g.
# --errors-for-leak-kinds=definite). The wrappers set QPIPE_NO_FMA=1 and
# OPENBLAS_CORETYPE=Sandybridge: valgrind emulates vector FMA ~250x slower
# than a multiply and an add, and these pick the same loops without FMA
# (common/kernels.h; same memory accesses, products rounded before the add).
# A clean run leaves only empty logs:
#   VALGRIND=1 bats tests/cli/; find "${TMPDIR:-/tmp}/qpipe-valgrind-logs" -type f -size +0
# Without VALGRIND nothing here changes PATH or any function.
#
# skip_under_valgrind WHY — first line of a test whose point is a figure over
# the whole of eval.txt or calib.txt (forward passes over tens of thousands of
# tokens: minutes natively, hours under memcheck). The code paths such a test
# runs are also run, on short texts, by tests that are not skipped.
skip_under_valgrind() {
    [ "${VALGRIND:-0}" != 1 ] || skip "under valgrind: $*"
}

# EVAL_TEXT, CALIB_TEXT — what tests evaluate and calibrate on when the point is
# that the tools run, not the figure: eval.txt and calib.txt, and under
# valgrind their first 6 / 10 lines (about 200 / 300 tokens: memcheck runs a
# forward pass ~40x slower than natively).
EVAL_TEXT="$DATA/text/eval.txt" CALIB_TEXT="$DATA/text/calib.txt"
if [ "${VALGRIND:-0}" = 1 ]; then
    for _vg_t in eval:6 calib:10; do
        _vg_f="$BATS_RUN_TMPDIR/${_vg_t%%:*}-short.txt"
        [ -s "$_vg_f" ] || { head -n "${_vg_t##*:}" "$DATA/text/${_vg_t%%:*}.txt" > "$_vg_f.$$" && mv -f "$_vg_f.$$" "$_vg_f"; }
    done
    EVAL_TEXT="$BATS_RUN_TMPDIR/eval-short.txt" CALIB_TEXT="$BATS_RUN_TMPDIR/calib-short.txt"
    unset _vg_t _vg_f
fi
export EVAL_TEXT CALIB_TEXT
if [ "${VALGRIND:-0}" = 1 ]; then
    VALGRIND_LOGS="${VALGRIND_LOGS:-${TMPDIR:-/tmp}/qpipe-valgrind-logs}"
    VALGRIND_BIN="$VALGRIND_LOGS.bin"
    mkdir -p "$VALGRIND_LOGS" "$VALGRIND_BIN"
    for _vg_tool in "$ROOT"/bin/q*; do
        _vg_name="${_vg_tool##*/}"
        # the tools (filters/*.c), not the test generators (tests/tools/*.c)
        [ -x "$_vg_tool" ] && [ -f "$ROOT/filters/$_vg_name.c" ] || continue
        _vg_tmp="$VALGRIND_BIN/.$_vg_name.$$"
        printf '#!/bin/sh\nQPIPE_NO_FMA=1 OPENBLAS_CORETYPE=Sandybridge exec valgrind --error-exitcode=99 --leak-check=full -q %s --log-file=%s/%s.%%p.log %s "$@"\n' \
            "${VALGRIND_OPTS:-}" "$VALGRIND_LOGS" "$_vg_name" "$_vg_tool" > "$_vg_tmp"
        chmod +x "$_vg_tmp"
        mv -f "$_vg_tmp" "$VALGRIND_BIN/$_vg_name"
    done
    unset _vg_tool _vg_name _vg_tmp
    PATH="$VALGRIND_BIN:$PATH"
    export VALGRIND VALGRIND_LOGS
    # a failure with memcheck errors is never a clean failure: look for
    # non-empty reports written while the command ran
    eval "_fails_cleanly_plain() $(declare -f fails_cleanly | tail -n +2)"
    fails_cleanly() {
        local mark="$T/.valgrind-mark" bad
        : > "$mark"
        _fails_cleanly_plain "$@" || return 1
        bad=$(find "$VALGRIND_LOGS" -type f -newer "$mark" -size +0 2>/dev/null)
        if [ -n "$bad" ]; then echo "valgrind errors for: $1"; cat $bad; return 1; fi
    }
fi
