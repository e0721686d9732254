//! The saved state of an x86 vCPU and of the VM-wide parts a hypervisor emulates (interrupt
//! controllers, PIT, clock): plain data for snapshots, filled by a backend's `state()` calls
//! and handed back to `set_state()` on a fresh VM.
//!
//! What the VMM understands is typed (registers, MSRs, CPUID); what only the backend reads is
//! kept as the backend's own bytes (`Blob`: KVM's `kvm_xsave`, `kvm_lapic_state`, ... whose
//! layouts are the kernel's stable ABI), tagged with the backend's name so another backend
//! refuses it instead of misreading it.

use serde::{Deserialize, Serialize};

use super::{CpuidEntry, MsrEntry, Regs, SpecialRegs};

/// Bytes in a backend's own layout, written as hex in the snapshot's JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut hex = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            hex.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(d)?;
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(serde::de::Error::custom(format!(
                "{:?} is not a hex digit",
                char::from(c)
            ))),
        };
        let bytes = hex.as_bytes();
        if bytes.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd number of hex digits"));
        }
        bytes
            .chunks_exact(2)
            .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
            .collect::<Result<Vec<u8>, D::Error>>()
            .map(Blob)
    }
}

/// Everything of one x86 vCPU a snapshot keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    pub regs: Regs,
    pub sregs: SpecialRegs,
    /// The external interrupt queued for injection, one bit per vector (KVM's
    /// `kvm_sregs.interrupt_bitmap`; only without an in-kernel irqchip).
    pub interrupt_bitmap: [u64; 4],
    /// The CPUID table the guest saw.
    pub cpuid: Vec<CpuidEntry>,
    /// Every MSR the hypervisor lets the VMM read, the TSC among them.
    pub msrs: Vec<MsrEntry>,
    /// Extended control registers (XCR0), as (index, value).
    pub xcrs: Vec<(u32, u64)>,
    /// The guest's TSC frequency in kHz, where the hypervisor reports it.
    pub tsc_khz: Option<u32>,
    /// Runnable, halted, waiting for INIT/SIPI... in the backend's numbering.
    pub mp_state: u32,
    /// FPU, SSE and AVX state (KVM: `kvm_xsave`).
    pub xsave: Blob,
    /// DR0-DR3, DR6, DR7 (KVM: `kvm_debugregs`).
    pub debug_regs: Blob,
    /// The local APIC's registers (KVM: `kvm_lapic_state`); empty without an in-kernel one.
    pub lapic: Blob,
    /// Pending exceptions, interrupts, NMIs and interrupt shadow (KVM: `kvm_vcpu_events`).
    pub events: Blob,
}

/// The VM-wide state a hypervisor emulates on x86.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// The in-kernel PIC master, PIC slave and IOAPIC (KVM: `kvm_irqchip` each), when the
    /// hypervisor runs them.
    pub irqchip: Vec<Blob>,
    /// The in-kernel PIT (KVM: `kvm_pit_state2`), when there is one.
    pub pit: Option<Blob>,
    /// The paravirtual clock the guest reads (KVM: `kvm_clock_data`).
    pub clock: Option<Blob>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_hex_and_bad_hex_is_an_error() {
        let b = Blob(vec![0, 0xab, 0x7f]);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, "\"00ab7f\"");
        assert_eq!(serde_json::from_str::<Blob>(&json).unwrap(), b);
        assert!(serde_json::from_str::<Blob>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Blob>("\"zz\"").is_err());
        assert!(serde_json::from_str::<Blob>("\"é1\"").is_err());
    }
}
