#!/usr/bin/env bash
# Boot, memory and exit-rate benchmark against QEMU, measured in one run (see benches/boot.rs),
# then interrupt rates over virtio-mmio and virtio-pci (benches/interrupts.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "installing qemu-system-x86 (the reference VMM)"
    apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null; }
fi
cargo bench --bench boot
cargo bench --bench interrupts
