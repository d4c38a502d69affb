#!/usr/bin/env bats
# tests: --dry-run of qcat, qpack, qgptq
# A dry run reads only the header, prints the plan with peak memory and a
# time estimate, and writes no output.
load helpers

@test "qcat --dry-run reports the tensors, memory and time without streaming" {
    run qcat "$DATA/ts3m-bf16" --dry-run
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == "qcat --dry-run: 39 tensors"* ]]
    [[ "$output" == *"peak memory"* && "$output" == *"time"* ]]
}

@test "qpack --gguf --dry-run names the largest working set and writes no file" {
    qcat "$DATA/ts3m-bf16" > m.qs
    run qpack --gguf q4_k_m --dry-run -o m.gguf -i m.qs
    [ "$status" -eq 0 ]
    [[ "$output" == *"largest working set: lm_head.weight, gguf q6_K"* ]]
    [ ! -e m.gguf ]
}

@test "qgptq --dry-run counts the linears it would quantize and writes no stream" {
    qcat "$DATA/ts3m-bf16" > m.qs
    run bash -c "qgptq --rtn --bits 4 --dry-run < m.qs"
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == "qgptq --dry-run: 39 tensors (28 processed, 11 copied)"* ]]
    run bash -c "qgptq --rtn --bits 4 --dry-run -v < m.qs | grep -c '^  model.* rtn int4'"
    [ "$output" -eq 28 ]
}

@test "qprune and qawq --dry-run count the linears they would change" {
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 4 --seqlen 64 -o cal.qs
    qcat "$DATA/ts3m-bf16" > m.qs
    run bash -c "qprune --sparsegpt --stats cal.qs --dry-run < m.qs"
    [ "$status" -eq 0 ] && [[ "${lines[0]}" == "qprune --dry-run: 39 tensors (28 processed, 11 copied)"* ]]
    run bash -c "qawq --stats cal.qs --bits 4 --dry-run < m.qs"
    [ "$status" -eq 0 ] && [[ "${lines[0]}" == "qawq --dry-run: 39 tensors (36 processed, 3 copied)"* ]]
}

@test "qcal --dry-run estimates both memory modes without loading weights or writing stats" {
    run qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --dry-run -o cal.qs
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == "qcal --dry-run: 16395 tokens through 4 layers" ]]
    [[ "${lines[1]}" == *"(whole model)"*"(--stream-layers)" ]]
    [ ! -e cal.qs ]
}
