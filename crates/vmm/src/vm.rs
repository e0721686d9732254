//! The VM lifecycle: create (memory, irqchip, devices, kernel) -> start (vCPU threads) ->
//! pause/resume -> stop -> destroy (threads joined, then fds and memory released by drop).

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arch::x86_64::layout::{VirtioMmioSlot, MAX_VIRTIO_DEVICES};
use devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT};
use devices::i8042::{self, I8042};
use devices::mmio_console::MmioConsole;
use devices::serial::{self, Serial};
use devices::virtio::block::Block;
use devices::virtio::console::{Console as VirtioConsole, RX_QUEUE};
use devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use devices::virtio::net::{self, Net, Tap};
use devices::virtio::VirtioDevice;
use devices::ConsoleInput;
use devices::{Bus, BusDevice, VmControl};
use hypervisor::Hypervisor;
use std::os::fd::AsRawFd;
use vm_memory::GuestMemoryMmap;

use crate::boot::{self, BootPlan};
use crate::config::{ConsoleKind, SerialOutput};
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

fn serial_writer(out: SerialOutput) -> Result<Box<dyn Write + Send>> {
    Ok(match out {
        SerialOutput::Stdout => Box::new(io::stdout()),
        SerialOutput::File(path) => {
            Box::new(File::create(&path).map_err(|source| Error::SerialFile { path, source })?)
        }
        SerialOutput::Writer(w) => w,
        SerialOutput::None => Box::new(io::sink()),
    })
}

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

        // Every virtio device gets the next window and interrupt line: disks, network
        // devices, then the console.
        let mut virtio: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for disk in &config.disks {
            virtio.push(Box::new(Block::open(&disk.path, disk.read_only)?));
        }
        // TAPs to watch: (device index, descriptor).
        let mut taps = Vec::new();
        let mut macs: Vec<[u8; 6]> = Vec::new();
        for (i, n) in config.nets.iter().enumerate() {
            let mac = n
                .mac
                .unwrap_or([0x52, 0x54, 0x00, 0x12, 0x34, 0x56u8.wrapping_add(i as u8)]);
            if macs.contains(&mac) {
                let text: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
                return Err(Error::DuplicateMac(text.join(":")));
            }
            macs.push(mac);
            let dev = Net::new(Box::new(Tap::open(&n.tap)?), mac);
            if let Some(fd) = dev.tap_fd() {
                taps.push((virtio.len(), fd));
            }
            virtio.push(Box::new(dev));
        }
        let mut console_input = None;
        let VmConfig {
            virtio_console: virtio_console_out,
            mmio_console: mmio_console_out,
            ..
        } = &mut config;
        if let Some(out) = virtio_console_out.take() {
            let console = VirtioConsole::new(serial_writer(out)?);
            console_input = Some((virtio.len(), console.input_handle()));
            virtio.push(Box::new(console));
        }
        let mmio_console_out = mmio_console_out.take();
        if virtio.len() > MAX_VIRTIO_DEVICES as usize {
            return Err(Error::TooManyDevices {
                count: virtio.len(),
                max: MAX_VIRTIO_DEVICES,
            });
        }
        let slots: Vec<VirtioMmioSlot> =
            (0..virtio.len() as u32).map(VirtioMmioSlot::nth).collect();

        let plan = boot::load(&mem, &config, &slots)?;

        let VmConfig {
            serial: serial_out,
            cpus,
            #[cfg(target_arch = "x86_64")]
            cpuid_hide,
            ..
        } = config;
        let serial = Arc::new(Mutex::new(Serial::new(
            vm.irq_line(serial::COM1_IRQ, config.irqfd)?,
            serial_writer(serial_out)?,
        )));
        let control: Arc<dyn VmControl> = state.clone();
        let mut pio = Bus::new();
        let mut add = |dev: Arc<Mutex<dyn BusDevice>>, base, len| {
            pio.insert(dev, base, len)
                .map_err(|source| Error::Bus { base, source })
        };
        add(serial.clone(), serial::COM1_PORT, serial::PORT_RANGE)?;
        add(
            Arc::new(Mutex::new(I8042::new(control.clone()))),
            i8042::I8042_DATA_PORT,
            i8042::PORT_RANGE,
        )?;
        add(
            Arc::new(Mutex::new(DebugExit::new(control))),
            DEBUG_EXIT_PORT,
            1,
        )?;

        let mut mmio = Bus::new();
        let mut events = EventLoopBuilder::default();
        let mut virtio_console: Option<Arc<Mutex<dyn ConsoleInput>>> = None;
        for (n, (device, slot)) in virtio.into_iter().zip(&slots).enumerate() {
            let transport = add_virtio(
                &vm,
                &mem,
                &mut mmio,
                &mut events,
                device,
                slot,
                (config.ioeventfd, config.irqfd),
            )?;
            if let Some(&(_, fd)) = taps.iter().find(|(at, _)| *at == n) {
                let t = transport.clone();
                events.add_edge(fd, Box::new(move || lock(&t).process_queue(net::RX_QUEUE)));
            }
            if let Some((_, mut handle)) = console_input.take_if(|(at, _)| *at == n) {
                let rx = lock(&transport).notify_eventfds()[RX_QUEUE]
                    .try_clone()
                    .map_err(|source| Error::Os {
                        op: "dup a queue eventfd",
                        source,
                    })?;
                handle.connect(rx);
                virtio_console = Some(Arc::new(Mutex::new(handle)));
            }
        }
        let mut mmio_console: Option<Arc<Mutex<dyn ConsoleInput>>> = None;
        if let Some(out) = mmio_console_out {
            let console = Arc::new(Mutex::new(MmioConsole::new(serial_writer(out)?)));
            let base = arch::x86_64::layout::platform_mmio_window(0);
            mmio.insert(
                console.clone(),
                base,
                arch::x86_64::layout::MMIO_WINDOW_SIZE,
            )
            .map_err(|source| Error::Bus { base, source })?;
            mmio_console = Some(console);
        }

        #[cfg(target_arch = "x86_64")]
        let cpuid = vm.supported_cpuid()?;
        Ok(Vm {
            vm: Arc::new(vm),
            mem: Arc::new(mem),
            state,
            pio: Some(pio),
            mmio: Some(mmio),
            serial,
            virtio_console,
            mmio_console,
            plan,
            cpus,
            #[cfg(target_arch = "x86_64")]
            cpuid,
            #[cfg(target_arch = "x86_64")]
            cpuid_hide,
            threads: Vec::new(),
            events: Some(events),
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

/// Puts a virtio device on the MMIO bus behind a virtio-mmio transport at `slot`, and routes
/// its queue notifications to the event loop (through ioeventfd when the hypervisor has it).
fn add_virtio<V: hypervisor::Vm>(
    vm: &V,
    mem: &GuestMemoryMmap,
    bus: &mut Bus,
    events: &mut EventLoopBuilder,
    device: Box<dyn VirtioDevice>,
    slot: &VirtioMmioSlot,
    (ioeventfd, irqfd): (bool, bool),
) -> Result<Arc<Mutex<MmioTransport>>> {
    let os = |op| move |source| Error::Os { op, source };
    let transport = MmioTransport::new(device, mem.clone(), vm.irq_line(slot.gsi, irqfd)?)
        .map_err(os("create a virtio-mmio transport"))?;
    let notify: Vec<_> = transport
        .notify_eventfds()
        .iter()
        .map(|e| e.try_clone())
        .collect::<std::io::Result<_>>()
        .map_err(os("dup a queue eventfd"))?;
    let transport = Arc::new(Mutex::new(transport));
    bus.insert(transport.clone(), slot.base, slot.size)
        .map_err(|source| Error::Bus {
            base: slot.base,
            source,
        })?;
    for (index, evt) in notify.into_iter().enumerate() {
        if ioeventfd {
            match vm.register_mmio_notify(&evt, slot.base + REG_QUEUE_NOTIFY, index as u32) {
                Ok(()) | Err(hypervisor::Error::Unsupported) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let t = transport.clone();
        events.add(
            evt.as_raw_fd(),
            Box::new(move || {
                let _ = evt.read();
                lock(&t).process_queue(index);
            }),
        );
    }
    Ok(transport)
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<V: hypervisor::ArchVm + 'static> Drop for Vm<V> {
    fn drop(&mut self) {
        self.join();
    }
}
