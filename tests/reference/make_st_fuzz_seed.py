"""Reference generator: writes tests/fuzz/corpus_st/ok_rust_crate, a small file written by the
official safetensors package (the Rust crate underneath), so that test_safetensors checks that
shardq reads the reference writer's output exactly (names, dtypes, shapes, offsets, values)
and the fuzzer starts from a real file.  Run once: python3 tests/reference/make_st_fuzz_seed.py"""
import os

import torch
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
tensors = {
    "model.embed_tokens.weight": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4) / 8,
    "a.f16": torch.tensor([0.5, -2.0, 65504.0], dtype=torch.float16),
    "b.f32": torch.tensor([[1.5, 2.5]], dtype=torch.float32),
    "c.f64": torch.tensor([3.25], dtype=torch.float64),
    "d.i64": torch.tensor([-7], dtype=torch.int64),
    "e.bool": torch.tensor([True, False]),
    "f.f8": torch.tensor([1.0, -0.5], dtype=torch.float8_e4m3fn),
    "g.scalar": torch.tensor(9.0),
    "h.empty": torch.zeros(0, 3, dtype=torch.int8),
}
save_file(tensors, os.path.join(here, "..", "fuzz", "corpus_st", "ok_rust_crate"), metadata={"format": "pt"})
