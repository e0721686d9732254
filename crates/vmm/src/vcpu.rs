//! One vCPU thread: create the vCPU on it, then run it and route each exit to the buses until
//! the VM stops. The guest architecture's part (registers at boot, error reports, finishing
//! instructions the hypervisor could not) comes in through [`VcpuSetup`].

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use devices::Bus;
use hypervisor::exit::{Data, SystemEvent};
use hypervisor::{Vcpu, VcpuKicker, VmEntry, VmExit};
use vm_memory::GuestMemoryMmap;

use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::state::{Outcome, VmState};
use crate::Result;

/// What a guest architecture adds to the vCPU thread.
pub(crate) trait VcpuSetup<V: hypervisor::Vm>: Send + Sync {
    /// Creates vCPU `id` on the calling thread (Hypervisor.framework requires that) and loads
    /// its boot state.
    fn create(&self, vm: &V, id: u32) -> Result<V::Vcpu>;

    /// Completes an instruction the hypervisor failed to emulate, if the VMM knows it;
    /// returns whether the guest can go on.
    fn finish_instruction(&self, _vcpu: &V::Vcpu, _mem: &GuestMemoryMmap) -> bool {
        false
    }

    /// ", at PC ..." for error reports: where the guest was and what it ran.
    fn location(&self, vcpu: &V::Vcpu, mem: &GuestMemoryMmap) -> String;

    /// Emulates the instruction at the vCPU's PC, which accessed unbacked `gpa`, against
    /// guest memory and `mmio` (for hypervisors that do not decode MMIO instructions).
    fn emulate_mmio(
        &self,
        _id: u32,
        _vcpu: &mut V::Vcpu,
        _mem: &GuestMemoryMmap,
        _mmio: &Bus,
        gpa: u64,
    ) -> std::result::Result<(), String> {
        Err(format!(
            "the hypervisor left the MMIO access at {gpa:#x} undecoded"
        ))
    }

    // Hooks for an interrupt controller the VMM runs itself (x86 `--irqchip userspace`).

    /// Reads an address only this vCPU sees (its local APIC); false if `addr` is not one.
    fn local_read(&self, _id: u32, _addr: u64, _data: &mut [u8]) -> bool {
        false
    }

    /// Writes an address only this vCPU sees; false if `addr` is not one.
    fn local_write(&self, _id: u32, _addr: u64, _data: &[u8]) -> bool {
        false
    }

    /// Runs before every entry into the guest (to inject interrupts); `Ok(false)` means the
    /// vCPU may not run yet (it waits for a start-up IPI and was asked to stop or pause).
    fn before_entry(&self, _id: u32, _vcpu: &mut V::Vcpu, _state: &VmState) -> Result<bool> {
        Ok(true)
    }

    /// The guest halted and the hypervisor left waiting for an interrupt to the VMM.
    fn halt(&self, _id: u32, _state: &VmState) {
        // With an in-kernel irqchip HLT waits in the kernel; a backend that returns it has no
        // interrupt to wait for yet, so yield instead of spinning hot.
        std::thread::yield_now()
    }

    /// Wakes this vCPU's thread wherever the set-up makes it wait, for stop and pause.
    fn waker(&self) -> Option<Box<dyn VcpuKicker>> {
        None
    }

    /// Forgets what `create` registered for vCPU `id` to reach its thread (kickers); called on
    /// that thread before it ends, however it ends.
    fn detach(&self, _id: u32) {}
}

/// Unregisters a vCPU thread's kickers when the thread leaves `thread_main`, by return or by
/// unwinding, so nothing signals its thread id once the thread is gone.
struct Registration<'a, V: hypervisor::Vm>(&'a VcpuContext<V>);

impl<V: hypervisor::Vm> Drop for Registration<'_, V> {
    fn drop(&mut self) {
        self.0.state.remove_kickers(self.0.id);
        self.0.setup.detach(self.0.id);
    }
}

