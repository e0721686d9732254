//! The Hypervisor.framework backend for Apple Silicon, generic over [`api::Api`] so that it is
//! exercised on Linux against [`fake::FakeHvf`].
//!
//! What the framework leaves to the VMM, and how this backend does it:
//! - **MMIO**: a data abort (EC 0x24) with a valid syndrome becomes [`VmExit::MmioRead`] or
//!   [`VmExit::MmioWrite`] ([`crate::arm64::esr`]); PC moves past the instruction at once and a
//!   load's value is written to its register when the VMM answers on the next `run`.
//! - **PSCI** over HVC (and trapped SMC): handled here, with one [`Psci`] table per VM.
//!   CPU_ON hands the entry point and context to the target vCPU, which waits powered off
//!   inside its own `run` until then; SYSTEM_OFF/RESET become [`VmExit::SystemEvent`].
//! - **WFI/WFE**: the vCPU sleeps until a device interrupt, a kick, or its timer deadline
//!   (at most [`WFI_MAX_SLEEP`]: interrupts between vCPUs go through the in-kernel GIC
//!   without telling the VMM).
//! - **Virtual timer**: on a vtimer exit the framework has masked the timer; the backend makes
//!   the timer PPI pending at the GIC and unmasks the timer once the guest has dealt with it.
//! - **Trapped system registers**: debug/OS-lock and PMU registers read as zero, others are
//!   refused with their encoding ([`crate::arm64::sysreg`]).
//!
//! Apple's rules are kept by construction: one VM per process (the VMM makes one; a second
//! `hv_vm_create` fails and says so), and every vCPU call is made on the vCPU's thread: [`Vm::create_vcpu`] must be
//! called there (the VMM core does), and only the kicker crosses threads (`hv_vcpus_exit` is
//! documented as callable from any thread).

pub mod api;
pub mod fake;
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub mod ffi;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use api::{Api, ExitReason, Reg, SysReg, VcpuHandle, CNTV_ENABLE, CNTV_IMASK, CNTV_ISTATUS};

use crate::arm64::esr::{self, MmioAccess, XZR};
use crate::arm64::psci::{self, Action, Psci};
use crate::arm64::sysreg::{SysRegAccess, EC_SYSREG};
use crate::arm64::{GicConfig, PSTATE_EL1H_MASKED, VTIMER_INTID};
use crate::exit::{Data, SystemEvent};
use crate::{Error, Hypervisor, HypervisorInfo, IrqLine, Result, VcpuKicker, VmEntry, VmExit};

const EC_WFX: u32 = 0x01;
const EC_HVC64: u32 = 0x16;
const EC_SMC64: u32 = 0x17;

/// The longest a vCPU sleeps in WFI before looking again.
pub const WFI_MAX_SLEEP: Duration = Duration::from_millis(1);

/// The Hypervisor.framework arm64 hypervisor.
pub struct HvfArm64<A: Api> {
    api: Arc<A>,
}

impl<A: Api> HvfArm64<A> {
    pub fn new(api: A) -> Self {
        HvfArm64 { api: Arc::new(api) }
    }

    /// The calls underneath, for tests that inspect a fake.
    pub fn api(&self) -> &Arc<A> {
        &self.api
    }
}

impl<A: Api> Hypervisor for HvfArm64<A> {
    type Vm = HvfVm<A>;

    fn info(&self) -> HypervisorInfo {
        HypervisorInfo {
            name: "Hypervisor.framework (arm64)",
            api_version: 0,
            max_vcpus: self.max_vcpus(),
            capabilities: vec![("in-kernel GICv3 (hv_gic_*, macOS 15)", self.api.has_gic())],
        }
    }

    fn max_vcpus(&self) -> u32 {
        self.api.max_vcpus().unwrap_or(1)
    }

    fn create_vm(&self) -> Result<HvfVm<A>> {
        self.api.vm_create()?;
        Ok(HvfVm {
            api: self.api.clone(),
            shared: Arc::new(Shared {
                power: Mutex::new(Power {
                    psci: Psci::new(0),
                    starts: Vec::new(),
                    interrupts: 0,
                    destroyed: false,
                }),
                wake: Condvar::new(),
            }),
        })
    }
}

