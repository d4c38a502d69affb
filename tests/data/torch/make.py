#!/usr/bin/env python3
"""make.py — writes the small torch-format test files in this folder (no torch needed).

Valid files are pickled by CPython's own pickler with stand-in objects that
reduce exactly like torch tensors (torch._utils._rebuild_tensor_v2 / _v3,
torch.<X>Storage, persistent ids ('storage', type, key, 'cpu', numel)), so the
opcode stream is what torch.save produces. Hostile files hand-craft opcodes.
The zip writer imitates torch's miniz writer (caffe2/serialize/inline_container.cc):
stored records, a 'FB' extra field padding each payload to 64 bytes,
general-purpose bit 3 with zero local sizes and a data descriptor, optionally
ZIP64 central-directory fields and end records. Every zip is checked by
reading it back with Python's zipfile, and every valid pickle with pickletools.

Run from the repo root:  python3 tests/data/torch/make.py
"""
import collections
import io
import os
import pickle
import pickletools
import struct
import sys
import types
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- stand-ins for the torch names the pickle refers to -------------------

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


def _named(mod, name, obj):
    obj.__module__ = mod.__name__
    obj.__qualname__ = name
    obj.__name__ = name
    setattr(mod, name, obj)
    return obj


for fn in ("_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter"):
    _named(utils, fn, lambda *a: None)
STORAGE = {}
for st in ("FloatStorage", "DoubleStorage", "ShortStorage", "ByteStorage", "IntStorage",
           "UntypedStorage", "HalfStorage"):
    STORAGE[st] = _named(torch, st, type(st, (), {}))
float8_e4m3fn = _named(torch, "float8_e4m3fn", lambda: None)


class Storage:
    def __init__(self, typ, key, numel):
        self.typ, self.key, self.numel = STORAGE[typ], key, numel


class Tensor:
    def __init__(self, storage, offset, size, stride, v3_dtype=None):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
        self.v3_dtype = v3_dtype

    def __reduce_ex__(self, proto):
        if self.v3_dtype is not None:
            return (utils._rebuild_tensor_v3, self.args + (self.v3_dtype,))
        return (utils._rebuild_tensor_v2, self.args)


class Parameter:
    def __init__(self, t):
        self.t = t

    def __reduce_ex__(self, proto):
        return (utils._rebuild_parameter, (self.t, False, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.typ, obj.key, "cpu", obj.numel)
        return None


def dumps(obj, protocol=2):
    f = io.BytesIO()
    TorchPickler(f, protocol=protocol).dump(obj)
    data = f.getvalue()
    pickletools.dis(data, io.StringIO())          # must be a well-formed pickle
    return data

# ---- zip writer imitating PyTorchStreamWriter ------------------------------


def write_zip(path, records, zip64=False, align=64):
    out = bytearray()
    cd = []
    for name, data in records:
        nb = name.encode()
        off = len(out)
        pad = (-(off + 30 + len(nb) + 4)) % align
        extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, 0x08, 0, 0, 0x21,
                           0, 0, 0, len(nb), len(extra)) + nb + extra
        out += data
        crc = zlib.crc32(data)
        if zip64:
            out += struct.pack("<IIQQ", 0x08074B50, crc, len(data), len(data))
        else:
            out += struct.pack("<IIII", 0x08074B50, crc, len(data), len(data))
        cd.append((nb, crc, len(data), off))
    cd_off = len(out)
    for nb, crc, size, off in cd:
        if zip64:
            x = struct.pack("<HHQQQ", 1, 24, size, size, off)
            sz, lho = 0xFFFFFFFF, 0xFFFFFFFF
        else:
            x, sz, lho = b"", size, off
        out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45 if zip64 else 20, 0x08, 0, 0, 0x21,
                           crc, sz, sz, len(nb), len(x), 0, 0, 0, 0, lho) + nb + x
    cd_size = len(out) - cd_off
    n = len(cd)
    if zip64:
        z64 = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_off)
        out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_off, 0)
    with open(path, "wb") as f:
        f.write(out)
    if records:
        with zipfile.ZipFile(path) as z:               # independent check of the container
            for name, data in records:
                assert z.read(name) == data, name
    return bytes(out)


