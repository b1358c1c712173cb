#!/usr/bin/env python3
"""Reference figures of the project's real model (SmolLM2-135M-Instruct, Q4_1 GGUF) from
transformers' own GGUF loader, float32 on the CPU.  Writes tests/reference/smollm2/:

  reference.json   the file's sha256; for each prompt: text (or chat messages), prompt_ids as
                   transformers' GGUF tokenizer encodes them (with the model's Digits
                   pre-tokenizer restored), greedy ids, and the top-1 minus
                   top-2 logit margin at every step (tests compare tokens up to the first step
                   whose margin is below 1e-3); perplexity on GPL-3 at ctx 256 by llama.cpp's
                   method (as stored; and after bitsandbytes NF4 / FP4 re-quantize the
                   dequantized Linear weights, blocksize 64, the way `shardq --quant` does:
                   embeddings, norms and the tied head stay as stored).
  logits_step0.f32 float32 [n_prompts][vocab]: the logits the first generated token comes from.

usage: gen_smollm2_reference.py GGUF_FILE [--out DIR] [--text FILE] [--ctx 256] [--new 24]
Needs: torch, transformers, gguf, bitsandbytes (tests/reference/requirements.txt).
The C tests that read these files need no Python.
"""
import argparse
import hashlib
import json
import math
import os

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    {"text": "The capital of France is"},
    {"text": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"},
    {"text": "Once upon a time, in a small village by the sea,"},
    {"text": "The three primary colors are"},
    {"text": "Water boils at 100 degrees Celsius, which is"},
    {"chat": [{"role": "user", "content": "What is the capital of France?"}]},
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def greedy(model, ids, n_new):
    out, margins, first_logits = [], [], None
    past = None
    x = torch.tensor([ids])
    with torch.no_grad():
        for step in range(n_new):
            r = model(input_ids=x, past_key_values=past, use_cache=True)
            past = r.past_key_values
            logits = r.logits[0, -1].float()
            if step == 0:
                first_logits = logits.numpy().astype(np.float32)
            top = torch.topk(logits, 2)
            margins.append(float(top.values[0] - top.values[1]))
            nxt = int(torch.argmax(logits))  # lowest index on ties, like shardq
            out.append(nxt)
            x = torch.tensor([[nxt]])
    return out, margins, first_logits


def perplexity(model, tokens, ctx):
    """llama.cpp's perplexity: chunks of ctx tokens, each chunk's second half scored."""
    n_chunks = len(tokens) // ctx
    first = ctx // 2
    nll, count = 0.0, 0
    with torch.no_grad():
        for c in range(n_chunks):
            chunk = tokens[c * ctx:(c + 1) * ctx]
            logits = model(input_ids=torch.tensor([chunk])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            for j in range(first, ctx - 1):
                nll -= float(lp[j, chunk[j + 1]])
                count += 1
    return math.exp(nll / count), n_chunks, count


def requantize(model, quant_type):
    import bitsandbytes.functional as F
    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            w = mod.weight.data
            q, st = F.quantize_4bit(w, blocksize=64, quant_type=quant_type)
            mod.weight.data = F.dequantize_4bit(q, st).to(torch.float32)
            n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "smollm2"))
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--new", type=int, default=24)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    d, f = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    # transformers' GGUF conversion drops SmolLM2's Digits pre-tokenizer; the model's own
    # tokenizer.json (and llama.cpp's "smollm" pre-tokenizer) split digits one by one
    from tokenizers import pre_tokenizers
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    os.makedirs(a.out, exist_ok=True)

    rows, prompts = [], []
    for p in PROMPTS:
        if "chat" in p:
            ids = tok.apply_chat_template(p["chat"], add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = tok(p["text"])["input_ids"]
        ids = [int(i) for i in ids]
        gen, margins, lg = greedy(model, ids, a.new)
        rows.append(lg)
        e = dict(p)
        e.update({"prompt_ids": ids, "greedy_ids": gen, "margins": margins,
                  "greedy_text": tok.decode(gen)})
        prompts.append(e)
        print(repr(e.get("text", e.get("chat"))), "->", repr(e["greedy_text"]),
              "min margin %.4g" % min(margins))
    np.stack(rows).astype("<f4").tofile(os.path.join(a.out, "logits_step0.f32"))

    with open(a.text, encoding="utf-8") as fh:
        text = fh.read()
    tokens = [int(i) for i in tok(text)["input_ids"]]
    ppl, n_chunks, scored = perplexity(model, tokens, a.ctx)
    print("perplexity as stored: %.4f (%d tokens, %d chunks, %d scored)" % (ppl, len(tokens), n_chunks, scored))
    ppl_q = {}
    for qt in ("nf4", "fp4"):
        m2 = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
        m2.eval()
        n = requantize(m2, qt)
        ppl_q[qt], _, _ = perplexity(m2, tokens, a.ctx)
        print("perplexity bnb %s (%d Linear weights re-quantized): %.4f" % (qt, n, ppl_q[qt]))
        del m2

    ref = {
        "model": f, "sha256": sha256(a.gguf), "vocab": int(rows[0].shape[0]),
        "generator": "transformers %s GGUF loader, float32, torch %s" % (
            __import__("transformers").__version__, torch.__version__),
        "n_new": a.new, "prompts": prompts,
        "perplexity": {"text": os.path.basename(a.text), "ctx": a.ctx, "n_tokens": len(tokens),
                       "n_chunks": n_chunks, "scored": scored, "as_stored": ppl,
                       "bnb_nf4": ppl_q["nf4"], "bnb_fp4": ppl_q["fp4"]},
    }
    tmp = os.path.join(a.out, "reference.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(ref, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, os.path.join(a.out, "reference.json"))


if __name__ == "__main__":
    main()
