#!/usr/bin/env python3
"""The accelerate baseline from the real libraries: for every committed model config
(tests/configs/), scheme (nf4, fp4: bitsandbytes 4-bit; bf16: none) and cluster
(cluster-configs/, plus tests/reference/cluster-a100-40gb-2x.json for the README's 70B row), build the model on the meta device, apply the bitsandbytes quantizer's
preprocess_model, and run transformers' own _get_device_map(model, "auto", max_memory,
hf_quantizer): get_balanced_memory, then the quantizer's adjust_max_memory (x0.9), then
infer_auto_device_map -- what from_pretrained(device_map="auto") (= "balanced") does.

max_memory is every device of the cluster at its full memory (GPUs: memory_gib GiB; a CPU-only
node: host_memory_gib GiB / cpu_devices), devices numbered in rank order as shardq numbers them,
all on one "node" (accelerate knows one machine).  No GPU is needed: the model is on meta.

Writes tests/reference/accelerate_maps.json (or checks it with --check: exit 1 if any map
differs).  tests/test_plan.c asserts that shardq's emulation (src/plan/accelerate.c) gives
every committed map exactly.

  python tests/reference/gen_accelerate_maps.py [--check]
Versions: tests/reference/requirements.txt (transformers 5.23.0, accelerate 1.15.0,
bitsandbytes 0.50.2, torch 2.15.0)."""
import argparse
import json
import logging
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "reference", "accelerate_maps.json")
MODELS = ["llama-2-7b.json", "mistral-7b-v0.1.json", "llama-3-70b.json", "qwen2-72b-instruct.json",
          "llama-3.1-405b.json"]
QUANTS = ["nf4", "fp4", "none"]
CLUSTERS = ["cluster-configs/" + c for c in (
    "rtx4090-4x-pcie.json", "a100-40gb-8x.json", "a100-80gb-2xa10-hetero.json",
    "dgx-h100-2node.json", "cpu-4rank.json")] + ["tests/reference/cluster-a100-40gb-2x.json"]
GIB = 1 << 30


def gib_bytes(g):
    return int(round(g * GIB))


def cluster_memory(path):
    c = json.load(open(path))
    mem = []
    for node in c["nodes"]:
        per = []
        for g in node.get("gpus", []):
            per += [gib_bytes(g["memory_gib"])] * int(g.get("count", 1))
        if not per:
            n = int(node.get("cpu_devices", 1))
            per = [gib_bytes(node["host_memory_gib"]) // n] * n
        mem += per * int(node.get("count", 1))
    return mem


def meta_model(cfg_path, quant):
    """the model on the meta device, after the bnb quantizer's preprocess_model (4-bit)"""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.quantizers import AutoHfQuantizer

    d = json.load(open(cfg_path))
    cfg = AutoConfig.for_model(d.pop("model_type"), **d)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    hq = None
    if quant != "none":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        hq = AutoHfQuantizer.from_config(q, pre_quantized=False)
        hq.preprocess_model(model=model, device_map="auto", dtype=torch.bfloat16)
    return model, hq, cfg.num_hidden_layers


def device_map_for(model, hq, max_memory):
    """_get_device_map(model, "auto", max_memory, hq) step by step, so that a map with modules
    on cpu / disk is recorded too (bitsandbytes' validate_environment then refuses to load);
    the planner functions only read the model"""
    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    mm = {i: m for i, m in enumerate(max_memory)}
    no_split = model._no_split_modules
    inferred = get_balanced_memory(model, max_memory=mm, no_split_module_classes=no_split,
                                   hf_quantizer=hq, low_zero=False)
    if hq is not None:
        inferred = hq.adjust_max_memory(inferred)
    dm = infer_auto_device_map(model, max_memory=inferred, no_split_module_classes=no_split,
                               hf_quantizer=hq,
                               no_placement_params=getattr(model, "_no_placement_params", None))
    refused = None
    if hq is not None:
        try:
            hq.validate_environment(device_map=dm)
        except ValueError as e:
            refused = str(e).split(".")[0]
    return dm, refused


def where(dm, name):
    """the device of module `name` in a cleaned device map (the longest key that contains it)"""
    best = None
    for k, v in dm.items():
        if k == "" or name == k or name.startswith(k + "."):
            if best is None or len(k) > len(best[0]):
                best = (k, v)
    return None if best is None else best[1]


def summarize(dm, n_layers, n_dev):
    counts = [0] * n_dev
    off = 0
    for i in range(n_layers):
        d = where(dm, "model.layers.%d" % i)
        if isinstance(d, int):
            counts[d] += 1
        else:
            off += 1

    def dev(name):
        d = where(dm, name)
        return d if isinstance(d, int) else (d if d is not None else "tied")
    return {"layers": counts, "offloaded_layers": off, "embed": dev("model.embed_tokens"),
            "norm": dev("model.norm"), "head": dev("lm_head")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="compare with the committed file")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    import accelerate
    import bitsandbytes
    import torch
    import transformers
    cases = []
    for mdl in MODELS:
        for quant in QUANTS:
            model, hq, n_layers = meta_model(os.path.join(ROOT, "tests", "configs", mdl), quant)
            for cl in CLUSTERS:
                mem = cluster_memory(os.path.join(ROOT, cl))
                dm, refused = device_map_for(model, hq, mem)
                case = {"model": mdl, "quant": quant, "cluster": cl, "max_memory": mem}
                case.update(summarize(dm, n_layers, len(mem)))
                case["bnb_refuses"] = refused
                case["device_map"] = {k: v for k, v in dm.items()}
                cases.append(case)
                print("%-24s %-4s %-28s %s embed %s head %s off %d" % (
                    mdl, quant, cl, "/".join(map(str, case["layers"])), case["embed"],
                    case["head"], case["offloaded_layers"]), file=sys.stderr)
    doc = {"generator": "tests/reference/gen_accelerate_maps.py",
           "versions": {"transformers": transformers.__version__, "accelerate": accelerate.__version__,
                        "bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__.split("+")[0]},
           "call": "transformers.integrations.accelerate._get_device_map(meta model after bnb "
                   "preprocess_model, 'auto', max_memory, hf_quantizer), step by step: "
                   "get_balanced_memory, adjust_max_memory, infer_auto_device_map; bnb_refuses: "
                   "what validate_environment then says (modules on cpu / disk)",
           "cases": cases}
    # one case per line: small diffs when a version changes a map
    head = json.dumps({k: v for k, v in doc.items() if k != "cases"}, indent=1)
    text = head[:-2] + ',\n "cases": [\n' + ",\n".join(json.dumps(c) for c in cases) + "\n ]\n}\n"
    assert json.loads(text) == json.loads(json.dumps(doc))
    if args.check:
        old = json.load(open(OUT))
        bad = [(a["model"], a["quant"], a["cluster"]) for a, b in zip(old["cases"], cases)
               if {k: v for k, v in a.items()} != json.loads(json.dumps(b))]
        if len(old["cases"]) != len(cases) or bad:
            print("accelerate maps differ from the committed file: %s" % bad, file=sys.stderr)
            return 1
        print("all %d accelerate maps equal the committed file" % len(cases))
        return 0
    tmp = OUT + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, OUT)
    print("wrote %s (%d cases)" % (OUT, len(cases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
