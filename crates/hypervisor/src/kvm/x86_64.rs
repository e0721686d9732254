//! Conversions between the neutral x86_64 register types and KVM's, and the x86 vCPU set-up
//! ioctls.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs,
};

use super::KvmVcpu;
use crate::x86_64::{CpuidEntry, DescriptorTable, Exception, MsrEntry, Regs, Segment, SpecialRegs};
use crate::{os_err, Error, Result};

/// Builds a struct from one that mirrors it, field by field (KVM's and ours have the same
/// names); `..$rest` fills what only the target has.
macro_rules! mirror {
    ($src:expr => $ty:ident { $($f:ident),* $(,)? } $(..$rest:expr)?) => {
        $ty { $($f: $src.$f,)* $(..$rest)? }
    };
}

macro_rules! segment_fields {
    ($src:expr => $ty:ident $(..$rest:expr)?) => {
        mirror!($src => $ty { base, limit, selector, type_, present, dpl, db, s, l, g, avl, unusable } $(..$rest)?)
    };
}

macro_rules! gp_fields {
    ($src:expr => $ty:ident) => {
        mirror!($src => $ty {
            rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12, r13, r14, r15, rip,
            rflags,
        })
    };
}

macro_rules! cpuid_fields {
    ($src:expr => $ty:ident $(..$rest:expr)?) => {
        mirror!($src => $ty { function, index, flags, eax, ebx, ecx, edx } $(..$rest)?)
    };
}

pub(super) fn cpuid_from_kvm(e: &kvm_cpuid_entry2) -> CpuidEntry {
    cpuid_fields!(e => CpuidEntry)
}

fn seg_to_kvm(s: &Segment) -> kvm_segment {
    segment_fields!(s => kvm_segment ..Default::default())
}

fn seg_from_kvm(s: &kvm_segment) -> Segment {
    segment_fields!(s => Segment)
}

fn dt_to_kvm(d: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: d.base,
        limit: d.limit,
        ..Default::default()
    }
}

pub(super) fn set_regs(v: &KvmVcpu, r: &Regs) -> Result<()> {
    let k: kvm_regs = gp_fields!(r => kvm_regs);
    v.fd.set_regs(&k).map_err(os_err("KVM_SET_REGS"))
}

pub(super) fn regs(v: &KvmVcpu) -> Result<Regs> {
    let k = v.fd.get_regs().map_err(os_err("KVM_GET_REGS"))?;
    Ok(gp_fields!(k => Regs))
}

pub(super) fn set_special_regs(v: &KvmVcpu, s: &SpecialRegs) -> Result<()> {
    // Start from the current state so fields we do not model (the interrupt bitmap) stay valid.
    let mut k = v.fd.get_sregs().map_err(os_err("KVM_GET_SREGS"))?;
    k.cs = seg_to_kvm(&s.cs);
    k.ds = seg_to_kvm(&s.ds);
    k.es = seg_to_kvm(&s.es);
    k.fs = seg_to_kvm(&s.fs);
    k.gs = seg_to_kvm(&s.gs);
    k.ss = seg_to_kvm(&s.ss);
    k.tr = seg_to_kvm(&s.tr);
    k.ldt = seg_to_kvm(&s.ldt);
    k.gdt = dt_to_kvm(&s.gdt);
    k.idt = dt_to_kvm(&s.idt);
    k.cr0 = s.cr0;
    k.cr2 = s.cr2;
    k.cr3 = s.cr3;
    k.cr4 = s.cr4;
    k.cr8 = s.cr8;
    k.efer = s.efer;
    k.apic_base = s.apic_base;
    v.fd.set_sregs(&k).map_err(os_err("KVM_SET_SREGS"))
}

pub(super) fn special_regs(v: &KvmVcpu) -> Result<SpecialRegs> {
    let k = v.fd.get_sregs().map_err(os_err("KVM_GET_SREGS"))?;
    Ok(SpecialRegs {
        cs: seg_from_kvm(&k.cs),
        ds: seg_from_kvm(&k.ds),
        es: seg_from_kvm(&k.es),
        fs: seg_from_kvm(&k.fs),
        gs: seg_from_kvm(&k.gs),
        ss: seg_from_kvm(&k.ss),
        tr: seg_from_kvm(&k.tr),
        ldt: seg_from_kvm(&k.ldt),
        gdt: DescriptorTable {
            base: k.gdt.base,
            limit: k.gdt.limit,
        },
        idt: DescriptorTable {
            base: k.idt.base,
            limit: k.idt.limit,
        },
        cr0: k.cr0,
        cr2: k.cr2,
        cr3: k.cr3,
        cr4: k.cr4,
        cr8: k.cr8,
        efer: k.efer,
        apic_base: k.apic_base,
    })
}

