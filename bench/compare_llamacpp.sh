#!/usr/bin/env bash
# Side by side on the CPU: llama.cpp (llama-bench) and shardq (shardq bench), one process each,
# the same GGUF files, the same thread count, batch 1, interleaved round by round, and one table
# at the end: prefill and decode tokens/s, and shardq's ratio to its llama.cpp counterpart.
#
#   usage: bench/compare_llamacpp.sh [--threads T] [--rounds R] [--prompt P] [--gen N]
#                                    [--models small,1b] [--out FILE.json]
#     --threads T   threads of both programs (default 2)
#     --rounds R    interleaved rounds; the table shows each figure's median (default 3)
#     --prompt P    prefill tokens (default 64);  --gen N: decoded tokens (default 32)
#     --models      small: SmolLM2-135M-Instruct (the project's real model, Q4_1 as published);
#                   1b: a Llama-3.2-1B-shaped model (hidden 2048, 16 layers, ffn 8192, SmolLM2's
#                   vocabulary; 1.07 B parameters) with random BF16 weights, made by
#                   bench/make_gguf_shape.py.  Default: both.
#     --out FILE    also every measurement as JSON
#
# Files (cached under build/compare/): llama.cpp's llama-quantize makes Q4_0, Q4_1, Q8_0 and BF16
# from the source file (for SmolLM2 from its Q4_1, --allow-requantize; for 1b from BF16).  Both
# programs read those same files:
#   llama.cpp   Q4_0, Q4_1, Q8_0, BF16
#   shardq      each Q* file as stored; the BF16 file as stored (--quant none) and quantized on
#               load to nf4, fp4, int8 (each only when this build knows the scheme); every row
#               with f32 and with int8 activations when this build has --activations
# The counterpart of a shardq row is llama.cpp on the file of the same width: 4-bit rows against
# Q4_0 (the issue's bar; the Q4_1 row against Q4_1), 8-bit against Q8_0, 16-bit against BF16.
# A benchmark: it prints, it asserts no time.  Builds llama.cpp once (bench/build_llamacpp.sh).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
threads=2 rounds=3 prompt=64 gen=32 models=small,1b out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --prompt) prompt="$2"; shift 2 ;;
    --gen) gen="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_llamacpp: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in threads rounds prompt gen; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "compare_llamacpp: --$v wants a positive integer" >&2; exit 2; }
done

shardq="$repo/build/src/cli/shardq"
[ -x "$shardq" ] || "$repo/launch/build.sh" build >&2
bin="$("$repo/bench/build_llamacpp.sh")"
export LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work="$repo/build/compare"
mkdir -p "$work"

# Python with numpy + gguf for the 1b file (a venv under build/ when the system lacks them)
py=python3
need_py() {
  "$py" -c 'import numpy, gguf' 2>/dev/null && return
  py="$work/venv/bin/python"
  if ! "$py" -c 'import numpy, gguf' 2>/dev/null; then
    python3 -m venv "$work/venv" >&2
    "$work/venv/bin/pip" install -q --disable-pip-version-check numpy gguf >&2
  fi
}

quantize() {   # SRC DST TYPE: llama-quantize into DST (cached; written to a temporary name)
  [ -f "$2" ] && return
  "$bin/llama-quantize" --allow-requantize "$1" "$2.tmp" "$3" "$threads" >"$2.log" 2>&1 ||
    { echo "compare_llamacpp: llama-quantize $3 failed, see $2.log" >&2; exit 1; }
  mv "$2.tmp" "$2"
}

help_text="$("$shardq" bench --help 2>&1 || true)"
has_act=0; grep -q -- '--activations' <<<"$help_text" && has_act=1
schemes=()
for s in nf4 fp4 int8; do grep -q -w -- "$s" <<<"$help_text" && schemes+=("$s"); done
acts=(f32); [ "$has_act" = 1 ] && acts=(f32 int8)

results="$work/results.$$.tsv"
: >"$results"
trap 'rm -f "$results"' EXIT

# llama-bench: one JSON array; rows carry n_prompt / n_gen and avg_ts
run_llama() {   # MODEL LABEL FILE
  local j
  j="$("$bin/llama-bench" -m "$3" -t "$threads" -p "$prompt" -n "$gen" -r 1 -o json 2>/dev/null)" ||
    { echo "compare_llamacpp: llama-bench failed on $3" >&2; return; }
  printf '%s' "$j" >"$work/last.json"
  python3 - "$1" "$2" "$work/last.json" >>"$results" <<'PY'
import json, sys
rows = json.load(open(sys.argv[3]))
pp = next((r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0), float("nan"))
tg = next((r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0), float("nan"))
print(f"{sys.argv[1]}\tllama.cpp\t{sys.argv[2]}\t{pp:.3f}\t{tg:.3f}")
PY
}

