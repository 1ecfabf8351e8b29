#!/usr/bin/env bash
# What the browser tests need: Debian's Chromium, Node with npm, and the npm packages of
# package-lock.json (playwright-core). Installs what is missing; run from the repository root.
set -euo pipefail
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
