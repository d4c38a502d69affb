#!/usr/bin/env bats
# tests: hostile (issue 8) — headers and documents from strangers
# requires: qcat, qpack, qeval, qtok; python3 (standard library) to forge inputs
#
# Each forged input claims something absurd (sizes that overflow, data past
# the end of the file, 2^31+ elements, nesting thousands deep, forbidden
# pickle globals). Every tool must refuse it with a "prog: ..." message and a
# non-zero status, write nothing, and not try to allocate what the header
# claims: the runs are under `ulimit -v` (4 GB of address space) unless
# VALGRIND=1 (valgrind needs the space itself).
# The hand-made qstreams come from tests/fuzz/corpus/qstream (mkhostile.py).
load helpers

QS="$BATS_TEST_DIRNAME/../fuzz/corpus/qstream"

# limited CMD — CMD with the address-space limit
limited() {
    if [ "${VALGRIND:-0}" = 1 ]; then echo "$1"; else echo "ulimit -v 4000000; $1"; fi
}

# forge_st NAME HEADER_JSON DATA_BYTES [PREFIX] — a safetensors file whose
# header is HEADER_JSON and whose data is DATA_BYTES zero bytes; PREFIX
# overrides the 8-byte header length.
forge_st() {
    python3 - "$@" <<'EOF'
import struct, sys
name, hdr, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
pre = struct.pack('<Q', int(sys.argv[4]) if len(sys.argv) > 4 else len(hdr))
open(name, 'wb').write(pre + hdr + bytes(n))
EOF
}

# refused CMD — fails cleanly (helpers.bash) and leaves no output behind
refused() {
    fails_cleanly "$(limited "$1")"
    local left
    left=$(ls -d out out.* 2>/dev/null || true)
    if [ -n "$left" ]; then echo "left behind: $left"; return 1; fi
}

@test "safetensors: a shape whose element count overflows is refused" {
    forge_st x.safetensors '{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}' 16
    refused "qcat x.safetensors | qpack -o out.safetensors"
    [[ "$ERR" == *"'w'"* ]]
    refused "qcat x.safetensors --list"
}

@test "safetensors: size in bytes overflowing 64 bits is refused" {
    forge_st x.safetensors '{"w":{"dtype":"F64","shape":[281474976710656,281474976710656],"data_offsets":[0,0]}}' 0
    refused "qcat x.safetensors | qpack -o out.safetensors"
}

@test "safetensors: data_offsets past the end of the file are refused" {
    forge_st x.safetensors '{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}' 64
    refused "qcat x.safetensors | qpack -o out.safetensors"
    [[ "$ERR" == *"truncated"* || "$ERR" == *"does not match"* ]]
}

@test "safetensors: a 2^31+1-element tensor claimed by a small file is refused" {
    forge_st x.safetensors '{"w":{"dtype":"U8","shape":[2147483649],"data_offsets":[0,2147483649]}}' 1000
    refused "qcat x.safetensors | qpack -o out.safetensors"
}

@test "safetensors: a real (sparse) 2^31+1-element tensor is listed with its true size" {
    python3 - <<'EOF' || skip "no sparse files here"
import struct
h = b'{"w":{"dtype":"U8","shape":[2147483649],"data_offsets":[0,2147483649]}}'
f = open('x.safetensors', 'wb'); f.write(struct.pack('<Q', len(h)) + h); f.truncate(8 + len(h) + 2147483649)
EOF
    run bash -c "$(limited "qcat x.safetensors --list --json")"
    [ "$status" -eq 0 ]
    [[ "$output" == *"2147483649"* ]]
}

@test "safetensors: a header length of 2^60 is refused before reading it" {
    forge_st x.safetensors '{}' 0 1152921504606846976
    refused "qcat x.safetensors | qpack -o out.safetensors"
    [[ "$ERR" == *"header"* ]]
}

@test "safetensors: a 99 MB header length in a tiny file is refused" {
    forge_st x.safetensors '{}' 0 99000000
    refused "qcat x.safetensors | qpack -o out.safetensors"
}

