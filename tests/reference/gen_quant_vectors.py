#!/usr/bin/env python3
"""Generates tests/reference/quant/bnb_vectors.bin: reference vectors for shardq's quant module,
made with the real bitsandbytes on the CPU.  Run from anywhere:

    python3 tests/reference/gen_quant_vectors.py

Generated with bitsandbytes 0.50.2, torch 2.15.0+cu132 (CPU, AVX2 kernels, 2 threads), Python 3.11.
On the CPU, bnb 0.50.2 quantizes 4-bit through backends/default/ops.py (torch ops) and the nested
8-bit step of double quant through libbitsandbytes_cpu (quantize_cpu_impl, a 65536-bin LUT).

File format (little-endian), read by tests/test_quant.c without Python:
  "SQQV" u32 version=1 u32 n_cases u32 n_means
  f32[16] nf4 quant_map   f32[16] fp4 quant_map   f32[256] nested (dynamic) quant_map
  n_means x { u32 n, u32 seed, f32 mean_t1, f32 mean_t2, f32 mean_t3 }
      (x = lcg(seed) floats, see lcg_floats(); torch.mean with 1, 2, 3 torch threads)
  n_cases x {
    u8 name_len, name bytes
    u8 quant (1 nf4, 2 fp4), u8 double_quant, u8 dtype (0 f32, 1 f16, 2 bf16), u8 0
    u32 blocksize, u32 rows, u32 cols
    input     n * dtype size
    packed    ceil(n / 2) bytes
    u32 n_blocks
    no dq:    f32 absmax[n_blocks]
    dq:       u8 absmax_q[n_blocks], u32 n_nested, f32 nested_absmax[n_nested], f32 offset,
              f32 absmax_dequantized[n_blocks]   (dequantize_blockwise(...) + offset)
    dequant   n * dtype size   (bnb.functional.dequantize_4bit, in the input dtype)
  }
"""
import os
import struct
import sys

import numpy as np
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant", "bnb_vectors.bin")
DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def f32bytes(t):
    return t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()


