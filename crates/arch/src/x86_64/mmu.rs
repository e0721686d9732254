//! Walking the guest's page tables: linear address -> guest-physical address, the way the CPU
//! does it, for a VMM that must read the instruction at RIP or the operand of an MMIO access
//! itself (the HVF x86 backend; KVM does it in the kernel).
//!
//! Supports no paging (real mode or paging off), 32-bit paging (4 KiB and, with CR4.PSE,
//! 4 MiB pages), PAE (4 KiB and 2 MiB), and 4-level long mode (4 KiB, 2 MiB, 1 GiB). 5-level
//! paging is refused. Access rights are checked as the CPU checks them (Intel SDM vol. 3,
//! 4.6): who accesses ([`Mode`]: user, supervisor with RFLAGS.AC, or the CPU's own implicit
//! supervisor accesses), CR0.WP, CR4.SMEP, CR4.SMAP and EFER.NXE. A failed walk reports why and
//! where, and [`page_fault_code`] gives the #PF error code the CPU would push for it.

use super::regs::{
    CR0_PE, CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_NXE,
    RFLAGS_AC, RFLAGS_VM,
};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const PAGE_SIZE: u64 = 1 << 7;
const NX: u64 = 1 << 63;
/// Physical-address bits of an entry in PAE and long mode (bits 12..52).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// #PF error code bits (SDM vol. 3, 4.7).
pub const PF_PRESENT: u32 = 1;
pub const PF_WRITE: u32 = 1 << 1;
pub const PF_USER: u32 = 1 << 2;
pub const PF_RESERVED: u32 = 1 << 3;
pub const PF_FETCH: u32 = 1 << 4;

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

    /// Whether linear addresses are 64 bits wide (IA-32e mode) rather than 32.
    pub fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Execute,
}

/// Who makes an access: the rights checked differ for user code, for supervisor code, and for
/// the CPU's own supervisor accesses (descriptor tables, the TSS), which SMAP always covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An access by code at CPL 3.
    User,
    /// An explicit access by code at CPL 0-2; `ac` is RFLAGS.AC, which lifts SMAP.
    Supervisor { ac: bool },
    /// An implicit supervisor-mode access, at any CPL.
    Implicit,
}

impl Mode {
    /// The mode of the explicit accesses of code at `cpl`, with `rflags`.
    pub fn explicit(cpl: u8, rflags: u64) -> Self {
        match cpl {
            3 => Mode::User,
            _ => Mode::Supervisor {
                ac: rflags & RFLAGS_AC != 0,
            },
        }
    }
}

/// The current privilege level of a vCPU: 0 in real mode, 3 in virtual-8086 mode, else the
/// DPL of SS (which VMX and SVM keep equal to CPL; CS.DPL is not, for conforming code).
pub fn cpl(s: &hypervisor::x86_64::SpecialRegs, rflags: u64) -> u8 {
    if s.cr0 & CR0_PE == 0 {
        0
    } else if rflags & RFLAGS_VM != 0 && s.efer & EFER_LMA == 0 {
        3
    } else {
        s.ss.dpl & 3
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("page not present (level {level}, entry at {entry:#x})")]
    NotPresent { level: u8, entry: u64 },
    #[error("write to a read-only page (level {level})")]
    WriteProtected { level: u8 },
    #[error("user access to a supervisor page (level {level})")]
    Supervisor { level: u8 },
    #[error("supervisor data access to a user page with SMAP on (level {level})")]
    Smap { level: u8 },
    #[error("supervisor instruction fetch from a user page with SMEP on (level {level})")]
    Smep { level: u8 },
    #[error("instruction fetch from a no-execute page (level {level})")]
    NoExecute { level: u8 },
    #[error("linear address {0:#x} is not canonical")]
    NonCanonical(u64),
    /// Not RAM: the read finds an open bus, all ones, which sets reserved bits.
    #[error("page-table entry at {0:#x} is not in guest memory")]
    Unreadable(u64),
    #[error("reserved bit set in a page-table entry (level {level})")]
    Reserved { level: u8 },
    #[error("5-level paging is not supported")]
    FiveLevel,
}