run_shardq() {   # MODEL LABEL FILE ARGS...
  local m="$1" label="$2" file="$3" j
  shift 3
  j="$("$shardq" bench "$file" --backend cpu --threads "$threads" --batch 1 --micro-batches 1 \
        --prompt-len "$prompt" --new-tokens "$gen" --json "$@" 2>"$work/shardq.err")" ||
    { echo "compare_llamacpp: shardq bench $label on $file failed: $(tail -1 "$work/shardq.err")" >&2; return; }
  printf '%s' "$j" >"$work/last.json"
  python3 - "$m" "$label" "$work/last.json" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[3]))["rows"][0]
print(f"{sys.argv[1]}\tshardq\t{sys.argv[2]}\t{r['prefill_tok_s']:.3f}\t{r['decode_tok_s']:.3f}")
PY
}

IFS=, read -r -a model_list <<<"$models"
for m in "${model_list[@]}"; do
  case "$m" in
    small)
      src="$("$repo/launch/fetch_model.sh")"
      ln -sf "$src" "$work/small-q4_1.gguf"
      quantize "$src" "$work/small-q4_0.gguf" Q4_0
      quantize "$src" "$work/small-q8_0.gguf" Q8_0
      quantize "$src" "$work/small-bf16.gguf" BF16 ;;
    1b)
      if [ ! -f "$work/1b-bf16.gguf" ]; then
        need_py
        "$py" "$repo/bench/make_gguf_shape.py" --tokenizer-from "$("$repo/launch/fetch_model.sh")" \
          --out "$work/1b-bf16.gguf"
      fi
      quantize "$work/1b-bf16.gguf" "$work/1b-q4_0.gguf" Q4_0
      quantize "$work/1b-bf16.gguf" "$work/1b-q4_1.gguf" Q4_1
      quantize "$work/1b-bf16.gguf" "$work/1b-q8_0.gguf" Q8_0 ;;
    *) echo "compare_llamacpp: unknown model '$m' (small or 1b)" >&2; exit 2 ;;
  esac
done

echo "# compare_llamacpp: $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
     "$threads threads, batch 1, prompt $prompt, gen $gen, $rounds rounds, llama.cpp $(cat "$repo/build/llamacpp/VERSION" 2>/dev/null || echo '?')" >&2
for ((round = 1; round <= rounds; round++)); do
  for m in "${model_list[@]}"; do
    echo "# round $round/$rounds: $m" >&2
    for t in q4_0 q4_1 q8_0 bf16; do
      run_llama "$m" "${t^^}" "$work/$m-$t.gguf"
      for a in "${acts[@]}"; do
        aa=(); [ "$has_act" = 1 ] && aa=(--activations "$a")
        run_shardq "$m" "${t^^} as stored, act $a" "$work/$m-$t.gguf" "${aa[@]}"
      done
    done
    for s in "${schemes[@]}"; do
      for a in "${acts[@]}"; do
        aa=(); [ "$has_act" = 1 ] && aa=(--activations "$a")
        run_shardq "$m" "$s, act $a" "$work/$m-bf16.gguf" --quant "$s" "${aa[@]}"
      done
    done
  done
done

python3 - "$results" "$out" <<'PY'
import collections, json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
fig = collections.OrderedDict()
for model, prog, label, pp, tg in rows:
    fig.setdefault((model, prog, label), []).append((float(pp), float(tg)))
med = {k: (statistics.median(p for p, _ in v), statistics.median(t for _, t in v)) for k, v in fig.items()}

def counterpart(label):
    head = label.split(",")[0].split(" ")[0]
    if head in ("Q4_1",):
        return "Q4_1"
    if head in ("Q4_0", "nf4", "fp4"):
        return "Q4_0"
    if head in ("Q8_0", "int8"):
        return "Q8_0"
    return "BF16"

print(f"| model | program | weights | prefill tok/s | decode tok/s | vs llama.cpp | prefill ratio | decode ratio |")
print(f"| --- | --- | --- | ---: | ---: | --- | ---: | ---: |")
for (model, prog, label), (pp, tg) in med.items():
    if prog == "llama.cpp":
        print(f"| {model} | llama.cpp | {label} | {pp:.1f} | {tg:.1f} | | | |")
for (model, prog, label), (pp, tg) in med.items():
    if prog != "shardq":
        continue
    c = counterpart(label)
    ref = med.get((model, "llama.cpp", c))
    rp = f"{pp / ref[0]:.2f}" if ref and ref[0] > 0 else "-"
    rt = f"{tg / ref[1]:.2f}" if ref and ref[1] > 0 else "-"
    print(f"| {model} | shardq | {label} | {pp:.1f} | {tg:.1f} | {c} | {rp} | {rt} |")
if sys.argv[2]:
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "w") as f:
        json.dump([{"model": m, "program": p, "weights": l, "runs": [{"prefill_tok_s": a, "decode_tok_s": b} for a, b in v]}
                   for (m, p, l), v in fig.items()], f, indent=1)
    import os
    os.replace(tmp, sys.argv[2])
PY
