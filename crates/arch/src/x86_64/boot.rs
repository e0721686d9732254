//! Boot information handed to the kernel: the Linux zero page (`boot_params`) for the 64-bit
//! boot protocol, or `hvm_start_info` for PVH, each with an e820 map derived from
//! [`layout::memory_map`], plus command-line and initrd placement.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::layout::{self, RegionKind};
use super::{write_bytes, Error, Result};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Without a header saying otherwise, an initrd must end below this (boot protocol 2.02).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// One e820 entry: what the guest is told about a range of its physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map for `ram_size` bytes of RAM: usable RAM and the reserved ranges, in order.
pub fn e820_map(ram_size: u64) -> Vec<E820Entry> {
    layout::memory_map(ram_size)
        .iter()
        .filter_map(|r| {
            let kind = match r.kind {
                RegionKind::Ram => E820_RAM,
                RegionKind::Reserved | RegionKind::ReservedMmio => E820_RESERVED,
                RegionKind::Mmio => return None,
            };
            Some(E820Entry {
                addr: r.start,
                size: r.size,
                kind,
            })
        })
        .collect()
}

/// Where the kernel's initrd goes: page-aligned, as high as allowed, above the kernel.
pub fn initrd_address(
    ram_size: u64,
    kernel_end: u64,
    initrd_size: u64,
    header: Option<&setup_header>,
) -> Result<u64> {
    let max = header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let limit = ram_size.min(layout::RAM_LOW_END).min(max + 1);
    let too_big = Error::InitrdTooBig {
        size: initrd_size,
        limit,
        kernel_end,
    };
    let start = limit.checked_sub(initrd_size).ok_or(too_big)? & !0xfff;
    if start < kernel_end.max(layout::HIMEM_START) {
        return Err(Error::InitrdTooBig {
            size: initrd_size,
            limit,
            kernel_end,
        });
    }
    Ok(start)
}

/// Writes the command line (NUL-terminated) at `layout::CMDLINE_START`.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max_len: usize) -> Result<()> {
    let max = max_len.min(layout::CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    write_bytes(mem, layout::CMDLINE_START, &bytes, "kernel command line")
}

/// What every boot protocol needs to know about the loaded pieces.
pub struct BootInfo<'a> {
    pub ram_size: u64,
    pub cmdline_len: usize,
    /// (guest address, size)
    pub initrd: Option<(u64, u64)>,
    /// The bzImage setup header, when the kernel was a bzImage.
    pub setup_header: Option<&'a setup_header>,
    /// Where the ACPI RSDP is, when the VM has ACPI tables.
    pub rsdp: Option<u64>,
}

/// Writes the zero page for the Linux 64-bit boot protocol; the kernel finds it through RSI.
pub fn write_zero_page(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<()> {
    let mut params = boot_params::default();
    if let Some(h) = info.setup_header {
        params.hdr = *h;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    // Callers bound the length (`write_cmdline`); saturate rather than wrap if one did not.
    params.hdr.cmdline_size = u32::try_from(info.cmdline_len.saturating_add(1)).unwrap_or(u32::MAX);
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = info.rsdp.unwrap_or(0);
    let map = e820_map(info.ram_size);
    if map.len() > params.e820_table.len() {
        return Err(Error::GuestMemory {
            what: "e820 table",
            addr: layout::ZERO_PAGE_START,
            len: map.len(),
        });
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    write_bytes(mem, layout::ZERO_PAGE_START, params.as_slice(), "zero page")
}

/// Writes `hvm_start_info`, its memory map and module list for the PVH boot protocol; the
/// kernel finds it through EBX.
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<()> {
    let map = e820_map(info.ram_size);
    let mut addr = layout::PVH_MEMMAP_START;
    for e in &map {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        write_bytes(mem, addr, entry.as_slice(), "PVH memory map")?;
        addr += std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    }
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        rsdp_paddr: info.rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some((paddr, size)) = info.initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        write_bytes(mem, addr, module.as_slice(), "PVH module list")?;
        start.nr_modules = 1;
        start.modlist_paddr = addr;
    }
    write_bytes(
        mem,
        layout::PVH_INFO_START,
        start.as_slice(),
        "PVH start info",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GIB, MIB};

    #[test]
    fn e820_lists_all_ram_and_nothing_else_usable() {
        for ram in [16 * MIB, 3 * GIB, 5 * GIB] {
            let map = e820_map(ram);
            let usable: u64 = map
                .iter()
                .filter(|e| e.kind == E820_RAM)
                .map(|e| e.size)
                .sum();
            // The EBDA, legacy hole and BIOS area are backed but not usable.
            assert_eq!(usable, ram - (layout::HIMEM_START - layout::EBDA_START));
            assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
        }
    }

    #[test]
    fn e820_reserves_ecam_and_leaves_the_pci_mmio_window_free() {
        for ram in [16 * MIB, 3 * GIB, 5 * GIB] {
            let map = e820_map(ram);
            assert!(map.contains(&E820Entry {
                addr: layout::PCIE_ECAM_START,
                size: layout::PCIE_ECAM_SIZE,
                kind: E820_RESERVED,
            }));
            let pci = layout::PCI_MMIO_START..layout::PCI_MMIO_START + layout::PCI_MMIO_SIZE;
            assert!(map
                .iter()
                .all(|e| e.addr + e.size <= pci.start || e.addr >= pci.end));
        }
    }

    #[test]
    fn initrd_goes_high_and_refuses_to_overlap_the_kernel() {
        let a = initrd_address(64 * MIB, 2 * MIB, 1 << 20, None).unwrap();
        assert_eq!(a, 63 * MIB);
        assert!(initrd_address(64 * MIB, 60 * MIB, 8 * MIB, None).is_err());
        assert!(initrd_address(64 * MIB, 2 * MIB, 128 * MIB, None).is_err());
    }
}
