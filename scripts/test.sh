#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests and end-to-end tests
# against the real binary on loopback. Installs what the tests need on a clean machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"

# The disk-full test runs the box on its own tmpfs in a user+mount namespace (util-linux).
if ! command -v unshare >/dev/null; then
    apt-get update -qq && apt-get install -y -qq util-linux
fi
# The mDNS tests join two network namespaces with a veth pair (iproute2).
command -v ip >/dev/null || { apt-get update -qq && apt-get install -y -qq iproute2; }
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt || true

bash scripts/need-node.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
cargo test --manifest-path src/vendor/sctp-proto/Cargo.toml  # the patched sctp-proto's own tests (src/vendor/sctp-proto/README.md)

# The browser app in headless Chromium (installs Chromium and npm packages when missing).
bash scripts/test-browser.sh
# P2P between two Chromium pages, inside a network namespace (veth, nftables).
bash scripts/test-p2p.sh
# The box as a WebRTC peer, from Chromium, in a network namespace.
bash scripts/test-rtc.sh

# The appliance: static cross builds under qemu, and the systemd unit, installer and sandbox.
bash scripts/test-cross.sh
bash scripts/test-systemd.sh

# The SD-card image: unit verify, first-boot settings, assembling an image from a tiny fake
# root, and inject.sh on a synthetic Raspberry Pi OS image. The full build and boot under
# qemu (image/build.sh && image/test-boot.sh) takes about 15 minutes and is not run here.
bash image/test-cheap.sh
# The image boot test's stall route, built with its feature (a normal build's 404 is tested
# by `cargo test` above).
cargo test --features debug-stall --test debug_stall
