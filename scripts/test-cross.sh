#!/usr/bin/env bash
# The cross builds and their smoke test: builds the static ARM binaries with cross/build.sh,
# then runs each under qemu-user in a private network namespace (only its own loopback):
# the box starts, takes an upload in chunks, serves it back byte for byte (SHA-256), answers
# a STUN Binding request on UDP 3478 with the client's address, and exits 0 on SIGTERM.
# Installs qemu-user-static, iproute2, curl when missing (python3 sends the STUN request).
#   scripts/test-cross.sh                  # aarch64 and armv7
#   scripts/test-cross.sh TARGET...        # some targets (x86_64-unknown-linux-musl runs natively)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"

say() { echo "test-cross: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

# --- inside the namespace: one box, one upload, one download, one SIGTERM -------------------
if [ "${1:-}" = "--inside" ]; then
    runner=$2 bin=$3 port=8080
    ip link set lo up
    work=$(mktemp -d)
    box=
    trap 'if [ -n "$box" ]; then kill -KILL "$box" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
    url="http://127.0.0.1:$port"
    # shellcheck disable=SC2086  # $runner is empty (native) or the qemu command
    $runner "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/box" >"$work/log" 2>&1 &
    box=$!
    for _ in $(seq 600); do
        grep -q "listening on" "$work/log" && break
        kill -0 "$box" 2>/dev/null || { cat "$work/log" >&2; fail "the box exited at start"; }
        sleep 0.1
    done
    grep -q "listening on 127.0.0.1:$port" "$work/log" || { cat "$work/log" >&2; fail "the box did not start"; }

    # 2.5 MiB and a bit: three chunks of 1 MiB, the last one short.
    head -c 2621447 /dev/urandom >"$work/in.bin"
    size=$(stat -c %s "$work/in.bin")
    sha=$(sha256sum "$work/in.bin" | cut -d' ' -f1)
    reply=$(curl -sS --fail-with-body -X POST "$url/api/uploads" -H 'content-type: application/json' \
        -d "{\"name\":\"smoke test.bin\",\"size\":$size,\"sha256\":\"$sha\"}")
    id=$(grep -o '"id":"[0-9a-f]*"' <<<"$reply" | cut -d'"' -f4)
    chunk=$(grep -o '"chunk_size":[0-9]*' <<<"$reply" | cut -d: -f2)
    chunks=$(grep -o '"chunks":[0-9]*' <<<"$reply" | cut -d: -f2)
    if [ -z "$id" ] || [ "$chunks" != 3 ]; then fail "unexpected upload reply: $reply"; fi
    # A chunk whose bytes do not match its hash is refused, and nothing is stored.
    dd if="$work/in.bin" of="$work/chunk" bs="$chunk" count=1 status=none
    bad=$(curl -sS -w ' %{http_code}' -X PUT "$url/api/uploads/$id/chunks/0" \
        -H "x-chunk-sha256: $(printf '0%.0s' $(seq 64))" --data-binary "@$work/chunk")
    [[ "$bad" == *chunk_hash_mismatch*" 422" ]] || fail "a chunk with a wrong hash got: $bad"
    # Last chunk first: the box takes them in any order.
    for n in $(seq $((chunks - 1)) -1 0); do
        dd if="$work/in.bin" of="$work/chunk" bs="$chunk" skip="$n" count=1 status=none
        h=$(sha256sum "$work/chunk" | cut -d' ' -f1)
        curl -sS --fail-with-body -o /dev/null -X PUT "$url/api/uploads/$id/chunks/$n" \
            -H "x-chunk-sha256: $h" --data-binary "@$work/chunk"
    done
    done_reply=$(curl -sS --fail-with-body -X POST "$url/api/uploads/$id/finish")
    grep -q "\"sha256\":\"$sha\"" <<<"$done_reply" || fail "finish said: $done_reply"

    curl -sS --fail-with-body -o "$work/out.bin" "$url/api/files/smoke%20test.bin"
    got=$(sha256sum "$work/out.bin" | cut -d' ' -f1)
    [ "$got" = "$sha" ] || fail "downloaded SHA-256 $got, uploaded $sha"
    cmp -s "$work/in.bin" "$work/box/files/smoke test.bin" || fail "the stored file differs"
    curl -sS --fail-with-body "$url/api/status" | grep -q '"uptime' || fail "no /api/status"
    # STUN on the default UDP port: a Binding request gets the client's own address back.
    python3 - <<'EOF' || fail "no STUN answer on udp 3478"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(2)
tid = b"cross-smoke!"
for _ in range(5):
    s.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + tid, ("127.0.0.1", 3478))
    try:
        r, _ = s.recvfrom(1500)
        break
    except socket.timeout:
        continue
