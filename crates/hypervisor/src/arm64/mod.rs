//! The arm64 half of the hypervisor contract ([`Arm64Vm`], [`Arm64Vcpu`]) and the exit logic
//! every arm64 backend (HVF on Apple Silicon, KVM on arm64) needs, in portable Rust so it is
//! tested on any host: decoding data-abort syndromes into MMIO accesses ([`esr`]), the PSCI
//! firmware interface ([`psci`]) and trapped system registers ([`sysreg`]).

pub mod esr;
pub mod psci;
pub mod sysreg;

use crate::Result;

/// Where the guest sees the GICv3: the distributor and the redistributor regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicConfig {
    pub dist_base: u64,
    pub redist_base: u64,
    pub cpus: u32,
}

/// The arm64 side of a VM.
pub trait Arm64Vm: crate::Vm<Vcpu: Arm64Vcpu> {
    /// Creates the in-kernel GICv3; before any vCPU. Interrupt lines then name GIC INTIDs
    /// (SPIs from 32).
    fn create_gic(&self, gic: GicConfig) -> Result<()>;
}

/// The arm64 side of a vCPU.
pub trait Arm64Vcpu: crate::Vcpu {
    /// Sets the registers the arm64 Linux boot protocol asks for: PC = `entry`, X0 = the
    /// device tree's address, X1..X3 = 0, EL1h with interrupts masked. Only the boot vCPU is
    /// set up this way; the others start powered off until the guest's PSCI CPU_ON.
    fn set_boot_regs(&self, entry: u64, fdt: u64) -> Result<()>;
    /// The program counter, for error reports.
    fn pc(&self) -> Result<u64>;
}

/// PSTATE at a kernel's entry: EL1 using SP_EL1 (EL1h), D, A, I and F masked.
pub const PSTATE_EL1H_MASKED: u64 = 0x3c5;

/// The virtual timer's PPI as a GIC INTID (the device tree's PPI 11 + 16).
pub const VTIMER_INTID: u32 = 27;
