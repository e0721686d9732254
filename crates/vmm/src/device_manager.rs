//! The device manager: builds the port and MMIO buses, the platform devices on them (on a PC:
//! the i8042 reset line, the debug-exit port, the ACPI registers and power button), the PCI
//! bus (x86_64), the virtio devices behind their transports (virtio-mmio windows or virtio-pci
//! functions), and the event-loop handlers that serve them.
//!
//! In two steps, because the kernel's boot structures must describe the virtio-mmio devices
//! before they are wired: [`plan_virtio`] opens what the config asks for and gives each device
//! its window and interrupt line (or its PCI device number); [`build`] puts everything on the
//! buses.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, Weak};

use arch::VirtioMmioSlot;
use devices::acpi_ged::{self, Ged, PowerButton};
use devices::acpi_pm::{self, AcpiPm};
use devices::console_output::ConsoleOutput;
use devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT};
use devices::i8042::{self, I8042};
use devices::mmio_console::{self, MmioConsole};
use devices::pci::host_bridge::HostBridge;
use devices::pci::root::{BarWindow, ConfigPorts, Ecam, CONFIG_PORTS_SIZE};
use devices::pci::{BarKind, PciRoot, PciWindows};
use devices::serial::{self, Serial};
use devices::virtio::block::Block;
use devices::virtio::console::{Console as VirtioConsole, ConsoleInputHandle, RX_QUEUE, TX_QUEUE};
use devices::virtio::counters::{self, DeviceCounters};
use devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use devices::virtio::net::{self, Net, NetBackend, SocketNet, Tap};
use devices::virtio::pci::{self as virtio_pci, NotifyBinding, PciWiring, VirtioPciDevice};
use devices::virtio::{VirtioDevice, VirtioTransport};
use devices::{lock, Bus, BusDevice, ConsoleInput, VmControl};
use hypervisor::Event;
use vm_memory::GuestMemoryMmap;

use crate::config::{NetBackendConfig, SerialOutput};
use crate::event_loop::{EventLoopBuilder, Interest};
use crate::irq_counts::{InterruptLines, LineCount};
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::state::VmState;
use crate::{Error, Result, Transport, VmConfig};

/// Gives the interrupt line for a GSI (x86) or GIC INTID (arm64): from the hypervisor, or
/// from the VMM's own interrupt controller.
pub(crate) type IrqSource<'a> = dyn Fn(u32) -> Result<Box<dyn hypervisor::IrqLine>> + 'a;

/// Gives a new MSI vector: from the hypervisor, or from the VMM's own interrupt controller.
pub(crate) type MsiSource<'a> = dyn Fn() -> Result<Box<dyn hypervisor::MsiLine>> + 'a;

/// Makes a level-triggered line for a GSI driven from outside the VMM (a passed-through
/// function's INTx): a signal on `trigger` raises it, and the guest's EOI lowers it and
/// signals `resample`. `None`: the hypervisor watches both itself (KVM's resampling irqfd);
/// `Some(line)`: the VMM's own interrupt controller does the EOI side, and the event loop
/// must trigger `line` whenever `trigger` fires.
pub(crate) type LevelSource<'a> =
    dyn Fn(u32, &Event, &Event) -> Result<Option<Box<dyn hypervisor::IrqLine>>> + 'a;

/// Where a platform's PCI bus is.
pub(crate) struct PciPlatform {
    windows: PciWindows,
    /// The ECAM window (start, size) and the configuration ports.
    ecam: (u64, u64),
    config_port: u64,
    /// The GSI INTx pin `pin` (0 = INTA) of device `n` is routed to.
    intx_gsi: fn(u8, u8) -> u32,
}

/// Where a PC's ACPI devices are.
pub(crate) struct PcPorts {
    /// The power-management registers (base).
    acpi_pm: u64,
    /// The Generic Event Device's event status register, and its interrupt line.
    ged: u64,
    ged_gsi: u32,
}

