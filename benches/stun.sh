#!/usr/bin/env bash
# The box's STUN responder against a plain UDP echo thread measured in the same run (see
# docs/benchmarks.md, "STUN"), on loopback only:
#
#   bash benches/stun.sh [SECONDS]
#
# Builds the box and the client (benches/stun_client.rs) in release mode, starts the box on
# 127.0.0.1 with an ephemeral STUN port, and prints a Markdown table: Binding round trips
# (median, p99 over 20,000 sequential requests) and answers per second with 32 requests
# outstanding, for the echo thread and for the box, plus the box's CPU seconds and RSS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECS="${1:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"
log() { printf '[stun-bench %s] %s\n' "$(date +%T)" "$*" >&2; }

log "building lanvan and the STUN client (release)"
cargo build --release --quiet >&2
cargo build --release --quiet --example stun_bench >&2
BIN="$CARGO_TARGET_DIR/release/lanvan"
WORK="$(mktemp -d)"
LPID=""
cleanup() {
    if [ -n "$LPID" ]; then kill -TERM "$LPID" 2>/dev/null || true; wait "$LPID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
"$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" -s p2p.stun_port=0 2>"$WORK/log" &
LPID=$!
for _ in $(seq 100); do grep -q "STUN on udp" "$WORK/log" && break; sleep 0.1; done
STUN="$(grep -o 'STUN on udp [0-9.:]*' "$WORK/log" | awk '{print $4}')"
[ -n "$STUN" ] || { cat "$WORK/log" >&2; log "the box did not open STUN"; exit 1; }
ticks() { sed 's/^.*) //' "/proc/$LPID/stat" | awk '{print $12 + $13}'; }
HZ="$(getconf CLK_TCK)"
before="$(ticks)"
log "box pid $LPID, STUN on $STUN"
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); command: bash benches/stun.sh $SECS"
echo
"$CARGO_TARGET_DIR/release/examples/stun_bench" "$STUN" "$SECS"
after="$(ticks)"
echo
echo "Box: $(awk -v t=$((after - before)) -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz}') CPU seconds for the whole run; RSS $(awk '$1 == "VmRSS:" {print $2}' /proc/$LPID/status) KiB, peak $(awk '$1 == "VmHWM:" {print $2}' /proc/$LPID/status) KiB."
