#!/usr/bin/env bash
# CTest entry for the `reference` label: runs one Python check that needs torch / transformers /
# bitsandbytes / accelerate (tests/reference/requirements.txt).  The interpreter is
# $SHARDQ_PYTHON, else build/pyref/bin/python (the venv .ci/run makes), else python3.  Exits 77
# (CTest: skipped, with the reason printed) when those packages do not import, so a machine
# without them still runs the rest of the suite green; launch/test.sh and CI run them where
# they import.
#   run_check.sh SOURCE_DIR BINARY_DIR SHARDQ_EXE MPIEXEC NAME
set -uo pipefail
src="$1" bin="$2" exe="$3" mpiexec="$4" name="$5"
py="${SHARDQ_PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$bin/pyref/bin/python" ]; then py="$bin/pyref/bin/python"; else py="$(command -v python3 || true)"; fi
fi
if [ -z "$py" ] || ! "$py" -c "import torch, transformers, bitsandbytes, accelerate, safetensors, numpy" 2>/dev/null; then
  echo "reference check $name: SKIPPED: ${py:-no python3} cannot import torch/transformers/bitsandbytes/accelerate (pip install -r tests/reference/requirements.txt, or set SHARDQ_PYTHON)"
  exit 77
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/sq-ref-$name.XXXXXX")"
trap 'rm -rf "$work"' EXIT
case "$name" in
  accelerate_maps)
    exec "$py" "$src/tests/reference/gen_accelerate_maps.py" --check ;;
  transformers_load)
    "$py" "$src/tests/reference/check_transformers_load.py" "$exe" --work "$work" --np 2 --mpirun "$mpiexec" ;;
  trained_cosine)
    # the trained weights are kept in the build folder: only the first run trains (300 AdamW
    # steps of the small shape on the CPU: more than 15 min on a loaded 2-core machine)
    mkdir -p "$bin/reference-trained"
    "$py" "$src/tests/reference/trained_small_cosine.py" "$exe" --work "$bin/reference-trained" \
        --min-cosine 0.9999 ;;
  int8_roundtrip)
    # shardq's bnb 8-bit output, loaded by transformers: the bytes of bnb's own quantization
    "$exe" make-model --out "$work/src" --preset tiny --family llama --dtype bf16 --seed 5 >/dev/null &&
    "$exe" quantize "$work/src" --out "$work/int8" --quant int8 --quiet &&
    "$py" "$src/tests/reference/check_int8_roundtrip.py" check "$work/int8" "$work/src" ;;
  *) echo "run_check.sh: unknown check '$name'"; exit 2 ;;
esac
