#!/usr/bin/env python3
"""Large tensors through bitsandbytes 0.50.2 (CPU) and through shardq quant (via ctypes, build the
library as tests/reference/quant/ctypes_wrap.c says); every output compared bit for bit, for both
CPU paths (isa 1 scalar, 2 avx2) and torch thread counts 1 and 2 (the double-quant offset).
Too big to commit as vectors.  Last run: 32 of 32 configurations EQUAL (bnb 0.50.2, torch 2.15)."""
import os
import ctypes, numpy as np, torch, bitsandbytes.functional as F, sys, time
lib = ctypes.CDLL(os.environ.get('SQQ_LIB', '/tmp/libsqq.so'))
def run(x, quant, dq, bs, tt, isa):
    rows, cols = x.shape; n = rows*cols; nb = -(-n//bs)
    dt = {torch.float32:0, torch.float16:1, torch.bfloat16:2}[x.dtype]
    src = x.contiguous().view(torch.int16 if x.dtype != torch.float32 else torch.float32).numpy()
    packed = np.zeros((n+1)//2, np.uint8); am = np.zeros(nb, np.float32); aq = np.zeros(nb, np.uint8)
    nest = np.zeros(-(-nb//256), np.float32); off = np.zeros(1, np.float32)
    deq = np.zeros(n, np.uint16 if dt else np.float32)
    P = lambda a: a.ctypes.data_as(ctypes.c_void_p)
    rc = lib.sqq(dt, P(src), ctypes.c_long(rows), ctypes.c_long(cols), quant == 'fp4', dq, ctypes.c_long(bs), tt, isa,
                 P(packed), P(am), P(aq), P(nest), P(off), P(deq))
    assert rc == 0
    return packed, am, aq, nest, off, deq
torch.manual_seed(0)
tot = 0
for (rows, cols, dtype, bs, quant) in [(4096, 4096, torch.bfloat16, 64, 'nf4'), (1024, 4099, torch.float16, 128, 'fp4'),
                                       (2048, 2048, torch.float32, 32, 'nf4'), (777, 3001, torch.bfloat16, 4096, 'nf4')]:
    x = (torch.randn(rows, cols) * 0.02 * torch.rand(rows, 1)).to(dtype)
    for tt in (1, 2):
        torch.set_num_threads(tt)
        for dq in (False, True):
            q, st = F.quantize_4bit(x, blocksize=bs, compress_statistics=dq, quant_type=quant)
            d = F.dequantize_4bit(q, st)
            for isa in (1, 2):
                packed, am, aq, nest, off, deq = run(x, quant, dq, bs, tt, isa)
                ok = np.array_equal(packed, q.reshape(-1).numpy())
                if dq:
                    ok &= np.array_equal(aq, st.absmax.numpy()) and np.array_equal(nest.view(np.uint32), st.state2.absmax.numpy().view(np.uint32)) and off.view(np.uint32)[0] == st.offset.reshape(1).numpy().view(np.uint32)[0]
                else:
                    ok &= np.array_equal(am.view(np.uint32), st.absmax.numpy().view(np.uint32))
                dn = d.contiguous().view(torch.int16).numpy().view(np.uint16).reshape(-1) if dtype != torch.float32 else d.numpy().reshape(-1)
                ok &= np.array_equal(deq.view(np.uint16) if dtype != torch.float32 else deq.view(np.uint32), dn.view(np.uint16) if dtype != torch.float32 else dn.view(np.uint32))
                tot += 1
                print(f"{rows}x{cols} {dtype} bs{bs} {quant} dq{int(dq)} torch_threads{tt} isa{isa} n_blocks={-(-rows*cols//bs)}: {'EQUAL' if ok else 'DIFFER'}", flush=True)
print('total', tot)
