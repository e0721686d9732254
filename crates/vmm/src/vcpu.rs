//! One vCPU thread: create the vCPU on it, then run it and route each exit to the buses until
//! the VM stops. The guest architecture's part (registers at boot, error reports, finishing
//! instructions the hypervisor could not) comes in through [`VcpuSetup`].

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use devices::Bus;
use hypervisor::exit::{Data, SystemEvent};
use hypervisor::{Vcpu, VcpuKicker, VmEntry, VmExit};
use vm_memory::GuestMemoryMmap;

use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::state::{Outcome, VmState};
use crate::stats::{ExitKind, Target, VcpuStats};
use crate::trace::Trace;
use crate::Result;

/// An access as the exit trace describes it.
enum Access {
    None,
    /// Port, the value written or read, who answered, direction.
    Pio(u16, Data, Target, &'static str),
    /// Port, element size, element count, who answered (the last element), direction.
    PioString(u16, usize, u32, Target, &'static str),
    Mmio(u64, Data, Target, &'static str),
    /// An access the VMM decodes itself: only its guest-physical address is known yet.
    Gpa(u64),
}

fn target(index: Option<usize>) -> Target {
    index.map_or(Target::Unclaimed, Target::Device)
}

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

    /// Where the guest is, for the exit trace: "rip 0x..." and, with `bytes`, the bytes of
    /// the one instruction there.
    fn trace_location(&self, vcpu: &V::Vcpu, mem: &GuestMemoryMmap, _bytes: bool) -> String {
        self.location(vcpu, mem)
            .trim_start_matches(", at ")
            .to_string()
    }

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

    // Snapshots (see `crate::snapshot`):

    /// What the machine was built with; `None` where snapshots are not supported.
    fn machine(&self) -> Option<&crate::snapshot::Machine> {
        None
    }

    /// Reads vCPU `id`'s state on its own thread, the guest not running.
    fn save_vcpu(&self, _id: u32, _vcpu: &V::Vcpu) -> Result<crate::snapshot::VcpuSnapshot> {
        Err(crate::Error::Unsupported("snapshots on this platform"))
    }

    /// Reads the hypervisor's VM-wide state and puts it together with the vCPUs'.
    fn save_vm(
        &self,
        _vm: &V,
        _vcpus: Vec<crate::snapshot::VcpuSnapshot>,
    ) -> Result<crate::snapshot::ArchState> {
        Err(crate::Error::Unsupported("snapshots on this platform"))
    }
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
    /// This vCPU's exit counters (only this thread writes them).
    pub stats: Arc<VcpuStats>,
    /// `--trace exits`: one line per exit.
    pub trace: Option<Arc<Trace>>,
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
                self.park(&mut vcpu, &mut entry);
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
            let t0 = Instant::now();
            entry = VmEntry::None;
            // What the exit trace says about the access, when it is on.
            let mut access = Access::None;
            let kind = match exit {
                VmExit::IoOut { port, data } => {
                    let target = target(self.pio.write_at(u64::from(port), data.as_slice()));
                    self.stats.pio(target);
                    access = Access::Pio(port, data, target, "->");
                    ExitKind::PioOut
                }
                VmExit::IoIn { port, size } => {
                    let mut data = Data::new(&[OPEN_BUS; 8][..usize::from(size)]);
                    let target = target(self.pio.read_at(u64::from(port), data.as_mut_slice()));
                    self.stats.pio(target);
                    access = Access::Pio(port, data, target, "<-");
                    entry = VmEntry::IoIn(data);
                    ExitKind::PioIn
                }
                // `rep ins`/`rep outs`: each element is its own access, as on hardware (a
                // device may count them or return a different value each time).
                VmExit::IoInString { port, size, count } => {
                    let size = usize::from(size.max(1));
                    let mut t = None;
                    for element in vcpu.string_io_data().chunks_exact_mut(size) {
                        element.fill(OPEN_BUS);
                        t = self.pio.read_at(u64::from(port), element);
                    }
                    self.stats.pio(target(t));
                    access = Access::PioString(port, size, count, target(t), "<-");
                    ExitKind::PioString
                }
                VmExit::IoOutString { port, size, count } => {
                    let size = usize::from(size.max(1));
                    let mut t = None;
                    for element in vcpu.string_io_data().chunks_exact(size) {
                        t = self.pio.write_at(u64::from(port), element);
                    }
                    self.stats.pio(target(t));
                    access = Access::PioString(port, size, count, target(t), "->");
                    ExitKind::PioString
                }
                VmExit::MmioWrite { addr, data } => {
                    let target = if self.setup.local_write(self.id, addr, data.as_slice()) {
                        Target::LocalApic
                    } else {
                        target(self.mmio.write_at(addr, data.as_slice()))
                    };
                    if target == Target::Unclaimed {
                        log::debug!("vcpu{}: unhandled MMIO write at {addr:#x}", self.id);
                    }
                    self.stats.mmio(target);
                    access = Access::Mmio(addr, data, target, "->");
                    ExitKind::MmioWrite
                }
                VmExit::MmioRead { addr, size } => {
                    let mut data = Data::new(&[OPEN_BUS; 8][..usize::from(size)]);
                    let target = if self.setup.local_read(self.id, addr, data.as_mut_slice()) {
                        Target::LocalApic
                    } else {
                        target(self.mmio.read_at(addr, data.as_mut_slice()))
                    };
                    if target == Target::Unclaimed {
                        log::debug!("vcpu{}: unhandled MMIO read at {addr:#x}", self.id);
                    }
                    self.stats.mmio(target);
                    access = Access::Mmio(addr, data, target, "<-");
                    entry = VmEntry::MmioRead(data);
                    ExitKind::MmioRead
                }
                VmExit::MmioInstruction { gpa } => {
                    // The instruction is traced before it runs: the trace shows its bytes.
                    self.trace_exit(&vcpu, ExitKind::MmioEmulated, &Access::Gpa(gpa));
                    let done = self
                        .setup
                        .emulate_mmio(self.id, &mut vcpu, &self.mem, &self.mmio, gpa);
                    self.stats.exit(ExitKind::MmioEmulated, t0.elapsed());
                    if let Err(why) = done {
                        let at = self.setup.location(&vcpu, &self.mem);
                        return self.crash(format!("{why}{at}"));
                    }
                    continue;
                }
                VmExit::Interrupted => ExitKind::Interrupted,
                VmExit::InterruptWindow => ExitKind::InterruptWindow,
                VmExit::Halt => {
                    self.trace_exit(&vcpu, ExitKind::Halt, &access);
                    self.setup.halt(self.id, &self.state);
                    self.stats.exit(ExitKind::Halt, t0.elapsed());
                    continue;
                }
                VmExit::Shutdown => {
                    self.end_exit(&vcpu, ExitKind::Shutdown, t0);
                    return self.crash("triple fault (CPU shutdown)".into());
                }
                VmExit::SystemEvent(event) => {
                    self.end_exit(&vcpu, ExitKind::SystemEvent, t0);
                    return match event {
                        SystemEvent::Shutdown => self.state.request_stop(Outcome::PowerOff),
                        SystemEvent::Reset => self.state.request_stop(Outcome::Reset),
                        SystemEvent::Crash => self.crash("guest reported a crash".into()),
                    };
                }
                VmExit::InternalError {
                    emulation,
                    description,
                } => {
                    if emulation {
                        self.trace_exit(&vcpu, ExitKind::EmulationFallback, &access);
                        if self.setup.finish_instruction(&vcpu, &self.mem) {
                            self.stats.exit(ExitKind::EmulationFallback, t0.elapsed());
                            continue;
                        }
                    }
                    self.end_exit(&vcpu, ExitKind::Error, t0);
                    let at = self.setup.location(&vcpu, &self.mem);
                    return self.crash(format!("{description}{at}"));
                }
                VmExit::FailEntry { reason } => {
                    self.end_exit(&vcpu, ExitKind::Error, t0);
                    return self.crash(format!(
                        "hypervisor refused to enter the guest (hardware reason {reason:#x})"
                    ));
                }
                VmExit::Unhandled { reason } => {
                    self.end_exit(&vcpu, ExitKind::Error, t0);
                    let at = self.setup.location(&vcpu, &self.mem);
                    return self.crash(format!("unhandled exit reason {reason}{at}"));
                }
            };
            self.stats.exit(kind, t0.elapsed());
            self.trace_exit(&vcpu, kind, &access);
        }
    }