/// What the vCPUs of one VM share: PSCI power state, CPU_ON requests, and a count of device
/// interrupts that wakes vCPUs sleeping in WFI.
struct Shared {
    power: Mutex<Power>,
    wake: Condvar,
}

struct Power {
    psci: Psci,
    /// CPU_ON requests not yet picked up: (entry point, context id) per vCPU.
    starts: Vec<Option<(u64, u64)>>,
    interrupts: u64,
    /// The VM was destroyed: lines that outlive it raise nothing (Hypervisor.framework has
    /// one VM per process, so a later VM's GIC must not hear an old device).
    destroyed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Power> {
        self.power.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct HvfVm<A: Api> {
    api: Arc<A>,
    shared: Arc<Shared>,
}

impl<A: Api> Drop for HvfVm<A> {
    fn drop(&mut self) {
        // Under the lock a trigger holds while it raises its SPI: none is half done.
        self.shared.lock().destroyed = true;
        self.api.vm_destroy();
    }
}

impl<A: Api> crate::Vm for HvfVm<A> {
    type Vcpu = HvfVcpu<A>;

    unsafe fn map_memory(&self, _slot: u32, gpa: u64, size: u64, hva: u64) -> Result<()> {
        // SAFETY: the caller keeps the host range mapped for the VM's lifetime.
        unsafe { self.api.vm_map(hva, gpa, size) }
    }

    /// The x86 interrupt controllers have no meaning here: arm64 uses [`Arm64Vm::create_gic`].
    fn create_irqchip(&self, _legacy_timer: bool) -> Result<()> {
        Err(Error::Unsupported)
    }

    /// A line to GIC SPI `gsi` (an INTID, 32 and up). Hypervisor.framework has no eventfds,
    /// so `eventfd` is ignored and each trigger is a call.
    fn irq_line(&self, gsi: u32, _eventfd: bool) -> Result<Box<dyn IrqLine>> {
        Ok(Box::new(SpiLine {
            api: self.api.clone(),
            shared: self.shared.clone(),
            intid: gsi,
        }))
    }

    fn register_mmio_notify(&self, _: &crate::Event, _: u64, _: u32) -> Result<()> {
        Err(Error::Unsupported)
    }

    /// None in the framework (the GIC's MSI frame is not used).
    fn msi_line(&self, _eventfd: bool) -> Result<Box<dyn crate::MsiLine>> {
        Err(Error::Unsupported)
    }

    fn register_mmio_notify_any(&self, _: &crate::Event, _: u64) -> Result<()> {
        Err(Error::Unsupported)
    }

    fn unregister_mmio_notify_any(&self, _: &crate::Event, _: u64) -> Result<()> {
        Err(Error::Unsupported)
    }

    /// Creates vCPU `id` on the calling thread, which must be the one that runs it.
    fn create_vcpu(&self, id: u32) -> Result<HvfVcpu<A>> {
        if id as usize >= self.shared.lock().starts.len() {
            return Err(Error::CreateVcpu {
                id,
                source: io::Error::other("create the GIC for this many vCPUs first"),
            });
        }
        let handle = self.api.vcpu_create()?;
        let vcpu = HvfVcpu {
            id,
            api: self.api.clone(),
            handle,
            shared: self.shared.clone(),
            kicked: Arc::new(AtomicBool::new(false)),
            on: id == 0,
            pending_load: None,
            vtimer_masked: false,
        };
        // The device tree gives vCPU n the MPIDR affinity n; PSCI CPU_ON names vCPUs by it.
        self.api
            .set_sys_reg(handle, SysReg::MpidrEl1, u64::from(id))?;
        Ok(vcpu)
    }
}

impl<A: Api> crate::arm64::Arm64Vm for HvfVm<A> {
    fn create_gic(&self, gic: GicConfig) -> Result<()> {
        if !self.api.has_gic() {
            return Err(Error::MissingCapability(
                "an in-kernel GICv3 (hv_gic_create needs macOS 15 or later)",
            ));
        }
        self.api.gic_create(gic.dist_base, gic.redist_base)?;
        let mut power = self.shared.lock();
        power.psci = Psci::new(gic.cpus);
        power.starts = vec![None; gic.cpus as usize];
        Ok(())
    }
}

/// An edge on a GIC SPI: the line goes high then low, and sleeping vCPUs look again.
struct SpiLine<A: Api> {
    api: Arc<A>,
    shared: Arc<Shared>,
    intid: u32,
}

impl<A: Api> IrqLine for SpiLine<A> {
    fn trigger(&self) -> io::Result<()> {
        let raise = |level| {
            self.api
                .gic_set_spi(self.intid, level)
                .map_err(io::Error::other)
        };
        let mut power = self.shared.lock();
        if power.destroyed {
            return Ok(());
        }
        raise(true)?;
        raise(false)?;
        power.interrupts += 1;
        drop(power);
        self.shared.wake.notify_all();
        Ok(())
    }
}

pub struct HvfVcpu<A: Api> {
    id: u32,
    api: Arc<A>,
    handle: VcpuHandle,
    shared: Arc<Shared>,
    kicked: Arc<AtomicBool>,
    /// Powered on (the boot vCPU from the start, the others after PSCI CPU_ON).
    on: bool,
    /// The load whose value the next `run` writes to its register.
    pending_load: Option<MmioAccess>,
    vtimer_masked: bool,
}

impl<A: Api> Drop for HvfVcpu<A> {
    fn drop(&mut self) {
        self.api.vcpu_destroy(self.handle);
    }
}

struct Kicker<A: Api> {
    api: Arc<A>,
    handle: VcpuHandle,
    kicked: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl<A: Api> VcpuKicker for Kicker<A> {
    fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        // Taking the lock orders the flag before a waiter's check of it.
        drop(self.shared.lock());
        self.shared.wake.notify_all();
        self.api.vcpus_exit(self.handle);
    }
}

/// What one guest exit asks of the loop in [`HvfVcpu::run`].
enum Next {
    Resume,
    Exit(VmExit),
}

fn internal(description: String) -> Next {
    Next::Exit(VmExit::InternalError {
        emulation: false,
        description,
    })
}

impl<A: Api> HvfVcpu<A> {
    fn reg(&self, reg: Reg) -> Result<u64> {
        self.api.reg(self.handle, reg)
    }

    fn set_reg(&self, reg: Reg, value: u64) -> Result<()> {
        self.api.set_reg(self.handle, reg, value)
    }

    fn skip_instruction(&self) -> Result<()> {
        self.set_reg(Reg::Pc, self.reg(Reg::Pc)?.wrapping_add(4))
    }

    fn take_kick(&self) -> bool {
        self.kicked.swap(false, Ordering::AcqRel)
    }

    /// Waits, powered off, for a PSCI CPU_ON naming this vCPU; false if kicked first.
    fn wait_for_power_on(&mut self) -> Result<bool> {
        let mut power = self.shared.lock();
        let (entry, context) = loop {
            if self.take_kick() {
                return Ok(false);
            }
            if let Some(start) = power
                .starts
                .get_mut(self.id as usize)
                .and_then(Option::take)
            {
                break start;
            }
            power = self
                .shared
                .wake
                .wait(power)
                .unwrap_or_else(|e| e.into_inner());
        };
        drop(power);
        self.set_reg(Reg::Pc, entry)?;
        self.set_reg(Reg::X(0), context)?;
        self.set_reg(Reg::Cpsr, PSTATE_EL1H_MASKED)?;
        self.on = true;
        Ok(true)
    }

    /// Unmasks the virtual timer once its interrupt no longer fires (the guest acknowledged
    /// it by masking, disabling or moving the deadline).
    fn sync_vtimer(&mut self) -> Result<()> {
        if !self.vtimer_masked {
            return Ok(());
        }
        let ctl = self.api.sys_reg(self.handle, SysReg::CntvCtlEl0)?;
        if ctl & (CNTV_ENABLE | CNTV_IMASK | CNTV_ISTATUS) != CNTV_ENABLE | CNTV_ISTATUS {
            self.api.set_vtimer_mask(self.handle, false)?;
            self.vtimer_masked = false;
        }
        Ok(())
    }

    /// WFI/WFE: sleeps until a device interrupt, a kick or the timer's deadline, bounded by
    /// [`WFI_MAX_SLEEP`].
    fn wait_for_interrupt(&mut self) -> Result<()> {
        let mut sleep = WFI_MAX_SLEEP;
        if self.vtimer_masked {
            return Ok(()); // the timer's interrupt is pending already
        }
        let ctl = self.api.sys_reg(self.handle, SysReg::CntvCtlEl0)?;
        if ctl & (CNTV_ENABLE | CNTV_IMASK) == CNTV_ENABLE {
            let cval = self.api.sys_reg(self.handle, SysReg::CntvCvalEl0)?;
            let now = self.api.virtual_count(self.handle)?;
            let ticks = cval.saturating_sub(now);
            let hz = self.api.counter_hz().max(1);
            let nanos = u128::from(ticks) * 1_000_000_000 / u128::from(hz);
            sleep = sleep.min(Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64));
        }
        let deadline = Instant::now() + sleep;
        let mut power = self.shared.lock();
        let seen = power.interrupts;
        while power.interrupts == seen && !self.kicked.load(Ordering::Acquire) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            power = self
                .shared
                .wake
                .wait_timeout(power, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    fn data_abort(&mut self, syndrome: u64, ipa: u64) -> Result<Next> {
        let access = match esr::decode(syndrome) {
            Ok(a) => a,
            Err(e) => return Ok(internal(format!("MMIO at {ipa:#x}: {e}"))),
        };
        self.skip_instruction()?;
        let size = access.size;
        if access.write {
            let value = if access.reg == XZR {
                0
            } else {
                self.reg(Reg::X(access.reg))?
            };
            let data = Data::from_u64(access.store_value(value), usize::from(size));
            return Ok(Next::Exit(VmExit::MmioWrite { addr: ipa, data }));
        }
        self.pending_load = Some(access);
        Ok(Next::Exit(VmExit::MmioRead { addr: ipa, size }))
    }

    fn psci_call(&mut self) -> Result<Next> {
        let mut x = [0u64; 4];
        for (n, v) in x.iter_mut().enumerate() {
            *v = self.reg(Reg::X(n as u8))?;
        }
        let mut power = self.shared.lock();
        let action = power.psci.call(self.id, x);
        // CPU_ON hands the target its start under the same lock that marked it on.
        if let Action::StartCpu {
            cpu,
            entry,
            context,
        } = action
        {
            if let Some(slot) = power.starts.get_mut(cpu as usize) {
                *slot = Some((entry, context));
            }
        }
        drop(power);
        let ret = match action {
            Action::Return(v) => v,
            Action::StartCpu { .. } => {
                self.shared.wake.notify_all();
                psci::SUCCESS
            }
            Action::StopCaller => {
                self.on = false;
                return Ok(Next::Resume);
            }
            Action::PowerOff => return Ok(Next::Exit(VmExit::SystemEvent(SystemEvent::Shutdown))),
            Action::Reset => return Ok(Next::Exit(VmExit::SystemEvent(SystemEvent::Reset))),
        };
        self.set_reg(Reg::X(0), ret as u64)?;
        Ok(Next::Resume)
    }

    fn system_register(&mut self, syndrome: u64) -> Result<Next> {
        let access = SysRegAccess::decode(syndrome);
        if !access.is_raz_wi() {
            return Ok(internal(format!(
                "the guest's {access} trapped to the VMM, which does not emulate that register"
            )));
        }
        if access.read && access.rt != XZR {
            self.set_reg(Reg::X(access.rt), 0)?;
        }
        self.skip_instruction()?;
        Ok(Next::Resume)
    }

    fn exception(&mut self, syndrome: u64, ipa: u64) -> Result<Next> {
        let ec = ((syndrome >> 26) & 0x3f) as u32;
        match ec {
            esr::EC_DATA_ABORT_LOWER => self.data_abort(syndrome, ipa),
            // HVC returns past itself; a trapped SMC returns to itself.
            EC_HVC64 => self.psci_call(),
            EC_SMC64 => {
                self.skip_instruction()?;
                self.psci_call()
            }
            EC_WFX => {
                self.skip_instruction()?;
                self.wait_for_interrupt()?;
                Ok(Next::Resume)
            }
            EC_SYSREG => self.system_register(syndrome),
            _ => Ok(internal(format!(
                "exception class {ec:#x} (ESR {syndrome:#x}) is not handled"
            ))),
        }
    }
}

impl<A: Api> crate::Vcpu for HvfVcpu<A> {
    fn run(&mut self, entry: VmEntry) -> Result<VmExit> {
        if let (Some(access), VmEntry::MmioRead(data)) = (self.pending_load.take(), entry) {
            if access.reg != XZR {
                self.set_reg(Reg::X(access.reg), access.load_value(data.to_u64()))?;
            }
        }
        loop {
            if self.take_kick() {
                return Ok(VmExit::Interrupted);
            }
            if !self.on {
                if self.wait_for_power_on()? {
                    continue;
                }
                return Ok(VmExit::Interrupted);
            }
            self.sync_vtimer()?;
            let exit = self.api.vcpu_run(self.handle)?;
            let next = match exit.reason {
                ExitReason::Canceled => {
                    self.take_kick();
                    return Ok(VmExit::Interrupted);
                }
                ExitReason::VtimerActivated => {
                    self.vtimer_masked = true;
                    self.api.gic_set_ppi_pending(self.handle, VTIMER_INTID)?;
                    Next::Resume
                }
                ExitReason::Exception => self.exception(exit.syndrome, exit.physical_address)?,
                ExitReason::Unknown(reason) => Next::Exit(VmExit::Unhandled { reason }),
            };
            if let Next::Exit(e) = next {
                return Ok(e);
            }
        }
    }

    fn kicker(&mut self) -> Result<Box<dyn VcpuKicker>> {
        Ok(Box::new(Kicker {
            api: self.api.clone(),
            handle: self.handle,
            kicked: self.kicked.clone(),
            shared: self.shared.clone(),
        }))
    }

    /// Only `crates/vmm/tests/mmu.rs` calls this (to check the x86 page walker against KVM);
    /// the core never translates an arm64 address.
    fn translate_gva(&self, _gva: u64) -> Result<Option<u64>> {
        Err(Error::Unsupported)
    }
}

impl<A: Api> crate::arm64::Arm64Vcpu for HvfVcpu<A> {
    fn set_boot_regs(&self, entry: u64, fdt: u64) -> Result<()> {
        self.set_reg(Reg::Pc, entry)?;
        self.set_reg(Reg::X(0), fdt)?;
        for n in 1..4 {
            self.set_reg(Reg::X(n), 0)?;
        }
        self.set_reg(Reg::Cpsr, PSTATE_EL1H_MASKED)
    }

    fn pc(&self) -> Result<u64> {
        self.reg(Reg::Pc)
    }
}

#[cfg(test)]
mod tests {
    use super::api::CNTV_ENABLE;
    use super::fake::{Event, FakeHvf, Step};
    use super::*;
    use crate::arm64::{Arm64Vcpu, Arm64Vm};
    use crate::{Vcpu, Vm};

    const UART: u64 = 0x0900_0000;

    fn vm(cpus: u32, script: Vec<(u64, Vec<Step>)>) -> (HvfArm64<FakeHvf>, HvfVm<FakeHvf>) {
        let hv = HvfArm64::new(FakeHvf::new(true));
        for (cpu, steps) in script {
            hv.api().script(cpu, steps);
        }
        let vm = hv.create_vm().unwrap();
        vm.create_gic(GicConfig {
            dist_base: 0x0800_0000,
            redist_base: 0x080a_0000,
            cpus,
        })
        .unwrap();
        (hv, vm)
    }

    fn last_run(hv: &HvfArm64<FakeHvf>, cpu: u64) -> (u64, Box<[u64; 31]>) {
        hv.api()
            .log()
            .into_iter()
            .rev()
            .find_map(|e| match e {
                Event::Run { cpu: c, pc, x, .. } if c == cpu => Some((pc, x)),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn mmio_exits_move_pc_and_complete_loads() {
        let (hv, vm) = vm(
            1,
            vec![(
                0,
                vec![
                    Step::mmio_write(UART, 1, 0x1_48),
                    Step::mmio_read(UART + 5, 1, 7),
                    Step::mmio_read(UART, 4, 31),
                    Step::wfi(),
                ],
            )],
        );
        let mut cpu = vm.create_vcpu(0).unwrap();
        cpu.set_boot_regs(0x4020_0000, 0x4800_0000).unwrap();
        let data = Data::from_u64(0x48, 1);
        assert_eq!(
            cpu.run(VmEntry::None).unwrap(),
            VmExit::MmioWrite { addr: UART, data }
        );
        assert_eq!(cpu.pc().unwrap(), 0x4020_0004);
        assert_eq!(
            cpu.run(VmEntry::None).unwrap(),
            VmExit::MmioRead {
                addr: UART + 5,
                size: 1
            }
        );
        // The value lands in X7 on the next entry; a load into XZR is dropped.
        let answer = VmEntry::MmioRead(Data::from_u64(0x60, 1));
        assert!(matches!(
            cpu.run(answer),
            Ok(VmExit::MmioRead { size: 4, .. })
        ));
        let (pc, x) = last_run(&hv, 0);
        assert_eq!((pc, x[7], x[0]), (0x4020_0008, 0x60, 0x4800_0000));
        cpu.kicker().unwrap().kick();
        assert_eq!(
            cpu.run(VmEntry::MmioRead(Data::from_u64(7, 4))).unwrap(),
            VmExit::Interrupted
        );
    }

    #[test]
    fn refuses_what_it_cannot_emulate() {
        let no_isv = Step::exception((0x24 << 26) | (1 << 25) | (2 << 22), UART);
        // mrs x1, sctlr_el1 trapped: not a register the VMM fakes.
        let sctlr = Step::exception((0x18 << 26) | (3 << 20) | (1 << 10) | (1 << 5) | 1, 0);
        let (_hv, vm) = vm(1, vec![(0, vec![no_isv, sctlr])]);
        let mut cpu = vm.create_vcpu(0).unwrap();
        let e = cpu.run(VmEntry::None).unwrap();
        assert!(
            matches!(&e, VmExit::InternalError { description, .. } if description.contains("ISV = 0")),
            "{e:?}"
        );
        let e = cpu.run(VmEntry::None).unwrap();
        assert!(
            matches!(&e, VmExit::InternalError { description, .. } if description.contains("MRS S3_0_C1_C0_0")),
            "{e:?}"
        );
    }

    #[test]
    fn debug_registers_read_as_zero() {
        // mrs x3, oslsr_el1 (S2_0_C1_C1_4), then stop.
        let oslsr = (0x18 << 26) | (2 << 20) | (4 << 17) | (1 << 10) | (3 << 5) | (1 << 1) | 1;
        let (hv, vm) = vm(
            1,
            vec![(
                0,
                vec![
                    Step::exception(oslsr, 0),
                    Step::hvc([psci::SYSTEM_OFF as u64, 0, 0, 0]),
                ],
            )],
        );
        let mut cpu = vm.create_vcpu(0).unwrap();
        hv.api().set_reg(0, Reg::X(3), 99).unwrap();
        assert_eq!(
            cpu.run(VmEntry::None).unwrap(),
            VmExit::SystemEvent(SystemEvent::Shutdown)
        );
        assert_eq!(hv.api().reg(0, Reg::X(3)).unwrap(), 0);
        assert_eq!(hv.api().reg(0, Reg::Pc).unwrap(), 4);
    }

    #[test]
    fn psci_starts_a_secondary_where_the_guest_asks() {
        let cpu_on = [psci::CPU_ON_64 as u64, 1, 0x4030_0000, 0xc0ffee];
        let (hv, vm) = vm(
            2,
            vec![
                (0, vec![Step::hvc(cpu_on), Step::WaitFor("up")]),
                (
                    1,
                    vec![
                        Step::Signal("up"),
                        Step::hvc([psci::SYSTEM_OFF as u64, 0, 0, 0]),
                    ],
                ),
            ],
        );
        let vm = Arc::new(vm);
        let v = vm.clone();
        let secondary = std::thread::spawn(move || {
            let mut cpu = v.create_vcpu(1).unwrap();
            cpu.run(VmEntry::None).unwrap()
        });
        let mut boot = vm.create_vcpu(0).unwrap();
        let kicker = boot.kicker().unwrap();
        let boot_thread = std::thread::spawn(move || boot.run(VmEntry::None).unwrap());
        assert_eq!(
            secondary.join().unwrap(),
            VmExit::SystemEvent(SystemEvent::Shutdown)
        );
        kicker.kick();
        assert_eq!(boot_thread.join().unwrap(), VmExit::Interrupted);
        let (pc, x) = last_run(&hv, 1);
        assert_eq!((pc, x[0]), (0x4030_0000, 0xc0ffee));
        // CPU_ON answered SUCCESS in the caller's X0 (seen when it entered the guest again).
        assert_eq!(last_run(&hv, 0).1[0], 0);
    }

    #[test]
    fn a_powered_off_vcpu_still_stops_when_kicked() {
        let (_hv, vm) = vm(2, vec![]);
        let vm = Arc::new(vm);
        let (tx, rx) = std::sync::mpsc::channel();
        let v = vm.clone();
        let t = std::thread::spawn(move || {
            let mut cpu = v.create_vcpu(1).unwrap();
            tx.send(cpu.kicker().unwrap()).unwrap();
            cpu.run(VmEntry::None).unwrap()
        });
        rx.recv().unwrap().kick();
        assert_eq!(t.join().unwrap(), VmExit::Interrupted);
    }

    #[test]
    fn vtimer_exit_pends_the_ppi_and_unmasks_after_the_guest_acks() {
        let firing = CNTV_ENABLE | CNTV_ISTATUS;
        let (hv, vm) = vm(
            1,
            vec![(
                0,
                vec![
                    Step::SetSys(SysReg::CntvCtlEl0, firing),
                    Step::vtimer(),
                    // The handler masks the timer; the next entry unmasks it.
                    Step::SetSys(SysReg::CntvCtlEl0, firing | CNTV_IMASK),
                    Step::mmio_write(UART, 1, 0),
                    Step::mmio_write(UART, 1, 0),
                ],
            )],
        );
        let mut cpu = vm.create_vcpu(0).unwrap();
        assert!(matches!(
            cpu.run(VmEntry::None),
            Ok(VmExit::MmioWrite { .. })
        ));
        assert!(matches!(
            cpu.run(VmEntry::None),
            Ok(VmExit::MmioWrite { .. })
        ));
        let log = hv.api().log();
        let ppi = log
            .iter()
            .position(|e| *e == Event::PpiPending { cpu: 0, intid: 27 });
        let unmask = log.iter().position(|e| {
            *e == Event::VtimerMask {
                cpu: 0,
                masked: false,
            }
        });
        assert!(ppi.unwrap() < unmask.unwrap(), "{log:?}");
    }

    #[test]
    fn wfi_wakes_on_a_device_interrupt() {
        let (hv, vm) = vm(
            1,
            vec![(0, vec![Step::wfi(), Step::mmio_write(UART, 1, 0)])],
        );
        // No timer armed: only the interrupt (or the WFI_MAX_SLEEP bound) ends the sleep.
        let line = vm.irq_line(33, true).unwrap();
        let mut cpu = vm.create_vcpu(0).unwrap();
        let t = std::thread::Builder::new()
            .name("device".into())
            .spawn(move || line.trigger().unwrap())
            .unwrap();
        assert!(matches!(
            cpu.run(VmEntry::None),
            Ok(VmExit::MmioWrite { .. })
        ));
        t.join().unwrap();
        assert_eq!(
            hv.api().reg(0, Reg::Pc).unwrap(),
            8,
            "WFI and the store skipped"
        );
        let spi = |level| Event::Spi {
            intid: 33,
            level,
            thread: "device".into(),
        };
        let log = hv.api().log();
        assert!(
            log.contains(&spi(true)) && log.contains(&spi(false)),
            "{log:?}"
        );
    }

    #[test]
    fn a_line_that_outlives_its_vm_raises_nothing() {
        let (hv, vm) = vm(1, vec![]);
        let line = vm.irq_line(33, true).unwrap();
        drop(vm);
        line.trigger().unwrap();
        let log = hv.api().log();
        assert!(
            !log.iter().any(|e| matches!(e, Event::Spi { .. })),
            "{log:?}"
        );
    }

    #[test]
    fn no_gic_on_old_macos_is_explained() {
        let hv = HvfArm64::new(FakeHvf::new(false));
        let vm = hv.create_vm().unwrap();
        let gic = GicConfig {
            dist_base: 0,
            redist_base: 0,
            cpus: 1,
        };
        let e = vm.create_gic(gic).unwrap_err().to_string();
        assert!(e.contains("macOS 15"), "{e}");
        assert!(hv.create_vm().is_err(), "one VM per process");
    }
}
