#!/usr/bin/env bash
# A stored file's chunk manifest (docs/benchmarks.md, "Chunk manifests"), on loopback only:
#
#   bash benches/manifest.sh [MIB]          (BIN=path/to/lanvan to skip the release build)
#
# Puts MIB (default 512) MiB of random bytes into a new box's files/, then times
# `GET /api/files/big.bin/manifest` twice (first: computed off the loop; second: cached) and,
# as the reference in the same run, `sha256sum` of the same file (warm page cache both times).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MIB="${1:-512}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"
log() { printf '[manifest-bench %s] %s\n' "$(date +%T)" "$*" >&2; }
if [ -z "${BIN:-}" ]; then
    log "building lanvan (release)"
    cargo build --release --quiet >&2
    BIN="$CARGO_TARGET_DIR/release/lanvan"
fi
WORK="$(mktemp -d)"
LPID=""
cleanup() {
    if [ -n "$LPID" ]; then kill -TERM "$LPID" 2>/dev/null || true; wait "$LPID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/data/files"
head -c "$((MIB << 20))" /dev/urandom >"$WORK/data/files/big.bin"
now() { date +%s.%N; }
t0="$(now)"; sha256sum "$WORK/data/files/big.bin" >/dev/null; t1="$(now)"
"$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" -s p2p.stun_port=0 2>"$WORK/log" &
LPID=$!
for _ in $(seq 300); do grep -q "listening on" "$WORK/log" && break; sleep 0.1; done
ADDR="$(grep -o 'listening on [0-9.:]*' "$WORK/log" | awk '{print $3}')"
[ -n "$ADDR" ] || { cat "$WORK/log" >&2; log "the box did not start"; exit 1; }
t2="$(now)"; curl -fsS -o "$WORK/m1.json" "http://$ADDR/api/files/big.bin/manifest"; t3="$(now)"
t4="$(now)"; curl -fsS -o "$WORK/m2.json" "http://$ADDR/api/files/big.bin/manifest"; t5="$(now)"
cmp -s "$WORK/m1.json" "$WORK/m2.json" || { log "the two answers differ"; exit 1; }
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); command: bash benches/manifest.sh $MIB"
echo
awk -v mib="$MIB" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" -v t4="$t4" -v t5="$t5" \
    -v bytes="$(wc -c <"$WORK/m1.json")" 'BEGIN {
    ref = t1 - t0; first = t3 - t2; again = t5 - t4
    printf "| what | seconds | MiB/s | vs sha256sum |\n|---|---|---|---|\n"
    printf "| sha256sum (reference) | %.3f | %.0f | 1.00 |\n", ref, mib / ref
    printf "| first GET .../manifest (computed) | %.3f | %.0f | %.2f |\n", first, mib / first, ref / first
    printf "| second GET (cached, %d bytes of JSON) | %.3f | — | — |\n", bytes, again
}'
