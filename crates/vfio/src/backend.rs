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
    /// The region, or parts of it ([`VfioBackend::mmap_areas`]), may be mapped into this
    /// process ([`VfioBackend::mmap`]), so guest accesses there need not trap.
    pub mmap: bool,
}

/// The interrupts a function offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqInfo {
    /// Whether it has an INTx pin VFIO can signal.
    pub intx: bool,
    /// MSI vectors (0: none).
    pub msi: u32,
    /// MSI-X vectors (0: none).
    pub msix: u32,
}

/// Which message-signalled interrupts (VFIO_PCI_MSI_IRQ_INDEX or VFIO_PCI_MSIX_IRQ_INDEX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiKind {
    Msi,
    Msix,
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
    /// The parts of region `index` that may be mapped, as (offset, size): the whole region
    /// when it maps, the areas of its sparse-mmap capability when only those do
    /// (VFIO_REGION_INFO_CAP_SPARSE_MMAP: typically all but the MSI-X table's pages), none
    /// when it must trap.
    fn mmap_areas(&self, index: u32) -> Vec<(u64, u64)> {
        match self.region(index) {
            Some(r) if r.mmap => vec![(0, r.size)],
            _ => Vec::new(),
        }
    }
    /// Maps `size` bytes at `offset` of region `index` (one of its
    /// [`VfioBackend::mmap_areas`]) into this process; returns the host address. The mapping
    /// lives as long as the backend.
    fn mmap(&mut self, index: u32, offset: u64, size: u64) -> io::Result<u64>;
    /// Sets what MSI or MSI-X vectors signal, from `first` on (`fds[i]` for vector
    /// `first + i`); `None` leaves a vector unsignalled. The first call after the kind was
    /// off enables it on the device with `fds.len()` vectors (one kind at a time: the caller
    /// turns INTx and the other kind off first, as vfio-pci requires).
    fn set_vectors(&mut self, kind: MsiKind, first: u32, fds: &[Option<RawFd>]) -> io::Result<()>;
    /// Turns MSI or MSI-X off.
    fn disable_vectors(&mut self, kind: MsiKind) -> io::Result<()>;
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
