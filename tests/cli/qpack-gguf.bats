#!/usr/bin/env bats
# tests: qpack --gguf, qcat of GGUF
# requires: qcat (an independent python GGUF parser, tests/tools/gguf_facts.py, checks the files)
load helpers

facts() { python3 "$ROOT/tests/tools/gguf_facts.py" "$@"; }

@test "qpack --gguf f32 writes a GGUF v3 whose layout an independent parser accepts" {
    qcat "$DATA/ts3m-bf16" | qpack --gguf f32 -o m.gguf
    facts m.gguf --tensors --kv > f.txt
    grep -q '^version 3 tensors 39 ' f.txt
    # every tensor offset and the data section are 32-byte aligned, data ends the file
    python3 - <<'PY'
import re
lines = open("f.txt").read().splitlines()
offs = [int(l.split()[-1]) for l in lines if l.startswith("tensor ")]
assert all(o % 32 == 0 for o in offs), offs
m = re.search(r"data_start (\d+) file_size (\d+)", lines[-1])
assert int(m.group(1)) % 32 == 0
types = {l.split()[2] for l in lines if l.startswith("tensor ")}
assert types == {"0"}, types
PY
}

@test "the GGUF has llama.cpp's tensor names and metadata keys" {
    qcat "$DATA/ts3m-bf16" | qpack --gguf q8_0 -o m.gguf
    facts m.gguf --tensors --kv | awk '$1=="tensor" {print $2}' | sort > ours
    facts "$DATA/gguf/ts3m-q4_k_m.header" --tensors | awk '$1=="tensor" {print $2}' | sort > theirs
    diff ours theirs
    facts m.gguf --kv | awk '$1=="kv" {print $2}' | sort > ourkv
    facts "$DATA/gguf/ts3m-q4_k_m.header" --kv | awk '$1=="kv" {print $2}' | sort > theirkv
    # every key llama.cpp wrote is there (ours adds qpipe.provenance)
    comm -13 ourkv theirkv > missing
    [ ! -s missing ] || { cat missing; false; }
}

@test "qpack --gguf q4_k_m chooses the same per-tensor types as llama-quantize" {
    qcat "$DATA/ts3m-bf16" | qpack --gguf q4_k_m -o m.gguf
    facts m.gguf --tensors | awk '$1=="tensor" {print $2, $3}' | sort > ours
    facts "$DATA/gguf/ts3m-q4_k_m.header" --tensors | awk '$1=="tensor" {print $2, $3}' | sort > theirs
    diff ours theirs
}

@test "q4_0 keeps norms in F32 and puts the output in Q6_K, like llama-quantize" {
    qcat "$DATA/ts3m-bf16" | qpack --gguf q4_0 -o m.gguf
    facts m.gguf --tensors > f.txt
    grep -q '^tensor output.weight 14 ' f.txt
    grep -q '^tensor output_norm.weight 0 ' f.txt
    grep -q '^tensor blk.0.attn_q.weight 2 ' f.txt
    grep -q '^tensor token_embd.weight 2 ' f.txt
}

@test "--type-for overrides the type of matching tensors" {
    qcat "$DATA/ts3m-bf16" | qpack --gguf q4_0 --type-for '*ffn_down*=q8_0' -o m.gguf
    facts m.gguf --tensors > f.txt
    grep -q '^tensor blk.2.ffn_down.weight 8 ' f.txt
    grep -q '^tensor blk.2.ffn_up.weight 2 ' f.txt
}

@test "qcat reads an F32 GGUF back into the HF tensors it came from (names, q/k row order)" {
    qcat "$DATA/ts3m-bf16" | qpack --dtype f32 -o ref.safetensors
    qcat "$DATA/ts3m-bf16" | qpack --gguf f32 -o m.gguf
    qcat m.gguf | qpack -o back.safetensors
    same_tensors ref.safetensors back.safetensors
}

