//! Hypervisor.framework on Apple Silicon: the C calls, and [`Api`] on top of them.
//!
//! macOS-only: type-checked and code-generated for `aarch64-apple-darwin` by CI
//! (`scripts/check-targets.sh`), never linked or run there (no Mac), so it is kept to
//! declarations and one-line wrappers; everything with logic is in the portable
//! backend. The `hv_gic_*` calls (macOS 15) are looked up at run time so the binary starts on
//! older systems and reports the missing GIC by name. Values taken from Apple's headers;
//! `GICR_ISPENDR0`'s enum value (its register offset) is still to be confirmed on a Mac.

use std::ffi::{c_void, CStr};

use super::api::{Api, Exit, ExitReason, Reg, SysReg, VcpuHandle};
use crate::hvf::check;
use crate::{Error, Result};

type HvReturn = i32;
const HV_MEMORY_RWX: u64 = 0b111;
const HV_REG_PC: u32 = 31;
const HV_REG_CPSR: u32 = 34;
/// `hv_sys_reg_t` is op0:op1:CRn:CRm:op2 packed as 2:3:4:4:3 bits.
const HV_SYS_REG_MPIDR_EL1: u16 = 0xc005;
const HV_SYS_REG_CNTV_CTL_EL0: u16 = 0xdf19;
const HV_SYS_REG_CNTV_CVAL_EL0: u16 = 0xdf1a;
const HV_GIC_REDISTRIBUTOR_REG_GICR_ISPENDR0: u32 = 0x1_0200;

#[repr(C)]
struct HvVcpuExit {
    reason: u32,
    syndrome: u64,
    virtual_address: u64,
    physical_address: u64,
}

// libSystem, which every macOS program links; the libc crate does not declare these.
extern "C" {
    /// Releases an `os_object` such as a `hv_gic_config_t` (`<os/object.h>`).
    fn os_release(object: *mut c_void);
    /// The host's tick counter, which the guest's virtual counter is offset from.
    fn mach_absolute_time() -> u64;
}

#[link(name = "Hypervisor", kind = "framework")]
extern "C" {
    fn hv_vm_create(config: *mut c_void) -> HvReturn;
    fn hv_vm_destroy() -> HvReturn;
    fn hv_vm_map(addr: *mut c_void, ipa: u64, size: usize, flags: u64) -> HvReturn;
    fn hv_vm_get_max_vcpu_count(count: *mut u32) -> HvReturn;
    fn hv_vcpu_create(
        vcpu: *mut u64,
        exit: *mut *const HvVcpuExit,
        config: *mut c_void,
    ) -> HvReturn;
    fn hv_vcpu_destroy(vcpu: u64) -> HvReturn;
    fn hv_vcpu_run(vcpu: u64) -> HvReturn;
    fn hv_vcpus_exit(vcpus: *const u64, count: u32) -> HvReturn;
    fn hv_vcpu_get_reg(vcpu: u64, reg: u32, value: *mut u64) -> HvReturn;
    fn hv_vcpu_set_reg(vcpu: u64, reg: u32, value: u64) -> HvReturn;
    fn hv_vcpu_get_sys_reg(vcpu: u64, reg: u16, value: *mut u64) -> HvReturn;
    fn hv_vcpu_set_sys_reg(vcpu: u64, reg: u16, value: u64) -> HvReturn;
    fn hv_vcpu_set_vtimer_mask(vcpu: u64, masked: bool) -> HvReturn;
    fn hv_vcpu_get_vtimer_offset(vcpu: u64, offset: *mut u64) -> HvReturn;
}

type ConfigCreate = unsafe extern "C" fn() -> *mut c_void;
type ConfigSetBase = unsafe extern "C" fn(*mut c_void, u64) -> HvReturn;
type Create = unsafe extern "C" fn(*mut c_void) -> HvReturn;
type SetSpi = unsafe extern "C" fn(u32, bool) -> HvReturn;
type SetRedistributorReg = unsafe extern "C" fn(u64, u32, u64) -> HvReturn;

/// The macOS 15 GIC calls, if this system has them.
struct Gic {
    config_create: ConfigCreate,
    set_distributor_base: ConfigSetBase,
    set_redistributor_base: ConfigSetBase,
    create: Create,
    set_spi: SetSpi,
    set_redistributor_reg: SetRedistributorReg,
}

fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with a NUL-terminated name; the framework is linked, so RTLD_DEFAULT sees it.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

impl Gic {
    fn load() -> Option<Gic> {
        // SAFETY: each symbol has the C signature Apple documents for it.
        unsafe {
            Some(Gic {
                config_create: std::mem::transmute::<*mut c_void, ConfigCreate>(symbol(
                    c"hv_gic_config_create",
                )?),
                set_distributor_base: std::mem::transmute::<*mut c_void, ConfigSetBase>(symbol(
                    c"hv_gic_config_set_distributor_base",
                )?),
                set_redistributor_base: std::mem::transmute::<*mut c_void, ConfigSetBase>(symbol(
                    c"hv_gic_config_set_redistributor_base",
                )?),
                create: std::mem::transmute::<*mut c_void, Create>(symbol(c"hv_gic_create")?),
                set_spi: std::mem::transmute::<*mut c_void, SetSpi>(symbol(c"hv_gic_set_spi")?),
                set_redistributor_reg: std::mem::transmute::<*mut c_void, SetRedistributorReg>(
                    symbol(c"hv_gic_set_redistributor_reg")?,
                ),
            })
        }
    }
}

fn hv_reg(reg: Reg) -> u32 {
    match reg {
        Reg::X(n) => u32::from(n.min(30)),
        Reg::Pc => HV_REG_PC,
        Reg::Cpsr => HV_REG_CPSR,
    }
}

fn hv_sys_reg(reg: SysReg) -> u16 {
    match reg {
        SysReg::MpidrEl1 => HV_SYS_REG_MPIDR_EL1,
        SysReg::CntvCtlEl0 => HV_SYS_REG_CNTV_CTL_EL0,
        SysReg::CntvCvalEl0 => HV_SYS_REG_CNTV_CVAL_EL0,
    }
}

/// The real framework. Exit records live in the framework; their addresses are kept per vCPU.
pub struct Framework {
    gic: Option<Gic>,
    exits: std::sync::Mutex<std::collections::HashMap<u64, usize>>,
}

impl Framework {
    pub fn load() -> Framework {
        Framework {
            gic: Gic::load(),
            exits: Default::default(),
        }
    }

    fn gic(&self) -> Result<&Gic> {
        self.gic.as_ref().ok_or(Error::MissingCapability(
            "an in-kernel GICv3 (hv_gic_create needs macOS 15 or later)",
        ))
    }
}

// SAFETY: the framework's calls are thread-safe for the VM; per-vCPU calls are made on the
// owning thread by the backend. The function pointers are plain code addresses.
unsafe impl Send for Framework {}
unsafe impl Sync for Framework {}

impl Api for Framework {
    fn vm_create(&self) -> Result<()> {
        // SAFETY: a null config asks for the defaults.
        check("hv_vm_create (one VM per process)", unsafe {
            hv_vm_create(std::ptr::null_mut())
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

    fn max_vcpus(&self) -> Result<u32> {
        let mut n = 0;
        // SAFETY: writes one u32.
        check("hv_vm_get_max_vcpu_count", unsafe {
            hv_vm_get_max_vcpu_count(&mut n)
        })?;
        Ok(n)
    }

    fn has_gic(&self) -> bool {
        self.gic.is_some()
    }

    fn gic_create(&self, dist_base: u64, redist_base: u64) -> Result<()> {
        let g = self.gic()?;
        // SAFETY: calls with the documented signatures; the config object is released after.
        unsafe {
            let config = (g.config_create)();
            let rc = (g.set_distributor_base)(config, dist_base);
            check("hv_gic_config_set_distributor_base", rc)?;
            check(
                "hv_gic_config_set_redistributor_base",
                (g.set_redistributor_base)(config, redist_base),
            )?;
            let rc = (g.create)(config);
            os_release(config);
            check("hv_gic_create", rc)
        }
    }

    fn gic_set_spi(&self, intid: u32, level: bool) -> Result<()> {
        // SAFETY: plain values.
        check("hv_gic_set_spi", unsafe {
            (self.gic()?.set_spi)(intid, level)
        })
    }

    fn gic_set_ppi_pending(&self, vcpu: VcpuHandle, intid: u32) -> Result<()> {
        let set = self.gic()?.set_redistributor_reg;
        // SAFETY: plain values; `vcpu` is the caller's own vCPU.
        check("hv_gic_set_redistributor_reg", unsafe {
            set(vcpu, HV_GIC_REDISTRIBUTOR_REG_GICR_ISPENDR0, 1 << intid)
        })
    }

    fn vcpu_create(&self) -> Result<VcpuHandle> {
        let (mut vcpu, mut exit) = (0u64, std::ptr::null());
        // SAFETY: the framework fills both out-parameters.
        check("hv_vcpu_create", unsafe {
            hv_vcpu_create(&mut vcpu, &mut exit, std::ptr::null_mut())
        })?;
        self.exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vcpu, exit as usize);
        Ok(vcpu)
    }

    fn vcpu_destroy(&self, vcpu: VcpuHandle) {
        self.exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&vcpu);
        // SAFETY: called on the owning thread, once.
        unsafe { hv_vcpu_destroy(vcpu) };
    }

    fn vcpu_run(&self, vcpu: VcpuHandle) -> Result<Exit> {
        // SAFETY: `vcpu` is the calling thread's own vCPU.
        check("hv_vcpu_run", unsafe { hv_vcpu_run(vcpu) })?;
        let at = self
            .exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&vcpu)
            .copied();
        let at = at.ok_or(Error::Hvf {
            op: "hv_vcpu_run (unknown vCPU)",
            code: -1,
        })?;
        // SAFETY: the framework keeps the exit record of a live vCPU at this address.
        let e = unsafe { &*(at as *const HvVcpuExit) };
        Ok(Exit {
            reason: match e.reason {
                0 => ExitReason::Canceled,
                1 => ExitReason::Exception,
                2 => ExitReason::VtimerActivated,
                r => ExitReason::Unknown(r),
            },
            syndrome: e.syndrome,
            virtual_address: e.virtual_address,
            physical_address: e.physical_address,
        })
    }

