# Shared by image/*.sh: installs the host tools an image step needs when they are missing,
# and registers qemu-user for arm64 programs. Never touches the image itself; sourced, not run.

image_say() { echo "${0##*/}: $*" >&2; }
image_die() { image_say "$*"; exit 1; }

# need_tools TOOL... : apt-installs the Debian package of each missing command.
need_tools() {
    local pkgs=() t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 && continue
        case "$t" in
            mkfs.vfat) pkgs+=(dosfstools) ;;
            mcopy | mdir) pkgs+=(mtools) ;;
            mkfs.ext4 | debugfs | e2fsck | resize2fs) pkgs+=(e2fsprogs) ;;
            sfdisk) pkgs+=(fdisk) ;;
            mmdebstrap) pkgs+=(mmdebstrap) ;;
            arch-test) pkgs+=(arch-test) ;;
            qemu-img) pkgs+=(qemu-utils) ;;
            qemu-system-aarch64) pkgs+=(qemu-system-arm) ;;
            qemu-aarch64-static) pkgs+=(qemu-user-static) ;;
            systemd-analyze | journalctl) pkgs+=(systemd) ;;
            xz) pkgs+=(xz-utils) ;;
            curl) pkgs+=(curl) ;;
            wpa_passphrase) pkgs+=(wpasupplicant) ;;
            *) pkgs+=("$t") ;;
        esac
    done
    [ ${#pkgs[@]} -eq 0 ] && return 0
    image_say "installing ${pkgs[*]}"
    [ "$(id -u)" = 0 ] || image_die "missing ${pkgs[*]}: install them or run as root"
    apt-get update -qq >&2
    # qemu from bookworm-backports, as scripts/test-cross.sh does: the bookworm qemu-user-static
    # would remove a backports qemu-utils, and bookworm's qemu-system is the older 7.2.
    local qemu=() other=() p
    for p in "${pkgs[@]}"; do
        case "$p" in qemu-*) qemu+=("$p") ;; *) other+=("$p") ;; esac
    done
    [ ${#other[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${other[@]}" >&2
    if [ ${#qemu[@]} -gt 0 ]; then
        if . /etc/os-release && [ "${VERSION_CODENAME:-}" = bookworm ]; then
            if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
                echo "deb http://deb.debian.org/debian bookworm-backports main" \
                    >/etc/apt/sources.list.d/bookworm-backports.list
                apt-get update -qq >&2
            fi
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports "${qemu[@]}" >&2
        else
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${qemu[@]}" >&2
        fi
    fi
}

# need_arm64_binfmt: arm64 programs run through qemu-user, so mmdebstrap can run the
# image's maintainer scripts. Mounts binfmt_misc and registers qemu-aarch64-static with the
# F flag (the kernel opens the interpreter once, so it works inside the chroot too).
need_arm64_binfmt() {
    # An arm64 machine runs them itself (and must not send its own programs through qemu).
    [ "$(uname -m)" = aarch64 ] && return 0
    need_tools qemu-aarch64-static arch-test
    local bm=/proc/sys/fs/binfmt_misc
    [ -e "$bm/status" ] || mount -t binfmt_misc binfmt_misc "$bm" ||
        image_die "cannot mount binfmt_misc: arm64 programs cannot run on this machine"
    if ! grep -qs '^flags: .*F' "$bm/qemu-aarch64"; then
        [ -e "$bm/qemu-aarch64" ] && echo -1 >"$bm/qemu-aarch64"
        printf '%s' ':qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:OCF' >"$bm/register"
    fi
    arch-test arm64 >/dev/null || image_die "arm64 programs do not run here even with qemu-user"
}