def raw(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().tobytes()


def lcg_floats(n, seed):
    """Deterministic float32 values in [0, 4): u = u * 6364136223846793005 + 1442695040888963407
    (mod 2^64); value = (u >> 40) * 2^-22.  Mirrored in tests/test_quant.c."""
    out = np.empty(n, dtype=np.float32)
    u = seed
    for i in range(n):
        u = (u * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out[i] = np.float32((u >> 40) * 2.0 ** -22)
    return out


def case(name, x2d, quant, dq, blocksize):
    rows, cols = x2d.shape
    q, st = F.quantize_4bit(x2d, blocksize=blocksize, compress_statistics=dq, quant_type=quant)
    deq = F.dequantize_4bit(q, st)
    assert deq.dtype == x2d.dtype and deq.shape == x2d.shape
    n = rows * cols
    nb = -(-n // blocksize)
    b = bytearray()
    nm = name.encode()
    b += struct.pack("<B", len(nm)) + nm
    b += struct.pack("<BBBB", 1 if quant == "nf4" else 2, 1 if dq else 0, DT[x2d.dtype], 0)
    b += struct.pack("<III", blocksize, rows, cols)
    b += raw(x2d)
    packed = q.reshape(-1)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 1) // 2
    b += packed.numpy().tobytes()
    b += struct.pack("<I", nb)
    if not dq:
        assert st.absmax.numel() == nb
        b += f32bytes(st.absmax)
    else:
        assert st.absmax.dtype == torch.uint8 and st.absmax.numel() == nb
        assert st.state2.blocksize == 256
        b += st.absmax.numpy().tobytes()
        b += struct.pack("<I", st.state2.absmax.numel())
        b += f32bytes(st.state2.absmax)
        b += f32bytes(st.offset.reshape(1))
        am = F.dequantize_blockwise(st.absmax, st.state2)
        am = am + st.offset
        b += f32bytes(am)
    b += raw(deq)
    return bytes(b)


def thresholds(quant):
    """Values whose scaled value (absmax 1, or 2 as a power of two) lands exactly on the bucketize
    bounds, one ulp either side, and on the code values themselves."""
    code = F.get_4bit_type(quant, device="cpu")
    srt = torch.sort(code).values
    bounds = (srt[:-1] + srt[1:]) / 2
    vals = [1.0, -1.0]
    for t in list(bounds) + list(code):
        t = torch.tensor([float(t)], dtype=torch.float32)
        vals += [t, torch.nextafter(t, torch.tensor([2.0])), torch.nextafter(t, torch.tensor([-2.0]))]
    v = torch.cat([torch.as_tensor(x, dtype=torch.float32).reshape(1) for x in vals])
    return v


def rounding_values(quant, bs):
    """Two blocks of bs float32 values, each block holding its absmax am (a non power of two) and
    elements x where bucketize(x * (1/am)) != bucketize(x / am)."""
    code = F.get_4bit_type(quant, device="cpu")
    srt = torch.sort(code).values
    bounds = ((srt[:-1] + srt[1:]) / 2).numpy()
    rng = np.random.default_rng(7)
    blocks = []
    for _ in range(2):
        while True:
            am = np.float32(rng.uniform(0.5, 3.0))
            r = np.float32(1.0) / am
            found = []
            for b in bounds:
                x0 = np.float32(b * am)
                cands = [x0]
                for _k in range(3):
                    cands += [np.nextafter(cands[-1], np.float32(9)), np.nextafter(cands[0], np.float32(-9))]
                for x in cands:
                    qm = np.searchsorted(bounds, np.clip(np.float32(x * r), -1, 1), side="left")
                    qd = np.searchsorted(bounds, np.clip(np.float32(x / am), -1, 1), side="left")
                    if qm != qd:
                        found.append(x)
            if len(found) >= 3:
                break
        vals = [am] + found[: bs - 1]
        vals += list(rng.uniform(-1, 1, bs - len(vals)).astype(np.float32) * am)
        blocks.append(torch.tensor(np.array(vals, dtype=np.float32)))
    return blocks[0], blocks[1]


def main():
    torch.manual_seed(1234)
    cases = []
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    # random normal weights, odd sizes and partial last blocks, every blocksize / type / dq / dtype
    shapes = [(1, 1), (1, 7), (3, 33), (5, 77), (4, 64), (17, 130)]
    k = 0
    for quant in ("nf4", "fp4"):
        for dq in (False, True):
            for bs in (32, 64, 128, 4096):
                shp_list = shapes if bs != 4096 else [(1, 7), (3, 33), (1, 4100)]
                for shp in shp_list:
                    dt = dtypes[k % 3]
                    if shp == (1, 4100):
                        dt = torch.bfloat16
                    k += 1
                    x = (torch.randn(shp) * (0.02 if k % 2 else 3.0)).to(dt)
                    cases.append(case(f"randn_{quant}_dq{int(dq)}_b{bs}_{shp[0]}x{shp[1]}_{dt}", x, quant, dq, bs))
    # values exactly on the bounds / codes (absmax 1 and 2, full and trailing blocks)
    for quant in ("nf4", "fp4"):
        t = thresholds(quant)
        for scale in (1.0, 2.0):
            v = t * scale
            for bs in (32, 64):
                # full blocks: pad to a multiple of bs with more of the same, each block keeps its 1.0
                m = v.numel()
                x = torch.cat([v, v[: (-m) % bs]]).reshape(1, -1)
                cases.append(case(f"thresh_{quant}_s{scale}_b{bs}_full", x, quant, False, bs))
                x = torch.cat([torch.randn(bs), v[:bs - 1] if v.numel() >= bs else v]).reshape(1, -1)
                cases.append(case(f"thresh_{quant}_s{scale}_b{bs}_tail", x, quant, scale == 2.0, bs))
    # reciprocal-multiply vs divide: elements whose code differs between x * (1/am) (full
    # blocks) and x / am (trailing block), so swapping the two rules fails the test
    for quant in ("nf4", "fp4"):
        full, tail = rounding_values(quant, 64)
        cases.append(case(f"rounding_{quant}_full", torch.cat([full, tail]).reshape(1, -1), quant, False, 64))
        cases.append(case(f"rounding_{quant}_tail", torch.cat([full, tail[:63]]).reshape(1, -1), quant, True, 64))
    # all-zero blocks: full, trailing partial, whole tensor; with and without dq
    for quant in ("nf4", "fp4"):
        for dq in (False, True):
            z = torch.zeros(3 * 64 + 37)
            z[64:128] = torch.randn(64)
            cases.append(case(f"zeros_{quant}_dq{int(dq)}_mixed", z.reshape(1, -1), quant, dq, 64))
            cases.append(case(f"zeros_{quant}_dq{int(dq)}_all_full", torch.zeros(2, 64), quant, dq, 64))
            cases.append(case(f"zeros_{quant}_dq{int(dq)}_all_tail", torch.zeros(1, 45), quant, dq, 64))
            cases.append(case(f"zeros_{quant}_dq{int(dq)}_bf16", torch.zeros(5, 29, dtype=torch.bfloat16), quant, dq, 32))
    # huge and tiny magnitudes (bf16 and f32 extremes, denormals, the 1e-38 clamp)
    for quant in ("nf4", "fp4"):
        for dq in (False, True):
            r = torch.randn(6, 64)
            r[0] *= 3e38 / r[0].abs().max()
            r[1] *= 1e-30
            r[2] *= 1e-39            # float32 denormals: absmax below the 1e-38 clamp
            r[3] *= 1e-44
            r[4] *= 1e20
            r[5, :] = 0
            r[5, 0] = 1e-45
            x = torch.cat([r.reshape(-1), torch.randn(21) * 1e-40]).reshape(1, -1)
            cases.append(case(f"magnitude_{quant}_dq{int(dq)}_f32", x, quant, dq, 64))
            xb = (torch.randn(4, 96) * torch.tensor([3e38, 1e-38, 1e-41, 1.0]).reshape(4, 1)).to(torch.bfloat16)
            cases.append(case(f"magnitude_{quant}_dq{int(dq)}_bf16", xb, quant, dq, 32))
            xh = (torch.randn(3, 80) * torch.tensor([60000.0, 1e-6, 1e-7]).reshape(3, 1)).to(torch.float16)
            cases.append(case(f"magnitude_{quant}_dq{int(dq)}_f16", xh, quant, dq, 32))
    # many blocks: several nested groups of 256 (dq), uneven absmax
    x = (torch.randn(10, 900) * torch.rand(10, 1) * 0.1).to(torch.bfloat16)
    cases.append(case("many_fp4_dq1_b32_bf16", x, "fp4", True, 32))
    x = (torch.randn(3, 6001) * torch.logspace(-3, 2, 3).reshape(3, 1)).to(torch.float16)
    cases.append(case("many_nf4_dq1_b64_f16", x, "nf4", True, 64))
    # NaN and Inf (bnb CPU: a NaN block is all code 15 with absmax NaN; Inf blocks code 7 / 15)
    for quant in ("nf4", "fp4"):
        for dq in (False, True):
            x = torch.randn(4, 64)
            x[0, 5] = float("nan")
            x[1, 7] = float("inf")
            x[2, 9] = float("-inf")
            cases.append(case(f"naninf_{quant}_dq{int(dq)}", x.reshape(1, -1), quant, dq, 64))

    # torch.mean of lcg floats with 1, 2, 3 threads (the double-quant offset reduction)
    means = []
    old = torch.get_num_threads()
    for n, seed in ((1, 1), (5, 2), (8, 3), (31, 4), (1000, 5), (32767, 6), (32768, 7), (32769, 8),
                    (100003, 9)):
        a = torch.from_numpy(lcg_floats(n, seed))
        ms = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            ms.append(a.mean().item())
        means.append(struct.pack("<IIfff", n, seed, *ms))
    torch.set_num_threads(old)

    hdr = b"SQQV" + struct.pack("<III", 1, len(cases), len(means))
    hdr += f32bytes(F.get_4bit_type("nf4", device="cpu")) + f32bytes(F.get_4bit_type("fp4", device="cpu"))
    hdr += f32bytes(F.create_dynamic_map())
    data = hdr + b"".join(means) + b"".join(cases)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tmp = OUT + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, OUT)
    print(f"wrote {OUT}: {len(cases)} cases, {len(means)} means, {len(data)} bytes "
          f"(bitsandbytes {bnb.__version__}, torch {torch.__version__})", file=sys.stderr)


if __name__ == "__main__":
    main()
