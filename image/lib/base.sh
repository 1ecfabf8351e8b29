#!/usr/bin/env bash
# Builds the base arm64 Debian bookworm tree the image is made from, with mmdebstrap under
# qemu-user: systemd, networkd + wpa_supplicant, raspi-firmware, dracut and the kernel.
# Writes only into DIR (its one argument) and the .deb cache; never adds LANVan or board
# settings (image/build.sh lays those on top, so editing them never re-runs this).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/lib/tools.sh"

out=${1:?usage: base.sh DIR}
debs=${LANVAN_IMAGE_CACHE:-$HOME/.cache/lanvan-image}/apt
mkdir -p "$debs"

# Debian's own mirrors only. non-free-firmware holds raspi-firmware (the Pi's boot blobs)
# and firmware-brcm80211 (the Wi-Fi chip of the Pi 3, 4, Zero 2 W and CM4). The Pi has no
# clock that runs while it is off: systemd-timesyncd sets it from the network when it can.
mirror=http://deb.debian.org/debian
packages=(
    systemd-sysv systemd-timesyncd udev dbus kmod iproute2 netbase
    wpasupplicant wireless-regdb firmware-brcm80211
    raspi-firmware dracut zstd fdisk e2fsprogs
)

# The kernel goes in last, in a customize hook, so the settings below are in place when its
# hooks run: dracut makes a generic initrd (any Pi, and qemu's virt board for the test), and
# raspi-firmware's hook copies kernel, initrd and device trees to /boot/firmware and writes
# cmdline.txt with the root partition by its MBR PARTUUID, same on an SD card and in qemu.
configure='
set -e
mkdir -p "$1/etc/dracut.conf.d"
cat >"$1/etc/dracut.conf.d/10-lanvan.conf" <<CONF
# A generic initrd: the image must boot on any Pi and on qemu virt (the boot test).
hostonly="no"
hostonly_cmdline="no"
# Level 3: the default -15 takes minutes under qemu-user and saves little.
compress="zstd -3 -q -T0"
# SD card (bcm2835 = the Pi 3 sdhost, sdhci-iproc = the Pi 4 and CM4 EMMC2), qemu virt disk.
add_drivers+=" mmc_block bcm2835 sdhci_iproc virtio_blk virtio_pci virtio_mmio "
omit_dracutmodules+=" nfs iscsi nbd fcoe fcoe-uefi multipath lvm dm mdraid crypt btrfs "
CONF
cat >>"$1/etc/default/raspi-firmware" <<CONF

# LANVan image: the root partition by the disk identifier the image is built with.
ROOTPART=PARTUUID=4c414e56-02
CONSOLES="ttyS1,115200 tty0"
CONF
'

need_arm64_binfmt
need_tools mmdebstrap
rm -rf "$out"
# Downloaded .debs are kept in $debs between runs: copied in before apt runs (so apt
# downloads only what is new) and copied back out before mmdebstrap empties the cache.
mmdebstrap --mode=root --arch=arm64 --variant=minbase \
    --components="main non-free-firmware" \
    --aptopt='APT::Install-Recommends "false"' \
    --aptopt='Acquire::Retries "3"' \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --skip=download/empty --skip=essential/unlink \
    --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\"; find '$debs' -name '*.deb' -exec cp -t \"\$1/var/cache/apt/archives/\" {} +" \
    --customize-hook="$configure" \
    --customize-hook='chroot "$1" apt-get install -y -q linux-image-arm64' \
    --customize-hook="find \"\$1/var/cache/apt/archives\" -name '*.deb' -exec cp -n -t '$debs' {} +" \
    bookworm "$out" \
    "deb $mirror bookworm main non-free-firmware" \
    "deb $mirror bookworm-updates main non-free-firmware" \
    "deb http://deb.debian.org/debian-security bookworm-security main non-free-firmware"
touch "$out/.lanvan-base-done"
