//! The VM lifecycle: create (memory, irqchip, devices, kernel) -> start (vCPU threads) ->
//! pause/resume -> stop -> destroy (threads joined, then fds and memory released by drop).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::acpi_ged::PowerButton;
use devices::console_output::{self, ConsoleOutput};
use devices::serial::Serial;
use devices::{Bus, BusDevice, ConsoleInput};
use vm_memory::GuestMemoryMmap;

use crate::config::ConsoleKind;
use crate::control::{VmController, VmInfo};
use crate::device_manager::{DeviceCounts, Devices};
use crate::event_loop::{EventLoop, EventLoopBuilder};
use crate::seccomp::SeccompMode;
use crate::snapshot::{SnapshotError, Snapshotter, Writer};
use crate::state::{Outcome, StopHandle, VmState};
use crate::stats::{Stats, StatsRegistry};
use crate::trace::{Trace, TraceConfig};
use crate::vcpu::{VcpuContext, VcpuSetup};
use crate::{Error, Result};

/// A virtual machine built from a [`VmConfig`]: by [`Vm::new`] for x86_64 guests, by
/// [`crate::aarch64::create`] for arm64 guests. Everything after creation is the same for both.
pub struct Vm<V: hypervisor::Vm + 'static> {
    /// Declared before `mem`, so dropped first: the hypervisor's VM must be gone before its
    /// guest memory is unmapped (the `map_memory` contract). vCPU threads hold clones only
    /// until they are joined.
    vm: Arc<V>,
    mem: Arc<GuestMemoryMmap>,
    state: Arc<VmState>,
    /// The buses are filled before `start` and shared read-only after it.
    pio: Option<Bus>,
    mmio: Option<Bus>,
    /// The started buses, kept so that the devices on them are dropped here, by the owner,
    /// and not on a confined vCPU thread that happens to end last.
    started_buses: Option<(Arc<Bus>, Arc<Bus>)>,
    serial: Arc<Mutex<Serial>>,
    virtio_console: Option<Arc<Mutex<dyn ConsoleInput>>>,
    mmio_console: Option<Arc<Mutex<dyn ConsoleInput>>>,
    /// The consoles' host sides, flushed (for a bounded time) when the VM stops.
    outputs: Vec<ConsoleOutput>,
    /// The ACPI power button, where the guest has one.
    power_button: Option<PowerButton>,
    /// How each vCPU is created and set up for the guest architecture.
    setup: Arc<dyn VcpuSetup<V>>,
    cpus: u32,
    seccomp: SeccompMode,
    threads: Vec<JoinHandle<()>>,
    /// Device handlers, until `start` runs them on the event-loop thread.
    events: Option<EventLoopBuilder>,
    event_loop: Option<EventLoop>,
    info: Arc<VmInfo>,
    /// `--trace`, until `start` hands it to the vCPU threads.
    trace: Option<TraceConfig>,
    /// The devices' counters, until `start` hands them to the statistics.
    device_counts: Option<DeviceCounts>,
    /// Set by `start`: the exit counters and the controller of the running VM.
    stats: Option<Arc<StatsRegistry>>,
    controller: Option<VmController>,
    /// Writes snapshots of the paused VM (for `Vm::snapshot` and the controller).
    snapshotter: Arc<dyn Snapshotter>,
}

/// What a machine hands [`Vm::assemble`] from the config, besides its devices.
pub(crate) struct Settings {
    pub cpus: u32,
    pub seccomp: SeccompMode,
    pub info: VmInfo,
    pub trace: Option<TraceConfig>,
}

impl Settings {
    /// Takes what the VM keeps from `config` (its trace writer, among others).
    pub(crate) fn take(config: &mut crate::VmConfig) -> Self {
        Settings {
            cpus: config.cpus,
            seccomp: config.seccomp,
            info: VmInfo::new(config),
            trace: config.trace.take(),
        }
    }
}

/// Checks the vCPU count against the hypervisor's and the platform's limits.
pub(crate) fn check_cpus(cpus: u32, hypervisor_max: u32, platform_max: u32) -> Result<()> {
    let max = hypervisor_max.min(platform_max);
    if cpus == 0 || cpus > max {
        return Err(Error::BadCpuCount { cpus, max });
    }
    Ok(())
}

