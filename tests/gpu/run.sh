#!/usr/bin/env bash
# tests/gpu/run.sh: the one GPU script (issue 6).  Builds shardq for sm_90 in a fresh folder, runs
# the gpu-labelled tests (every backend op on the CPU and the GPU, named error bounds) and the CPU
# test of the shared kernel math, the pipeline on one GPU, and the GPU benchmark (bench_gpu: copy
# bandwidth, NF4 GEMV vs cuBLAS fp16, GPU quantize).  Without a GPU every GPU step reports a skip
# and the script still exits 0 when everything else passed.
#
# The pipeline (step 4) on make-model's `small` preset, greedy, for --quant nf4 and none: the CPU
# backend on 1 rank is the reference; on a GPU, 1 rank with the cuda backend (nccl transport) and
# 2 ranks sharing the GPU with --transport mpi (device activations staged through pinned memory)
# must give the reference's tokens; decode tokens/s of each run are printed, then `shardq bench`
# on the preset (1 rank cuda; 2 ranks on the one GPU over mpi).  Without a GPU it checks the CPU
# reference on 1 and 2 ranks and that --backend cuda is refused with one line.
#
# Issue 15 (the NCCL path): test_cuda_reserve (gpu label: the sampling reserve at 16k prompt
# tokens and Llama-3's 128256 vocabulary takes tens of MiB, not tens of GB, and samples as the
# CPU does), the CPU tests of the nccl transport's logic over the MPI-backed data plane
# (test_transport, test_pipeline: routing, bring-up failures, slow receiver, cancel, tokens equal
# to the mpi transport on 1..4 ranks), and on a GPU 2 ranks sharing it over the MPI-staged
# transport with long prompts (thousands of tokens per micro-batch) against the CPU reference,
# and 1 rank over nccl (its non-blocking join on the backend's device).
#
# Machines without Open MPI / hwloc / cJSON / Check (the device machine): carry their .deb files
# in .debs/ (see docs/BENCHMARKS.md); they are unpacked with dpkg -x into a scratch prefix and
# found through PATH, OPAL_PREFIX, LD_LIBRARY_PATH, PKG_CONFIG_* and CMAKE_PREFIX_PATH.
#
# Environment: SQ_GPU_BUILD (build folder, default build-gpu-sm90, wiped first), SQ_DEBS (.deb
# folder, default .debs), SQ_FORCE_DEBS=1 (unpack even when the tools are installed),
# SQ_JOBS (parallel build jobs), OUT (folder for logs; default $SQ_GPU_BUILD/out),
# SQ_MPIRUN_FLAGS (mpirun flags; default --allow-run-as-root --oversubscribe --bind-to none),
# SQ_PIPE_NEW_TOKENS (tokens per sequence in the pipeline runs, default 32).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${SQ_GPU_BUILD:-$ROOT/build-gpu-sm90}
JOBS=${SQ_JOBS:-$(nproc)}
OUT=${OUT:-$BUILD/out}

# ---- 1. carried packages (env.sh) ---------------------------------------------------------
. "$ROOT/tests/gpu/env.sh"

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
TARGETS=("${GPU_TESTS[@]}" test_cuda_math test_backend test_transport test_pipeline bench_gpu)
# shardq: the pipeline step, and test_load_gpu makes its checkpoints with `shardq make-model`
if [ "$HAVE_RUN" = 1 ] || printf '%s\n' "${GPU_TESTS[@]}" | grep -qx test_load_gpu; then
    TARGETS+=(shardq)
fi
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
ctest --test-dir "$BUILD" -R 'test_cuda_math|test_backend$|test_transport|test_pipeline_(nccl_)?np' --output-on-failure \
    2>&1 | tee "$OUT/ctest-cpu.log" | tail -5 || status=1
