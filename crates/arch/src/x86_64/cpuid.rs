//! The CPUID a guest sees: the hypervisor's supported leaves, with per-vCPU topology filled in
//! and any features the user asked to hide cleared.
//!
//! Hiding is the `--cpuid-hide` option (for example `--cpuid-hide cx16,xsave`): useful to
//! mask host features a guest mishandles, or to give several hosts one feature set. Some nested
//! hypervisors override part of the table: on this project's build machines (nested KVM on PVM)
//! hiding `cx16` works but `popcnt`, `aes` and `avx2` stay visible. The kernel's own
//! `clearcpuid=` is the fallback there.

use hypervisor::x86_64::CpuidEntry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A named feature bit: leaf, sub-leaf, register, bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
}

const fn f(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// Features that can be hidden by name (the names Linux uses in /proc/cpuinfo).
pub const FEATURES: &[Feature] = &[
    f("pclmulqdq", 1, 0, Reg::Ecx, 1),
    f("ssse3", 1, 0, Reg::Ecx, 9),
    f("fma", 1, 0, Reg::Ecx, 12),
    f("cx16", 1, 0, Reg::Ecx, 13),
    f("pcid", 1, 0, Reg::Ecx, 17),
    f("sse4_1", 1, 0, Reg::Ecx, 19),
    f("sse4_2", 1, 0, Reg::Ecx, 20),
    f("x2apic", 1, 0, Reg::Ecx, 21),
    f("movbe", 1, 0, Reg::Ecx, 22),
    f("popcnt", 1, 0, Reg::Ecx, 23),
    f("tsc_deadline_timer", 1, 0, Reg::Ecx, 24),
    f("aes", 1, 0, Reg::Ecx, 25),
    f("xsave", 1, 0, Reg::Ecx, 26),
    f("avx", 1, 0, Reg::Ecx, 28),
    f("f16c", 1, 0, Reg::Ecx, 29),
    f("rdrand", 1, 0, Reg::Ecx, 30),
    f("fsgsbase", 7, 0, Reg::Ebx, 0),
    f("bmi1", 7, 0, Reg::Ebx, 3),
    f("avx2", 7, 0, Reg::Ebx, 5),
    f("smep", 7, 0, Reg::Ebx, 7),
    f("bmi2", 7, 0, Reg::Ebx, 8),
    f("erms", 7, 0, Reg::Ebx, 9),
    f("invpcid", 7, 0, Reg::Ebx, 10),
    f("avx512f", 7, 0, Reg::Ebx, 16),
    f("rdseed", 7, 0, Reg::Ebx, 18),
    f("smap", 7, 0, Reg::Ebx, 20),
    f("umip", 7, 0, Reg::Ecx, 2),
    f("pku", 7, 0, Reg::Ecx, 3),
    f("la57", 7, 0, Reg::Ecx, 16),
    f("rdpid", 7, 0, Reg::Ecx, 22),
    f("pdpe1gb", 0x8000_0001, 0, Reg::Edx, 26),
    f("rdtscp", 0x8000_0001, 0, Reg::Edx, 27),
    // KVM paravirtual features (leaf 0x40000001 EAX), named as Linux's kvm_para.h does.
    f("kvm_async_pf", KVM_FEATURES, 0, Reg::Eax, 4),
    f("kvm_steal_time", KVM_FEATURES, 0, Reg::Eax, 5),
    f("kvm_pv_eoi", KVM_FEATURES, 0, Reg::Eax, 6),
    f("kvm_pv_unhalt", KVM_FEATURES, 0, Reg::Eax, 7),
    f("kvm_pv_tlb_flush", KVM_FEATURES, 0, Reg::Eax, 9),
    f("kvm_async_pf_vmexit", KVM_FEATURES, 0, Reg::Eax, 10),
    f("kvm_pv_send_ipi", KVM_FEATURES, 0, Reg::Eax, 11),
    f("kvm_poll_control", KVM_FEATURES, 0, Reg::Eax, 12),
    f("kvm_pv_sched_yield", KVM_FEATURES, 0, Reg::Eax, 13),
    f("kvm_async_pf_int", KVM_FEATURES, 0, Reg::Eax, 14),
];

/// KVM's paravirtual feature leaf.
const KVM_FEATURES: u32 = 0x4000_0001;

/// What a guest must not see when the VMM, not the hypervisor, runs its local APICs: x2APIC
/// and the TSC-deadline timer (not modelled), and the KVM paravirtual features that talk to
/// KVM's in-kernel APIC or rely on it for their interrupts (PV EOI, PV IPIs, PV unhalt,
/// PV TLB flush, async page faults, ...).
pub fn hidden_with_userspace_apic() -> Vec<Feature> {
    FEATURES
        .iter()
        .filter(|f| {
            matches!(f.name, "x2apic" | "tsc_deadline_timer")
                || (f.leaf == KVM_FEATURES && f.name != "kvm_steal_time")
        })
        .copied()
        .collect()
}

/// Looks up feature names, e.g. from `--cpuid-hide cx16,xsave`.
pub fn parse_features(list: &str) -> Result<Vec<Feature>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            FEATURES
                .iter()
                .find(|f| f.name == name)
                .copied()
                .ok_or_else(|| {
                    let known: Vec<_> = FEATURES.iter().map(|f| f.name).collect();
                    format!("unknown CPU feature {name:?} (known: {})", known.join(", "))
                })
        })
        .collect()
}

