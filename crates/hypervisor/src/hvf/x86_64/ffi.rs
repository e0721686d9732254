//! Hypervisor.framework on Intel Macs: the C calls, and [`Api`] on top of them.
//!
//! macOS-only: type-checked and code-generated for `x86_64-apple-darwin` by CI
//! (`scripts/check-targets.sh`), never linked or run there (no Mac), so it is kept to
//! declarations and one-line wrappers; all logic is in the portable backend. Register and
//! capability numbers follow `Hypervisor/hv_arch_x86.h` and `hv_arch_vmx.h`; confirm them on
//! a Mac before trusting this file.

use std::ffi::c_void;

use super::api::{Api, Capability, Reg, VcpuHandle};
use crate::hvf::check;
use crate::Result;

const HV_MEMORY_RWX: u64 = 0b111;
const HV_X86_RIP: u32 = 0;
const HV_X86_RFLAGS: u32 = 1;
const HV_X86_CR2: u32 = 38;
/// `hv_x86_reg_t` of RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 (encoding order).
const HV_X86_GPR: [u32; 16] = [2, 3, 4, 5, 8, 9, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17];

#[link(name = "Hypervisor", kind = "framework")]
extern "C" {
    fn hv_vm_create(flags: u64) -> i32;
    fn hv_vm_destroy() -> i32;
    fn hv_vm_map(uva: *mut c_void, gpa: u64, size: usize, flags: u64) -> i32;
    fn hv_vmx_read_capability(field: u32, value: *mut u64) -> i32;
    fn hv_vcpu_create(vcpu: *mut u32, flags: u64) -> i32;
    fn hv_vcpu_destroy(vcpu: u32) -> i32;
    fn hv_vcpu_run(vcpu: u32) -> i32;
    fn hv_vcpu_interrupt(vcpus: *const u32, count: u32) -> i32;
    fn hv_vcpu_read_register(vcpu: u32, reg: u32, value: *mut u64) -> i32;
    fn hv_vcpu_write_register(vcpu: u32, reg: u32, value: u64) -> i32;
    fn hv_vmx_vcpu_read_vmcs(vcpu: u32, field: u32, value: *mut u64) -> i32;
    fn hv_vmx_vcpu_write_vmcs(vcpu: u32, field: u32, value: u64) -> i32;
    fn hv_vcpu_enable_native_msr(vcpu: u32, msr: u32, enable: bool) -> i32;
}

fn hv_reg(reg: Reg) -> u32 {
    match reg {
        Reg::Rip => HV_X86_RIP,
        Reg::Rflags => HV_X86_RFLAGS,
        Reg::Gpr(n) => HV_X86_GPR[usize::from(n & 15)],
        Reg::Cr2 => HV_X86_CR2,
    }
}

/// The real framework.
pub struct Framework;

impl Api for Framework {
    fn vm_create(&self) -> Result<()> {
        // SAFETY: plain value (HV_VM_DEFAULT).
        check("hv_vm_create (one VM per process)", unsafe {
            hv_vm_create(0)
        })
    }

    fn vm_destroy(&self) {
        // SAFETY: no arguments; the backend destroys the VM once.
        unsafe { hv_vm_destroy() };
    }

    unsafe fn vm_map(&self, hva: u64, gpa: u64, size: u64) -> Result<()> {
        // SAFETY: the caller keeps the host range mapped for the VM's lifetime.
        check("hv_vm_map", unsafe {
            hv_vm_map(hva as *mut c_void, gpa, size as usize, HV_MEMORY_RWX)
        })
    }

    fn read_capability(&self, cap: Capability) -> Result<u64> {
        let field = match cap {
            Capability::PinBased => 0,
            Capability::ProcBased => 1,
            Capability::ProcBased2 => 2,
            Capability::Entry => 3,
            Capability::Exit => 4,
        };
        let mut v = 0;
        // SAFETY: writes one u64.
        check("hv_vmx_read_capability", unsafe {
            hv_vmx_read_capability(field, &mut v)
        })?;
        Ok(v)
    }

    fn vcpu_create(&self) -> Result<VcpuHandle> {
        let mut v = 0;
        // SAFETY: writes one u32 (HV_VCPU_DEFAULT).
        check("hv_vcpu_create", unsafe { hv_vcpu_create(&mut v, 0) })?;
        Ok(v)
    }

    fn vcpu_destroy(&self, vcpu: VcpuHandle) {
        // SAFETY: called on the owning thread, once.
        unsafe { hv_vcpu_destroy(vcpu) };
    }

    fn vcpu_run(&self, vcpu: VcpuHandle) -> Result<()> {
        // SAFETY: `vcpu` is the calling thread's own vCPU.
        check("hv_vcpu_run", unsafe { hv_vcpu_run(vcpu) })
    }

    fn vcpu_interrupt(&self, vcpu: VcpuHandle) {
        // SAFETY: one valid handle; documented as callable from any thread.
        unsafe { hv_vcpu_interrupt(&vcpu, 1) };
    }

    fn read_reg(&self, vcpu: VcpuHandle, reg: Reg) -> Result<u64> {
        let mut v = 0;
        // SAFETY: writes one u64.
        check("hv_vcpu_read_register", unsafe {
            hv_vcpu_read_register(vcpu, hv_reg(reg), &mut v)
        })?;
        Ok(v)
    }

    fn write_reg(&self, vcpu: VcpuHandle, reg: Reg, value: u64) -> Result<()> {
        // SAFETY: plain values.
        check("hv_vcpu_write_register", unsafe {
            hv_vcpu_write_register(vcpu, hv_reg(reg), value)
        })
    }

    fn read_vmcs(&self, vcpu: VcpuHandle, field: u32) -> Result<u64> {
        let mut v = 0;
        // SAFETY: writes one u64.
        check("hv_vmx_vcpu_read_vmcs", unsafe {
            hv_vmx_vcpu_read_vmcs(vcpu, field, &mut v)
        })?;
        Ok(v)
    }

    fn write_vmcs(&self, vcpu: VcpuHandle, field: u32, value: u64) -> Result<()> {
        // SAFETY: plain values.
        check("hv_vmx_vcpu_write_vmcs", unsafe {
            hv_vmx_vcpu_write_vmcs(vcpu, field, value)
        })
    }

    fn enable_native_msr(&self, vcpu: VcpuHandle, msr: u32) -> Result<()> {
        // SAFETY: plain values.
        check("hv_vcpu_enable_native_msr", unsafe {
            hv_vcpu_enable_native_msr(vcpu, msr, true)
        })
    }
}
