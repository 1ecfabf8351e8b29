#!/usr/bin/env bash
# LANVan benchmark against miniserve, in one run on this machine (see docs/benchmarks.md).
#
#   bash benches/run.sh
#
# Builds the box in release mode, installs miniserve and wrk if missing, starts both
# servers on 127.0.0.1 with data on tmpfs, and measures uploads and downloads of a 1 GiB
# file, 4 KiB GET throughput and latency with wrk, server CPU per GiB and memory. Prints a
# Markdown report on stdout (progress goes to stderr).
#
# Environment: BENCH_REPS (default 6, even so each server goes first equally often)
# repetitions of each 1 GiB upload and download; BENCH_SIZE_MIB (default 1024) size of
# the big file; BENCH_WARM=0 skips the memory warm-up (see below); BENCH_RAW=FILE keeps
# the raw measurements; CARGO_TARGET_DIR as usual.
set -euo pipefail

COMMAND="bash benches/run.sh${*:+ $*}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REPS="${BENCH_REPS:-6}"
SIZE_MIB="${BENCH_SIZE_MIB:-1024}"
SIZE=$((SIZE_MIB * 1024 * 1024))
GIB=1073741824
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- tools -------------------------------------------------------------------------
log "building lanvan (release) into $CARGO_TARGET_DIR"
cargo build --release --quiet >&2
BIN="$CARGO_TARGET_DIR/release/lanvan"
[ -x "$BIN" ] || die "no binary at $BIN"

if ! command -v miniserve >/dev/null 2>&1; then
    log "installing miniserve (cargo install miniserve --locked; one time, a few minutes)"
    cargo install miniserve --locked >&2
fi
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    if ! apt-get install -y wrk >&2; then
        apt-get update >&2
        apt-get install -y wrk >&2
    fi
fi
for t in curl python3 ss getconf; do
    command -v "$t" >/dev/null 2>&1 || die "$t is needed"
done
HZ="$(getconf CLK_TCK)"

# --- workspace and clean-up --------------------------------------------------------
WORK="/dev/shm/lanvan-bench-$$"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$WORK/lanvan-data" "$WORK/miniserve-data"
RESULTS="$WORK/results.txt"
: >"$RESULTS"
rec() { echo "$*" >>"$RESULTS"; }

# --- helpers -----------------------------------------------------------------------
# utime+stime of a whole process (all its threads), in clock ticks.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# stime alone: the part spent in the kernel (copies, TCP, tmpfs).
sys_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $13}'; }
# A field of /proc/PID/status in kB (VmRSS, VmHWM) or a count (Threads).
status_field() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
wait_listen() { # PORT PID NAME LOG
    local i
    for i in $(seq 300); do
        kill -0 "$2" 2>/dev/null || { cat "$4" >&2; die "$3 exited at start"; }
        listening "$1" && return 0
        sleep 0.02
    done
    cat "$4" >&2
    die "$3 did not listen on port $1 within 6 s"
}
mbps() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.1f", b / 1e6 / s}'; }
cpu_per_gib() { awk -v t="$1" -v hz="$HZ" -v b="$2" -v g="$GIB" 'BEGIN {printf "%.4f", t / hz / (b / g)}'; }

read -r LPORT MPORT < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')

# --- test files (before the servers start, so their idle memory is not disturbed) --
log "making a ${SIZE_MIB} MiB random test file on tmpfs"
head -c "$SIZE" /dev/urandom >"$WORK/big.bin"
head -c 4096 /dev/urandom >"$WORK/small.bin"

# --- start both servers ------------------------------------------------------------
log "starting lanvan on 127.0.0.1:$LPORT and miniserve on 127.0.0.1:$MPORT"
"$BIN" serve --listen "127.0.0.1:$LPORT" --data-dir "$WORK/lanvan-data" 2>"$WORK/lanvan.log" &
LPID=$!
PIDS+=("$LPID")
MINI_UPLOAD=(--upload-files)
# Newer miniserve versions take an optional directory after -u; "/" allows the whole root.
if miniserve --help 2>&1 | grep -q -- '--upload-files \[<ALLOWED_UPLOAD_DIR>'; then
    MINI_UPLOAD=(--upload-files=/)
