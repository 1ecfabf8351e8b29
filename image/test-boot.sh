#!/usr/bin/env bash
# Boots the test image under qemu-system-aarch64 -M virt (TCG) and checks it from the host,
# as a user would see it: HTTP, upload and download by SHA-256, systemd and its watchdog,
# lanvan.txt applied, the root file system grown. The image itself is never written: the
# guest runs on a qcow2 overlay, and lanvan.txt goes into the overlay.
#
#   image/build.sh && image/test-boot.sh            # image/out/lanvan-arm64-test.img
#   image/test-boot.sh path/to/lanvan-arm64-test.img
#   image/test-boot.sh --release image/out/lanvan-arm64.img
#
# --release: the image people flash, which has no way to stall the box: instead of the
# watchdog restart, checks that the stall route answers 404 there.
#
# Networking is qemu's user mode with restrict=on: the guest reaches nothing, and only one
# port on 127.0.0.1 is forwarded to its port 80. Every wait has a timeout; qemu is stopped
# by its PID. KEEP=1 keeps the work folder (serial log, overlay) for a look afterwards.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib/tools.sh"
release=no
if [ "${1:-}" = --release ]; then release=yes; shift; fi
if [ $release = yes ]; then
    img=$(realpath "${1:-$here/out/lanvan-arm64.img}")
else
    img=$(realpath "${1:-$here/out/lanvan-arm64-test.img}")
fi
[ -f "$img" ] || image_die "no image at $img: run image/build.sh first"
need_tools qemu-system-aarch64 qemu-img mcopy mdir sfdisk debugfs e2fsck curl python3 journalctl

cache=${LANVAN_IMAGE_CACHE:-$HOME/.cache/lanvan-image}
mkdir -p "$cache"
work=$(mktemp -d "$cache/boot-test.XXXXXX")
qpid=
cleanup() {
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid"; wait "$qpid" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" = 1 ]; then image_say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
t0=$SECONDS
fail() {
    image_say "FAIL: $*"
    [ -s "$work/serial.log" ] && { echo "--- last lines of the serial console:" >&2; tail -40 "$work/serial.log" >&2; }
    exit 1
}
pass() { image_say "ok ($(( SECONDS - t0 )) s): $*"; }
json() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v = v[k] if isinstance(v, dict) else None
print("" if v is None else json.dumps(v) if not isinstance(v, str) else v)' "$1"; }

# The partitions, from the image's own MBR.
part() { sfdisk -J "$img" | python3 -c "import json,sys; p=json.load(sys.stdin)['partitiontable']['partitions'][$1]; print(p['start'], p['size'])"; }
read -r boot_start boot_size <<<"$(part 0)"
read -r root_start root_size <<<"$(part 1)"

# Kernel, initrd and command line from the FAT partition, as the Pi's firmware takes them.
dd if="$img" of="$work/boot.img" bs=512 skip="$boot_start" count="$boot_size" status=none
fat() { mcopy -n -i "$work/boot.img" "::$1" "$2"; }
fat config.txt "$work/config.txt"
fat cmdline.txt "$work/cmdline.txt"
kernel=$(sed -n 's/\r$//; s/^kernel=//p' "$work/config.txt" | tail -n 1)
initrd=$(sed -n 's/\r$//; s/^initramfs[[:space:]]\+\([^[:space:]]*\).*/\1/p' "$work/config.txt" | tail -n 1)
[ -n "$kernel" ] && [ -n "$initrd" ] || fail "config.txt names no kernel= and initramfs: $(cat "$work/config.txt")"
fat "$kernel" "$work/vmlinuz"
fat "$initrd" "$work/initrd.img"
# The Pi's serial console is ttyS1; qemu's virt board has a PL011, ttyAMA0.
cmdline="$(tr -d '\r\n' <"$work/cmdline.txt") console=ttyAMA0"
pass "kernel $kernel, initrd $initrd from the FAT partition; cmdline: $cmdline"

# lanvan.txt as a Windows editor saves it, written into the overlay only.
password="correct horse battery staple"
printf '%s\r\n' "# set by image/test-boot.sh" "hostname=lanvan-test" "wifi_ssid=Test Net" \
    "wifi_password=$password" "wifi_country=gb" >"$work/lanvan.txt"
