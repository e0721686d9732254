//! The Hypervisor.framework calls the arm64 backend makes, as a Rust trait: implemented by
//! [`super::ffi`] on a Mac and by [`super::fake`] in tests.

use crate::Result;

/// A vCPU as Hypervisor.framework names it (`hv_vcpu_t`).
pub type VcpuHandle = u64;

/// Why `hv_vcpu_run` returned (`hv_exit_reason_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// `hv_vcpus_exit` asked for it.
    Canceled,
    /// A synchronous exception to EL2: the syndrome says which.
    Exception,
    /// The guest's virtual timer fired; the framework has masked it.
    VtimerActivated,
    Unknown(u32),
}

/// `hv_vcpu_exit_t`: the reason and, for exceptions, ESR_EL2, FAR_EL2 and the faulting IPA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub reason: ExitReason,
    pub syndrome: u64,
    pub virtual_address: u64,
    pub physical_address: u64,
}

/// General-purpose registers, PC and CPSR (`hv_reg_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reg {
    /// X0..=X30.
    X(u8),
    Pc,
    Cpsr,
}

/// The system registers the backend touches (`hv_sys_reg_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SysReg {
    MpidrEl1,
    CntvCtlEl0,
    CntvCvalEl0,
}

/// CNTV_CTL_EL0 bits.
pub const CNTV_ENABLE: u64 = 1;
pub const CNTV_IMASK: u64 = 2;
pub const CNTV_ISTATUS: u64 = 4;

/// The Hypervisor.framework calls used, one method each. Errors carry the call's name and
/// its `hv_return_t`.
pub trait Api: Send + Sync + 'static {
    /// `hv_vm_create` with the default configuration (one VM per process).
    fn vm_create(&self) -> Result<()>;
    fn vm_destroy(&self);
    /// `hv_vm_map` read/write/execute.
    ///
    /// # Safety
    /// `hva..hva+size` must stay mapped for as long as the VM exists.
    unsafe fn vm_map(&self, hva: u64, gpa: u64, size: u64) -> Result<()>;
    /// `hv_vm_get_max_vcpu_count`.
    fn max_vcpus(&self) -> Result<u32>;
    /// Whether the in-kernel GICv3 calls (`hv_gic_*`, macOS 15) exist on this system.
    fn has_gic(&self) -> bool;
    /// `hv_gic_create` with the distributor and redistributor regions at these addresses.
    fn gic_create(&self, dist_base: u64, redist_base: u64) -> Result<()>;
    /// `hv_gic_set_spi`: drive the line of SPI `intid`.
    fn gic_set_spi(&self, intid: u32, level: bool) -> Result<()>;
    /// Makes PPI `intid` pending on `vcpu` (`hv_gic_set_redistributor_reg`, GICR_ISPENDR0).
    fn gic_set_ppi_pending(&self, vcpu: VcpuHandle, intid: u32) -> Result<()>;
    /// `hv_vcpu_create`, on the calling thread, which then owns the vCPU.
    fn vcpu_create(&self) -> Result<VcpuHandle>;
    /// `hv_vcpu_destroy`, on the owning thread.
    fn vcpu_destroy(&self, vcpu: VcpuHandle);
    /// `hv_vcpu_run`, then the exit information the framework filled in.
    fn vcpu_run(&self, vcpu: VcpuHandle) -> Result<Exit>;
    /// `hv_vcpus_exit`: from any thread; a vCPU not in the guest returns at its next run.
    fn vcpus_exit(&self, vcpu: VcpuHandle);
    fn reg(&self, vcpu: VcpuHandle, reg: Reg) -> Result<u64>;
    fn set_reg(&self, vcpu: VcpuHandle, reg: Reg, value: u64) -> Result<()>;
    fn sys_reg(&self, vcpu: VcpuHandle, reg: SysReg) -> Result<u64>;
    fn set_sys_reg(&self, vcpu: VcpuHandle, reg: SysReg, value: u64) -> Result<()>;
    /// `hv_vcpu_set_vtimer_mask`.
    fn set_vtimer_mask(&self, vcpu: VcpuHandle, masked: bool) -> Result<()>;
    /// The guest's virtual counter now (host counter minus the vCPU's vtimer offset).
    fn virtual_count(&self, vcpu: VcpuHandle) -> Result<u64>;
    /// The counter's frequency in Hz (CNTFRQ_EL0).
    fn counter_hz(&self) -> u64;
}