fi
# Newer versions first write an upload to a temporary folder (by default the system's,
# here on disk) and then move it: keep that on the same tmpfs too.
if miniserve --help 2>&1 | grep -q -- '--temp-directory'; then
    mkdir -p "$WORK/miniserve-tmp"
    MINI_UPLOAD+=(--temp-directory "$WORK/miniserve-tmp")
fi
miniserve "${MINI_UPLOAD[@]}" --port "$MPORT" --interfaces 127.0.0.1 "$WORK/miniserve-data" \
    >"$WORK/miniserve.log" 2>&1 &
MPID=$!
PIDS+=("$MPID")

for i in $(seq 300); do
    grep -q "listening on" "$WORK/lanvan.log" && break
    kill -0 "$LPID" 2>/dev/null || { cat "$WORK/lanvan.log" >&2; die "lanvan exited at start"; }
    sleep 0.02
done
wait_listen "$LPORT" "$LPID" lanvan "$WORK/lanvan.log"
rec "lanvan.rss_start_kib $(status_field "$LPID" VmRSS)"
wait_listen "$MPORT" "$MPID" miniserve "$WORK/miniserve.log"
rec "miniserve.rss_start_kib $(status_field "$MPID" VmRSS)"
log "both listening; idling 5 s"
sleep 5
for s in lanvan:$LPID miniserve:$MPID; do
    rec "${s%%:*}.rss_idle_kib $(status_field "${s#*:}" VmRSS)"
    rec "${s%%:*}.threads $(status_field "${s#*:}" Threads)"
done

# --- the 4 KiB file on both ---------------------------------------------------------
python3 benches/upload_client.py --port "$LPORT" --file "$WORK/small.bin" --name small.bin >/dev/null
code=$(curl -sS -o /dev/null -w '%{http_code}' -F "path=@$WORK/small.bin;filename=small.bin" \
    "http://127.0.0.1:$MPORT/upload?path=/")
case "$code" in 2??|3??) ;; *) die "miniserve upload of small.bin answered $code" ;; esac
cmp -s "$WORK/small.bin" "$WORK/lanvan-data/files/small.bin" || die "lanvan stored small.bin wrongly"
cmp -s "$WORK/small.bin" "$WORK/miniserve-data/small.bin" || die "miniserve stored small.bin wrongly"

