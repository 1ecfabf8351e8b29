#!/usr/bin/env bash
# The box as a WebRTC peer, from real Chromium: a page connects to the box over `/ws`
# signaling and downloads a stored file over the `lanvan-chunks` data channel; `lanvan get`
# downloads from the box and a page at once (cli-swarm.test.mjs). Runs inside a
# network namespace (scripts/netns-lan.sh), since Chromium leaves loopback out of ICE.
# Installs what it needs. With CI=true, a machine without namespaces fails instead of skipping.
exec bash "$(dirname "$0")/netns-browser.sh" test-rtc "the box-peer browser test" no "$@" \
    tests/browser/p2p_box.test.mjs tests/browser/cli-swarm.test.mjs
