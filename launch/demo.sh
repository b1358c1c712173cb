#!/usr/bin/env bash
# The main job on the built-in default model: installs what is missing, builds, writes the
# default model (make-model preset 'tiny', Llama family) and inspects it.
# Runnable from any directory; idempotent.  SHARDQ_DEMO_DIR sets where the model goes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/launch/deps.sh"
"$repo/launch/build.sh" "$repo/build" >&2
shardq="$repo/build/src/cli/shardq"
demo="${SHARDQ_DEMO_DIR:-$repo/build/demo}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
model="$demo/tiny-llama"

echo "== 1. make the default model: shardq make-model --preset tiny --family llama =="
"$shardq" make-model --preset tiny --family llama --out "$model" --force
echo
echo "== 2. inspect it: shardq inspect $model =="
"$shardq" inspect "$model"
