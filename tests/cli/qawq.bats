#!/usr/bin/env bats
# tests: qawq
# requires: qcat, qcal, qpack, qeval, qgptq, python3 (standard library only)
#
# ts3m-bf16 (tests/data) made f32 with qpack, calibrated with qcal on
# calib.txt ($CALIB_TEXT); perplexities on eval.txt ($EVAL_TEXT).
load helpers

setup_file() {
    export TS="$BATS_FILE_TMPDIR"
    qcat "$DATA/ts3m-bf16" > "$TS/bf16.qs"
    qpack --dtype f32 -o "$TS/f32/" < "$TS/bf16.qs"
    qcat "$TS/f32" > "$TS/f32.qs"
    qcal "$DATA/ts3m-bf16" --text "$CALIB_TEXT" -q -o "$TS/cal.qs"
}

ppl() {   # ppl STREAM — eval.txt perplexity, full precision
    qeval "$1" --text "$EVAL_TEXT" --json | python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["ppl"]))'
}

@test "qawq refuses to run without --stats" {
    fails_cleanly "qawq < '$TS/f32.qs'"
    [[ "$ERR" == *"--stats"* ]]
}

@test "qawq refuses --float without --bits and a missing stats file" {
    fails_cleanly "qawq --stats '$TS/cal.qs' --float < '$TS/f32.qs'"
    fails_cleanly "qawq --stats '$TS/nope.qs' < '$TS/f32.qs'"
    [[ "$ERR" == *"nope.qs"* ]]
}

