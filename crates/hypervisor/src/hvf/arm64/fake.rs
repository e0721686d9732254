//! A scripted stand-in for Hypervisor.framework, so the arm64 backend and the VMM above it run
//! on any host. Each vCPU (named by the MPIDR the backend gives it) replays a script of
//! exits, setting the registers the guest would have left; a script can also wait for a point
//! another vCPU's script has reached. Everything the backend asks of the "hardware" (GIC
//! lines, pending PPIs, timer masks, registers at each entry) is logged for tests to check.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::api::{Api, Exit, ExitReason, Reg, SysReg, VcpuHandle};
use crate::arm64::esr::EC_DATA_ABORT_LOWER;
use crate::{Error, Result};

/// One step of a vCPU's script.
#[derive(Debug, Clone)]
pub enum Step {
    /// The guest ran and exited like this, leaving these registers.
    Exit { exit: Exit, regs: Vec<(Reg, u64)> },
    /// The guest wrote a system register without trapping (e.g. CNTV_CTL_EL0).
    SetSys(SysReg, u64),
    /// Marks a point other scripts can wait for.
    Signal(&'static str),
    /// Blocks the vCPU (as if the guest spun) until another script signalled this point.
    WaitFor(&'static str),
    /// Blocks the vCPU until SPI `intid` has been raised (a guest waiting for a device).
    WaitForSpi(u32),
}

fn exit(syndrome: u64, ipa: u64, regs: Vec<(Reg, u64)>) -> Step {
    Step::Exit {
        exit: Exit {
            reason: ExitReason::Exception,
            syndrome,
            virtual_address: ipa,
            physical_address: ipa,
        },
        regs,
    }
}

/// ESR_EL2 of a data abort with a valid syndrome: EC 0x24, IL, ISV, SAS, SRT, SF, WnR.
fn data_abort_esr(size: u8, reg: u8, write: bool) -> u64 {
    let sas = u64::from(size.trailing_zeros());
    (u64::from(EC_DATA_ABORT_LOWER) << 26)
        | (1 << 25)
        | (1 << 24)
        | (sas << 22)
        | (u64::from(reg) << 16)
        | (u64::from(size == 8) << 15)
        | (u64::from(write) << 6)
}

impl Step {
    /// `str wN/xN, [x0]` of `value` (size 1, 2, 4 or 8) to an unmapped `ipa`, through X1.
    pub fn mmio_write(ipa: u64, size: u8, value: u64) -> Step {
        exit(data_abort_esr(size, 1, true), ipa, vec![(Reg::X(1), value)])
    }

    /// `ldr wN/xN, [x0]` (size 1, 2, 4 or 8) from an unmapped `ipa` into X`reg`.
    pub fn mmio_read(ipa: u64, size: u8, reg: u8) -> Step {
        exit(data_abort_esr(size, reg, false), ipa, Vec::new())
    }

    /// `hvc #0` with X0..X3 = `x`.
    pub fn hvc(x: [u64; 4]) -> Step {
        let regs = (0..4).map(|n| (Reg::X(n), x[usize::from(n)])).collect();
        exit((0x16 << 26) | (1 << 25), 0, regs)
    }

    /// `wfi`.
    pub fn wfi() -> Step {
        exit((0x01 << 26) | (1 << 25), 0, Vec::new())
    }

    /// Any exception with this ESR_EL2 (and faulting IPA, for aborts); e.g. a trapped
    /// `msr`/`mrs`.
    pub fn exception(syndrome: u64, ipa: u64) -> Step {
        exit(syndrome, ipa, Vec::new())
    }

    /// The guest's virtual timer fired (the framework masks it).
    pub fn vtimer() -> Step {
        Step::Exit {
            exit: Exit {
                reason: ExitReason::VtimerActivated,
                syndrome: 0,
                virtual_address: 0,
                physical_address: 0,
            },
            regs: Vec::new(),
        }
    }
}

/// What the backend did to the "hardware", in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An SPI line changed, from a thread with this name.
    Spi {
        intid: u32,
        level: bool,
        thread: String,
    },
    PpiPending {
        cpu: u64,
        intid: u32,
    },
    VtimerMask {
        cpu: u64,
        masked: bool,
    },
    /// A vCPU entered the guest with these registers.
    Run {
        cpu: u64,
        pc: u64,
        cpsr: u64,
        x: Box<[u64; 31]>,
    },
}

#[derive(Default)]
struct FakeVcpu {
    regs: HashMap<Reg, u64>,
    sys: HashMap<SysReg, u64>,
    cancel: bool,
}

#[derive(Default)]
struct State {
    vm: bool,
    gic: Option<(u64, u64)>,
    maps: Vec<(u64, u64)>,
    vcpus: HashMap<VcpuHandle, FakeVcpu>,
    next_handle: VcpuHandle,
    scripts: HashMap<u64, VecDeque<Step>>,
    signals: HashSet<&'static str>,
    log: Vec<Event>,
}

/// The fake framework.
pub struct FakeHvf {
    state: Mutex<State>,
    changed: Condvar,
    gic_available: bool,
    started: Instant,
}

/// The counter frequency the fake reports (Apple Silicon's).
pub const FAKE_COUNTER_HZ: u64 = 24_000_000;

impl FakeHvf {
    /// A framework with (`gic` = true) or without the macOS 15 GIC calls.
    pub fn new(gic: bool) -> Self {
        FakeHvf {
            state: Mutex::default(),
            changed: Condvar::new(),
            gic_available: gic,
            started: Instant::now(),
        }
    }

