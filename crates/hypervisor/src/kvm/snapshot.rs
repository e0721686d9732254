//! Saving and loading an x86 vCPU's and VM's state with KVM's GET/SET ioctls, for snapshots.
//!
//! The order of the loads follows what KVM needs: CPUID before anything that checks features,
//! the TSC frequency before the TSC MSR, the local APIC before the MSRs (the TSC deadline
//! lives in both), the pending events last.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_vcpu_events, kvm_xcr, kvm_xcrs, kvm_xsave, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES,
};

use super::{KvmVcpu, KvmVm};
use crate::x86_64::{Blob, MsrEntry, VcpuState, VmState};
use crate::{os_err, Error, Result};

/// A KVM structure kept as bytes.
///
/// # Safety
/// Only for `repr(C)` structures of integers (and arrays and unions of them), for which every
/// byte pattern is a valid value.
unsafe trait Pod: Default {}

// SAFETY: each is a bindgen `repr(C)` structure of integers, arrays and unions of integers.
unsafe impl Pod for kvm_xsave {}
unsafe impl Pod for kvm_debugregs {}
unsafe impl Pod for kvm_lapic_state {}
unsafe impl Pod for kvm_vcpu_events {}
unsafe impl Pod for kvm_irqchip {}
unsafe impl Pod for kvm_pit_state2 {}
unsafe impl Pod for kvm_clock_data {}

fn to_blob<T: Pod>(v: &T) -> Blob {
    // SAFETY: `v` is a live `T` of `size_of::<T>()` bytes; `Pod` types are plain integers.
    let bytes = unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) };
    Blob(bytes.to_vec())
}

/// The structure a blob holds; its length must be exactly the structure's.
fn from_blob<T: Pod>(b: &Blob, what: &'static str) -> Result<T> {
    if b.0.len() != size_of::<T>() {
        return Err(Error::BadState {
            what,
            detail: format!(
                "{} bytes saved, KVM's structure has {}",
                b.0.len(),
                size_of::<T>()
            ),
        });
    }
    let mut v = T::default();
    // SAFETY: the lengths match (checked above) and every byte pattern is a valid `T` (`Pod`).
    unsafe {
        std::ptr::copy_nonoverlapping(b.0.as_ptr(), &mut v as *mut T as *mut u8, b.0.len());
    }
    Ok(v)
}

/// Which MSRs of `indices` KVM reads, with their values. KVM_GET_MSRS stops at the first MSR
/// it refuses (one this CPU lacks): that one is skipped and the rest read on.
fn read_msrs(v: &KvmVcpu, indices: &[u32]) -> Result<Vec<MsrEntry>> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::BadState {
            what: "MSR list",
            detail: format!("{} MSRs do not fit KVM's list", entries.len()),
        })?;
        let n = v.fd.get_msrs(&mut msrs).map_err(os_err("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice()[..n].iter().map(|e| MsrEntry {
            index: e.index,
            data: e.data,
        }));
        let skip = if n < chunk.len() { n + 1 } else { n };
        rest = &rest[skip.min(rest.len())..];
    }
    Ok(out)
}

/// Writes `msrs`; KVM_SET_MSRS stops at the first it refuses, which is an error naming it,
/// unless it already holds the saved value: without the in-kernel irqchip KVM refuses even a
/// 0 for MSRs that need its local APIC (`MSR_KVM_ASYNC_PF_INT`), and reads them as 0.
fn write_msrs(v: &KvmVcpu, msrs: &[MsrEntry]) -> Result<()> {
    let mut rest = msrs;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let list = Msrs::from_entries(&entries).map_err(|_| Error::BadState {
            what: "MSR list",
            detail: format!("{} MSRs do not fit KVM's list", entries.len()),
        })?;
        let n = v.fd.set_msrs(&list).map_err(os_err("KVM_SET_MSRS"))?;
        if let Some(m) = chunk.get(n) {
            if read_msrs(v, &[m.index])? != [*m] {
                return Err(Error::BadState {
                    what: "MSRs",
                    detail: format!("KVM refused MSR {:#x} = {:#x}", m.index, m.data),
                });
            }
        }
        let done = if n < chunk.len() { n + 1 } else { n };
        rest = &rest[done.min(rest.len())..];
    }
    Ok(())
}

