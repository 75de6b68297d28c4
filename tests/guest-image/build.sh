#!/usr/bin/env bash
# Build the virtagent CI guest image: Debian's cloud kernel plus a busybox initramfs that runs a guest
# agent (qemu-ga, and virtagent when given) on the virtio-serial port org.qemu.guest_agent.0.
#
# Usage: tests/guest-image/build.sh [--agent PATH]... [--out DIR] [--force]
#
# Everything comes from Debian packages (apt-get download + dpkg-deb -x) cached under .cache/guest/;
# the libraries of dynamically linked agents are copied from this machine (as listed by ldd) and their
# owning packages recorded in the manifest. chpasswd (guest-set-user-password) comes from Debian's passwd
# package, its PAM module pam_unix.so (with its libraries) from this machine like the agents' libraries. Output (default .cache/guest/):
#   vmlinuz            the kernel (bzImage)
#   linux.uml          Debian's User-Mode Linux kernel; the same initramfs boots under it
#   initramfs.cpio.gz  cpio newc, gzip -n; byte-identical for identical inputs
#   manifest.txt       package versions, libraries, agents, modules, checksums
#   inputs.sha256      hash of every input; the build is skipped when it matches
# Docs: docs/guest-image.md
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE="$ROOT/.cache/guest"
OUT="$CACHE"
AGENTS=()
FORCE=0

KERNEL_META=${GUEST_KERNEL_PACKAGE:-linux-image-cloud-amd64}
BUSYBOX_PKG=busybox-static
QGA_PKG=qemu-guest-agent
UML_PKG=user-mode-linux
PASSWD_PKG=passwd
# PAM module chpasswd uses (etc/pam.d/chpasswd); libpam's module directory on this machine.
PAM_UNIX=/lib/x86_64-linux-gnu/security/pam_unix.so
# Modules the guest needs; any that the kernel has built in are skipped, dependencies are added.
WANT_MODULES=(virtio virtio_ring virtio_pci virtio_mmio virtio_console virtio_blk loop button evdev)
# The same initramfs also boots Debian's User-Mode Linux kernel (virtio_uml is built in there).
UML_WANT_MODULES=(virtio virtio_ring virtio_console virtio_blk loop)
TESTFS_SIZE=16M
TESTFS_UUID=5a7c0de0-0000-4000-8000-000000000001
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

while [ $# -gt 0 ]; do
    case "$1" in
        --agent) [ $# -ge 2 ] || die "--agent needs a path"; AGENTS+=("$2"); shift 2 ;;
        --agent=*) AGENTS+=("${1#--agent=}"); shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

for tool in apt-get apt-cache dpkg-deb dpkg dpkg-query cpio gzip readelf ldd mkfs.ext4 sha256sum find sort; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed (needed to build the guest image)"
done
cpio --help 2>&1 | grep -- --reproducible >/dev/null || die "cpio does not support --reproducible (need GNU cpio >= 2.13)"

mkdir -p "$CACHE/debs" "$CACHE/pkgs" "$OUT"
OUT=$(cd "$OUT" && pwd)

declare -A AGENT_PATHS=()
for a in "${AGENTS[@]+"${AGENTS[@]}"}"; do
    [ -f "$a" ] || die "agent '$a' does not exist"
    [ -x "$a" ] || die "agent '$a' is not executable"
    name=$(basename "$a")
    case "$name" in qemu-ga) die "agent name 'qemu-ga' is reserved for Debian's qemu-ga" ;; esac
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "agent file name '$name' must match [A-Za-z0-9._-]+"
    AGENT_PATHS[$name]=$(cd "$(dirname "$a")" && pwd)/$(basename "$a")
done

# ---------------------------------------------------------------------------------------------------
# Debian packages
APT_UPDATED=0
APT_OPTS=()
[ "$(id -u)" = 0 ] && APT_OPTS=(-o APT::Sandbox::User=root)

