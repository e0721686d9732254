//! A scripted stand-in for Hypervisor.framework on Intel, so the x86 backend and the VMM above
//! it run on Linux. Each vCPU (in creation order) replays a script of VM exits: the exit
//! reason, qualification, instruction length and guest-physical address the VMCS would hold,
//! and the registers the guest would have left. The VMCS and registers the backend writes are
//! kept, and every entry is logged with the registers it starts from.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::api::{Api, Capability, Reg, VcpuHandle};
use super::vmcs::*;
use crate::{Error, Result};

/// One VM exit the "guest" takes.
#[derive(Debug, Clone, Default)]
pub struct Exit {
    pub reason: u32,
    pub qualification: u64,
    pub instruction_length: u64,
    pub gpa: u64,
    /// Registers as the guest left them.
    pub regs: Vec<(Reg, u64)>,
    /// Guest-state VMCS fields as the guest left them (a segment's access rights after a
    /// change of privilege, say).
    pub vmcs: Vec<(u32, u64)>,
}

impl Exit {
    pub fn new(reason: u32, instruction_length: u64) -> Self {
        Exit {
            reason,
            instruction_length,
            ..Default::default()
        }
    }

    /// `out dx, al`-style: port I/O of `size` bytes, `input` for IN.
    pub fn io(port: u16, size: u8, input: bool, rax: u64) -> Self {
        Exit {
            reason: EXIT_IO,
            qualification: (u64::from(port) << 16)
                | u64::from(size - 1)
                | if input { 1 << 3 } else { 0 },
            instruction_length: 1,
            regs: vec![(Reg::Gpr(0), rax)],
            ..Default::default()
        }
    }

    /// An access to unbacked `gpa` with RIP at `rip`.
    pub fn ept_violation(gpa: u64, rip: u64) -> Self {
        Exit {
            reason: EXIT_EPT_VIOLATION,
            gpa,
            regs: vec![(Reg::Rip, rip)],
            ..Default::default()
        }
    }

    pub fn with(mut self, reg: Reg, value: u64) -> Self {
        self.regs.push((reg, value));
        self
    }

    pub fn with_vmcs(mut self, field: u32, value: u64) -> Self {
        self.vmcs.push((field, value));
        self
    }
}

/// What the backend did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A vCPU entered the guest: its RIP, RAX, RCX and CR2, and the interruption info it
    /// carried with that event's error code (meaningful when the info asks to deliver one).
    Run {
        vcpu: VcpuHandle,
        rip: u64,
        rax: u64,
        rcx: u64,
        cr2: u64,
        interruption: u64,
        error_code: u64,
    },
}

#[derive(Default)]
struct FakeVcpu {
    regs: HashMap<Reg, u64>,
    vmcs: HashMap<u32, u64>,
    native_msrs: Vec<u32>,
    interrupt: bool,
}

#[derive(Default)]
struct State {
    vm: bool,
    maps: Vec<(u64, u64)>,
    vcpus: HashMap<VcpuHandle, FakeVcpu>,
    next: VcpuHandle,
    scripts: HashMap<VcpuHandle, VecDeque<Exit>>,
    log: Vec<Event>,
}

pub struct FakeHvf {
    state: Mutex<State>,
    changed: Condvar,
    capabilities: HashMap<Capability, u64>,
}

impl Default for FakeHvf {
    /// A CPU that allows every control and requires none.
    fn default() -> Self {
        Self::with_capabilities(HashMap::new())
    }
}

impl FakeHvf {
    /// A CPU with these capability registers (anything not named allows all, requires none).
    pub fn with_capabilities(capabilities: HashMap<Capability, u64>) -> Self {
        FakeHvf {
            state: Mutex::default(),
            changed: Condvar::new(),
            capabilities,
        }
    }

    /// Gives the `n`th vCPU created (0-based) a script.
    pub fn script(&self, vcpu: VcpuHandle, exits: Vec<Exit>) {
        self.lock().scripts.insert(vcpu, exits.into());
    }

    pub fn log(&self) -> Vec<Event> {
        self.lock().log.clone()
    }

    pub fn maps(&self) -> Vec<(u64, u64)> {
        self.lock().maps.clone()
    }

    /// A VMCS field of vCPU `vcpu` as the backend last wrote it.
    pub fn vmcs(&self, vcpu: VcpuHandle, field: u32) -> Option<u64> {
        self.lock().vcpus.get(&vcpu)?.vmcs.get(&field).copied()
    }

