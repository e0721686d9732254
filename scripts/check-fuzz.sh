#!/usr/bin/env bash
# Type-checks the fuzz crate (fuzz/, outside the workspace) with the ordinary toolchain, so
# its targets cannot rot: no nightly, no cargo-fuzz. Running them is scripts/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo check --quiet --locked --manifest-path fuzz/Cargo.toml --bins
echo "check-fuzz: $(grep -c '^\[\[bin\]\]' fuzz/Cargo.toml) fuzz targets type-check"
