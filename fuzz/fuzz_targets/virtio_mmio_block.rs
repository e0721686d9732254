//! virtio-mmio transport registers and the virtio-blk request path on a 32 KiB image.
#![no_main]

#[path = "harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("vibe-fuzz-{}.img", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, vec![0u8; 64 * 512]).unwrap();
    }
    let read_only = data.get(1).is_some_and(|b| b & 1 == 1);
    let blk = devices::virtio::block::Block::open(&path, read_only).unwrap();
    harness::run(Box::new(blk), data);
});
