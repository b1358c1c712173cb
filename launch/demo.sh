#!/usr/bin/env bash
# The main job on the built-in default model: installs what is missing, builds, writes the
# default model (make-model preset 'tiny', Llama family, with a small Llama-3-style
# tokenizer.json so that text goes in and out), plans it over 2 ranks, then runs it on 2 ranks:
# each rank reads only its own layers, quantizes them to NF4 as they are read, and the two
# stages generate as a pipeline.  Random weights: the text is gibberish; the pipe is the point.
# Runnable from any directory; idempotent.  SHARDQ_DEMO_DIR sets where the model goes;
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