mcopy -o -i "$work/boot.img" "$work/lanvan.txt" ::lanvan.txt
disk_mb=3072
qemu-img create -q -f qcow2 -b "$img" -F raw "$work/disk.qcow2" "${disk_mb}M"
qemu-io -f qcow2 -c "write -q -s $work/boot.img $(( boot_start * 512 )) $(( boot_size * 512 ))" "$work/disk.qcow2"
img_sha=$(sha256sum "$img" | cut -c1-16)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 \
    -kernel "$work/vmlinuz" -initrd "$work/initrd.img" -append "$cmdline" \
    -drive "if=none,id=hd0,format=qcow2,file=$work/disk.qcow2" -device virtio-blk-pci,drive=hd0 \
    -netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:80" -device virtio-net-pci,netdev=net0 \
    -device virtio-rng-pci -display none -serial "file:$work/serial.log" \
    -monitor "unix:$work/monitor.sock,server,nowait" &
qpid=$!
boot_t=$SECONDS
image_say "qemu (pid $qpid) is booting; forwarded $url -> guest port 80; serial console in $work/serial.log"

# 1. The box answers over HTTP.
wait_http() { # TIMEOUT
    local until=$(( SECONDS + $1 ))
    while [ $SECONDS -lt $until ]; do
        kill -0 "$qpid" 2>/dev/null || fail "qemu exited"
        curl -sf --max-time 10 "$url/api/status" >"$work/status.json" 2>/dev/null && return 0
        sleep 3
    done
    return 1
}
wait_http 900 || fail "no HTTP answer within 900 s"
boot_secs=$(( SECONDS - boot_t ))
pass "the box answered over HTTP $boot_secs s after qemu started"
# Into a file: `curl | grep -q` fails under pipefail when grep stops reading early.
curl -sf --max-time 60 -o "$work/index.html" "$url/" || fail "GET / failed"
grep -qi '<html' "$work/index.html" || fail "GET / is not the web app"

# 2. It runs under systemd, with the unit's 30 s watchdog.
[ "$(json systemd.notify <"$work/status.json")" = true ] || fail "status: $(cat "$work/status.json")"
[ "$(json systemd.watchdog_secs <"$work/status.json")" = 30.0 ] || fail "status: $(cat "$work/status.json")"
run1=$(json systemd.invocation_id <"$work/status.json")
[ -n "$run1" ] || fail "no invocation id: $(cat "$work/status.json")"
pass "/api/status: under systemd, notify, watchdog 30 s, run $run1"

# 3. An upload and a download match by SHA-256.
head -c 3000000 /dev/urandom >"$work/in.bin"
size=$(stat -c %s "$work/in.bin")
sha=$(sha256sum "$work/in.bin" | cut -d' ' -f1)
reply=$(curl -sS --max-time 60 --fail-with-body -X POST "$url/api/uploads" -H 'content-type: application/json' \
    -d "{\"name\":\"boot test.bin\",\"size\":$size,\"sha256\":\"$sha\"}") || fail "upload: $reply"
id=$(json id <<<"$reply")
chunk=$(json chunk_size <<<"$reply")
chunks=$(json chunks <<<"$reply")
for n in $(seq 0 $(( chunks - 1 ))); do
    dd if="$work/in.bin" of="$work/chunk" bs="$chunk" skip="$n" count=1 status=none
    curl -sS --max-time 120 --fail-with-body -o /dev/null -X PUT "$url/api/uploads/$id/chunks/$n" \
        -H "x-chunk-sha256: $(sha256sum "$work/chunk" | cut -d' ' -f1)" --data-binary "@$work/chunk" ||
        fail "chunk $n"
done
reply=$(curl -sS --max-time 120 --fail-with-body -X POST "$url/api/uploads/$id/finish") || fail "finish: $reply"
curl -sS --max-time 120 --fail-with-body -o "$work/out.bin" "$url/api/files/boot%20test.bin" || fail "download"
[ "$(sha256sum "$work/out.bin" | cut -d' ' -f1)" = "$sha" ] || fail "the download's SHA-256 differs"
pass "uploaded $size bytes in $chunks chunks and downloaded them: SHA-256 $sha"

