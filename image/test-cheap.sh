#!/usr/bin/env bash
# The image checks cheap enough for every CI run (well under a minute, no emulation):
#  1. systemd-analyze verify of the units that go into the image;
#  2. lanvan-firstboot applied to a scratch tree: a CRLF lanvan.txt, hostname, Wi-Fi 0600,
#     the password erased, a rerun changing nothing, bad values refused;
#  3. an image assembled from a tiny fake root tree by the same code as the real build
#     (image/lib/assemble.sh), then read back: partition table, FAT files, ext4 files;
#  4. image/inject.sh on a synthetic Raspberry Pi OS-like image built here.
# The full build and boot under qemu is `image/build.sh && image/test-boot.sh` (not in CI).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
here="$repo/image"
. "$here/lib/tools.sh"
need_tools mkfs.vfat mcopy mkfs.ext4 sfdisk debugfs e2fsck systemd-analyze wpa_passphrase python3 xz
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"

work=$(mktemp -d /tmp/lanvan-image-test.XXXXXX)
trap '[ "${KEEP:-0}" = 1 ] || rm -rf "$work"' EXIT
t0=$SECONDS
fail() { echo "test-cheap: FAIL: $*" >&2; exit 1; }
ok() { echo "test-cheap: ok ($(( SECONDS - t0 )) s): $*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
table() { sfdisk -J "$1" | python3 -c "import json,sys; t=json.load(sys.stdin)['partitiontable']; print($2)"; }

# --- 1. systemd-analyze verify ------------------------------------------------------------
# A scratch root with the image's units, its scripts, a stand-in program at the unit's
# ExecStart path, and this machine's systemd units (the targets ours name; Debian 12 too).
v="$work/verify"
mkdir -p "$v/usr/local/bin" "$v/usr/lib/systemd"
cp -a "$here/rootfs/." "$v/"
cp "$repo/systemd/lanvan.service" "$v/etc/systemd/system/"
install -m 0755 /bin/true "$v/usr/local/bin/lanvan"
cp -a /usr/lib/systemd/system "$v/usr/lib/systemd/"
units=(lanvan.service lanvan-firstboot.service lanvan-growroot.service)
if ! systemd-analyze verify --man=no --root="$v" "${units[@]}" >"$work/verify.log" 2>&1 || [ -s "$work/verify.log" ]; then
    cat "$work/verify.log" >&2
    fail "systemd-analyze verify"
fi
# The check is real: without its script, the first-boot unit fails it.
mv "$v/usr/local/sbin/lanvan-firstboot" "$work/"
systemd-analyze verify --man=no --root="$v" lanvan-firstboot.service >/dev/null 2>&1 &&
    fail "verify passed without /usr/local/sbin/lanvan-firstboot"
ok "systemd-analyze verify: ${units[*]}"

# --- 2. lanvan-firstboot on a scratch tree --------------------------------------------------
f="$work/firstboot"
mkdir -p "$f/boot/firmware" "$f/etc"
echo lanvan >"$f/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tlanvan\n' >"$f/etc/hosts"
# As an older Notepad saves it: a UTF-8 byte order mark, CRLF.
printf '\xEF\xBB\xBF%s\r\n' "hostname = kitchen-box " >"$f/boot/firmware/lanvan.txt"
printf '%s\r\n' 'wifi_ssid="Cafe "5G" "' "wifi_password=p@ss word=with=equals" "wifi_country=de" \
    >>"$f/boot/firmware/lanvan.txt"
first() { LANVAN_ROOT="$f" sh "$here/rootfs/usr/local/sbin/lanvan-firstboot" >"$work/fb.log" 2>&1; }
first || { cat "$work/fb.log" >&2; fail "lanvan-firstboot failed"; }
[ "$(cat "$f/etc/hostname")" = kitchen-box ] || fail "hostname: $(cat "$f/etc/hostname")"
grep -qx $'127.0.1.1\tkitchen-box' "$f/etc/hosts" || fail "/etc/hosts: $(cat "$f/etc/hosts")"
grep -q lanvan "$f/etc/hosts" && fail "the old name is still in /etc/hosts"
conf="$f/etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
[ "$(stat -c %a "$conf")" = 600 ] || fail "the Wi-Fi config has mode $(stat -c %a "$conf")"
grep -qx 'country=DE' "$conf" || fail "no country=DE: $(cat "$conf")"
# The name is `Cafe "5G" ` (quotes inside and a blank at the end, kept by the outer quotes).
grep -qx $'\tssid=43616665202235472220' "$conf" || fail "ssid: $(cat "$conf")"
# The WPA key, derived independently: PBKDF2-HMAC-SHA1(password, ssid, 4096 rounds, 32 bytes).
want=$(python3 -c 'import hashlib,sys; print(hashlib.pbkdf2_hmac("sha1", sys.argv[1].encode(), sys.argv[2].encode(), 4096, 32).hex())' \
    'p@ss word=with=equals' 'Cafe "5G" ')
grep -qx "[[:space:]]*psk=$want" "$conf" || fail "psk is not the one derived from ssid and password: $(cat "$conf")"
grep -q 'p@ss' "$conf" && fail "the password is in the clear in the Wi-Fi config"
grep -q 'p@ss' "$f/boot/firmware/lanvan.txt" && fail "the password was not erased from lanvan.txt"
grep -c $'\r$' "$f/boot/firmware/lanvan.txt" | grep >/dev/null -x 4 || fail "lanvan.txt lost its CRLF line endings"
grep -q $'^wifi_country=de\r$' "$f/boot/firmware/lanvan.txt" || fail "lanvan.txt lost other lines"
# Again, with the password erased: nothing changes.
before=$(sha "$conf")
touch -d '2020-01-01' "$conf"
first || fail "second run failed"
[ "$(sha "$conf")" = "$before" ] && [ "$(stat -c %Y "$conf")" = "$(date -d 2020-01-01 +%s)" ] ||
    fail "a second boot rewrote the Wi-Fi config"
# Bad values are refused with a message, and change nothing.
printf '%s\n' "hostname=bad_name!" "wifi_ssid=Other" "wifi_password=short" >"$f/boot/firmware/lanvan.txt"
first || fail "lanvan-firstboot failed on bad values"
grep -q "hostname=bad_name! ignored" "$work/fb.log" || fail "no message for a bad host name: $(cat "$work/fb.log")"
grep -q "8 to 63 characters" "$work/fb.log" || fail "no message for a short password: $(cat "$work/fb.log")"
[ "$(cat "$f/etc/hostname")" = kitchen-box ] || fail "a bad host name was written"
[ "$(sha "$conf")" = "$before" ] || fail "a bad password replaced the Wi-Fi config"
[ ! -e "$conf.new" ] || fail "a half-written Wi-Fi config was left behind"
ok "lanvan-firstboot: CRLF lanvan.txt applied, Wi-Fi config 0600 with the derived key, password erased, rerun and bad values change nothing"

# --- 3. assembling an image from a tiny fake root -----------------------------------------
b="$work/boot" r="$work/root"
mkdir -p "$b/overlays" "$r/etc/lanvan" "$r/usr/local/bin" "$r/boot/firmware" "$r/home/pi"
echo "arm_64bit=1" >"$b/config.txt"
printf 'console=tty0 root=PARTUUID=4c414e56-02 rw\n' >"$b/cmdline.txt"
head -c 300000 /dev/urandom >"$b/overlays/disable-bt.dtbo"
cp "$here/lanvan.txt" "$b/lanvan.txt"
head -c 1000000 /dev/urandom >"$r/usr/local/bin/lanvan"
chmod 0755 "$r/usr/local/bin/lanvan"
echo secret >"$r/etc/lanvan/key" && chmod 0600 "$r/etc/lanvan/key"
ln -s /usr/local/bin/lanvan "$r/usr/local/bin/lanvan-link"
ln "$r/usr/local/bin/lanvan" "$r/usr/local/bin/lanvan-hard"
echo mine >"$r/home/pi/notes" && chown 1000:1000 "$r/home/pi/notes" "$r/home/pi"
BOOT_MB=64 ROOT_SPARE_MB=8 "$here/lib/assemble.sh" "$b" "$r" "$work/fake.img" 2>"$work/assemble.log" ||
    { cat "$work/assemble.log" >&2; fail "assemble.sh"; }
[ "$(table "$work/fake.img" "t['label'], t['id']")" = "dos 0x4c414e56" ] || fail "not an MBR with id 0x4c414e56: $(sfdisk -d "$work/fake.img")"
read -r s1 n1 t1 boot1 s2 n2 t2 < <(table "$work/fake.img" "' '.join(str(x) for p in t['partitions'][:2] for x in (p['start'], p['size'], p['type']) + ((p.get('bootable', False),) if p is t['partitions'][0] else ()))")
[ "$s1 $n1 $t1 $boot1" = "8192 131072 c True" ] || fail "boot partition: $s1 $n1 $t1 $boot1"
[ "$t2" = 83 ] && [ "$s2" = $(( 8192 + 131072 )) ] || fail "root partition: $s2 $n2 $t2"
[ $(( (s2 + n2) * 512 )) = "$(stat -c %s "$work/fake.img")" ] || fail "the root partition does not end the image"
fat="$work/fake.img@@$(( s1 * 512 ))"
mdir -i "$fat" -b ::/ ::/overlays >"$work/mdir" 2>&1 || fail "mdir: $(cat "$work/mdir")"
for n in config.txt cmdline.txt lanvan.txt overlays/disable-bt.dtbo; do
    grep -q "/$n\$" "$work/mdir" || fail "$n is not on the FAT partition: $(cat "$work/mdir")"
    mcopy -n -i "$fat" "::$n" "$work/back"
    [ "$(sha "$work/back")" = "$(sha "$b/$n")" ] || fail "$n differs on the FAT partition"
done
minfo -i "$fat" :: 2>/dev/null | grep >/dev/null 'disk type="FAT32' || fail "the boot partition is not FAT32"
ext="$work/fake.img?offset=$(( s2 * 512 ))"
e2fsck -fn "$ext" >"$work/fsck" 2>&1 || { cat "$work/fsck" >&2; fail "e2fsck found errors in the root file system"; }
ds() { debugfs -R "stat $1" "$ext" 2>/dev/null; }
[ "$(debugfs -R "dump /usr/local/bin/lanvan /dev/stdout" "$ext" 2>/dev/null | sha256sum | cut -d' ' -f1)" = \
    "$(sha "$r/usr/local/bin/lanvan")" ] || fail "the binary differs in the root file system"
ds /usr/local/bin/lanvan | grep >/dev/null 'Mode: *0755' || fail "binary mode: $(ds /usr/local/bin/lanvan | head -3)"
ds /usr/local/bin/lanvan | grep >/dev/null 'Links: 2' || fail "the hard link was not kept"
ds /etc/lanvan/key | grep >/dev/null 'Mode: *0600' || fail "a 0600 file lost its mode"
ds /home/pi/notes | grep >/dev/null -E 'User: *1000 *Group: *1000' || fail "owner 1000 was not kept"
ds /usr/local/bin/lanvan-link | grep >/dev/null 'Fast link dest: "/usr/local/bin/lanvan"' || fail "symlink"
ds /boot/firmware | grep >/dev/null 'Type: directory' || fail "no /boot/firmware mount point"
debugfs -R stats "$ext" 2>/dev/null | grep >/dev/null '^Filesystem volume name: *lanvan-root$' || fail "root label"
ok "assemble.sh: MBR (id, types, bootable, offsets), FAT32 contents, ext4 contents (modes, owners, links) read back"

# --- 4. inject.sh on a synthetic Raspberry Pi OS Lite (64-bit) image ------------------------
b="$work/pios-boot" r="$work/pios-root"
mkdir -p "$b" "$r/usr/local/bin" "$r/usr/lib/aarch64-linux-gnu" "$r/etc/systemd/system/multi-user.target.wants"
echo "[all]" >"$b/config.txt"
echo "console=serial0,115200 root=PARTUUID=12345678-02 rootfstype=ext4 fsck.repair=yes rootwait" >"$b/cmdline.txt"
head -c 200000 /dev/urandom >"$b/start4.elf"
ln -s /lib/systemd/system/ssh.service "$r/etc/systemd/system/multi-user.target.wants/ssh.service"
DISK_ID=0x12345678 BOOT_LABEL=bootfs ROOT_LABEL=rootfs BOOT_MB=64 ROOT_SPARE_MB=32 \
    "$here/lib/assemble.sh" "$b" "$r" "$work/raspios.img" 2>/dev/null
xz -T0 -1 -k "$work/raspios.img"
src_sha=$(sha "$work/raspios.img.xz")
bin=$(bash "$repo/cross/build.sh" aarch64-unknown-linux-musl 2>"$work/cross.log") ||
    { tail -20 "$work/cross.log" >&2; fail "cross/build.sh aarch64"; }
"$here/inject.sh" "$work/raspios.img.xz" -o "$work/pi5.img" --binary "$bin" >/dev/null 2>"$work/inject.log" ||
    { cat "$work/inject.log" >&2; fail "inject.sh"; }
[ "$(sha "$work/raspios.img.xz")" = "$src_sha" ] || fail "inject.sh changed the downloaded image"
[ "$(sfdisk -d "$work/pi5.img" | sed 's/^.*pi5\.img//')" = "$(sfdisk -d "$work/raspios.img" | sed 's/^.*raspios\.img//')" ] || fail "inject.sh changed the partition table"
ext="$work/pi5.img?offset=$(( s2 * 512 ))"
fat="$work/pi5.img@@$(( s1 * 512 ))"
e2fsck -fn "$ext" >"$work/fsck" 2>&1 || { cat "$work/fsck" >&2; fail "e2fsck after inject"; }
[ "$(debugfs -R "dump /usr/local/bin/lanvan /dev/stdout" "$ext" 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$(sha "$bin")" ] ||
    fail "the injected binary differs"
ds /usr/local/bin/lanvan | grep >/dev/null 'Mode: *0755' || fail "injected binary mode"
ds /usr/local/bin/lanvan | grep >/dev/null -E 'User: *0 *Group: *0' || fail "injected binary owner"
debugfs -R "cat /etc/systemd/system/lanvan.service" "$ext" 2>/dev/null >"$work/unit"
cmp -s "$work/unit" "$repo/systemd/lanvan.service" || fail "the injected unit differs"
ds /etc/systemd/system/multi-user.target.wants/lanvan.service |
    grep -q 'Fast link dest: "/etc/systemd/system/lanvan.service"' || fail "the unit is not enabled"
ds /etc/systemd/system/multi-user.target.wants/ssh.service | grep >/dev/null 'Fast link dest' || fail "an existing link was lost"
debugfs -R "cat /etc/lanvan/lanvan.toml" "$ext" 2>/dev/null | cmp -s - "$repo/systemd/lanvan.toml" || fail "lanvan.toml"
for n in config.txt cmdline.txt start4.elf; do
    mcopy -n -i "$fat" "::$n" "$work/back"
    [ "$(sha "$work/back")" = "$(sha "$b/$n")" ] || fail "$n changed on the FAT partition"
done
mcopy -n -i "$fat" ::lanvan-readme.txt - | grep >/dev/null 'http://lanvan.local/' || fail "no lanvan-readme.txt on the FAT partition"
# Again on its own output (an upgrade): an edited lanvan.toml stays, the result stays clean.
printf 'log_level = "debug"\n' >"$work/edited.toml"
debugfs -w -R "rm /etc/lanvan/lanvan.toml" "$ext" >/dev/null 2>&1
debugfs -w -R "write $work/edited.toml /etc/lanvan/lanvan.toml" "$ext" >/dev/null 2>&1
"$here/inject.sh" "$work/pi5.img" -o "$work/pi5.img" --binary "$bin" >/dev/null 2>"$work/inject.log" ||
    { cat "$work/inject.log" >&2; fail "inject.sh a second time"; }
debugfs -R "cat /etc/lanvan/lanvan.toml" "$ext" 2>/dev/null | grep >/dev/null debug || fail "an upgrade overwrote lanvan.toml"
e2fsck -fn "$ext" >"$work/fsck" 2>&1 || { cat "$work/fsck" >&2; fail "e2fsck after a second inject"; }
# Wrong input gets a clear message and no output.
head -c 1048576 /dev/urandom >"$work/noise.img"
"$here/inject.sh" "$work/noise.img" -o "$work/x.img" --binary "$bin" 2>"$work/err" && fail "inject.sh took random bytes"
grep -q "no partition table" "$work/err" || fail "message for random bytes: $(cat "$work/err")"
rm -f "$r/usr/lib/aarch64-linux-gnu" -r
DISK_ID=0x12345678 BOOT_MB=64 ROOT_SPARE_MB=8 "$here/lib/assemble.sh" "$b" "$r" "$work/raspios32.img" 2>/dev/null
"$here/inject.sh" "$work/raspios32.img" -o "$work/x.img" --binary "$bin" 2>"$work/err" && fail "an arm64 binary went into a 32-bit OS"
grep -q "not built for the image's architecture" "$work/err" || fail "message for a 32-bit OS: $(cat "$work/err")"
ok "inject.sh: binary, unit, enable link and config in the root partition, a note on the FAT one, nothing else changed; an upgrade keeps lanvan.toml; bad images refused"
echo "test-cheap: all image checks passed in $(( SECONDS - t0 )) s" >&2