    pub fn native_msrs(&self, vcpu: VcpuHandle) -> Vec<u32> {
        self.lock()
            .vcpus
            .get(&vcpu)
            .map(|v| v.native_msrs.clone())
            .unwrap_or_default()
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

    fn read_capability(&self, cap: Capability) -> Result<u64> {
        Ok(self
            .capabilities
            .get(&cap)
            .copied()
            .unwrap_or(0xffff_ffff_0000_0000))
    }

    fn vcpu_create(&self) -> Result<VcpuHandle> {
        let mut s = self.lock();
        let h = s.next;
        s.next += 1;
        s.vcpus.insert(h, FakeVcpu::default());
        Ok(h)
    }

    fn vcpu_destroy(&self, vcpu: VcpuHandle) {
        self.lock().vcpus.remove(&vcpu);
    }

    fn vcpu_run(&self, vcpu: VcpuHandle) -> Result<()> {
        let mut s = self.lock();
        let v = s.vcpus.get_mut(&vcpu).ok_or(Error::Hvf {
            op: "fake: hv_vcpu_run on no vCPU",
            code: -1,
        })?;
        let reg = |r| v.regs.get(&r).copied().unwrap_or(0);
        let run = Event::Run {
            vcpu,
            rip: reg(Reg::Rip),
            rax: reg(Reg::Gpr(0)),
            rcx: reg(Reg::Gpr(1)),
            cr2: reg(Reg::Cr2),
            interruption: v
                .vmcs
                .get(&CTRL_ENTRY_INTERRUPTION_INFO)
                .copied()
                .unwrap_or(0),
            error_code: v
                .vmcs
                .get(&CTRL_ENTRY_EXCEPTION_ERROR)
                .copied()
                .unwrap_or(0),
        };
        // Entering delivers the injected event: the valid bit clears.
        v.vmcs.insert(CTRL_ENTRY_INTERRUPTION_INFO, 0);
        s.log.push(run);
        loop {
            let v = s.vcpus.get_mut(&vcpu).ok_or(Error::Hvf {
                op: "fake: vCPU destroyed while running",
                code: -1,
            })?;
            if std::mem::take(&mut v.interrupt) {
                v.vmcs
                    .insert(RO_EXIT_REASON, u64::from(EXIT_EXTERNAL_INTERRUPT));
                return Ok(());
            }
            if let Some(exit) = s.scripts.get_mut(&vcpu).and_then(VecDeque::pop_front) {
                let v = s.vcpus.get_mut(&vcpu).expect("checked above");
                v.regs.extend(exit.regs);
                v.vmcs.extend(exit.vmcs);
                v.vmcs.insert(RO_EXIT_REASON, u64::from(exit.reason));
                v.vmcs.insert(RO_EXIT_QUALIFICATION, exit.qualification);
                v.vmcs
                    .insert(RO_EXIT_INSTRUCTION_LENGTH, exit.instruction_length);
                v.vmcs.insert(RO_GUEST_PHYSICAL_ADDRESS, exit.gpa);
                return Ok(());
            }
            // The script is over: the guest spins until the VMM stops it.
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn vcpu_interrupt(&self, vcpu: VcpuHandle) {
        if let Some(v) = self.lock().vcpus.get_mut(&vcpu) {
            v.interrupt = true;
        }
        self.changed.notify_all();
    }

    fn read_reg(&self, vcpu: VcpuHandle, reg: Reg) -> Result<u64> {
        self.with_vcpu(vcpu, |v| v.regs.get(&reg).copied().unwrap_or(0))
    }

    fn write_reg(&self, vcpu: VcpuHandle, reg: Reg, value: u64) -> Result<()> {
        self.with_vcpu(vcpu, |v| {
            v.regs.insert(reg, value);
        })
    }

    fn read_vmcs(&self, vcpu: VcpuHandle, field: u32) -> Result<u64> {
        self.with_vcpu(vcpu, |v| v.vmcs.get(&field).copied().unwrap_or(0))
    }

    fn write_vmcs(&self, vcpu: VcpuHandle, field: u32, value: u64) -> Result<()> {
        self.with_vcpu(vcpu, |v| {
            v.vmcs.insert(field, value);
        })
    }

    fn enable_native_msr(&self, vcpu: VcpuHandle, msr: u32) -> Result<()> {
        self.with_vcpu(vcpu, |v| v.native_msrs.push(msr))
    }
}
