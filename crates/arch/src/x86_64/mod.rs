//! x86_64 PC platform: memory map, Linux and PVH boot structures, MP table, CPUID and MSRs.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod emulator;
pub mod fixup;
pub mod gdt;
pub mod layout;
pub mod linear;
pub mod mmu;
pub mod mptable;
pub mod paging;
pub mod regs;

/// Errors while writing boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest memory too small for {what} at {addr:#x} ({len} bytes)")]
    GuestMemory {
        what: &'static str,
        addr: u64,
        len: usize,
    },
    #[error("{0} vCPUs do not fit in the MP table (at most {max})", max = mptable::MAX_CPUS)]
    TooManyCpus(u32),
    #[error("command line of {len} bytes is longer than the kernel accepts ({max})")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("initrd of {size} bytes does not fit in guest RAM below {limit:#x} (after the kernel, which ends at {kernel_end:#x})")]
    InitrdTooBig {
        size: u64,
        limit: u64,
        kernel_end: u64,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Writes `bytes` at `addr`, naming `what` in the error.
pub(crate) fn write_bytes(
    mem: &vm_memory::GuestMemoryMmap,
    addr: u64,
    bytes: &[u8],
    what: &'static str,
) -> Result<()> {
    use vm_memory::{Bytes, GuestAddress};
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|_| Error::GuestMemory {
            what,
            addr,
            len: bytes.len(),
        })
}
