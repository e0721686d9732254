//! The pure virtio-blk request parser: any descriptor list, any header bytes.
#![no_main]

use devices::virtio::block::request::{parse, Desc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (header, rest) = data.split_at(data.len().min(16));
    let mut h = [0u8; 16];
    h[..header.len()].copy_from_slice(header);
    let descs: Vec<Desc> = rest
        .chunks_exact(13)
        .map(|c| Desc {
            addr: u64::from_le_bytes(c[..8].try_into().unwrap()),
            len: u32::from_le_bytes(c[8..12].try_into().unwrap()),
            write_only: c[12] & 1 == 1,
        })
        .collect();
    if let Ok(req) = parse(&descs, |_| Some(h)) {
        let _ = req.in_range(u64::from(h[0]) << 20);
        assert_eq!(
            req.data_len,
            req.data.iter().map(|d| u64::from(d.len)).sum::<u64>()
        );
    }
});