/// Where a guest platform puts the devices this manager builds.
pub(crate) struct Platform {
    /// Window and interrupt line of virtio-mmio device `n`.
    virtio_slot: fn(u32) -> VirtioMmioSlot,
    max_virtio: u32,
    /// The 16550: (on the port bus rather than in MMIO space, base, interrupt line).
    serial: (bool, u64, u32),
    mmio_console: u64,
    /// The PC's i8042 reset line, the debug-exit port, the ACPI registers and the GED's line.
    pc_ports: Option<PcPorts>,
    pci: Option<PciPlatform>,
}

impl Platform {
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn x86_64() -> Self {
        use arch::x86_64::layout;
        Platform {
            virtio_slot: layout::virtio_slot,
            max_virtio: layout::MAX_VIRTIO_DEVICES,
            serial: (true, layout::COM1_PORT, layout::COM1_IRQ),
            mmio_console: layout::platform_mmio_window(0),
            pc_ports: Some(PcPorts {
                acpi_pm: layout::ACPI_PM_PORT,
                ged: layout::ACPI_GED_PORT,
                ged_gsi: layout::ACPI_GED_GSI,
            }),
            pci: Some(PciPlatform {
                windows: PciWindows {
                    mmio: (layout::PCI_MMIO_START, layout::PCI_MMIO_SIZE),
                    io: (layout::PCI_IO_START, layout::PCI_IO_SIZE),
                },
                ecam: (layout::PCIE_ECAM_START, layout::PCIE_ECAM_SIZE),
                config_port: layout::PCI_CONFIG_PORT,
                intx_gsi: layout::pci_intx_gsi,
            }),
        }
    }

    /// The arm64 `virt` layout: every device in MMIO space, interrupts are GIC SPIs.
    pub(crate) fn aarch64() -> Self {
        use arch::aarch64::layout;
        Platform {
            virtio_slot: layout::virtio_slot,
            max_virtio: layout::MAX_VIRTIO_DEVICES,
            serial: (
                false,
                layout::UART_START,
                layout::SPI_BASE + layout::UART_SPI,
            ),
            mmio_console: layout::MMIO_CONSOLE_START,
            pc_ports: None,
            pci: None,
        }
    }
}

// The FADT and DSDT describe exactly the registers devices::acpi_pm implements.
#[cfg(target_arch = "x86_64")]
const _: () = {
    use arch::x86_64::{acpi, layout};
    assert!(acpi::SLEEP_CONTROL_PORT == layout::ACPI_PM_PORT + acpi_pm::SLEEP_CONTROL);
    assert!(acpi::SLEEP_STATUS_PORT == layout::ACPI_PM_PORT + acpi_pm::SLEEP_STATUS);
    assert!(acpi::RESET_PORT == layout::ACPI_PM_PORT + acpi_pm::RESET);
    assert!(acpi::RESET_VALUE == acpi_pm::RESET_VALUE);
    assert!(acpi::S5_SLEEP_TYPE == acpi_pm::S5_SLEEP_TYPE);
    assert!(acpi::GED_EVENT_POWER_BUTTON == acpi_ged::EVENT_POWER_BUTTON);
};

/// The virtio devices a config asks for, in window (or PCI device number) order, not yet
/// wired.
pub(crate) struct VirtioPlan {
    devices: Vec<Box<dyn VirtioDevice>>,
    transport: Transport,
    /// Where each virtio-mmio device is described to the guest (window and interrupt line);
    /// empty for virtio-pci, which the guest finds on the bus.
    pub slots: Vec<VirtioMmioSlot>,
    /// (device index, TAP descriptor) of the network devices.
    taps: Vec<(usize, RawFd)>,
    /// (device index, input side, output) of the virtio-console.
    console: Option<(usize, ConsoleInputHandle, ConsoleOutput)>,
}

