#!/usr/bin/env bash
# Two (or three) test hosts on one Linux machine: network namespaces joined by a bridge-less
# veth star, each with its own address and host name, and an rsh agent for Open MPI that
# "logs in" to a host by entering its namespace (and a fresh UTS namespace carrying its name).
#
#   hosts.sh up PREFIX N        make hosts PREFIX-h1..hN (netns PREFIX1..N, 10.<k>.0.i/24),
#                               write PREFIX's state folder (hostfile, agent, hosts); prints it
#   hosts.sh down PREFIX        kill everything inside the namespaces, delete them and the state
#   hosts.sh exec PREFIX I CMD… run CMD on host I (its netns, its own host name)
#   hosts.sh check              exit 0 when namespaces can be made here (root, ip, unshare)
#
# Needs root, iproute2 (ip) and util-linux (unshare).  Host i's /etc/hosts (ip netns exec
# bind-mounts /etc/netns/<ns>/hosts) names every host.  Nothing is left behind by `down`.
set -euo pipefail
state_of() { echo "${TMPDIR:-/tmp}/shardq-mh-$1"; }

cmd="${1:-}"; shift || true
case "$cmd" in
check)
  [ "$(id -u)" -eq 0 ] || { echo "multihost: not root: network namespaces cannot be made" >&2; exit 1; }
  command -v ip >/dev/null && command -v unshare >/dev/null ||
    { echo "multihost: ip (iproute2) or unshare (util-linux) missing" >&2; exit 1; }
  ip netns add shardq-mh-probe$$ 2>/dev/null || { echo "multihost: ip netns add failed here" >&2; exit 1; }
  ip netns del shardq-mh-probe$$
  unshare --uts true 2>/dev/null || { echo "multihost: unshare --uts failed here" >&2; exit 1; }
  ;;
up)
  prefix="$1"; n="${2:-2}"
  st="$(state_of "$prefix")"
  mkdir -p "$st"
  # a /24 per prefix, from a hash of its name, in 10.200-249.x.0
  sum=$(printf '%s' "$prefix" | cksum | cut -d' ' -f1)
  net="10.$((200 + sum % 50)).$(((sum / 50) % 250)).0"
  base="${net%.0}"
  : > "$st/hostfile"; : > "$st/hosts"; : > "$st/nslist"
  printf '127.0.0.1 localhost\n' > "$st/hosts"
  for i in $(seq 1 "$n"); do
    printf '%s.%d %s-h%d\n' "$base" "$i" "$prefix" "$i" >> "$st/hosts"
  done
  ip netns add "${prefix}0"     # the hub: veth ends of every host meet on a bridge there
  echo "${prefix}0" >> "$st/nslist"
  ip -n "${prefix}0" link add br0 type bridge
  ip -n "${prefix}0" link set br0 up
  for i in $(seq 1 "$n"); do
    ns="${prefix}$i"
    ip netns add "$ns"
    echo "$ns" >> "$st/nslist"
    ip link add "${prefix:0:8}h$i" type veth peer name "${prefix:0:8}b$i"
    ip link set "${prefix:0:8}h$i" netns "$ns"
    ip link set "${prefix:0:8}b$i" netns "${prefix}0"
    ip -n "$ns" link set "${prefix:0:8}h$i" name eth0
    ip -n "$ns" addr add "$base.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "${prefix}0" link set "${prefix:0:8}b$i" master br0
    ip -n "${prefix}0" link set "${prefix:0:8}b$i" up
    mkdir -p "/etc/netns/$ns"
    cp "$st/hosts" "/etc/netns/$ns/hosts"
    printf '%s-h%d slots=2\n' "$prefix" "$i" >> "$st/hostfile"
  done
  echo "$net/24" > "$st/subnet"
  cat > "$st/agent" <<AGENT
#!/bin/sh
# Open MPI rsh agent for the test hosts of $prefix: agent [options] HOST COMMAND...
while [ \$# -gt 0 ]; do case "\$1" in -*) shift;; *) break;; esac; done
host="\$1"; shift
i="\${host##*-h}"
case "\$host" in $prefix-h[0-9]*) ;; *) echo "agent: unknown host \$host" >&2; exit 1;; esac
exec ip netns exec "$prefix\$i" unshare --uts /bin/sh -c "hostname \$host; \$*"
AGENT
  chmod +x "$st/agent"
  echo "$st"
  ;;
exec)
  prefix="$1"; i="$2"; shift 2
  exec ip netns exec "${prefix}$i" unshare --uts /bin/sh -c 'hostname "$0"; exec "$@"' "$prefix-h$i" "$@"
  ;;
down)
  prefix="$1"
  st="$(state_of "$prefix")"
  if [ -f "$st/nslist" ]; then
    while read -r ns; do
      pids="$(ip netns pids "$ns" 2>/dev/null || true)"
      [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    done < "$st/nslist"
    sleep 0.2
    while read -r ns; do
      ip netns del "$ns" 2>/dev/null || true
      rm -rf "/etc/netns/$ns"
    done < "$st/nslist"
  fi
  rm -rf "$st"
  ;;
*)
  sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
