#!/usr/bin/env bash
# What mDNS costs and how fast a box is found, measured between two network namespaces
# joined by a veth pair (created here, deleted on exit; nothing leaves them). Needs root
# and iproute2.
#
#   bash benches/mdns.sh
#
# Runs two release boxes side by side in one namespace, one with mDNS and one without
# (the reference, same run), and reports their threads, resident memory and idle CPU over
# BENCH_IDLE_SECS (default 20), then the wall time of `lanvan discover` and
# `lanvan discover --host` from the other namespace over BENCH_RUNS runs (default 20).
# Prints Markdown on stdout; progress on stderr.
set -euo pipefail

COMMAND="bash benches/mdns.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
IDLE="${BENCH_IDLE_SECS:-20}"
RUNS="${BENCH_RUNS:-20}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

log "building lanvan (release)"
cargo build --release --quiet >&2
BIN="$CARGO_TARGET_DIR/release/lanvan"

A="lvbench-$$-a"; B="lvbench-$$-b"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$A"; ip netns add "$B"
ip link add "lvb$$a" netns "$A" type veth peer name "lvb$$b" netns "$B"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set "lvb$$a" up; ip -n "$B" link set "lvb$$b" up
ip -n "$A" addr add 10.77.0.1/24 dev "lvb$$a"
ip -n "$B" addr add 10.77.0.2/24 dev "lvb$$b"

start() { # port, extra settings...
    local port="$1"; shift
    ip netns exec "$A" "$BIN" serve --listen "0.0.0.0:$port" -d "$WORK/data-$port" "$@" \
        2>"$WORK/log-$port" &
    PIDS+=("$!")
}
start 8080
start 8081 -s mdns.enabled=false
MDNS_PID="${PIDS[0]}"; PLAIN_PID="${PIDS[1]}"
sleep 3
grep -q "mDNS: announced" "$WORK/log-8080" || { log "the box did not announce itself"; exit 1; }

field() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
log "idling ${IDLE}s"
c1=$(cpu_ticks "$MDNS_PID"); p1=$(cpu_ticks "$PLAIN_PID")
sleep "$IDLE"
c2=$(cpu_ticks "$MDNS_PID"); p2=$(cpu_ticks "$PLAIN_PID")
hz=$(getconf CLK_TCK)

times=(); host_times=()
log "discover x$RUNS"
for _ in $(seq "$RUNS"); do
    t0=$(date +%s%N)
    ip netns exec "$B" "$BIN" discover >/dev/null
    times+=($(( ($(date +%s%N) - t0) / 1000000 )))
    t0=$(date +%s%N)
    ip netns exec "$B" "$BIN" discover --host lanvan.local >/dev/null
    host_times+=($(( ($(date +%s%N) - t0) / 1000000 )))
done
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "median %d ms, max %d ms", a[int((NR+1)/2)], a[NR]}'; }

cat <<EOF
### mDNS ($(date -u +%Y-%m-%d), \`$COMMAND\`)

Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); release build.

| box | threads | RSS | idle CPU over ${IDLE} s |
|---|---|---|---|
| mDNS on | $(field "$MDNS_PID" Threads) | $(field "$MDNS_PID" VmRSS) KiB | $(( (c2 - c1) * 1000 / hz )) ms |
| mDNS off (reference) | $(field "$PLAIN_PID" Threads) | $(field "$PLAIN_PID" VmRSS) KiB | $(( (p2 - p1) * 1000 / hz )) ms |

| command, from the other namespace, $RUNS runs | wall time |
|---|---|
| \`lanvan discover\` (listens for its 1 s) | $(stats "${times[@]}") |
| \`lanvan discover --host lanvan.local\` (returns on the first answer) | $(stats "${host_times[@]}") |
EOF