    /// Gives vCPU `cpu` (its MPIDR) a script.
    pub fn script(&self, cpu: u64, steps: Vec<Step>) {
        self.lock().scripts.insert(cpu, steps.into());
    }

    pub fn log(&self) -> Vec<Event> {
        self.lock().log.clone()
    }

    /// The GIC's (distributor, redistributor) bases, once created.
    pub fn gic(&self) -> Option<(u64, u64)> {
        self.lock().gic
    }

    /// Guest-physical ranges mapped, as (gpa, size).
    pub fn maps(&self) -> Vec<(u64, u64)> {
        self.lock().maps.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_vcpu<T>(&self, vcpu: VcpuHandle, f: impl FnOnce(&mut FakeVcpu) -> T) -> Result<T> {
        self.lock().vcpus.get_mut(&vcpu).map(f).ok_or(Error::Hvf {
            op: "fake: no such vCPU",
            code: -1,
        })
    }
}

fn mpidr(v: &FakeVcpu) -> u64 {
    v.sys.get(&SysReg::MpidrEl1).copied().unwrap_or(0)
}

impl Api for FakeHvf {
    fn vm_create(&self) -> Result<()> {
        let mut s = self.lock();
        if s.vm {
            return Err(Error::Hvf {
                op: "hv_vm_create (one VM per process)",
                code: -1,
            });
        }
        s.vm = true;
        Ok(())
    }

    fn vm_destroy(&self) {
        self.lock().vm = false;
    }

    unsafe fn vm_map(&self, _hva: u64, gpa: u64, size: u64) -> Result<()> {
        self.lock().maps.push((gpa, size));
        Ok(())
    }

    fn max_vcpus(&self) -> Result<u32> {
        Ok(64)
    }

    fn has_gic(&self) -> bool {
        self.gic_available
    }

    fn gic_create(&self, dist_base: u64, redist_base: u64) -> Result<()> {
        self.lock().gic = Some((dist_base, redist_base));
        Ok(())
    }

    fn gic_set_spi(&self, intid: u32, level: bool) -> Result<()> {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.lock().log.push(Event::Spi {
            intid,
            level,
            thread,
        });
        self.changed.notify_all();
        Ok(())
    }

    fn gic_set_ppi_pending(&self, vcpu: VcpuHandle, intid: u32) -> Result<()> {
        let cpu = self.with_vcpu(vcpu, |v| mpidr(v))?;
        self.lock().log.push(Event::PpiPending { cpu, intid });
        Ok(())
    }

    fn vcpu_create(&self) -> Result<VcpuHandle> {
        let mut s = self.lock();
        let h = s.next_handle;
        s.next_handle += 1;
        s.vcpus.insert(h, FakeVcpu::default());
        Ok(h)
    }

    fn vcpu_destroy(&self, vcpu: VcpuHandle) {
        self.lock().vcpus.remove(&vcpu);
    }

