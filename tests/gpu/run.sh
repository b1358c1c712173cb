#!/usr/bin/env bash
# tests/gpu/run.sh: the one GPU script (issue 6).  Builds shardq for sm_90 in a fresh folder, runs
# the gpu-labelled tests (every backend op on the CPU and the GPU, named error bounds) and the CPU
# test of the shared kernel math, the pipeline on one GPU when `shardq run` exists, and the GPU
# benchmark (bench_gpu: copy bandwidth, NF4 GEMV vs cuBLAS fp16, GPU quantize).  Without a GPU
# every GPU step reports a skip and the script still exits 0 when everything else passed.
#
# Machines without Open MPI / hwloc / cJSON / Check (the device machine): carry their .deb files
# in .debs/ (see docs/BENCHMARKS.md); they are unpacked with dpkg -x into a scratch prefix and
# found through PATH, OPAL_PREFIX, LD_LIBRARY_PATH, PKG_CONFIG_* and CMAKE_PREFIX_PATH.
#
# Environment: SQ_GPU_BUILD (build folder, default build-gpu-sm90, wiped first), SQ_DEBS (.deb
# folder, default .debs), SQ_FORCE_DEBS=1 (unpack even when the tools are installed),
# SQ_JOBS (parallel build jobs), OUT (folder for logs; default $SQ_GPU_BUILD/out),
# SQ_GPU_RUN_ARGS (arguments of the one-GPU pipeline run, after `shardq`).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${SQ_GPU_BUILD:-$ROOT/build-gpu-sm90}
DEBS=${SQ_DEBS:-$ROOT/.debs}
JOBS=${SQ_JOBS:-$(nproc)}
OUT=${OUT:-$BUILD/out}
say() { printf 'run.sh: %s\n' "$*"; }

# ---- 1. carried packages ------------------------------------------------------------------
MPI_ARGS=()
missing_tools() {
    ! command -v mpicc >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1 ||
        ! pkg-config --exists libcjson hwloc check 2>/dev/null
}
if [ -n "${SQ_FORCE_DEBS:-}" ] || missing_tools; then
    if ! ls "$DEBS"/*.deb >/dev/null 2>&1; then
        say "Open MPI / hwloc / cJSON / Check are missing and $DEBS holds no .deb files" >&2
        exit 2
    fi
    P=${SQ_DEB_PREFIX:-/tmp/shardq-debs}
    rm -rf "$P" && mkdir -p "$P"
    for f in "$DEBS"/*.deb; do dpkg -x "$f" "$P"; done
    # Debian's alternatives links are not in the packages
    for t in mpicc mpirun mpiexec; do ln -sf "$t.openmpi" "$P/usr/bin/$t"; done
    [ -e "$P/usr/bin/pkg-config" ] || ln -sf pkgconf "$P/usr/bin/pkg-config"
    ML=$P/usr/lib/x86_64-linux-gnu
    export PATH=$P/usr/bin:$PATH
    export OPAL_PREFIX=$P/usr   # relocates Open MPI (wrappers, plugins, orted)
    export LD_LIBRARY_PATH=$ML:$ML/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PKG_CONFIG_SYSROOT_DIR=$P PKG_CONFIG_LIBDIR=$ML/pkgconfig:$P/usr/share/pkgconfig
    export CMAKE_PREFIX_PATH=$P/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
    MPI_ARGS=(-DMPI_C_COMPILER="$P/usr/bin/mpicc" -DMPIEXEC_EXECUTABLE="$P/usr/bin/mpirun")
    say "unpacked $(ls "$DEBS"/*.deb | wc -l) carried packages into $P"
fi

# ---- 2. build for sm_90 in a fresh folder ---------------------------------------------------
rm -rf "$BUILD"
mkdir -p "$OUT"
cmake -S "$ROOT" -B "$BUILD" -DSHARDQ_CUDA=ON -DSHARDQ_WERROR=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DCMAKE_BUILD_TYPE=Release "${MPI_ARGS[@]}" > "$OUT/configure.log" 2>&1 ||
    { tail -30 "$OUT/configure.log"; say "configure failed"; exit 1; }
HAVE_RUN=0
if grep -q 'X(run,' "$ROOT/src/cli/cli.h"; then HAVE_RUN=1; fi
# every gpu-labelled test (other modules' too: test_quant_gpu, …), the CPU tests of the modules
# this script touches, and the benchmark; not `all`, so one unrelated half-written module
# cannot stop the GPU run
mapfile -t GPU_TESTS < <(ctest --test-dir "$BUILD" -N -L gpu | awk '/Test +#/ {print $3}')
TARGETS=("${GPU_TESTS[@]}" test_cuda_math test_backend test_transport bench_gpu)
[ "$HAVE_RUN" = 1 ] && TARGETS+=(shardq)
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" > "$OUT/build.log" 2>&1 ||
    { grep -E 'error|Error' "$OUT/build.log" | head -30; say "build failed"; exit 1; }
say "built ${TARGETS[*]} for sm_90"

GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L > "$OUT/gpus.txt" 2>/dev/null && [ -s "$OUT/gpus.txt" ]; then
    GPU=1
    cat "$OUT/gpus.txt"
fi

# ---- 3. tests: gpu-labelled (every op, CPU vs GPU) + the CPU tests of the shared math ------
status=0
ctest --test-dir "$BUILD" -L gpu --output-on-failure 2>&1 | tee "$OUT/ctest-gpu.log" || status=1
ctest --test-dir "$BUILD" -R 'test_cuda_math|test_backend$|test_transport' --output-on-failure \
    2>&1 | tee "$OUT/ctest-cpu.log" | tail -5 || status=1
if [ "$GPU" = 1 ]; then
    # the skip code is failure here: a GPU is present, so the test must have run
    "$BUILD/src/backend/test_backend_gpu" 2>&1 | tee "$OUT/test_backend_gpu.log" || status=1
fi

# ---- 4. the pipeline on one GPU -----------------------------------------------------------
if [ "$HAVE_RUN" = 0 ]; then
    say "skip: the pipeline run (no 'shardq run' in this tree yet)"
elif [ "$GPU" = 0 ]; then
    say "skip: the pipeline run (no GPU)"
else
    M="$OUT/model-small"
    "$BUILD/shardq" make-model --out "$M" --preset small --force > "$OUT/make-model.log" 2>&1 || status=1
    ARGS=${SQ_GPU_RUN_ARGS:-"run --model $M --backend cuda --max-new 64 --prompt hello"}
    # 1 rank with NCCL, then 2 ranks sharing the GPU over the MPI transport (staged buffers)
    # shellcheck disable=SC2086
    (set -x; mpirun --allow-run-as-root -np 1 "$BUILD/shardq" $ARGS --transport nccl) \
        2>&1 | tee "$OUT/run-1rank-nccl.log" || status=1
    # shellcheck disable=SC2086
    (set -x; mpirun --allow-run-as-root --oversubscribe -np 2 "$BUILD/shardq" $ARGS --transport mpi) \
        2>&1 | tee "$OUT/run-2ranks-mpi.log" || status=1
fi

# ---- 5. the benchmark ---------------------------------------------------------------------
set +e
"$BUILD/src/backend/bench_gpu" 2>&1 | tee "$OUT/bench_gpu.txt"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 77 ]; then say "skip: bench_gpu (no CUDA device)"; elif [ "$rc" != 0 ]; then status=1; fi

[ "$status" = 0 ] && say "OK" || say "FAILED"
exit "$status"
