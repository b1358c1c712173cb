#!/usr/bin/env bash
# Builds llama.cpp's CPU tools (llama-perplexity, llama-bench, llama-quantize) for side-by-side
# benchmarks, from the llama.cpp that PyPI's llama-cpp-python source package carries under
# vendor/llama.cpp.  Cached under build/llamacpp/ (nothing is rebuilt when the tools are there).
# A benchmark helper: the test suite never builds a peer.
#   usage: bench/build_llamacpp.sh [VERSION]      (default: the newest llama-cpp-python on PyPI)
# Prints the folder holding the binaries on stdout.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/build/llamacpp"
bin="$dest/build/bin"
if [ -x "$bin/llama-perplexity" ] && [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-quantize" ] &&
   grep -q "GGML_AMX_TILE:BOOL=OFF" "$dest/build/CMakeCache.txt" 2>/dev/null; then
  echo "$bin"; exit 0
fi
mkdir -p "$dest"
if [ ! -d "$dest/src" ]; then
  tmp="$(mktemp -d "$dest/.dl.XXXXXX")"
  # the source distribution straight from the index's JSON API (pip download would first build
  # its metadata with scikit-build-core)
  python3 - "$tmp" "${1:-}" >&2 <<'PY' || { rm -rf "$tmp"; echo "build_llamacpp: fetching llama-cpp-python's sdist from PyPI failed" >&2; exit 1; }
import json, os, sys, urllib.parse, urllib.request
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
base = index[:-len("/simple")] if index.endswith("/simple") else index
ver = sys.argv[2]
api = f"{base}/pypi/llama-cpp-python/{ver + '/' if ver else ''}json"
d = json.load(urllib.request.urlopen(api, timeout=60))
u = next(u for u in d["urls"] if u["packagetype"] == "sdist")
url = urllib.parse.urljoin(api, u["url"])
print("downloading", u["filename"], u["size"], "bytes", file=sys.stderr)
urllib.request.urlretrieve(url, os.path.join(sys.argv[1], u["filename"]))
PY
  tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
  src="$(ls -d "$tmp"/llama_cpp_python-*/vendor/llama.cpp)"
  basename "$(dirname "$(dirname "$src")")" > "$dest/VERSION"
  mv "$src" "$dest/src"
  rm -rf "$tmp"
fi
# GGML_NATIVE, but no AMX: this KVM guest lists amx_tile, yet tile instructions fault (SIGILL
# in tinygemm_kernel_amx, seen 2026-12-05), so llama.cpp's AMX path is left out
cmake -S "$dest/src" -B "$dest/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
cmake --build "$dest/build" -j "$(nproc)" --target llama-perplexity llama-bench llama-quantize >&2
echo "$bin"
