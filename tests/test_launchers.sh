#!/usr/bin/env bash
# Tests of launch/shardq-mpirun and launch/slurm/shardq.sbatch (CTest: test_launchers, unit).
#   1. shardq-mpirun --dry-run --hosts: the hostfile and the mpirun line (np = sum of GPUs,
#      map by slot, every rank through shardq-bind); bad --hosts refused with exit 2;
#   2. shardq-mpirun really starts 2 ranks of `shardq run` on this host: the same tokens as
#      plain mpirun;
#   3. shardq.sbatch outside SLURM with SHARDQ_LAUNCH=mpirun and SLURM_NTASKS=2 runs the job;
#      with the default (srun) a stub srun on PATH receives --mpi=pmix, --ntasks and the
#      command (the template's command line; a real SLURM cluster runs it in
#      tests/slurm/test_slurm.sh where slurm-wlm and munge are installed).
#   usage: test_launchers.sh SHARDQ_EXE SOURCE_DIR
set -uo pipefail
exe="$1"; src="$2"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 SHARDQ="$exe"
work="$(mktemp -d "${TMPDIR:-/tmp}/sq-launch-XXXXXX")"
trap 'rm -rf "$work"' EXIT
fails=0
ok() { echo "PASS: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
mpiflags="--oversubscribe --mca btl self,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo"

out="$("$src/launch/shardq-mpirun" --dry-run --hosts nodeA:8,nodeB:4 run /m --prompt hi 2>&1)"
if printf '%s\n' "$out" | grep -q '^#   nodeA slots=8$' && printf '%s\n' "$out" | grep -q '^#   nodeB slots=4$' &&
   printf '%s\n' "$out" | grep -q -- "-np 12 --map-by slot --bind-to none" &&
   printf '%s\n' "$out" | grep -q "launch/shardq-bind $exe run /m --prompt hi"; then
  ok "shardq-mpirun --dry-run: hostfile, -np 12, map by slot, shardq-bind"
else bad "shardq-mpirun --dry-run:"$'\n'"$out"; fi
"$src/launch/shardq-mpirun" --hosts nodeA8 run /m > "$work/o" 2>&1; rc=$?
if [ "$rc" = 2 ] && grep -q "use HOST:GPUS" "$work/o"; then ok "bad --hosts refused (exit 2)"; else bad "bad --hosts: exit $rc: $(cat "$work/o")"; fi

env OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self "$exe" make-model --out "$work/tiny" >/dev/null 2>&1
args=(run "$work/tiny" --quant nf4 --prompt-ids "1,2,3;4,5" --max-new-tokens 6 --ignore-eos --json --quiet)
a="$(mpirun $mpiflags --bind-to none -np 2 "$exe" "${args[@]}" 2>&1 | grep '"tokens"')"
b="$("$src/launch/shardq-mpirun" --np 2 --mpirun-flags "$mpiflags" "${args[@]}" 2>&1 | grep '"tokens"')"
if [ -n "$a" ] && [ "$a" = "$b" ]; then ok "shardq-mpirun runs 2 ranks: same tokens as mpirun"; else bad "shardq-mpirun run: '$a' vs '$b'"; fi

c="$(cd "$src" && env SHARDQ_LAUNCH=mpirun SLURM_NTASKS=2 SLURM_SUBMIT_DIR="$src" OMPI_MCA_rmaps_base_oversubscribe=1 \
     OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo \
     bash launch/slurm/shardq.sbatch "${args[@]}" 2>&1 | grep '"tokens"')"
if [ -n "$c" ] && [ "$c" = "$a" ]; then ok "shardq.sbatch (SHARDQ_LAUNCH=mpirun, 2 tasks): same tokens"; else bad "shardq.sbatch mpirun: '$c'"; fi

mkdir -p "$work/bin"
printf '#!/bin/sh\necho "srun-stub: $*"\n' > "$work/bin/srun"; chmod +x "$work/bin/srun"
d="$(cd "$src" && PATH="$work/bin:$PATH" SLURM_NTASKS=16 SLURM_JOB_NUM_NODES=2 SLURM_SUBMIT_DIR="$src" \
     bash launch/slurm/shardq.sbatch run /m --prompt hi 2>&1)"
if printf '%s\n' "$d" | grep -q "srun-stub: --mpi=pmix --ntasks=16 --kill-on-bad-exit=1 $src/launch/shardq-bind $exe run /m --prompt hi"; then
  ok "shardq.sbatch (srun): srun --mpi=pmix --ntasks=16 … shardq-bind shardq run …"
else bad "shardq.sbatch srun:"$'\n'"$d"; fi

echo "launchers: $fails failure(s)"
[ "$fails" -eq 0 ]
