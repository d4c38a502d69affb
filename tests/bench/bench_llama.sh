#!/usr/bin/env bash
# bench_llama — forward tokens/s of the engine on a synthetic 8-layer,
# hidden-2048 Llama with 1 and 2 threads, and the matmul kernel's GFLOP/s
# (tests/tools/qbench_llama.c; weights generated in memory).
set -euo pipefail
PATH="$PWD/bin:$PATH"
qbench_llama "${LLAMA_WINDOW:-128}" "${LLAMA_LAYERS:-8}"
