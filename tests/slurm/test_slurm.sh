#!/usr/bin/env bash
# test_slurm.sh SHARDQ_EXE SOURCE_DIR [MPIEXEC]: launch/slurm/shardq.sbatch on a real one-node
# SLURM cluster (tests/slurm/slurm_cluster.sh: Debian's slurm-wlm + munge, state in a temp
# folder).  `sbatch --wait` runs the template with srun --mpi=pmix (its default) and with
# SHARDQ_LAUNCH=mpirun, 2 tasks each, `shardq run` on a tiny model; both must print one JSON
# document with n_ranks 2 and the same tokens as plain `mpirun -np 2`, and a job whose model is
# missing must fail with shardq's error in the job's output.  Exits 77 with one line when it
# cannot run here (not root, slurm-wlm/munge not installed, daemons that do not start).
# The cluster is torn down on every exit path (trap): no daemon, job or temp folder is left.
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: test_slurm.sh SHARDQ_EXE SOURCE_DIR [MPIEXEC]" >&2; exit 2; }
exe="$1"
src="$2"
mpiexec="${3:-mpirun}"
cluster="$src/tests/slurm/slurm_cluster.sh"
sbatch_file="$src/launch/slurm/shardq.sbatch"
command -v "$mpiexec" >/dev/null 2>&1 || { echo "test_slurm: SKIP: $mpiexec not found" >&2; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export PATH="$PATH:/usr/sbin"

work="$(mktemp -d "${TMPDIR:-/tmp}/shardq-slurm.XXXXXX")" || exit 1
state="$work/cluster"
cleanup() {
  "$cluster" down "$state" || echo "test_slurm: cluster teardown failed ($state)" >&2
  rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }

up_out="$("$cluster" up "$state" 2>"$work/up.err")"
rc=$?
if [ $rc -eq 77 ]; then echo "test_slurm: SKIP: $(tail -n 1 "$work/up.err")" >&2; exit 77; fi
[ $rc -eq 0 ] || { echo "test_slurm: cluster up failed (exit $rc): $(cat "$work/up.err")" >&2; exit 1; }
export SLURM_CONF="$state/slurm.conf"
[ "$up_out" = "export SLURM_CONF=$SLURM_CONF" ] || fail "up printed '$up_out'"
# idempotent: a second `up` keeps the running daemons
pids_before="$(cat "$state"/{munged,slurmctld,slurmd}.pid 2>/dev/null)"
if "$cluster" up "$state" >/dev/null 2>&1 &&
   [ "$(cat "$state"/{munged,slurmctld,slurmd}.pid)" = "$pids_before" ]; then
  ok "second up keeps the cluster"
else
  fail "second up restarted or failed"
fi

model="$work/tiny"
"$exe" make-model --out "$model" >/dev/null || { echo "test_slurm: make-model failed" >&2; exit 1; }
args=(run "$model" --quant nf4 --prompt-ids "1,2,3;4,5" --max-new-tokens 6 --ignore-eos --json --quiet)

"$mpiexec" --oversubscribe -np 2 "$exe" "${args[@]}" >"$work/ref.json" 2>"$work/ref.err" ||
  { echo "test_slurm: plain mpirun failed: $(cat "$work/ref.err")" >&2; exit 1; }
ref="$(grep '"tokens"' "$work/ref.json")"
[ -n "$ref" ] || { echo "test_slurm: no tokens from plain mpirun" >&2; exit 1; }

# sbatch_run NAME [ENV=VALUE…] -- SHARDQ_ARGS…: the template on 1 node × 2 tasks, no GPU
sbatch_run() {
  local name="$1"; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" SHARDQ="$exe" SHARDQ_REPO="$src" \
    timeout 120 sbatch --quiet --wait --job-name="shardq-$name" --nodes=1 --ntasks-per-node=2 \
    --gpus-per-node=0 --cpus-per-task=1 --time=00:02:00 --output="$work/$name.out" \
    "$sbatch_file" "$@"
}

for launch in srun mpirun; do
  t0=$(date +%s.%N)
  sbatch_run "$launch" SHARDQ_LAUNCH="$launch" -- "${args[@]}"
  rc=$?
  t1=$(date +%s.%N)
  out="$work/$launch.out"
  if [ $rc -ne 0 ]; then fail "$launch: sbatch --wait exit $rc: $(tail -n 5 "$out" 2>/dev/null)"; continue; fi
  grep -q "^shardq.sbatch: 1 node(s), 2 task(s): $launch " "$out" || fail "$launch: launch line missing"
  [ "$(grep -c '"model"' "$out")" -eq 1 ] || fail "$launch: expected one JSON document (ranks not wired?)"
  grep -q '"n_ranks": 2,' "$out" || fail "$launch: n_ranks is not 2: $(grep -o '"n_ranks": [0-9]*' "$out")"
  got="$(grep '"tokens"' "$out")"
  if [ "$got" = "$ref" ]; then
    ok "$launch: tokens equal plain mpirun ($(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s)"
  else
    fail "$launch: tokens '$got' != plain mpirun '$ref'"
  fi
done

# a failing job: sbatch --wait reports it, the output names the missing model
sbatch_run fail -- run "$work/no-such-model" --quant nf4 --prompt-ids "1,2" --max-new-tokens 2 --json --quiet
rc=$?
if [ $rc -ne 0 ] && grep -q "no-such-model: cannot open model folder" "$work/fail.out"; then
  ok "missing model: sbatch --wait exit $rc, error in the job output"
else
  fail "missing model: sbatch exit $rc, output: $(cat "$work/fail.out" 2>/dev/null)"
fi
[ -z "$(squeue -h -o %i)" ] || fail "jobs left in the queue: $(squeue -h)"

# teardown leaves nothing: the daemons' pids are gone and the state folder is removed
before=$fails
pids="$(cat "$state"/{munged,slurmctld,slurmd}.pid 2>/dev/null | tr -dc '0-9\n')"
"$cluster" down "$state" || fail "down failed"
for p in $pids; do kill -0 "$p" 2>/dev/null && fail "pid $p still runs after down"; done
[ ! -e "$state" ] || fail "$state still exists after down"
"$cluster" down "$state" || fail "second down failed"
if [ $fails -eq "$before" ]; then ok "down stops the daemons and removes the state"; fi

[ $fails -eq 0 ] || { echo "test_slurm: $fails failure(s)" >&2; exit 1; }
echo "test_slurm: all passed"
