//! A passed-through function (the fake VFIO device) under a hostile guest: configuration
//! reads and writes of every width (the emulated MSI capability among them), accesses to
//! every BAR (the emulated MSI-X table and PBA among them, in BAR 4 or in BAR 2) and the
//! device raising MSI and MSI-X vectors in between. Checks that a vector reaches its line
//! only while programmed, that the identity the guest reads never changes, that the device
//! never has two interrupt kinds on at once, and that it is wired to an eventfd for every
//! vector of the kind that is on.
//! Input: a byte of options (BAR 2 mappable, MSI, MSI-X, the table in BAR 2, sparse areas,
//! INTx), then 8-byte operations: kind, BAR or width, offset (2 bytes), value (4 bytes).
#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use devices::pci::PciDevice;
use hypervisor::{Event, MsiLine, MsiMessage};
use libfuzzer_sys::fuzz_target;
use vfio::device::{Stats, VfioPciDevice, Wiring};
use vfio::fake::{FakeDevice, FakeOptions};
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
    let Some((&options, data)) = data.split_first() else {
        return;
    };
    let bit = |n: u8| options & (1 << n) != 0;
    let o = FakeOptions {
        mappable: bit(0),
        msi: bit(1),
        msix: bit(2),
        msix_in_bar2: bit(3),
        sparse: bit(4),
        unmask_watcher: false,
    };
    let Ok((fake, handle)) = FakeDevice::with(o) else {
        return;
    };
    let mut backend: Box<dyn VfioBackend> = Box::new(fake);
    let Ok(probe) = VfioPciDevice::probe(&mut *backend, bit(5)) else {
        return;
    };
    let lines = |n: usize| -> Vec<Box<dyn MsiLine>> {
        (0..n)
            .map(|_| Box::new(Line(AtomicBool::new(false))) as Box<dyn MsiLine>)
            .collect()
    };
    let intx = bit(5).then(|| Some((20, Event::new().ok()?, Event::new().ok()?)));
    let wiring = Wiring {
        bar_addresses: vec![0xc000_0000, 0xc001_0000, 0xc002_0000],
        msix: lines(usize::from(probe.msix_vectors())),
        msi: lines(usize::from(probe.msi_vectors())),
        intx: intx.flatten(),
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
            2 | 3 => {
                // Inside the BAR: BAR 2 is 64 KiB, the others 4 KiB.
                let bar = [0, 2, 4][usize::from(op[1] >> 2) % 3];
                let size = if bar == 2 { 0x10000 } else { 0x1000 };
                let at = (offset % size).min(size - len as u64);
                if op[0] % 5 == 2 {
                    d.write_bar(bar, at, &bytes[..len]);
                } else {
                    d.read_bar(bar, at, &mut bytes[..len]);
                }
            }
            _ => {
                // The device raises a vector through the VMM's event.
                if let Some((v, e)) = events.get(usize::from(op[1]) % events.len().max(1)) {
                    let _ = e.signal();
                    d.serve_vector(*v);
                }
            }
        }
        handle.stats(|s| {
            let on = [s.intx.is_some(), s.msi.is_some(), s.msix.is_some()];
            assert!(on.iter().filter(|&&k| k).count() <= 1, "two kinds on: {on:?}");
            for fds in [&s.msix, &s.msi].into_iter().flatten() {
                assert!(fds.iter().all(Option::is_some), "a vector left unwired");
            }
        });
    }
    let mut b = [0; 4];
    d.read_config(0, &mut b);
    assert_eq!(b, id, "identity changed");
});
