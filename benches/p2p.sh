#!/usr/bin/env bash
# P2P in the browser, measured (see docs/benchmarks.md, "P2P"):
#
#   bash benches/p2p.sh            (BENCH_P2P_MIB=200 BENCH_P2P_REPS=3 by default)
#
# Builds the box in release mode and runs benches/p2p.mjs inside a network namespace of its
# own (scripts/netns-lan.sh): the box on 198.18.0.2, two headless Chromium pages (two
# contexts). It prints, for BENCH_P2P_REPS rounds: P2P setup time (Connect pressed -> data
# channel open), data-channel MB/s for a BENCH_P2P_MIB MiB file (accept -> download
# complete), the relay's MB/s for the same file between the same pages in the same run (the
# reference), and the fallback time when nftables cuts the direct path mid-transfer
# (detection -> relay accepted, and -> first chunk confirmed through the box).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"
export PATH="$HOME/.cargo/bin:$PATH"
command -v nft >/dev/null || { apt-get update -qq && apt-get install -y -qq nftables; }
bash scripts/need-browser.sh >&2
cargo build --release --quiet --bin lanvan >&2
export LANVAN_BIN="$CARGO_TARGET_DIR/release/lanvan"
echo "command: bash benches/p2p.sh${*:+ $*}  (BENCH_P2P_MIB=${BENCH_P2P_MIB:-200} BENCH_P2P_REPS=${BENCH_P2P_REPS:-3}), commit $(git rev-parse --short HEAD)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(/usr/bin/chromium --version 2>/dev/null | head -1)"
exec bash scripts/netns-lan.sh node benches/p2p.mjs
