#!/usr/bin/env bash
# Builds the tiny Linux guest of the device tier (tests/linux_devices.rs): Debian's unmodified
# linux-source-6.1, `make tinyconfig` plus scripts/tiny-linux.config, as an uncompressed vmlinux
# (ELF with a PVH entry note).
#
# The kernel is cached outside the checkout, keyed by a hash of the fragment and the source
# package's version, and rebuilt only when one of them changes:
#   ${VIBE_CACHE:-~/.cache/vibe-vmm}/tiny-linux/<key>/vmlinux   (and its .config)
#   build/tiny-linux/vmlinux                                   a copy, where the tests look
# Objects are kept per source version, so a changed fragment rebuilds incrementally.
# Usage: scripts/tiny-linux.sh     (needs apt-get; run as root or with sudo)
# Env: JOBS (make -j, default 2), VIBE_CACHE (cache root).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
fragment=$repo/scripts/tiny-linux.config
jobs=${JOBS:-2}

# Build packages: the source itself, and what a kernel build runs.
need=()
dpkg-query -W -f='${Status}' linux-source-6.1 2>/dev/null | grep -q 'ok installed' || need+=(linux-source-6.1)
for tool in gcc:gcc make:make flex:flex bison:bison bc:bc xz:xz-utils perl:perl; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
[ -e /usr/include/libelf.h ] || need+=(libelf-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }
    apt_get install -y -qq "${need[@]}" >/dev/null || { apt_get update -qq && apt_get install -y -qq "${need[@]}" >/dev/null; }
fi

version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( (echo "linux-source-6.1 $version"; cat "$fragment") | sha256sum | cut -c1-16)
cache=${VIBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vibe-vmm}/tiny-linux
out=$cache/$key
mkdir -p "$cache" build/tiny-linux

publish() { # copy the cached kernel to where the tests look, unless it is already there
    cmp -s "$out/vmlinux" build/tiny-linux/vmlinux || cp "$out/vmlinux" build/tiny-linux/vmlinux
    cp "$out/config" build/tiny-linux/config
    echo "$key" > build/tiny-linux/key
    ls -l build/tiny-linux/vmlinux
}
if [ -s "$out/vmlinux" ]; then
    echo "tiny kernel: cached in $out"
    publish
    exit 0
fi

# One build at a time per cache (two test runs may start together).
exec 9>"$cache/lock"
flock 9
if [ -s "$out/vmlinux" ]; then publish; exit 0; fi

src=$cache/src-$version
if [ ! -e "$src/.complete" ]; then
    echo "unpacking linux-source-6.1 $version"
    rm -rf "$src" && mkdir -p "$src"
    tar -C "$src" -xJf /usr/src/linux-source-6.1.tar.xz
    touch "$src/.complete"
fi
tree=$src/linux-source-6.1
obj=$cache/obj-$version
mkdir -p "$obj"

start=$(date +%s)
make -s -C "$tree" O="$obj" tinyconfig >/dev/null
"$tree/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment" >/dev/null
make -s -C "$tree" O="$obj" olddefconfig >/dev/null
# Kconfig drops an option whose dependencies are not met without a word: say which ones.
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) grep -qxF "$line" "$obj/.config" || { echo "fragment option not in .config: $line" >&2; missing=1; } ;;
        "# CONFIG_"*" is not set")
            name=${line#\# }; name=${name%% *}
            ! grep -q "^$name=" "$obj/.config" || { echo "fragment option still set: $name" >&2; missing=1; } ;;
    esac
done < "$fragment"
[ $missing = 0 ] || exit 1

echo "building vmlinux with make -j$jobs (about 10 minutes on 2 cores)"
nice -n 19 make -s -C "$tree" O="$obj" -j"$jobs" vmlinux
mkdir -p "$out"
cp "$obj/.config" "$out/config"
cp "$obj/vmlinux" "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
echo "tiny kernel built in $(( $(date +%s) - start )) s: $out"
publish
