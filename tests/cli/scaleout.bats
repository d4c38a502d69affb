#!/usr/bin/env bats
# tests: scale-out — the quantization split into `qcat --shard K/N` parts run
# side by side (GNU parallel -j2, and make -j2 over pipelines/sharded.mk), the
# parts merged by `qpack --merge`, and the merged checkpoint compared with the
# single-process one. What is compared, exactly:
#   safetensors: the index (model.safetensors.index.json) byte for byte; every
#     other file of the directory (config.json, quantize_config.json, the
#     tokenizer files, ...) byte for byte; each shard file byte for byte after
#     the one value that must differ is taken out: __metadata__["qpipe.provenance"]
#     (it names the --shard/--merge arguments). That is: the rest of the header
#     JSON (names, dtypes, shapes, data offsets, other metadata) is equal, and
#     the data section (every tensor's bytes) is identical; st_compare.py
#     checks the tensors once more with its own reader.
#   GGUF: every key/value pair but qpipe.provenance, byte for byte; the same
#     tensors (name, shape, ggml type), each tensor's data byte for byte. The
#     file layout (order of the tensor infos and data) is not compared: qpack
#     --merge --gguf writes the tensors in part order (part 1's, then part
#     2's), a single run in the model's name order (reported to the lead).
# requires: GNU parallel, make, python3
load helpers

setup() {
    T="$BATS_TEST_TMPDIR"
    cd "$T" || return 1
    M="$DATA/ts3m-bf16"
    qcal "$M" --text "$DATA/text/calib.txt" --samples 8 --seqlen 128 -o cal.qs
}

# st_same_but_provenance A B: two safetensors files are identical once the
# provenance value is removed from both headers; B's provenance is printed.
st_same_but_provenance() {
    python3 - "$1" "$2" <<'PY'
import json, struct, sys
def split(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    prov = h["__metadata__"].pop("qpipe.provenance")
    return h, b[8 + n:], prov
ha, da, pa = split(sys.argv[1]); hb, db, pb = split(sys.argv[2])
assert ha == hb, "headers differ beyond the provenance"
assert da == db, "data sections differ"
assert pa != pb
print(pb)
PY
}

# gguf_same_but_provenance A B: the same for GGUF files, tensor by tensor (prints
# B's provenance).
gguf_same_but_provenance() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
SC = {0: '<B', 1: '<b', 2: '<H', 3: '<h', 4: '<I', 5: '<i', 6: '<f', 7: '<?', 10: '<Q', 11: '<q', 12: '<d'}
def parse(p):
    b = open(p, "rb").read(); pos = 4
    def take(f):
        nonlocal pos
        v = struct.unpack_from(f, b, pos); pos += struct.calcsize(f); return v[0]
    def s():
        nonlocal pos
        n = take('<Q'); r = b[pos:pos + n]; pos += n; return r.decode()
    def val(t):
        if t == 8: return s()
        if t == 9:
            et = take('<I'); n = take('<Q'); return [val(et) for _ in range(n)]
        return take(SC[t])
    ver = take('<I'); nt = take('<Q'); nkv = take('<Q')
    kv = {}
    for _ in range(nkv):
        k = s(); kv[k] = val(take('<I'))
    infos = []
    for _ in range(nt):
        name = s(); nd = take('<I'); ne = [take('<Q') for _ in range(nd)]
        infos.append((name, ne, take('<I'), take('<Q')))
    al = kv.get('general.alignment', 32)
    start = pos + (-pos) % al
    ends = sorted(o for *_, o in infos)[1:] + [len(b) - start]
    end_of = dict(zip(sorted(o for *_, o in infos), ends))
    # each tensor: shape, type, bytes (up to the next tensor: padding included)
    return ver, kv, {n: (ne, t, b[start + o:start + end_of[o]]) for n, ne, t, o in infos}
va, ka, ta = parse(sys.argv[1]); vb, kb, tb = parse(sys.argv[2])
pa, pb = ka.pop('qpipe.provenance'), kb.pop('qpipe.provenance')
assert va == vb and ka == kb, "key/value pairs differ beyond the provenance"
assert set(ta) == set(tb) and len(ta) == 39, "tensor names differ"
for n in ta:
    assert ta[n][:2] == tb[n][:2], (n, "shape/type", ta[n][:2], tb[n][:2])
    assert ta[n][2].rstrip(b"\0") == tb[n][2].rstrip(b"\0"), (n, "bytes differ")
assert pa != pb
print(pb)
PY
}

