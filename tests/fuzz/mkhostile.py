#!/usr/bin/env python3
# mkhostile.py OUTDIR — hand-made hostile qstreams (docs/qstream.md §1-2), with
# zero checksums; run fixsum (fixsum.c) on each to make them verify. They are
# seeds of corpus/qstream and inputs of tests/cli/hostile.bats:
#   huge-shape.qs    a tensor header claiming f32 [2^40] (4 TiB), then END
#   numel-overflow   shape [2^32, 2^32, 2^32] (the element count overflows)
#   huge-info.qs     a frame whose info claims 0xfffffff0 bytes
#   huge-chunk.qs    a chunk frame claiming 0x7fffffff data bytes
#   chunk-past.qs    a chunk with more bytes than the tensor has
#   deep-meta.qs     meta nested 3000 maps deep
import struct, sys

def mp(o):
    if o is None: return b"\xc0"
    if o is True: return b"\xc3"
    if o is False: return b"\xc2"
    if isinstance(o, int):
        if 0 <= o < 128: return bytes([o])
        if 0 <= o < 1 << 32: return b"\xce" + struct.pack(">I", o)
        if 0 <= o: return b"\xcf" + struct.pack(">Q", o)
        return b"\xd3" + struct.pack(">q", o)
    if isinstance(o, str):
        b = o.encode()
        return (bytes([0xa0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b
    if isinstance(o, bytes): return b"\xc4" + bytes([len(o)]) + o
    if isinstance(o, list): return bytes([0x90 | len(o)]) + b"".join(mp(x) for x in o)
    if isinstance(o, dict): return bytes([0x80 | len(o)]) + b"".join(mp(k) + mp(v) for k, v in o.items())
    raise TypeError(o)

def frame(kind, info, data=b"", ilen=None, dlen=None):
    return (bytes([0x94, kind]) + b"\xc6" + struct.pack(">I", len(info) if ilen is None else ilen) + info +
            b"\xc6" + struct.pack(">I", len(data) if dlen is None else dlen) + data + b"\xcf" + bytes(8))

MAGIC = b"\xa7qstream"
def header(manifest, meta=None):
    return frame(1, mp({"version": 1, "provenance": [], "meta": meta if meta is not None else {"kind": "model"},
                        "manifest": manifest, "files": []}))
def tensor(name, shape, index=0, dtype="f32"):
    return frame(2, mp({"name": name, "dtype": dtype, "shape": shape, "index": index,
                        "parts": [{"role": "data", "dtype": dtype, "shape": shape}]}))
def end(n, nbytes):
    return frame(4, mp({"tensors": n, "bytes": nbytes, "hash": 1 << 63}))

out = sys.argv[1]
def put(name, b): open(out + "/" + name, "wb").write(b)
T = 1 << 40
put("huge-shape.qs", MAGIC + header([{"name": "w", "dtype": "f32", "shape": [T], "nbytes": 4 * T}]) +
    tensor("w", [T]) + end(1, 4 * T))
def man(name, shape, nbytes): return [{"name": name, "dtype": "f32", "shape": shape, "nbytes": nbytes}]
put("numel-overflow.qs", MAGIC + header(man("w", [1 << 32] * 3, 0)) + tensor("w", [1 << 32] * 3) + end(1, 0))
put("huge-info.qs", MAGIC + frame(1, b"\x80", ilen=0xfffffff0))
put("huge-chunk.qs", MAGIC + header(man("w", [4], 16)) + tensor("w", [4]) + frame(3, mp({"t": 0, "o": 0}), b"\0" * 16, dlen=0x7fffffff))
put("chunk-past.qs", MAGIC + header(man("w", [1], 4)) + tensor("w", [1]) + frame(3, mp({"t": 0, "o": 0}), b"\0" * 8) + end(1, 4))
# meta = {"x": {"x": ... {} ...}} 3000 deep, encoded by hand (mp() would recurse)
deep = b"\x81\xa1x" * 3000 + b"\x80"
info = (b"\x85" + mp("version") + mp(1) + mp("provenance") + mp([]) + mp("meta") + deep +
        mp("manifest") + mp([]) + mp("files") + mp([]))
put("deep-meta.qs", MAGIC + frame(1, info) + end(0, 0))
