#!/usr/bin/env bash
# Configures and builds shardq.  usage: launch/build.sh [BUILD_DIR] [extra cmake args…]
# BUILD_DIR defaults to <repo>/build.  Idempotent; runnable from any directory.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$repo/build}"
shift || true
jobs="$(nproc 2>/dev/null || echo 2)"
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$build" -j "$jobs"