@test "safetensors: a header nested 100000 arrays deep is refused (JSON depth limit)" {
    python3 -c "
import struct; h = b'{\"w\":' + b'[' * 100000 + b']' * 100000 + b'}'
open('x.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h)"
    refused "qcat x.safetensors | qpack -o out.safetensors"
    [[ "$ERR" == *"JSON"* || "$ERR" == *"json"* ]]
}

@test "safetensors: __metadata__ nested deep, or not strings, is refused" {
    python3 -c "
import struct; h = b'{\"__metadata__\":{\"a\":' + b'{\"b\":' * 5000 + b'1' + b'}' * 5001 + b'}'
open('x.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h)"
    refused "qcat x.safetensors | qpack -o out.safetensors"
}

@test "sharded index: shard names that escape the directory are refused" {
    mkdir m
    cp "$DATA/stories260k/model.safetensors" m/model-00001-of-00001.safetensors
    echo '{"weight_map":{"w":"../../../etc/passwd"}}' > m/model.safetensors.index.json
    refused "qcat m/model.safetensors.index.json | qpack -o out.safetensors"
    echo '{"weight_map":{"w":".."}}' > m/model.safetensors.index.json
    refused "qcat m/model.safetensors.index.json | qpack -o out.safetensors"
}

@test "sharded index: nested 50000 deep is refused" {
    mkdir m
    python3 -c "open('m/model.safetensors.index.json','w').write('{\"weight_map\":' + '[' * 50000 + ']' * 50000 + '}')"
    refused "qcat m/model.safetensors.index.json | qpack -o out.safetensors"
}

@test "qstream: a tensor claiming 4 TiB makes qpack fail without allocating it" {
    refused "qpack -o out.safetensors < '$QS/huge-shape.qs'"
    [[ "$ERR" == *"truncated"* ]]
    refused "qpack -o out/ < '$QS/huge-shape.qs'"
}

@test "qstream: an element count that overflows is refused" {
    refused "qpack -o out.safetensors < '$QS/numel-overflow.qs'"
}

@test "qstream: frames claiming 4 GB of info or 2 GB of chunk data are refused" {
    refused "qpack -o out.safetensors < '$QS/huge-info.qs'"
    [[ "$ERR" == *"frame info"* ]]
    refused "qpack -o out.safetensors < '$QS/huge-chunk.qs'"
    [[ "$ERR" == *"chunk"* ]]
}

@test "qstream: a chunk longer than its tensor is refused" {
    refused "qpack -o out.safetensors < '$QS/chunk-past.qs'"
}

@test "qstream: metadata nested 3000 deep is refused" {
    refused "qpack -o out.safetensors < '$QS/deep-meta.qs'"
}

@test "qstream: a msgpack array claiming 2^31 elements in a tiny frame is refused" {
    refused "qpack -o out.safetensors < '$BATS_TEST_DIRNAME/../fuzz/regress/qstream/msgpack-array32-count.qs'"
}

@test "config.json nested 100000 deep: qeval refuses the model" {
    mkdir m
    cp "$DATA/stories260k/model.safetensors" m/
    python3 -c "open('m/config.json','w').write('{\"model_type\":' + '[' * 100000 + ']' * 100000 + '}')"
    refused "qeval m --tokens '$DATA/stories260k/greedy.tokens.u32'"
}

@test "config.json with absurd sizes: qeval refuses before allocating" {
    mkdir m
    cp "$DATA/stories260k/model.safetensors" m/
    python3 - "$DATA" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1] + '/stories260k/config.json'))
cfg.update(num_hidden_layers=1 << 30, hidden_size=1 << 30, vocab_size=1 << 30, intermediate_size=1 << 30)
json.dump(cfg, open('m/config.json', 'w'))
EOF
    refused "qeval m --tokens '$DATA/stories260k/greedy.tokens.u32'"
}

@test "tokenizer.json nested 100000 deep: qtok refuses it" {
    mkdir m
    python3 -c "open('m/tokenizer.json','w').write('{\"model\":' + '{\"x\":' * 100000 + '1' + '}' * 100001)"
    echo hello > in.txt
    refused "qtok m in.txt"
}

@test "tokenizer.json with a merge naming unknown tokens is refused" {
    mkdir m
    python3 - "$DATA" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1] + '/ts3m-bf16/tokenizer.json'))
t['model']['merges'].append('nosuch token')
json.dump(t, open('m/tokenizer.json', 'w'))
EOF
    echo hello > in.txt
    refused "qtok m in.txt"
}

@test "GGUF: tensor and KV counts near 2^63 are refused before allocating" {
    python3 -c "
import struct; open('x.gguf','wb').write(b'GGUF' + struct.pack('<IQQ', 3, 1 << 62, 1 << 62))"
    refused "qcat x.gguf | qpack -o out.safetensors"
}

@test "GGUF: a string claiming 2^40 bytes is refused" {
    python3 -c "
import struct; open('x.gguf','wb').write(b'GGUF' + struct.pack('<IQQ', 3, 0, 1) + struct.pack('<Q', 1 << 40) + b'key')"
    refused "qcat x.gguf | qpack -o out.safetensors"
}

@test "torch: a pickle calling os.system is refused and runs nothing" {
    refused "qcat '$DATA/torch/os-system.pt' | qpack -o out.safetensors"
    [[ "$ERR" == *"os"* ]]
}

@test "torch: huge shapes, strides and memo indices are refused" {
    for f in huge-shape huge-stride huge-memo huge-string deep-nesting deep-marks; do
        refused "qcat '$DATA/torch/$f.pt' | qpack -o out.safetensors"
    done
}

@test "archives: an entry claiming 2^40 bytes in a tiny tar is refused" {
    mkdir m
    cp "$DATA/stories260k/model.safetensors" m/
    tar -cf x.tar m
    python3 - <<'EOF'
# set the size field of the first regular entry to 2^40 (octal, 11 digits + NUL)
b = bytearray(open('x.tar', 'rb').read())
for off in range(0, len(b), 512):
    if b[off + 156:off + 157] in (b'0', b'\0') and b[off:off + 1] != b'\0' and b[off + 257:off + 262] == b'ustar':
        size = b'%011o\0' % (1 << 40) if len(b'%011o' % (1 << 40)) == 11 else b'\x80' + (1 << 40).to_bytes(11, 'big')
        b[off + 124:off + 136] = size[:12].ljust(12, b'\0')
        chk = sum(b[off:off + 148]) + 8 * 32 + sum(b[off + 156:off + 512])
        b[off + 148:off + 156] = b'%06o\0 ' % chk
        break
open('x.tar', 'wb').write(bytes(b))
EOF
    refused "qcat x.tar | qpack -o out.safetensors"
}

@test "stats: a model stream given as --stats is refused by name (not read after free)" {
    qcat "$DATA/stories260k/model.safetensors" > model.qs
    refused "qgptq --stats model.qs < model.qs"
    [[ "$ERR" == *"not a stats stream (kind 'model')"* ]]
    refused "qgptq --stats '$DATA/stories260k/model.safetensors' < model.qs"
}