@test "GNU parallel -j2 over 3 shards, merged: the GPTQ checkpoint equals the single process's" {
    gptq="qgptq --bits 4 --group 128 --f16-scales --stats cal.qs"
    pack="qpack --format gptq --max-shard-size 1MB"
    qcat "$M" | $gptq | $pack -o single/
    parallel -j2 --halt now,fail=1 "qcat --shard {}/3 $M | $gptq > part-{}-of-3.qs" ::: 1 2 3
    $pack -o merged/ --merge part-1-of-3.qs part-2-of-3.qs part-3-of-3.qs
    ls single/model-0000*-of-0000*.safetensors | wc -l | grep -qx '[2-9]'   # really sharded
    cmp single/model.safetensors.index.json merged/model.safetensors.index.json
    diff -r -x 'model-*.safetensors' single merged
    for f in single/model-*.safetensors; do
        st_same_but_provenance "$f" "merged/${f#single/}" > prov.json
        same_tensors "$f" "merged/${f#single/}"
    done
    # the merged provenance records the first part's chain and the merge
    grep -q '"args":\["--shard","1/3",' prov.json
    grep -q '"--merge","part-1-of-3.qs","part-2-of-3.qs","part-3-of-3.qs"\]' prov.json
}

@test "GNU parallel -j2 over 2 shards on the GGUF grid, merged to GGUF: equals the single process's" {
    mkdir single merged
    qcat "$M" | qgptq --grid q4_0 --stats cal.qs | qpack --gguf q4_0 -o single/model.gguf
    parallel -j2 --halt now,fail=1 "qcat --shard {}/2 $M | qgptq --grid q4_0 --stats cal.qs > part-{}.qs" ::: 1 2
    qpack --gguf q4_0 -o merged/model.gguf --merge part-1.qs part-2.qs
    gguf_same_but_provenance single/model.gguf merged/model.gguf > prov.json
    # the first part's chain (qcat --shard 1/2, qgptq) and the merge
    grep -q '^\[{"prog":"qcat",[^]]*"args":\["--shard","1/2",' prov.json
    grep -q '"--merge","part-1.qs","part-2.qs"\]}\]$' prov.json
}

@test "the documented several-host form (parallel -S ... --basefile --return) works with the local host" {
    parallel -S 2/: --workdir . --basefile cal.qs --return part-{}-of-2.qs --cleanup \
        "qcat --shard {}/2 $M | qgptq --grid q4_0 --stats cal.qs > part-{}-of-2.qs" ::: 1 2 2> err
    mkdir single merged
    qpack --gguf q4_0 -o merged/model.gguf --merge part-1-of-2.qs part-2-of-2.qs
    qcat "$M" | qgptq --grid q4_0 --stats cal.qs | qpack --gguf q4_0 -o single/model.gguf
    gguf_same_but_provenance single/model.gguf merged/model.gguf > /dev/null
}

@test "pipelines/sharded.mk with make -j2: the merge equals gptq-gguf.mk's single run; a re-run does nothing" {
    head -c 2048 "$DATA/text/eval.tokens.u32" > ev.u32
    mkdir bin; cp "$ROOT"/bin/{qcat,qcal,qgptq,qpack,qeval} bin/     # stable while bin/ is relinked
    knobs=(MODEL="$M" TEXT="$DATA/text/calib.txt" EVAL=ev.u32 "CAL_OPTS=--samples 8 --seqlen 128"
           "EVAL_OPTS=--ctx 128" THREADS=1 QPIPE_BIN="$T/bin")
    make -s -j2 -f "$ROOT/pipelines/sharded.mk" "${knobs[@]}" OUT=sh SHARDS=3 > /dev/null
    make -s -f "$ROOT/pipelines/gptq-gguf.mk" "${knobs[@]}" OUT=one > /dev/null
    [ "$(ls sh/parts)" = "$(printf 'part-%s-of-3.qs\n' 1 2 3)" ]
    gguf_same_but_provenance one/model.gguf sh/model.gguf | grep -q '"--merge","sh/parts/part-1-of-3.qs"'
    [ "$(grep '^ppl output' sh/report.txt)" = "$(grep '^ppl output' one/report.txt)" ]
    grep -q '^parts/part-3-of-3.qs: .*/qcat --shard 3/3 ' sh/provenance.txt
    make -q -j2 -f "$ROOT/pipelines/sharded.mk" "${knobs[@]}" OUT=sh SHARDS=3
    # a GPTQ checkpoint directory instead of the GGUF
    make -s -j2 -f "$ROOT/pipelines/sharded.mk" "${knobs[@]}" OUT=shd SHARDS=2 EVAL= SHARDED_OUTPUT=model/ \
        "SHARDED_GPTQ_OPTS=--bits 4 --group 128 --f16-scales" "SHARDED_PACK_OPTS=--format gptq --max-shard-size 1MB" > /dev/null
    qcat "$M" | qgptq --bits 4 --group 128 --f16-scales --stats shd/cal.qs | qpack --format gptq --max-shard-size 1MB -o single/
    cmp single/model.safetensors.index.json shd/model/model.safetensors.index.json
    for f in single/model-*.safetensors; do st_same_but_provenance "$f" "shd/model/${f#single/}" > /dev/null; done
}
