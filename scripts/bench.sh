#!/usr/bin/env bash
# Boot, memory and exit-rate benchmark against QEMU, measured in one run (see benches/boot.rs),
# then interrupt rates over virtio-mmio and virtio-pci (benches/interrupts.rs).
# With --linux, also a Linux boot under both VMMs (benches/linux_boot.rs): the device tier's
# tiny kernel to "Run /init", a few boots each (VIBE_BENCH_LINUX_RUNS, default 3), about a
# minute a boot on an idle 2-core nested-KVM machine, far longer on a loaded one; the kernel is
# built first if scripts/tiny-linux.sh has none cached (8-11 minutes).
# Usage: scripts/bench.sh [--linux]
set -euo pipefail
cd "$(dirname "$0")/.."
linux=false
case "${1:-}" in
    --linux) linux=true ;;
    "") ;;
    *) echo "usage: scripts/bench.sh [--linux]" >&2; exit 2 ;;
esac
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "installing qemu-system-x86 (the reference VMM)"
    apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null; }
fi
cargo bench --bench boot
cargo bench --bench interrupts
if $linux; then
    scripts/tiny-linux.sh
    cargo bench --bench linux_boot
fi