/// Everything on the buses, ready for the vCPUs and the event loop.
pub(crate) struct Devices {
    pub pio: Bus,
    pub mmio: Bus,
    pub events: EventLoopBuilder,
    pub serial: Arc<Mutex<Serial>>,
    pub virtio_console: Option<Arc<Mutex<dyn ConsoleInput>>>,
    pub mmio_console: Option<Arc<Mutex<dyn ConsoleInput>>>,
    /// Every console's output, to be flushed when the VM stops.
    pub outputs: Vec<ConsoleOutput>,
    /// The ACPI power button (a PC with ACPI tables).
    pub power_button: Option<PowerButton>,
    /// The devices a snapshot saves (and names those it cannot).
    pub saved: crate::snapshot::DeviceHandles,
    /// What the devices count, for the statistics.
    pub counts: DeviceCounts,
}

/// The device-side counters: each virtio device's (name, transport, counters) and each
/// interrupt line's.
#[derive(Default)]
pub(crate) struct DeviceCounts {
    pub virtio: Vec<(String, &'static str, Arc<DeviceCounters>)>,
    pub lines: Vec<LineCount>,
}

/// The host side of a console: a writer thread named `name` in front of the destination, so
/// the device never waits for it. The thread is confined as `seccomp` says.
pub(crate) fn console_output(
    out: SerialOutput,
    name: &str,
    seccomp: SeccompMode,
) -> Result<ConsoleOutput> {
    let dest: Box<dyn Write + Send> = match out {
        SerialOutput::Stdout => Box::new(io::stdout()),
        SerialOutput::File(path) => {
            Box::new(File::create(&path).map_err(|source| Error::SerialFile { path, source })?)
        }
        SerialOutput::Writer(w) => w,
        SerialOutput::None => return Ok(ConsoleOutput::discard()),
    };
    let confine = seccomp::on_start(ThreadKind::ConsoleOutput, seccomp);
    ConsoleOutput::spawn_with(dest, name, confine).map_err(Error::SpawnThread)
}

/// Opens the disks and TAPs and creates the virtio devices: disks, network devices, then the
/// console, each with the next window and interrupt line. Takes the virtio-console's output
/// out of `config`.
pub(crate) fn plan_virtio(config: &mut VmConfig, platform: &Platform) -> Result<VirtioPlan> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &config.disks {
        devices.push(Box::new(Block::open(&disk.path, disk.read_only)?));
    }
    // Every MAC is checked before any TAP is opened, so the error names the real problem.
    let macs: Vec<[u8; 6]> = config
        .nets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            n.mac
                .unwrap_or([0x52, 0x54, 0x00, 0x12, 0x34, 0x56u8.wrapping_add(i as u8)])
        })
        .collect();
    for (i, mac) in macs.iter().enumerate() {
        if macs[..i].contains(mac) {
            let text: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
            return Err(Error::DuplicateMac(text.join(":")));
        }
    }
    let mut taps = Vec::new();
    for (n, &mac) in config.nets.iter().zip(&macs) {
        let backend: Box<dyn NetBackend> = match &n.backend {
            NetBackendConfig::Tap(name) => Box::new(Tap::open(name)?),
            NetBackendConfig::Socket { path, local } => {
                let local = local.clone().unwrap_or_else(|| {
                    std::env::temp_dir().join(format!(
                        "vibe-vmm-{}-net{}.sock",
                        std::process::id(),
                        devices.len()
                    ))
                });
                Box::new(SocketNet::open(path, &local)?)
            }
        };
        let dev = Net::new(backend, mac);
        if let Some(fd) = dev.tap_fd() {
            taps.push((devices.len(), fd));
        }
        devices.push(Box::new(dev));
    }
    let mut console = None;
    if let Some(out) = config.virtio_console.take() {
        let output = console_output(out, "virtio-console-out", config.seccomp)?;
        let dev = VirtioConsole::new(output.clone());
        console = Some((devices.len(), dev.input_handle(), output));
        devices.push(Box::new(dev));
    }
    let (max, slots) = match (config.transport, &platform.pci) {
        (Transport::Mmio, _) => (
            platform.max_virtio,
            (0..devices.len().min(platform.max_virtio as usize) as u32)
                .map(platform.virtio_slot)
                .collect(),
        ),
        // Device 0 is the host bridge.
        (Transport::Pci, Some(_)) => (devices::pci::root::DEVICES as u32 - 1, Vec::new()),
        (Transport::Pci, None) => return Err(Error::NoPci),
    };
    if devices.len() > max as usize {
        return Err(Error::TooManyDevices {
            count: devices.len(),
            max,
        });
    }
    Ok(VirtioPlan {
        devices,
        transport: config.transport,
        slots,
        taps,
        console,
    })
}