# 4. A stalled event loop: no watchdog ping for 30 s, so systemd restarts the box.
watchdog_secs=-
if [ $release = yes ]; then
    code=$(curl -s --max-time 20 -o /dev/null -w '%{http_code}' -X POST "$url/api/debug/stall?secs=5")
    [ "$code" = 404 ] || fail "the release image answers $code to POST /api/debug/stall"
    pass "the release image has no stall route (404)"
else
stall_t=$SECONDS
curl -s --max-time 200 -o /dev/null -X POST "$url/api/debug/stall?secs=180" &
stall_pid=$!
sleep 5
curl -s --max-time 5 "$url/api/status" >/dev/null && fail "the box still answers during the stall"
restarted=
until=$(( SECONDS + 240 ))
while [ $SECONDS -lt $until ]; do
    kill -0 "$qpid" 2>/dev/null || fail "qemu exited"
    if curl -sf --max-time 5 "$url/api/status" >"$work/status.json" 2>/dev/null; then
        run2=$(json systemd.invocation_id <"$work/status.json")
        [ "$run2" != "$run1" ] && { restarted=yes; break; }
    fi
    sleep 2
done
kill "$stall_pid" 2>/dev/null || true
wait "$stall_pid" 2>/dev/null || true
[ -n "$restarted" ] || fail "the box was not restarted within 240 s of the stall"
watchdog_secs=$(( SECONDS - stall_t ))
pass "the watchdog restarted the stalled box: run $run2, answering again $watchdog_secs s after the stall began"
# The file is still there after the restart.
curl -sS --max-time 120 --fail-with-body -o "$work/out2.bin" "$url/api/files/boot%20test.bin" || fail "download after restart"
[ "$(sha256sum "$work/out2.bin" | cut -d' ' -f1)" = "$sha" ] || fail "the file changed across the restart"
fi

# 5. Power off cleanly (the virt board's power button), so the disk is settled; qemu then exits.
python3 - "$work/monitor.sock" <<'PY' || true
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"system_powerdown\n"); s.close()
PY
until=$(( SECONDS + 180 ))
while kill -0 "$qpid" 2>/dev/null && [ $SECONDS -lt $until ]; do sleep 2; done
if kill -0 "$qpid" 2>/dev/null; then
    image_say "the guest did not power off within 180 s; stopping qemu (pid $qpid)"
    kill "$qpid"
fi
wait "$qpid" 2>/dev/null || true
qpid=
grep -a -q 'reboot: Power down' "$work/serial.log" && pass "the guest powered off" || image_say "no clean power-off"

# 6. From the host, on the overlay: lanvan.txt applied, root grown; the image untouched.
qemu-img convert -O raw "$work/disk.qcow2" "$work/disk.raw"
rm -f "$work/disk.qcow2"
[ "$(sha256sum "$img" | cut -c1-16)" = "$img_sha" ] || fail "the image itself was changed"
root_off=$(( root_start * 512 ))
# A guest stopped hard may leave changes in the journal only: replay it (and nothing more).
e2fsck -y -E journal_only "$work/disk.raw?offset=$root_off" >/dev/null 2>&1 || true
rootfs() { debugfs -R "$1" "$work/disk.raw?offset=$root_off" 2>/dev/null; }
[ "$(rootfs 'cat /etc/hostname')" = lanvan-test ] || fail "/etc/hostname: $(rootfs 'cat /etc/hostname')"
grep -a -q 'lanvan-firstboot: host name: lanvan-test' "$work/serial.log" || fail "firstboot did not report the host name"
pass "hostname=lanvan-test applied (/etc/hostname, and at run time)"
conf=/etc/wpa_supplicant/wpa_supplicant-wlan0.conf
mode=$(rootfs "stat $conf" | sed -n 's/.*Mode: *\([0-7]*\).*/\1/p')
[ "$mode" = 0600 ] || fail "$conf has mode '$mode', not 0600"
rootfs "cat $conf" >"$work/wpa.conf"
grep -q '^country=GB$' "$work/wpa.conf" || fail "no country=GB in $conf"
grep -q 'ssid=54657374204e6574$' "$work/wpa.conf" || fail "no ssid 'Test Net' (in hex) in $conf"
grep -Eq '^[[:space:]]*psk=[0-9a-f]{64}$' "$work/wpa.conf" || fail "no derived psk in $conf"
grep -qF "$password" "$work/wpa.conf" && fail "the password is in the clear in $conf"
pass "Wi-Fi settings in $conf, mode 0600, with the derived key only"
mcopy -n -i "$work/disk.raw@@$(( boot_start * 512 ))" ::lanvan.txt "$work/lanvan-after.txt"
grep -qF "$password" "$work/lanvan-after.txt" && fail "the password is still in lanvan.txt"
grep -q $'^# wifi_password was applied and erased from this file\r$' "$work/lanvan-after.txt" ||
    fail "lanvan.txt after boot: $(cat -A "$work/lanvan-after.txt")"
