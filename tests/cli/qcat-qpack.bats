#!/usr/bin/env bats
# tests: qcat qpack
# The foundation round trip: checkpoint → qstream → checkpoint is lossless,
# corruption is caught, and outputs appear whole or not at all.
load helpers

@test "qcat | qpack reproduces every tensor of an f32 safetensors file" {
    qcat "$DATA/stories260k/model.safetensors" | qpack -o out.safetensors
    same_tensors "$DATA/stories260k/model.safetensors" out.safetensors
}

@test "qcat | qpack reproduces every tensor of a bf16 safetensors file" {
    qcat "$DATA/stories260k/model-bf16.safetensors" | qpack -o out.safetensors
    same_tensors "$DATA/stories260k/model-bf16.safetensors" out.safetensors
}

@test "a model directory round-trips with its config and tokenizer files unchanged" {
    qcat "$DATA/ts3m-bf16" | qpack -o out/
    same_tensors "$DATA/ts3m-bf16" out
    for f in config.json tokenizer.json tokenizer.model tokenizer_config.json special_tokens_map.json generation_config.json; do
        cmp "$DATA/ts3m-bf16/$f" "out/$f"
    done
}

@test "a .tar.gz of a model directory is read without unpacking" {
    tar -C "$DATA" -czf model.tar.gz ts3m-bf16
    qcat model.tar.gz | qpack -o out/
    same_tensors "$DATA/ts3m-bf16" out
    cmp "$DATA/ts3m-bf16/config.json" out/config.json
}

@test "a .tar.zst archive is read too" {
    tar -C "$DATA" --zstd -cf model.tar.zst ts3m-bf16
    qcat model.tar.zst | qpack -o out.safetensors
    same_tensors "$DATA/ts3m-bf16" out.safetensors
}

@test "qpack --max-shard-size writes shards and an index that qcat reads back" {
    qcat "$DATA/ts3m-bf16" | qpack --max-shard-size 2MB -o sharded/
    [ -f sharded/model.safetensors.index.json ]
    [ -f sharded/model-00001-of-00004.safetensors ]
    [ -f sharded/model-00004-of-00004.safetensors ]
    same_tensors "$DATA/ts3m-bf16" sharded
    qcat sharded | qpack -o again.safetensors
    same_tensors "$DATA/ts3m-bf16" again.safetensors
}

@test "the shard index records the tensors' total size" {
    qcat "$DATA/ts3m-bf16" | qpack --max-shard-size 2MB -o sharded/
    total=$(python3 -c 'import json,sys; print(json.load(open("sharded/model.safetensors.index.json"))["metadata"]["total_size"])')
    [ "$total" -eq 7344640 ]
}

@test "qpack --dtype bf16 rounds f32 exactly as torch does" {
    qcat "$DATA/stories260k/model.safetensors" | qpack --dtype bf16 -o out.safetensors
    same_tensors "$DATA/stories260k/model-bf16.safetensors" out.safetensors
}

@test "qcat --list prints the manifest, --include filters it" {
    run qcat "$DATA/ts3m-bf16" --list --include 'model.layers.0.*'
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 9 ]
    [[ "${lines[0]}" == model.layers.0.* ]]
}

@test "qcat --list --json gives name, dtype, shape and bytes" {
    qcat "$DATA/stories260k/model.safetensors" --list --json > m.json
    python3 -c 'import json; m=json.load(open("m.json")); e=[x for x in m if x["name"]=="model.embed_tokens.weight"][0]; assert e["dtype"]=="f32" and e["shape"]==[512,64] and e["nbytes"]==131072, e'
}

@test "a flipped byte in a stream makes qpack fail and leaves no output" {
    qcat "$DATA/stories260k/model.safetensors" > s.qs
    size=$(stat -c %s s.qs)
    for at in 20 $((size / 3)) $((size / 2)) $((size - 20)); do
        cp s.qs bad.qs
        printf '\x5a' | dd of=bad.qs bs=1 seek=$at conv=notrunc status=none
        cmp -s s.qs bad.qs || { fails_cleanly "qpack -o out.safetensors < bad.qs"; [ ! -e out.safetensors ]; }
    done
    ls | grep -v -q tmp
}

