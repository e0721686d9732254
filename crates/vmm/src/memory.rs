//! Guest RAM: allocated with `vm-memory` from the memory map's RAM ranges and registered with
//! the hypervisor as one slot per range.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::{Error, Result};

/// Total RAM of this host, from sysconf.
fn host_memory() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages.max(0) as u64).saturating_mul(size.max(0) as u64)
}

/// Allocates guest RAM of `size` bytes, laid out by the x86_64 memory map.
#[cfg(target_arch = "x86_64")]
pub fn allocate(size: u64) -> Result<GuestMemoryMmap> {
    use arch::x86_64::layout;
    allocate_ranges(size, layout::MIN_RAM, layout::ram_ranges)
}

/// Allocates guest RAM of `size` (at least `min`) bytes in the ranges `ranges(size)` gives.
pub(crate) fn allocate_ranges(
    size: u64,
    min: u64,
    ranges: impl FnOnce(u64) -> Vec<(u64, u64)>,
) -> Result<GuestMemoryMmap> {
    check_size(size, min)?;
    let ranges: Vec<(GuestAddress, usize)> = ranges(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::AllocateMemory {
        size,
        reason: e.to_string(),
    })
}

/// Whether guest RAM of `size` bytes can be given: at least `min`, no more than this host
/// has, whole 4 KiB pages. A restored snapshot's RAM is checked the same way.
pub(crate) fn check_size(size: u64, min: u64) -> Result<()> {
    if size < min {
        return Err(Error::MemoryTooSmall { size, min });
    }
    let host = host_memory();
    if host != 0 && size > host {
        return Err(Error::MemoryTooBig { size, host });
    }
    if !size.is_multiple_of(4096) {
        return Err(Error::AllocateMemory {
            size,
            reason: "size must be a multiple of 4 KiB".into(),
        });
    }
    Ok(())
}

/// Registers every region of `mem` with the VM, one slot each.
pub fn register<V: hypervisor::Vm>(vm: &V, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let hva = region.as_ptr() as u64;
        // SAFETY: `mem` is kept alive by the Vm for as long as the hypervisor VM exists.
        unsafe { vm.map_memory(slot as u32, region.start_addr().0, region.len(), hva) }?;
    }
    Ok(())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_sizes() {
        assert!(matches!(allocate(0), Err(Error::MemoryTooSmall { .. })));
        assert!(matches!(
            allocate(1 << 20),
            Err(Error::MemoryTooSmall { .. })
        ));
        assert!(matches!(
            allocate(u64::MAX / 2),
            Err(Error::MemoryTooBig { .. })
        ));
        assert!(matches!(
            allocate((4 << 20) + 1),
            Err(Error::AllocateMemory { .. })
        ));
        let m = allocate(16 << 20).unwrap();
        assert_eq!(m.num_regions(), 1);
    }
}