def torch_zip(fname, pkl, storages, folder="archive", byteorder="little", zip64=False):
    recs = [(folder + "/data.pkl", pkl)]
    if byteorder is not None:
        recs.append((folder + "/byteorder", byteorder.encode()))
    for key, data in storages:
        recs.append((folder + "/data/" + key, data))
    recs.append((folder + "/version", b"3\n"))
    return write_zip(os.path.join(HERE, fname), recs, zip64=zip64)

# ---- the valid "small" state dict (values documented in README.md) -------


def small_storages(endian):
    e = "<" if endian == "little" else ">"
    return [
        ("0", struct.pack(e + "24f", *[k * 0.5 - 3 for k in range(24)])),
        ("1", struct.pack(e + "5d", *[k / 3 for k in range(5)])),
        ("2", struct.pack(e + "6h", *[-1000 * k for k in range(6)])),
        ("3", bytes([(250 + k) % 256 for k in range(8)])),
        ("4", bytes([0x38 + k for k in range(6)])),
        ("5", struct.pack(e + "24i", *[7 * m - 50 for m in range(24)])),
    ]


def small_dict():
    s0 = Storage("FloatStorage", "0", 24)
    d = collections.OrderedDict()
    d["a"] = Tensor(s0, 0, (4, 6), (6, 1))
    d["a_t"] = Tensor(s0, 0, (6, 4), (1, 6))
    d["win"] = Tensor(s0, 7, (2, 3), (6, 2))
    d["scalar"] = Tensor(s0, 5, (), ())
    d["empty"] = Tensor(s0, 0, (0, 3), (3, 1))
    d["bcast"] = Tensor(s0, 2, (3, 4), (0, 1))
    d["d"] = Tensor(Storage("DoubleStorage", "1", 5), 0, (5,), (1,))
    d["h16"] = Tensor(Storage("ShortStorage", "2", 6), 0, (2, 3), (3, 1))
    d["u8"] = Tensor(Storage("ByteStorage", "3", 8), 0, (8,), (1,))
    d["f8"] = Tensor(Storage("UntypedStorage", "4", 6), 0, (2, 3), (3, 1), v3_dtype=float8_e4m3fn)
    d["param"] = Parameter(Tensor(s0, 0, (24,), (1,)))
    d["i32_3d"] = Tensor(Storage("IntStorage", "5", 24), 0, (2, 3, 4), (1, 2, 6))
    d._metadata = collections.OrderedDict([("", {"version": 1})])   # -> BUILD, must be ignored
    return d