pub(super) fn set_cpuid(v: &KvmVcpu, entries: &[CpuidEntry]) -> Result<()> {
    let kvm: Vec<kvm_cpuid_entry2> = entries
        .iter()
        .map(|e| cpuid_fields!(e => kvm_cpuid_entry2 ..Default::default()))
        .collect();
    let cpuid = CpuId::from_entries(&kvm).map_err(|_| Error::Os {
        op: "KVM_SET_CPUID2",
        source: std::io::Error::other(format!("{} CPUID entries is too many", entries.len())),
    })?;
    v.fd.set_cpuid2(&cpuid).map_err(os_err("KVM_SET_CPUID2"))
}

pub(super) fn set_msrs(v: &KvmVcpu, msrs: &[MsrEntry]) -> Result<()> {
    let kvm: Vec<kvm_msr_entry> = msrs
        .iter()
        .map(|m| kvm_msr_entry {
            index: m.index,
            data: m.data,
            ..Default::default()
        })
        .collect();
    let list = Msrs::from_entries(&kvm).map_err(|_| Error::Os {
        op: "KVM_SET_MSRS",
        source: std::io::Error::other(format!("{} MSRs is too many", msrs.len())),
    })?;
    let written = v.fd.set_msrs(&list).map_err(os_err("KVM_SET_MSRS"))?;
    if written != msrs.len() {
        let msr = msrs[written].index;
        return Err(Error::Os {
            op: "KVM_SET_MSRS",
            source: std::io::Error::other(format!("KVM refused MSR {msr:#x}")),
        });
    }
    Ok(())
}

pub(super) fn reset_fpu(v: &KvmVcpu) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    v.fd.set_fpu(&fpu).map_err(os_err("KVM_SET_FPU"))
}

pub(super) fn setup_lapic_lints(v: &KvmVcpu) -> Result<()> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DM_EXTINT: u32 = 7;
    const DM_NMI: u32 = 4;
    let mut lapic = v.fd.get_lapic().map_err(os_err("KVM_GET_LAPIC"))?;
    for (offset, mode) in [(LVT_LINT0, DM_EXTINT), (LVT_LINT1, DM_NMI)] {
        let reg = &mut lapic.regs[offset..offset + 4];
        let mut val = u32::from_le_bytes([reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8]);
        val = (val & !0x700) | (mode << 8);
        for (i, b) in val.to_le_bytes().iter().enumerate() {
            reg[i] = *b as _;
        }
    }
    v.fd.set_lapic(&lapic).map_err(os_err("KVM_SET_LAPIC"))
}

/// KVM_SET_VCPU_EVENTS with the exception marked injected; CR2 goes in through the special
/// registers first (KVM_CAP_EXCEPTION_PAYLOAD, which would carry it, is not enabled).
pub(super) fn inject_exception(v: &KvmVcpu, e: &Exception) -> Result<()> {
    if let Some(cr2) = e.cr2 {
        let mut sregs = v.fd.get_sregs().map_err(os_err("KVM_GET_SREGS"))?;
        sregs.cr2 = cr2;
        v.fd.set_sregs(&sregs).map_err(os_err("KVM_SET_SREGS"))?;
    }
    let mut events =
        v.fd.get_vcpu_events()
            .map_err(os_err("KVM_GET_VCPU_EVENTS"))?;
    events.exception.injected = 1;
    events.exception.nr = e.vector;
    events.exception.has_error_code = u8::from(e.error_code.is_some());
    events.exception.error_code = e.error_code.unwrap_or(0);
    v.fd.set_vcpu_events(&events)
        .map_err(os_err("KVM_SET_VCPU_EVENTS"))
}

vmm_sys_util::ioctl_iow_nr!(
    KVM_INTERRUPT,
    kvm_bindings::KVMIO,
    0x86,
    kvm_bindings::kvm_interrupt
);

/// KVM_INTERRUPT: queues an external interrupt for the next entry (no in-kernel irqchip).
pub(super) fn inject_interrupt(v: &KvmVcpu, vector: u8) -> Result<()> {
    let irq = kvm_bindings::kvm_interrupt {
        irq: u32::from(vector),
    };
    // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from a live struct; the fd is a vCPU.
    let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&v.fd, KVM_INTERRUPT(), &irq) };
    if rc < 0 {
        return Err(crate::os_err("KVM_INTERRUPT")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