/// The #PF error code the CPU pushes when an `access` in `mode` fails with `e`; `None` where
/// the failure is no page fault (a non-canonical address is #GP or #SS; 5-level paging is
/// this walker's limit, not the guest's fault).
pub fn page_fault_code(
    e: &WalkError,
    regs: &PagingRegs,
    access: Access,
    mode: Mode,
) -> Option<u32> {
    let mut code = match e {
        WalkError::NotPresent { .. } => 0,
        WalkError::Reserved { .. } | WalkError::Unreadable(_) => PF_PRESENT | PF_RESERVED,
        WalkError::WriteProtected { .. }
        | WalkError::Supervisor { .. }
        | WalkError::Smap { .. }
        | WalkError::Smep { .. }
        | WalkError::NoExecute { .. } => PF_PRESENT,
        WalkError::NonCanonical(_) | WalkError::FiveLevel => return None,
    };
    if access == Access::Write {
        code |= PF_WRITE;
    }
    if mode == Mode::User {
        code |= PF_USER;
    }
    // I/D is set only where fetches are checked: with SMEP, or with NX in PAE/long mode.
    let nx = regs.cr4 & CR4_PAE != 0 && regs.efer & EFER_NXE != 0;
    if access == Access::Execute && (regs.cr4 & CR4_SMEP != 0 || nx) {
        code |= PF_FETCH;
    }
    Some(code)
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

    /// SDM vol. 3, 4.6.1, in its order: privilege, then write, then execute.
    fn check(
        &self,
        regs: &PagingRegs,
        access: Access,
        mode: Mode,
        level: u8,
    ) -> Result<(), WalkError> {
        match mode {
            Mode::User if !self.user => return Err(WalkError::Supervisor { level }),
            Mode::User => {}
            Mode::Supervisor { .. } | Mode::Implicit if self.user => {
                let ac = mode == Mode::Supervisor { ac: true };
                if access == Access::Execute && regs.cr4 & CR4_SMEP != 0 {
                    return Err(WalkError::Smep { level });
                }
                if access != Access::Execute && regs.cr4 & CR4_SMAP != 0 && !ac {
                    return Err(WalkError::Smap { level });
                }
            }
            Mode::Supervisor { .. } | Mode::Implicit => {}
        }
        // Supervisor writes ignore R/W unless CR0.WP.
        let wp = mode == Mode::User || regs.cr0 & CR0_WP != 0;
        if access == Access::Write && !self.writable && wp {
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
    (access, mode): (Access, Mode),
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
        // Without EFER.NXE bit 63 is reserved; a PML4 entry has no page-size bit.
        let large_reserved = match level {
            4 => true,
            3 => !regs.gb_pages,
            _ => false,
        };
        if (!nx && entry & NX != 0) || (large_reserved && entry & PAGE_SIZE != 0) {
            return Err(WalkError::Reserved { level });
        }
        rights.add(entry, nx);
        // The last level, or a large page: 1 GiB at level 3, 2 MiB at level 2.
        if level == 1 || (level <= 3 && entry & PAGE_SIZE != 0) {
            rights.check(regs, access, mode, level)?;
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

/// Translates `linear` for an `access` made in `mode`.
pub fn translate(
    mem: &impl PhysRead,
    regs: &PagingRegs,
    linear: u64,
    access: Access,
    mode: Mode,
) -> Result<u64, WalkError> {
    if regs.cr0 & CR0_PG == 0 {
        return Ok(linear & 0xffff_ffff);
    }
    let rights = Rights {
        writable: true,
        user: true,
        executable: true,
    };
    if regs.long_mode() {
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
            (access, mode),
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
            (access, mode),
            rights,
        );
    }
    walk_32bit(mem, regs, linear, (access, mode), rights)
}

/// 32-bit paging: two 1024-entry levels of 4-byte entries; no NX.
fn walk_32bit(
    mem: &impl PhysRead,
    regs: &PagingRegs,
    linear: u64,
    (access, mode): (Access, Mode),
    mut rights: Rights,
) -> Result<u64, WalkError> {
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
        rights.check(regs, access, mode, 2)?;
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
    rights.check(regs, access, mode, 1)?;
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
    const S: Mode = Mode::Supervisor { ac: false };
    const U: Mode = Mode::User;

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
            translate(&Mem::default(), &regs, 0x1234_5678, Access::Read, S),
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
            translate(&m, &r, 0x20_5abc, Access::Read, S),
            Ok(0xabc_dabc)
        );
        assert_eq!(
            translate(&m, &r, 0x41_2345, Access::Write, S),
            Ok(0x4061_2345)
        );
        assert_eq!(
            translate(&m, &r, 0x4123_4567, Access::Read, S),
            Ok(0x8123_4567)
        );
        // Faults, with where.
        assert_eq!(
            translate(&m, &r, 0x4123_4567, Access::Write, S),
            Err(WalkError::WriteProtected { level: 3 })
        );
        assert_eq!(
            translate(&m, &r, 0x4123_4567, Access::Execute, S),
            Err(WalkError::NoExecute { level: 3 })
        );
        assert_eq!(
            translate(&m, &r, 0x41_2345, Access::Read, U),
            Err(WalkError::Supervisor { level: 2 })
        );
        assert_eq!(
            translate(&m, &r, 0x20_6000, Access::Read, S),
            Err(WalkError::NotPresent {
                level: 1,
                entry: 0x4030
            })
        );
        assert_eq!(
            translate(&m, &r, 0x0000_8000_0000_0000, Access::Read, S),
            Err(WalkError::NonCanonical(0x8000_0000_0000))
        );
        // Supervisor writes ignore R/W when CR0.WP is clear.
        let no_wp = PagingRegs {
            cr0: r.cr0 & !CR0_WP,
            ..r
        };
        assert_eq!(
            translate(&m, &no_wp, 0x4123_4567, Access::Write, S),
            Ok(0x8123_4567)
        );
        let la57 = PagingRegs {
            cr4: r.cr4 | CR4_LA57,
            ..r
        };
        assert_eq!(
            translate(&m, &la57, 0, Access::Read, S),
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
            translate(&m, &pae, 0x4061_0000, Access::Read, S),
            Ok(0x61_0000)
        );
        assert_eq!(
            translate(&m, &pae, 0x4080_7123, Access::Write, S),
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
            translate(&m32, &r32, 0x40_3456, Access::Read, S),
            Ok(0x7456)
        );
        assert_eq!(
            translate(&m32, &r32, 0x40_3456, Access::Write, S),
            Err(WalkError::WriteProtected { level: 1 })
        );
        assert_eq!(
            translate(&m32, &r32, 0x80_1234, Access::Read, S),
            Ok(0x12_0c00_1234)
        );
        assert_eq!(
            translate(&m32, &r32, 0xc0_0000, Access::Read, S),
            Err(WalkError::NotPresent {
                level: 2,
                entry: 0x500c
            })
        );
    }

    /// Long-mode tables with one 4 KiB page per kind at linear 0x1000 * n (PT at 0x4000):
    /// 1 user RW, 2 user read-only, 3 supervisor RW, 4 supervisor read-only, 5 user RW NX,
    /// 6 not present, 7 user RW with bit 63 set.
    fn kinds() -> Mem {
        let mut m = Mem::default();
        m.0.insert(0x1000, 0x2000 | P | RW | US);
        m.0.insert(0x2000, 0x3000 | P | RW | US);
        m.0.insert(0x3000, 0x4000 | P | RW | US);
        for (n, flags) in [
            (1, P | RW | US),
            (2, P | US),
            (3, P | RW),
            (4, P),
            (5, P | RW | US | NX),
            (7, P | RW | US | NX),
        ] {
            m.0.insert(0x4000 + n * 8, (0x10_0000 * n) | flags);
        }
        m
    }

    /// The walk's outcome as the CPU reports it: the address, or the #PF error code.
    fn pf(m: &Mem, r: &PagingRegs, linear: u64, access: Access, mode: Mode) -> Result<u64, u32> {
        translate(m, r, linear, access, mode)
            .map_err(|e| page_fault_code(&e, r, access, mode).expect("a page fault"))
    }

    const W: u32 = PF_WRITE;
    const PR: u32 = PF_PRESENT;
    const USR: u32 = PF_USER;
    const ID: u32 = PF_FETCH;
    const RSVD: u32 = PF_RESERVED;

    #[test]
    fn user_code_reaches_only_user_pages_and_writes_only_writable_ones() {
        let (m, r) = (kinds(), long_mode());
        assert_eq!(pf(&m, &r, 0x1008, Access::Write, U), Ok(0x10_0008));
        assert_eq!(pf(&m, &r, 0x2008, Access::Read, U), Ok(0x20_0008));
        assert_eq!(pf(&m, &r, 0x2008, Access::Write, U), Err(PR | W | USR));
        assert_eq!(pf(&m, &r, 0x3008, Access::Read, U), Err(PR | USR));
        assert_eq!(pf(&m, &r, 0x4008, Access::Write, U), Err(PR | W | USR));
        assert_eq!(pf(&m, &r, 0x6008, Access::Write, U), Err(W | USR));
        // CR0.WP does not matter to user code: read-only is read-only.
        let no_wp = PagingRegs {
            cr0: r.cr0 & !CR0_WP,
            ..r
        };
        assert_eq!(pf(&m, &no_wp, 0x2008, Access::Write, U), Err(PR | W | USR));
        // A supervisor level anywhere up the walk makes the page supervisor.
        let mut m = kinds();
        m.0.insert(0x2000, 0x3000 | P | RW);
        assert_eq!(pf(&m, &r, 0x1008, Access::Read, U), Err(PR | USR));
        assert_eq!(pf(&m, &r, 0x1008, Access::Read, S), Ok(0x10_0008));
    }

    #[test]
    fn supervisor_writes_obey_read_only_pages_only_with_cr0_wp() {
        let (m, r) = (kinds(), long_mode());
        assert_eq!(pf(&m, &r, 0x4010, Access::Write, S), Err(PR | W));
        assert_eq!(pf(&m, &r, 0x2010, Access::Write, S), Err(PR | W));
        let no_wp = PagingRegs {
            cr0: r.cr0 & !CR0_WP,
            ..r
        };
        assert_eq!(pf(&m, &no_wp, 0x4010, Access::Write, S), Ok(0x40_0010));
        assert_eq!(pf(&m, &no_wp, 0x2010, Access::Write, S), Ok(0x20_0010));
    }

    #[test]
    fn smep_stops_supervisor_fetches_from_user_pages() {
        let (m, r) = (kinds(), long_mode());
        assert_eq!(pf(&m, &r, 0x1000, Access::Execute, S), Ok(0x10_0000));
        let smep = PagingRegs {
            cr4: r.cr4 | CR4_SMEP,
            ..r
        };
        assert_eq!(pf(&m, &smep, 0x1000, Access::Execute, S), Err(PR | ID));
        assert_eq!(pf(&m, &smep, 0x1000, Access::Read, S), Ok(0x10_0000));
        assert_eq!(pf(&m, &smep, 0x3000, Access::Execute, S), Ok(0x30_0000));
        assert_eq!(pf(&m, &smep, 0x1000, Access::Execute, U), Ok(0x10_0000));
        // I/D is reported with SMEP even where NX is off.
        let smep_no_nx = PagingRegs {
            efer: smep.efer & !EFER_NXE,
            ..smep
        };
        assert_eq!(
            pf(&m, &smep_no_nx, 0x1000, Access::Execute, S),
            Err(PR | ID)
        );
    }

    #[test]
    fn smap_stops_supervisor_data_accesses_to_user_pages_unless_ac() {
        let (m, r) = (kinds(), long_mode());
        let smap = PagingRegs {
            cr4: r.cr4 | CR4_SMAP,
            ..r
        };
        let ac = Mode::Supervisor { ac: true };
        assert_eq!(pf(&m, &r, 0x1010, Access::Read, S), Ok(0x10_0010));
        assert_eq!(pf(&m, &smap, 0x1010, Access::Read, S), Err(PR));
        assert_eq!(pf(&m, &smap, 0x1010, Access::Write, S), Err(PR | W));
        assert_eq!(pf(&m, &smap, 0x1010, Access::Read, ac), Ok(0x10_0010));
        assert_eq!(pf(&m, &smap, 0x1010, Access::Write, ac), Ok(0x10_0010));
        // AC does not lift write protection, nor SMAP for the CPU's implicit accesses.
        assert_eq!(pf(&m, &smap, 0x2010, Access::Write, ac), Err(PR | W));
        assert_eq!(pf(&m, &smap, 0x1010, Access::Read, Mode::Implicit), Err(PR));
        assert_eq!(
            pf(&m, &r, 0x1010, Access::Read, Mode::Implicit),
            Ok(0x10_0010)
        );
        // Supervisor pages and fetches are not SMAP's business.
        assert_eq!(pf(&m, &smap, 0x3010, Access::Read, S), Ok(0x30_0010));
        assert_eq!(pf(&m, &smap, 0x1010, Access::Execute, S), Ok(0x10_0010));
        // And user code is not supervisor code.
        assert_eq!(pf(&m, &smap, 0x1010, Access::Read, U), Ok(0x10_0010));
        assert_eq!(Mode::explicit(3, RFLAGS_AC), U);
        assert_eq!(Mode::explicit(0, RFLAGS_AC), ac);
        assert_eq!(Mode::explicit(1, 0x2), S);
    }

    #[test]
    fn nx_and_its_reserved_bit() {
        let (m, r) = (kinds(), long_mode());
        assert_eq!(pf(&m, &r, 0x5000, Access::Read, U), Ok(0x50_0000));
        assert_eq!(pf(&m, &r, 0x5000, Access::Execute, U), Err(PR | USR | ID));
        assert_eq!(pf(&m, &r, 0x5000, Access::Execute, S), Err(PR | ID));
        assert_eq!(pf(&m, &r, 0x6000, Access::Execute, S), Err(ID));
        // Without EFER.NXE bit 63 is reserved, and fetches carry no I/D (no SMEP either).
        let no_nxe = PagingRegs {
            efer: r.efer & !EFER_NXE,
            ..r
        };
        assert_eq!(
            pf(&m, &no_nxe, 0x7000, Access::Read, U),
            Err(PR | RSVD | USR)
        );
        assert_eq!(pf(&m, &no_nxe, 0x7000, Access::Execute, S), Err(PR | RSVD));
        assert_eq!(pf(&m, &no_nxe, 0x6000, Access::Execute, S), Err(0));
        // A page-size bit in a PML4 entry is reserved too.
        let mut big = kinds();
        big.0.insert(0x1000, 0x2000 | P | RW | US | PAGE_SIZE);
        assert_eq!(pf(&big, &r, 0x1000, Access::Read, S), Err(PR | RSVD));
    }

    #[test]
    fn tables_outside_ram_read_as_all_ones() {
        struct Nothing;
        impl PhysRead for Nothing {
            fn read_u64(&self, _: u64) -> Option<u64> {
                None
            }
        }
        let r = long_mode();
        assert_eq!(pf_of(&Nothing, &r), Err(PR | RSVD | W | USR));
        fn pf_of(m: &Nothing, r: &PagingRegs) -> Result<u64, u32> {
            translate(m, r, 0x1000, Access::Write, U)
                .map_err(|e| page_fault_code(&e, r, Access::Write, U).expect("a page fault"))
        }
        // Not canonical: a #GP, not a page fault.
        let e = translate(&kinds(), &r, 1 << 47, Access::Read, S).unwrap_err();
        assert_eq!(page_fault_code(&e, &r, Access::Read, S), None);
    }

    #[test]
    fn cpl_comes_from_ss_in_protected_mode() {
        use hypervisor::x86_64::{Segment, SpecialRegs};
        let mut s = SpecialRegs {
            cr0: 1,
            ss: Segment {
                dpl: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(cpl(&s, 2), 3);
        s.ss.dpl = 0;
        assert_eq!(cpl(&s, 2), 0);
        assert_eq!(cpl(&s, 2 | RFLAGS_VM), 3, "virtual-8086 mode");
        s.cr0 = 0;
        s.ss.dpl = 3;
        assert_eq!(cpl(&s, 2), 0, "real mode");
    }
}