/// Everything a vCPU thread needs, moved into it.
pub(crate) struct VcpuContext<V: hypervisor::Vm> {
    pub id: u32,
    pub vm: Arc<V>,
    pub setup: Arc<dyn VcpuSetup<V>>,
    pub state: Arc<VmState>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: Arc<GuestMemoryMmap>,
    pub seccomp: SeccompMode,
}

/// What an unbacked read returns: all ones, as an open bus does.
const OPEN_BUS: u8 = 0xff;

impl<V: hypervisor::Vm> VcpuContext<V> {
    /// Creates and configures the vCPU on this thread, reports readiness, waits for the go
    /// signal, then runs.
    pub(crate) fn thread_main(self, ready: Sender<Result<()>>, go: Receiver<bool>) {
        // Dropped last: after the vCPU, on every way out of this function.
        let _registration = Registration(&self);
        // Confined once the vCPU exists (creating it needs calls a running vCPU does not) and
        // before the guest runs.
        let vcpu = match self.create().and_then(|v| {
            seccomp::confine(ThreadKind::Vcpu, self.seccomp)?;
            Ok(v)
        }) {
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
        let mut vcpu = self.setup.create(&self.vm, self.id)?;
        self.state.add_kicker(self.id, vcpu.kicker()?);
        if let Some(waker) = self.setup.waker() {
            self.state.add_kicker(self.id, waker);
        }
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
            match self.setup.before_entry(self.id, &mut vcpu, &self.state) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return self.crash(e.to_string()),
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
                // `rep ins`/`rep outs`: each element is its own access, as on hardware (a
                // device may count them or return a different value each time).
                VmExit::IoInString { port, size, .. } => {
                    let size = usize::from(size.max(1));
                    for element in vcpu.string_io_data().chunks_exact_mut(size) {
                        element.fill(OPEN_BUS);
                        self.pio.read(u64::from(port), element);
                    }
                }
                VmExit::IoOutString { port, size, .. } => {
                    let size = usize::from(size.max(1));
                    for element in vcpu.string_io_data().chunks_exact(size) {
                        self.pio.write(u64::from(port), element);
                    }
                }
                VmExit::MmioWrite { addr, data } => {
                    if !self.setup.local_write(self.id, addr, data.as_slice())
                        && !self.mmio.write(addr, data.as_slice())
                    {
                        log::debug!("vcpu{}: unhandled MMIO write at {addr:#x}", self.id);
                    }
                }
                VmExit::MmioRead { addr, size } => {
                    let mut data = Data::new(&[OPEN_BUS; 8][..usize::from(size)]);
                    if !self.setup.local_read(self.id, addr, data.as_mut_slice())
                        && !self.mmio.read(addr, data.as_mut_slice())
                    {
                        log::debug!("vcpu{}: unhandled MMIO read at {addr:#x}", self.id);
                    }
                    entry = VmEntry::MmioRead(data);
                }
                VmExit::MmioInstruction { gpa } => {
                    let done = self
                        .setup
                        .emulate_mmio(self.id, &mut vcpu, &self.mem, &self.mmio, gpa);
                    if let Err(why) = done {
                        let at = self.setup.location(&vcpu, &self.mem);
                        return self.crash(format!("{why}{at}"));
                    }
                }
                VmExit::Interrupted | VmExit::InterruptWindow => {}
                VmExit::Halt => self.setup.halt(self.id, &self.state),
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
                    if emulation && self.setup.finish_instruction(&vcpu, &self.mem) {
                        continue;
                    }
                    let at = self.setup.location(&vcpu, &self.mem);
                    return self.crash(format!("{description}{at}"));
                }
                VmExit::FailEntry { reason } => {
                    return self.crash(format!(
                        "hypervisor refused to enter the guest (hardware reason {reason:#x})"
                    ))
                }
                VmExit::Unhandled { reason } => {
                    let at = self.setup.location(&vcpu, &self.mem);
                    return self.crash(format!("unhandled exit reason {reason}{at}"));
                }
            }
        }
    }

    fn crash(&self, reason: String) {
        self.state.request_stop(Outcome::Crash {
            vcpu: self.id,
            reason,
        });
    }
}
