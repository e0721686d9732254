//! Walking the guest's page tables: linear address -> guest-physical address, the way the CPU
//! does it, for a VMM that must read the instruction at RIP or the operand of an MMIO access
//! itself (the HVF x86 backend; KVM does it in the kernel).
//!
//! Supports no paging (real mode or paging off), 32-bit paging (4 KiB and, with CR4.PSE,
//! 4 MiB pages), PAE (4 KiB and 2 MiB), and 4-level long mode (4 KiB, 2 MiB, 1 GiB). 5-level
//! paging is refused. A failed walk reports why and where (the level and the entry's address)
//! instead of guessing.

use super::regs::{CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const PAGE_SIZE: u64 = 1 << 7;
const NX: u64 = 1 << 63;
/// Physical-address bits of an entry in PAE and long mode (bits 12..52).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The control registers that decide how a walk goes, and the one CPU feature that does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagingRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// The guest's CPUID has 1 GiB pages (PDPE1GB); without it a large-page bit in a PDPT
    /// entry is reserved.
    pub gb_pages: bool,
}

impl PagingRegs {
    /// The paging state of a vCPU's special registers.
    pub fn new(s: &hypervisor::x86_64::SpecialRegs, gb_pages: bool) -> Self {
        PagingRegs {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            gb_pages,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Execute,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("page not present (level {level}, entry at {entry:#x})")]
    NotPresent { level: u8, entry: u64 },
    #[error("write to a read-only page (level {level})")]
    WriteProtected { level: u8 },
    #[error("user access to a supervisor page (level {level})")]
    Supervisor { level: u8 },
    #[error("instruction fetch from a no-execute page (level {level})")]
    NoExecute { level: u8 },
    #[error("linear address {0:#x} is not canonical")]
    NonCanonical(u64),
    #[error("page-table entry at {0:#x} is not in guest memory")]
    Unreadable(u64),
    #[error("reserved bit set in a page-table entry (level {level})")]
    Reserved { level: u8 },
    #[error("5-level paging is not supported")]
    FiveLevel,
}

/// Reads a guest-physical u64 (or u32 for 32-bit paging): how the walker sees guest memory.
pub trait PhysRead {
    fn read_u64(&self, gpa: u64) -> Option<u64>;
    fn read_u32(&self, gpa: u64) -> Option<u32> {
        self.read_u64(gpa).map(|v| v as u32)
    }
}

impl PhysRead for vm_memory::GuestMemoryMmap {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        use vm_memory::Bytes;
        self.read_obj::<u64>(vm_memory::GuestAddress(gpa)).ok()
    }
    fn read_u32(&self, gpa: u64) -> Option<u32> {
        use vm_memory::Bytes;
        self.read_obj::<u32>(vm_memory::GuestAddress(gpa)).ok()
    }
}

/// Rights accumulated down the walk: a page is writable or user only if every level says so.
struct Rights {
    writable: bool,
    user: bool,
    executable: bool,
}

impl Rights {
    fn add(&mut self, entry: u64, nx_enabled: bool) {
        self.writable &= entry & WRITABLE != 0;
        self.user &= entry & USER != 0;
        self.executable &= !(nx_enabled && entry & NX != 0);
    }

    fn check(
        &self,
        regs: &PagingRegs,
        access: Access,
        cpl: u8,
        level: u8,
    ) -> Result<(), WalkError> {
        let user = cpl == 3;
        if user && !self.user {
            return Err(WalkError::Supervisor { level });
        }
        // Supervisor writes ignore R/W unless CR0.WP.
        if access == Access::Write && !self.writable && (user || regs.cr0 & CR0_WP != 0) {
            return Err(WalkError::WriteProtected { level });
        }
        if access == Access::Execute && !self.executable {
            return Err(WalkError::NoExecute { level });
        }
        Ok(())
    }
}

/// Walks 512-entry tables of 8-byte entries from `table` (at level `top`) down: long mode from
/// the PML4 (level 4), PAE from a page directory (level 2).
fn walk_64bit(
    mem: &impl PhysRead,
    regs: &PagingRegs,
    mut table: u64,
    top: u8,
    linear: u64,
    (access, cpl): (Access, u8),
    mut rights: Rights,
) -> Result<u64, WalkError> {
    let nx = regs.efer & EFER_NXE != 0;
    for level in (1..=top).rev() {
        let shift = 12 + 9 * (u32::from(level) - 1);
        let entry_addr = table + ((linear >> shift) & 0x1ff) * 8;
        let entry = mem
            .read_u64(entry_addr)
            .ok_or(WalkError::Unreadable(entry_addr))?;
        if entry & PRESENT == 0 {
            return Err(WalkError::NotPresent {
                level,
                entry: entry_addr,
            });
        }
        rights.add(entry, nx);
        if level == 3 && entry & PAGE_SIZE != 0 && !regs.gb_pages {
            return Err(WalkError::Reserved { level });
        }
        // The last level, or a large page: 1 GiB at level 3, 2 MiB at level 2.
        if level == 1 || (level <= 3 && entry & PAGE_SIZE != 0) {
            rights.check(regs, access, cpl, level)?;
            let page = 1u64 << shift;
            return Ok((entry & ADDR_MASK & !(page - 1)) | (linear & (page - 1)));
        }
        table = entry & ADDR_MASK;
    }
    Err(WalkError::NotPresent {
        level: 0,
        entry: table,
    })
}