@test "qawq names the weight whose statistics do not fit" {
    python3 - <<'EOF2'
import json, struct
vals = [1.0, 0.0, 0.0, 1.0]
h = json.dumps({"model.layers.0.self_attn.q_proj.weight.hessian": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
h += b' ' * (-len(h) % 8)
open('bad.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + struct.pack('<4f', *vals))
EOF2
    fails_cleanly "qawq --stats bad.safetensors < '$TS/f32.qs'"
    [[ "$ERR" == *"model.layers.0.self_attn.q_proj.weight"* ]]
}

@test "AWQ folding leaves the f32 model's perplexity unchanged (1e-4 relative)" {
    qawq --stats "$TS/cal.qs" < "$TS/f32.qs" > awq.qs
    a=$(ppl "$TS/f32.qs"); b=$(ppl awq.qs)
    echo "f32 $a awq-folded $b" >&3
    python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(0 if abs(a - b) <= 1e-4 * a else 1)" "$a" "$b"
    # the norms changed, so the identity is not trivial
    grep -a -q 'input_scale' awq.qs
}

@test "AWQ 4-bit and 3-bit g32 beat RTN at the same settings on eval.txt" {
    skip_under_valgrind "four quantizations and four eval.txt perplexities"
    for b in 4 3; do
        qawq --stats "$TS/cal.qs" --bits $b --group 32 < "$TS/bf16.qs" > awq$b.qs
        qgptq --rtn --bits $b --group 32 < "$TS/bf16.qs" > rtn$b.qs
        a=$(ppl awq$b.qs); r=$(ppl rtn$b.qs)
        echo "int${b}g32: awq $a rtn $r" >&3
        python3 -c "import sys; a, r = map(float, sys.argv[1:]); sys.exit(0 if a < r else 1)" "$a" "$r"
    done
}

@test "qawq --bits writes int codes/scales/zeros with method awq that qpack dequantizes" {
    qawq --stats "$TS/cal.qs" --bits 4 --group 64 < "$TS/bf16.qs" > q.qs
    grep -a -q 'awq' q.qs
    grep -a -q 'codes' q.qs
    qpack --dtype f32 -o q.safetensors < q.qs
    [ -s q.safetensors ]
}

@test "qawq output is byte-identical for --threads 1 and 2" {
    qawq --stats "$TS/cal.qs" --bits 3 --group 32 --threads 1 < "$TS/bf16.qs" > t1.qs
    qawq --stats "$TS/cal.qs" --bits 3 --group 32 --threads 2 < "$TS/bf16.qs" > t2.qs
    cmp t1.qs t2.qs
}

@test "--stats-out divides x2_mean by s^2 where s is the norm weight's change" {
    qawq --stats "$TS/cal.qs" --stats-out cal-awq.qs < "$TS/f32.qs" > awq.qs
    qpack -o awq.safetensors < awq.qs
    qpack -o cal.safetensors < "$TS/cal.qs"
    qpack -o cal-awq.safetensors < cal-awq.qs
    python3 - "$TS/f32/model.safetensors" <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); out = {}
    for k, v in h.get('__metadata__', {}).items():   # a stats file's shared inputs: "alias:<name>" = target
        if k.startswith('alias:'): out[k[6:]] = v
    for k, e in h.items():
        if k == '__metadata__': continue
        a, z = e['data_offsets']; raw = b[8 + n + a:8 + n + z]
        out[k] = struct.unpack('<%df' % (len(raw) // 4), raw) if e['dtype'] == 'F32' else raw
    return out
orig, new, st, st2 = load(sys.argv[1]), load('awq.safetensors'), load('cal.safetensors'), load('cal-awq.safetensors')
def get(d, k):
    while isinstance(d[k], str): k = d[k]
    return d[k]
scaled = []
for l in range(4):
    p = 'model.layers.%d.' % l
    for norm, lin in (('input_layernorm', 'self_attn.k_proj'), ('post_attention_layernorm', 'mlp.up_proj')):
        s = [a / b for a, b in zip(orig[p + norm + '.weight'], new[p + norm + '.weight'])]
        x0, x1 = get(st, p + lin + '.weight.x2_mean'), get(st2, p + lin + '.weight.x2_mean')
        for j in range(len(s)):
            assert abs(x1[j] * s[j] ** 2 - x0[j]) <= 1e-4 * abs(x0[j]) + 1e-12, (p, norm, j)
        if any(abs(v - 1) > 1e-3 for v in s): scaled.append(p + norm)
    assert (p + 'self_attn.q_proj.weight.act_hist') not in st2 and (p + 'self_attn.q_proj.weight.act_hist') in st
# the relation is checked on real scalings: the search may keep a norm as it is
# (ratio 0; on the 300 tokens of the valgrind CALIB_TEXT, layer 0's post-attention
# norm), but not most of them
assert len(scaled) >= 6, scaled
print('ok')
EOF
    # and qgptq accepts it for the scaled model
    qgptq --stats cal-awq.qs --bits 4 --group 128 < awq.qs > g.qs
    [ -s g.qs ]
}

@test "SmoothQuant folding keeps the model and records the activation scales" {
    qawq --stats "$TS/cal.qs" --smooth 0.5 < "$TS/f32.qs" > sq.qs
    grep -a -q 'act_scale' sq.qs
    a=$(ppl "$TS/f32.qs"); b=$(ppl sq.qs)
    echo "f32 $a smoothquant-folded $b" >&3
    python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(0 if abs(a - b) <= 1e-4 * a else 1)" "$a" "$b"
}

@test "qawq reports a truncated input stream and writes no end record" {
    head -c 3000000 "$TS/f32.qs" > trunc.qs
    run sh -c "qawq --stats '$TS/cal.qs' < trunc.qs > out.qs 2> err"
    [ "$status" -ne 0 ] && [ "$status" -lt 128 ]
    grep -q '^qawq: stdin' err
    run sh -c "qeval out.qs --text '$EVAL_TEXT' 2> err2"
    [ "$status" -ne 0 ] && [ "$status" -lt 128 ]
}

@test "on a model without GQA, v_proj -> o_proj is scaled too and the model is unchanged" {
    # a random 2-layer Llama with as many key/value heads as query heads (v and o are 64 x 64)
    mkdir -p mha
    python3 - <<'EOF2'
import json, random, struct
rnd = random.Random(7)
D, F, L, V = 64, 96, 2, 96
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D, "intermediate_size": F,
       "num_hidden_layers": L, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": V,
       "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
       "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
json.dump(cfg, open('mha/config.json', 'w'))
T = {"model.embed_tokens.weight": [V, D], "lm_head.weight": [V, D], "model.norm.weight": [D]}
for l in range(L):
    p = 'model.layers.%d.' % l
    T.update({p + 'input_layernorm.weight': [D], p + 'post_attention_layernorm.weight': [D],
              p + 'self_attn.q_proj.weight': [D, D], p + 'self_attn.k_proj.weight': [D, D],
              p + 'self_attn.v_proj.weight': [D, D], p + 'self_attn.o_proj.weight': [D, D],
              p + 'mlp.gate_proj.weight': [F, D], p + 'mlp.up_proj.weight': [F, D], p + 'mlp.down_proj.weight': [D, F]})
hdr, blobs, off = {}, [], 0
for name, shape in sorted(T.items()):
    n = 1
    for s in shape: n *= s
    vals = [1.0 + 0.3 * rnd.gauss(0, 1) for _ in range(n)] if len(shape) == 1 else \
           [rnd.gauss(0, 0.15) * (4.0 if i % shape[-1] in (3, 17) else 1.0) for i in range(n)]
    b = struct.pack('<%df' % n, *vals)
    hdr[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
    blobs.append(b); off += len(b)
h = json.dumps(hdr).encode(); h += b' ' * (-len(h) % 8)
open('mha/model.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + b''.join(blobs))
ids = [1] + [rnd.randrange(3, V) for _ in range(1023)]
open('ids.u32', 'wb').write(struct.pack('<%dI' % len(ids), *ids))
EOF2
    qcat mha > mha.qs
    qcal mha --tokens ids.u32 --seqlen 64 -q -o mcal.qs
    qawq --stats mcal.qs -v < mha.qs > mawq.qs 2> log
    grep -q 'v->o: alpha' log
    a=$(qeval mha.qs --tokens ids.u32 --ctx 64 --json | python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["ppl"]))')
    b=$(qeval mawq.qs --tokens ids.u32 --ctx 64 --json | python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["ppl"]))')
    echo "random MHA model: $a folded: $b" >&3
    python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(0 if abs(a - b) <= 1e-4 * a else 1)" "$a" "$b"
    # and 3-bit AWQ beats 3-bit RTN on its own calibration tokens
    qawq --stats mcal.qs --bits 3 --group 32 < mha.qs > m3.qs
    qgptq --rtn --bits 3 --group 32 < mha.qs > r3.qs
    qeval mha.qs m3.qs --tokens ids.u32 --ctx 64 --kl --json > kl_awq.json
    qeval mha.qs r3.qs --tokens ids.u32 --ctx 64 --kl --json > kl_rtn.json
    python3 -c "
import json; a = json.load(open('kl_awq.json'))['kl']['mean']; r = json.load(open('kl_rtn.json'))['kl']['mean']
print('random MHA model, int3g32 KL vs base: awq', a, 'rtn', r); assert a < r" >&3
}

@test "an AWQ checkpoint round-trips through qcat to exactly qawq's values" {
    qcal "$DATA/ts3m-bf16" --text "$CALIB_TEXT" --samples 8 --seqlen 128 -o cm.qs
    qcat "$DATA/ts3m-bf16" | qawq --stats cm.qs --bits 4 --group 128 --f16-scales > awq.qs
    qpack --format awq -o awqck/ < awq.qs
    python3 -c 'import json; q = json.load(open("awqck/config.json"))["quantization_config"]; assert q["quant_method"] == "awq" and q["version"] == "gemm" and q["bits"] == 4, q'
    qcat awqck | qpack --dtype f32 -o back.safetensors
    qpack --dtype f32 -o want.safetensors < awq.qs
    same_tensors want.safetensors back.safetensors
}
