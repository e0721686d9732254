#!/usr/bin/env bash
# Type-checks, lints and code-generates the whole workspace for the platforms this machine
# cannot run: both Macs (Hypervisor.framework) and arm64 Linux. Linking needs Apple's SDK or
# an arm64 sysroot, so a stand-in linker (`true`) takes its place: everything up to the link
# runs, nothing is linked or executed. scripts/test.sh runs this on every CI run.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(aarch64-apple-darwin x86_64-apple-darwin aarch64-unknown-linux-gnu)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

# rustc asks xcrun for the macOS SDK before linking; an empty stand-in keeps it quiet.
fake_sdk=target/stand-in/MacOSX.sdk
mkdir -p "$fake_sdk"

for t in "${targets[@]}"; do
    start=$SECONDS
    linker_var="CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$t")_LINKER"
    # clippy type-checks every target of every crate and fails on any warning.
    cargo clippy --quiet --workspace --all-targets --target "$t" -- -D warnings
    env "$linker_var=true" SDKROOT="$PWD/$fake_sdk" \
        cargo build --quiet --workspace --all-targets --target "$t"
    echo "check-targets: $t: clippy and build (no link) clean in $((SECONDS - start)) s"
done
