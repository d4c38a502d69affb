#!/usr/bin/env bats
# tests: qeval
# requires: qcat (to make streams), jq
# Perplexity and generation against the figures of tests/data/text/REFERENCE.md
# (independent float64 NumPy forward pass) and tests/data/stories260k/README.md;
# KL and weight comparison; bad inputs fail cleanly.
load helpers

# within REL relative of WANT?  close GOT WANT REL
close() {
    awk -v g="$1" -v w="$2" -v r="$3" 'BEGIN { d = g - w; if (d < 0) d = -d; exit !(d <= r * w) }' ||
        { echo "got $1, want $2 (rel tol $3)"; return 1; }
}

@test "ts3m-bf16 perplexity on eval.txt is REFERENCE.md's 14.354144 within 0.1%, over exactly eval.tokens.u32" {
    skip_under_valgrind "a forward pass over all 32k tokens of eval.txt (stories260k's one-window perplexity runs)"
    qeval "$DATA/ts3m-bf16" --text "$DATA/text/eval.txt" --json --tokens-out ids.u32 > out.json
    close "$(jq .ppl out.json)" 14.354144 0.001
    close "$(jq .nll out.json)" 2.6640387 0.001
    [ "$(jq .tokens out.json)" = 31788 ]
    [ "$(jq .windows out.json)" = 125 ]
    cmp ids.u32 "$DATA/text/eval.tokens.u32"
}

@test "ts3m-bf16 greedy continuation of 'Once upon a time' is REFERENCE.md's" {
    qeval "$DATA/ts3m-bf16" --generate 48 --prompt "Once upon a time" > out.txt
    [ "$(sed -n 1p out.txt)" = "ids 1 391 410 261 374 970 377 283 261 380 438 431 320 964 321 444 267 362 583 323 265 545 343 308 484 964 396 341 970 320 976 957 359 489 308 267 362 964 320 526 976 951 399 267 362 343 308 484 970 395 337 283 440" ]
    [ "$(sed -n 2p out.txt)" = "text Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, Lily's mom asked her to play. Lily didn't want to play with her friends, but she was too" ]
}

@test "stories260k perplexity of greedy.tokens.u32 as one window is 2.50596 within 0.1%" {
    qeval "$DATA/stories260k/model.safetensors" --tokens "$DATA/stories260k/greedy.tokens.u32" --json > out.json
    close "$(jq .ppl out.json)" 2.50596 0.001
    [ "$(jq .tokens out.json)" = 200 ]
    [ "$(jq .windows out.json)" = 1 ]
}

@test "stories260k --generate 200 from BOS reproduces greedy.tokens.u32" {
    qeval "$DATA/stories260k" --generate 200 --tokens-out gen.u32 > out.txt
    cmp gen.u32 "$DATA/stories260k/greedy.tokens.u32"
    [ "$(wc -w < out.txt)" = 202 ]     # "ids" + BOS + 200
}

@test "a qstream, from a file or stdin, evaluates exactly like the checkpoint" {
    qcat "$DATA/stories260k" > model.qs
    qeval "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" --json | jq .ppl > a
    qeval model.qs --tokens "$DATA/stories260k/greedy.tokens.u32" --json | jq .ppl > b
    qeval - --tokens "$DATA/stories260k/greedy.tokens.u32" --json < model.qs | jq .ppl > c
    cmp a b
    cmp a c
}

@test "results are identical for every thread count and window length splits as documented" {
    head -c 3000 "$DATA/text/eval.txt" > short.txt
    for t in 1 2 3; do
        qeval "$DATA/ts3m-bf16" --text short.txt --ctx 64 --threads $t --json | jq -c '[.ppl, .nll, .tokens, .windows]' > t$t
    done
    cmp t1 t2
    cmp t1 t3
    # windows of 64 over N tokens: ceil(N/64) windows (the last one kept when it has >= 2 tokens)
    n=$(qeval "$DATA/ts3m-bf16" --text short.txt --tokens-out ids.u32 --json | jq .input_tokens)
    [ "$(stat -c %s ids.u32)" = $((4 * n)) ]
    [ "$(jq '.[3]' t1)" = $(( (n + 63) / 64 - ((n % 64) == 1) )) ]
    [ "$(jq '.[2]' t1)" = $(( n - $(jq '.[3]' t1) - ((n % 64) == 1) )) ]
}

