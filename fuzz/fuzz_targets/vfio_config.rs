//! A passed-through function's configuration space, from both sides: a hostile device (its
//! own 4 KiB and region sizes are the input) and then a hostile guest (configuration writes
//! of every width anywhere). Checks that the rebuilt capability lists stay finite and inside
//! their space, that the header is never passed through, that the identity the guest reads
//! never changes, that MSI-X, when kept, lies inside a memory BAR, and that the emulated MSI
//! capability overlaps nothing kept.
//! Input: 4096 bytes of device configuration space, 6 region sizes (1 byte each: 0 none,
//! else 1 << n; the first one's low bit also offers INTx, its other bits the MSI vectors
//! VFIO offers), then 7-byte guest writes: width, offset (2 bytes), value (4 bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfio::config::{Offered, VirtConfig};

fn read(c: &VirtConfig, at: usize, len: usize) -> u32 {
    let mut b = [0u8; 4];
    c.shadow.read(at, &mut b[..len]);
    u32::from_le_bytes(b)
}

/// Walks both lists; panics if either loops or leaves its space.
fn check_lists(c: &VirtConfig) {
    let mut at = read(c, 0x34, 1) as usize;
    let mut steps = 0;
    while at != 0 {
        assert!((0x40..0x100).contains(&at) && at % 4 == 0, "cap at {at:#x}");
        steps += 1;
        assert!(steps <= 48, "capability list loops");
        at = read(c, at + 1, 1) as usize;
    }
    let mut at = 0x100;
    let mut steps = 0;
    loop {
        let h = read(c, at, 4);
        let next = (h >> 20) as usize;
        if next == 0 {
            break;
        }
        assert!(
            next > at && next % 4 == 0 && next < 4096,
            "ext cap next {next:#x}"
        );
        steps += 1;
        assert!(steps <= 1024);
        at = next;
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4096 + 6 {
        return;
    }
    let (raw, rest) = data.split_at(4096);
    let regions = std::array::from_fn(|i| match rest[i] {
        0 => None,
        n => Some(1u64 << (n % 41)),
    });
    let offered = Offered {
        intx: rest[0] & 1 == 1,
        msi: u32::from(rest[0] >> 1),
        msix: 64,
    };
    let mut c = VirtConfig::new(raw, regions, offered);
    assert!(
        (0..0x40).all(|o| !c.passthrough(o)),
        "header passed through"
    );
    if let Some(m) = c.msix {
        assert!(m.vectors >= 1 && m.vectors <= 64);
        for (bar, off, size) in [
            (m.table.0, m.table.1, m.table_size()),
            (m.pba.0, m.pba.1, m.pba_size()),
        ] {
            let b = c
                .bars
                .iter()
                .find(|b| b.index == bar)
                .expect("MSI-X in a BAR");
            assert!(!b.kind.is_io() && off + size <= b.region_size);
        }
    }
    if let Some(m) = c.msi {
        // Emulated where nothing kept lies: 24 bytes inside the list's space.
        assert!(m.vectors.is_power_of_two() && m.vectors <= 32);
        assert!(m.offset >= 0x40 && m.offset + 24 <= 0x100);
        assert!((m.offset..m.offset + 24).all(|o| !c.passthrough(o)));
        if let Some(x) = c.msix {
            assert!(m.offset + 24 <= x.offset || x.offset + 12 <= m.offset);
        }
    }
    check_lists(&c);
    let id = read(&c, 0, 4);
    let caps = read(&c, 0x34, 1);
    for op in rest[6..].chunks_exact(7) {
        let len = [1, 2, 4][usize::from(op[0] % 3)];
        let at = usize::from(u16::from_le_bytes([op[1], op[2]])) % 4096 & !(len - 1);
        c.shadow.write(at, &op[3..3 + len]);
    }
    assert_eq!(read(&c, 0, 4), id, "identity changed");
    assert_eq!(read(&c, 0x34, 1), caps, "capability pointer changed");
    check_lists(&c);
});
