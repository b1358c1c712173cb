#!/usr/bin/env bash
# Builds llama.cpp's CPU tools (llama-perplexity, llama-bench, llama-quantize) for side-by-side
# benchmarks, from the llama.cpp that PyPI's llama-cpp-python source package carries under
# vendor/llama.cpp.  Cached under build/llamacpp/ (nothing is rebuilt when the tools are there).
# A benchmark helper: the test suite never builds a peer.
#   usage: bench/build_llamacpp.sh [VERSION]      (default: the newest llama-cpp-python on PyPI)
#   env: LLAMACPP_SERVER=1 also builds llama-server (for bench/serve_bench.sh)
# Prints the folder holding the binaries on stdout.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/build/llamacpp"
bin="$dest/build/bin"
targets=(llama-perplexity llama-bench llama-quantize)
[ "${LLAMACPP_SERVER:-0}" = 1 ] && targets+=(llama-server)
have_all() { for t in "${targets[@]}"; do [ -x "$bin/$t" ] || return 1; done; }
if have_all && [ -f "$dest/build/.shardq-isa-v2" ]; then
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
# The host's ISA without AMX: this KVM guest lists amx_tile, yet tile instructions fault (SIGILL
# in tinygemm_kernel_amx with GGML_NATIVE=ON, seen 2026-12-05), so the features are named one by
# one from /proc/cpuinfo instead of -march=native
isa=(-DGGML_NATIVE=OFF)
has() { grep -q -w "$1" /proc/cpuinfo; }
for f in avx avx2 fma f16c; do has "$f" && isa+=("-DGGML_${f^^}=ON"); done
has avx_vnni && isa+=(-DGGML_AVX_VNNI=ON)
if has avx512f && has avx512bw && has avx512vl; then
  isa+=(-DGGML_AVX512=ON)
  has avx512_vnni && isa+=(-DGGML_AVX512_VNNI=ON)
  has avx512vbmi && isa+=(-DGGML_AVX512_VBMI=ON)
  has avx512_bf16 && isa+=(-DGGML_AVX512_BF16=ON)
fi
echo "build_llamacpp: ${isa[*]}" >&2
cmake -S "$dest/src" -B "$dest/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF "${isa[@]}" \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER="$([ "${LLAMACPP_SERVER:-0}" = 1 ] && echo ON || echo OFF)" >&2
cmake --build "$dest/build" -j "$(nproc)" --target "${targets[@]}" >&2
touch "$dest/build/.shardq-isa-v2"
echo "$bin"
