//! The PCI bus as a guest reaches it: configuration cycles through ports 0xcf8/0xcfc and
//! ECAM (every offset, size and value, BAR programming sequences included), accesses in the
//! BAR window wherever the BARs were moved to, and a virtio-pci block device behind it whose
//! queues run after every access. Input layout:
//!
//!   9 x N      accesses: kind (bits 0-1 ports / ECAM / BAR window / port window, bit 2
//!              write, bits 3-4 width 1/2/4/8), offset (4 bytes, within the method's range),
//!              value (4 bytes)
//!   the rest   after a 0xff 0xff marker: guest memory from address 0 (rings, buffers)
#![no_main]

use std::sync::{Arc, Mutex};

use devices::pci::host_bridge::HostBridge;
use devices::pci::root::{BarWindow, ConfigPorts, Ecam};
use devices::pci::{BarKind, PciRoot, PciWindows};
use devices::virtio::pci::{PciWiring, VirtioPciDevice, BAR_SIZE};
use devices::virtio::VirtioTransport;
use devices::BusDevice;
use hypervisor::{IrqLine, MsiLine, MsiMessage};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x10000;
const WINDOWS: PciWindows = PciWindows {
    mmio: (0xc000_0000, 0x1000_0000),
    io: (0x1000, 0xf000),
};

struct NoIrq;
impl IrqLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}
impl MsiLine for NoIrq {
    fn set_message(&self, _: Option<MsiMessage>) -> std::io::Result<()> {
        Ok(())
    }
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let (ops, image) = match data.windows(2).position(|w| w == [0xff, 0xff]) {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&image[..image.len().min(MEM_SIZE)], GuestAddress(0))
        .unwrap();
    let path = std::env::temp_dir().join(format!("vibe-fuzz-pci-{}.img", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, vec![0u8; 64 * 512]).unwrap();
    }
    let blk = devices::virtio::block::Block::open(&path, false).unwrap();
    let mut root = PciRoot::new(WINDOWS);
    root.add(0, Arc::new(Mutex::new(HostBridge::new())))
        .unwrap();
    let kind = BarKind::Memory64 {
        prefetchable: false,
    };
    let vectors = VirtioPciDevice::msix_vectors(&blk);
    let wiring = PciWiring {
        bar_base: root.allocate_bar(kind, BAR_SIZE).unwrap(),
        msi: (0..vectors)
            .map(|_| Box::new(NoIrq) as Box<dyn MsiLine>)
            .collect(),
        intx: Box::new(NoIrq),
        intx_line: 21,
        notify_binding: None,
    };
    let dev = Arc::new(Mutex::new(
        VirtioPciDevice::new(Box::new(blk), mem, wiring).unwrap(),
    ));
    root.add(1, dev.clone()).unwrap();
    let root = root.into_shared();
    let mut ports = ConfigPorts(root.clone());
    let mut ecam = Ecam(root.clone());
    let mut mmio = BarWindow {
        root: root.clone(),
        io: false,
        base: WINDOWS.mmio.0,
    };
    let mut pio = BarWindow {
        root,
        io: true,
        base: WINDOWS.io.0,
    };
    for op in ops.chunks_exact(9) {
        let width = 1usize << ((op[0] >> 3) & 3);
        let offset = u64::from(u32::from_le_bytes([op[1], op[2], op[3], op[4]]));
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[5..9]);
        value[4..].copy_from_slice(&op[5..9]);
        let (target, offset): (&mut dyn BusDevice, u64) = match op[0] & 3 {
            0 => (&mut ports, offset % 8),
            1 => (&mut ecam, offset % 0x1000_0000),
            2 => (&mut mmio, offset % WINDOWS.mmio.1),
            _ => (&mut pio, offset % WINDOWS.io.1),
        };
        if op[0] & 4 != 0 {
            target.write(offset, &value[..width]);
        } else {
            target.read(offset, &mut value[..width]);
        }
        let mut d = devices::lock(&dev);
        d.process_queue(0);
    }
});
