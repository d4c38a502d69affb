#!/usr/bin/env bats
# tests: --dry-run of qcat, qpack, qgptq, qprune, qawq, qcal, and the
# --max-memory guard built on the same estimates.
# A dry run reads only the header, prints the plan with peak memory and a
# time estimate, and writes no output. --max-memory refuses, before any work
# and naming the tensor, a run whose estimated working memory passes the limit.
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

@test "--max-memory below a tensor's working set: qgptq, qprune, qawq refuse naming it and write no stream" {
    qcal "$DATA/ts3m-bf16" --text "$CALIB_TEXT" --samples 4 --seqlen 64 -o cal.qs
    qcat "$DATA/ts3m-bf16" > m.qs
    run bash -c "qgptq --rtn --bits 4 --max-memory 5MB < m.qs > out.qs"
    [ "$status" -eq 1 ] && [ ! -s out.qs ]
    [ "$output" = "qgptq: 'model.layers.0.mlp.down_proj.weight': rtn int4 g128 needs ~6.0 MB of working memory (5963776 bytes), over --max-memory 5.0 MB (--dry-run -v lists each tensor's)" ]
    run bash -c "qprune --sparsegpt --stats cal.qs --max-memory 8MB < m.qs > out.qs"
    [ "$status" -eq 1 ] && [ ! -s out.qs ]
    [[ "$output" == "qprune: 'model.layers.0.mlp.down_proj.weight': sparsegpt needs ~15.2 MB of working memory"* ]]
    run bash -c "qawq --stats cal.qs --bits 4 --max-memory 8MB < m.qs > out.qs"
    [ "$status" -eq 1 ] && [ ! -s out.qs ]
    [[ "$output" == "qawq: 'model.layers.0.mlp.down_proj.weight': awq needs ~13.6 MB of working memory"* ]]
}

@test "--max-memory refuses qpack --gguf before the output file exists, and a limit below the chunk buffers" {
    qcat "$DATA/ts3m-bf16" > m.qs
    run qpack --gguf q4_k_m --max-memory 5MB -i m.qs -o m.gguf
    [ "$status" -eq 1 ] && [ ! -e m.gguf ] && [ -z "$(ls -A | grep -v '^m.qs$')" ]
    [[ "$output" == "qpack: 'lm_head.weight': gguf q6_K needs ~6.0 MB of working memory"* ]]
    run bash -c "qgptq --rtn --max-memory 1MiB < m.qs > out.qs"
    [ "$status" -eq 1 ] && [ ! -s out.qs ]
    [ "$output" = "qgptq: --max-memory 1.0 MB: below the 4.2 MB that qgptq holds whatever the tensor" ]
    run qpack --max-memory 12XB -i m.qs -o out
    [ "$status" -eq 2 ] && [[ "${lines[0]}" == "qpack: --max-memory: invalid size unit in '12XB'"* ]]
}

@test "--max-memory at or above the dry run's peak changes nothing in the output" {
    qcat "$DATA/ts3m-bf16" > m.qs
    qgptq --rtn --bits 4 < m.qs | qpack --dtype bf16 -o plain
    qgptq --rtn --bits 4 --max-memory 6MB < m.qs | qpack --dtype bf16 --max-memory 1GB -o guarded
    same_tensors plain/model.safetensors guarded/model.safetensors
    qpack --gguf q4_0 -i m.qs -o plain.gguf
    qpack --gguf q4_0 --max-memory 6MB -i m.qs -o guarded.gguf
    python3 "$ROOT/tests/tools/gguf_cmp.py" plain.gguf guarded.gguf | grep -q "^39/39 tensors identical"
}
