#!/usr/bin/env bash
# The multi-host test (CTest label `multihost`): two hosts made on this machine (hosts.sh:
# network + UTS namespaces with their own names and addresses), Open MPI started across them
# with a hostfile and an rsh agent that enters the other namespace, 2 ranks per host.  Checks:
#   1. `shardq topo` sees 2 nodes, each with its own ranks and local ranks 0, 1;
#   2. `plan --discover` puts the node boundary between ranks 1 and 2 and names the nodes;
#   3. `run` across the hosts gives the same tokens and the same logits (byte for byte) as on
#      one host, for 2 and 4 ranks, --quant none and nf4;
#   4. `quantize` across the hosts writes the same bytes as on one host;
#   4b. launch/shardq-mpirun across the hosts gives the same tokens;
#   5. every process of host 2 killed mid-run: the job ends within --timeout + a margin,
#      non-zero, naming host 2, with no output file (nor temporary) left.
# Exits 77 (skipped) when namespaces cannot be made here (not root, no ip / unshare).
# Everything it makes is removed on every exit path (trap), and checked.
#   usage: test_multihost.sh SHARDQ_EXE [MPIRUN]
set -uo pipefail
exe="$1"; mpirun="${2:-mpirun}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if ! "$here/hosts.sh" check; then
  echo "SKIP: multihost: network namespaces cannot be made here (needs root, iproute2, util-linux)"
  exit 77