fn insert(bus: &mut Bus, dev: Arc<Mutex<dyn BusDevice>>, base: u64, len: u64) -> Result<()> {
    bus.insert(dev, base, len)
        .map_err(|source| Error::Bus { base, source })
}

/// Puts the serial port (and on a PC the i8042 and debug-exit port) on their bus and the
/// virtio devices and MMIO console on the MMIO bus, where `platform` says, and collects the
/// event-loop handlers. Takes the serial and MMIO-console outputs out of `config`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build<V: hypervisor::Vm + 'static>(
    vm: &Arc<V>,
    irq: &IrqSource,
    msi: &MsiSource,
    level: &LevelSource,
    mem: &GuestMemoryMmap,
    state: &Arc<VmState>,
    config: &mut VmConfig,
    virtio: VirtioPlan,
    platform: &Platform,
) -> Result<Devices> {
    let serial_out = std::mem::replace(&mut config.serial, SerialOutput::None);
    let (serial_on_ports, serial_base, serial_irq) = platform.serial;
    let serial_output = console_output(serial_out, "serial-out", config.seccomp)?;
    let mut outputs = vec![serial_output.clone()];
    let lines = InterruptLines::default();
    let serial_line = lines.irq("serial", serial_irq, irq(serial_irq)?);
    let serial = Arc::new(Mutex::new(Serial::new(serial_line, serial_output)));
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let mut saved = crate::snapshot::DeviceHandles {
        serial: serial.clone(),
        i8042: None,
        mmio_console: None,
        virtio: Vec::new(),
        pci_root: None,
        unsaved: Vec::new(),
    };
    let serial_bus = if serial_on_ports { &mut pio } else { &mut mmio };
    insert(serial_bus, serial.clone(), serial_base, serial::PORT_RANGE)?;
    let mut power_button = None;
    if let Some(pc) = &platform.pc_ports {
        let control: Arc<dyn VmControl> = state.clone();
        // Data and command ports only: 0x61 between them is port B (the PIT's, where there is
        // one).
        let keyboard = Arc::new(Mutex::new(I8042::new(control.clone())));
        saved.i8042 = Some(keyboard.clone());
        for offset in [i8042::DATA, i8042::COMMAND] {
            let base = i8042::I8042_DATA_PORT + offset;
            pio.insert_part(keyboard.clone(), base, 1, offset)
                .map_err(|source| Error::Bus { base, source })?;
        }
        let debug_exit = Arc::new(Mutex::new(DebugExit::new(control.clone())));
        insert(&mut pio, debug_exit, DEBUG_EXIT_PORT, 1)?;
        let pm = Arc::new(Mutex::new(AcpiPm::new(control)));
        insert(&mut pio, pm, pc.acpi_pm, acpi_pm::PORT_RANGE)?;
        // Only the DSDT tells the guest about the GED: without ACPI there is no button.
        if config.acpi {
            let ged = Ged::new(irq(pc.ged_gsi)?);
            power_button = Some(ged.power_button());
            insert(
                &mut pio,
                Arc::new(Mutex::new(ged)),
                pc.ged,
                acpi_ged::PORT_RANGE,
            )?;
        }
    }

    let mut events = EventLoopBuilder::default();
    let VirtioPlan {
        devices,
        transport,
        slots,
        taps,
        mut console,
    } = virtio;
    let mut pci = platform
        .pci
        .as_ref()
        .map(|p| -> Result<(PciRoot, &PciPlatform)> {
            let mut root = PciRoot::new(p.windows);
            root.add(0, Arc::new(Mutex::new(HostBridge::new())))?;
            Ok((root, p))
        })
        .transpose()?;
    let mut virtio_console: Option<Arc<Mutex<dyn ConsoleInput>>> = None;
    let mut virtio_counts = Vec::new();
    let names = virtio_names(&devices);
    for (n, (device, name)) in devices.into_iter().zip(&names).enumerate() {
        // This device's interrupt lines, counted under its name.
        let irq = lines.irq_source(name, irq);
        let msi = lines.msi_source(name, msi);
        let (transport, kind): (Arc<Mutex<dyn VirtioTransport>>, _) = match (transport, &mut pci) {
            (Transport::Pci, Some((root, p))) => (
                add_virtio_pci(vm, &irq, &msi, mem, root, p, device, config.ioeventfd)?,
                "pci",
            ),
            _ => (
                add_virtio_mmio(
                    &**vm,
                    &irq,
                    mem,
                    &mut mmio,
                    device,
                    &slots[n],
                    config.ioeventfd,
                )?,
                "mmio",
            ),
        };
        let device_counters = lock(&transport).state().counters().clone();
        virtio_counts.push((name.clone(), kind, device_counters));
        serve_queues(&mut events, &transport)?;
        saved.virtio.push(transport.clone());
        if let Some(&(_, fd)) = taps.iter().find(|(at, _)| *at == n) {
            let t = transport.clone();
            events.add(
                fd,
                Box::new(move || {
                    let mut t = lock(&t);
                    t.process_queue(net::RX_QUEUE);
                    if t.input_blocked(net::RX_QUEUE) {
                        Interest::Blocked
                    } else {
                        Interest::Readable
                    }
                }),
            );
        }
        if let Some((_, mut handle, output)) = console.take_if(|(at, ..)| *at == n) {
            let dup = |q: usize| {
                lock(&transport).notify_events()[q]
                    .try_clone()
                    .map_err(|source| Error::Os {
                        op: "dup a queue notify event",
                        source,
                    })
            };
            handle.connect(dup(RX_QUEUE)?);
            // A stalled transmit queue goes on when the output has room.
            let tx = dup(TX_QUEUE)?;
            output.on_room(Arc::new(move || {
                let _ = tx.signal();
            }));
            outputs.push(output);
            virtio_console = Some(Arc::new(Mutex::new(handle)));
        }
    }
    let vfio = std::mem::take(&mut config.vfio);
    if !vfio.is_empty() {
        saved.unsaved.push("VFIO devices".into());
    }
    match &mut pci {
        Some((root, p)) => {
            for (i, device) in vfio.into_iter().enumerate() {
                let name = format!("vfio{i}");
                let msi = lines.msi_source(&name, msi);
                let interrupts = (&msi as &MsiSource, level);
                add_vfio(
                    vm,
                    interrupts,
                    mem,
                    root,
                    p,
                    &mut events,
                    device,
                    config.memory,
                )?;
            }
        }
        None if !vfio.is_empty() => return Err(Error::NoPci),
        None => {}
    }
    if let Some((root, p)) = pci {
        let root = root.into_shared();
        saved.pci_root = Some(root.clone());
        install_pci_bus(&mut pio, &mut mmio, root, p)?;
    }
    let mut mmio_console: Option<Arc<Mutex<dyn ConsoleInput>>> = None;
    if let Some(out) = config.mmio_console.take() {
        let output = console_output(out, "mmio-console-out", config.seccomp)?;
        outputs.push(output.clone());
        let dev = Arc::new(Mutex::new(MmioConsole::new(output)));
        insert(
            &mut mmio,
            dev.clone(),
            platform.mmio_console,
            mmio_console::WINDOW_SIZE,
        )?;
        saved.mmio_console = Some(dev.clone());
        mmio_console = Some(dev);
    }
    Ok(Devices {
        pio,
        mmio,
        events,
        serial,
        virtio_console,
        mmio_console,
        outputs,
        power_button,
        saved,
        counts: DeviceCounts {
            virtio: virtio_counts,
            lines: lines.into_counts(),
        },
    })
}