impl<V: hypervisor::Vm + 'static> Vm<V> {
    /// Puts a created VM together; no vCPU runs until [`Vm::start`].
    pub(crate) fn assemble(
        vm: Arc<V>,
        mem: GuestMemoryMmap,
        state: Arc<VmState>,
        devices: Devices,
        setup: Arc<dyn VcpuSetup<V>>,
        settings: Settings,
    ) -> Self {
        let mem = Arc::new(mem);
        let snapshotter = Arc::new(Writer {
            vm: Arc::downgrade(&vm),
            setup: setup.clone(),
            state: state.clone(),
            mem: mem.clone(),
            devices: devices.saved,
            cpus: settings.cpus,
        });
        Vm {
            vm,
            mem,
            state,
            pio: Some(devices.pio),
            mmio: Some(devices.mmio),
            started_buses: None,
            serial: devices.serial,
            virtio_console: devices.virtio_console,
            mmio_console: devices.mmio_console,
            outputs: devices.outputs,
            power_button: devices.power_button,
            setup,
            cpus: settings.cpus,
            seccomp: settings.seccomp,
            threads: Vec::new(),
            events: Some(devices.events),
            event_loop: None,
            info: Arc::new(settings.info),
            trace: settings.trace,
            device_counts: Some(devices.counts),
            stats: None,
            controller: None,
            snapshotter,
        }
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
        let (pio_devices, mmio_devices) = (pio.devices(), mmio.devices());
        let trace = self
            .trace
            .take()
            .map(|t| Arc::new(Trace::new(t, pio_devices.clone(), mmio_devices.clone())));
        let stats = Arc::new(StatsRegistry::new(
            self.cpus,
            pio_devices,
            mmio_devices,
            self.device_counts.take().unwrap_or_default(),
        ));
        self.stats = Some(stats.clone());
        let started = std::time::Instant::now();
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        self.started_buses = Some((pio.clone(), mmio.clone()));
        if let Some(events) = self.events.take().filter(|e| !e.is_empty()) {
            self.event_loop = Some(events.start(self.seccomp).map_err(|source| Error::Os {
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
                vm: self.vm.clone(),
                setup: self.setup.clone(),
                state: self.state.clone(),
                pio: pio.clone(),
                mmio: mmio.clone(),
                mem: self.mem.clone(),
                seccomp: self.seccomp,
                stats: stats.vcpus[id as usize].clone(),
                trace: trace.clone(),
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
            None => {
                self.controller = Some(VmController {
                    state: self.state.clone(),
                    devices: self.event_loop.as_ref().map(EventLoop::pauser),
                    vcpus: self.threads.len(),
                    info: self.info.clone(),
                    power_button: self.power_button.clone(),
                    stats,
                    started,
                    op: Default::default(),
                    snapshotter: self.snapshotter.clone(),
                });
                Ok(())
            }
            Some(e) => {
                self.state
                    .request_stop(Outcome::Stopped("vCPU set-up failed".into()));
                self.join();
                Err(e)
            }
        }
    }

    /// Pauses the VM: every vCPU leaves the guest and waits, then the device thread parks, so
    /// nothing changes guest memory or raises an interrupt until [`Vm::resume`].
    pub fn pause(&self) {
        self.state.pause(self.threads.len());
        if let Some(l) = &self.event_loop {
            l.pause();
        }
    }

    pub fn resume(&self) {
        if let Some(l) = &self.event_loop {
            l.resume();
        }
        self.state.resume();
    }

    /// The ACPI power button (`None` without ACPI, and on arm64), for pressing it from
    /// another thread: [`VmController::shutdown`] does.
    pub fn power_button(&self) -> Option<PowerButton> {
        self.power_button.clone()
    }

    /// Writes a snapshot of the paused VM into `dir` (see [`crate::snapshot`]).
    pub fn snapshot(&self, dir: &std::path::Path) -> std::result::Result<(), SnapshotError> {
        self.snapshotter.write(dir)
    }

    /// What the VM was built with.
    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    /// A handle for controlling and observing the VM from other threads; `None` until
    /// [`Vm::start`] succeeded.
    pub fn controller(&self) -> Option<VmController> {
        self.controller.clone()
    }

    /// The exit counters so far; `None` before [`Vm::start`].
    pub fn stats(&self) -> Option<Stats> {
        self.stats.as_ref().map(|s| s.snapshot())
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

    /// Stops every vCPU thread and the device event loop, joins them, and hands the consoles'
    /// last output to the host (waiting at most [`console_output::FLUSH_GRACE`] for a host
    /// side that does not read).
    fn join(&mut self) {
        self.join_threads();
        let deadline = std::time::Instant::now() + console_output::FLUSH_GRACE;
        for out in self.outputs.drain(..) {
            out.finish(deadline);
        }
    }

    fn join_threads(&mut self) {
        if let Some(mut l) = self.event_loop.take() {
            l.stop();
        }
        if self.threads.is_empty() {
            return;
        }
        self.state
            .request_stop(Outcome::Stopped("VM destroyed".into()));
        // Each thread removed its kickers on its way out (see `VcpuContext::thread_main`).
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
    }
}

impl<V: hypervisor::Vm + 'static> Drop for Vm<V> {
    fn drop(&mut self) {
        self.join();
    }
}
