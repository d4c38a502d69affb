#!/usr/bin/env bash
# bench_quant — quantization speed (issue 4 acceptance 5, issue 5 acceptance 5):
#  1. RTN f16 → Q4_0 / Q8_0 (scalar _ref and SIMD in the same run) and Q4_K / Q6_K
#     in MB/s of f16 input on 4096x4096 and 11008x4096 tensors (bin/qbench_quant rtn);
#  2. GPTQ 4-bit g128 (act-order off/on) and SparseGPT (50 %, 2:4) seconds per
#     4096x4096 layer with 1 and 2 threads through the library (bin/qbench_quant gptq);
#  3. the same layer through the CLIs: qgptq and qprune --sparsegpt on a stream made
#     by qcat from the generated layer.safetensors + stats.safetensors.
# Every run prints CPU/wall (≈ threads if they really ran in parallel) and the share
# of the CPUs that other processes used meanwhile; `uptime` before and after.
# Knobs: QUANT_REPS (RTN repetitions, 2), GPTQ_REPS (1), GPTQ_DIM (4096),
# GPTQ_TOKENS (4096), QUANT_CLI=0 skips part 3, QUANT_CLI=full adds qgptq --act-order.
set -euo pipefail
B="$BENCH_DIR/quant"; PATH="$PWD/bin:$PATH"
mkdir -p "$B"
REPS="${QUANT_REPS:-2}"; GREPS="${GPTQ_REPS:-1}"; DIM="${GPTQ_DIM:-4096}"; TOK="${GPTQ_TOKENS:-4096}"
echo "cpus: $(nproc); load before: $(uptime)"
echo
qbench_quant rtn --reps "$REPS"
echo
qbench_quant gptq --reps "$GREPS" --dim "$DIM" --tokens "$TOK" --write "$B"

if [ "${QUANT_CLI:-1}" != 0 ]; then
    echo
    qcat "$B/layer.safetensors" > "$B/layer.qs"
    hz=$(getconf CLK_TCK); ncpu=$(nproc)
    busy() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }
    printf 'CLI on a %sx%s f16 layer stream (%s), stats %s; best of %s\n' "$DIM" "$DIM" \
        "$(du -h "$B/layer.qs" | cut -f1)" "$(du -h "$B/stats.safetensors" | cut -f1)" "$GREPS"
    printf '%-44s %3s %7s %7s %11s %5s %6s  %s\n' "command" "thr" "best s" "cpu s" "ratio" "cpu/s" "others" "check"
    echo "---------------------------------------------------------------------------------------------"
    # run LABEL THREADS CMD...: OPENBLAS_NUM_THREADS=1 so the first tensor's Hessian inverse
    # is single-threaded like every later one (and as in qbench_quant; see README)
    declare -A one
    par2=""
    run() {
        local label=$1 t=$2; shift 2
        local best="" bu="" bs="" bo=""
        for _ in $(seq "$GREPS"); do
            local b0; b0=$(busy)
            OPENBLAS_NUM_THREADS=1 /usr/bin/time -f '%e %U %S' -o "$B/time.txt" "$@" --threads "$t" \
                < "$B/layer.qs" > "$B/out.qs"
            local b1; b1=$(busy)
            read -r e u s < "$B/time.txt"
            if [ -z "$best" ] || [ "$(echo "$e < $best" | bc)" = 1 ]; then
                best=$e; bu=$u; bs=$s
                bo=$(echo "o = (($b1 - $b0) / $hz - $u - $s) / ($ncpu * $e); if (o < 0) o = 0; if (o > 1) o = 1; o * 100" | bc -l)
            fi
        done
        [ "$t" = 1 ] || par2="$par2 $(echo "($bu + $bs) / $best" | bc -l)"
        local check=""
        if [ "$t" = 1 ]; then one[$label]=$best; mv "$B/out.qs" "$B/out1.qs"
        elif cmp -s "$B/out.qs" "$B/out1.qs"; then check="= 1-thread bytes"
        else check="DIFFERS from 1 thread"; fi
        printf '%-44s %3s %7.2f %7.2f %6.2fx 1thr %5.2f %5.0f%%  %s\n' "$label" "$t" "$best" "$(echo "$bu + $bs" | bc -l)" \
            "$(echo "${one[$label]} / $best" | bc -l)" "$(echo "($bu + $bs) / $best" | bc -l)" "$bo" "$check"
    }
    st="$B/stats.safetensors"
    for t in 1 2; do run "qgptq --bits 4 --group 128" "$t" qgptq -q --bits 4 --group 128 --stats "$st"; done
    if [ "${QUANT_CLI:-1}" = full ]; then
        for t in 1 2; do run "qgptq --bits 4 --group 128 --act-order" "$t" qgptq -q --bits 4 --group 128 --act-order --stats "$st"; done
    fi
    for t in 1 2; do run "qprune --sparsegpt --sparsity 0.5" "$t" qprune -q --sparsegpt --sparsity 0.5 --stats "$st"; done
    echo "---------------------------------------------------------------------------------------------"
    echo "$par2" | awk '{ mn = 1e9; mx = 0; for (i = 1; i <= NF; i++) { if ($i < mn) mn = $i; if ($i > mx) mx = $i }
        printf "verdict: 2-thread CLI runs got %.2f-%.2f CPU-s per s: ", mn, mx
        print (mn >= 1.6 ? "real parallel speed-ups." : mx >= 1.6 ? "only some ran on two CPUs." : "the threads did NOT get two CPUs, not parallel speed-ups.") }'
    echo "CLI times include reading the stats (Hessian f32) and the stream, writing the output stream."
    rm -f "$B/out.qs" "$B/out1.qs" "$B/time.txt"
fi
echo
echo "load after: $(uptime)"
