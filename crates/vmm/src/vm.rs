//! The VM lifecycle: create (memory, irqchip, devices, kernel) -> start (vCPU threads) ->
//! pause/resume -> stop -> destroy (threads joined, then fds and memory released by drop).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::serial::Serial;
use devices::{Bus, BusDevice, ConsoleInput};
use hypervisor::Hypervisor;
use vm_memory::GuestMemoryMmap;

use crate::boot::{self, BootPlan};
use crate::config::ConsoleKind;
use crate::device_manager;
use crate::event_loop::{EventLoop, EventLoopBuilder};
use crate::state::{Outcome, StopHandle, VmState};
use crate::vcpu::VcpuContext;
use crate::{memory, Error, Result, VmConfig};

/// A virtual machine built from a [`VmConfig`].
pub struct Vm<V: hypervisor::ArchVm + 'static> {
    vm: Arc<V>,
    mem: Arc<GuestMemoryMmap>,
    state: Arc<VmState>,
    /// The buses are filled before `start` and shared read-only after it.
    pio: Option<Bus>,
    mmio: Option<Bus>,
    serial: Arc<Mutex<Serial>>,
    virtio_console: Option<Arc<Mutex<dyn ConsoleInput>>>,
    mmio_console: Option<Arc<Mutex<dyn ConsoleInput>>>,
    plan: BootPlan,
    cpus: u32,
    #[cfg(target_arch = "x86_64")]
    cpuid: Vec<hypervisor::x86_64::CpuidEntry>,
    #[cfg(target_arch = "x86_64")]
    cpuid_hide: Vec<arch::x86_64::cpuid::Feature>,
    threads: Vec<JoinHandle<()>>,
    /// Device handlers, until `start` runs them on the event-loop thread.
    events: Option<EventLoopBuilder>,
    event_loop: Option<EventLoop>,
}

/// The most vCPUs this VMM can describe to a guest (the MP table's APIC ID space).
pub const MAX_VCPUS: u32 = arch::x86_64::mptable::MAX_CPUS;

