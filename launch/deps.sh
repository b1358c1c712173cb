#!/usr/bin/env bash
# Installs the Debian packages shardq builds with, if any is missing.  Idempotent: does nothing
# (and needs no network) when everything is present.  CUDA/NCCL are optional and not installed.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin libhwloc-dev libcjson-dev check clang
      iproute2 libmicrohttpd-dev curl)   # iproute2: the multihost tests make their hosts with `ip netns`;
      # libmicrohttpd-dev: `shardq serve`'s HTTP server; curl: its tests
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "shardq: installing Debian packages: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "shardq: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
