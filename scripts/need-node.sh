#!/usr/bin/env bash
# Node for tests/relay_js.rs (web/relay.js against the real box): Node itself, and the
# `ws` package when this Node has no WebSocket of its own (Debian 12's Node 18).
set -euo pipefail
if ! command -v node >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nodejs
fi
if ! node --experimental-websocket -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null \
    && ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null \
    && ! NODE_PATH=/usr/share/nodejs node -e 'require("ws")' 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq node-ws
fi