def make_valid():
    torch_zip("small.pt", dumps(small_dict(), 2), small_storages("little"), zip64=True)
    torch_zip("small-be.pt", dumps(small_dict(), 4), small_storages("big"), folder="small-be",
              byteorder="big")
    nested = {"epoch": 3, "lr": 0.5, "state_dict": small_dict()}
    torch_zip("nested.pt", dumps(nested, 2), small_storages("little"), folder="nested", byteorder=None)
    # two shards + index (weights of small.pt split in two files)
    sd = small_dict()
    st = dict(small_storages("little"))
    first = collections.OrderedDict((k, sd[k]) for k in ("a", "a_t", "win", "scalar"))
    second = collections.OrderedDict((k, sd[k]) for k in ("d", "h16"))
    torch_zip("shard-00001-of-00002.bin", dumps(first), [("0", st["0"])], folder="shard-00001-of-00002")
    torch_zip("shard-00002-of-00002.bin", dumps(second), [("1", st["1"]), ("2", st["2"])],
              folder="shard-00002-of-00002")
    wm = {k: "shard-00001-of-00002.bin" for k in first}
    wm.update({k: "shard-00002-of-00002.bin" for k in second})
    import json
    with open(os.path.join(HERE, "sharded.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f, indent=1)
    bad = dict(wm, h16="shard-00001-of-00002.bin")
    with open(os.path.join(HERE, "bad-shard.bin.index.json"), "w") as f:
        json.dump({"weight_map": bad}, f, indent=1)
    missing = dict(wm, ghost="shard-00002-of-00002.bin")
    with open(os.path.join(HERE, "missing.bin.index.json"), "w") as f:
        json.dump({"weight_map": missing}, f, indent=1)

# ---- hostile files -----------------------------------------------------------


def u32(n):
    return struct.pack("<I", n)


def ustr(s):
    b = s.encode()
    return b"X" + u32(len(b)) + b


def long1(n):
    b = n.to_bytes(8, "little", signed=True)
    return b"\x8a\x08" + b


def tensor_pkl(key="0", numel=24, offset=0, size=(4, 6), stride=(6, 1), dims=None):
    """One-entry OrderedDict {'w': tensor}, hand-assembled (protocol 2)."""
    def tup(vals):
        return b"(" + b"".join(long1(v) for v in vals) + b"t"
    pid = b"(" + ustr("storage") + b"ctorch\nFloatStorage\n" + ustr(key) + ustr("cpu") + long1(numel) + b"tQ"
    args = b"(" + pid + long1(offset) + tup(size) + tup(stride) + b"\x89ccollections\nOrderedDict\n)Rt"
    return (b"\x80\x02ccollections\nOrderedDict\n)R" + ustr("w") +
            b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"Rs.")


F24 = struct.pack("<24f", *range(24))

HOSTILE = {
    # name: (data.pkl bytes, storages)
    "os-system.pt": (b"\x80\x02cos\nsystem\n" + ustr("echo pwned") + b"\x85R.", []),
    "builtins-eval.pt": (b"\x80\x02cbuiltins\neval\n" + ustr("__import__('os').system('id')") + b"\x85R.", []),
    "posix-system.pt": (b"\x80\x02cposix\nsystem\n" + ustr("id") + b"\x85R.", []),
    "subprocess-stack-global.pt": (b"\x80\x04\x8c\x0asubprocess\x8c\x05Popen\x93" + ustr("id") + b"\x85R.", []),
    "reduce-storage-type.pt": (b"\x80\x02ctorch\nFloatStorage\n)R.", []),
    "unknown-opcode.pt": (b"\x80\x02(i__builtin__\nset\n.", []),
    "newobj.pt": (b"\x80\x02ccollections\nOrderedDict\n)\x81.", []),
    "build-on-list.pt": (b"\x80\x02]}b.", []),
    "deep-nesting.pt": (b"\x80\x02)" + b"\x85" * 100 + b".", []),
    "deep-marks.pt": (b"\x80\x02" + b"(" * 100 + b"N.", []),
    "self-append.pt": (b"\x80\x02]q\x00" + b"h\x00a" * 100 + b".", []),
    "huge-string.pt": (b"\x80\x02X" + u32(0xFFFFFFF0) + b"abc.", []),
    "huge-memo.pt": (b"\x80\x02Nr" + u32(0xFFFFFFFF) + b".", []),
    "no-stop.pt": (b"\x80\x02}", []),
    "missing-storage.pt": (tensor_pkl(key="7"), [("0", F24)]),
    "past-storage.pt": (tensor_pkl(size=(5, 5), stride=(5, 1)), [("0", F24)]),
    "huge-shape.pt": (tensor_pkl(size=(2**31, 2**31, 2**31), stride=(0, 0, 0)), [("0", F24)]),
    "huge-stride.pt": (tensor_pkl(size=(2, 2, 2), stride=(2**63 - 1,) * 3), [("0", F24)]),
    "numel-mismatch.pt": (tensor_pkl(numel=25), [("0", F24)]),
    "bad-key.pt": (tensor_pkl(key="../0"), [("0", F24)]),
}


def make_hostile():
    for name, (pkl, storages) in HOSTILE.items():
        torch_zip(name, pkl, storages)
    good = open(os.path.join(HERE, "small.pt"), "rb").read()
    with open(os.path.join(HERE, "truncated.pt"), "wb") as f:
        f.write(good[: len(good) // 2])
    # data.pkl with one flipped byte (the central directory CRC no longer matches)
    z = bytearray(torch_zip("bad-crc.pt", tensor_pkl(), [("0", F24)]))
    at = z.find(b"OrderedDict")
    z[at] ^= 0x20
    with open(os.path.join(HERE, "bad-crc.pt"), "wb") as f:
        f.write(z)
    torch_zip("bad-byteorder.pt", tensor_pkl(), [("0", F24)], byteorder="middle")
    with open(os.path.join(HERE, "legacy.pt"), "wb") as f:
        f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"\x80\x02M\xe9\x03.")


if __name__ == "__main__":
    make_valid()
    make_hostile()
    print("ok")