@test "--kl of a model against itself is zero with full top-1 agreement" {
    qeval "$DATA/stories260k" "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" --kl --json > out.json
    [ "$(jq .kl.max out.json)" = 0 ]
    [ "$(jq .top1_agreement out.json)" = 1 ]
    [ "$(jq .ppl_base out.json)" = "$(jq .ppl_compressed out.json)" ]
}

@test "--kl of f32 against bf16 weights is small but not zero, with ordered percentiles" {
    qeval "$DATA/stories260k/model.safetensors" "$DATA/stories260k/model-bf16.safetensors" \
        --tokens "$DATA/stories260k/greedy.tokens.u32" --kl --json > out.json
    jq -e '.kl.mean > 0 and .kl.mean < 0.05' out.json
    jq -e '.kl.p50 <= .kl.p90 and .kl.p90 <= .kl.p99 and .kl.p99 <= .kl.max' out.json
    jq -e '.top1_agreement > 0.8 and .top1_agreement <= 1' out.json
    close "$(jq .ppl_base out.json)" 2.50596 0.001
    qeval "$DATA/stories260k/model.safetensors" "$DATA/stories260k/model-bf16.safetensors" \
        --tokens "$DATA/stories260k/greedy.tokens.u32" > out.txt
    grep -q '^top-1 agreement' out.txt
}

@test "qeval A B compares every tensor: identical copies have no error, bf16 has 16 bits and ~55 dB" {
    qeval "$DATA/stories260k/model.safetensors" "$DATA/stories260k/model.safetensors" --json > same.json
    [ "$(jq '.tensors | length' same.json)" = 47 ]
    jq -e 'all(.tensors[]; .rel_mse == 0 and .sqnr_db == null and .max_abs_err == 0)' same.json
    qeval "$DATA/stories260k/model.safetensors" "$DATA/stories260k/model-bf16.safetensors" --json > bf.json
    jq -e 'all(.tensors[]; .bits_per_weight == 16 and .sqnr_db > 50 and .sqnr_db < 60 and .cosine > 0.9999)' bf.json
    jq -e '.total.bits_per_weight == 16' bf.json
    qeval "$DATA/stories260k/model.safetensors" "$DATA/stories260k/model-bf16.safetensors" > table.txt
    grep -q '^model.layers.4.mlp.down_proj.weight  *16.00 ' table.txt
}

@test "qeval A B --stats adds the proxy loss tr(dW H dW^T) for calibrated linears, --svg draws a chart" {
    qcal "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" -o cal.qs
    qeval "$DATA/stories260k/model.safetensors" "$DATA/stories260k/model-bf16.safetensors" \
        --stats cal.qs --json --svg err.svg > out.json
    jq -e '[.tensors[] | select(.name | test("proj"))] | length == 35 and all(.proxy_loss > 0)' out.json
    jq -e '.tensors[] | select(.name == "model.norm.weight") | .proxy_loss == null' out.json
    head -c 4 err.svg | grep -q '<svg'
    grep -c '<polyline' err.svg | grep -qx 7
}

@test "a config.json contradicting the tensor shapes fails cleanly" {
    mkdir m
    ln -s "$DATA/ts3m-bf16/model.safetensors" m/model.safetensors
    sed 's/"hidden_size": 256/"hidden_size": 128/' "$DATA/ts3m-bf16/config.json" > m/config.json
    fails_cleanly "qeval m --tokens '$DATA/text/eval.tokens.u32'"
    [[ "$ERR" == *"model.embed_tokens.weight"*"[1024, 256]"*"[1024, 128]"* ]]
    [ "$(wc -l < "$T/fc.err")" = 1 ]
}

