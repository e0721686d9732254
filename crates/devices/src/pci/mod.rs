//! PCI: segment 0, bus 0, behind a host bridge, reached through configuration ports
//! 0xcf8/0xcfc and an ECAM window ([`root`]).
//!
//! A function implements [`PciDevice`]: configuration space reads and writes, the BARs it
//! decodes now, and accesses inside them. Emulated functions keep their registers in a
//! [`config::PciConfig`]; a passed-through one would forward to the real device. The bus does
//! not care which: it routes configuration cycles by device number and BAR accesses by
//! address, and tells a function when the guest moved one of its BARs.

pub mod config;
pub mod host_bridge;
pub mod msi;
pub mod msix;
pub mod root;

pub use root::{PciRoot, PciWindows};

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Memory32 {
        prefetchable: bool,
    },
    /// Takes two BAR registers: this one and the next, the upper half of the address.
    Memory64 {
        prefetchable: bool,
    },
}

impl BarKind {
    pub fn is_io(self) -> bool {
        self == BarKind::Io
    }
}

/// A base address register: which (0-5), what it decodes, where, and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub index: u8,
    pub kind: BarKind,
    pub base: u64,
    pub size: u64,
}

/// A PCI function on the bus.
pub trait PciDevice: Send {
    /// Reads configuration space: `offset` < 4096, `data` 1, 2 or 4 bytes, naturally aligned.
    fn read_config(&mut self, offset: usize, data: &mut [u8]);
    /// Writes configuration space (same rules as reads); read-only bits stay as they are.
    fn write_config(&mut self, offset: usize, data: &[u8]);
    /// The BARs the function decodes now (enabled in its command register), with their
    /// programmed addresses. The bus routes only those lying inside its windows.
    fn decoded_bars(&self) -> Vec<Bar>;
    /// An access at `offset` in BAR `bar`: 1, 2, 4 or 8 bytes, never past its end.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]);
    /// BAR `bar` stopped (`from`) or started (`to`) decoding exclusively at an address: alone
    /// there, so the function may bind hypervisor-side state to it (ioeventfds, mapped
    /// memory), and must drop such state on a stop. One of the two is `None`: a move is a stop,
    /// then a start. While a BAR overlaps another its accesses trap and the bus routes them.
    fn bar_moved(&mut self, _bar: u8, _from: Option<u64>, _to: Option<u64>) {}
}