@test "a truncated stream makes qpack fail with 'truncated' and leaves no output" {
    qcat "$DATA/stories260k/model.safetensors" > s.qs
    head -c 500000 s.qs > cut.qs
    fails_cleanly "qpack -o out/ < cut.qs"
    [[ "$ERR" == *truncated* ]]
    [ ! -e out ]
    [ -z "$(ls | grep tmp)" ]
}

@test "an upstream failure makes the downstream qpack fail, never write" {
    fails_cleanly "qcat /nonexistent | qpack -o out.safetensors"
    [ ! -e out.safetensors ]
}

@test "qcat exits quietly when its reader closes early" {
    run bash -c "qcat '$DATA/ts3m-bf16' | head -c 100 > /dev/null"
    [ "$status" -eq 0 ]
    run bash -c "set -o pipefail; qcat '$DATA/ts3m-bf16' 2>err | head -c 100 > /dev/null"
    [ "$status" -eq 141 ]
    [ ! -s err ]
}

@test "qcat refuses a malformed safetensors header with a clear error" {
    printf '\x10\x00\x00\x00\x00\x00\x00\x00{"a":{"dtype":}}' > bad.safetensors
    fails_cleanly "qcat bad.safetensors"
    [[ "$ERR" == *"invalid JSON"* ]]
}

@test "qcat refuses overlapping tensors in a safetensors file" {
    python3 - <<'PY'
import json, struct
h = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
open("bad.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + bytes(12))
PY
    fails_cleanly "qcat bad.safetensors"
    [[ "$ERR" == *overlap* ]]
}

@test "qcat refuses a truncated safetensors file" {
    head -c 100000 "$DATA/stories260k/model.safetensors" > cut.safetensors
    fails_cleanly "qcat cut.safetensors"
    [[ "$ERR" == *"truncated"* ]]
}

@test "qcat refuses a header length beyond the 100 MB limit" {
    printf '\x00\x00\x00\x10\x00\x00\x00\x00{}' > huge.safetensors
    fails_cleanly "qcat huge.safetensors"
    [[ "$ERR" == *"100 MB"* ]]
}

@test "qpack refuses to run without an output" {
    fails_cleanly "qpack < /dev/null"
}

@test "every tool answers --help and --version" {
    for t in qcat qpack; do
        run $t --help; [ "$status" -eq 0 ]; [[ "$output" == usage:* ]]
        run $t --version; [ "$status" -eq 0 ]; [[ "$output" == "$t (qpipe) "* ]]
    done
}

@test "qcat refuses to write a binary stream to a terminal" {
    run script -qec "qcat '$DATA/stories260k/model.safetensors'" /dev/null
    [ "$status" -eq 2 ]
    [[ "$output" == *"refusing to write a binary qstream to a terminal"* ]]
}

@test "qcat refuses two sources holding the same tensor" {
    fails_cleanly "qcat '$DATA/stories260k/model.safetensors' '$DATA/stories260k/model-bf16.safetensors'"
    [[ "$ERR" == *"is also in"* ]]
}

@test "progress lines are labelled with the tool's name" {
    qcat --progress "$DATA/ts3m-bf16" 2> err | qpack --progress -o out.safetensors 2> err2
    grep -q 'qcat: 39/39 tensors' err
    grep -q 'qpack: 39/39 tensors' err2
}

@test "qcat --shard K/N splits tensors into balanced disjoint sets that cover the model" {
    for k in 1 2 3; do qcat "$DATA/ts3m-bf16" --shard $k/3 --list --json > s$k.json; done
    python3 - <<'PY'
import json
sets = [json.load(open(f"s{k}.json")) for k in (1, 2, 3)]
names = [e["name"] for s in sets for e in s]
assert len(names) == len(set(names)) == 39, len(names)
loads = [sum(e["nbytes"] for e in s) for s in sets]
assert max(loads) - min(loads) <= 524288, loads
PY
}

@test "qpack --merge of qcat --shard parts equals the single-process output" {
    qcat "$DATA/ts3m-bf16" | qpack --max-shard-size 2MB -o single/
    for k in 1 2 3; do qcat "$DATA/ts3m-bf16" --shard $k/3 > part$k.qs; done
    qpack --max-shard-size 2MB -o merged/ --merge part1.qs part2.qs part3.qs
    cmp single/model.safetensors.index.json merged/model.safetensors.index.json
    for f in single/model-*.safetensors; do
        same_tensors "$f" "merged/${f#single/}"
    done
    cmp single/config.json merged/config.json
}

@test "qpack --merge refuses parts that overlap" {
    qcat "$DATA/ts3m-bf16" --shard 1/2 > a.qs
    fails_cleanly "qpack -o out/ --merge a.qs a.qs"
    [[ "$ERR" == *"appears twice"* ]]
    [ ! -e out ]
}

@test "qcat | qpack reproduces every tensor of a PyTorch pytorch_model.bin" {
    qcat "$DATA/stories260k/pytorch_model.bin" | qpack -o out.safetensors
    same_tensors "$DATA/stories260k/model.safetensors" out.safetensors
}

@test "a torch file with shared storages, views and mixed dtypes gives logical values" {
    qcat "$DATA/stories260k/pytorch_model-views.bin" | qpack -o views.safetensors
    python3 - "$DATA/stories260k/model.safetensors" <<'PY'
import json, struct, sys, array
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n]); h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], b[8+n+v["data_offsets"][0]:8+n+v["data_offsets"][1]]) for k, v in h.items()}
v, ref = load("views.safetensors"), load(sys.argv[1])
assert v["lm_head.weight"] == v["model.embed_tokens.weight"]          # shared storage, both full
g = array.array("f", ref["model.layers.0.mlp.gate_proj.weight"][2]); rows, cols = ref["model.layers.0.mlp.gate_proj.weight"][1]
t = array.array("f", v["extra.transposed_view"][2])
assert v["extra.transposed_view"][1] == [cols, rows]
assert all(t[j * rows + i] == g[i * cols + j] for i in range(rows) for j in range(cols))
u = ref["model.layers.1.mlp.up_proj.weight"]; ucols = u[1][1]
assert v["extra.slice_view"][2] == u[2][10 * ucols * 4:20 * ucols * 4]  # rows 10..19 of its base
assert v["extra.bool"][0] == "BOOL" and v["extra.int64"][0] == "I64" and v["extra.half"][0] == "F16"
assert array.array("q", v["extra.int64"][2]).tolist() == list(range(7))
PY
}

