//! Initial vCPU register state for each boot protocol, and the MSRs set at boot.

use hypervisor::x86_64::{DescriptorTable, MsrEntry, Regs, Segment, SpecialRegs};

use super::gdt::{self, BOOT_GDT};
use super::layout;

// Control-register and EFER bits (Intel SDM vol. 3, 2.5 and 2.2.1).
pub const CR0_PE: u64 = 1;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_LA57: u64 = 1 << 12;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;
const RFLAGS_RESERVED: u64 = 1 << 1;
/// Virtual-8086 mode (CPL 3).
pub const RFLAGS_VM: u64 = 1 << 17;
/// Alignment check; in supervisor mode it lets explicit accesses past SMAP.
pub const RFLAGS_AC: u64 = 1 << 18;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
}

/// General registers of the boot vCPU.
pub fn boot_regs(protocol: BootProtocol, entry: u64) -> Regs {
    let mut r = Regs {
        rip: entry,
        rflags: RFLAGS_RESERVED,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => r.rsi = layout::ZERO_PAGE_START,
        BootProtocol::Pvh => r.rbx = layout::PVH_INFO_START,
    }
    r
}

/// Segment and control registers of the boot vCPU, starting from its reset state `s` (which
/// keeps fields such as the APIC base).
pub fn boot_special_regs(protocol: BootProtocol, mut s: SpecialRegs, cr3: u64) -> SpecialRegs {
    let data = gdt::segment(&BOOT_GDT, gdt::DATA_SELECTOR);
    s.cs = match protocol {
        BootProtocol::Linux64 => gdt::segment(&BOOT_GDT, gdt::CODE64_SELECTOR),
        BootProtocol::Pvh => gdt::segment(&BOOT_GDT, gdt::CODE32_SELECTOR),
    };
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = gdt::segment(&BOOT_GDT, gdt::TSS_SELECTOR);
    s.gdt.base = layout::BOOT_GDT_START;
    s.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    s.idt.base = layout::BOOT_IDT_START;
    s.idt.limit = 7;
    match protocol {
        BootProtocol::Linux64 => {
            s.cr0 = CR0_PE | CR0_ET | CR0_PG;
            s.cr3 = cr3;
            s.cr4 = CR4_PAE;
            s.efer = EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            s.cr0 = CR0_PE | CR0_ET;
            s.cr3 = 0;
            s.cr4 = 0;
            s.efer = 0;
        }
    }
    s
}

/// The GDT bytes to write at `layout::BOOT_GDT_START`.
pub fn gdt_bytes() -> Vec<u8> {
    BOOT_GDT.iter().flat_map(|e| e.to_le_bytes()).collect()
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// A vCPU released by a STARTUP IPI with `vector`: real mode at `vector << 12` (CS =
/// `vector << 8`, IP = 0), everything else in its power-on state (SDM 9.1.1, 10.4.4.1).
pub fn startup_state(vector: u8, mut s: SpecialRegs) -> (Regs, SpecialRegs) {
    let real = |selector: u16, type_| Segment {
        base: u64::from(selector) << 4,
        limit: 0xffff,
        selector,
        type_,
        present: 1,
        s: 1,
        ..Default::default()
    };
    s.cs = real(u16::from(vector) << 8, 0xb);
    for seg in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss] {
        *seg = real(0, 3);
    }
    s.cr0 = 0x6000_0010; // CD, NW, ET
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
    s.gdt = Default::default();
    s.idt = DescriptorTable {
        base: 0,
        limit: 0xffff,
    };
    let r = Regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    (r, s)
}

/// MSR values every vCPU starts with: syscall MSRs cleared, fast strings on, memory write-back.
pub fn boot_msrs() -> Vec<MsrEntry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| MsrEntry { index, data })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_and_pvh_states() {
        let s = boot_special_regs(BootProtocol::Linux64, SpecialRegs::default(), 0x9000);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.efer & EFER_LMA, EFER_LMA);
        assert_eq!(s.cr3, 0x9000);
        let p = boot_special_regs(BootProtocol::Pvh, SpecialRegs::default(), 0x9000);
        assert_eq!((p.cs.l, p.cs.db, p.cr0 & CR0_PG), (0, 1, 0));
        assert_eq!(
            boot_regs(BootProtocol::Pvh, 0x100000).rbx,
            layout::PVH_INFO_START
        );
        assert_eq!(
            boot_regs(BootProtocol::Linux64, 0x100000).rsi,
            layout::ZERO_PAGE_START
        );
    }
}
