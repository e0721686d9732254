//! The MSI-X table and pending bits as a driver (or a hostile guest) programs them, with
//! the device raising vectors in between: aligned and misaligned table and PBA accesses of
//! every width, message control changes, triggers of any vector. Checks that a vector
//! delivered only while enabled and unmasked, and that the PBA only names real vectors.
//! Then the same operations as configuration writes into an MSI capability and triggers.
//! Input: 7-byte operations: kind, offset (2 bytes), value (4 bytes).
#![no_main]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use devices::pci::config::{Identity, PciConfig};
use devices::pci::msi::{self, Msi};
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

fn lines(n: usize, fired: &Arc<AtomicUsize>) -> Vec<Box<dyn MsiLine>> {
    (0..n)
        .map(|_| {
            Box::new(Line {
                programmed: AtomicBool::new(false),
                fired: fired.clone(),
            }) as Box<dyn MsiLine>
        })
        .collect()
}

/// MSI through configuration space: writes anywhere in the capability, triggers.
fn msi_ops(data: &[u8]) {
    let fired = Arc::new(AtomicUsize::new(0));
    let mut m = Msi::new(lines(4, &fired));
    let mut config = PciConfig::new(Identity {
        vendor: 1,
        device: 2,
        revision: 0,
        class: 0,
        subsystem_vendor: 0,
        subsystem: 0,
    });
    let (cap, writable) = m.capability();
    let at = config.add_capability(&cap, &writable);
    for op in data.chunks_exact(7) {
        let offset = usize::from(op[1]) % msi::CAPABILITY_SIZE;
        let width = [1usize, 2, 4, 4][usize::from(op[0] >> 6)];
        if op[0] & 1 == 0 {
            config.write(at + offset, &op[3..3 + width]);
            m.update(config.bytes(at, msi::CAPABILITY_SIZE));
        } else {
            let before = fired.load(Ordering::SeqCst);
            m.trigger(usize::from(op[3]));
            if !m.enabled() {
                assert_eq!(
                    fired.load(Ordering::SeqCst),
                    before,
                    "delivered while disabled"
                );
            }
        }
        assert_eq!(m.pending() >> 4, 0, "pending bit past the vectors");
    }
}

fuzz_target!(|data: &[u8]| {
    msi_ops(data);
    let fired = Arc::new(AtomicUsize::new(0));
    let mut m = Msix::new(lines(VECTORS, &fired));
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
        assert_eq!(
            u64::from_le_bytes(pba) >> VECTORS,
            0,
            "pending bit past the table"
        );
    }
});
