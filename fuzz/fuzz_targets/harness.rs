//! Shared by the virtio-mmio fuzz targets. Input layout:
//!
//!   byte 0     bit 7: first bring the device up like a driver would (features, queues of 8
//!              entries with their rings at fixed addresses in the image, DRIVER_OK);
//!              bits 0-5: how many register accesses follow
//!   7 x N      register accesses: kind (bit 0 write; bits 1-2 width 1/2/4/8), offset (2 bytes),
//!              value (4 bytes)
//!   the rest   guest memory from address 0: descriptor tables, rings and buffers, all
//!              guest-controlled
//!
//! After the bring-up and after every access each queue is processed, as the event loop
//! would after a notification.

use devices::virtio::mmio::*;
use devices::virtio::{VirtioDevice, VirtioTransport};
use devices::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MEM_SIZE: usize = 0x10000;

struct NoIrq;
impl hypervisor::IrqLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn w(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn bring_up(t: &mut MmioTransport, queues: usize) {
    w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
    w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    for sel in 0..2 {
        let mut f = [0u8; 4];
        w(t, REG_DEVICE_FEATURES_SEL, sel);
        t.read(REG_DEVICE_FEATURES, &mut f);
        w(t, REG_DRIVER_FEATURES_SEL, sel);
        w(t, REG_DRIVER_FEATURES, u32::from_le_bytes(f));
    }
    w(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    for q in 0..queues as u32 {
        let base = q * 0x400;
        w(t, REG_QUEUE_SEL, q);
        w(t, REG_QUEUE_NUM, 8);
        w(t, REG_QUEUE_DESC_LOW, base);
        w(t, REG_QUEUE_DRIVER_LOW, base + 0x200);
        w(t, REG_QUEUE_DEVICE_LOW, base + 0x300);
        w(t, REG_QUEUE_READY, 1);
    }
    w(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
}

pub fn run(device: Box<dyn VirtioDevice>, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ops_len = (usize::from(mode & 0x3f) * 7).min(rest.len());
    let (ops, image) = rest.split_at(ops_len);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&image[..image.len().min(MEM_SIZE)], GuestAddress(0))
        .unwrap();
    let queues = device.queue_max_sizes().len();
    let mut t = MmioTransport::new(device, mem, Box::new(NoIrq)).unwrap();
    let process = |t: &mut MmioTransport| {
        for q in 0..queues {
            t.process_queue(q);
        }
    };
    if mode & 0x80 != 0 {
        bring_up(&mut t, queues);
        process(&mut t);
    }
    for op in ops.chunks_exact(7) {
        let width = 1usize << ((op[0] >> 1) & 3);
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) & 0x1ff;
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[3..7]);
        if op[0] & 1 == 1 {
            t.write(offset, &value[..width]);
        } else {
            t.read(offset, &mut value[..width]);
        }
        process(&mut t);
    }
}