@test "an unknown architecture fails cleanly" {
    mkdir m
    ln -s "$DATA/ts3m-bf16/model.safetensors" m/model.safetensors
    sed 's/"model_type": "llama"/"model_type": "gpt2"/' "$DATA/ts3m-bf16/config.json" > m/config.json
    fails_cleanly "qeval m --tokens '$DATA/text/eval.tokens.u32'"
    [[ "$ERR" == *"unsupported architecture 'gpt2'"* ]]
}

@test "a text with invalid UTF-8 fails cleanly, naming the byte" {
    printf 'Once upon a time\xff there' > bad.txt
    fails_cleanly "qeval '$DATA/ts3m-bf16' --text bad.txt"
    [[ "$ERR" == "qeval: bad.txt: invalid UTF-8 at byte 16" ]]
}

@test "an empty text fails cleanly" {
    : > empty.txt
    fails_cleanly "qeval '$DATA/ts3m-bf16' --text empty.txt"
    [[ "$ERR" == "qeval: empty.txt: empty text" ]]
}

@test "other bad inputs fail cleanly: no tokenizer, bad ids, a too long context, a missing model" {
    fails_cleanly "qeval '$DATA/stories260k' --text '$DATA/text/eval.txt'"
    [[ "$ERR" == *"no tokenizer.json"* ]]
    printf 'abc' > odd.u32
    fails_cleanly "qeval '$DATA/stories260k' --tokens odd.u32"
    fails_cleanly "qeval '$DATA/stories260k' --tokens '$DATA/text/eval.tokens.u32'"
    [[ "$ERR" == *"token id"*"outside the vocabulary"* ]]
    fails_cleanly "qeval '$DATA/ts3m-bf16' --text '$DATA/text/eval.txt' --ctx 4096"
    fails_cleanly "qeval nonexistent --text '$DATA/text/eval.txt'"
    fails_cleanly "qeval '$DATA/stories260k' --bogus"
    fails_cleanly "qeval '$DATA/stories260k/config.json' --tokens '$DATA/stories260k/greedy.tokens.u32'"
}

@test "--stream-layers gives the same perplexity, to every printed digit (ts3m, stories260k, a stdin stream)" {
    head -c 6000 "$DATA/text/eval.txt" > short.txt
    qeval "$DATA/ts3m-bf16" --text short.txt --ctx 100 --json | jq -c '[.ppl, .nll, .tokens, .windows]' > a
    qeval "$DATA/ts3m-bf16" --text short.txt --ctx 100 --json --stream-layers --threads 2 | jq -c '[.ppl, .nll, .tokens, .windows]' > b
    cmp a b
    qcat "$DATA/ts3m-bf16" | qeval - --text short.txt --ctx 100 --json --stream-layers | jq -c '[.ppl, .nll, .tokens, .windows]' > c
    cmp a c
    qeval "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" --json --stream-layers > s.json
    close "$(jq .ppl s.json)" 2.50596 0.001
    qeval "$DATA/stories260k" --tokens "$DATA/stories260k/greedy.tokens.u32" --json | jq .nll > m1
    jq .nll s.json > m2
    cmp m1 m2
}

@test "--stream-layers --kl of a model against itself: KL 0, top-1 agreement 1; --generate refuses it" {
    head -c 3000 "$DATA/text/eval.txt" > short.txt
    qeval "$DATA/ts3m-bf16" "$DATA/ts3m-bf16" --text short.txt --ctx 64 --kl --stream-layers --json > kl.json
    jq -e '.kl.max == 0 and .top1_agreement == 1 and .ppl_base == .ppl_compressed' kl.json
    fails_cleanly "qeval '$DATA/ts3m-bf16' --generate 4 --stream-layers"
    [[ "$ERR" == *"--stream-layers goes with perplexity"* ]]
}
