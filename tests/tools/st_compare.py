#!/usr/bin/env python3
"""st_compare — an independent (stdlib-only) safetensors reader for tests.

Usage: st_compare.py A B   where each is a .safetensors file, a directory with
model.safetensors or a sharded model.safetensors.index.json. Exits 0 when both
hold exactly the same tensors (names, dtypes, shapes, bytes), else prints the
first difference and exits 1. Validates offsets like the reference crate."""
import json, os, struct, sys

def load_file(path):
    with open(path, 'rb') as f:
        b = f.read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop('__metadata__', None)
    out, expected = {}, 0
    for k, v in sorted(h.items(), key=lambda kv: kv[1]['data_offsets']):
        s, e = v['data_offsets']
        assert s == expected, f'{path}: hole/overlap at {k}'
        expected = e
        out[k] = (v['dtype'], v['shape'], b[8 + n + s:8 + n + e])
    assert 8 + n + expected == len(b), f'{path}: size mismatch'
    return out

def load(path):
    if os.path.isdir(path):
        idx = os.path.join(path, 'model.safetensors.index.json')
        if os.path.exists(idx):
            wm = json.load(open(idx))['weight_map']
            out = {}
            for shard in sorted(set(wm.values())):
                part = load_file(os.path.join(path, shard))
                for k in part:
                    assert wm.get(k) == shard, f'{k} not mapped to {shard}'
                out.update(part)
            assert set(out) == set(wm), 'weight_map and shards differ'
            return out
        path = os.path.join(path, 'model.safetensors')
    return load_file(path)

a, b = load(sys.argv[1]), load(sys.argv[2])
if set(a) != set(b):
    print('names differ:', sorted(set(a) ^ set(b))[:5]); sys.exit(1)
for k in sorted(a):
    if a[k] != b[k]:
        print('tensor differs:', k, a[k][:2], b[k][:2]); sys.exit(1)
print(f'{len(a)} tensors identical')
