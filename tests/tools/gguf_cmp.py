#!/usr/bin/env python3
"""gguf_cmp.py A.gguf B.gguf — how many tensors have the same ggml type and bytes
(by name, trailing alignment padding ignored); an independent stdlib parser."""
import struct, sys
SC = {0:'<B',1:'<b',2:'<H',3:'<h',4:'<I',5:'<i',6:'<f',7:'<?',10:'<Q',11:'<q',12:'<d'}
def parse(p):
    b = open(p,'rb').read(); pos = [4]
    def take(f):
        v = struct.unpack_from(f, b, pos[0]); pos[0] += struct.calcsize(f); return v[0]
    def s():
        n = take('<Q'); r = b[pos[0]:pos[0]+n]; pos[0] += n; return r.decode()
    def val(t):
        if t == 8: return s()
        if t == 9:
            et = take('<I'); n = take('<Q'); return [val(et) for _ in range(n)]
        return take(SC[t])
    ver = take('<I'); nt = take('<Q'); nkv = take('<Q'); kv = {}
    for _ in range(nkv):
        k = s(); t = take('<I'); kv[k] = val(t)
    ts = []
    for _ in range(nt):
        name = s(); nd = take('<I'); ne = [take('<Q') for _ in range(nd)]; ty = take('<I'); off = take('<Q'); ts.append((name, ty, off))
    al = kv.get('general.alignment', 32); ds = pos[0] + (al - pos[0] % al) % al
    offs = sorted(o for _, _, o in ts) + [len(b) - ds]
    out = {}
    for name, ty, off in ts:
        nxt = min(o for o in offs if o > off) if any(o > off for o in offs) else len(b) - ds
        out[name] = (ty, b[ds+off:ds+nxt])
    return kv, out
ka, a = parse(sys.argv[1]); kb, b = parse(sys.argv[2])
same = sum(1 for k in a if k in b and a[k][0] == b[k][0] and a[k][1].rstrip(b'\0') == b[k][1].rstrip(b'\0'))
print(f"{same}/{len(a)} tensors identical (type+bytes)"); 
for k in a:
    if k not in b or a[k] != b[k]:
        if a[k][1].rstrip(b'\0') != b[k][1].rstrip(b'\0'): print(" differs:", k, a[k][0], b.get(k, (None,))[0]); 