fi
prefix="sqmh$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/sq-multihost-XXXXXX")"
cleanup() {
  "$here/hosts.sh" down "$prefix"
  rm -rf "$work"
  if ip netns list | grep -q "^$prefix"; then echo "FAIL: namespaces of $prefix left behind"; exit 1; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM
st="$("$here/hosts.sh" up "$prefix" 2)" || { echo "FAIL: could not make the test hosts"; exit 1; }
sub="$(cat "$st/subnet")"
h1="$prefix-h1"; h2="$prefix-h2"
across_flags=(--hostfile "$st/hostfile" --mca plm_rsh_agent "$st/agent" --mca btl tcp,self
              --mca btl_tcp_if_include "$sub" --mca oob_tcp_if_include "$sub" --bind-to none)
local_flags=(--oversubscribe --bind-to none --mca btl self,tcp --mca btl_tcp_if_include lo
             --mca oob_tcp_if_include lo)
fails=0
ok() { echo "PASS: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
# across NP ARGS…: mpirun started on host 1; 2 ranks go one per host, 4 ranks two per host
across() {
  local np="$1"; shift
  local map=(--map-by slot); [ "$np" -le 2 ] && map=(--map-by node)
  timeout 180 "$here/hosts.sh" exec "$prefix" 1 "$mpirun" "${across_flags[@]}" "${map[@]}" -np "$np" "$@"
}
onehost() { local np="$1"; shift; timeout 180 "$mpirun" "${local_flags[@]}" -np "$np" "$@"; }
single() { env OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self "$@"; }

# 1. topo
out="$(across 4 "$exe" topo 2>&1)"
rows="$(printf '%s\n' "$out" | awk '$1 ~ /^[0-9]+$/ && NF > 4 {print $1, $2, $3}')"
want="$(printf '0 %s 0\n1 %s 1\n2 %s 0\n3 %s 1' "$h1" "$h1" "$h2" "$h2")"
if printf '%s\n' "$out" | grep -q "2 nodes, 4 devices" && [ "$rows" = "$want" ]; then ok "topo: 2 nodes, ranks 0-1 on $h1, 2-3 on $h2, local ranks 0/1"
else bad "topo across hosts:"$'\n'"$out"; fi

# the model
single "$exe" make-model --preset tiny --family llama --out "$work/tiny" >/dev/null 2>&1 || { bad "make-model"; exit 1; }

# 2. plan --discover
out="$(across 4 "$exe" plan "$work/tiny" --discover --quant nf4 --max-seq 64 2>&1)"
nodes="$(printf '%s\n' "$out" | awk '$1 ~ /^[0-9]+$/ && NF > 6 {print $1, $2}' | head -4)"
want="$(printf '0 %s\n1 %s\n2 %s\n3 %s' "$h1" "$h1" "$h2" "$h2")"
if [ "$nodes" = "$want" ]; then ok "plan --discover: node boundary between ranks 1 and 2"
else bad "plan --discover across hosts:"$'\n'"$out"; fi

# 3. run: tokens and logits across hosts == one host
for np in 2 4; do
  for q in none nf4; do
    args=(run "$work/tiny" --quant "$q" --prompt-ids "1,2,3,4;5,6,7" --max-new-tokens 12 --ignore-eos --micro-batches 2 --json --quiet)
    a="$(onehost "$np" "$exe" "${args[@]}" --dump-logits "$work/one-$np-$q.bin" 2>&1)"
    b="$(across "$np" "$exe" "${args[@]}" --dump-logits "$work/two-$np-$q.bin" 2>&1)"
    ta="$(printf '%s\n' "$a" | grep '"tokens"')"; tb="$(printf '%s\n' "$b" | grep '"tokens"')"
    if [ -n "$ta" ] && [ "$ta" = "$tb" ] && cmp -s "$work/one-$np-$q.bin" "$work/two-$np-$q.bin"; then
      ok "run $np ranks --quant $q: same tokens and logits across 2 hosts as on one"
    else bad "run $np ranks --quant $q across hosts:"$'\n'"one host: $a"$'\n'"two hosts: $b"; fi
  done
done

# 4. quantize
onehost 2 "$exe" quantize "$work/tiny" --out "$work/q-one" >/dev/null 2>&1
across 2 "$exe" quantize "$work/tiny" --out "$work/q-two" >/dev/null 2>&1
if [ -d "$work/q-one" ] && [ -d "$work/q-two" ] && diff -r "$work/q-one" "$work/q-two" >/dev/null; then
  ok "quantize across 2 hosts: the same bytes as on one host"
else bad "quantize across hosts differs (or failed)"; fi

# 4b. the launcher across the hosts (launch/shardq-mpirun with the test hosts' hostfile)
args=(run "$work/tiny" --quant nf4 --prompt-ids "1,2,3,4;5,6,7" --max-new-tokens 12 --ignore-eos --micro-batches 2 --json --quiet)
a="$(onehost 4 "$exe" "${args[@]}" 2>&1 | grep '"tokens"')"
b="$(SHARDQ="$exe" timeout 180 "$here/hosts.sh" exec "$prefix" 1 "$here/../../launch/shardq-mpirun" \
     --hostfile "$st/hostfile" --mpirun-flags "--mca plm_rsh_agent $st/agent --mca btl tcp,self --mca btl_tcp_if_include $sub --mca oob_tcp_if_include $sub" \
     "${args[@]}" 2>&1 | grep '"tokens"')"
if [ -n "$a" ] && [ "$a" = "$b" ]; then ok "launch/shardq-mpirun --hostfile across 2 hosts: same tokens as one host"
else bad "shardq-mpirun across hosts: '$a' vs '$b'"; fi

# 5. a host dies mid-run: rank 2 (host 2) hangs at decode step 1 (the pipeline's test hook), then
# every process of host 2 is killed
timeout_s=5
log="$work/die.log"
t0=$(date +%s.%N)
( across 4 -x SHARDQ_TEST_DIE_RANK=2 -x SHARDQ_TEST_DIE_MODE=hang "$exe" run "$work/tiny" --quant none \
    --prompt-ids "1,2,3" --max-new-tokens 40 --ignore-eos --timeout "$timeout_s" \
    --dump-logits "$work/die.bin" > "$log" 2>&1; echo $? > "$work/die.rc" ) &
job=$!
sleep 4
pids="$(ip netns pids "${prefix}2" 2>/dev/null || true)"
tk=$(date +%s.%N)
[ -n "$pids" ] && kill -9 $pids 2>/dev/null
wait "$job"
t1=$(date +%s.%N)
rc="$(cat "$work/die.rc" 2>/dev/null || echo missing)"
took=$(awk -v a="$tk" -v b="$t1" 'BEGIN{printf "%.1f", b - a}')
left="$(ls "$work" | grep -c '^die\.bin' || true)"
if [ -n "$pids" ] && [ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -q "$h2" "$log" &&
   awk -v t="$took" -v lim="$((timeout_s + 10))" 'BEGIN{exit !(t <= lim)}' && [ "$left" = 0 ]; then
  ok "host 2 killed mid-run: exit $rc after ${took} s, $h2 named, no output left"
  grep -m2 -i "$h2" "$log" | sed 's/^/      /'
else
  bad "host death: pids '$pids' rc $rc after ${took} s, files left $left; log:"$'\n'"$(cat "$log")"
fi

echo "multihost: $fails failure(s)"
[ "$fails" -eq 0 ]