/// The statistics' names of the virtio devices: their type and a number per type
/// ("virtio-blk0", "virtio-blk1", "virtio-net0").
fn virtio_names(devices: &[Box<dyn VirtioDevice>]) -> Vec<String> {
    let types: Vec<u32> = devices.iter().map(|d| d.device_type()).collect();
    types
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let n = types[..i].iter().filter(|&&u| u == t).count();
            format!("{}{n}", counters::type_name(t))
        })
        .collect()
}

/// Puts the PCI bus where the platform says: the configuration ports and the I/O window on
/// the port bus, ECAM and the MMIO window on the MMIO bus.
fn install_pci_bus(
    pio: &mut Bus,
    mmio: &mut Bus,
    root: Arc<PciRoot>,
    p: &PciPlatform,
) -> Result<()> {
    let (io_base, io_size) = p.windows.io;
    let (mmio_base, mmio_size) = p.windows.mmio;
    let ports = Arc::new(Mutex::new(ConfigPorts(root.clone())));
    insert(pio, ports, p.config_port, CONFIG_PORTS_SIZE)?;
    let io_window = BarWindow {
        root: root.clone(),
        io: true,
        base: io_base,
    };
    insert(pio, Arc::new(Mutex::new(io_window)), io_base, io_size)?;
    let ecam = Arc::new(Mutex::new(Ecam(root.clone())));
    insert(mmio, ecam, p.ecam.0, p.ecam.1)?;
    let mmio_window = BarWindow {
        root,
        io: false,
        base: mmio_base,
    };
    insert(
        mmio,
        Arc::new(Mutex::new(mmio_window)),
        mmio_base,
        mmio_size,
    )
}

