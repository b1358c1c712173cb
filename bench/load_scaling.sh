#!/usr/bin/env bash
# Load scaling, measured: for each rank count, `shardq bench MODEL --load-only` (each rank reads
# and quantizes only its own layers) with the page cache dropped first (cold; needs root) and
# then warm, next to the disk's own sequential read of the same files (dd, cold) in the same run.
#   usage: bench/load_scaling.sh MODEL_DIR [RANKS...]     (default ranks: 1 2 4)
#   env: QUANT (default nf4), SHARDQ (default build/src/cli/shardq), MPIRUN_FLAGS
# Prints one table; it is a benchmark, not a test: nothing is asserted.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:?usage: bench/load_scaling.sh MODEL_DIR [RANKS...]}"; shift
ranks=("$@"); [ ${#ranks[@]} -gt 0 ] || ranks=(1 2 4)
exe="${SHARDQ:-$repo/build/src/cli/shardq}"
quant="${QUANT:-nf4}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
read -r -a mflags <<< "${MPIRUN_FLAGS:---oversubscribe --bind-to none}"
drop() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; echo cold; else echo "warm(no-root)"; fi
}
shards=("$model"/*.safetensors)
bytes=$(cat "${shards[@]}" | wc -c 2>/dev/null || du -cb "${shards[@]}" | tail -1 | cut -f1)
state=$(drop)
t0=$(date +%s.%N); cat "${shards[@]}" > /dev/null; t1=$(date +%s.%N)
dd_gbps=$(awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN{printf "%.3f", b/1e9/(c-a)}')
echo "# load scaling: $model ($(awk -v b="$bytes" 'BEGIN{printf "%.2f", b/1e9}') GB of safetensors), --quant $quant, $(date -u +%F), $(nproc) cores"
echo "# disk: sequential read of the same files ($state): $dd_gbps GB/s"
printf "# %5s %6s %10s %10s %10s %14s\n" ranks cache load_s GB/s "GB/s/rank" "max_RSS_GiB/rank"
for n in "${ranks[@]}"; do
  for cache in cold warm; do
    [ "$cache" = cold ] && state=$(drop) || state=warm
    out="$(mpirun "${mflags[@]}" -np "$n" "$exe" bench "$model" --load-only --quant "$quant" --backend cpu --json 2>/dev/null | grep '^{')"
    python3 - "$n" "$state" "$out" <<'PY'
import json, sys
n, state, j = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rss = max(r["max_rss_bytes"] for r in j["ranks"]) / 2**30
per = min(r["gb_per_s"] for r in j["ranks"])
print("  %5s %6s %10.2f %10.3f %10.3f %14.2f" % (n, state, j["load_s"], j["gb_per_s"], per, rss))
PY
  done
done
