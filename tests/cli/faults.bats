#!/usr/bin/env bats
# tests: faults (issue 8) — I/O errors and dying processes in a pipeline
# requires: qcat, qpack, qgptq, qprune, qtok, qgen; mkfifo, dd (coreutils)
#
# Every failure must be reported (non-zero status, a "prog: ..." message),
# and leave no output and no temporary (qpack writes OUT.tmp.PID, then
# renames). A stage dying upstream must make the next stage fail with
# "truncated stream", never yield a valid-looking checkpoint.
load helpers

ST="$BATS_TEST_DIRNAME/../data/stories260k/model.safetensors"

# no_output NAME — neither NAME nor any NAME.tmp.* exists in $T
no_output() {
    local left
    left=$(cd "$T" && ls -d "$1" "$1".tmp.* 2>/dev/null || true)
    if [ -n "$left" ]; then echo "left behind: $left"; return 1; fi
}

# A 8 MB two-tensor checkpoint: large enough that qcat is still writing
# (blocked on a full pipe) after the first MiB has been consumed.
big() { qgen --size 8MB --largest 6MB --seed 3 -o "$T/big.safetensors" >/dev/null; }

# gated_pipeline CONSUMER — runs `qcat big.safetensors | GATE | CONSUMER`
# where GATE passes exactly 1 MiB, then waits; qcat is then SIGKILLed and the
# gate lets the rest of what was in the pipe through. Sets RC and ERR (the
# consumer's status and stderr).
gated_pipeline() {
    big
    mkfifo "$T/a" "$T/b"
    qcat "$T/big.safetensors" > "$T/a" &
    local qcat_pid=$!
    { dd bs=65536 count=16 iflag=fullblock 2>/dev/null; touch "$T/gate"
      while [ ! -e "$T/go" ]; do sleep 0.02; done; cat; } < "$T/a" > "$T/b" &
    local gate_pid=$!
    bash -c "$1" < "$T/b" > "$T/consumer.out" 2> "$T/consumer.err" &
    local cons_pid=$!
    while [ ! -e "$T/gate" ]; do sleep 0.02; done
    kill -KILL "$qcat_pid"
    wait "$qcat_pid" 2>/dev/null || true
    touch "$T/go"
    RC=0; wait "$cons_pid" || RC=$?
    wait "$gate_pid" || true
    ERR=$(cat "$T/consumer.err")
}

@test "qcat to a full disk (/dev/full) fails with a message, not a signal" {
    fails_cleanly "qcat '$ST' > /dev/full"
    [[ "$ERR" == *"No space left"* ]]
}

@test "qcat --list to /dev/full fails with a message" {
    fails_cleanly "qcat '$ST' --list > /dev/full"
}

@test "filters writing a stream to /dev/full fail with a message" {
    qcat "$ST" > s.qs
    fails_cleanly "qgptq --rtn --bits 4 --group 32 < s.qs > /dev/full"
    fails_cleanly "qprune --magnitude --sparsity 0.5 < s.qs > /dev/full"
    fails_cleanly "cat s.qs | qgptq --rtn --bits 8 --group -1 > /dev/full"
}

@test "qtok printing ids to /dev/full fails with a message" {
    echo "Once upon a time" > in.txt
    fails_cleanly "qtok '$DATA/ts3m-bf16' in.txt > /dev/full"
}

@test "qpack over its file-size limit (SIGXFSZ ignored) fails cleanly and removes its temporary" {
    qcat "$ST" > s.qs
    fails_cleanly "trap '' XFSZ; ulimit -f 64; qpack -o out.safetensors < s.qs"
    [[ "$ERR" == *"too large"* ]]
    no_output out.safetensors
}

@test "qpack over its file-size limit with default SIGXFSZ leaves no temporary" {
    # ulimit -f with the default disposition kills a writer with SIGXFSZ
    # (status 153) before any error path can run; qpack must catch or ignore
    # it so the write fails with EFBIG and the temporary is removed.
    qcat "$ST" > s.qs
    rc=0; bash -c "ulimit -f 64; qpack -o out.safetensors < s.qs" 2> err || rc=$?
    [ "$rc" -ne 0 ]
    no_output out.safetensors
    [ "$rc" -lt 128 ] || { echo "qpack died of signal $((rc - 128))"; false; }
    grep -q '^qpack: ' err
}

