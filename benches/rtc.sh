#!/usr/bin/env bash
# WebRTC data channels, measured (see docs/benchmarks.md, "WebRTC data channels (issue 8)"):
#
#   bash benches/rtc.sh          (BENCH_RTC_MIB=100 BENCH_RTC_REPS=3 by default)
#
# 1. In process, no network: benches/rtc_inproc.rs (two str0m peers, virtual clock) with
#    and without the sctp-proto patch: the sender's and receiver's ms per MiB.
# 2. Against headless Chromium inside a network namespace of its own (scripts/netns-lan.sh):
#    the box's str0m peer (benches/rtc_peer.rs) sends to and receives from a page, MB/s and
#    its CPU ms per MiB from /proc, with and without the patch, alternating, in one run;
#    then the real box (both builds) as a chunk source for a page (SPEC8 §3-4), box CPU
#    from /proc; it says "Not measured" and why when the box cannot serve chunks yet.
# 3. Multi-source against single-source (benches/swarm.mjs): the release box and Chromium
#    pages, the app's Download from the box alone and from the box plus another page, and
#    plain HTTP as a reference, alternating, in one run (BENCH_SWARM_MIB=64 by default).
#    `BENCH_RTC_ONLY=multi bash benches/rtc.sh` runs this part alone (no unpatched build).
# benches/rtc.mjs alone, for quick rounds or other builds (see docs/benchmarks.md):
# BENCH_RTC_VARIANTS=after (one build), BENCH_RTC_BOX=0 / BENCH_RTC_PEER=0 (skip a part),
# BENCH_RTC_LABELS="before=...,after=..." (name builds that differ by more than the patch).
# 4. `lanvan get` from the box plus a page against the box alone (benches/cli-swarm.mjs):
#    `BENCH_RTC_ONLY=cli bash benches/rtc.sh` (release box and CLI, BENCH_SWARM_MIB=64).
# "Without" is built from a temporary copy of this tree minus the [patch.crates-io] stanza,
# in its own target dir (${CARGO_TARGET_DIR}-unpatched, seeded from this one's release dir).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"
export PATH="$HOME/.cargo/bin:$PATH"
log() { printf '[rtc-bench %s] %s\n' "$(date +%T)" "$*" >&2; }
bash scripts/need-browser.sh >&2

if [ "${BENCH_RTC_ONLY:-}" = multi ]; then
    log "building the box (release) into $CARGO_TARGET_DIR"
    cargo build --release --quiet --bin lanvan >&2
    echo "command: BENCH_RTC_ONLY=multi bash benches/rtc.sh  (BENCH_SWARM_MIB=${BENCH_SWARM_MIB:-64} BENCH_RTC_REPS=${BENCH_RTC_REPS:-3}), commit $(git rev-parse --short HEAD)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(/usr/bin/chromium --version 2>/dev/null | head -1)"
    LANVAN_BIN="$CARGO_TARGET_DIR/release/lanvan" bash scripts/netns-lan.sh node benches/swarm.mjs
    exit 0
fi

if [ "${BENCH_RTC_ONLY:-}" = cli ]; then
    log "building the box and CLI (release) into $CARGO_TARGET_DIR"
    cargo build --release --quiet --bin lanvan >&2
    echo "command: BENCH_RTC_ONLY=cli bash benches/rtc.sh  (BENCH_SWARM_MIB=${BENCH_SWARM_MIB:-64} BENCH_RTC_REPS=${BENCH_RTC_REPS:-3}), commit $(git rev-parse --short HEAD), load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(/usr/bin/chromium --version 2>/dev/null | head -1)"
    LANVAN_BIN="$CARGO_TARGET_DIR/release/lanvan" bash scripts/netns-lan.sh node benches/cli-swarm.mjs
    exit 0
fi

log "building the patched peer and benchmark (release) into $CARGO_TARGET_DIR"
cargo build --release --quiet --bin lanvan --example rtc_peer --example rtc_bench >&2
WORK="$(mktemp -d /tmp/lanvan-rtc-bench-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/after" "$WORK/before" "$WORK/tree"
cp "$CARGO_TARGET_DIR/release/lanvan" "$CARGO_TARGET_DIR/release/examples/rtc_peer" "$CARGO_TARGET_DIR/release/examples/rtc_bench" "$WORK/after/"

log "building the same tree without [patch.crates-io] (sctp-proto 0.10.8 as published)"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$WORK/tree"
sed -i '/^\[patch\.crates-io\]$/d; /^sctp-proto = { path = "src\/vendor\/sctp-proto" }$/d' "$WORK/tree/Cargo.toml"
if grep -q '^\[patch\.crates-io\]\|path = "src/vendor/sctp-proto"' "$WORK/tree/Cargo.toml"; then
    log "ERROR: could not remove the patch stanza"; exit 1
fi
UNPATCHED="${CARGO_TARGET_DIR}-unpatched"
if [ ! -d "$UNPATCHED/release" ]; then
    mkdir -p "$UNPATCHED" && cp -a "$CARGO_TARGET_DIR/release" "$UNPATCHED/"
fi
(cd "$WORK/tree" && CARGO_TARGET_DIR="$UNPATCHED" cargo build --release --quiet --bin lanvan --example rtc_peer --example rtc_bench >&2)
grep -A2 '^name = "sctp-proto"' "$WORK/tree/Cargo.lock" | grep -q 'source = "registry' \
    || { log "ERROR: the unpatched build did not use sctp-proto from crates.io"; exit 1; }
cp "$UNPATCHED/release/lanvan" "$UNPATCHED/release/examples/rtc_peer" "$UNPATCHED/release/examples/rtc_bench" "$WORK/before/"

echo "command: bash benches/rtc.sh${*:+ $*}  (BENCH_RTC_MIB=${BENCH_RTC_MIB:-100} BENCH_RTC_REPS=${BENCH_RTC_REPS:-3}), commit $(git rev-parse --short HEAD)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(/usr/bin/chromium --version 2>/dev/null | head -1)"

echo
echo "In process (benches/rtc_inproc.rs: 64 MiB, 1 MiB send buffer, 250 us one-way, virtual clock; wall ms inside each side's calls):"
echo
echo "| sctp-proto | sender ms/MiB | receiver ms/MiB | MB/s (both sides on one core) |"
echo "|---|---|---|---|"
for v in before after; do
    j="$("$WORK/$v/rtc_bench" --mib 64)"
    label=$([ $v = before ] && echo "0.10.8 as published" || echo "0.10.8 + patches")
    python3 -c 'import json,sys; j=json.loads(sys.argv[1]); assert j["forward_tsn"]; print("| %s | %.1f | %.1f | %.1f |" % (sys.argv[2], j["sender_ms_per_mib"], j["receiver_ms_per_mib"], j["mb_per_s"]))' "$j" "$label"
done

RTC_PEER_BEFORE="$WORK/before/rtc_peer" RTC_PEER_AFTER="$WORK/after/rtc_peer" \
    LANVAN_BIN_BEFORE="$WORK/before/lanvan" LANVAN_BIN_AFTER="$WORK/after/lanvan" \
    bash scripts/netns-lan.sh node benches/rtc.mjs

LANVAN_BIN="$WORK/after/lanvan" bash scripts/netns-lan.sh node benches/swarm.mjs
