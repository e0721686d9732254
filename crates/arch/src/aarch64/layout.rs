//! The arm64 guest-physical memory map, in the shape of QEMU's `virt` machine: devices in the
//! first GiB, RAM from 1 GiB.
//!
//! ```text
//! 0x0800_0000 .. 0x0801_0000   GICv3 distributor (64 KiB)
//! 0x080a_0000 ..               GICv3 redistributors, 128 KiB per vCPU (up to 0x0900_0000)
//! 0x0900_0000 .. 0x0900_1000   UART (16550-compatible, "ns16550a")
//! 0x0a00_0000 .. 0x0a10_0000   virtio-mmio windows, 4 KiB each
//! 0x0b00_0000 .. 0x0b00_1000   MMIO console
//! 0x4000_0000 ..               RAM
//! ```

use crate::{GIB, KIB, MIB};

pub const GIC_DIST_START: u64 = 0x0800_0000;
pub const GIC_DIST_SIZE: u64 = 64 * KIB;
pub const GIC_REDIST_START: u64 = 0x080a_0000;
/// Each vCPU's redistributor: an RD and an SGI frame of 64 KiB each.
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 128 * KIB;
pub const UART_START: u64 = 0x0900_0000;
pub const UART_SIZE: u64 = 4 * KIB;
pub const VIRTIO_MMIO_START: u64 = 0x0a00_0000;
pub const VIRTIO_MMIO_SIZE: u64 = MIB;
pub const MMIO_WINDOW_SIZE: u64 = 4 * KIB;
pub const MMIO_CONSOLE_START: u64 = 0x0b00_0000;
pub const RAM_START: u64 = GIB;

/// The most vCPUs whose redistributors fit below the UART.
pub const MAX_CPUS: u32 = ((UART_START - GIC_REDIST_START) / GIC_REDIST_SIZE_PER_CPU) as u32;

/// GIC interrupt numbering: SPIs start at 32; PPIs are 16..32.
pub const SPI_BASE: u32 = 32;
/// The UART's SPI (as an index from 32, the way the device tree counts them).
pub const UART_SPI: u32 = 1;
/// virtio-mmio device `n` uses SPI `VIRTIO_SPI_START + n`.
pub const VIRTIO_SPI_START: u32 = 16;

/// Architected timer PPIs (as indices from 16): secure, non-secure, virtual, hypervisor.
pub const TIMER_PPI_SECURE: u32 = 13;
pub const TIMER_PPI_NONSECURE: u32 = 14;
pub const TIMER_PPI_VIRTUAL: u32 = 11;
pub const TIMER_PPI_HYP: u32 = 10;

pub const fn virtio_mmio_window(n: u64) -> u64 {
    VIRTIO_MMIO_START + n * MMIO_WINDOW_SIZE
}

/// Virtio-mmio device `n`'s window and interrupt line (a GIC INTID).
pub const fn virtio_slot(n: u32) -> crate::VirtioMmioSlot {
    crate::VirtioMmioSlot {
        base: virtio_mmio_window(n as u64),
        size: MMIO_WINDOW_SIZE,
        gsi: SPI_BASE + VIRTIO_SPI_START + n,
    }
}

/// The most virtio-mmio devices: one window each, and SPIs up to the GIC's 1020.
pub const MAX_VIRTIO_DEVICES: u32 = (VIRTIO_MMIO_SIZE / MMIO_WINDOW_SIZE) as u32;

pub const fn gic_redist_size(cpus: u32) -> u64 {
    cpus as u64 * GIC_REDIST_SIZE_PER_CPU
}

/// (name, start, size) of every region for `cpus` vCPUs, `ram` bytes of RAM and `virtio`
/// virtio-mmio devices, sorted by address.
pub fn regions(cpus: u32, ram: u64, virtio: u32) -> Vec<(&'static str, u64, u64)> {
    vec![
        ("GIC distributor", GIC_DIST_START, GIC_DIST_SIZE),
        (
            "GIC redistributors",
            GIC_REDIST_START,
            gic_redist_size(cpus),
        ),
        ("UART", UART_START, UART_SIZE),
        (
            "virtio-mmio",
            VIRTIO_MMIO_START,
            u64::from(virtio) * MMIO_WINDOW_SIZE,
        ),
        ("MMIO console", MMIO_CONSOLE_START, MMIO_WINDOW_SIZE),
        ("RAM", RAM_START, ram),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_never_overlap() {
        for cpus in [1, 2, 8, MAX_CPUS] {
            for ram in [64 * MIB, GIB, 16 * GIB] {
                let r = regions(cpus, ram, (VIRTIO_MMIO_SIZE / MMIO_WINDOW_SIZE) as u32);
                for w in r.windows(2) {
                    assert!(w[0].1 + w[0].2 <= w[1].1, "{:?} overlaps {:?}", w[0], w[1]);
                }
            }
        }
        const { assert!(MAX_CPUS >= 64) };
    }
}