@test "a pickle that calls os.system is refused and nothing runs" {
    python3 - "$T" <<'PY'
import os, pickle, sys, zipfile
t = sys.argv[1]
payload = b"\x80\x02cos\nsystem\nX" + len(f"touch {t}/pwned".encode()).to_bytes(4, "little") + f"touch {t}/pwned".encode() + b"\x85R."
with zipfile.ZipFile(f"{t}/evil.pt", "w", zipfile.ZIP_STORED) as z:
    z.writestr("evil/data.pkl", payload); z.writestr("evil/version", "3\n")
# the payload is live: Python's own unpickler runs it (same length name, so the string header holds)
pickle.loads(payload.replace(b"pwned", b"ctrl1"))
assert os.path.exists(f"{t}/ctrl1")
PY
    fails_cleanly "qcat evil.pt"
    [[ "$ERR" == *"forbidden global 'os.system'"* ]]
    [ ! -e pwned ]
}

@test "a .zip of a model directory is read too" {
    python3 -c "
import os, sys, zipfile
with zipfile.ZipFile('model.zip', 'w', zipfile.ZIP_DEFLATED) as z:
    for f in sorted(os.listdir(sys.argv[1])): z.write(os.path.join(sys.argv[1], f), 'ts3m/' + f)
" "$DATA/ts3m-bf16"
    qcat model.zip | qpack -o out/
    same_tensors "$DATA/ts3m-bf16" out
    cmp "$DATA/ts3m-bf16/tokenizer.json" out/tokenizer.json
}
