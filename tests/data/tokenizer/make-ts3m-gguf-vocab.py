# Writes tests/data/tokenizer/ts3m-gguf-vocab.json: tokenizer.ggml.* of llama.cpp's ts3m-f16.gguf.
import struct, json
f = open('/work/shared/fixtures/ts3m-gguf/ts3m-f16.gguf', 'rb').read()
o = 0
def rd(fmt):
    global o
    v = struct.unpack_from('<' + fmt, f, o); o += struct.calcsize('<' + fmt); return v[0]
def rs():
    global o
    n = rd('Q'); s = f[o:o + n].decode('utf-8'); o += n; return s
T = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?', 10: 'Q', 11: 'q', 12: 'd'}
def rv(t):
    if t == 8: return rs()
    if t == 9:
        et = rd('I'); n = rd('Q'); return [rv(et) for _ in range(n)]
    return rd(T[t])
assert f[:4] == b'GGUF'; o = 4; rd('I'); rd('Q'); nkv = rd('Q')
kv = {}
for _ in range(nkv):
    k = rs(); t = rd('I'); kv[k] = rv(t)
out = {k[len('tokenizer.ggml.'):]: v for k, v in kv.items() if k.startswith('tokenizer.ggml.')}
json.dump(out, open('/work/main/tests/data/tokenizer/ts3m-gguf-vocab.json', 'w'), ensure_ascii=False, indent=0)
print({k: (len(v) if isinstance(v, list) else v) for k, v in out.items()})