else:
    raise SystemExit("no answer")
assert r[:2] == b"\x01\x01" and r[8:20] == tid, r
v = r[24:32]
port = struct.unpack(">H", v[2:4])[0] ^ 0x2112
ip = ".".join(str(b ^ m) for b, m in zip(v[4:8], b"\x21\x12\xa4\x42"))
assert (ip, port) == s.getsockname(), (ip, port, s.getsockname())
EOF

    kill -TERM "$box"
    rc=0
    wait "$box" || rc=$?
    box=
    [ "$rc" = 0 ] || { cat "$work/log" >&2; fail "exit code $rc after SIGTERM"; }
    grep -q "stopped" "$work/log" || { cat "$work/log" >&2; fail "no 'stopped' line"; }
    say "ok: upload and download of $size bytes (SHA-256 ${sha:0:16}…), STUN, exit 0 on SIGTERM"
    exit 0
fi

# --- outside: tools, builds, one namespace per binary ---------------------------------------
need=()
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v file >/dev/null || need+=(file)
if ! command -v qemu-aarch64-static >/dev/null || ! command -v qemu-arm-static >/dev/null; then
    # On Debian 12 the backports qemu-user-static matches the backports qemu-utils that
    # some machines have; bookworm's own would remove it.
    # shellcheck disable=SC1091
    . /etc/os-release
    if [ "${VERSION_CODENAME:-}" = bookworm ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        say "adding bookworm-backports to apt's sources for qemu-user-static"
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            >/etc/apt/sources.list.d/bookworm-backports.sources
    fi
    apt-get update -qq
    if [ "${VERSION_CODENAME:-}" = bookworm ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-user-static
    else
        need+=(qemu-user-static)
    fi
fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
for target in "${targets[@]}"; do
    started=$(date +%s)
    bin=$(bash cross/build.sh "$target")
    secs=$(($(date +%s) - started))
    kind=$(file -b "$bin")
    size=$(stat -c %s "$bin")
    case "$target" in
        aarch64-*) runner=qemu-aarch64-static; expect="ARM aarch64" ;;
        armv7-*) runner=qemu-arm-static; expect="ARM, EABI5" ;;
        x86_64-*) runner=""; expect="x86-64" ;;
    esac
    [[ "$kind" == *"$expect"* ]] || fail "$target: $bin is $kind"
    [[ "$kind" == *"statically linked"* || "$kind" == *"static-pie linked"* ]] || fail "$target: not static: $kind"
    # The Play-Store Termux (Android 10+) runs only position-independent executables.
    if [[ "$target" == aarch64-* ]]; then
        [[ "$kind" == *"static-pie linked"* ]] || fail "$target: not static-pie: $kind"
        readelf -h "$bin" | grep -q 'DYN (' || fail "$target: ELF type is not DYN"
        readelf -d "$bin" | grep -q NEEDED && fail "$target: needs shared libraries"
    fi
    [ "$size" -le $((3 << 20)) ] || say "warning: $target binary is $size bytes, above the 3 MiB aim"
    say "$target: built in ${secs}s, $size bytes, $(grep -o 'static-pie linked\|statically linked' <<<"$kind")"
    unshare -rn bash "$0" --inside "$runner" "$bin" || fail "$target: smoke test under ${runner:-the host}"
done
echo "test-cross: ${#targets[@]} passed, 0 failed"
