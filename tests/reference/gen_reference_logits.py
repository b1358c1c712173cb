#!/usr/bin/env python3
"""Reference logits from transformers for `shardq make-model` checkpoints.

usage: gen_reference_logits.py SHARDQ_EXE [--out DIR] [--work DIR]

For each model below it
  1. runs `SHARDQ_EXE make-model --out <tmp> <args>` (deterministic: same args, same bytes)
     and records the args and the FNV-1a 64 hash of model.safetensors (the C test regenerates
     the folder and refuses to compare when the hash differs: rerun this script then);
  2. loads the folder with transformers (LlamaForCausalLM / Qwen2ForCausalLM /
     MistralForCausalLM via AutoModelForCausalLM, torch float32, attn_implementation="eager",
     CPU): bf16 checkpoints are widened to float32 exactly, so both sides use the same weights;
  3. for each prompt (fixed id sequences of 5, 11 and 2 tokens) runs the prompt once
     (use_cache=True) and then 8 greedy steps, each feeding the chosen token with the cache
     (the loop model.generate(do_sample=False, use_cache=True) runs; checked against generate
     itself), and writes float32 little-endian logits for every position fed:
     rows 0..T-1 are the prompt positions (row T-1: the last-position logits), row T-1+k
     (k = 0..7) the logits that chose generated token k; T + 7 rows of vocab floats;
  4. records in manifest.json: the versions, the make-model args, the hash, the prompts, the
     generated ids, the file of each prompt's logits, and the smallest top-1 / top-2 logit gap
     seen while decoding (so a reader knows how far the greedy choice is from a tie).

And for the `small` preset (NF4_MODELS: llama / qwen2 bf16, mistral f32): runs a fixed 16-token
sequence through the float32 model and through the same model whose decoder Linear weights were
round-tripped by bitsandbytes (quantize_4bit -> dequantize_4bit, NF4, blocksize 64, without and
with double quant, on the CPU), and records the per-row cosine similarity of the two logits
(no logits: 2048-wide rows would be too large to commit).  shardq's NF4 weights are
bit-exact with bitsandbytes' (tests/reference/check_transformers_load.py), so the C test must
find the same cosines up to float32 summation order.

Committed output: tests/reference/logits/manifest.json + *.f32 (tens of KB).  The C test
tests/test_reference_logits.c reads them; neither shardq nor its tests need Python.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

MODELS = [
    # name, make-model args (without --out), transformers class expected
    ("llama_tiny_bf16",
     ["--preset", "tiny", "--family", "llama", "--dtype", "bf16", "--seed", "11"],
     "LlamaForCausalLM"),
    ("qwen2_tiny_bf16",
     ["--preset", "tiny", "--family", "qwen2", "--dtype", "bf16", "--seed", "12"],
     "Qwen2ForCausalLM"),
    ("mistral_tiny_f32",
     ["--preset", "tiny", "--family", "mistral", "--dtype", "f32", "--seed", "13"],
     "MistralForCausalLM"),
]
PROMPTS = [
    [1, 17, 250, 3, 99],
    [1, 310, 42, 42, 7, 128, 64, 5, 219, 300, 11],
    [1, 77],
]
N_NEW = 8
NF4_MODELS = [
    ("llama_small_bf16",
     ["--preset", "small", "--family", "llama", "--dtype", "bf16", "--seed", "21"]),
    ("qwen2_small_bf16",
     ["--preset", "small", "--family", "qwen2", "--dtype", "bf16", "--seed", "22"]),
    ("mistral_small_f32",
     ["--preset", "small", "--family", "mistral", "--dtype", "f32", "--seed", "23"]),
]
NF4_TOKENS = [1, 1500, 33, 2047, 812, 812, 9, 400, 1999, 64, 5, 1234, 777, 2, 1024, 300]


def fnv1a64_file(path):
    h = 0xcbf29ce484222325
    p = 0x100000001b3
    mask = (1 << 64) - 1
    with open(path, "rb") as f:
        data = f.read()
    for b in data:
        h = ((h ^ b) * p) & mask
    return h, hashlib.sha256(data).hexdigest(), len(data)


def make_model(exe, args, out):
    env = dict(os.environ, OMPI_MCA_pml="ob1", OMPI_MCA_btl="self",
               OMPI_MCA_ess_singleton_isolated="1")
    r = subprocess.run([exe, "make-model", "--out", out] + args, capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"make-model failed ({r.returncode}): {r.stdout}{r.stderr}")


@torch.no_grad()
def run_prompt(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, use_cache=True)
    rows = [out.logits[0].float()]
    past = out.past_key_values
    nxt = out.logits[0, -1]
    gen, margins = [], []
    for k in range(N_NEW):
        top2 = torch.topk(nxt, 2).values
        margins.append(float(top2[0] - top2[1]))
        tok = int(torch.argmax(nxt))
        gen.append(tok)
        if k == N_NEW - 1:
            break
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[0, -1]
        rows.append(out.logits[0].float())
    logits = torch.cat(rows, 0).numpy().astype("<f4")
    # the same ids from generate() itself (greedy, cache on, EOS not allowed to stop early)
    g = model.generate(x, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False,
                       use_cache=True, pad_token_id=0)
    if g[0, len(ids):].tolist() != gen:
        raise SystemExit(f"generate() gave {g[0, len(ids):].tolist()}, the loop {gen}")
    return logits, gen, min(margins)


@torch.no_grad()
def nf4_cosines(d):
    """per-row cosine of the logits: float32 model vs its bnb NF4 round trip (dq False / True)"""
    import bitsandbytes.functional as F
    x = torch.tensor([NF4_TOKENS])
    out = {}
    for dq in (False, True):
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        ref = model(input_ids=x).logits[0]
        for n, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in n:
                q, st = F.quantize_4bit(mod.weight.data, blocksize=64, quant_type="nf4",
                                        compress_statistics=dq)
                mod.weight.data = F.dequantize_4bit(q, st).float()
        got = model(input_ids=x).logits[0]
        cos = torch.nn.functional.cosine_similarity(got.double(), ref.double(), dim=-1)
        out["nf4_dq" if dq else "nf4"] = [float(c) for c in cos]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exe")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "logits"))
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    work = a.work or tempfile.mkdtemp(prefix="sq-reflogits-")
    manifest = {
        "about": "transformers float32 eager logits for shardq make-model checkpoints; "
                 "written by tests/reference/gen_reference_logits.py, read by "
                 "tests/test_reference_logits.c. Each prompt's file: float32 LE, "
                 "(len(ids) + n_new - 1) rows x vocab: the prompt's positions, then the "
                 "cached decode steps; row len(ids)-1+k chose generated[k].",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "n_new": N_NEW,
        "models": [],
    }
    for name, args, arch in MODELS:
        d = os.path.join(work, name)
        if os.path.exists(d):
            subprocess.run(["rm", "-rf", d], check=True)
        make_model(a.exe, args, d)
        st = os.path.join(d, "model.safetensors")
        fnv, sha, n_bytes = fnv1a64_file(st)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                     attn_implementation="eager")
        model.eval()
        got_arch = type(model).__name__
        if got_arch != arch:
            raise SystemExit(f"{name}: transformers built {got_arch}, expected {arch}")
        cfg = model.config
        entry = {
            "name": name,
            "architecture": got_arch,
            "make_model_args": args,
            "command": "shardq make-model --out DIR " + " ".join(args),
            "safetensors_fnv1a64": f"{fnv:016x}",
            "safetensors_sha256": sha,
            "safetensors_bytes": n_bytes,
            "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
            "prompts": [],
        }
        for i, ids in enumerate(PROMPTS):
            logits, gen, margin = run_prompt(model, ids)
            assert logits.shape == (len(ids) + N_NEW - 1, cfg.vocab_size)
            fname = f"{name}_p{i}.f32"
            with open(os.path.join(a.out, fname), "wb") as f:
                f.write(logits.tobytes())
            entry["prompts"].append({
                "ids": ids,
                "generated": gen,
                "file": fname,
                "rows": int(logits.shape[0]),
                "min_top2_gap": margin,
                "max_abs_logit": float(np.abs(logits).max()),
            })
            print(f"{name} prompt {i} ({len(ids)} tokens): generated {gen}, "
                  f"smallest top-2 gap {margin:.3g}, max |logit| {np.abs(logits).max():.4g}")
        manifest["models"].append(entry)
    manifest["nf4_models"] = []
    import bitsandbytes
    manifest["bitsandbytes"] = bitsandbytes.__version__
    for name, args in NF4_MODELS:
        d = os.path.join(work, name)
        if os.path.exists(d):
            subprocess.run(["rm", "-rf", d], check=True)
        make_model(a.exe, args, d)
        fnv, sha, n_bytes = fnv1a64_file(os.path.join(d, "model.safetensors"))
        cos = nf4_cosines(d)
        manifest["nf4_models"].append({
            "name": name,
            "make_model_args": args,
            "command": "shardq make-model --out DIR " + " ".join(args),
            "safetensors_fnv1a64": f"{fnv:016x}",
            "safetensors_sha256": sha,
            "safetensors_bytes": n_bytes,
            "tokens": NF4_TOKENS,
            "bnb_nf4_row_cosine": cos["nf4"],
            "bnb_nf4_dq_row_cosine": cos["nf4_dq"],
        })
        print(f"{name}: bitsandbytes NF4 round trip, row cosine vs float32: "
              f"min {min(cos['nf4']):.5f} (double quant {min(cos['nf4_dq']):.5f})")
    tmp = os.path.join(a.out, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(a.out, "manifest.json"))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