fn reg_mut(e: &mut CpuidEntry, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// The CPUID table for vCPU `cpu_id` of `num_cpus`.
pub fn for_vcpu(
    supported: &[CpuidEntry],
    cpu_id: u32,
    num_cpus: u32,
    hide: &[Feature],
) -> Vec<CpuidEntry> {
    let mut out = supported.to_vec();
    for e in &mut out {
        match e.function {
            1 => {
                // Initial APIC ID, logical processor count, and the hypervisor-present bit.
                e.ebx = (e.ebx & 0x0000_ffff) | (cpu_id << 24) | ((num_cpus.min(255)) << 16);
                e.ecx |= 1 << 31;
                if num_cpus > 1 {
                    e.edx |= 1 << 28; // HTT: the count in EBX is valid
                }
            }
            // Extended topology: the x2APIC ID of this CPU.
            0xb | 0x1f => e.edx = cpu_id,
            _ => {}
        }
        for f in hide {
            if e.function == f.leaf && e.index == f.subleaf {
                *reg_mut(e, f.reg) &= !(1 << f.bit);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_userspace_apic_hides_what_needs_kvms() {
        let names: Vec<_> = hidden_with_userspace_apic()
            .iter()
            .map(|f| f.name)
            .collect();
        for n in [
            "x2apic",
            "tsc_deadline_timer",
            "kvm_pv_eoi",
            "kvm_pv_send_ipi",
            "kvm_pv_unhalt",
        ] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        let kvm = CpuidEntry {
            function: KVM_FEATURES,
            eax: u32::MAX,
            ..Default::default()
        };
        let eax = for_vcpu(&[kvm], 0, 1, &hidden_with_userspace_apic())[0].eax;
        assert_eq!(eax & (1 << 6 | 1 << 11), 0);
        assert_ne!(eax & 1, 0, "kvmclock stays");
    }

    #[test]
    fn topology_and_hiding() {
        let sup = [
            CpuidEntry {
                function: 1,
                ecx: u32::MAX,
                ebx: 0xffff_ffff,
                ..Default::default()
            },
            CpuidEntry {
                function: 0x4000_0000,
                ebx: 0x4b4d_564b,
                ..Default::default()
            },
        ];
        let hide = parse_features("cx16, xsave").unwrap();
        let t = for_vcpu(&sup, 3, 4, &hide);
        assert_eq!(t[0].ebx >> 24, 3);
        assert_eq!((t[0].ebx >> 16) & 0xff, 4);
        assert_eq!(t[0].ecx & (1 << 13), 0);
        assert_eq!(t[0].ecx & (1 << 26), 0);
        assert_ne!(t[0].ecx & (1 << 31), 0);
        // Hypervisor signature leaves pass through untouched.
        assert_eq!(t[1], sup[1]);
        assert!(parse_features("nosuch").unwrap_err().contains("nosuch"));
    }
}