/// Translates `linear` for an `access` at privilege `cpl`.
pub fn translate(
    mem: &impl PhysRead,
    regs: &PagingRegs,
    linear: u64,
    access: Access,
    cpl: u8,
) -> Result<u64, WalkError> {
    if regs.cr0 & CR0_PG == 0 {
        return Ok(linear);
    }
    let mut rights = Rights {
        writable: true,
        user: true,
        executable: true,
    };
    if regs.efer & EFER_LMA != 0 {
        if regs.cr4 & CR4_LA57 != 0 {
            return Err(WalkError::FiveLevel);
        }
        // Bits 63..47 must all equal bit 47.
        let top = linear >> 47;
        if top != 0 && top != 0x1_ffff {
            return Err(WalkError::NonCanonical(linear));
        }
        return walk_64bit(
            mem,
            regs,
            regs.cr3 & ADDR_MASK,
            4,
            linear,
            (access, cpl),
            rights,
        );
    }
    let linear = linear & 0xffff_ffff;
    if regs.cr4 & CR4_PAE != 0 {
        // PAE: a 4-entry PDPT at CR3 (32-byte aligned), then two 512-entry levels.
        let pdpte_addr = (regs.cr3 & 0xffff_ffe0) + (linear >> 30) * 8;
        let pdpte = mem
            .read_u64(pdpte_addr)
            .ok_or(WalkError::Unreadable(pdpte_addr))?;
        if pdpte & PRESENT == 0 {
            return Err(WalkError::NotPresent {
                level: 3,
                entry: pdpte_addr,
            });
        }
        return walk_64bit(
            mem,
            regs,
            pdpte & ADDR_MASK,
            2,
            linear,
            (access, cpl),
            rights,
        );
    }
    // 32-bit paging: two 1024-entry levels of 4-byte entries; no NX.
    let pde_addr = (regs.cr3 & 0xffff_f000) + (linear >> 22) * 4;
    let pde = u64::from(
        mem.read_u32(pde_addr)
            .ok_or(WalkError::Unreadable(pde_addr))?,
    );
    if pde & PRESENT == 0 {
        return Err(WalkError::NotPresent {
            level: 2,
            entry: pde_addr,
        });
    }
    rights.add(pde, false);
    if regs.cr4 & CR4_PSE != 0 && pde & PAGE_SIZE != 0 {
        rights.check(regs, access, cpl, 2)?;
        // 4 MiB page: bits 31..22, plus bits 39..32 from PDE bits 20..13.
        let base = (pde & 0xffc0_0000) | ((pde >> 13) & 0xff) << 32;
        return Ok(base | (linear & 0x3f_ffff));
    }
    let pte_addr = (pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4;
    let pte = u64::from(
        mem.read_u32(pte_addr)
            .ok_or(WalkError::Unreadable(pte_addr))?,
    );
    if pte & PRESENT == 0 {
        return Err(WalkError::NotPresent {
            level: 1,
            entry: pte_addr,
        });
    }
    rights.add(pte, false);
    rights.check(regs, access, cpl, 1)?;
    Ok((pte & 0xffff_f000) | (linear & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Sparse guest memory of 8-byte (or 4-byte) entries.
    #[derive(Default)]
    struct Mem(HashMap<u64, u64>);
    impl PhysRead for Mem {
        fn read_u64(&self, gpa: u64) -> Option<u64> {
            Some(*self.0.get(&gpa).unwrap_or(&0))
        }
        fn read_u32(&self, gpa: u64) -> Option<u32> {
            Some(*self.0.get(&gpa).unwrap_or(&0) as u32)
        }
    }

    const P: u64 = PRESENT;
    const RW: u64 = WRITABLE;
    const US: u64 = USER;

    fn long_mode() -> PagingRegs {
        PagingRegs {
            cr0: CR0_PG | CR0_WP | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | EFER_NXE | (1 << 8),
            gb_pages: true,
        }
    }

    #[test]
    fn paging_off_is_identity() {
        let regs = PagingRegs::default();
        assert_eq!(
            translate(&Mem::default(), &regs, 0x1234_5678, Access::Read, 0),
            Ok(0x1234_5678)
        );
    }

    #[test]
    fn four_level_with_every_page_size() {
        let mut m = Mem::default();
        // PML4[0] -> PDPT at 0x2000; PDPT[0] -> PD at 0x3000; PD[1] -> PT at 0x4000.
        m.0.insert(0x1000, 0x2000 | P | RW | US);
        m.0.insert(0x2000, 0x3000 | P | RW | US);
        m.0.insert(0x3000 + 8, 0x4000 | P | RW | US);
        m.0.insert(0x4000 + 5 * 8, 0xabc_d000 | P | RW | US); // 4 KiB: linear 0x205000
        m.0.insert(0x3000 + 2 * 8, 0x4060_0000 | P | RW | PAGE_SIZE); // 2 MiB: 0x400000
        m.0.insert(0x2000 + 8, 0x8000_0000 | P | PAGE_SIZE | NX); // 1 GiB, read-only, NX
        let r = long_mode();
        assert_eq!(
            translate(&m, &r, 0x20_5abc, Access::Read, 0),
            Ok(0xabc_dabc)
        );
        assert_eq!(
            translate(&m, &r, 0x41_2345, Access::Write, 0),
            Ok(0x4061_2345)
        );
        assert_eq!(
            translate(&m, &r, 0x4123_4567, Access::Read, 0),
            Ok(0x8123_4567)
        );
        // Faults, with where.
        assert_eq!(
            translate(&m, &r, 0x4123_4567, Access::Write, 0),
            Err(WalkError::WriteProtected { level: 3 })
        );
        assert_eq!(
            translate(&m, &r, 0x4123_4567, Access::Execute, 0),
            Err(WalkError::NoExecute { level: 3 })
        );
        assert_eq!(
            translate(&m, &r, 0x41_2345, Access::Read, 3),
            Err(WalkError::Supervisor { level: 2 })
        );
        assert_eq!(
            translate(&m, &r, 0x20_6000, Access::Read, 0),
            Err(WalkError::NotPresent {
                level: 1,
                entry: 0x4030
            })
        );
        assert_eq!(
            translate(&m, &r, 0x0000_8000_0000_0000, Access::Read, 0),
            Err(WalkError::NonCanonical(0x8000_0000_0000))
        );
        // Supervisor writes ignore R/W when CR0.WP is clear.
        let no_wp = PagingRegs {
            cr0: r.cr0 & !CR0_WP,
            ..r
        };
        assert_eq!(
            translate(&m, &no_wp, 0x4123_4567, Access::Write, 0),
            Ok(0x8123_4567)
        );
        let la57 = PagingRegs {
            cr4: r.cr4 | CR4_LA57,
            ..r
        };
        assert_eq!(
            translate(&m, &la57, 0, Access::Read, 0),
            Err(WalkError::FiveLevel)
        );
    }

    #[test]
    fn pae_and_32_bit() {
        let mut m = Mem::default();
        // PAE: PDPT at 0x1000 (index 1 covers 1-2 GiB), PD at 0x2000, 2 MiB page and a PT.
        m.0.insert(0x1000 + 8, 0x2000 | P);
        m.0.insert(0x2000 + 3 * 8, 0x60_0000 | P | RW | PAGE_SIZE);
        m.0.insert(0x2000 + 4 * 8, 0x3000 | P | RW);
        m.0.insert(0x3000 + 7 * 8, 0x9000 | P | RW);
        let pae = PagingRegs {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            ..Default::default()
        };
        assert_eq!(
            translate(&m, &pae, 0x4061_0000, Access::Read, 0),
            Ok(0x61_0000)
        );
        assert_eq!(
            translate(&m, &pae, 0x4080_7123, Access::Write, 0),
            Ok(0x9123)
        );
        let mut m32 = Mem::default();
        // 32-bit: PD at 0x5000; PDE 1 -> PT at 0x6000; PDE 2 is a 4 MiB page (with PSE).
        m32.0.insert(0x5000 + 4, 0x6000 | P | RW);
        m32.0.insert(0x6000 + 3 * 4, 0x7000 | P);
        m32.0.insert(
            0x5000 + 2 * 4,
            0x0c00_0000 | P | RW | PAGE_SIZE | (0x12 << 13),
        );
        let r32 = PagingRegs {
            cr0: CR0_PG | CR0_WP | 1,
            cr3: 0x5000,
            cr4: CR4_PSE,
            ..Default::default()
        };
        assert_eq!(
            translate(&m32, &r32, 0x40_3456, Access::Read, 0),
            Ok(0x7456)
        );
        assert_eq!(
            translate(&m32, &r32, 0x40_3456, Access::Write, 0),
            Err(WalkError::WriteProtected { level: 1 })
        );
        assert_eq!(
            translate(&m32, &r32, 0x80_1234, Access::Read, 0),
            Ok(0x12_0c00_1234)
        );
        assert_eq!(
            translate(&m32, &r32, 0xc0_0000, Access::Read, 0),
            Err(WalkError::NotPresent {
                level: 2,
                entry: 0x500c
            })
        );
    }
}
