#!/usr/bin/env bash
# P2P in the browser: two Chromium pages send files to each other over a WebRTC data
# channel, with the box (signaling, STUN, relay fallback) and Chromium all inside a network
# namespace this script creates (scripts/netns-lan.sh). nftables cuts the direct path in
# one test. Installs what it needs. With CI=true, a machine without namespaces fails the
# run instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"

need=()
command -v unshare >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
bash scripts/need-browser.sh

cargo build --quiet --bin lanvan
export LANVAN_BIN="$CARGO_TARGET_DIR/debug/lanvan"
mkdir -p test-artifacts
set +e
bash scripts/netns-lan.sh node --test --test-concurrency=1 "$@" tests/browser/p2p.test.mjs tests/browser/cli.test.mjs tests/browser/swarm.test.mjs
rc=$?
set -e
if [ $rc = 77 ]; then
    if [ "${CI:-}" = true ]; then
        echo "test-p2p: FAILED: CI needs network namespaces for the P2P tests" >&2
        exit 1
    fi
    echo "test-p2p: skipped: no network namespaces on this machine" >&2
    exit 0
fi
exit $rc