/// Puts a virtio device on the MMIO bus behind a virtio-mmio transport at `slot`, with its
/// queue notifications bound to their events where the hypervisor can and `ioeventfd` is set.
fn add_virtio_mmio<V: hypervisor::Vm>(
    vm: &V,
    irq: &IrqSource,
    mem: &GuestMemoryMmap,
    bus: &mut Bus,
    device: Box<dyn VirtioDevice>,
    slot: &VirtioMmioSlot,
    ioeventfd: bool,
) -> Result<Arc<Mutex<dyn VirtioTransport>>> {
    let transport =
        MmioTransport::new(device, mem.clone(), irq(slot.gsi)?).map_err(|source| Error::Os {
            op: "create a virtio-mmio transport",
            source,
        })?;
    if ioeventfd {
        for (index, evt) in transport.notify_events().iter().enumerate() {
            match vm.register_mmio_notify(evt, slot.base + REG_QUEUE_NOTIFY, index as u32) {
                Ok(()) | Err(hypervisor::Error::Unsupported) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let transport = Arc::new(Mutex::new(transport));
    insert(bus, transport.clone(), slot.base, slot.size)?;
    Ok(transport)
}

/// Binds virtio-pci notify addresses with the hypervisor's ioeventfds. Holds the VM weakly:
/// only vCPU threads move BARs, and they are joined before the VM goes.
struct IoEventBinding<V>(Weak<V>);

impl<V: hypervisor::Vm> NotifyBinding for IoEventBinding<V> {
    fn bind(&self, evt: &Event, addr: u64) -> io::Result<()> {
        match self.0.upgrade() {
            Some(vm) => unsupported_is_fine(vm.register_mmio_notify_any(evt, addr)),
            None => Ok(()),
        }
    }

    fn unbind(&self, evt: &Event, addr: u64) -> io::Result<()> {
        match self.0.upgrade() {
            Some(vm) => unsupported_is_fine(vm.unregister_mmio_notify_any(evt, addr)),
            None => Ok(()),
        }
    }
}

/// A hypervisor without ioeventfds leaves the write to trap: slower, not wrong.
fn unsupported_is_fine(r: hypervisor::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) | Err(hypervisor::Error::Unsupported) => Ok(()),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// Puts a virtio device on the PCI bus as the next function, with its BAR assigned in the
/// window, one MSI-X vector per queue plus one for configuration, and INTA routed as the
/// platform says.
#[allow(clippy::too_many_arguments)]
fn add_virtio_pci<V: hypervisor::Vm + 'static>(
    vm: &Arc<V>,
    irq: &IrqSource,
    msi: &MsiSource,
    mem: &GuestMemoryMmap,
    root: &mut PciRoot,
    platform: &PciPlatform,
    device: Box<dyn VirtioDevice>,
    ioeventfd: bool,
) -> Result<Arc<Mutex<dyn VirtioTransport>>> {
    let n = root.free_device_number().ok_or(Error::TooManyDevices {
        count: devices::pci::root::DEVICES,
        max: devices::pci::root::DEVICES as u32 - 1,
    })?;
    let kind = BarKind::Memory64 {
        prefetchable: false,
    };
    let bar_base = root.allocate_bar(kind, virtio_pci::BAR_SIZE)?;
    let msi = (0..VirtioPciDevice::msix_vectors(device.as_ref()))
        .map(|_| msi())
        .collect::<Result<_>>()?;
    let gsi = (platform.intx_gsi)(n, 0);
    let notify_binding =
        ioeventfd.then(|| Box::new(IoEventBinding(Arc::downgrade(vm))) as Box<dyn NotifyBinding>);
    let wiring = PciWiring {
        bar_base,
        msi,
        intx: irq(gsi)?,
        intx_line: gsi as u8,
        notify_binding,
    };
    let dev = VirtioPciDevice::new(device, mem.clone(), wiring).map_err(|source| Error::Os {
        op: "create a virtio-pci function",
        source,
    })?;
    let dev = Arc::new(Mutex::new(dev));
    root.add(n, dev.clone())?;
    Ok(dev)
}

/// Maps a passed-through function's BARs into the guest through the hypervisor. Holds the VM
/// weakly, as [`IoEventBinding`] does.
struct VmDeviceMemory<V>(Weak<V>);

impl<V: hypervisor::Vm> vfio::device::DeviceMemory for VmDeviceMemory<V> {
    fn map(&self, gpa: u64, size: u64, hva: u64) -> io::Result<u32> {
        let vm = self.0.upgrade().ok_or(io::ErrorKind::NotConnected)?;
        // SAFETY: the function keeps its BAR mapped until it unmaps the slot (or the VM goes).
        unsafe { vm.map_device_memory(gpa, size, hva) }.map_err(io::Error::other)
    }

    fn unmap(&self, slot: u32) -> io::Result<()> {
        match self.0.upgrade() {
            Some(vm) => vm.unmap_device_memory(slot).map_err(io::Error::other),
            None => Ok(()),
        }
    }
}

/// Opens a host function through the kernel's VFIO, after the host-side checks that name
/// what to fix.
#[cfg(target_os = "linux")]
fn open_host(path: &std::path::Path, ram: u64) -> Result<(String, Box<dyn vfio::VfioBackend>)> {
    let bdf = vfio::sysfs::Host::bdf_of(path).map_err(|e| Error::Vfio {
        device: path.display().to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let host = vfio::sysfs::Host::system();
    host.check_passthrough(bdf)?;
    vfio::sysfs::check_memlock(vfio::sysfs::memlock_limit(), ram)?;
    let dev =
        vfio::linux::HostDevice::open(&host.device_dir(bdf)).map_err(|source| Error::Vfio {
            device: bdf.to_string(),
            source,
        })?;
    Ok((bdf.to_string(), Box::new(dev)))
}

#[cfg(not(target_os = "linux"))]
fn open_host(_: &std::path::Path, _: u64) -> Result<(String, Box<dyn vfio::VfioBackend>)> {
    Err(Error::Unsupported(
        "VFIO passthrough (a Linux host feature)",
    ))
}

/// Puts a passed-through function on the PCI bus as the next device: BARs assigned in the
/// windows, one MSI line per MSI and MSI-X vector (their VMM-side events served on the event
/// loop), INTA as a level line (relayed by the event loop where the hypervisor cannot), all
/// guest RAM mapped for its DMA.
#[allow(clippy::too_many_arguments)]
fn add_vfio<V: hypervisor::Vm + 'static>(
    vm: &Arc<V>,
    (msi, level): (&MsiSource, &LevelSource),
    mem: &GuestMemoryMmap,
    root: &mut PciRoot,
    platform: &PciPlatform,
    events: &mut EventLoopBuilder,
    device: crate::VfioConfig,
    ram: u64,
) -> Result<()> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let (name, mut backend, stats) = match device {
        crate::VfioConfig::Host(path) => {
            let (name, backend) = open_host(&path, ram)?;
            (name, backend, Default::default())
        }
        crate::VfioConfig::Backend {
            name,
            backend,
            stats,
        } => (name, backend, stats),
    };
    let err = |source| Error::Vfio {
        device: name.clone(),
        source,
    };
    let n = root.free_device_number().ok_or(Error::TooManyDevices {
        count: devices::pci::root::DEVICES,
        max: devices::pci::root::DEVICES as u32 - 1,
    })?;
    let gsi = (platform.intx_gsi)(n, 0);
    let intx = (|| {
        let (trigger, resample) = (Event::new().ok()?, Event::new().ok()?);
        match level(gsi, &trigger, &resample) {
            Ok(relay) => Some((gsi as u8, trigger, resample, relay)),
            Err(e) => {
                log::debug!("{name}: no INTx: {e}");
                None
            }
        }
    })();
    let (intx, relay) = match intx {
        Some((gsi, trigger, resample, relay)) => (Some((gsi, trigger, resample)), relay),
        None => (None, None),
    };
    if let (Some((_, trigger, _)), Some(line)) = (&intx, relay) {
        // The VMM's IOAPIC: the device's trigger asserts the pin.
        let trigger = trigger.try_clone().map_err(err)?;
        events.add(
            trigger.as_raw_fd(),
            Box::new(move || {
                if matches!(trigger.drain(), Ok(true)) {
                    let _ = line.trigger();
                }
                Interest::Readable
            }),
        );
    }
    let probe = vfio::VfioPciDevice::probe(&mut *backend, intx.is_some()).map_err(err)?;
    let bar_addresses = probe
        .bars()
        .iter()
        .map(|b| root.allocate_bar(b.kind, b.size))
        .collect::<std::result::Result<_, _>>()?;
    let msix = (0..probe.msix_vectors())
        .map(|_| msi())
        .collect::<Result<_>>()?;
    let msi = (0..probe.msi_vectors())
        .map(|_| msi())
        .collect::<Result<_>>()?;
    let wiring = vfio::device::Wiring {
        bar_addresses,
        msix,
        msi,
        intx,
        memory: Some(Box::new(VmDeviceMemory(Arc::downgrade(vm)))),
        ram: mem
            .iter()
            .map(|r| (r.start_addr().0, r.len(), r.as_ptr() as u64))
            .collect(),
        ram_owner: Box::new(mem.clone()),
        stats,
    };
    let dev = vfio::VfioPciDevice::new(name.clone(), backend, probe, wiring).map_err(err)?;
    let vectors = dev.vector_events().map_err(err)?;
    let dev = Arc::new(Mutex::new(dev));
    for (v, evt) in vectors {
        let d = dev.clone();
        events.add(
            evt.as_raw_fd(),
            Box::new(move || {
                // The device reads the event itself; `evt` keeps the descriptor open.
                let _ = &evt;
                lock(&d).serve_vector(v);
                Interest::Readable
            }),
        );
    }
    root.add(n, dev)?;
    Ok(())
}

/// Runs a device's queues on the event loop when their notify events fire.
fn serve_queues(
    events: &mut EventLoopBuilder,
    transport: &Arc<Mutex<dyn VirtioTransport>>,
) -> Result<()> {
    let notify: Vec<Event> = lock(transport)
        .notify_events()
        .iter()
        .map(|e| e.try_clone())
        .collect::<io::Result<_>>()
        .map_err(|source| Error::Os {
            op: "dup a queue notify event",
            source,
        })?;
    for (index, evt) in notify.into_iter().enumerate() {
        let t = transport.clone();
        events.add(
            evt.as_raw_fd(),
            Box::new(move || {
                let _ = evt.drain();
                lock(&t).process_queue(index);
                Interest::Readable
            }),
        );
    }
    Ok(())
}