    fn vcpu_run(&self, vcpu: VcpuHandle) -> Result<Exit> {
        let mut s = self.lock();
        let cpu = s.vcpus.get(&vcpu).map(mpidr).ok_or(Error::Hvf {
            op: "fake: hv_vcpu_run on no vCPU",
            code: -1,
        })?;
        let v = &s.vcpus[&vcpu];
        let reg = |r| v.regs.get(&r).copied().unwrap_or(0);
        let run = Event::Run {
            cpu,
            pc: reg(Reg::Pc),
            cpsr: reg(Reg::Cpsr),
            x: Box::new(std::array::from_fn(|n| reg(Reg::X(n as u8)))),
        };
        s.log.push(run);
        loop {
            let v = s.vcpus.get_mut(&vcpu).ok_or(Error::Hvf {
                op: "fake: vCPU destroyed while running",
                code: -1,
            })?;
            if std::mem::take(&mut v.cancel) {
                return Ok(Exit {
                    reason: ExitReason::Canceled,
                    syndrome: 0,
                    virtual_address: 0,
                    physical_address: 0,
                });
            }
            let step = s.scripts.get_mut(&cpu).and_then(VecDeque::pop_front);
            match step {
                Some(Step::Exit { exit, regs }) => {
                    let v = s.vcpus.get_mut(&vcpu).expect("checked above");
                    v.regs.extend(regs);
                    return Ok(exit);
                }
                Some(Step::SetSys(reg, value)) => {
                    if let Some(v) = s.vcpus.get_mut(&vcpu) {
                        v.sys.insert(reg, value);
                    }
                }
                Some(Step::Signal(name)) => {
                    s.signals.insert(name);
                    self.changed.notify_all();
                }
                Some(Step::WaitFor(name)) if !s.signals.contains(name) => {
                    // Not there yet: put the step back and wait like a spinning guest.
                    if let Some(script) = s.scripts.get_mut(&cpu) {
                        script.push_front(Step::WaitFor(name));
                    }
                    s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                Some(Step::WaitFor(_)) => {}
                Some(Step::WaitForSpi(intid)) => {
                    let raised = |log: &[Event]| {
                        log.iter()
                            .any(|e| matches!(e, Event::Spi { intid: i, .. } if *i == intid))
                    };
                    if !raised(&s.log) {
                        if let Some(script) = s.scripts.get_mut(&cpu) {
                            script.push_front(Step::WaitForSpi(intid));
                        }
                        s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                    }
                }
                // The script is over: the guest spins until the VMM stops it.
                None => s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    fn vcpus_exit(&self, vcpu: VcpuHandle) {
        if let Some(v) = self.lock().vcpus.get_mut(&vcpu) {
            v.cancel = true;
        }
        self.changed.notify_all();
    }

    fn reg(&self, vcpu: VcpuHandle, reg: Reg) -> Result<u64> {
        self.with_vcpu(vcpu, |v| v.regs.get(&reg).copied().unwrap_or(0))
    }

    fn set_reg(&self, vcpu: VcpuHandle, reg: Reg, value: u64) -> Result<()> {
        self.with_vcpu(vcpu, |v| {
            v.regs.insert(reg, value);
        })
    }

    fn sys_reg(&self, vcpu: VcpuHandle, reg: SysReg) -> Result<u64> {
        self.with_vcpu(vcpu, |v| v.sys.get(&reg).copied().unwrap_or(0))
    }

    fn set_sys_reg(&self, vcpu: VcpuHandle, reg: SysReg, value: u64) -> Result<()> {
        self.with_vcpu(vcpu, |v| {
            v.sys.insert(reg, value);
        })
    }

    fn set_vtimer_mask(&self, vcpu: VcpuHandle, masked: bool) -> Result<()> {
        let cpu = self.with_vcpu(vcpu, |v| mpidr(v))?;
        self.lock().log.push(Event::VtimerMask { cpu, masked });
        Ok(())
    }

    fn virtual_count(&self, _vcpu: VcpuHandle) -> Result<u64> {
        let ns = self.started.elapsed().as_nanos();
        Ok((ns * u128::from(FAKE_COUNTER_HZ) / 1_000_000_000) as u64)
    }

    fn counter_hz(&self) -> u64 {
        FAKE_COUNTER_HZ
    }
}