# Candidate version of a package from the local apt lists; runs apt-get update once if lists lack it.
pkg_version() {
    local pkg=$1 ver
    ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | sed -n 1p || true)
    if [ -z "$ver" ] && [ "$APT_UPDATED" = 0 ]; then
        log "package '$pkg' is not in the apt lists; running apt-get update"
        APT_UPDATED=1
        apt-get update -qq >&2 || die "apt-get update failed (needed because '$pkg' is not in the apt lists)"
        ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | sed -n 1p || true)
    fi
    [ -n "$ver" ] || die "package '$pkg' cannot be found in the apt lists (is a Debian bookworm source configured?)"
    printf '%s\n' "$ver"
}

# Path of the cached .deb for pkg=ver, downloading it if needed.
fetch_deb() {
    local pkg=$1 ver=$2 deb tmp out
    deb="$CACHE/debs/${pkg}_${ver//:/%3a}_amd64.deb"
    if [ ! -s "$deb" ]; then
        tmp=$(mktemp -d "$CACHE/debs/.dl.XXXXXX")
        log "downloading $pkg=$ver"
        if ! out=$(cd "$tmp" && apt-get "${APT_OPTS[@]+"${APT_OPTS[@]}"}" download "$pkg=$ver" 2>&1); then
            if [ "$APT_UPDATED" = 0 ]; then
                log "apt-get download failed; running apt-get update and retrying"
                APT_UPDATED=1
                apt-get update -qq >&2 || die "apt-get update failed"
                out=$(cd "$tmp" && apt-get "${APT_OPTS[@]+"${APT_OPTS[@]}"}" download "$pkg=$ver" 2>&1) || {
                    rm -rf "$tmp"; die "cannot fetch package $pkg=$ver: $out"; }
            else
                rm -rf "$tmp"; die "cannot fetch package $pkg=$ver: $out"
            fi
        fi
        local got=("$tmp"/*.deb)
        [ -s "${got[0]}" ] || { rm -rf "$tmp"; die "apt-get download of $pkg=$ver produced no .deb"; }
        if [ "$(dpkg-deb -f "${got[0]}" Package)" != "$pkg" ] || [ "$(dpkg-deb -f "${got[0]}" Version)" != "$ver" ]; then
            rm -rf "$tmp"; die "downloaded file for $pkg=$ver has unexpected control data"
        fi
        mv "${got[0]}" "$deb"
        rm -rf "$tmp"
    fi
    printf '%s\n' "$deb"
}

# Directory holding the extracted contents of a cached .deb.
extract_deb() {
    local deb=$1 dir tmp
    dir="$CACHE/pkgs/$(basename "$deb" .deb)"
    if [ ! -d "$dir" ]; then
        tmp=$(mktemp -d "$CACHE/pkgs/.x.XXXXXX")
        dpkg-deb -x "$deb" "$tmp" || { rm -rf "$tmp"; die "cannot extract $deb"; }
        # A concurrent build may have won the race: keep its copy.
        mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
    fi
    printf '%s\n' "$dir"
}

KMETA_VER=$(pkg_version "$KERNEL_META")
KMETA_DEB=$(fetch_deb "$KERNEL_META" "$KMETA_VER")
# The meta package depends on exactly one versioned image package, e.g.
# "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)".
KDEP=$(dpkg-deb -f "$KMETA_DEB" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*\) *(= *\([^)]*\)).*/\1 \2/p' | sed -n 1p)
[ -n "$KDEP" ] || die "cannot find the versioned linux-image dependency of $KERNEL_META ($(dpkg-deb -f "$KMETA_DEB" Depends))"
KPKG=${KDEP% *}
KVER=${KDEP#* }
KDEB=$(fetch_deb "$KPKG" "$KVER")
BB_VER=$(pkg_version "$BUSYBOX_PKG")
BB_DEB=$(fetch_deb "$BUSYBOX_PKG" "$BB_VER")
QGA_VER=$(pkg_version "$QGA_PKG")
QGA_DEB=$(fetch_deb "$QGA_PKG" "$QGA_VER")
UML_VER=$(pkg_version "$UML_PKG")
UML_DEB=$(fetch_deb "$UML_PKG" "$UML_VER")
PASSWD_VER=$(pkg_version "$PASSWD_PKG")
PASSWD_DEB=$(fetch_deb "$PASSWD_PKG" "$PASSWD_VER")

KDIR=$(extract_deb "$KDEB")
BBDIR=$(extract_deb "$BB_DEB")
QGADIR=$(extract_deb "$QGA_DEB")
UMLDIR=$(extract_deb "$UML_DEB")
PASSWDDIR=$(extract_deb "$PASSWD_DEB")

VMLINUZ=$(find "$KDIR/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | sed -n 1p)
[ -n "$VMLINUZ" ] || die "$KPKG contains no /boot/vmlinuz-*"
KREL=${VMLINUZ##*/vmlinuz-}
MODDIR="$KDIR/lib/modules/$KREL"
[ -d "$MODDIR" ] || die "$KPKG contains no /lib/modules/$KREL"
BUSYBOX="$BBDIR/bin/busybox"
[ -x "$BUSYBOX" ] || die "$BUSYBOX_PKG contains no /bin/busybox"
QGA_BIN="$QGADIR/usr/sbin/qemu-ga"
[ -x "$QGA_BIN" ] || die "$QGA_PKG contains no /usr/sbin/qemu-ga"
UML_BIN="$UMLDIR/usr/bin/linux.uml"
[ -x "$UML_BIN" ] || die "$UML_PKG contains no /usr/bin/linux.uml"
CHPASSWD_BIN="$PASSWDDIR/usr/sbin/chpasswd"
[ -x "$CHPASSWD_BIN" ] || die "$PASSWD_PKG contains no /usr/sbin/chpasswd"
[ -f "$PAM_UNIX" ] || die "$PAM_UNIX is missing (apt-get install libpam-modules)"
UML_REL=$(find "$UMLDIR/usr/lib/uml/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | sed -n 1p)
[ -n "$UML_REL" ] || die "$UML_PKG contains no /usr/lib/uml/modules/<release>"

# ---------------------------------------------------------------------------------------------------
# Kernel modules: skip built-ins, add dependencies (from each module's .modinfo "depends="), order
# dependencies first. The resulting list is what the guest's init loads with insmod.
declare -A MODPATH=() MOD_SEEN=()
MOD_ITEMS=()
BUILTIN_MODS=()
is_builtin() { sed 's#.*/##; s#\.ko$##; s#-#_#g' "$MODDIR/modules.builtin" | grep -x "$1" >/dev/null; }
mod_depends() {
    local ko=$1
    case "$ko" in
        *.xz) xz -dc "$ko" > "$CACHE/.modinfo.ko"; ko="$CACHE/.modinfo.ko" ;;
    esac
    readelf -p .modinfo "$ko" | sed -n 's/.*\]  *depends=//p' | tr ',' ' '
}
visit_module() {
    local m=${1//-/_} d deps
    [ -n "${MOD_SEEN[$m]:-}" ] && return 0
    MOD_SEEN[$m]=1
    if is_builtin "$m"; then BUILTIN_MODS+=("$m"); return 0; fi
    [ -n "${MODPATH[$m]:-}" ] || die "kernel $MODREL has no module '$m' (neither built in nor in $MODDIR)"
    deps=$(mod_depends "${MODPATH[$m]}") || die "cannot read the .modinfo of ${MODPATH[$m]}"
    for d in $deps; do visit_module "$d"; done
    MOD_ITEMS+=("$m ${MODPATH[$m]}")
}
# plan_modules MODULE_DIR RELEASE WANTED...: sets MOD_ITEMS ("name path", load order) and BUILTIN_MODS.
plan_modules() {
    MODDIR=$1 MODREL=$2
    shift 2
    [ -f "$MODDIR/modules.builtin" ] || die "$MODDIR/modules.builtin is missing"
    MODPATH=() MOD_SEEN=() MOD_ITEMS=() BUILTIN_MODS=()
    while IFS= read -r ko; do
        n=${ko##*/}; n=${n%.ko*}; n=${n//-/_}
        MODPATH[$n]=$ko
    done < <(find "$MODDIR/kernel" -name '*.ko' -o -name '*.ko.xz' | sort)
    for m in "$@"; do visit_module "$m"; done
}
plan_modules "$MODDIR" "$KREL" "${WANT_MODULES[@]}"
K_ITEMS=("${MOD_ITEMS[@]}")
K_BUILTIN=("${BUILTIN_MODS[@]+"${BUILTIN_MODS[@]}"}")
plan_modules "$UMLDIR/usr/lib/uml/modules/$UML_REL" "$UML_REL" "${UML_WANT_MODULES[@]}"
U_ITEMS=("${MOD_ITEMS[@]}")
U_BUILTIN=("${BUILTIN_MODS[@]+"${BUILTIN_MODS[@]}"}")
rm -f "$CACHE/.modinfo.ko"

# ---------------------------------------------------------------------------------------------------
# Dynamic ELF dependencies (interpreter + ldd's list) of the agents, copied from this machine.
ELF_LIBS=()
elf_libs() {
    local bin=$1 out interp
    interp=$(readelf -l "$bin" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
    [ -n "$interp" ] || return 0
    out=$(ldd "$bin" 2>&1) || die "ldd $bin failed: $out"
    if grep -q 'not found' <<<"$out"; then
        die "libraries of $bin are missing on this machine (install the packages that provide them; for qemu-ga: apt-get install qemu-guest-agent):
$(grep 'not found' <<<"$out")"
    fi
    printf '%s\n' "$interp"
    sed -n 's/.*=> \(\/[^ ]*\) (0x.*/\1/p' <<<"$out"
}
# (A command substitution, not a process substitution: a die inside must stop the build.)
ELF_LIST=$( { elf_libs "$QGA_BIN"
              elf_libs "$CHPASSWD_BIN"
              # A shared object has no interpreter: list its libraries (and itself) directly.
              echo "$PAM_UNIX"
              out=$(ldd "$PAM_UNIX" 2>&1) || die "ldd $PAM_UNIX failed: $out"
              sed -n 's/.*=> \(\/[^ ]*\) (0x.*/\1/p' <<<"$out"
              for n in "${!AGENT_PATHS[@]}"; do elf_libs "${AGENT_PATHS[$n]}"; done
            } | sort -u)
while IFS= read -r l; do [ -n "$l" ] && ELF_LIBS+=("$l"); done <<<"$ELF_LIST"
lib_package() {
    local p=$1 r owner
    r=$(readlink -f "$p")
    for cand in "$p" "$r" "${r#/usr}" "/usr$p"; do
        owner=$(dpkg -S "$cand" 2>/dev/null | sed -n 1p | sed 's/: .*//') && [ -n "$owner" ] && break
    done
    [ -n "$owner" ] || { echo "unknown unknown"; return; }
    echo "$owner $(dpkg-query -W -f '${Version}' "${owner%%,*}" 2>/dev/null || echo unknown)"
}

# ---------------------------------------------------------------------------------------------------
# Input hash: everything that can change the output.
sha() { sha256sum "$1" | cut -d' ' -f1; }
inputs() {
    echo "format 1"
    echo "source-date-epoch $SOURCE_DATE_EPOCH"
    echo "testfs $TESTFS_SIZE $TESTFS_UUID"
    echo "modules ${WANT_MODULES[*]} uml ${UML_WANT_MODULES[*]}"
    echo "script $(sha "${BASH_SOURCE[0]}")"
    (cd "$HERE/rootfs" && find . -type f | sort | while IFS= read -r f; do
        if [ -x "$f" ]; then mode=0755; else mode=0644; fi
        echo "rootfs $f $mode $(sha "$f")"
    done)
    for d in "$KMETA_DEB" "$KDEB" "$BB_DEB" "$QGA_DEB" "$UML_DEB" "$PASSWD_DEB"; do echo "deb $(basename "$d") $(sha "$d")"; done
    for l in "${ELF_LIBS[@]+"${ELF_LIBS[@]}"}"; do echo "lib $l $(sha "$l")"; done
    for n in $(printf '%s\n' "${!AGENT_PATHS[@]}" | sort); do echo "agent $n $(sha "${AGENT_PATHS[$n]}")"; done
    mkfs.ext4 -V 2>&1 | sed -n 1p
    cpio --version | sed -n 1p
    gzip --version | sed -n 1p
}
KEY=$(inputs | sha256sum | cut -d' ' -f1)
if [ "$FORCE" = 0 ] && [ -f "$OUT/inputs.sha256" ] && [ "$(cat "$OUT/inputs.sha256")" = "$KEY" ] &&
   [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/linux.uml" ] && [ -s "$OUT/initramfs.cpio.gz" ] &&
   [ -s "$OUT/manifest.txt" ]; then
    log "up to date: $OUT (inputs $KEY)"
    exit 0
fi

# ---------------------------------------------------------------------------------------------------
# Assemble the root filesystem.
STAGE=$(mktemp -d "$CACHE/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
R="$STAGE/root"
mkdir -p "$R"
for d in bin sbin usr/bin usr/sbin lib lib64 etc proc sys dev run tmp mnt/test root var \
         usr/share/virtagent-guest; do
    mkdir -p "$R/$d"
done
chmod 1777 "$R/tmp"
chmod 0700 "$R/root"
ln -s ../run "$R/var/run"
ln -s ../run/log "$R/var/log"

install -m 0755 "$BUSYBOX" "$R/bin/busybox"
while IFS= read -r applet; do
    [ -e "$R/$applet" ] || [ -L "$R/$applet" ] && continue
    mkdir -p "$R/$(dirname "$applet")"
    rel=$(realpath -m --relative-to="$R/$(dirname "$applet")" "$R/bin/busybox")
    ln -s "$rel" "$R/$applet"
done < <("$BUSYBOX" --list-full | sort)
ln -s bin/busybox "$R/init"

# The overlay (init scripts, /etc files); modes normalised to 0755/0644 whatever the checkout's umask.
while IFS= read -r f; do
    mkdir -p "$R/$(dirname "$f")"
    rm -f "$R/$f"
    if [ -x "$HERE/rootfs/$f" ]; then mode=0755; else mode=0644; fi
    install -m "$mode" "$HERE/rootfs/$f" "$R/$f"
done < <(cd "$HERE/rootfs" && find . -type f | sed 's#^\./##' | sort)

# /etc/shadow holds password hashes: not world-readable (the overlay is installed 0644).
chmod 0640 "$R/etc/shadow"
install -m 0755 "$QGA_BIN" "$R/usr/sbin/qemu-ga"
install -m 0755 "$CHPASSWD_BIN" "$R/usr/sbin/chpasswd"
for n in $(printf '%s\n' "${!AGENT_PATHS[@]}" | sort); do
    install -m 0755 "${AGENT_PATHS[$n]}" "$R/usr/bin/$n"
done
for l in "${ELF_LIBS[@]+"${ELF_LIBS[@]}"}"; do
    mkdir -p "$R$(dirname "$l")"
    cp -L "$l" "$R$l"
    chmod 0755 "$R$l"
done

# Modules per kernel release: /lib/modules/<release>/<name>.ko, load order in /etc/modules.order.<release>
# (the init picks the list of the running kernel).
install_modules() { # release items...
    local rel=$1 item m src
    shift
    mkdir -p "$R/lib/modules/$rel"
    : > "$R/etc/modules.order.$rel"
    for item in "$@"; do
        m=${item%% *} src=${item#* }
        case "$src" in
            *.xz) xz -dc "$src" > "$R/lib/modules/$rel/$m.ko" ;;
            *) cp "$src" "$R/lib/modules/$rel/$m.ko" ;;
        esac
        chmod 0644 "$R/lib/modules/$rel/$m.ko"
        echo "$m" >> "$R/etc/modules.order.$rel"
    done
}
install_modules "$KREL" "${K_ITEMS[@]}"
install_modules "$UML_REL" "${U_ITEMS[@]}"

# A small ext4 filesystem, loop-mounted by init at /mnt/test (fsfreeze needs a real filesystem).
# Empty (mkfs -d would record the staged files' ctimes); E2FSPROGS_FAKE_TIME, -U and hash_seed make
# it reproducible.
truncate -s "$TESTFS_SIZE" "$R/usr/share/virtagent-guest/testfs.ext4"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L testfs -U "$TESTFS_UUID" \
    -E "hash_seed=$TESTFS_UUID,root_owner=0:0" "$R/usr/share/virtagent-guest/testfs.ext4" >&2 ||
    die "mkfs.ext4 failed"
chmod 0644 "$R/usr/share/virtagent-guest/testfs.ext4"

AGENT_LIST="qemu-ga"
for n in $(printf '%s\n' "${!AGENT_PATHS[@]}" | sort); do AGENT_LIST="$AGENT_LIST $n"; done
echo "$AGENT_LIST" > "$R/etc/guest-agents"

# Fixed timestamps, then a sorted, owner-neutral newc archive.
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$R" && find . -mindepth 1 | sed 's#^\./##' | sort |
    cpio -o -H newc --reproducible -R 0:0 --quiet) | gzip -9 -n > "$STAGE/initramfs.cpio.gz"

# ---------------------------------------------------------------------------------------------------
# Manifest.
{
    echo "# virtagent guest image manifest (tests/guest-image/build.sh)"
    echo "inputs $KEY"
    echo "source-date-epoch $SOURCE_DATE_EPOCH"
    echo "kernel-release $KREL"
    echo "package $KERNEL_META $KMETA_VER"
    echo "package $KPKG $KVER"
    echo "package $BUSYBOX_PKG $BB_VER"
    echo "package $QGA_PKG $QGA_VER"
    echo "package $UML_PKG $UML_VER"
    echo "package $PASSWD_PKG $PASSWD_VER"
    echo "uml-kernel-release $UML_REL"
    for l in "${ELF_LIBS[@]+"${ELF_LIBS[@]}"}"; do echo "library $l $(lib_package "$l") $(sha "$l")"; done
    for n in $(printf '%s\n' "${!AGENT_PATHS[@]}" | sort); do
        kind=static
        readelf -l "${AGENT_PATHS[$n]}" 2>/dev/null | grep 'program interpreter' >/dev/null && kind=dynamic
        echo "agent $n /usr/bin/$n $kind $(sha "${AGENT_PATHS[$n]}")"
    done
    echo "agent qemu-ga /usr/sbin/qemu-ga dynamic $(sha "$QGA_BIN")"
    echo "modules-loaded $(printf '%s\n' "${K_ITEMS[@]}" | cut -d' ' -f1 | tr '\n' ' ' | sed 's/ $//')"
    echo "modules-builtin ${K_BUILTIN[*]+"${K_BUILTIN[*]}"}"
    echo "uml-modules-loaded $(printf '%s\n' "${U_ITEMS[@]}" | cut -d' ' -f1 | tr '\n' ' ' | sed 's/ $//')"
    echo "uml-modules-builtin ${U_BUILTIN[*]+"${U_BUILTIN[*]}"}"
    echo "vmlinuz $(sha "$VMLINUZ")"
    echo "linux.uml $(sha "$UML_BIN")"
    echo "initramfs $(sha "$STAGE/initramfs.cpio.gz")"
} > "$STAGE/manifest.txt"

# Replace each output atomically (a guest booting from an older build keeps its files); the input
# hash goes last, so an interrupted build is redone next time.
publish() { install -m 0644 "$1" "$OUT/.$2.tmp" && mv -f "$OUT/.$2.tmp" "$OUT/$2"; }
rm -f "$OUT/inputs.sha256"
publish "$VMLINUZ" vmlinuz
install -m 0755 "$UML_BIN" "$OUT/.linux.uml.tmp" && mv -f "$OUT/.linux.uml.tmp" "$OUT/linux.uml"
publish "$STAGE/initramfs.cpio.gz" initramfs.cpio.gz
publish "$STAGE/manifest.txt" manifest.txt
echo "$KEY" > "$STAGE/inputs.sha256"
publish "$STAGE/inputs.sha256" inputs.sha256
log "built $OUT (kernels $KREL and UML $UML_REL, agents: $AGENT_LIST, initramfs $(stat -c %s "$OUT/initramfs.cpio.gz") bytes)"
