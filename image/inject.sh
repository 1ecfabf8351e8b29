#!/usr/bin/env bash
# Adds LANVan to an official Raspberry Pi OS Lite image you downloaded yourself, for boards
# Debian's own kernel does not run (the Pi 5): the binary, the lanvan service (enabled) and
# /etc/lanvan/lanvan.toml go into the root partition with `debugfs -w` at its offset,
# and a note (lanvan-readme.txt) onto the FAT partition with mcopy. No loop devices, no
# mounts, no root needed for a file you own. Writes a new image; the one you downloaded is left as it is.
#
#   image/inject.sh 2025-05-13-raspios-bookworm-arm64-lite.img.xz      # -> ...-lanvan.img
#   image/inject.sh raspios.img -o lanvan-pi5.img --binary path/to/lanvan
#
# Without --binary it builds one with cross/build.sh: aarch64 for a 64-bit Raspberry Pi OS,
# armv7 for a 32-bit one. Running it again on its own output upgrades LANVan in place.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
here="$repo/image"
. "$here/lib/tools.sh"

src=
out=
binary=
usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; }
while [ $# -gt 0 ]; do
    case "$1" in
        -o | --out) out=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
        *) [ -z "$src" ] || { usage >&2; exit 2; }; src=$1; shift ;;
    esac
done
[ -n "$src" ] || { usage >&2; exit 2; }
[ -f "$src" ] || image_die "$src: no such file"
need_tools debugfs sfdisk mcopy mdir python3
if [ -z "$out" ]; then
    out=$(basename "$src"); out=${out%.xz}; out=${out%.img}-lanvan.img
fi

# 1. The new image: a sparse copy (or the .xz unpacked), never the downloaded file itself.
if [ "$(realpath -m "$src")" != "$(realpath -m "$out")" ]; then
    case "$src" in
        *.xz) need_tools xz; xz -dc "$src" | cp --sparse=always /dev/stdin "$out.tmp" ;;
        *) cp --sparse=always "$src" "$out.tmp" ;;
    esac
    mv "$out.tmp" "$out"
fi

# 2. Its layout: an MBR with a FAT boot partition first and the ext4 root second.
table=$(sfdisk -J "$out" 2>/dev/null) || image_die "$src has no partition table: is it a Raspberry Pi OS image?"
read -r boot_start boot_type root_start root_type < <(python3 -c '
import json, sys
t = json.loads(sys.argv[1])["partitiontable"]
p = t.get("partitions", [])
if t.get("label") != "dos" or len(p) < 2: print("x x x x")
else: print(p[0]["start"], p[0]["type"], p[1]["start"], p[1]["type"])' "$table")
[ "$boot_type" = c ] || [ "$boot_type" = b ] ||
    image_die "$src: the first partition is not FAT (type $boot_type); expected Raspberry Pi OS's layout"
[ "$root_type" = 83 ] || image_die "$src: the second partition is not Linux (type $root_type)"
root="$out?offset=$(( root_start * 512 ))"
boot="$out@@$(( boot_start * 512 ))"
debugfs -R stats "$root" 2>/dev/null | grep >/dev/null '^Filesystem magic number: *0xEF53' ||
    image_die "$src: the second partition is not ext4"
mdir -i "$boot" ::config.txt >/dev/null 2>&1 || image_die "$src: no config.txt on the FAT partition"

# 3. The binary for the image's userland.
if debugfs -R "stat /usr/lib/aarch64-linux-gnu" "$root" 2>/dev/null | grep >/dev/null 'Type: directory'; then
    target=aarch64-unknown-linux-musl machine=183   # ELF e_machine: EM_AARCH64
else
    target=armv7-unknown-linux-musleabihf machine=40  # EM_ARM
fi
[ -n "$binary" ] || binary=$("$repo/cross/build.sh" "$target")
[ "$(head -c 4 "$binary")" = $'\x7fELF' ] || image_die "$binary is not a program (ELF)"
[ "$(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ')" = "$machine" ] ||
    image_die "$binary is not built for the image's architecture ($target)"

# 4. Into the root partition: the same files systemd/install.sh installs. debugfs always
# exits 0, so every file is checked afterwards.
cmds=$(mktemp)
trap 'rm -f "$cmds"' EXIT
put() { # SRC DEST MODE
    cat >>"$cmds" <<CMDS
rm $2
write $1 $2
sif $2 mode 0100$3
sif $2 uid 0
sif $2 gid 0
CMDS
}
# Folders only where missing: debugfs 1.47's mkdir over an existing name leaves a stray inode.
for d in /usr/local/bin /etc/lanvan /etc/systemd/system/multi-user.target.wants; do
    debugfs -R "stat $d" "$root" 2>/dev/null | grep >/dev/null 'Type: directory' || echo "mkdir $d" >>"$cmds"
done
put "$(realpath "$binary")" /usr/local/bin/lanvan 755
put "$repo/systemd/lanvan.service" /etc/systemd/system/lanvan.service 644
# A lanvan.toml already there (an upgrade) is kept, as install.sh does.
if ! debugfs -R "stat /etc/lanvan/lanvan.toml" "$root" 2>/dev/null | grep >/dev/null 'Type: regular'; then
    put "$repo/systemd/lanvan.toml" /etc/lanvan/lanvan.toml 644
fi
cat >>"$cmds" <<'CMDS'
rm /etc/systemd/system/multi-user.target.wants/lanvan.service
symlink /etc/systemd/system/multi-user.target.wants/lanvan.service /etc/systemd/system/lanvan.service
CMDS
debugfs -w -f "$cmds" "$root" >/dev/null 2>&1

got=$(debugfs -R "dump /usr/local/bin/lanvan /dev/stdout" "$root" 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$(sha256sum "$binary" | cut -d' ' -f1)" ] || image_die "the binary in the image does not match $binary"
debugfs -R "stat /usr/local/bin/lanvan" "$root" 2>/dev/null | grep >/dev/null 'Mode: *0755' || image_die "lanvan is not 0755"
link=$(debugfs -R "stat /etc/systemd/system/multi-user.target.wants/lanvan.service" "$root" 2>/dev/null |
    sed -n 's/^Fast link dest: "\(.*\)"/\1/p')
[ "$link" = /etc/systemd/system/lanvan.service ] || image_die "lanvan.service is not enabled (link: '$link')"

# 5. Onto the FAT partition: a note for whoever opens it on a computer.
note=$(mktemp)
trap 'rm -f "$cmds" "$note"' EXIT
cat >"$note" <<'NOTE'
LANVan is installed on this card. It starts by itself and serves on port 80:
open http://lanvan.local/ (or the box's address) in a browser on the same network.

This is Raspberry Pi OS: set the user, host name and Wi-Fi with Raspberry Pi Imager's
"OS customisation" when you write the card, or with raspi-config afterwards.
LANVan's own settings are in /etc/lanvan/lanvan.toml (sudo systemctl restart lanvan).
NOTE
sed -i 's/$/\r/' "$note"
mcopy -o -i "$boot" "$note" ::lanvan-readme.txt
image_say "$out: LANVan ($target, $(stat -c %s "$binary") bytes) added and enabled"
echo "$out"
