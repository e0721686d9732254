#!/bin/sh
# The linker for x86_64 Linux (.cargo/config.toml): `cc` as rustc calls it, except that the
# vibe-vmm binary itself is linked as a static PIE.
#
# Why: a dynamically linked VMM maps glibc's 2 MB of code and the kernel fills in a whole
# 64 KiB fault-around window of it around every function the VMM calls, plus ld.so's pages;
# measured here that is about 0.9 MiB of the VMM's 3 MiB peak resident memory. Statically,
# only the few libc functions it calls are in the binary. Every crate is compiled as usual
# (rustc's `+crt-static` would have to be set for proc-macro crates too, which cannot be
# static); only the final link changes, and only for the vibe-vmm binary: its dynamic libc
# and libgcc_s become libc.a and libgcc_eh.a (libc6-dev and gcc, which linking needs anyway).
out=""
prev=""
for a in "$@"; do
    [ "$prev" = "-o" ] && out=$a
    prev=$a
done
case "$out" in
*/deps/vibe_vmm-*) ;;
*) exec cc "$@" ;;
esac
for a in "$@"; do
    shift
    case "$a" in
    -pie) set -- "$@" -static-pie ;;
    -lgcc_s) set -- "$@" -lgcc_eh ;;
    -Wl,-Bdynamic) set -- "$@" -Wl,-Bstatic ;;
    *) set -- "$@" "$a" ;;
    esac
done
exec cc "$@"
