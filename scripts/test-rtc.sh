#!/usr/bin/env bash
# The box as a WebRTC peer, from real Chromium: a page connects to the box over `/ws`
# signaling and downloads a stored file over the `lanvan-chunks` data channel. Runs inside a
# network namespace (scripts/netns-lan.sh), since Chromium leaves loopback out of ICE.
# Installs what it needs. With CI=true, a machine without namespaces fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"

need=()
command -v unshare >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
bash scripts/need-browser.sh

cargo build --quiet --bin lanvan
export LANVAN_BIN="$CARGO_TARGET_DIR/debug/lanvan"
set +e
bash scripts/netns-lan.sh node --test --test-concurrency=1 "$@" tests/browser/p2p_box.test.mjs
rc=$?
set -e
if [ $rc = 77 ]; then
    if [ "${CI:-}" = true ]; then
        echo "test-rtc: FAILED: CI needs network namespaces for the box-peer browser test" >&2
        exit 1
    fi
    echo "test-rtc: skipped: no network namespaces on this machine" >&2
    exit 0
fi
exit $rc
