#!/usr/bin/env bash
# Builds the LANVan SD-card image for the Raspberry Pi 3, 4, Zero 2 W and CM4: arm64 Debian
# bookworm with the lanvan service enabled, systemd-networkd + wpa_supplicant, first-boot
# settings from lanvan.txt, and a root partition that grows to fill the card.
#
#   image/build.sh                # -> image/out/lanvan-arm64.img and lanvan-arm64.img.xz
#   image/build.sh --no-test-image --no-compress
#
# Also writes lanvan-arm64-test.img: the same image with a `debug-stall` build of the box,
# which image/test-boot.sh boots. Needs root (mmdebstrap --mode=root, the image's owners).
# Only Debian's mirrors are used, through apt; .debs are kept in ~/.cache/lanvan-image/apt.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
here="$repo/image"
. "$here/lib/tools.sh"

out="$here/out"
test_image=yes
compress=yes
binary=
base=
usage() { sed -n '2,11s/^# \{0,1\}//p' "$0"; echo "options: --out DIR, --binary FILE (skip cross/build.sh), --base DIR (a Debian tree made"
    echo "  by image/lib/base.sh, instead of the cached one), --no-test-image, --no-compress"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --binary) binary=$(realpath "$2"); shift 2 ;;
        --base) base=$(realpath "$2"); shift 2 ;;
        --no-test-image) test_image=no; shift ;;
        --no-compress) compress=no; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || image_die "run as root: the image's files must be owned by root"
cache=${LANVAN_IMAGE_CACHE:-$HOME/.cache/lanvan-image}
export LANVAN_IMAGE_CACHE=$cache
mkdir -p "$out" "$cache"
out=$(realpath "$out")
t0=$SECONDS
lap() { image_say "$1 took $(( SECONDS - ${2:-$t0} )) s"; }

# 1. The Debian tree, cached by the content of the script that makes it.
key=$(sha256sum <"$here/lib/base.sh" | cut -c1-12)
if [ -n "$base" ]; then
    [ -e "$base/.lanvan-base-done" ] || image_die "$base is not a finished tree from image/lib/base.sh"
    image_say "using the Debian tree $base"
elif base="$cache/base-$key" && [ ! -e "$base/.lanvan-base-done" ]; then
    image_say "building the Debian tree in $base (mmdebstrap under qemu-user; 10-30 min)"
    t=$SECONDS
    "$here/lib/base.sh" "$base.tmp"
    rm -rf "$base" && mv "$base.tmp" "$base"
    lap "the Debian tree" "$t"
else
    image_say "reusing the Debian tree $base"
fi

# 2. The box, static for aarch64: the release build, and the boot test's debug-stall build.
work="$cache/work"
rm -rf "$work" && mkdir -p "$work"
t=$SECONDS
if [ -n "$binary" ]; then
    cp "$binary" "$work/lanvan"
else
    if [ "$test_image" = yes ]; then
        b=$(LANVAN_FEATURES=debug-stall "$repo/cross/build.sh" aarch64-unknown-linux-musl)
        cp "$b" "$work/lanvan-debug-stall"
    fi
    b=$("$repo/cross/build.sh" aarch64-unknown-linux-musl)
    cp "$b" "$work/lanvan"
fi
[ "$test_image" = no ] || [ -e "$work/lanvan-debug-stall" ] ||
    image_die "--binary gives no debug-stall build for the test image: add --no-test-image"
# The way to stall the box must never reach the image people flash.
if grep -q 'debug-stall: blocking' "$work/lanvan"; then
    image_die "the release binary has the debug-stall route: it must be built without that feature"
fi
lap "the lanvan binaries" "$t"

# 3. The image's own files on top of the Debian tree, then the two partitions.
make_image() { # BINARY OUT.img
    local tree="$work/root" boot="$work/boot"
    rm -rf "$tree" "$boot" && mkdir -p "$boot"
    cp -a --reflink=auto "$base" "$tree"
    rm -f "$tree/.lanvan-base-done"
    cp -a "$here/rootfs/." "$tree/"
    "$repo/systemd/install.sh" --root "$tree" --binary "$1"

    echo lanvan >"$tree/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tlanvan\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$tree/etc/hosts"
    cat >"$tree/etc/fstab" <<'FSTAB'
# LANVan image: the partitions by the MBR disk identifier (same on the SD card and in qemu).
PARTUUID=4c414e56-02  /               ext4  rw,noatime,errors=remount-ro  0  1
PARTUUID=4c414e56-01  /boot/firmware  vfat  rw,noatime,fmask=0022,dmask=0022  0  0
FSTAB
    # Every card gets its own machine id on its first boot.
    : >"$tree/etc/machine-id"
    rm -f "$tree/var/lib/dbus/machine-id"
    # Enabled units, as `systemctl enable` would link them.
    local s="$tree/etc/systemd/system"
    mkdir -p "$s/sysinit.target.wants" "$s/multi-user.target.wants" "$s/sockets.target.wants" \
        "$s/network-online.target.wants" "$s/sys-subsystem-net-devices-wlan0.device.wants"
    ln -sfn /etc/systemd/system/lanvan-firstboot.service "$s/sysinit.target.wants/"
    ln -sfn /etc/systemd/system/lanvan-growroot.service "$s/sysinit.target.wants/"
    ln -sfn /lib/systemd/system/systemd-networkd.service "$s/multi-user.target.wants/"
    ln -sfn /lib/systemd/system/systemd-networkd.socket "$s/sockets.target.wants/"
    ln -sfn /lib/systemd/system/systemd-networkd-wait-online.service "$s/network-online.target.wants/"
    ln -sfn /lib/systemd/system/wpa_supplicant@.service \
        "$s/sys-subsystem-net-devices-wlan0.device.wants/wpa_supplicant@wlan0.service"
    # No questions on the console at first boot: an appliance has nobody typing there.
    ln -sfn /dev/null "$s/systemd-firstboot.service"

    # The FAT partition: firmware, kernel, initrd and device trees from raspi-firmware.
    cp -a "$tree/boot/firmware/." "$boot/"
    rm -rf "$tree/boot/firmware" && mkdir -m 0755 "$tree/boot/firmware"
    install -m 0644 "$here/lanvan.txt" "$boot/lanvan.txt"

    "$here/lib/assemble.sh" "$boot" "$tree" "$2"
    rm -rf "$tree" "$boot"
}
t=$SECONDS
make_image "$work/lanvan" "$out/lanvan-arm64.img"
lap "assembling lanvan-arm64.img" "$t"
if [ "$test_image" = yes ]; then
    t=$SECONDS
    make_image "$work/lanvan-debug-stall" "$out/lanvan-arm64-test.img"
    lap "assembling lanvan-arm64-test.img" "$t"
fi

# No stale compressed copy beside a new image.
[ "$compress" = yes ] || rm -f "$out/lanvan-arm64.img.xz"
if [ "$compress" = yes ]; then
    t=$SECONDS
    need_tools xz
    xz -T0 -3 -k -f "$out/lanvan-arm64.img"
    lap "xz" "$t"
fi
rm -rf "$work"
ls -l "$out" >&2
lap "image/build.sh"
