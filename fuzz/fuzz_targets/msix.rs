//! The MSI-X table and pending bits as a driver (or a hostile guest) programs them, with
//! the device raising vectors in between: aligned and misaligned table and PBA accesses of
//! every width, message control changes, triggers of any vector. Checks that a vector
//! delivered only while enabled and unmasked, and that the PBA only names real vectors.
//! Input: 7-byte operations: kind, offset (2 bytes), value (4 bytes).
#![no_main]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use devices::pci::msix::Msix;
use hypervisor::{MsiLine, MsiMessage};
use libfuzzer_sys::fuzz_target;

const VECTORS: usize = 5;

/// Counts deliveries; a delivery without a message is a bug.
struct Line {
    programmed: AtomicBool,
    fired: Arc<AtomicUsize>,
}

impl MsiLine for Line {
    fn set_message(&self, m: Option<MsiMessage>) -> std::io::Result<()> {
        self.programmed.store(m.is_some(), Ordering::SeqCst);
        Ok(())
    }
    fn trigger(&self) -> std::io::Result<()> {
        assert!(self.programmed.load(Ordering::SeqCst), "fired unprogrammed");
        self.fired.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let fired = Arc::new(AtomicUsize::new(0));
    let lines = (0..VECTORS)
        .map(|_| {
            Box::new(Line {
                programmed: AtomicBool::new(false),
                fired: fired.clone(),
            }) as Box<dyn MsiLine>
        })
        .collect();
    let mut m = Msix::new(lines);
    let mut control = 0u16;
    for op in data.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let value = [op[3], op[4], op[5], op[6], op[3], op[4], op[5], op[6]];
        let width = [1usize, 2, 4, 8][usize::from(op[0] >> 6)];
        match op[0] & 7 {
            0 => m.write_table(offset, &value[..width]),
            1 => m.read_table(offset, &mut [0u8; 8][..width]),
            2 => m.read_pba(offset, &mut [0u8; 8][..width]),
            3 => {
                control = u16::from_le_bytes([op[3], op[4]]);
                m.set_control(control);
            }
            _ => {
                let before = fired.load(Ordering::SeqCst);
                m.trigger(u16::from(op[3]));
                let delivered = fired.load(Ordering::SeqCst) > before;
                if control & 0x8000 == 0 || control & 0x4000 != 0 {
                    assert!(!delivered, "delivered while disabled or function-masked");
                }
            }
        }
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba) >> VECTORS, 0, "pending bit past the table");
    }
});