impl<V: hypervisor::ArchVm + 'static> Vm<V> {
    /// Creates the VM: validates the config, allocates and maps memory, creates the irqchip and
    /// the platform devices, and loads the kernel. No vCPU runs until [`Vm::start`].
    pub fn new<H: Hypervisor<Vm = V>>(hv: &H, mut config: VmConfig) -> Result<Self> {
        let max = hv.max_vcpus().min(MAX_VCPUS);
        if config.cpus == 0 || config.cpus > max {
            return Err(Error::BadCpuCount {
                cpus: config.cpus,
                max,
            });
        }
        let mem = memory::allocate(config.memory)?;
        let vm = hv.create_vm()?;
        memory::register(&vm, &mem)?;
        // A hardware-reduced ACPI platform has no PIT (the FADT tells the guest so); a legacy
        // one gets KVM's. Measured here, an idle in-kernel PIT costs ~10% of PIO exit rate.
        vm.create_irqchip(!config.acpi)?;
        let state = Arc::new(VmState::new().map_err(|source| Error::Os {
            op: "eventfd",
            source,
        })?);

        let virtio = device_manager::plan_virtio(&mut config)?;
        let plan = boot::load(&mem, &config, &virtio.slots)?;
        let devices = device_manager::build(&vm, &mem, &state, &mut config, virtio)?;

        #[cfg(target_arch = "x86_64")]
        let cpuid = vm.supported_cpuid()?;
        Ok(Vm {
            vm: Arc::new(vm),
            mem: Arc::new(mem),
            state,
            pio: Some(devices.pio),
            mmio: Some(devices.mmio),
            serial: devices.serial,
            virtio_console: devices.virtio_console,
            mmio_console: devices.mmio_console,
            plan,
            cpus: config.cpus,
            #[cfg(target_arch = "x86_64")]
            cpuid,
            #[cfg(target_arch = "x86_64")]
            cpuid_hide: config.cpuid_hide,
            threads: Vec::new(),
            events: Some(devices.events),
            event_loop: None,
        })
    }

    /// Adds a port-I/O device before the VM starts.
    pub fn add_pio_device(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u16,
        len: u16,
    ) -> Result<()> {
        let bus = self.pio.as_mut().ok_or(Error::AlreadyStarted)?;
        bus.insert(dev, u64::from(base), u64::from(len))
            .map_err(|source| Error::Bus {
                base: u64::from(base),
                source,
            })
    }

    /// Adds an MMIO device before the VM starts.
    pub fn add_mmio_device(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<()> {
        let bus = self.mmio.as_mut().ok_or(Error::AlreadyStarted)?;
        bus.insert(dev, base, len)
            .map_err(|source| Error::Bus { base, source })
    }

    /// The serial console, for feeding it host input.
    pub fn serial(&self) -> Arc<Mutex<Serial>> {
        self.serial.clone()
    }

    /// The input side of a console device, if the VM has that device.
    pub fn console_input(&self, kind: ConsoleKind) -> Option<Arc<Mutex<dyn ConsoleInput>>> {
        match kind {
            ConsoleKind::Serial => Some(self.serial.clone()),
            ConsoleKind::Virtio => self.virtio_console.clone(),
            ConsoleKind::Mmio => self.mmio_console.clone(),
        }
    }

    /// Guest memory, for inspection.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.state.clone())
    }

    /// Starts one thread per vCPU. Every vCPU is created and configured before any runs, so a
    /// boot vCPU's start-up IPIs always find their targets.
    pub fn start(&mut self) -> Result<()> {
        let (Some(pio), Some(mmio)) = (self.pio.take(), self.mmio.take()) else {
            return Err(Error::AlreadyStarted);
        };
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        if let Some(events) = self.events.take().filter(|e| !e.is_empty()) {
            self.event_loop = Some(events.start().map_err(|source| Error::Os {
                op: "start the device event loop",
                source,
            })?);
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut go = Vec::new();
        for id in 0..self.cpus {
            let (go_tx, go_rx) = mpsc::channel();
            go.push(go_tx);
            let ctx = VcpuContext {
                id,
                num_cpus: self.cpus,
                vm: self.vm.clone(),
                state: self.state.clone(),
                pio: pio.clone(),
                mmio: mmio.clone(),
                mem: self.mem.clone(),
                plan: self.plan,
                #[cfg(target_arch = "x86_64")]
                cpuid: self.cpuid.clone(),
                #[cfg(target_arch = "x86_64")]
                cpuid_hide: self.cpuid_hide.clone(),
            };
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || ctx.thread_main(ready, go_rx))
                .map_err(Error::SpawnThread);
            match handle {
                Ok(h) => self.threads.push(h),
                Err(e) => {
                    drop(go);
                    self.join();
                    return Err(e);
                }
            }
        }
        drop(ready_tx);
        let mut first_err = None;
        for _ in 0..self.cpus {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => break,
            }
        }
        let ok = first_err.is_none();
        for g in go {
            let _ = g.send(ok);
        }
        match first_err {
            None => Ok(()),
            Some(e) => {
                self.state
                    .request_stop(Outcome::Stopped("vCPU set-up failed".into()));
                self.join();
                Err(e)
            }
        }
    }

    /// Pauses every vCPU (each leaves the guest and waits).
    pub fn pause(&self) {
        self.state.pause(self.threads.len());
    }

    pub fn resume(&self) {
        self.state.resume();
    }

    /// Blocks until the VM stops, stops every vCPU, and reports how the guest ended.
    pub fn wait(mut self) -> Outcome {
        self.state.wait_for_stop();
        self.join();
        self.state
            .outcome()
            .unwrap_or_else(|| Outcome::Stopped("no outcome recorded".into()))
    }

    /// Starts the VM and waits for it to end.
    pub fn run(mut self) -> Result<Outcome> {
        self.start()?;
        Ok(self.wait())
    }

    /// Stops every vCPU thread and the device event loop, and joins them.
    fn join(&mut self) {
        if let Some(mut l) = self.event_loop.take() {
            l.stop();
        }
        if self.threads.is_empty() {
            return;
        }
        self.state
            .request_stop(Outcome::Stopped("VM destroyed".into()));
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
        self.state.clear_kickers();
    }
}

impl<V: hypervisor::ArchVm + 'static> Drop for Vm<V> {
    fn drop(&mut self) {
        self.join();
    }
}
