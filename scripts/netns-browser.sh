#!/usr/bin/env bash
# Runs browser test files with node inside a network namespace (scripts/netns-lan.sh), for
# the scripts that need one (test-p2p.sh, test-rtc.sh): installs what it needs, builds the
# box. Usage: netns-browser.sh NAME "WHAT" NEED_NFT(yes|no) [node args and test files...].
# With CI=true, a machine without namespaces fails the run instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"
name=$1 what=$2 need_nft=$3
shift 3

need=()
command -v unshare >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
if [ "$need_nft" = yes ]; then command -v nft >/dev/null || need+=(nftables); fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
bash scripts/need-browser.sh

cargo build --quiet --bin lanvan
export LANVAN_BIN="$CARGO_TARGET_DIR/debug/lanvan"
mkdir -p test-artifacts
set +e
bash scripts/netns-lan.sh node --test --test-concurrency=1 "$@"
rc=$?
set -e
if [ $rc = 77 ]; then
    if [ "${CI:-}" = true ]; then
        echo "$name: FAILED: CI needs network namespaces for $what" >&2
        exit 1
    fi
    echo "$name: skipped: no network namespaces on this machine" >&2
    exit 0
fi
exit $rc
