#!/usr/bin/env bash
# The systemd service: systemd/install.sh into a scratch root (twice: it must be idempotent
# and keep an edited config), `systemd-analyze verify` of the installed unit, the exposure
# score of `systemd-analyze security` (must be 2.0 or lower), and the box run the way the
# unit runs it (its Environment=, port 80) in a private network namespace, under strace:
# every system call it makes must pass the unit's SystemCallFilter, every socket must be of
# an allowed family, and no memory may be writable and executable at once. Last, the unit
# runs under a real systemd in a container (systemd-nspawn) with its whole sandbox.
# Uses the static x86_64 build (cross/build.sh), the kind of binary a board runs.
# KEEP=1 keeps the scratch folder (root, strace log) for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanvan-target}"

say() { echo "test-systemd: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }
passed=0
ok() { say "ok: $*"; passed=$((passed + 1)); }

need=()
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v strace >/dev/null || need+=(strace)
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

bin=$(bash cross/build.sh x86_64-unknown-linux-musl)
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
root="$work/root"
unit="$root/etc/systemd/system/lanvan.service"

# --- install.sh -----------------------------------------------------------------------------
bash systemd/install.sh --root "$root" --binary "$bin" 2>"$work/install.log"
cmp -s "$bin" "$root/usr/local/bin/lanvan" || fail "the binary was not installed"
[ "$(stat -c %a "$root/usr/local/bin/lanvan")" = 755 ] || fail "the binary is not mode 755"
cmp -s systemd/lanvan.service "$unit" || fail "the unit was not installed"
cmp -s systemd/lanvan.toml "$root/etc/lanvan/lanvan.toml" || fail "the config was not installed"
[ "$(readlink "$root/etc/systemd/system/multi-user.target.wants/lanvan.service")" = \
    /etc/systemd/system/lanvan.service ] || fail "the unit is not enabled"
# Again, over an edited config: the edit stays, nothing else changes, nothing is duplicated.
echo 'log_level = "debug"' >>"$root/etc/lanvan/lanvan.toml"
find "$root" -printf '%P %m %s\n' | sort >"$work/tree1"
bash systemd/install.sh --root "$root" --binary "$bin" 2>"$work/install.log"
grep -q "keeping the existing /etc/lanvan/lanvan.toml" "$work/install.log" || fail "$(cat "$work/install.log")"
find "$root" -printf '%P %m %s\n' | sort >"$work/tree2"
diff "$work/tree1" "$work/tree2" >&2 || fail "a second install changed the tree"
tail -1 "$root/etc/lanvan/lanvan.toml" | grep -q debug || fail "the edited config was overwritten"
if bash systemd/install.sh --root "$root" --binary "$work/nothing" 2>/dev/null; then
    fail "install.sh accepted a missing binary"
fi
echo 'not a program' >"$work/text"
if bash systemd/install.sh --root "$root" --binary "$work/text" 2>/dev/null; then
    fail "install.sh accepted a file that is not a program"
fi
cmp -s "$bin" "$root/usr/local/bin/lanvan" || fail "a refused install touched the binary"
ok "install.sh puts binary, unit, config and the enable link in place; a rerun keeps the config; bad binaries are refused"

# --- systemd-analyze verify -----------------------------------------------------------------
# A real root has systemd's own units (the targets ours names); the scratch one borrows them.
mkdir -p "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
if ! systemd-analyze verify --root="$root" lanvan.service >"$work/verify" 2>&1 || [ -s "$work/verify" ]; then
    cat "$work/verify" >&2
    fail "systemd-analyze verify"
fi
# The check is real: a unit whose binary is missing fails it.
mv "$root/usr/local/bin/lanvan" "$work/moved"
if systemd-analyze verify --root="$root" lanvan.service >/dev/null 2>&1; then
    fail "verify passed without the binary"
fi
mv "$work/moved" "$root/usr/local/bin/lanvan"
ok "systemd-analyze verify passes, with no warnings"

# --- systemd-analyze security ---------------------------------------------------------------
exposure() {
    systemd-analyze security --offline=true --root="$root" "$1" 2>&1 |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
}
score=$(exposure lanvan.service)
[ -n "$score" ] || fail "no exposure score"
printf '[Service]\nExecStart=/usr/local/bin/lanvan serve\n' >"$root/etc/systemd/system/bare.service"
bare=$(exposure bare.service)
rm "$root/etc/systemd/system/bare.service"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $score is above 2.0"
awk -v s="$bare" 'BEGIN { exit !(s > 5.0) }' || fail "an unsandboxed unit scored $bare: the score is not being read"
ok "systemd-analyze security: exposure $score (an unsandboxed unit: $bare)"

# --- the box as the unit runs it ------------------------------------------------------------
# Environment= lines with systemd's %S (state) and %E (configuration) mapped into the root.
envs=()
while IFS= read -r line; do
    v=${line#Environment=}
    v=${v//%S/$root/var/lib}
    v=${v//%E/$root/etc}
    envs+=("$v")
done < <(grep '^Environment=' "$unit")
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
[ "${exec_start%% *}" = /usr/local/bin/lanvan ] || fail "ExecStart is $exec_start"
cmd=("$root${exec_start%% *}")
read -ra args <<<"${exec_start#* }"
cmd+=("${args[@]}")
mkdir -p "$root/var/lib/lanvan"

# The settings the service gets: port 80, the state directory, and the config file's edit.
env -i "${envs[@]}" "${cmd[0]}" config >"$work/config.toml"
grep -qx 'listen = "0.0.0.0:80"' "$work/config.toml" || fail "listen: $(grep listen "$work/config.toml")"
grep -qx "data_dir = \"$root/var/lib/lanvan\"" "$work/config.toml" || fail "data_dir: $(grep data_dir "$work/config.toml")"
grep -qx 'log_level = "debug"' "$work/config.toml" || fail "the config file was not read"

cat >"$work/inside.sh" <<'INSIDE'
set -euo pipefail
work=$1; shift
ip link set lo up
strace -f -qq -o "$work/trace" "$@" >"$work/log" 2>&1 &
tracer=$!
for _ in $(seq 300); do grep -q "listening on" "$work/log" && break; sleep 0.1; done
grep -q "listening on 0.0.0.0:80" "$work/log" || { cat "$work/log" >&2; exit 1; }
head -c 1500000 /dev/urandom >"$work/in.bin"
sha=$(sha256sum "$work/in.bin" | cut -d' ' -f1)
reply=$(curl -sS --fail-with-body -X POST http://127.0.0.1/api/uploads \
    -d "{\"name\":\"a.bin\",\"size\":1500000,\"sha256\":\"$sha\"}")
id=$(grep -o '"id":"[0-9a-f]*"' <<<"$reply" | cut -d'"' -f4)
for n in 0 1; do
    dd if="$work/in.bin" of="$work/chunk" bs=1048576 skip=$n count=1 status=none
    curl -sS --fail-with-body -o /dev/null -X PUT "http://127.0.0.1/api/uploads/$id/chunks/$n" \
        -H "x-chunk-sha256: $(sha256sum "$work/chunk" | cut -d' ' -f1)" --data-binary "@$work/chunk"
done
curl -sS --fail-with-body -o /dev/null -X POST "http://127.0.0.1/api/uploads/$id/finish"
got=$(curl -sS --fail-with-body http://127.0.0.1/api/files/a.bin | sha256sum | cut -d' ' -f1)
[ "$got" = "$sha" ] || { echo "downloaded $got, uploaded $sha" >&2; exit 1; }
curl -sS --fail-with-body -o /dev/null http://127.0.0.1/api/status
# strace's child is the box (env execs it); strace exits with the box's status.
kill -TERM "$(pgrep -P "$tracer")"
wait "$tracer"
INSIDE
unshare -rn bash "$work/inside.sh" "$work" env -i "${envs[@]}" "${cmd[@]}" ||
    { cat "$work/log" >&2; fail "the box did not serve on port 80 and stop with 0"; }
[ -s "$root/var/lib/lanvan/files/a.bin" ] || fail "the file is not in the state directory"
grep -q stopped "$work/log" || fail "no 'stopped' line: $(cat "$work/log")"
ok "the box runs with the unit's settings: port 80, files in the state directory, exit 0 on SIGTERM"

# --- the sandbox lets it do all that --------------------------------------------------------
# Syscalls the filter allows: @system-service, less @privileged and @resources (the unit's
# SystemCallFilter= lines), expanded recursively.
expand() {
    local name
    systemd-analyze syscall-filter "$1" | sed -n '2,$p' | sed 's/#.*//; s/^ *//; /^$/d' |
        while read -r name; do
            case "$name" in @*) expand "$name" ;; *) echo "$name" ;; esac
        done
}
allow=$(sed -n 's/^SystemCallFilter=\([^~].*\)/\1/p' "$unit")
deny=$(sed -n 's/^SystemCallFilter=~//p' "$unit")
for s in $allow; do expand "$s"; done | sort -u >"$work/allowed"
for s in $deny; do expand "$s"; done | sort -u >"$work/denied"
comm -23 "$work/allowed" "$work/denied" >"$work/permitted"
# The box's system calls: everything from its execve on (before it, `env` ran).
awk -v bin="execve(\"${cmd[0]}\"" 'index($0, bin) { on = 1 } on { sub(/^[0-9]+ +/, ""); print }' \
    "$work/trace" >"$work/boxtrace"
grep -o '^[a-z0-9_]*(' "$work/boxtrace" | tr -d '(' | sort -u >"$work/used"
grep -q '^sendfile' "$work/used" || fail "the trace shows no sendfile: $(tr '\n' ' ' <"$work/used")"
grep -q "^signalfd" "$work/used" || fail "the trace shows no signalfd"
blocked=$(comm -23 "$work/used" "$work/permitted")
[ -z "$blocked" ] || fail "the unit's SystemCallFilter would block: $(tr '\n' ' ' <<<"$blocked")"
families=$(grep -o '^socket(AF_[A-Z0-9]*' "$work/boxtrace" | cut -d'(' -f2 | sort -u | tr '\n' ' ')
for f in $families; do
    grep -Eq "^RestrictAddressFamilies=(.* )?$f( |$)" "$unit" || fail "socket family $f is not allowed by the unit"
done
if grep -E '^(mmap|mprotect|pkey_mprotect)' "$work/boxtrace" | grep 'PROT_WRITE' | grep 'PROT_EXEC'; then
    fail "writable and executable memory breaks MemoryDenyWriteExecute"
fi
ok "$(wc -l <"$work/used") distinct syscalls, all allowed by SystemCallFilter; socket families: $families; no W+X memory"

# --- under a real systemd -------------------------------------------------------------------
# The machine's own OS booted in a container (systemd-nspawn, only /usr from the host, a
# private network with just loopback), with what install.sh installed bound in. systemd
# runs the unit with everything in force: seccomp, DynamicUser, the capability, the
# mounts. A watchdog of 2 s (a drop-in) shows the pings arrive. A check unit talks to the
# box and writes what it saw to /check, then the container powers off.
mkdir -p "$work/nspawn/check" "$work/nspawn/dropin"
printf '[Service]\nWatchdogSec=2s\n' >"$work/nspawn/dropin/watchdog.conf"
cat >"$work/nspawn/check/check.sh" <<'CHECK'
#!/bin/bash
exec >/check/log 2>&1
set -x
result() { echo "$1" >/check/result; exit 0; }
for _ in $(seq 100); do [ "$(systemctl is-active lanvan)" = active ] && break; sleep 0.2; done
[ "$(systemctl is-active lanvan)" = active ] || result "lanvan is $(systemctl is-active lanvan)"
echo "dropped on a real systemd" >/tmp/h.txt
sha=$(sha256sum /tmp/h.txt | cut -d' ' -f1)
r=$(curl -sS -X POST http://127.0.0.1/api/uploads -d "{\"name\":\"h.txt\",\"size\":26,\"sha256\":\"$sha\"}")
id=$(grep -o '"id":"[0-9a-f]*"' <<<"$r" | cut -d'"' -f4)
curl -sS --fail -X PUT "http://127.0.0.1/api/uploads/$id/chunks/0" -H "x-chunk-sha256: $sha" --data-binary @/tmp/h.txt || result "chunk refused"
curl -sS --fail -X POST "http://127.0.0.1/api/uploads/$id/finish" || result "finish refused"
[ "$(curl -sS http://127.0.0.1/api/files/h.txt | sha256sum | cut -d' ' -f1)" = "$sha" ] || result "download differs"
cmp -s /tmp/h.txt /var/lib/private/lanvan/files/h.txt || result "not in the state directory"
pid=$(systemctl show -P MainPID lanvan)
status=$(cat "/proc/$pid/status")
grep -q '^Seccomp:[[:space:]]*2' <<<"$status" || result "no seccomp filter"
grep -q '^NoNewPrivs:[[:space:]]*1' <<<"$status" || result "NoNewPrivs is off"
grep -q '^CapEff:[[:space:]]*0000000000000400$' <<<"$status" || result "capabilities: $(grep CapEff <<<"$status")"
[ "$(stat -c %u "/proc/$pid")" -ge 61184 ] || result "not a dynamic user: uid $(stat -c %u "/proc/$pid")"
sleep 5  # more than twice WatchdogSec
[ "$(systemctl show -P NRestarts lanvan)" = 0 ] || result "restarted $(systemctl show -P NRestarts lanvan) times"
[ "$(systemctl show -P SubState lanvan)" = running ] || result "lanvan is $(systemctl show -P SubState lanvan)"
systemctl stop lanvan
[ "$(systemctl show -P ExecMainStatus lanvan)" = 0 ] || result "exit status $(systemctl show -P ExecMainStatus lanvan)"
[ "$(systemctl show -P Result lanvan)" = success ] || result "result $(systemctl show -P Result lanvan)"
journalctl -u lanvan --no-pager
result ok
CHECK
chmod +x "$work/nspawn/check/check.sh"
cat >"$work/nspawn/check.service" <<'UNIT'
[Unit]
Wants=lanvan.service
After=lanvan.service
SuccessAction=poweroff-immediate
FailureAction=poweroff-immediate
[Service]
Type=oneshot
ExecStart=/check/check.sh
UNIT
timeout 180 systemd-nspawn --quiet --keep-unit --register=no --volatile=yes -D / --private-network \
    --bind-ro="$root/usr/local/bin:/usr/local/bin" \
    --bind-ro="$unit:/etc/systemd/system/lanvan.service" \
    --bind-ro="$work/nspawn/dropin:/etc/systemd/system/lanvan.service.d" \
    --bind-ro="$root/etc/lanvan:/etc/lanvan" \
    --bind-ro="$work/nspawn/check.service:/etc/systemd/system/lanvan-check.service" \
    --bind="$work/nspawn/check:/check" \
    -b systemd.unit=lanvan-check.service systemd.firstboot=off \
    systemd.mask=systemd-networkd-wait-online.service >"$work/nspawn/console" 2>&1 || true
if [ "$(cat "$work/nspawn/check/result" 2>/dev/null)" != ok ]; then
    sed 's/\x1b\[[0-9;]*[mK]//g' "$work/nspawn/console" | tail -30 >&2
    cat "$work/nspawn/check/log" >&2 2>/dev/null || true
    fail "under systemd: $(cat "$work/nspawn/check/result" 2>/dev/null || echo 'the check did not run')"
fi
ok "under a real systemd (nspawn): notify, watchdog at 2 s, DynamicUser, seccomp, port 80 only capability, upload and download, clean stop"
echo "test-systemd: $passed passed, 0 failed"