if [ "$GPU" = 1 ]; then
    # run alone, the Check suites must not fork: a CUDA context does not survive fork()
    export CK_FORK=no
    # the skip code is failure here: a GPU is present, so the test must have run
    "$BUILD/src/backend/test_backend_gpu" 2>&1 | tee "$OUT/test_backend_gpu.log" || status=1
    # issue 15: the sampling reserve at 16k prompt tokens, Llama-3 vocabulary, 8 sequences
    "$BUILD/src/backend/test_cuda_reserve" 2>&1 | tee "$OUT/test_cuda_reserve.log" || status=1
    # the loader's GPU quantization: bytes == the CPU loader's (bf16/f16/f32, nf4/fp4, double
    # quant, blocksize 64/128, many-chunk staging), and its GB/s line
    if [ -x "$BUILD/src/load/test_load_gpu" ]; then
        "$BUILD/src/load/test_load_gpu" 2>&1 | tee "$OUT/test_load_gpu.log" || status=1
        grep -h '^GPU quantize in loader GB/s' "$OUT/test_load_gpu.log" | tee -a "$OUT/bench_gpu_loader.txt" || true
    else
        say "FAILED: test_load_gpu was not built"
        status=1
    fi
fi

# ---- 4. the pipeline on one GPU -----------------------------------------------------------
# tokens of a `shardq run --json` output: the "tokens" line, spaces removed
tokens_of() { grep -m1 '"tokens":' "$1" | tr -d ' \n' | sed -e 's/^"tokens"://' -e 's/,$//'; }
json_num() { grep -o "\"$2\": [0-9.eE+-]*" "$1" | head -1 | sed 's/.*: //'; }
if [ "$HAVE_RUN" = 0 ]; then
    say "skip: the pipeline run (no 'shardq run' in this tree yet)"
