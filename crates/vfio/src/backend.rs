//! The kernel boundary: what a passed-through PCI function asks of VFIO, as one trait.
//!
//! [`VfioBackend`] is implemented by [`crate::linux::HostDevice`] over the VFIO ioctls (a
//! container, its group and the device, through rust-vmm's `vfio-ioctls`) and by
//! [`crate::fake::FakeDevice`] in tests, a device standing in for the ioctls. Everything
//! above it ([`crate::device::VfioPciDevice`]) runs unchanged on either.

use std::io;
use std::os::fd::RawFd;

/// VFIO's region indices for a PCI function (`VFIO_PCI_*_REGION_INDEX`).
pub const BAR_REGIONS: u32 = 6;
pub const ROM_REGION: u32 = 6;
pub const CONFIG_REGION: u32 = 7;

/// One region of the device: a BAR, the ROM, or configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionInfo {
    pub size: u64,
    /// The region may be mapped into this process ([`VfioBackend::mmap`]), so guest accesses
    /// need not trap.
    pub mmap: bool,
}

/// The interrupts a function offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqInfo {
    /// Whether it has an INTx pin VFIO can signal.
    pub intx: bool,
    /// MSI-X vectors (0: none).
    pub msix: u32,
}

/// A host PCI function opened for passthrough.
pub trait VfioBackend: Send {
    /// Region `index` ([`BAR_REGIONS`], [`ROM_REGION`], [`CONFIG_REGION`]); `None` if the
    /// device has none there (an unused BAR).
    fn region(&self, index: u32) -> Option<RegionInfo>;
    fn irqs(&self) -> IrqInfo;
    /// Reads `data.len()` bytes at `offset` in region `index`.
    fn read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()>;
    fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Maps region `index` into this process; returns its host address. The mapping lives as
    /// long as the backend.
    fn mmap(&mut self, index: u32) -> io::Result<u64>;
    /// Sets what MSI-X vector `vector` signals, from `vector` on (`fds[i]` for vector
    /// `first + i`); `None` leaves a vector unsignalled. The first call enables MSI-X on the
    /// device (INTx off).
    fn set_msix(&mut self, first: u32, fds: &[Option<RawFd>]) -> io::Result<()>;
    /// Turns MSI-X off.
    fn disable_msix(&mut self) -> io::Result<()>;
    /// INTx: `trigger` is signalled when the device raises its pin, after which VFIO masks it
    /// until `unmask` is signalled (the guest's EOI, through KVM's resample). `None` turns
    /// INTx off.
    fn set_intx(&mut self, fds: Option<(RawFd, RawFd)>) -> io::Result<()>;
    /// Resets the function (on VM start and stop).
    fn reset(&mut self) -> io::Result<()>;
    /// Lets the device reach `size` bytes at host address `hva` as bus address `iova`
    /// (guest-physical: the guest programs its DMA with guest addresses).
    fn dma_map(&mut self, iova: u64, size: u64, hva: u64) -> io::Result<()>;
    fn dma_unmap(&mut self, iova: u64, size: u64) -> io::Result<()>;
}