# --- 1 GiB uploads and downloads ---------------------------------------------------
upload_lanvan() { # NAME
    local t0 t1 s0 s1 out secs ccpu fin
    t0=$(cpu_ticks "$LPID"); s0=$(sys_ticks "$LPID")
    out=$(python3 benches/upload_client.py --port "$LPORT" --file "$WORK/big.bin" --name "$1")
    t1=$(cpu_ticks "$LPID"); s1=$(sys_ticks "$LPID")
    read -r secs ccpu fin < <(python3 -c 'import json,sys; d = json.loads(sys.argv[1]); print(d["seconds"], d["client_cpu"], d["finish_seconds"])' "$out")
    rec "lanvan.upload_mbps $(mbps "$SIZE" "$secs")"
    rec "lanvan.upload_cpu $(cpu_per_gib $((t1 - t0)) "$SIZE")"
    rec "lanvan.upload_cpu_sys $(cpu_per_gib $((s1 - s0)) "$SIZE")"
    rec "lanvan.upload_client_cpu $(awk -v c="$ccpu" -v b="$SIZE" -v g="$GIB" 'BEGIN {printf "%.4f", c / (b / g)}')"
    cmp -s "$WORK/big.bin" "$WORK/lanvan-data/files/$1" || die "lanvan stored $1 wrongly"
    log "  lanvan upload: $(mbps "$SIZE" "$secs") MB/s, server CPU $(cpu_per_gib $((t1 - t0)) "$SIZE") s/GiB, client CPU $(printf "%.2f" "$ccpu") s, finish call $(printf "%.3f" "$fin") s"
}
upload_miniserve() { # NAME
    local t0 t1 s0 s1 out code secs
    t0=$(cpu_ticks "$MPID"); s0=$(sys_ticks "$MPID")
    out=$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' \
        -F "path=@$WORK/big.bin;filename=$1" "http://127.0.0.1:$MPORT/upload?path=/")
    t1=$(cpu_ticks "$MPID"); s1=$(sys_ticks "$MPID")
    read -r code secs <<<"$out"
    case "$code" in 2??|3??) ;; *) die "miniserve upload of $1 answered $code" ;; esac
    rec "miniserve.upload_mbps $(mbps "$SIZE" "$secs")"
    rec "miniserve.upload_cpu $(cpu_per_gib $((t1 - t0)) "$SIZE")"
    rec "miniserve.upload_cpu_sys $(cpu_per_gib $((s1 - s0)) "$SIZE")"
    cmp -s "$WORK/big.bin" "$WORK/miniserve-data/$1" || die "miniserve stored $1 wrongly"
    log "  miniserve upload: $(mbps "$SIZE" "$secs") MB/s, server CPU $(cpu_per_gib $((t1 - t0)) "$SIZE") s/GiB"
}
download() { # SERVER PID URL
    local t0 t1 s0 s1 out code bytes secs
    t0=$(cpu_ticks "$2"); s0=$(sys_ticks "$2")
    out=$(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$3")
    t1=$(cpu_ticks "$2"); s1=$(sys_ticks "$2")
    read -r code bytes secs <<<"$out"
    [ "$code" = 200 ] || die "$1 download answered $code"
    [ "$bytes" = "$SIZE" ] || die "$1 download gave $bytes bytes, not $SIZE"
    rec "$1.download_mbps $(mbps "$SIZE" "$secs")"
    rec "$1.download_cpu $(cpu_per_gib $((t1 - t0)) "$SIZE")"
    rec "$1.download_cpu_sys $(cpu_per_gib $((s1 - s0)) "$SIZE")"
    log "  $1 download: $(mbps "$SIZE" "$secs") MB/s, server CPU $(cpu_per_gib $((t1 - t0)) "$SIZE") s/GiB"
}

# This machine is a VM whose guest memory pages, once freed, are handed back to the host
# ("free page reporting") about 2 s later; touching such pages again costs host page
# faults that show up as CPU time of whichever process touches them. A 1 GiB upload into
# tmpfs needs 1 GiB of fresh pages, so without care the upload that happens to run on
# "returned" memory looks up to 3x more expensive. So right before every measured upload,
# write and delete a scratch file a bit larger than the upload: the upload then gets
# recently used, still-backed pages, the same for both servers. BENCH_WARM=0 turns it off.
warm_memory() {
    [ "${BENCH_WARM:-1}" = 1 ] || return 0
    head -c $((SIZE + 256 * 1024 * 1024)) /dev/zero >"$WORK/warm.tmp"
    rm -f "$WORK/warm.tmp"
}
bench_lanvan() { # NAME
    warm_memory
    upload_lanvan "$1"
    download lanvan "$LPID" "http://127.0.0.1:$LPORT/api/files/$1"
    curl -sS -f -o /dev/null -X DELETE "http://127.0.0.1:$LPORT/api/files/$1" || die "could not delete $1"
}
bench_miniserve() { # NAME
    warm_memory
    upload_miniserve "$1"
    download miniserve "$MPID" "http://127.0.0.1:$MPORT/$1"
    rm -f "$WORK/miniserve-data/$1"
}
for rep in $(seq "$REPS"); do
    log "repetition $rep of $REPS"
    # Fresh bytes every repetition, so the box can never answer "already stored".
    head -c 64 /dev/urandom | dd of="$WORK/big.bin" bs=64 count=1 conv=notrunc status=none
    name="big-$rep.bin"
    # Alternate who goes first, so slow phases of the (shared, noisy) machine hit both.
    if [ $((rep % 2)) = 1 ]; then
        bench_lanvan "$name"; bench_miniserve "$name"
    else
        bench_miniserve "$name"; bench_lanvan "$name"
    fi
done

# --- 4 KiB GETs with wrk -----------------------------------------------------------
run_wrk() { # SERVER PID URL
    local t0 t1 out rps p99 reqs
    curl -sS -f -o /dev/null "$3" || die "$1: GET $3 failed before wrk"
    t0=$(cpu_ticks "$2")
    out=$(wrk -t1 -c16 -d10s --latency "$3")
    t1=$(cpu_ticks "$2")
    echo "$out" >"$WORK/wrk-$1.txt"
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        log "  $1: wrk reported errors:"
        grep -E 'Non-2xx|Socket errors' <<<"$out" >&2
        rec "meta.wrk_errors_$1 $(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | tr '\n' ';')"
    fi
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    # "99%    1.23ms" (wrk prints us, ms or s).
    p99=$(awk '$1 == "99%" {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1;
        print v * f}' <<<"$out")
    [ -n "$rps" ] && [ -n "$p99" ] && [ -n "$reqs" ] || { echo "$out" >&2; die "could not read wrk's output"; }
    rec "$1.rps $rps"
    rec "$1.p99_ms $p99"
    rec "$1.us_per_req $(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.3f", t / hz / n * 1e6}')"
    log "  $1 wrk: $rps req/s, p99 $p99 ms"
}
log "wrk on the 4 KiB file"
run_wrk lanvan "$LPID" "http://127.0.0.1:$LPORT/api/files/small.bin"
run_wrk miniserve "$MPID" "http://127.0.0.1:$MPORT/small.bin"

