#!/usr/bin/env bash
# P2P in the browser: two Chromium pages send files to each other over a WebRTC data
# channel, with the box (signaling, STUN, relay fallback) and Chromium all inside a network
# namespace this script creates (scripts/netns-lan.sh). nftables cuts the direct path in
# one test. Installs what it needs. With CI=true, a machine without namespaces fails the
# run instead of skipping it.
exec bash "$(dirname "$0")/netns-browser.sh" test-p2p "the P2P tests" yes "$@" \
    tests/browser/p2p.test.mjs tests/browser/cli.test.mjs tests/browser/swarm.test.mjs
