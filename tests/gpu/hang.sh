#!/usr/bin/env bash
# tests/gpu/hang.sh: where a run on the GPU stops.  Builds shardq with symbols (RelWithDebInfo,
# sm_90), then runs each case under a short limit; a case that outlives it gets every rank's
# threads' stacks printed (cuda-gdb attaches; gdb where there is one) before it is killed.
# Cases: 1 rank cuda over mpi, 2 ranks sharing the GPU over mpi (vader, then tcp), the cpu control.
# Environment: SQ_HANG_LIMIT (seconds per case, default 25), OUT (logs), SQ_JOBS, as run.sh.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${SQ_GPU_BUILD:-$ROOT/build-gpu-hang}
JOBS=${SQ_JOBS:-$(nproc)}
OUT=${OUT:-$BUILD/out}
LIMIT=${SQ_HANG_LIMIT:-25}
. "$ROOT/tests/gpu/env.sh"
mkdir -p "$OUT"
cmake -S "$ROOT" -B "$BUILD" -DSHARDQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo "${MPI_ARGS[@]}" > "$OUT/hang-configure.log" 2>&1 &&
    cmake --build "$BUILD" -j "$JOBS" --target shardq bench_gpu > "$OUT/hang-build.log" 2>&1 ||
    { tail -30 "$OUT/hang-configure.log" "$OUT/hang-build.log"; say "build failed"; exit 1; }
SQ=$BUILD/src/cli/shardq
M=$OUT/model-small
"$SQ" make-model --out "$M" --preset small --force > /dev/null || exit 1
IDS='1,17,42,99,7,300,5;12,8,1000,77;250,3,64,512,9,31'
DBG=$(command -v gdb || command -v cuda-gdb || true)
nvidia-smi --query-gpu=name,compute_mode --format=csv,noheader
hcase() {   # NAME NP ENV-ASSIGNMENTS... -- SHARDQ-ARGS...
    local name=$1 np=$2
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local t0=$SECONDS
    env "${envs[@]}" setsid mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$np" \
        "$SQ" run "$M" --prompt-ids "$IDS" --max-new-tokens 8 --ignore-eos --timeout 10 --stall-timeout 0 "$@" \
        > "$OUT/hang-$name.out" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - t0)) -lt "$LIMIT" ]; do sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name: still running after ${LIMIT}s; stacks:"
        for p in $(pgrep -x shardq); do   # the ranks, not mpirun
            echo "=== pid $p"
            [ -n "$DBG" ] && timeout 30 "$DBG" -q -batch -p "$p" -ex "info threads" -ex "thread apply all bt 14" 2>&1 |
                grep -E '^(#|Thread|\*|  [0-9])' | cut -c1-220
        done
        kill -- -"$pid" 2>/dev/null; pkill -9 -f "$SQ run"; wait "$pid" 2>/dev/null
        tail -5 "$OUT/hang-$name.out"
    else
        wait "$pid"; local rc=$?
        say "$name: exit $rc in $((SECONDS - t0))s"
        grep -v '^$' "$OUT/hang-$name.out" | tail -4
    fi
}
hcase cuda-1rank-mpi 1 X=1 -- --backend cuda --transport mpi
hcase cuda-2ranks-mpi 2 X=1 -- --backend cuda --transport mpi
hcase cuda-2ranks-tcp 2 OMPI_MCA_btl=self,tcp -- --backend cuda --transport mpi
hcase cpu-2ranks 2 X=1 -- --backend cpu --transport mpi
