#!/usr/bin/env bash
# Relay throughput of the box, against its own upload rate measured in the same run
# (see docs/benchmarks.md, "Relay").
#
#   bash benches/relay.sh
#
# Builds the box and the relay client (benches/relay_client.rs) in release mode, starts
# the box on 127.0.0.1 with its data on tmpfs and default settings (8 MiB ring), then:
#   1. uploads a 1 GiB file BENCH_UPLOAD_REPS times (benches/upload_client.py, as run.sh);
#   2. relays BENCH_RELAY_GIB GiB (default 10) through one sender/receiver pair;
#   3. relays the same total through ten pairs at once.
# For each: MB/s, the box's CPU seconds per GiB, and the box's peak RSS during that phase
# (VmHWM, reset through /proc/PID/clear_refs before it) plus RSS sampled every 0.2 s.
# Prints a Markdown report on stdout (progress on stderr).
set -euo pipefail

COMMAND="bash benches/relay.sh${*:+ $*}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UPLOAD_REPS="${BENCH_UPLOAD_REPS:-3}"
RELAY_GIB="${BENCH_RELAY_GIB:-10}"
GIB=1073741824
UPLOAD_SIZE=$GIB
RELAY_BYTES=$((RELAY_GIB * GIB))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[relay-bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

log "building lanvan and the relay client (release) into $CARGO_TARGET_DIR"
cargo build --release --quiet >&2
cargo build --release --quiet --example relay_bench >&2
BIN="$CARGO_TARGET_DIR/release/lanvan"
CLIENT="$CARGO_TARGET_DIR/release/examples/relay_bench"
for t in python3 awk ss getconf; do
    command -v "$t" >/dev/null 2>&1 || die "$t is needed"
done
HZ="$(getconf CLK_TCK)"

WORK="/dev/shm/lanvan-relay-bench-$$"
LPID=""
SAMPLER=""
cleanup() {
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
    if [ -n "$LPID" ]; then
        kill -TERM "$LPID" 2>/dev/null || true
        wait "$LPID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$WORK/data"

cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
status_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.0f", b / 1e6 / s}'; }
cpu_per_gib() { awk -v t="$1" -v hz="$HZ" -v b="$2" -v g="$GIB" 'BEGIN {printf "%.2f", t / hz / (b / g)}'; }
median() { tr ' ' '\n' | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" 2>"$WORK/lanvan.log" &
LPID=$!
for _ in $(seq 300); do
    grep -q "listening on" "$WORK/lanvan.log" && break
    kill -0 "$LPID" 2>/dev/null || { cat "$WORK/lanvan.log" >&2; die "lanvan exited at start"; }
    sleep 0.02
done
sleep 1
RSS_IDLE=$(status_kib "$LPID" VmRSS)
RING=$(curl -sS "http://127.0.0.1:$PORT/api/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["relay"]["ring_bytes"])')
log "box on 127.0.0.1:$PORT, idle RSS $RSS_IDLE KiB, ring $RING bytes"

# --- 1. the box's own upload rate -----------------------------------------------------
log "making a 1 GiB random file"
head -c "$UPLOAD_SIZE" /dev/urandom >"$WORK/big.bin"
UP_RATES=""
UP_CPUS=""
# As in run.sh: this VM hands freed guest pages back to the host, and touching them again
# is billed as CPU to whoever does; a 1 GiB upload into tmpfs needs 1 GiB of fresh pages.
# Writing and deleting a scratch file first gives every upload recently used pages.
warm_memory() {
    head -c $((UPLOAD_SIZE + 256 * 1024 * 1024)) /dev/zero >"$WORK/warm.tmp"
    rm -f "$WORK/warm.tmp"
}
for rep in $(seq "$UPLOAD_REPS"); do
    head -c 64 /dev/urandom | dd of="$WORK/big.bin" bs=64 count=1 conv=notrunc status=none
    warm_memory
    t0=$(cpu_ticks "$LPID")
    out=$(python3 benches/upload_client.py --port "$PORT" --file "$WORK/big.bin" --name "up-$rep.bin")
    t1=$(cpu_ticks "$LPID")
    secs=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$out")
    cmp -s "$WORK/big.bin" "$WORK/data/files/up-$rep.bin" || die "upload stored wrongly"
    curl -sS -f -o /dev/null -X DELETE "http://127.0.0.1:$PORT/api/files/up-$rep.bin"
    UP_RATES="$UP_RATES $(mbps "$UPLOAD_SIZE" "$secs")"
    UP_CPUS="$UP_CPUS $(cpu_per_gib $((t1 - t0)) "$UPLOAD_SIZE")"
    log "  upload $rep: $(mbps "$UPLOAD_SIZE" "$secs") MB/s, $(cpu_per_gib $((t1 - t0)) "$UPLOAD_SIZE") CPU s/GiB"
done
rm -f "$WORK/big.bin"
UP_RATE=$(echo $UP_RATES | median)
UP_CPU=$(echo $UP_CPUS | median)

# --- 2./3. relay ----------------------------------------------------------------------
relay_run() { # PAIRS -> "mbps cpu peak_kib rss_min rss_max"
    local pairs=$1 t0 t1 out secs
    # Reset the peak RSS so it covers this phase only; sample RSS meanwhile.
    echo 5 >"/proc/$LPID/clear_refs"
    : >"$WORK/rss.txt"
    (while kill -0 "$LPID" 2>/dev/null; do status_kib "$LPID" VmRSS >>"$WORK/rss.txt"; sleep 0.2; done) &
    SAMPLER=$!
    t0=$(cpu_ticks "$LPID")
    out=$("$CLIENT" "127.0.0.1:$PORT" "$pairs" "$RELAY_BYTES") || die "relay client failed: $out"
    t1=$(cpu_ticks "$LPID")
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
    secs=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$out")
    bytes=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["bytes"])' "$out")
    echo "$(mbps "$bytes" "$secs") $(cpu_per_gib $((t1 - t0)) "$bytes") $(status_kib "$LPID" VmHWM) $(sort -n "$WORK/rss.txt" | head -1) $(sort -n "$WORK/rss.txt" | tail -1)"
}
log "relaying $RELAY_GIB GiB through one pair"
read -r R1_RATE R1_CPU R1_PEAK R1_MIN R1_MAX < <(relay_run 1)
log "  $R1_RATE MB/s, $R1_CPU CPU s/GiB, peak RSS $R1_PEAK KiB (sampled $R1_MIN..$R1_MAX)"
log "relaying $RELAY_GIB GiB through ten pairs at once"
read -r R10_RATE R10_CPU R10_PEAK R10_MIN R10_MAX < <(relay_run 10)
log "  $R10_RATE MB/s, $R10_CPU CPU s/GiB, peak RSS $R10_PEAK KiB (sampled $R10_MIN..$R10_MAX)"
kill -0 "$LPID" 2>/dev/null || die "lanvan died during the run"
warn=$(grep -ciE 'warn|error' "$WORK/lanvan.log" || true)
[ "$warn" = 0 ] || { log "lanvan logged $warn warning/error lines:"; grep -iE 'warn|error' "$WORK/lanvan.log" | head >&2; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
cat <<EOF
## Relay vs the box's own upload

- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cores, $(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)
- Command: \`$COMMAND\` (lanvan $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo '+dirty')); data on tmpfs; default settings: ring $(mib $((RING / 1024))) MiB of 256 KiB chunks
- Box idle RSS before the run: $(mib "$RSS_IDLE") MiB

| phase | MB/s | box CPU s/GiB | box peak RSS (MiB) | RSS sampled (MiB) | vs upload |
|---|---:|---:|---:|---:|---:|
| upload 1 GiB (median of $UPLOAD_REPS:$UP_RATES) | $UP_RATE | $UP_CPU | | | 1.00× |
| relay $RELAY_GIB GiB, 1 pair | $R1_RATE | $R1_CPU | $(mib "$R1_PEAK") | $(mib "$R1_MIN")–$(mib "$R1_MAX") | $(ratio "$R1_RATE" "$UP_RATE")× |
| relay $RELAY_GIB GiB, 10 pairs | $R10_RATE | $R10_CPU | $(mib "$R10_PEAK") | $(mib "$R10_MIN")–$(mib "$R10_MAX") | $(ratio "$R10_RATE" "$UP_RATE")× |
EOF
log "done"