    fn vcpus_exit(&self, vcpu: VcpuHandle) {
        // SAFETY: one valid handle; documented as callable from any thread.
        unsafe { hv_vcpus_exit(&vcpu, 1) };
    }

    fn reg(&self, vcpu: VcpuHandle, reg: Reg) -> Result<u64> {
        let mut v = 0;
        // SAFETY: writes one u64.
        check("hv_vcpu_get_reg", unsafe {
            hv_vcpu_get_reg(vcpu, hv_reg(reg), &mut v)
        })?;
        Ok(v)
    }

    fn set_reg(&self, vcpu: VcpuHandle, reg: Reg, value: u64) -> Result<()> {
        // SAFETY: plain values.
        check("hv_vcpu_set_reg", unsafe {
            hv_vcpu_set_reg(vcpu, hv_reg(reg), value)
        })
    }

    fn sys_reg(&self, vcpu: VcpuHandle, reg: SysReg) -> Result<u64> {
        let mut v = 0;
        // SAFETY: writes one u64.
        check("hv_vcpu_get_sys_reg", unsafe {
            hv_vcpu_get_sys_reg(vcpu, hv_sys_reg(reg), &mut v)
        })?;
        Ok(v)
    }

    fn set_sys_reg(&self, vcpu: VcpuHandle, reg: SysReg, value: u64) -> Result<()> {
        // SAFETY: plain values.
        check("hv_vcpu_set_sys_reg", unsafe {
            hv_vcpu_set_sys_reg(vcpu, hv_sys_reg(reg), value)
        })
    }

    fn set_vtimer_mask(&self, vcpu: VcpuHandle, masked: bool) -> Result<()> {
        // SAFETY: plain values.
        check("hv_vcpu_set_vtimer_mask", unsafe {
            hv_vcpu_set_vtimer_mask(vcpu, masked)
        })
    }

    fn virtual_count(&self, vcpu: VcpuHandle) -> Result<u64> {
        let mut offset = 0;
        // SAFETY: writes one u64.
        check("hv_vcpu_get_vtimer_offset", unsafe {
            hv_vcpu_get_vtimer_offset(vcpu, &mut offset)
        })?;
        // SAFETY: no arguments; on Apple Silicon this is the counter the guest's is offset from.
        Ok(unsafe { mach_absolute_time() }.wrapping_sub(offset))
    }

    fn counter_hz(&self) -> u64 {
        let hz: u64;
        // SAFETY: reading CNTFRQ_EL0 is allowed at EL0 and has no side effects.
        unsafe { std::arch::asm!("mrs {}, cntfrq_el0", out(reg) hz) };
        hz
    }
}
