#!/usr/bin/env bash
# Installs LANVan as a system service on a Debian-based Pi (Raspberry Pi OS, Debian,
# Ubuntu): the binary to /usr/local/bin/lanvan, the unit to /etc/systemd/system, and a
# default /etc/lanvan/lanvan.toml (kept if one is there). Safe to run again, e.g. to upgrade.
#
#   sudo systemd/install.sh --binary ./lanvan        # install, enable and (re)start
#   systemd/install.sh --root /tmp/img --binary ...  # into another root (an image, a test):
#                                                    # enables the unit there, starts nothing
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

root=/
binary=
start=yes
usage() {
    sed -n '2,8s/^# \{0,1\}//p' "$0"
    echo "options: --binary FILE (default: ./lanvan beside this script, else lanvan on PATH)"
    echo "         --root DIR (default /), --no-start"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --binary=*) binary=${1#*=}; shift ;;
        --root | --prefix | --destdir) root=$2; shift 2 ;;
        --root=* | --prefix=* | --destdir=*) root=${1#*=}; shift ;;
        --no-start) start=no; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
say() { echo "install.sh: $*" >&2; }

if [ -z "$binary" ]; then
    if [ -x "$here/lanvan" ]; then binary="$here/lanvan"
    elif command -v lanvan >/dev/null; then binary=$(command -v lanvan)
    else say "no lanvan binary: pass --binary FILE (cross/build.sh prints where it put one)"; exit 1
    fi
fi
[ -f "$binary" ] || { say "$binary: no such file"; exit 1; }
[ "$(head -c 4 "$binary")" = $'\x7fELF' ] || { say "$binary is not a program (ELF)"; exit 1; }
root=$(realpath -m "$root")
if [ "$root" = / ]; then
    [ "$(id -u)" = 0 ] || { say "run as root (sudo), or pass --root DIR"; exit 1; }
    # Into the running system: it must be lanvan, built for this machine.
    version=$("$binary" --version 2>/dev/null) || { say "$binary does not run on this machine"; exit 1; }
    [[ "$version" == "lanvan "* ]] || { say "$binary is not lanvan (--version says: $version)"; exit 1; }
fi
prefix=${root%/}

install -d -m 0755 "$prefix/usr/local/bin" "$prefix/etc/systemd/system" "$prefix/etc/lanvan"
# Replace the binary by rename, so a running box keeps its old file until it restarts.
install -m 0755 "$binary" "$prefix/usr/local/bin/.lanvan.new"
mv -f "$prefix/usr/local/bin/.lanvan.new" "$prefix/usr/local/bin/lanvan"
install -m 0644 "$here/lanvan.service" "$prefix/etc/systemd/system/lanvan.service"
if [ -e "$prefix/etc/lanvan/lanvan.toml" ]; then
    say "keeping the existing /etc/lanvan/lanvan.toml"
else
    install -m 0644 "$here/lanvan.toml" "$prefix/etc/lanvan/lanvan.toml"
fi

if [ "$root" != / ]; then
    # Offline: the same symlink `systemctl enable` makes.
    install -d -m 0755 "$prefix/etc/systemd/system/multi-user.target.wants"
    ln -sfn /etc/systemd/system/lanvan.service \
        "$prefix/etc/systemd/system/multi-user.target.wants/lanvan.service"
    say "installed into $root; lanvan.service is enabled there"
    exit 0
fi
if [ ! -d /run/systemd/system ]; then
    say "installed; systemd is not running here, so nothing was started"
    exit 0
fi
systemctl daemon-reload
systemctl enable lanvan.service
if [ "$start" = yes ]; then
    systemctl restart lanvan.service
    say "lanvan is running: systemctl status lanvan; journalctl -u lanvan -f"
else
    say "installed and enabled; start it with: systemctl start lanvan"
fi
