//! The Hypervisor.framework calls the Intel backend makes, as a Rust trait: implemented by
//! [`super::ffi`] on an Intel Mac and by [`super::fake`] in tests.

use crate::Result;

/// A vCPU as Hypervisor.framework names it (`hv_vcpuid_t`).
pub type VcpuHandle = u32;

/// The registers the backend reads and writes outside the VMCS (`hv_x86_reg_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reg {
    Rip,
    Rflags,
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 by their encoding number 0..=15.
    Gpr(u8),
    Cr2,
}

/// VMX capability registers (`hv_vmx_capability_t`): low half allowed-0, high half allowed-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    PinBased,
    ProcBased,
    ProcBased2,
    Entry,
    Exit,
}

/// The framework calls used, one method each; errors carry the call's name and code.
pub trait Api: Send + Sync + 'static {
    /// `hv_vm_create(HV_VM_DEFAULT)` (one VM per process).
    fn vm_create(&self) -> Result<()>;
    fn vm_destroy(&self);
    /// `hv_vm_map` read/write/execute.
    ///
    /// # Safety
    /// `hva..hva+size` must stay mapped for as long as the VM exists.
    unsafe fn vm_map(&self, hva: u64, gpa: u64, size: u64) -> Result<()>;
    /// `hv_vmx_read_capability`.
    fn read_capability(&self, cap: Capability) -> Result<u64>;
    /// `hv_vcpu_create`, on the calling thread, which then owns the vCPU.
    fn vcpu_create(&self) -> Result<VcpuHandle>;
    /// `hv_vcpu_destroy`, on the owning thread.
    fn vcpu_destroy(&self, vcpu: VcpuHandle);
    /// `hv_vcpu_run`: returns at the next VM exit (its reason is in the VMCS).
    fn vcpu_run(&self, vcpu: VcpuHandle) -> Result<()>;
    /// `hv_vcpu_interrupt`: from any thread, makes the vCPU exit.
    fn vcpu_interrupt(&self, vcpu: VcpuHandle);
    fn read_reg(&self, vcpu: VcpuHandle, reg: Reg) -> Result<u64>;
    fn write_reg(&self, vcpu: VcpuHandle, reg: Reg, value: u64) -> Result<()>;
    fn read_vmcs(&self, vcpu: VcpuHandle, field: u32) -> Result<u64>;
    fn write_vmcs(&self, vcpu: VcpuHandle, field: u32, value: u64) -> Result<()>;
    /// `hv_vcpu_enable_native_msr`: the guest reads and writes this MSR without exits.
    fn enable_native_msr(&self, vcpu: VcpuHandle, msr: u32) -> Result<()>;
}
