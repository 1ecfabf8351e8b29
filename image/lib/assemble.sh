#!/usr/bin/env bash
# Assembles an SD-card image from two folders, without loop devices or root mounts:
# a FAT32 boot partition (mkfs.vfat -C, mcopy), an ext4 root partition (mkfs.ext4 -d), an
# MBR written with sfdisk on the image file, and both copied in with dd conv=notrunc.
# The real build and the cheap CI test both go through here; it never reads anything else.
#
#   assemble.sh BOOT_DIR ROOT_DIR OUT.img
#
# Settings (environment): BOOT_MB (FAT size, default 256), ROOT_SPARE_MB (free space left
# in the root file system, default 256), DISK_ID (MBR disk identifier, default 0x4c414e56:
# partitions are then PARTUUID=4c414e56-01 and -02), BOOT_LABEL, ROOT_LABEL.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/lib/tools.sh"

boot_dir=${1:?usage: assemble.sh BOOT_DIR ROOT_DIR OUT.img}
root_dir=${2:?usage: assemble.sh BOOT_DIR ROOT_DIR OUT.img}
out=${3:?usage: assemble.sh BOOT_DIR ROOT_DIR OUT.img}
boot_mb=${BOOT_MB:-256}
spare_mb=${ROOT_SPARE_MB:-256}
disk_id=${DISK_ID:-0x4c414e56}
need_tools mkfs.vfat mcopy mkfs.ext4 sfdisk

# The first partition starts at 4 MiB, as on Raspberry Pi OS (erase-block aligned).
start_mb=4
# Root: the blocks the tree takes (small files fill whole blocks, as they will in ext4),
# an eighth more for ext4's own metadata (inode tables, journal), and the spare room. The
# first boot grows it to the whole card anyway.
used_mb=$(( $(du -s --block-size=1M "$root_dir" | cut -f1) ))
root_mb=$(( used_mb + used_mb / 8 + 16 + spare_mb ))
total_mb=$(( start_mb + boot_mb + root_mb ))

tmp=$(mktemp -d "${out}.parts.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# FAT32 with the volume id from the disk id, so it is the same on every build.
mkfs.vfat -C -F 32 -n "${BOOT_LABEL:-BOOT}" -i "${disk_id#0x}" "$tmp/boot.img" $(( boot_mb * 1024 )) >/dev/null
if [ -n "$(ls -A "$boot_dir")" ]; then
    # -s: folders too; -p: keep times; -Q: stop at the first error; -m: keep mtimes.
    mcopy -s -p -Q -m -i "$tmp/boot.img" "$boot_dir"/* ::/
fi

# -d copies owners, modes, links, device nodes and extended attributes from the tree.
# No -E root_owner: / gets the tree's own owner and mode.
mkfs.ext4 -q -F -L "${ROOT_LABEL:-lanvan-root}" -d "$root_dir" "$tmp/root.img" "${root_mb}M" >/dev/null

rm -f "$out"
truncate -s "${total_mb}M" "$out"
sfdisk --quiet "$out" <<TABLE
label: dos
label-id: $disk_id
unit: sectors

start=$(( start_mb * 2048 )), size=$(( boot_mb * 2048 )), type=c, bootable
start=$(( (start_mb + boot_mb) * 2048 )), size=$(( root_mb * 2048 )), type=83
TABLE
dd if="$tmp/boot.img" of="$out" bs=1M seek="$start_mb" conv=notrunc,sparse status=none
dd if="$tmp/root.img" of="$out" bs=1M seek=$(( start_mb + boot_mb )) conv=notrunc,sparse status=none
image_say "$out: ${total_mb} MiB (boot ${boot_mb} MiB at ${start_mb} MiB, root ${root_mb} MiB, ${used_mb} MiB used)"
