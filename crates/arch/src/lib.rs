//! Guest platform set-up for each architecture: the guest-physical memory map, boot structures
//! written into guest memory, and the initial CPU register values. This crate computes and
//! writes; it never runs a vCPU or calls the hypervisor.

/// Portable: compiled on every host, so it is tested here.
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// Shorthands for sizes.
pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Where a virtio-mmio device is: its window and interrupt line (an x86 GSI, or an arm64 GIC
/// INTID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

impl VirtioMmioSlot {
    /// The kernel command-line form, for kernels built with VIRTIO_MMIO_CMDLINE_DEVICES.
    pub fn cmdline(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size >> 10,
            self.base,
            self.gsi
        )
    }
}
