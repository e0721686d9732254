#!/usr/bin/env bash
# Builds a real Linux guest from Debian packages, for the slow boot tier and for trying
# vibe-vmm by hand:
#   build/linux/vmlinux          the uncompressed ELF kernel (PVH entry) of Debian's 6.1 cloud kernel
#   build/linux/initramfs.cpio   a busybox initramfs whose /init prints a banner and powers off
# Usage: scripts/linux-guest.sh [OUTDIR]      (needs apt-get; run as root or with sudo)
set -euo pipefail

OUT=${1:-build/linux}
mkdir -p "$OUT/debs"
OUT=$(cd "$OUT" && pwd)
cd "$OUT/debs"

fetch() { # fetch PACKAGE: apt-get download, refreshing the package lists once if needed
    apt-get download "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$1"; }
}

if [ ! -s "$OUT/vmlinux" ]; then
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9.]+-[0-9]+-cloud-amd64-unsigned$' \
          | awk '{print $1}' | sort -V | tail -1)
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9.]+-[0-9]+-cloud-amd64-unsigned$' \
              | awk '{print $1}' | sort -V | tail -1)
    fi
    [ -n "$pkg" ] || { echo "no linux-image-6.1.*-cloud-amd64-unsigned package found" >&2; exit 1; }
    echo "kernel package: $pkg"
    fetch "$pkg"
    rm -rf kernel && dpkg-deb -x "$pkg"_*.deb kernel
    vmlinuz=$(ls kernel/boot/vmlinuz-* | head -1)
    # The bzImage payload is LZ4 (legacy frame, magic 02 21 4c 18): cut from the magic on and
    # decompress; lz4 stops at the end of the stream and complains about the trailer.
    command -v lz4 >/dev/null || apt-get install -y -qq lz4 >/dev/null
    offset=$(grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | head -1 | cut -d: -f1)
    [ -n "$offset" ] || { echo "no LZ4 payload in $vmlinuz" >&2; exit 1; }
    tail -c +$((offset + 1)) "$vmlinuz" | lz4 -dc > "$OUT/vmlinux.tmp" 2>/dev/null || true
    head -c 4 "$OUT/vmlinux.tmp" | grep -q ELF || { echo "extracted kernel is not an ELF" >&2; exit 1; }
    mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
    echo "$pkg" > "$OUT/kernel-package"
fi

if [ ! -s "$OUT/initramfs.cpio" ]; then
    fetch busybox-static
    rm -rf busybox root && dpkg-deb -x busybox-static_*.deb busybox
    mkdir -p root/bin root/proc root/sys root/dev
    cp busybox/bin/busybox root/bin/busybox
    for applet in sh mount echo cat poweroff reboot uname ls; do ln -sf busybox "root/bin/$applet"; done
    cat > root/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "vibe-vmm linux guest: $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPUs"
cat /proc/cmdline
# On real hardware this drops to a shell; `poweroff -f` ends the VM.
[ -e /dev/console ] && exec sh </dev/console >/dev/console 2>&1
exec sh
INIT
    chmod +x root/init
    (cd root && find . | ../busybox/bin/busybox cpio -o -H newc > "$OUT/initramfs.cpio" 2>/dev/null)
fi
ls -l "$OUT/vmlinux" "$OUT/initramfs.cpio"
