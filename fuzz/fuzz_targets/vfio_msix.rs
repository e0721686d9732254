//! A passed-through function (the fake VFIO device) under a hostile guest: configuration
//! reads and writes of every width, accesses to every BAR (the emulated MSI-X table and PBA
//! among them) and the device raising vectors in between. Checks that a vector reaches its
//! line only while programmed, that the identity the guest reads never changes, and that
//! the device is wired to an eventfd for every vector while MSI-X is on.
//! Input: 8-byte operations: kind, BAR or width, offset (2 bytes), value (4 bytes).
#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use devices::pci::PciDevice;
use hypervisor::{MsiLine, MsiMessage};
use libfuzzer_sys::fuzz_target;
use vfio::device::{Stats, VfioPciDevice, Wiring};
use vfio::fake::FakeDevice;
use vfio::VfioBackend;

struct Line(AtomicBool);

impl MsiLine for Line {
    fn set_message(&self, m: Option<MsiMessage>) -> std::io::Result<()> {
        self.0.store(m.is_some(), Ordering::SeqCst);
        Ok(())
    }
    fn trigger(&self) -> std::io::Result<()> {
        assert!(self.0.load(Ordering::SeqCst), "fired unprogrammed");
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok((fake, handle)) = FakeDevice::new(data.first().is_some_and(|b| b & 1 == 1)) else {
        return;
    };
    let mut backend: Box<dyn VfioBackend> = Box::new(fake);
    let Ok(probe) = VfioPciDevice::probe(&mut *backend, false) else {
        return;
    };
    let wiring = Wiring {
        bar_addresses: vec![0xc000_0000, 0xc001_0000, 0xc002_0000],
        msi: (0..probe.msix_vectors())
            .map(|_| Box::new(Line(AtomicBool::new(false))) as Box<dyn MsiLine>)
            .collect(),
        intx: None,
        memory: None,
        ram: vec![],
        ram_owner: Box::new(()),
        stats: Arc::new(Stats::default()),
    };
    let mut d = VfioPciDevice::new("fuzz".into(), backend, probe, wiring).unwrap();
    let events = d.vector_events().unwrap();
    let id = {
        let mut b = [0; 4];
        d.read_config(0, &mut b);
        b
    };
    for op in data.chunks_exact(8) {
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let offset = u64::from(u16::from_le_bytes([op[2], op[3]]));
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&op[4..8]);
        match op[0] % 5 {
            0 => {
                let len = len.min(4);
                let at = (offset as usize % 4096) & !(len - 1);
                d.write_config(at, &bytes[..len]);
            }
            1 => {
                let len = len.min(4);
                let at = (offset as usize % 4096) & !(len - 1);
                d.read_config(at, &mut bytes[..len]);
            }
            2 => d.write_bar(
                [0, 2, 4][usize::from(op[1] >> 2) % 3],
                offset % 0x1000,
                &bytes[..len],
            ),
            3 => d.read_bar(
                [0, 2, 4][usize::from(op[1] >> 2) % 3],
                offset % 0x1000,
                &mut bytes[..len],
            ),
            _ => {
                // The device raises a vector through the VMM's event.
                if let Some((v, e)) = events.get(usize::from(op[1]) % events.len().max(1)) {
                    let _ = e.signal();
                    d.serve_vector(*v);
                }
            }
        }
        handle.stats(|s| {
            if let Some(fds) = &s.msix {
                assert!(fds.iter().all(Option::is_some), "a vector left unwired");
            }
        });
    }
    let mut b = [0; 4];
    d.read_config(0, &mut b);
    assert_eq!(b, id, "identity changed");
});
