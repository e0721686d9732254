//! Device back ends driven through their virtio queues directly (no vCPU), against the raw
//! system calls on the same file or TAP, measured in one run and printed as ratios.
//!
//! - virtio-blk: 4 KiB random reads, 128 KiB sequential reads and writes on a 1 GiB image,
//!   against `pread`/`pwrite` of the same sizes into a plain buffer, the two sides taking turns
//!   a tenth of the requests at a time. The raw side's offsets are the device's, half the run
//!   later: reading the very pages the device just read found the kernel's bookkeeping for
//!   them still in the CPU caches.
//! - virtio-net: 64-byte frames transmitted to a TAP, against `write` of the same frames to
//!   the same TAP (needs root to create the TAP; skipped with a reason otherwise).
//!
//! Run with `cargo bench -p devices --bench backends`. Environment: `VIBE_BENCH_IMAGE_MB`
//! shrinks the image, `VIBE_BENCH_ONLY_4K` runs only the cached 4 KiB case (both for profiling
//! under valgrind), `VIBE_BENCH_NO_IO_URING` makes the device use pread/pwrite only.

//!
//! Linux only (TAP devices, `posix_fadvise`); elsewhere it says so and exits.

#[cfg(target_os = "linux")]
#[path = "backends/linux.rs"]
mod linux;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    eprintln!("SKIPPED: the device back-end benchmark needs Linux (TAP devices, posix_fadvise)");
}
