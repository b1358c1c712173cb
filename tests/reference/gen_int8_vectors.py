#!/usr/bin/env python3
"""Generates tests/reference/quant/int8_vectors.bin: reference vectors for shardq's row-wise absmax
int8 quantization (sq_quant_int8), made with the real bitsandbytes on the CPU:
Int8Params._quantize, i.e. W.to(float16) then bnb.functional.int8_vectorwise_quant (threshold 0).

    /work/pyref/bin/python tests/reference/gen_int8_vectors.py

Generated with bitsandbytes 0.50.2, torch 2.15.0 (CPU).  Cases: f32 / f16 / bf16 sources, odd
column counts, a single row, all-zero rows, rows of one huge / one tiny value, values that
overflow float16 (they become inf there: bnb then stores SCB = inf and NaN codes, which shardq
refuses, so such rows are NOT in the vectors; test_quant_int8 checks the refusal itself),
values that are exact .5 ties after scaling, subnormal float16s.

File format (little-endian), read by tests/test_quant_int8.c without Python:
  "SQI8" u32 version=1 u32 n_cases
  n_cases x {
    u8 name_len, name bytes
    u8 dtype (0 f32, 1 f16, 2 bf16), u8 0, u8 0, u8 0
    u32 rows, u32 cols
    input    rows * cols * dtype size
    weight   rows * cols int8     (Int8Params.CB)
    SCB      rows float32         (Int8Params.SCB)
    dequant  rows * cols float32  (bnb.functional.int8_vectorwise_dequant(CB, SCB))
  }
"""
import os
import struct

import numpy as np
import torch
import bitsandbytes.functional as F
from bitsandbytes.nn import Int8Params

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant", "int8_vectors.bin")
DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def raw(t):
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().tobytes()
    return t.contiguous().numpy().tobytes()


def cases():
    g = torch.Generator().manual_seed(1234)
    out = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        out.append(("randn_64x96_" + str(dt)[6:], torch.randn(64, 96, generator=g).to(dt)))
        out.append(("randn_odd_7x33_" + str(dt)[6:], (torch.randn(7, 33, generator=g) * 0.02).to(dt)))
    out.append(("one_row_1x5", torch.tensor([[0.5, -1.25, 3.0, 0.001, -3.0]])))
    z = torch.randn(6, 40, generator=g)
    z[1] = 0
    z[4] = 0
    out.append(("zero_rows_6x40", z))
    e = torch.randn(5, 32, generator=g) * 1e-3
    e[0, 3] = 60000.0           # huge, still finite in float16
    e[1, :] = 6e-8              # float16 subnormal everywhere
    e[2, 7] = -1e-7             # one subnormal, the rest ~1e-3
    e[3, :] = torch.linspace(-1, 1, 32)
    e[4, :] = -2.0              # every element at -absmax
    out.append(("extreme_5x32", e))
    # exact ties: absmax 127 makes the scale 1, codes are x rounded half to even
    t = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5]])
    out.append(("ties_1x16", t))
    out.append(("randn_bf16_128x64", (torch.randn(128, 64, generator=g) * 0.05).to(torch.bfloat16)))
    out.append(("uniform_f32_3x257", torch.rand(3, 257, generator=g) * 8 - 4))
    return out


def main():
    cs = cases()
    with open(OUT, "wb") as f:
        f.write(b"SQI8" + struct.pack("<II", 1, len(cs)))
        for name, w in cs:
            p = Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
            p = p._quantize("cpu")
            cb, scb = p.CB, p.SCB
            assert cb.dtype == torch.int8 and scb.dtype == torch.float32
            deq = F.int8_vectorwise_dequant(cb, scb).float()
            rows, cols = w.shape
            nb = name.encode()
            f.write(struct.pack("<B", len(nb)) + nb)
            f.write(struct.pack("<BBBBII", DT[w.dtype], 0, 0, 0, rows, cols))
            f.write(raw(w))
            f.write(cb.numpy().tobytes())
            f.write(scb.numpy().astype("<f4").tobytes())
            f.write(deq.numpy().astype("<f4").tobytes())
            print(f"{name}: [{rows}, {cols}] {w.dtype}; zero rows -> codes {cb[(scb == 0)].unique().tolist()}")
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
