#!/usr/bin/env bash
# Runs a command inside a fresh network namespace shaped like a small LAN, for the P2P
# tests and benchmark: `scripts/netns-lan.sh CMD ARGS...`. Chromium leaves loopback out of
# ICE, so the namespace gets a veth pair (198.18.0.2 <-> 198.18.0.1, a benchmarking range)
# with the default and multicast routes through it. Nothing reaches the machine's real
# network: the namespace has no link out, and it disappears with the command.
# Exit 77 when namespaces are not available here (not root, no CAP_SYS_ADMIN).
set -euo pipefail
if [ "${LANVAN_IN_NETNS:-}" != 1 ]; then
    if ! unshare -n true 2>/dev/null; then
        echo "netns-lan: cannot create a network namespace here (needs root or CAP_SYS_ADMIN)" >&2
        exit 77
    fi
    LANVAN_IN_NETNS=1 exec unshare -n bash "$0" "$@"
fi
ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 198.18.0.2/24 dev v0
ip addr add 198.18.0.1/24 dev v1
ip link set v0 up
ip link set v1 up
ip route add default via 198.18.0.1 dev v0
ip route add 224.0.0.0/4 dev v0
export LANVAN_LAN_ADDR=198.18.0.2
exec "$@"