@test "qcat of a GGUF carries a config.json the engine can use" {
    qcat "$DATA/ts3m-bf16" | qpack --gguf f16 -o m.gguf
    qcat m.gguf | qpack -o back/
    python3 - <<'PY'
import json
a = json.load(open("back/config.json"))
ref = json.load(open(__import__("os").environ["DATA"] + "/ts3m-bf16/config.json"))
for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
    assert a[k] == ref[k], (k, a[k], ref[k])
assert abs(a["rms_norm_eps"] - ref["rms_norm_eps"]) < 1e-9 and a["tie_word_embeddings"] is False
PY
}

@test "qcat dequantizes a Q8_0 GGUF through qpack --dtype f32 close to the original" {
    qcat "$DATA/ts3m-bf16" | qpack --dtype f32 -o ref.safetensors
    qcat "$DATA/ts3m-bf16" | qpack --gguf q8_0 -o m.gguf
    qcat m.gguf | qpack --dtype f32 -o back.safetensors
    python3 - <<'PY'
import json, struct, array, math
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n]); h.pop("__metadata__", None)
    return {k: array.array("f", b[8+n+v["data_offsets"][0]:8+n+v["data_offsets"][1]]) for k, v in h.items()}
a, b = load("ref.safetensors"), load("back.safetensors")
assert set(a) == set(b)
for k in a:
    num = sum((x - y) ** 2 for x, y in zip(a[k], b[k])); den = sum(x * x for x in a[k]) or 1
    assert math.sqrt(num / den) < 0.01, (k, math.sqrt(num / den))
PY
}

@test "qpack --gguf refuses a stream without config.json and leaves no file" {
    qcat "$DATA/stories260k/model.safetensors" > s.qs
    fails_cleanly "qpack --gguf q8_0 -o m.gguf < s.qs"
    [[ "$ERR" == *config.json* ]]
    [ ! -e m.gguf ]
}

@test "qpack refuses an unknown GGUF type" {
    fails_cleanly "qpack --gguf q9_9 -o m.gguf < /dev/null"
}

@test "greedy generation from an F32 GGUF equals that of the safetensors model" {
    qcat "$DATA/ts3m-bf16" | qpack --gguf f32 -o m.gguf
    head -c 24 "$DATA/text/eval.tokens.u32" > prompt.u32
    qeval m.gguf --generate 40 --tokens prompt.u32 --tokens-out a.u32 > /dev/null
    qeval "$DATA/ts3m-bf16" --generate 40 --tokens prompt.u32 --tokens-out b.u32 > /dev/null
    [ "$(stat -c %s a.u32)" -ge 160 ]
    cmp a.u32 b.u32
}

@test "a GPTQ-on-Q4_0 GGUF passes qgptq's blocks through unchanged" {
    qcal "$DATA/ts3m-bf16" --text "$DATA/text/calib.txt" --samples 4 --seqlen 128 -o cal.qs
    qcat "$DATA/ts3m-bf16" | qgptq --grid q4_0 --stats cal.qs > g.qs
    qpack --gguf q4_0 -o g.gguf < g.qs
    qcat g.gguf | qpack --dtype f32 -o back.safetensors
    qpack --dtype f32 -o want.safetensors < g.qs
    # the quantized linears come back bit-exact (row permutation undone); others are re-encoded
    python3 - <<'PY'
import json, struct
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n]); h.pop("__metadata__", None)
    return {k: b[8+n+v["data_offsets"][0]:8+n+v["data_offsets"][1]] for k, v in h.items()}
a, b = load("want.safetensors"), load("back.safetensors")
lin = [k for k in a if "_proj" in k]
assert len(lin) == 28 and all(a[k] == b[k] for k in lin), [k for k in lin if a[k] != b[k]][:3]
PY
}

@test "a merged GGUF of shard streams has the single run's layout and bytes" {
    for k in 1 2; do qcat "$DATA/ts3m-bf16" --shard $k/2 > p$k.qs; done
    qpack --gguf q4_0 -o merged.gguf --merge p1.qs p2.qs
    qcat "$DATA/ts3m-bf16" | qpack --gguf q4_0 -o single.gguf
    facts merged.gguf --tensors | grep '^tensor' > a
    facts single.gguf --tensors | grep '^tensor' > b
    diff a b
    python3 "$ROOT/tests/tools/gguf_cmp.py" merged.gguf single.gguf | grep -q '^39/39 '
}
