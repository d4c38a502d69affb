#!/usr/bin/env python3
"""gguf_facts.py — an independent GGUF header parser (python3 stdlib only).

Prints the facts tests/unit/test_gguf.c checks for a real llama.cpp file
(version, counts, KV keys and types, tensor names/types/ne/offsets, data
start), so the C reader is cross-checked by a second implementation written
from the spec (docs/gguf.md digest §1-§2), not by itself.
Usage: gguf_facts.py FILE.gguf [--kv] [--tensors]
"""
import struct, sys

SCALAR = {0: '<B', 1: '<b', 2: '<H', 3: '<h', 4: '<I', 5: '<i', 6: '<f', 7: '<?',
          10: '<Q', 11: '<q', 12: '<d'}

def main(path, show_kv, show_t):
    b = open(path, 'rb').read()
    pos = 0
    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, b, pos); pos += struct.calcsize(fmt)
        return v[0]
    def string():
        nonlocal pos
        n = take('<Q'); s = b[pos:pos + n].decode('utf-8', 'replace'); pos += n
        return s
    def value(t):
        if t == 8: return string()
        if t == 9:
            et = take('<I'); n = take('<Q')
            return [value(et) for _ in range(n)]
        return take(SCALAR[t])
    assert b[:4] == b'GGUF'; pos = 4
    ver = take('<I'); nt = take('<Q'); nkv = take('<Q')
    print('version', ver, 'tensors', nt, 'kvs', nkv)
    align = 32
    for _ in range(nkv):
        k = string(); t = take('<I'); v = value(t)
        if k == 'general.alignment': align = v
        if show_kv:
            sv = ('[%d items, first %r]' % (len(v), v[:3])) if isinstance(v, list) else repr(v)
            print('kv', k, t, sv)
    for _ in range(nt):
        name = string(); nd = take('<I'); ne = [take('<Q') for _ in range(nd)]
        ty = take('<I'); off = take('<Q')
        if show_t: print('tensor', name, ty, ne, off)
    data = pos + (align - pos % align) % align
    print('infos_end', pos, 'data_start', data, 'file_size', len(b))

if __name__ == '__main__':
    main(sys.argv[1], '--kv' in sys.argv, '--tensors' in sys.argv)
