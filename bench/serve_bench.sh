#!/usr/bin/env bash
# Throughput of `shardq serve` under concurrency 1, 4 and 16 (bench/serve_load.py): starts the
# server on NP ranks on a free port, waits for /health, runs the load, stops every rank with
# SIGTERM to rank 0; with LLAMA_SERVER set (a llama-server binary, or "build" for
# `LLAMACPP_SERVER=1 bench/build_llamacpp.sh`'s) runs the same load against it on the same GGUF,
# one process with THREADS threads, next to it.
#   bench/serve_bench.sh MODEL.gguf [NP (2)] [MAX_TOKENS (64)] [REQUESTS per level (32)]
# env: SHARDQ (default build/src/cli/shardq), LLAMA_SERVER, THREADS (2), PYTHON (python3),
#      MPIRUN_FLAGS (extra mpirun flags), CONCURRENCY ("1 4 16"), SERVE_ARGS (extra
#      `shardq serve` flags, e.g. "--activations int8").
# Output: a table (# header with units), one row per server and concurrency.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
model="${1:?usage: serve_bench.sh MODEL [NP] [MAX_TOKENS] [REQUESTS]}"
np="${2:-2}"
max_tokens="${3:-64}"
requests="${4:-32}"
shardq="${SHARDQ:-$repo/build/src/cli/shardq}"
py="${PYTHON:-python3}"
threads="${THREADS:-2}"
levels="${CONCURRENCY:-1 4 16}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

wait_health() {   # URL LOG
  for _ in $(seq 1 600); do
    curl -sf "$1/health" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "serve_bench: the server did not become healthy:" >&2
  cat "$2" >&2
  return 1
}

printf "# %-10s %5s %5s %4s %8s %10s %9s %9s %9s %9s\n" server conc reqs fail "req/s" "out tok/s" \
       "TTFT p50" "TTFT p99" "ITL p50" "ITL p99"
printf "# %-10s %5s %5s %4s %8s %10s %9s %9s %9s %9s\n" "" "" "" "" "1/s" "tok/s" ms ms ms ms

# shardq serve on NP ranks
log="$tmp/shardq.log"
mpirun --allow-run-as-root --oversubscribe --bind-to none ${MPIRUN_FLAGS:-} -np "$np" "$shardq" serve "$model" \
       --port 0 --max-seqs 16 --max-seq-len 512 ${SERVE_ARGS:-} >"$log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 300); do grep -q "listening on" "$log" && break; sleep 0.1; done
port="$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$log" | grep -o '[0-9]*$')"
for p in $(grep -o '(pids [0-9,]*' "$log" | grep -o '[0-9,]*$' | tr ',' ' '); do pids+=("$p"); done
url="http://127.0.0.1:$port"
wait_health "$url" "$log"
$py "$here/serve_load.py" --url "$url" --concurrency 1 --requests 2 --max-tokens 8 --label warmup >/dev/null
for c in $levels; do
  $py "$here/serve_load.py" --url "$url" --concurrency "$c" --requests "$requests" --max-tokens "$max_tokens" \
      --ignore-eos --label "shardq-np$np"
done
rank0="$(grep -o '(pids [0-9]*' "$log" | grep -o '[0-9]*$')"
kill -TERM "$rank0"
wait "${pids[0]}" || true

# llama.cpp's llama-server on the same file (one process, THREADS threads, 16 slots)
if [ "${LLAMA_SERVER:-}" = build ]; then
  LLAMA_SERVER="$(LLAMACPP_SERVER=1 "$repo/bench/build_llamacpp.sh")/llama-server"
  export LD_LIBRARY_PATH="$(dirname "$LLAMA_SERVER")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -n "${LLAMA_SERVER:-}" ]; then
  lport=$(( (port % 20000) + 30000 ))
  llog="$tmp/llama.log"
  "$LLAMA_SERVER" -m "$model" --host 127.0.0.1 --port "$lport" -t "$threads" -np 16 -c $((16 * 512)) \
      --cont-batching >"$llog" 2>&1 &
  pids+=("$!")
  wait_health "http://127.0.0.1:$lport" "$llog"
  $py "$here/serve_load.py" --url "http://127.0.0.1:$lport" --concurrency 1 --requests 2 --max-tokens 8 --label warmup >/dev/null
  for c in $levels; do
    $py "$here/serve_load.py" --url "http://127.0.0.1:$lport" --concurrency "$c" --requests "$requests" \
        --max-tokens "$max_tokens" --ignore-eos --label "llama-server"
  done
fi
echo "# OK"