pub(super) fn state(v: &KvmVcpu) -> Result<VcpuState> {
    let mp_state = v.fd.get_mp_state().map_err(os_err("KVM_GET_MP_STATE"))?;
    let regs = super::x86_64::regs(v)?;
    let sregs = super::x86_64::special_regs(v)?;
    let ksregs = v.fd.get_sregs().map_err(os_err("KVM_GET_SREGS"))?;
    let xsave = v.fd.get_xsave().map_err(os_err("KVM_GET_XSAVE"))?;
    let xcrs = v.fd.get_xcrs().map_err(os_err("KVM_GET_XCRS"))?;
    let n = (xcrs.nr_xcrs as usize).min(xcrs.xcrs.len());
    let debug_regs = v.fd.get_debug_regs().map_err(os_err("KVM_GET_DEBUGREGS"))?;
    // Without the in-kernel irqchip there is no local APIC in KVM to read.
    let lapic = v.fd.get_lapic().map_or(Blob::default(), |l| to_blob(&l));
    let events =
        v.fd.get_vcpu_events()
            .map_err(os_err("KVM_GET_VCPU_EVENTS"))?;
    let cpuid =
        v.fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(os_err("KVM_GET_CPUID2"))?;
    Ok(VcpuState {
        regs,
        sregs,
        interrupt_bitmap: ksregs.interrupt_bitmap,
        cpuid: cpuid
            .as_slice()
            .iter()
            .map(super::x86_64::cpuid_from_kvm)
            .collect(),
        msrs: read_msrs(v, &v.msr_index)?,
        xcrs: xcrs.xcrs[..n].iter().map(|x| (x.xcr, x.value)).collect(),
        tsc_khz: v.fd.get_tsc_khz().ok(),
        mp_state: mp_state.mp_state,
        xsave: to_blob(&xsave),
        debug_regs: to_blob(&debug_regs),
        lapic,
        events: to_blob(&events),
    })
}

/// Whether each KVM structure of `s` has KVM's size.
pub(super) fn check_state(s: &VcpuState) -> Result<()> {
    from_blob::<kvm_xsave>(&s.xsave, "XSAVE area")?;
    from_blob::<kvm_debugregs>(&s.debug_regs, "debug registers")?;
    from_blob::<kvm_vcpu_events>(&s.events, "vCPU events")?;
    if !s.lapic.0.is_empty() {
        from_blob::<kvm_lapic_state>(&s.lapic, "local APIC")?;
    }
    if s.xcrs.len() > 16 {
        return Err(Error::BadState {
            what: "XCRs",
            detail: format!("{} saved, KVM takes at most 16", s.xcrs.len()),
        });
    }
    Ok(())
}

pub(super) fn set_state(v: &KvmVcpu, s: &VcpuState) -> Result<()> {
    super::x86_64::set_cpuid(v, &s.cpuid)?;
    if let Some(khz) = s.tsc_khz {
        if v.fd.get_tsc_khz().ok() != Some(khz) {
            v.fd.set_tsc_khz(khz).map_err(|e| Error::BadState {
                what: "TSC frequency",
                detail: format!("the guest's TSC ran at {khz} kHz and KVM cannot scale to it: {e}"),
            })?;
        }
    }
    v.fd.set_mp_state(kvm_mp_state {
        mp_state: s.mp_state,
    })
    .map_err(os_err("KVM_SET_MP_STATE"))?;
    super::x86_64::set_regs(v, &s.regs)?;
    super::x86_64::set_special_regs(v, &s.sregs)?;
    if s.interrupt_bitmap != [0; 4] {
        let mut k = v.fd.get_sregs().map_err(os_err("KVM_GET_SREGS"))?;
        k.interrupt_bitmap = s.interrupt_bitmap;
        v.fd.set_sregs(&k).map_err(os_err("KVM_SET_SREGS"))?;
    }
    let xsave: kvm_xsave = from_blob(&s.xsave, "XSAVE area")?;
    // SAFETY: a 4 KiB `kvm_xsave`, the size KVM_SET_XSAVE reads without KVM_CAP_XSAVE2.
    unsafe { v.fd.set_xsave(&xsave) }.map_err(os_err("KVM_SET_XSAVE"))?;
    if s.xcrs.len() > 16 {
        return Err(Error::BadState {
            what: "XCRs",
            detail: format!("{} saved, KVM takes at most 16", s.xcrs.len()),
        });
    }
    let mut xcrs = kvm_xcrs {
        nr_xcrs: s.xcrs.len() as u32,
        ..Default::default()
    };
    for (slot, &(xcr, value)) in xcrs.xcrs.iter_mut().zip(&s.xcrs) {
        *slot = kvm_xcr {
            xcr,
            value,
            ..Default::default()
        };
    }
    v.fd.set_xcrs(&xcrs).map_err(os_err("KVM_SET_XCRS"))?;
    let debug_regs: kvm_debugregs = from_blob(&s.debug_regs, "debug registers")?;
    v.fd.set_debug_regs(&debug_regs)
        .map_err(os_err("KVM_SET_DEBUGREGS"))?;
    if !s.lapic.0.is_empty() {
        let lapic: kvm_lapic_state = from_blob(&s.lapic, "local APIC")?;
        v.fd.set_lapic(&lapic).map_err(os_err("KVM_SET_LAPIC"))?;
    }
    write_msrs(v, &s.msrs)?;
    let events: kvm_vcpu_events = from_blob(&s.events, "vCPU events")?;
    v.fd.set_vcpu_events(&events)
        .map_err(os_err("KVM_SET_VCPU_EVENTS"))
}

