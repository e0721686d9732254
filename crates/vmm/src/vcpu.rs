//! One vCPU thread: set the vCPU up, then run it and route each exit to the buses until the VM
//! stops.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use devices::Bus;
use hypervisor::exit::{Data, SystemEvent};
use hypervisor::x86_64::Regs;
use hypervisor::{ArchVcpu, Vcpu, VmEntry, VmExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::BootPlan;
use crate::state::{Outcome, VmState};
use crate::Result;

/// Everything a vCPU thread needs, moved into it.
pub(crate) struct VcpuContext<V: hypervisor::ArchVm> {
    pub id: u32,
    pub num_cpus: u32,
    pub vm: Arc<V>,
    pub state: Arc<VmState>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: Arc<GuestMemoryMmap>,
    pub plan: BootPlan,
    #[cfg(target_arch = "x86_64")]
    pub cpuid: Vec<hypervisor::x86_64::CpuidEntry>,
    #[cfg(target_arch = "x86_64")]
    pub cpuid_hide: Vec<arch::x86_64::cpuid::Feature>,
}

/// What an unbacked read returns: all ones, as an open bus does on a PC.
const OPEN_BUS: u8 = 0xff;

impl<V: hypervisor::ArchVm> VcpuContext<V> {
    /// Creates and configures the vCPU on this thread (HVF requires that), reports readiness,
    /// waits for the go signal, then runs.
    pub(crate) fn thread_main(self, ready: Sender<Result<()>>, go: Receiver<bool>) {
        let vcpu = match self.create() {
            Ok(v) => v,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        if go.recv() != Ok(true) {
            return;
        }
        self.run(vcpu);
    }

    fn create(&self) -> Result<V::Vcpu> {
        let mut vcpu = self.vm.create_vcpu(self.id)?;
        #[cfg(target_arch = "x86_64")]
        {
            use arch::x86_64::{cpuid, regs};
            let table = cpuid::for_vcpu(&self.cpuid, self.id, self.num_cpus, &self.cpuid_hide);
            vcpu.set_cpuid(&table)?;
            vcpu.set_msrs(&regs::boot_msrs())?;
            vcpu.reset_fpu()?;
            vcpu.setup_lapic_lints()?;
            // Secondary vCPUs wait for INIT/SIPI from the boot vCPU, as on real hardware.
            if self.id == 0 {
                let p = self.plan;
                vcpu.set_regs(&regs::boot_regs(p.protocol, p.entry))?;
                let sregs = regs::boot_special_regs(p.protocol, vcpu.special_regs()?, p.cr3);
                vcpu.set_special_regs(&sregs)?;
            }
        }
        self.state.add_kicker(vcpu.kicker()?);
        Ok(vcpu)
    }

    fn run(&self, mut vcpu: V::Vcpu) {
        let mut entry = VmEntry::None;
        loop {
            if self.state.stopping() {
                return;
            }
            if self.state.pause_requested() {
                self.state.park();
                continue;
            }
            let exit = match vcpu.run(entry) {
                Ok(exit) => exit,
                Err(e) => return self.crash(e.to_string()),
            };
            entry = VmEntry::None;
            match exit {
                VmExit::IoOut { port, data } => {
                    self.pio.write(u64::from(port), data.as_slice());
                }
                VmExit::IoIn { port, size } => {
                    let mut data = Data::new(&[OPEN_BUS; 8][..usize::from(size)]);
                    self.pio.read(u64::from(port), data.as_mut_slice());
                    entry = VmEntry::IoIn(data);
                }
                VmExit::MmioWrite { addr, data } => {
                    if !self.mmio.write(addr, data.as_slice()) {
                        log::debug!("vcpu{}: unhandled MMIO write at {addr:#x}", self.id);
                    }
                }
                VmExit::MmioRead { addr, size } => {
                    let mut data = Data::new(&[OPEN_BUS; 8][..usize::from(size)]);
                    if !self.mmio.read(addr, data.as_mut_slice()) {
                        log::debug!("vcpu{}: unhandled MMIO read at {addr:#x}", self.id);
                    }
                    entry = VmEntry::MmioRead(data);
                }
                VmExit::Interrupted => {}
                // With an in-kernel irqchip HLT waits in the kernel; a backend that returns it
                // has no interrupt to wait for yet, so yield instead of spinning hot.
                VmExit::Halt => std::thread::yield_now(),
                VmExit::Shutdown => return self.crash("triple fault (CPU shutdown)".into()),
                VmExit::SystemEvent(SystemEvent::Shutdown) => {
                    return self.state.request_stop(Outcome::PowerOff)
                }
                VmExit::SystemEvent(SystemEvent::Reset) => {
                    return self.state.request_stop(Outcome::Reset)
                }
                VmExit::SystemEvent(SystemEvent::Crash) => {
                    return self.crash("guest reported a crash".into())
                }
                VmExit::InternalError {
                    emulation,
                    description,
                } => {
                    if emulation && self.finish_instruction(&vcpu) {
                        continue;
                    }
                    let at = self.where_(&vcpu);
                    return self.crash(format!("{description}{at}"));
                }
                VmExit::FailEntry { reason } => {
                    return self.crash(format!(
                        "hypervisor refused to enter the guest (hardware reason {reason:#x})"
                    ))
                }
                VmExit::Unhandled { reason } => {
                    let at = self.where_(&vcpu);
                    return self.crash(format!("unhandled exit reason {reason}{at}"));
                }
            }
        }
    }

    /// The guest's RIP, where it points in guest memory, and up to 15 bytes of the instruction
    /// there (fewer near the end of RAM; none if RIP is not mapped).
    fn instruction_at_rip(&self, vcpu: &V::Vcpu) -> Option<(Regs, Option<u64>, [u8; 15], usize)> {
        let regs = vcpu.regs().ok()?;
        let mut bytes = [0u8; 15];
        let gpa = vcpu.translate_gva(regs.rip).ok().flatten();
        let n = gpa.map_or(0, |gpa| {
            self.mem.read(&mut bytes, GuestAddress(gpa)).unwrap_or(0)
        });
        Some((regs, gpa, bytes, n))
    }

    /// Completes an instruction the hypervisor failed to emulate, if it is one that
    /// `arch::x86_64::fixup` knows; returns whether the guest can go on.
    fn finish_instruction(&self, vcpu: &V::Vcpu) -> bool {
        let Some((mut regs, _, bytes, n)) = self.instruction_at_rip(vcpu) else {
            return false;
        };
        let Some(fix) = arch::x86_64::fixup::for_instruction(&bytes[..n]) else {
            return false;
        };
        (regs.rip, regs.rflags) = fix.apply(regs.rip, regs.rflags);
        if vcpu.set_regs(&regs).is_err() {
            return false;
        }
        if let Some(vector) = fix.exception {
            if vcpu.inject_exception(vector).is_err() {
                return false;
            }
        }
        log::debug!(
            "vcpu{}: completed {} the hypervisor could not emulate",
            self.id,
            fix.mnemonic
        );
        true
    }

    fn crash(&self, reason: String) {
        self.state.request_stop(Outcome::Crash {
            vcpu: self.id,
            reason,
        });
    }

    /// ", at RIP 0x... (bytes ...)" for error reports: where the guest was and what it ran.
    fn where_(&self, vcpu: &V::Vcpu) -> String {
        let Some((regs, gpa, bytes, n)) = self.instruction_at_rip(vcpu) else {
            return String::new();
        };
        let mut s = format!(", at RIP {:#x}", regs.rip);
        if let Some(gpa) = gpa {
            let hex: Vec<String> = bytes[..n].iter().map(|b| format!("{b:02x}")).collect();
            s += &format!(" (gpa {gpa:#x}), instruction bytes [{}]", hex.join(" "));
        }
        s
    }
}
