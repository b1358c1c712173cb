#!/usr/bin/env python3
"""bitsandbytes 8-bit (LLM.int8) checkpoints between shardq and transformers, both ways.

1. `check SHARDQ_OUT SOURCE`: SHARDQ_OUT is what `shardq quantize SOURCE --out SHARDQ_OUT --quant int8`
   wrote.  transformers loads it (`from_pretrained(..., device_map="cpu")`, the 8-bit config read
   from its config.json); every Linear8bitLt's int8 weight and SCB must equal the bytes shardq
   wrote, and equal what transformers + bitsandbytes make of SOURCE themselves
   (`BitsAndBytesConfig(load_in_8bit=True)`).  Exit 1 on any difference.

       /work/pyref/bin/python tests/reference/check_int8_roundtrip.py check OUT SOURCE

2. `fixture`: writes tests/reference/int8/llama_tiny_bnb8/, a tiny random Llama (hidden 64,
   intermediate 128, 2 layers, vocab 256; seed 7) loaded by transformers with load_in_8bit on the CPU
   and saved with save_pretrained: transformers' own 8-bit serialization, which shardq must run as
   stored.  Also writes llama_tiny_bnb8.json (a prompt, the greedy continuation) and
   llama_tiny_bnb8.logits.f32 (float32 logits, row-major [rows, vocab]) beside it: those of a float32 model whose Linear weights are the
   dequantized int8 weights (CB * SCB / 127 in float64, rounded to float32) and whose other weights
   are the saved ones: the reference tests/test_reference_logits.c compares shardq against.  Note
   that bitsandbytes' own 8-bit forward also quantizes the activations (and splits outliers at
   llm_int8_threshold): shardq does not, so that forward is not the reference.

       /work/pyref/bin/python tests/reference/check_int8_roundtrip.py fixture

Versions: tests/reference/requirements.txt (transformers 5.23.0, bitsandbytes 0.50.2, torch 2.15.0).
"""
import json
import os
import shutil
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "reference", "int8", "llama_tiny_bnb8")
PROMPT = [1, 17, 42, 99, 5, 200, 31]
N_NEW = 6


def load_8bit(path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    kw = {"device_map": "cpu"}
    cfg = json.load(open(os.path.join(path, "config.json")))
    if "quantization_config" not in cfg:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(path, **kw)


def int8_linears(model):
    import bitsandbytes as bnb
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, bnb.nn.Linear8bitLt):
            w = mod.weight
            scb = w.SCB if getattr(w, "SCB", None) is not None else mod.state.SCB
            out[name] = (w.data.clone(), scb.clone())
    return out


def read_safetensors(folder):
    from safetensors.torch import load_file
    t = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            t.update(load_file(os.path.join(folder, f)))
    return t


def check(out_dir, src_dir):
    stored = read_safetensors(out_dir)
    mine = int8_linears(load_8bit(out_dir))
    theirs = int8_linears(load_8bit(src_dir))
    assert mine, "transformers made no Linear8bitLt of " + out_dir
    assert sorted(mine) == sorted(theirs), "different sets of 8-bit Linears"
    bad = 0
    for name, (cb, scb) in mine.items():
        w_file, s_file = stored[name + ".weight"], stored[name + ".SCB"]
        cb2, scb2 = theirs[name]
        ok = (cb.dtype == torch.int8 and torch.equal(cb, w_file) and torch.equal(scb, s_file)
              and torch.equal(cb, cb2) and torch.equal(scb.float(), scb2.float()))
        if not ok:
            bad += 1
            print("DIFFERS", name, (cb != cb2).sum().item(), "codes")
        fmt = stored.get(name + ".weight_format")
        if fmt is not None and int(fmt.item()) != 0:
            bad += 1
            print("weight_format", name, fmt)
    n = sum(v[0].numel() for v in mine.values())
    print(f"{len(mine)} Linear8bitLt, {n} int8 weights: {'all equal' if not bad else str(bad) + ' differ'} "
          "(shardq's file == transformers' load of it == transformers + bitsandbytes on the source)")
    return 1 if bad else 0


def fixture():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(7)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                      max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, torch_dtype="bfloat16")
    src = LlamaForCausalLM(cfg).to(torch.bfloat16)
    tmp = FIXTURE + ".src"
    shutil.rmtree(tmp, ignore_errors=True)
    src.save_pretrained(tmp)
    q = load_8bit(tmp)
    shutil.rmtree(FIXTURE, ignore_errors=True)
    q.save_pretrained(FIXTURE)
    shutil.rmtree(tmp)
    # the float32 reference: dequantized Linear weights, the saved dense tensors
    saved = read_safetensors(FIXTURE)
    ref = LlamaForCausalLM(cfg).float().eval()
    sd = {}
    for k, v in saved.items():
        if k.endswith(".SCB") or k.endswith(".weight_format"):
            continue
        if v.dtype == torch.int8:
            base = k[: -len("weight")]
            scb = saved[base + "SCB"].double()
            sd[k] = (v.double() * scb[:, None] / 127.0).float()
        else:
            sd[k] = v.float()
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    ids = list(PROMPT)
    rows = []
    with torch.no_grad():
        for _ in range(N_NEW):
            lg = ref(torch.tensor([ids])).logits[0].float()
            nxt = int(lg[-1].argmax())
            ids.append(nxt)
        lg = ref(torch.tensor([ids[:-1]])).logits[0].float().numpy()   # every position
    rows = lg.astype("<f4")
    gap = float(np.min([np.sort(r)[-1] - np.sort(r)[-2] for r in rows[len(PROMPT) - 1:]]))
    rows.tofile(FIXTURE + ".logits.f32")
    json.dump({"about": "float32 logits ([rows, vocab], little-endian, in llama_tiny_bnb8.logits.f32) of "
                        "the dequantized model (int8 * SCB / 127), transformers eager, over prompt + "
                        "generated[:-1]; written by tests/reference/check_int8_roundtrip.py fixture",
               "torch": torch.__version__, "prompt": PROMPT, "generated": ids[len(PROMPT):],
               "rows": int(rows.shape[0]), "vocab": int(rows.shape[1]), "min_top2_gap": gap},
              open(FIXTURE + ".json", "w"), indent=1)
    size = sum(os.path.getsize(os.path.join(FIXTURE, f)) for f in os.listdir(FIXTURE))
    print("wrote", FIXTURE, size, "bytes:", sorted(os.listdir(FIXTURE)), "generated", ids[len(PROMPT):])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 2 and sys.argv[1] == "fixture":
        fixture()
        sys.exit(0)
    print(__doc__)
    sys.exit(2)