# --- the end -----------------------------------------------------------------------
for s in lanvan:$LPID miniserve:$MPID; do
    kill -0 "${s#*:}" 2>/dev/null || die "${s%%:*} died during the run"
    rec "${s%%:*}.peak_kib $(status_field "${s#*:}" VmHWM)"
done
status_json=$(curl -sS "http://127.0.0.1:$LPORT/api/status")
rec "meta.date $(date -u '+%Y-%m-%d %H:%M UTC')"
rec "meta.arch $(uname -m)"
rec "meta.kernel $(uname -sr)"
rec "meta.cpu $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
rec "meta.cores $(nproc)"
rec "meta.mem $(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
rec "meta.workdir $WORK"
rec "meta.command $COMMAND"
rec "meta.reps $REPS"
rec "meta.size_mib $SIZE_MIB"
rec "meta.warm $([ "${BENCH_WARM:-1}" = 1 ] && echo "on (a scratch file of upload size + 256 MiB written and deleted on the tmpfs before each upload)" || echo off)"
rec "meta.lanvan $("$BIN" --version) (git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo '+dirty'))"
rec "meta.miniserve $(miniserve --version)"
rec "meta.miniserve_cmd miniserve ${MINI_UPLOAD[*]} --port $MPORT --interfaces 127.0.0.1 $WORK/miniserve-data"
rec "meta.lanvan_cmd $BIN serve --listen 127.0.0.1:$LPORT --data-dir $WORK/lanvan-data"
rec "meta.wrk $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
rec "meta.python $(python3 --version)"

warn=$(grep -ciE 'warn|error' "$WORK/lanvan.log" || true)
[ "$warn" = 0 ] || { log "lanvan logged $warn warning/error lines:"; grep -iE 'warn|error' "$WORK/lanvan.log" | head -20 >&2; }
log "lanvan /api/status at the end: $status_json"

echo "## LANVan vs miniserve"
echo
python3 benches/report.py "$RESULTS"
if [ -n "${BENCH_RAW:-}" ]; then
    cp "$RESULTS" "$BENCH_RAW"
    cp "$WORK/wrk-lanvan.txt" "$BENCH_RAW.wrk-lanvan"
    cp "$WORK/wrk-miniserve.txt" "$BENCH_RAW.wrk-miniserve"
fi
log "done"
