#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: the README's test command and what CI runs.
#   1. cargo test: unit tests, and the tiny test guests booted on this machine's /dev/kvm
#   2. scripts/check-targets.sh: clippy and code generation for both Macs and arm64 Linux;
#      scripts/check-fuzz.sh: the fuzz targets still type-check
#   3. the slow tiers: Debian's Linux kernel booted under vibe-vmm (about a minute and a half
#      on this project's nested KVM), then the device tier (a tiny kernel built from Debian's
#      source drives every device: six boots, over mmio and pci; several minutes); skip both with
#      VIBE_SKIP_LINUX=1
# Under CI=true a missing /dev/kvm fails the KVM tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null || missing+=("$2"); }
missing=()
need cc gcc          # assembles the test guests
need lz4 lz4         # unpacks the Debian kernel for the slow tier
need dpkg-deb dpkg
need iasl acpica-tools  # decompiles the ACPI tables in a test
need dtc device-tree-compiler  # checks the arm64 device tree in a test
need mke2fs e2fsprogs  # the device tier's root image (mke2fs -d, e2fsck)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get install -y -qq "${missing[@]}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

cargo test --workspace
scripts/check-targets.sh
scripts/check-fuzz.sh
if [ "${VIBE_SKIP_LINUX:-0}" != 1 ]; then
    scripts/linux-guest.sh build/linux
    timeout 600 cargo test --release --test linux_boot -- --ignored --nocapture
    scripts/tiny-linux.sh   # cached under ~/.cache; a cold build takes 10-40 minutes here
    timeout 1800 cargo test --release --test linux_devices -- --ignored --nocapture --test-threads=1
fi
