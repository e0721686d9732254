//! Trapped system-register accesses (ESR_EL2 exception class 0x18): decoding the syndrome, and
//! the policy for the registers a guest kernel touches that the hypervisor leaves to the VMM.
//!
//! The OS lock, debug and performance-monitor registers read as zero and ignore writes (no
//! debugger, no PMU is offered: the device tree has no PMU node); any other trapped register
//! is refused with its name so the report says what the guest wanted.

/// Exception class of an MSR/MRS trap.
pub const EC_SYSREG: u32 = 0x18;

/// One trapped MSR or MRS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysRegAccess {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
    /// The general-purpose register moved (31 = XZR).
    pub rt: u8,
    /// MRS (the guest reads the system register).
    pub read: bool,
}

impl SysRegAccess {
    /// Decodes the ISS of an EC 0x18 syndrome (Arm ARM D17.2.40, "ISS encoding for an
    /// exception from MSR, MRS, or System instruction execution in AArch64 state").
    pub fn decode(esr: u64) -> Self {
        let iss = esr & 0x1ff_ffff;
        SysRegAccess {
            op0: ((iss >> 20) & 3) as u8,
            op2: ((iss >> 17) & 7) as u8,
            op1: ((iss >> 14) & 7) as u8,
            crn: ((iss >> 10) & 0xf) as u8,
            rt: ((iss >> 5) & 0x1f) as u8,
            crm: ((iss >> 1) & 0xf) as u8,
            read: iss & 1 != 0,
        }
    }

    /// Whether the access is read-as-zero / write-ignored: the debug and OS lock registers
    /// (op0 = 2: OSLAR, OSLSR, OSDLR, MDSCR, breakpoints) and the PMU (CRn = 9 with CRm
    /// 12..14, and PMEVCNTR/PMEVTYPER at op1 = 3, CRn = 14, CRm 8..15).
    pub fn is_raz_wi(&self) -> bool {
        matches!(
            (self.op0, self.op1, self.crn, self.crm),
            (2, ..) | (3, 0 | 3, 9, 12..=14) | (3, 3, 14, 8..=15)
        )
    }
}

impl std::fmt::Display for SysRegAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} S{}_{}_C{}_C{}_{}",
            if self.read { "MRS" } else { "MSR" },
            self.op0,
            self.op1,
            self.crn,
            self.crm,
            self.op2
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The syndrome of an MSR/MRS trap, assembled from the ISS fields of the Arm ARM.
    fn esr(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, rt: u64, read: bool) -> u64 {
        (u64::from(EC_SYSREG) << 26)
            | (1 << 25)
            | (op0 << 20)
            | (op2 << 17)
            | (op1 << 14)
            | (crn << 10)
            | (rt << 5)
            | (crm << 1)
            | u64::from(read)
    }

    #[test]
    fn decodes_and_classifies() {
        // msr oslar_el1, x0: S2_0_C1_C0_4, a debug register.
        let oslar = SysRegAccess::decode(esr(2, 0, 1, 0, 4, 0, false));
        assert_eq!(
            (oslar.op0, oslar.crn, oslar.op2, oslar.read),
            (2, 1, 4, false)
        );
        assert!(oslar.is_raz_wi());
        // mrs x3, pmcr_el0: S3_3_C9_C12_0.
        let pmcr = SysRegAccess::decode(esr(3, 3, 9, 12, 0, 3, true));
        assert_eq!(pmcr.rt, 3);
        assert!(pmcr.read && pmcr.is_raz_wi());
        // mrs x1, sctlr_el1 (S3_0_C1_C0_0) is not ours to fake.
        let sctlr = SysRegAccess::decode(esr(3, 0, 1, 0, 0, 1, true));
        assert!(!sctlr.is_raz_wi());
        assert_eq!(sctlr.to_string(), "MRS S3_0_C1_C0_0");
    }
}
