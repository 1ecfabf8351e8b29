#!/usr/bin/env bash
# Builds a static `lanvan` for a board or phone, with the size-tuned `dist` profile:
#
#   cross/build.sh aarch64-unknown-linux-musl        # Pi 3/4/5/Zero 2 W (64-bit OS), Termux
#   cross/build.sh armv7-unknown-linux-musleabihf    # Pi 2/3/Zero 2 W (32-bit OS)
#   cross/build.sh x86_64-unknown-linux-musl         # PCs and x86 boards
#
# Links with `zig cc` through cargo-zigbuild, so C code (aws-lc under str0m) cross-compiles
# too, with no per-target gcc. Installs what it needs when missing: zig from PyPI's `ziglang`
# (in its own venv), cargo-zigbuild (cargo install), the target's standard library (rustup).
# When rustup has no standard library for the target, it builds one with nightly's
# -Zbuild-std instead, and says so. Prints the binary's path on stdout; the rest goes to stderr.
# LANVAN_FEATURES=debug-stall adds cargo features (the image boot test's build; the binary
# lands at the same path, so copy it away before the next build).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v file >/dev/null || { apt-get update -qq && apt-get install -y -qq file; } >&2

ZIG_VERSION=0.15.2          # PyPI `ziglang`
ZIGBUILD_VERSION=0.24.1     # crates.io `cargo-zigbuild`
TARGETS="aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf x86_64-unknown-linux-musl"

say() { echo "cross/build.sh: $*" >&2; }
die() { say "$*"; exit 1; }

target="${1:-}"
case " $TARGETS " in
    *" $target "*) ;;
    *) die "usage: cross/build.sh TARGET, where TARGET is one of: $TARGETS" ;;
esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"
tools="${LANVAN_CROSS_TOOLS:-$HOME/.cache/lanvan-cross}"
mkdir -p "$tools/bin"

# zig: a `zig` on PATH of the pinned version, else the pinned `ziglang` wheel in a venv of
# our own (no pip into the system Python, which Debian refuses anyway), exposed as `zig`.
if [ "$(zig version 2>/dev/null)" != "$ZIG_VERSION" ]; then
    if [ "$("$tools/venv/bin/python" -m ziglang version 2>/dev/null)" != "$ZIG_VERSION" ]; then
        say "installing zig $ZIG_VERSION from PyPI (ziglang) into $tools/venv"
        if ! python3 -m venv "$tools/venv" >&2; then
            apt-get update -qq >&2 && apt-get install -y -qq python3-venv python3-pip >&2
            python3 -m venv "$tools/venv" >&2
        fi
        "$tools/venv/bin/pip" install -q "ziglang==$ZIG_VERSION" >&2
    fi
    printf '#!/bin/sh\nexec "%s" -m ziglang "$@"\n' "$tools/venv/bin/python" >"$tools/bin/zig"
    chmod +x "$tools/bin/zig"
    export PATH="$tools/bin:$PATH"
fi

# cargo-zigbuild, pinned; its build gets its own target dir so it never touches ours.
if [ "$(cargo-zigbuild --version 2>/dev/null)" != "cargo-zigbuild $ZIGBUILD_VERSION" ]; then
    say "installing cargo-zigbuild $ZIGBUILD_VERSION"
    CARGO_TARGET_DIR="$tools/zigbuild-target" \
        cargo install --locked --quiet "cargo-zigbuild@$ZIGBUILD_VERSION" >&2
    rm -rf "$tools/zigbuild-target"
fi

# The target's standard library: from rustup if it has one, else built from source.
toolchain=()
build_std=()
if ! rustup target list --installed | grep -qx "$target"; then
    if ! err=$(rustup target add "$target" 2>&1); then
        say "rustup target add $target failed: $(grep -m1 -i -E 'error|status' <<<"$err")"
    fi
fi
if ! rustup target list --installed | grep -qx "$target"; then
    say "rustup has no prebuilt standard library for $target here:"
    say "building it from source with nightly (-Zbuild-std=std,panic_abort), linked against zig's musl"
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >&2
    rustup component list --installed --toolchain nightly | grep -qx rust-src ||
        rustup component add rust-src --toolchain nightly >&2
    toolchain=(+nightly)
    build_std=("-Zbuild-std=std,panic_abort")
fi

# Static-PIE for every target: the Play-Store Termux (Android 10+) runs only
# position-independent executables, and rustc makes static-PIE only for x86_64 musl (and
# says so with -static-pie, a flag zig ignores). `zig cc -static -pie` links musl's
# self-relocating start code (rcrt1.o), so rustc must not pass its own crt objects: no
# self-contained linking. That is also what the -Zbuild-std fallback needs, having none.
export RUSTFLAGS="${RUSTFLAGS:-} -Clink-self-contained=no -Clink-arg=-pie"

features=()
[ -z "${LANVAN_FEATURES:-}" ] || features=(--features "$LANVAN_FEATURES")
say "building $target (profile dist${LANVAN_FEATURES:+, features $LANVAN_FEATURES})"
cargo "${toolchain[@]}" zigbuild "${build_std[@]}" --locked --profile dist --target "$target" \
    "${features[@]}" --bin lanvan >&2

bin="$CARGO_TARGET_DIR/$target/dist/lanvan"
[ -x "$bin" ] || die "no binary at $bin"
kind=$(file -b "$bin")
case "$kind" in
    *"static-pie linked"*) link="static-pie" ;;
    *"statically linked"*) link="static" ;;
    *) die "$bin is not statically linked: $kind" ;;
esac
say "$target: $(stat -c %s "$bin") bytes, $link"
echo "$bin"