/// PIC master, PIC slave, IOAPIC.
const IRQCHIPS: u32 = 3;

pub(super) fn vm_state(vm: &KvmVm) -> Result<VmState> {
    let mut irqchip = Vec::new();
    if vm.has_irqchip() {
        for chip_id in 0..IRQCHIPS {
            let mut c = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.vm
                .get_irqchip(&mut c)
                .map_err(os_err("KVM_GET_IRQCHIP"))?;
            irqchip.push(to_blob(&c));
        }
    }
    // A VM without a PIT (hardware-reduced ACPI) answers ENXIO.
    let pit = vm.vm.get_pit2().ok().map(|p| to_blob(&p));
    let clock = vm.vm.get_clock().map_err(os_err("KVM_GET_CLOCK"))?;
    Ok(VmState {
        irqchip,
        pit,
        clock: Some(to_blob(&clock)),
    })
}

pub(super) fn set_vm_state(vm: &KvmVm, s: &VmState) -> Result<()> {
    if !s.irqchip.is_empty() && !vm.has_irqchip() {
        return Err(Error::BadState {
            what: "interrupt controllers",
            detail: "saved from KVM's irqchip, but this VM has none".into(),
        });
    }
    if !s.irqchip.is_empty() && s.irqchip.len() != IRQCHIPS as usize {
        return Err(Error::BadState {
            what: "interrupt controllers",
            detail: format!("{} saved, KVM has {IRQCHIPS}", s.irqchip.len()),
        });
    }
    for (i, b) in s.irqchip.iter().enumerate() {
        let c: kvm_irqchip = from_blob(b, "interrupt controller")?;
        if c.chip_id != i as u32 {
            return Err(Error::BadState {
                what: "interrupt controller",
                detail: format!("chip {} saved in place {i}", c.chip_id),
            });
        }
        vm.vm.set_irqchip(&c).map_err(os_err("KVM_SET_IRQCHIP"))?;
    }
    if let Some(b) = &s.pit {
        let pit: kvm_pit_state2 = from_blob(b, "PIT")?;
        vm.vm.set_pit2(&pit).map_err(os_err("KVM_SET_PIT2"))?;
    }
    if let Some(b) = &s.clock {
        let mut clock: kvm_clock_data = from_blob(b, "KVM clock")?;
        // The clock goes on from where it stopped: no flag that would make KVM add the
        // real time that passed since (KVM_CLOCK_REALTIME) or reject the call.
        clock.flags = 0;
        clock.realtime = 0;
        clock.host_tsc = 0;
        vm.vm.set_clock(&clock).map_err(os_err("KVM_SET_CLOCK"))?;
    }
    Ok(())
}

/// The MSRs KVM saves and restores for a guest (KVM_GET_MSR_INDEX_LIST).
pub(super) fn msr_index_list(kvm: &kvm_ioctls::Kvm) -> Result<Vec<u32>> {
    Ok(kvm
        .get_msr_index_list()
        .map_err(os_err("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec())
}