    /// Waits while the VM is paused, saving this vCPU's state whenever a snapshot asks.
    fn park(&self, vcpu: &mut V::Vcpu, entry: &mut VmEntry) {
        let saves = &self.state.saves;
        self.state.park_with(
            || saves.wanted(self.id),
            || saves.answer(self.id, self.save(vcpu, entry)),
        );
    }

    /// Completes the exit the vCPU stopped at (its read's value is still in `entry`), so its
    /// registers are final, then reads its state.
    fn save(
        &self,
        vcpu: &mut V::Vcpu,
        entry: &mut VmEntry,
    ) -> Result<crate::snapshot::VcpuSnapshot> {
        if *entry != VmEntry::None {
            vcpu.finish_exit(std::mem::take(entry))?;
        }
        self.setup.save_vcpu(self.id, vcpu)
    }

    /// Counts and traces an exit that ends the VM.
    fn end_exit(&self, vcpu: &V::Vcpu, kind: ExitKind, t0: Instant) {
        self.stats.exit(kind, t0.elapsed());
        self.trace_exit(vcpu, kind, &Access::None);
    }

    /// Writes the exit's trace line, if `--trace` asked for exits of this kind.
    #[inline]
    fn trace_exit(&self, vcpu: &V::Vcpu, kind: ExitKind, access: &Access) {
        let Some(trace) = &self.trace else { return };
        if !trace.wants(kind) {
            return;
        }
        // KVM leaves RIP on a read (it completes the instruction with the value at the next
        // entry) but reports a write with RIP already past it: the bytes at RIP would be the
        // next instruction's, so a write shows RIP alone.
        let bytes = matches!(
            kind,
            ExitKind::PioIn
                | ExitKind::MmioRead
                | ExitKind::MmioEmulated
                | ExitKind::EmulationFallback
                | ExitKind::Error
        );
        let at = self.setup.trace_location(vcpu, &self.mem, bytes);
        let names = |t: Target, devices: &[(u64, u64, String)]| match t {
            Target::Device(i) => devices
                .get(i)
                .map_or("device", |d| d.2.as_str())
                .to_string(),
            Target::LocalApic => "local-apic".into(),
            Target::Unclaimed => "unclaimed".into(),
        };
        let what = match access {
            Access::None => String::new(),
            Access::Pio(port, data, t, dir) => format!(
                "port {port:#06x} size {} value {:#x} {dir} {}",
                data.len(),
                data.to_u64(),
                names(*t, &trace.pio)
            ),
            Access::PioString(port, size, count, t, dir) => format!(
                "port {port:#06x} size {size} count {count} {dir} {}",
                names(*t, &trace.pio)
            ),
            Access::Mmio(addr, data, t, dir) => format!(
                "addr {addr:#x} size {} value {:#x} {dir} {}",
                data.len(),
                data.to_u64(),
                names(*t, &trace.mmio)
            ),
            Access::Gpa(gpa) => format!("gpa {gpa:#x}"),
        };
        trace.line(self.id, kind, &what, &at);
    }

    fn crash(&self, reason: String) {
        self.state.request_stop(Outcome::Crash {
            vcpu: self.id,
            reason,
        });
    }
}
