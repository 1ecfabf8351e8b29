#!/usr/bin/env bash
# The browser app's tests: playwright-core drives Debian's Chromium (headless) against the
# real box binary on loopback, plus the JS SHA-256 against NIST vectors and the box.
# Installs Chromium and the npm packages itself when they are missing. Screenshots go to
# test-artifacts/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"

if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq && apt-get install -y -qq chromium
fi
if ! command -v npm >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nodejs npm
fi
# node_modules is reinstalled whenever package-lock.json differs from the last install.
if ! cmp -s package-lock.json node_modules/.lanvan-installed-lock 2>/dev/null; then
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.lanvan-installed-lock
fi

cargo build --quiet --bin lanvan
export LANVAN_BIN="$CARGO_TARGET_DIR/debug/lanvan"
mkdir -p test-artifacts
node --test --test-concurrency=1 tests/browser/
echo "browser test artifacts (screenshots): $PWD/test-artifacts"
