#!/usr/bin/env bash
# Mutation check: applies each named mutant below, one at a time, to a scratch copy of this
# working tree, rebuilds what it touches and runs the tests that should catch it, and reports
# KILLED (a test failed) or SURVIVED (every test passed: the suite cannot see that bug).
# Exit status 0 only when every mutant is killed.  Run it before resolving an issue; list
# survivors in the closing note.
#   tests/mutate.sh [NAME ...]        (default: all)   SHARDQ_MUTATE_DIR=... (scratch folder)
# The scratch copy is configured once (host code, no CUDA / fuzz / sanitizers) and re-synced
# on every run; each mutant is reverted before the next one.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="${SHARDQ_MUTATE_DIR:-${TMPDIR:-/tmp}/shardq-mutate}"
jobs="$(nproc 2>/dev/null || echo 2)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# name | file | perl -0 substitution (must change the file) | ctest -R regex | env for ctest
MUTANTS=(
  # the five planted bugs of issue 16
  "plan-head-read-dropped|src/plan/build.c|s/\.head_read_bytes = norm \+ head,/.head_read_bytes = norm,/|^test_plan(_cli)?\$|"
  "load-inf-accepted|src/load/load.c|s/if \(!isfinite\(q->absmax\[b\]\)\)/if (isnan(q->absmax[b]))/|^test_load\$|"
  "rope-dynamic-as-linear|src/model/model.c|s/(case SQ_ROPE_DYNAMIC:.*?)(\n        break;)/\$1\n        rope_kind = SQ_ROPE_MATH_LINEAR;\$2/s|^test_model\$|"
  "run-temperature-forced-0|src/cli/cmd_run.c|s/o\.sample\.temperature = \(float\)vd;/o.sample.temperature = 0.0f; (void)vd;/|^test_run\$|CK_RUN_CASE=sampling"
  "bench-reports-seq0-tokens|src/cli/cmd_bench.c|s/= p->tokens\[s\]\[t\];/= p->tokens[0][t];/|^test_bench\$|"
  "bench-same-tokens-inverted|src/cli/cmd_bench.c|s/else if \(memcmp\(ref, p->tokens\[s\]/else if (!memcmp(ref, p->tokens[s]/|^test_bench\$|"
  # added with issue 16
  "accelerate-buffer-layer-only|src/plan/accelerate.c|s/uint64_t leaves\[3\] = \{a->embed_bytes, a->tied \? 0 : a->head_bytes, a->norm_bytes\};/uint64_t leaves[3] = {0, 0, 0};/|^test_plan\$|"
  "accelerate-single-gpu-90pct|src/plan/accelerate.c|s/    if \(m > 1\) \{\n        uint64_t per_gpu/    if (m == 1) caps[0] *= 0.9;\n    if (m > 1) {\n        uint64_t per_gpu/|^test_plan\$|"
  "sample-nan-row-last-id|src/backend/cpu_sample.c|s/(every logit NaN: nothing to weigh \*\/\n        c->ids\[r\] = )argmax_lowest\(x, V\);/\$1(int32_t)(V - 1);/|^test_backend\$|"
  "quantize-rss-in-kib|src/load/progress.c|s/return \(uint64_t\)kb \* 1024u;/return (uint64_t)kb;/|^test_load\$|"
)

want=("$@")
sync_tree() {   # copy tracked + untracked-not-ignored files that differ (keeps build timestamps)
  mkdir -p "$scratch/src-tree"
  (cd "$repo" && git ls-files -co --exclude-standard -z) |
    while IFS= read -r -d '' f; do
      [ -f "$repo/$f" ] || continue
      if ! cmp -s "$repo/$f" "$scratch/src-tree/$f" 2>/dev/null; then
        mkdir -p "$scratch/src-tree/$(dirname "$f")"
        cp -p "$repo/$f" "$scratch/src-tree/$f"
      fi
    done
}

echo "# tests/mutate.sh: scratch copy $scratch" >&2
sync_tree
cmake -S "$scratch/src-tree" -B "$scratch/build" -DSHARDQ_WERROR=ON -DSHARDQ_CUDA=OFF \
      -DSHARDQ_FUZZ=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null || exit 2
if ! cmake --build "$scratch/build" -j "$jobs" >"$scratch/unmutated.build.log" 2>&1; then
  echo "the unmutated scratch copy does not build: $scratch/unmutated.build.log" >&2
  exit 2
fi

# baseline: every test a mutant uses must pass unmutated, or "KILLED" would mean nothing
declare -A seen=()
for m in "${MUTANTS[@]}"; do
  IFS='|' read -r name file subst regex envs <<<"$m"
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  [ -n "${seen["$regex|$envs"]:-}" ] && continue
  seen["$regex|$envs"]=1
  # shellcheck disable=SC2086
  if ! env $envs ctest --test-dir "$scratch/build" -R "$regex" --output-on-failure \
         >"$scratch/baseline.log" 2>&1; then
    echo "baseline: '$regex' ($envs) fails WITHOUT a mutant: see $scratch/baseline.log" >&2
    exit 2
  fi
done
echo "# baseline: the tests below pass unmutated" >&2

n_killed=0 n_survived=0 n_bad=0
printf '# %-30s %-9s %s\n' mutant result "tests (failing ones)"
for m in "${MUTANTS[@]}"; do
  IFS='|' read -r name file subst regex envs <<<"$m"
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  target="$scratch/src-tree/$file"
  cp -p "$target" "$target.orig"
  perl -0pi -e "$subst" "$target"
  if cmp -s "$target" "$target.orig"; then
    printf '  %-30s %-9s %s\n' "$name" "NOT-APPLIED" "(the pattern no longer matches $file)"
    n_bad=$((n_bad + 1))
    mv "$target.orig" "$target"
    continue
  fi
  if ! cmake --build "$scratch/build" -j "$jobs" >"$scratch/$name.build.log" 2>&1; then
    result=KILLED detail="(does not compile)"
  else
    # shellcheck disable=SC2086
    env $envs ctest --test-dir "$scratch/build" -R "$regex" --output-on-failure \
        >"$scratch/$name.ctest.log" 2>&1
    failed="$(grep -E '^[[:space:]]*[0-9]+ - ' "$scratch/$name.ctest.log" | sed -E 's/^[[:space:]]*[0-9]+ - //' | tr '\n' ' ')"
    why="$(grep -m1 -E ':[FE]:[^:]*:[^:]*:' "$scratch/$name.ctest.log" | sed -E 's/^.*:[FE]:[^:]*:([^:]*):[0-9]*: /\1: /' | cut -c1-150)"
    [ -n "$why" ] && failed="$failed
      first failure: $why"
    ran="$(grep -cE 'Test +#' "$scratch/$name.ctest.log")"
    if [ "$ran" -eq 0 ]; then result=NO-TESTS detail="(no test matches $regex)"; n_bad=$((n_bad + 1))
    elif [ -n "$failed" ]; then result=KILLED detail="$regex: $failed"
    else result=SURVIVED detail="$regex: all $ran passed"; fi
  fi
  [ "$result" = KILLED ] && n_killed=$((n_killed + 1))
  [ "$result" = SURVIVED ] && n_survived=$((n_survived + 1))
  printf '  %-30s %-9s %s\n' "$name" "$result" "$detail"
  mv "$target.orig" "$target"
  touch "$target"
done
cmake --build "$scratch/build" -j "$jobs" >/dev/null 2>&1   # leave the scratch build unmutated
echo "# killed $n_killed, survived $n_survived, not applicable $n_bad"
[ "$n_survived" -eq 0 ] && [ "$n_bad" -eq 0 ]