else
    read -r -a MPIRUN <<< "mpirun ${SQ_MPIRUN_FLAGS:---allow-run-as-root --oversubscribe --bind-to none}"
    SQ=$BUILD/src/cli/shardq
    M="$OUT/model-small"
    NEW=${SQ_PIPE_NEW_TOKENS:-32}
    IDS='1,17,42,99,7,300,5;12,8,1000,77;250,3,64,512,9,31'
    "$SQ" make-model --out "$M" --preset small --force > "$OUT/make-model.log" 2>&1 ||
        { cat "$OUT/make-model.log"; status=1; }
    # one run: NAME NP ARGS...; its JSON in $OUT/pipe-NAME.json, a row in the summary
    pipe_rows=()
    pipe_run() {
        local name=$1 np=$2
        shift 2
        local log="$OUT/pipe-$name.json"
        if (set -x; timeout 300 "${MPIRUN[@]}" -np "$np" "$SQ" run "$M" --prompt-ids "$IDS" \
                --max-new-tokens "$NEW" --ignore-eos --json --stall-timeout 30 "$@") > "$log" 2> "$OUT/pipe-$name.err"; then
            pipe_rows+=("$(printf '  %-22s %3d %-9s %-5s %12s %12s' "$name" "$np" \
                "$(grep -o '"backend_kind": "[a-z]*"' "$log" | sed 's/.*: "//; s/"//')" \
                "$(grep -o '"transport": "[a-z]*"' "$log" | sed 's/.*: "//; s/"//')" \
                "$(json_num "$log" prefill_tok_s)" "$(json_num "$log" decode_tok_s)")")
            return 0
        fi
        cat "$OUT/pipe-$name.err"
        say "FAILED: pipeline run $name"
        return 1
    }
    # the same tokens as the reference, or the first position where they part
    same_tokens() {
        local ref want got
        ref=$1
        want=$(tokens_of "$OUT/pipe-$ref.json")
        got=$(tokens_of "$OUT/pipe-$2.json")
        if [ -n "$want" ] && [ "$want" = "$got" ]; then
            say "$2: the same tokens as $ref"
        else
            say "FAILED: $2 tokens differ from $ref"
            printf '  %s: %s\n  %s: %s\n' "$ref" "$want" "$2" "$got"
            return 1
        fi
    }
    for q in nf4 none int8; do
        pipe_run "cpu-1rank-$q" 1 --quant "$q" --backend cpu --transport mpi || status=1
        pipe_run "cpu-2ranks-$q" 2 --quant "$q" --backend cpu --transport mpi || status=1
        same_tokens "cpu-1rank-$q" "cpu-2ranks-$q" || status=1
        if [ "$GPU" = 1 ]; then
            pipe_run "cuda-1rank-nccl-$q" 1 --quant "$q" --backend cuda --transport nccl || status=1
            pipe_run "cuda-2ranks-mpi-$q" 2 --quant "$q" --backend cuda --transport mpi || status=1
            same_tokens "cpu-1rank-$q" "cuda-1rank-nccl-$q" || status=1
            same_tokens "cpu-1rank-$q" "cuda-2ranks-mpi-$q" || status=1
        fi
    done
    # issue 15: long prompts (1000, 640 and 900 tokens; the preset has 1024 positions) through 2 ranks sharing the GPU over
    # the MPI-staged transport (activations of MiBs staged through pinned memory each step)
    # must give the CPU reference's tokens
    LONG_IDS=$(for L in 1000 640 900; do
        seq 0 $((L - 1)) | awk -v s="$L" '{printf "%s%d", (NR > 1 ? "," : ""), ($1 * 37 + s * 11) % 2048}'
        printf ';'
    done | sed 's/;$//')
    IDS_SHORT=$IDS
    IDS=$LONG_IDS
    NEW_SHORT=$NEW
    NEW=8
    pipe_run "cpu-1rank-long" 1 --quant nf4 --backend cpu --transport mpi || status=1
    if [ "$GPU" = 1 ]; then
        pipe_run "cuda-2ranks-mpi-long" 2 --quant nf4 --backend cuda --transport mpi --micro-batches 3 || status=1
        same_tokens "cpu-1rank-long" "cuda-2ranks-mpi-long" || status=1
        pipe_run "cuda-1rank-nccl-long" 1 --quant nf4 --backend cuda --transport nccl || status=1
        same_tokens "cpu-1rank-long" "cuda-1rank-nccl-long" || status=1
    fi
    IDS=$IDS_SHORT
    NEW=$NEW_SHORT
    printf '# pipeline on the small preset, %s new tokens per sequence, greedy\n' "$NEW"
    printf '# %-22s %3s %-9s %-5s %12s %12s\n' run ranks backend xport "prefill" "decode"
    printf '# %-22s %3s %-9s %-5s %12s %12s\n' "" "" "" "" "(tok/s)" "(tok/s)"
    printf '%s\n' "${pipe_rows[@]}" | tee "$OUT/pipeline.txt"
    if [ "$GPU" = 1 ]; then
        # throughput over micro-batch counts: 1 rank on the GPU, then 2 ranks sharing it
        (set -x; timeout 300 "${MPIRUN[@]}" -np 1 "$SQ" bench "$M" --backend cuda --batch 8 \
            --prompt-len 64 --new-tokens 64 --micro-batches 1,2,4,8) 2>&1 | tee "$OUT/bench-1rank.txt" || status=1
        (set -x; timeout 300 "${MPIRUN[@]}" -np 2 "$SQ" bench "$M" --backend cuda --transport mpi \
            --batch 8 --prompt-len 64 --new-tokens 64 --micro-batches 1,2,4,8) 2>&1 |
            tee "$OUT/bench-2ranks-mpi.txt" || status=1
    else
        say "skip: the pipeline on a GPU (no GPU)"
        # where there is none, cuda must be refused with one line and exit 1, not hang
        set +e
        timeout 60 "${MPIRUN[@]}" -np 2 "$SQ" run "$M" --prompt-ids 1,2 --backend cuda > "$OUT/no-gpu.log" 2>&1
        rc=$?
        set -e
        if [ "$rc" = 1 ] && [ "$(grep -c '^shardq: ' "$OUT/no-gpu.log")" = 1 ]; then
            say "no GPU: --backend cuda refused: $(grep '^shardq: ' "$OUT/no-gpu.log")"
        else
            say "FAILED: --backend cuda without a GPU: exit $rc"
            cat "$OUT/no-gpu.log"
            status=1
        fi
    fi
fi

# ---- 5. the benchmark ---------------------------------------------------------------------
set +e
"$BUILD/src/backend/bench_gpu" 2>&1 | tee "$OUT/bench_gpu.txt"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 77 ]; then say "skip: bench_gpu (no CUDA device)"; elif [ "$rc" != 0 ]; then status=1; fi

[ "$status" = 0 ] && say "OK" || say "FAILED"
exit "$status"
