#!/usr/bin/env python3
"""Seeds of fuzz_gguf (tests/fuzz/corpus_gguf/): a tiny valid GGUF written by the `gguf` package
(every metadata value type, arrays of strings and numbers, F32 / F16 / Q8_0 tensors) and a few
broken copies.  Run: /work/pyref/bin/python tests/fuzz/make_gguf_corpus.py"""
import os
import struct

import gguf
import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus_gguf")
os.makedirs(OUT, exist_ok=True)
ok = os.path.join(OUT, "ok_tiny")
w = gguf.GGUFWriter(ok, "llama")
w.add_uint32("llama.block_count", 1)
w.add_int8("t.i8", -3)
w.add_uint16("t.u16", 7)
w.add_int64("t.i64", -1)
w.add_float64("t.f64", 0.5)
w.add_float32("llama.rope.freq_base", 10000.0)
w.add_bool("tokenizer.ggml.add_bos_token", True)
w.add_string("tokenizer.ggml.model", "gpt2")
w.add_array("tokenizer.ggml.tokens", ["a", "b", "ab"])
w.add_array("tokenizer.ggml.token_type", [1, 1, 1])
w.add_array("tokenizer.ggml.merges", ["a b"])
w.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(2, 32))
w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float16))
q8 = gguf.quants.quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32),
                          gguf.GGMLQuantizationType.Q8_0)
w.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
data = open(ok, "rb").read()
bad = {
    "bad_magic": b"GGUG" + data[4:],
    "bad_version": data[:4] + struct.pack("<I", 1) + data[8:],
    "bad_truncated": data[: len(data) // 2],
    "bad_counts": data[:8] + struct.pack("<Q", 1 << 60) + data[16:],
    "bad_empty": b"",
}
for name, b in bad.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(b)
print(f"{ok}: {len(data)} bytes; {len(bad)} broken copies")
