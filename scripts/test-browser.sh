#!/usr/bin/env bash
# The browser app's tests: playwright-core drives Debian's Chromium (headless) against the
# real box binary on loopback, plus the JS SHA-256 against NIST vectors and the box.
# Installs Chromium and the npm packages itself when they are missing. Screenshots go to
# test-artifacts/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"

bash scripts/need-browser.sh

cargo build --quiet --bin lanvan
export LANVAN_BIN="$CARGO_TARGET_DIR/debug/lanvan"
mkdir -p test-artifacts
# The P2P, CLI and swarm tests need a network namespace of their own: scripts/test-p2p.sh
# and scripts/test-rtc.sh run them.
node --test --test-concurrency=1 $(ls tests/browser/*.test.mjs | grep -v -e '/p2p' -e '/cli\.test' -e '/cli-swarm\.test' -e '/swarm\.test')
echo "browser test artifacts (screenshots): $PWD/test-artifacts"