grep -q $'^wifi_ssid=Test Net\r$' "$work/lanvan-after.txt" || fail "lanvan.txt lost its other lines"
pass "the password was erased from lanvan.txt on the FAT partition; the other lines are kept"
read -r _ new_size <<<"$(sfdisk -J "$work/disk.raw" | python3 -c "import json,sys; p=json.load(sys.stdin)['partitiontable']['partitions'][1]; print(p['start'], p['size'])")"
blocks=$(rootfs stats | sed -n 's/^Block count: *//p')
bsize=$(rootfs stats | sed -n 's/^Block size: *//p')
fs_mb=$(( blocks * bsize / 1048576 ))
[ "$new_size" -gt "$root_size" ] || fail "the root partition did not grow ($root_size sectors)"
[ $(( root_start + new_size )) -eq $(( disk_mb * 2048 )) ] || fail "the root partition does not reach the end of the disk"
[ "$fs_mb" -ge $(( new_size / 2048 - 8 )) ] || fail "the root file system is $fs_mb MiB in a $(( new_size / 2048 )) MiB partition"
pass "the root partition grew from $(( root_size / 2048 )) MiB to $(( new_size / 2048 )) MiB, its file system to $fs_mb MiB"
# 7. The guest's own journal (persistent, on the root partition), read on the host: systemd
# saw the watchdog fire, the box advertised lanvan.local, and lanvan.txt was applied before
# the network started.
debugfs -R "rdump /var/log/journal $work" "$work/disk.raw?offset=$root_off" >/dev/null 2>&1
journal() { journalctl -D "$work/journal" --no-pager -o short-monotonic "$@" 2>/dev/null; }
journal -u lanvan.service >"$work/lanvan.journal"
if [ $release = no ]; then
    grep -q "lanvan.service: Watchdog timeout (limit 30s)" "$work/lanvan.journal" || fail "no watchdog timeout in the journal"
    grep -q "lanvan.service: Failed with result 'watchdog'" "$work/lanvan.journal" || fail "the journal does not say the watchdog ended the box"
    grep -q 'debug-stall: blocking the event loop' "$work/lanvan.journal" || fail "the stall is not in the journal"
    pass "journal: the stalled box was killed by systemd's watchdog (result 'watchdog') and started again"
fi
grep -q 'mDNS: advertising .* as http://lanvan.local:80/' "$work/lanvan.journal" || fail "the box did not advertise lanvan.local"
grep -q 'mDNS: announced .* on eth0' "$work/lanvan.journal" || fail "no mDNS announcement on eth0"
grep -q 'mDNS: advertising "LANVan on lanvan-test"' "$work/lanvan.journal" ||
    fail "the box did not see the host name from lanvan.txt"
pass "journal: the box advertised http://lanvan.local:80/ by mDNS on eth0, as \"LANVan on lanvan-test\""
journal >"$work/boot.journal"
applied=$(grep -n 'Finished lanvan-firstboot.service' "$work/boot.journal" | head -n 1 | cut -d: -f1)
networkd=$(grep -n 'Starting systemd-networkd.service' "$work/boot.journal" | head -n 1 | cut -d: -f1)
[ -n "$applied" ] && [ -n "$networkd" ] && [ "$applied" -lt "$networkd" ] ||
    fail "lanvan-firstboot did not finish before systemd-networkd started (lines $applied, $networkd)"
pass "journal: lanvan.txt was applied before systemd-networkd started"
image_say "all checks passed in $(( SECONDS - t0 )) s; boot to HTTP $boot_secs s, watchdog restart $watchdog_secs s"
