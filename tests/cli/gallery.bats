#!/usr/bin/env bats
# tests: the README gallery, line by line, on the bundled model
# requires: qcat qpack qcal qgptq qeval
load helpers

setup_file() {
    cd "$BATS_FILE_TMPDIR"
    mkdir -p model && cp -r "$DATA/ts3m-bf16/." model/
    cp "$DATA/stories260k/pytorch_model.bin" .
    tar -cf - model | zstd -q > model.tar.zst
    head -c 8000 "$DATA/text/calib.txt" > calib.txt
    head -c 4000 "$DATA/text/eval.txt" > eval.txt
}

setup() { cd "$BATS_FILE_TMPDIR"; }

@test "gallery: lossless round trip" {
    qcat model/ | qpack -o copy/
    same_tensors model copy
}

@test "gallery: manifest of an archive" {
    run qcat model.tar.zst --list
    [ "$status" -eq 0 ] && [ "${#lines[@]}" -eq 39 ]
}

@test "gallery: a torch file converted and sharded" {
    qcat pytorch_model.bin | qpack --dtype bf16 --max-shard-size 5GB -o bf16/
    [ -f bf16/model.safetensors ]
}

@test "gallery: llama-quantize's job and the importance-weighted variant" {
    qcat model/ | qpack --gguf q4_k_m -o model-q4_k_m.gguf
    qcal model/ --text calib.txt -o cal.qs
    qcat model/ | qpack --gguf q4_k_m --stats cal.qs -o model-imat.gguf
    ! cmp -s model-q4_k_m.gguf model-imat.gguf
}

@test "gallery: GPTQ onto Q4_0, and a GPTQ checkpoint read back and compared" {
    [ -f cal.qs ] || qcal model/ --text calib.txt -o cal.qs
    qcat model/ | qgptq --grid q4_0 --stats cal.qs | qpack --gguf q4_0 -o gptq-q4_0.gguf
    qcat model/ | qgptq --bits 4 --group 128 --f16-scales --stats cal.qs | qpack --format gptq -o gptq/
    qcat gptq/ | qeval - --text eval.txt > ppl.txt
    grep -q '^ppl' ppl.txt
    qeval model/ gptq/ --text eval.txt --kl > kl.txt
    grep -qi 'kl' kl.txt
}

@test "gallery: sharded quantization merged equals the single run" {
    for k in 1 2 3; do qcat model/ --shard $k/3 | qgptq --rtn --f16-scales > part$k.qs; done
    qpack --merge part1.qs part2.qs part3.qs --format gptq -o merged/
    qcat model/ | qgptq --rtn --f16-scales | qpack --format gptq -o single/
    same_tensors single merged
    cmp single/config.json merged/config.json
}
