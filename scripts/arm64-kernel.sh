#!/usr/bin/env bash
# Fetches Debian's arm64 Linux kernel and extracts its uncompressed Image, for the arm64
# loader test (and, on Apple Silicon, for booting): build/arm64/Image.
# Usage: scripts/arm64-kernel.sh [OUTDIR]      (needs apt-get; run as root or with sudo)
set -euo pipefail

OUT=${1:-build/arm64}
mkdir -p "$OUT/debs"
OUT=$(cd "$OUT" && pwd)
[ -s "$OUT/Image" ] && { ls -l "$OUT/Image"; exit 0; }
cd "$OUT/debs"

find_pkg() {
    apt-cache search --names-only '^linux-image-6\.1\.[0-9.]+-[0-9]+-arm64-unsigned$' \
        | awk '{print $1}' | sort -V | tail -1
}
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq
fi
pkg=$(find_pkg)
[ -n "$pkg" ] || { apt-get update -qq; pkg=$(find_pkg); }
[ -n "$pkg" ] || { echo "no linux-image-6.1.*-arm64-unsigned package found" >&2; exit 1; }
echo "kernel package: $pkg:arm64"
apt-get download "$pkg:arm64" >/dev/null
rm -rf kernel && dpkg-deb -x "$pkg"_*_arm64.deb kernel
vmlinuz=$(ls kernel/boot/vmlinuz-* | head -1)
# Debian's arm64 vmlinuz is a gzip-compressed Image.
if gzip -t "$vmlinuz" 2>/dev/null; then
    gzip -dc "$vmlinuz" > "$OUT/Image"
else
    cp "$vmlinuz" "$OUT/Image"
fi
echo "$pkg" > "$OUT/kernel-package"
ls -l "$OUT/Image"
