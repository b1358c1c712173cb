#!/usr/bin/env bash
# slurm_cluster.sh up|down|status STATE_DIR: a one-node SLURM cluster on this host (Debian's
# slurm-wlm + munge), everything under STATE_DIR: its own munge key and socket, slurm.conf,
# spool, state and logs.  Nothing in /etc is read or written; the system munged/slurm, if any,
# are not touched.  Needs root (slurmd starts the tasks of any user).
#
#   up:     starts munged, slurmctld and slurmd (idempotent: a running cluster is kept) and
#           waits until the node is idle; prints `export SLURM_CONF=…` for srun/sbatch/sinfo.
#           Exits 77 with one line on stderr when it cannot run here (not root, slurm-wlm or
#           munge missing, a daemon that does not start); the reason is in STATE_DIR/*.log.
#   down:   cancels the cluster's jobs, stops the three daemons by their pid files (TERM, then
#           KILL), waits until they are gone, and removes STATE_DIR.  Idempotent.
#   status: exit 0 when the three daemons run.
#
# SLURM_PORT_BASE (default 6817) sets slurmctld's port; slurmd's is the next one.
set -uo pipefail
die77() { echo "slurm_cluster.sh: $*" >&2; exit 77; }
usage() { echo "usage: slurm_cluster.sh up|down|status STATE_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action="$1"
state="$2"
case "$state" in /*) ;; *) state="$(pwd)/$state" ;; esac
daemons=(slurmd slurmctld munged)

pid_of() {   # pid of daemon $1 when it is alive, else nothing
  local f="$state/$1.pid" p
  [ -r "$f" ] || return 1
  p="$(tr -dc 0-9 <"$f")"
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null && [ -d "/proc/$p" ] || return 1
  # the pid file may be stale and the number reused: check the command name
  case "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" in *"$1"*) echo "$p" ;; *) return 1 ;; esac
}

all_up() { local d; for d in "${daemons[@]}"; do pid_of "$d" >/dev/null || return 1; done; }

stop_all() {
  local d p _
  if pid_of slurmctld >/dev/null && [ -r "$state/slurm.conf" ]; then   # cancel jobs left behind
    local jobs
    jobs="$(SLURM_CONF="$state/slurm.conf" squeue -h -o %i 2>/dev/null)"
    # shellcheck disable=SC2086  # one job id a word
    [ -z "$jobs" ] || SLURM_CONF="$state/slurm.conf" scancel --quiet --full $jobs >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do
      [ -z "$(SLURM_CONF="$state/slurm.conf" squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  for d in "${daemons[@]}"; do
    p="$(pid_of "$d")" || continue
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      kill -KILL "$p" 2>/dev/null
      for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    fi
    kill -0 "$p" 2>/dev/null && { echo "slurm_cluster.sh: $d (pid $p) did not stop" >&2; return 1; }
  done
  # slurmstepd processes of a job cut short are children of slurmd's session: end ours
  if [ -r "$state/slurm.conf" ]; then
    local s
    for s in $(pgrep -x slurmstepd 2>/dev/null); do
      grep -qa -- "$state" "/proc/$s/environ" "/proc/$s/cmdline" 2>/dev/null && kill -KILL "$s" 2>/dev/null
    done
  fi
  return 0
}

write_conf() {
  local host cpus mem port="${SLURM_PORT_BASE:-6817}"
  host="$(hostname -s)"
  cpus="$(nproc)"
  mem="$(awk '/MemTotal/ { print int($2 / 1024 / 2) }' /proc/meminfo)"   # half of it, MiB
  cat >"$state/slurm.conf.tmp" <<EOF
ClusterName=shardqtest
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$state/munge.socket
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv "$state/slurm.conf.tmp" "$state/slurm.conf"
}

up() {
  [ "$(id -u)" -eq 0 ] || die77 "needs root (slurmd runs the tasks as their user)"
  local b
  for b in munged mungekey slurmctld slurmd slurmstepd srun sbatch sinfo; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] ||
      die77 "$b not found (apt-get install slurm-wlm munge)"
  done
  export PATH="$PATH:/usr/sbin"
  export SLURM_CONF="$state/slurm.conf"
  if all_up; then echo "export SLURM_CONF=$SLURM_CONF"; return 0; fi
  stop_all || exit 1                                    # a half-started cluster: start afresh
  mkdir -p "$state/ctld" "$state/spool" || exit 1
  chmod 0700 "$state" || exit 1
  if [ ! -s "$state/munge.key" ]; then
    mungekey --create --keyfile="$state/munge.key.tmp" --force >/dev/null 2>&1 ||
      dd if=/dev/urandom of="$state/munge.key.tmp" bs=1024 count=1 status=none || exit 1
    chmod 0600 "$state/munge.key.tmp" && mv "$state/munge.key.tmp" "$state/munge.key" || exit 1
  fi
  write_conf || exit 1
  rm -f "$state/munge.socket" "$state/munge.socket.lock"
  # --force: STATE_DIR may sit under /tmp, whose sticky, world-writable bit munged distrusts
  munged --force --socket="$state/munge.socket" --key-file="$state/munge.key" \
    --pid-file="$state/munged.pid" --log-file="$state/munged.log" \
    --seed-file="$state/munged.seed" >>"$state/munged.log" 2>&1 ||
    { stop_all; die77 "munged does not start: $(tail -n 1 "$state/munged.log")"; }
  slurmctld -f "$SLURM_CONF" -i >>"$state/slurmctld.out" 2>&1 ||
    { stop_all; die77 "slurmctld does not start: $(tail -n 1 "$state/slurmctld.log" 2>/dev/null)"; }
  slurmd -f "$SLURM_CONF" >>"$state/slurmd.out" 2>&1 ||
    { stop_all; die77 "slurmd does not start: $(tail -n 1 "$state/slurmd.log" 2>/dev/null)"; }
  local _ st
  for _ in $(seq 1 100); do
    st="$(sinfo -h -N -o %t 2>/dev/null | head -n 1)"
    case "$st" in idle|mix|alloc) break ;; esac
    all_up || break
    sleep 0.2
  done
  case "$st" in
    idle|mix|alloc) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) local why
       why="$(grep -h -i 'fatal' "$state"/slurm*.log 2>/dev/null | tail -n 1)"
       [ -n "$why" ] || why="$(grep -h -i 'error' "$state"/slurm*.log 2>/dev/null | tail -n 1)"
       stop_all
       die77 "the node does not come up (state '${st:-none}'): ${why:-see $state/slurm*.log}" ;;
  esac
}

case "$action" in
  up) up ;;
  down)
    [ -e "$state" ] || exit 0
    [ -e "$state/slurm.conf" ] || [ -e "$state/munge.key" ] || [ -z "$(ls -A "$state" 2>/dev/null)" ] ||
      { echo "slurm_cluster.sh: $state is not a cluster state folder: not removed" >&2; exit 1; }
    stop_all || exit 1
    rm -rf -- "$state" ;;
  status) all_up ;;
  *) usage ;;
esac