@test "qpack to a directory over the file-size limit leaves no temporary directory" {
    qcat "$ST" > s.qs
    rc=0; bash -c "trap '' XFSZ; ulimit -f 64; qpack -o outdir/ < s.qs" 2> err || rc=$?
    [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ]
    no_output outdir
}

@test "qcat killed mid-stream: qpack fails with 'truncated stream', no file, no temporary" {
    gated_pipeline "qpack -o '$T/out.safetensors'"
    [ "$RC" -ne 0 ] && [ "$RC" -lt 128 ]
    [[ "$ERR" == "qpack: "*"truncated stream"* ]]
    no_output out.safetensors
}

@test "qcat killed mid-stream: qpack to a model directory leaves nothing" {
    gated_pipeline "qpack -o '$T/outdir/'"
    [ "$RC" -ne 0 ] && [ "$RC" -lt 128 ]
    [[ "$ERR" == *"truncated stream"* ]]
    no_output outdir
}

@test "qcat killed mid-stream: a filter in the middle fails, and so does qpack after it" {
    gated_pipeline "set -o pipefail; qgptq --rtn --bits 4 --group 64 --include '*' 2> '$T/mid.err' | qpack --dtype f32 -o '$T/out.safetensors'"
    [ "$RC" -ne 0 ] && [ "$RC" -lt 128 ]
    grep -q "^qgptq: .*truncated stream" "$T/mid.err"
    [[ "$ERR" == *"qpack: "*"truncated stream"* ]]
    no_output out.safetensors
}

@test "a stream cut at every frame boundary region never packs" {
    qcat "$ST" > s.qs
    size=$(stat -c %s s.qs)
    for n in 8 100 433 4096 65536 $((size / 2)) $((size - 20)) $((size - 1)); do
        head -c "$n" s.qs > cut.qs
        fails_cleanly "qpack -o out.safetensors < cut.qs"
        [[ "$ERR" == *"truncated"* ]] || { echo "at $n: $ERR"; false; }
        no_output out.safetensors
    done
}

# signal_qpack SIG OUT — qpack reading from a producer that stalls after
# 300 kB; once its temporary exists, send SIG. Sets RC.
signal_qpack() {
    qcat "$ST" > s.qs
    mkfifo "$T/p"
    { head -c 300000 s.qs; sleep 20; tail -c +300001 s.qs; } > "$T/p" &
    local prod=$!
    qpack -o "$2" < "$T/p" 2> "$T/qpack.err" &
    local pid=$!
    for _ in $(seq 200); do
        compgen -G "${2%/}.tmp.*" >/dev/null && break
        sleep 0.02
    done
    compgen -G "${2%/}.tmp.*" >/dev/null
    sleep 0.1
    kill -"$1" "$pid"
    RC=0; wait "$pid" || RC=$?
    kill "$prod" 2>/dev/null || true
    pkill -P "$prod" 2>/dev/null || true
    wait "$prod" 2>/dev/null || true
}

@test "SIGINT during qpack: dies of SIGINT, no output, temporary removed" {
    signal_qpack INT out.safetensors
    [ "$RC" -eq 130 ]
    no_output out.safetensors
}

@test "SIGTERM during qpack: dies of SIGTERM, no output, temporary removed" {
    signal_qpack TERM out.safetensors
    [ "$RC" -eq 143 ]
    no_output out.safetensors
}

@test "SIGINT during qpack to a model directory: no directory, no temporary" {
    signal_qpack INT outdir/
    [ "$RC" -eq 130 ]
    no_output outdir
}

@test "SIGHUP during qpack: no output, temporary removed" {
    signal_qpack HUP sharded/
    [ "$RC" -eq 129 ]
    no_output sharded
}

@test "an existing output survives a failed qpack untouched" {
    qcat "$ST" | qpack -o out.safetensors
    cp out.safetensors before.safetensors
    head -c 5000 <(qcat "$ST") > cut.qs
    fails_cleanly "qpack -o out.safetensors < cut.qs"
    cmp out.safetensors before.safetensors
    [ -z "$(compgen -G 'out.safetensors.tmp.*')" ]
}
