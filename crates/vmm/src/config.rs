//! What to build: everything the CLI (or a test) decides about a VM.

use std::io::Write;
use std::path::PathBuf;

#[cfg(target_arch = "x86_64")]
use arch::x86_64::cpuid::Feature;

use crate::seccomp::SeccompMode;

/// The kernel to boot: a file, or an image already in memory (the built-in demo guest).
pub enum KernelImage {
    Path(PathBuf),
    Bytes(&'static [u8]),
}

/// Where the serial console's output goes.
pub enum SerialOutput {
    Stdout,
    File(PathBuf),
    Writer(Box<dyn Write + Send>),
    None,
}

/// A PCI function passed through with VFIO (x86_64: it joins the PCI bus whatever the
/// virtio transport).
pub enum VfioConfig {
    /// A host function by its sysfs directory (`/sys/bus/pci/devices/0000:3b:02.1`), opened
    /// through the kernel's VFIO (Linux).
    Host(PathBuf),
    /// A backend already open: a test's fake device (`vfio::fake::FakeDevice`).
    Backend {
        name: String,
        backend: Box<dyn vfio::VfioBackend>,
        /// The function's counters, for the caller to read.
        stats: std::sync::Arc<vfio::device::Stats>,
    },
}

/// The console devices a VM can have; the CLI connects one of them to the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleKind {
    /// The 16550 UART (COM1).
    Serial,
    /// A virtio-console device.
    Virtio,
    /// The MMIO console (a page of registers, polled).
    Mmio,
}

/// Who emulates the x86 interrupt controllers (local APICs, IOAPIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqchipMode {
    /// The hypervisor (KVM's in-kernel irqchip).
    Kernel,
    /// vibe-vmm itself (`devices::irqchip`), as on Hypervisor.framework; interrupts are
    /// injected when the guest opens an interrupt window.
    Userspace,
}

/// How the virtio devices attach to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// virtio-mmio windows described by ACPI or the kernel command line (x86), or the device
    /// tree (arm64): no bus to enumerate, the fastest boot, and the same on every platform.
    Mmio,
    /// virtio-pci functions on PCI bus 0 with MSI-X (x86_64 only): what distribution kernels
    /// and other guests treat as the default.
    Pci,
}

/// A virtio-blk disk backed by a raw image file.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Where a virtio-net device's frames go on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// An existing TAP interface, by name (Linux).
    Tap(String),
    /// A peer's Unix datagram socket, one Ethernet frame a datagram. vibe-vmm binds its own
    /// end at `local` (by default a fresh path in the temporary directory).
    Socket {
        path: PathBuf,
        local: Option<PathBuf>,
    },
}

/// A virtio-net device.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub backend: NetBackendConfig,
    /// The guest's MAC address; by default 52:54:00:12:34:56 plus the device's index.
    pub mac: Option<[u8; 6]>,
}

pub struct VmConfig {
    pub kernel: KernelImage,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    pub cpus: u32,
    pub serial: SerialOutput,
    /// virtio-net devices, in order.
    pub nets: Vec<NetConfig>,
    /// Adds a virtio-console writing its output here.
    pub virtio_console: Option<SerialOutput>,
    /// Adds the MMIO console writing its output here.
    pub mmio_console: Option<SerialOutput>,
    /// virtio-blk disks, in order (the guest sees them as vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Let the hypervisor signal queue notifications directly (KVM ioeventfd). Off, every
    /// QueueNotify goes through a vCPU exit and the MMIO bus, as on hypervisors without it.
    pub ioeventfd: bool,
    /// Raise device interrupts through eventfds the hypervisor watches (KVM irqfd). Off, each
    /// interrupt is a direct call (KVM_IRQ_LINE), as on hypervisors without eventfds.
    pub irqfd: bool,
    /// Describe the machine with ACPI tables (MADT, FADT); the MP table is always there.
    pub acpi: bool,
    /// Who emulates the x86 interrupt controllers.
    pub irqchip: IrqchipMode,
    /// CPUID features hidden from the guest.
    #[cfg(target_arch = "x86_64")]
    pub cpuid_hide: Vec<Feature>,
    /// How the VM's threads are confined (seccomp filters on Linux; nothing elsewhere).
    pub seccomp: SeccompMode,
    /// How the virtio devices attach (x86_64: mmio or pci; arm64: mmio).
    pub transport: Transport,
    /// Print a line per VM exit (`--trace exits`).
    pub trace: Option<crate::trace::TraceConfig>,
    /// Host PCI functions passed through with VFIO, in bus order after the virtio devices.
    pub vfio: Vec<VfioConfig>,
    /// Which boot of the VMM this VM is: 1, then one more for each reboot (a reboot builds
    /// the VM afresh from the same config). Reported by the API.
    pub boot: u32,
}

impl VmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: KernelImage) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: String::new(),
            memory: 512 << 20,
            cpus: 1,
            serial: SerialOutput::Stdout,
            acpi: true,
            irqchip: IrqchipMode::Kernel,
            disks: Vec::new(),
            nets: Vec::new(),
            virtio_console: None,
            mmio_console: None,
            ioeventfd: true,
            irqfd: true,
            #[cfg(target_arch = "x86_64")]
            cpuid_hide: Vec::new(),
            seccomp: SeccompMode::default(),
            transport: Transport::Mmio,
            trace: None,
            vfio: Vec::new(),
            boot: 1,
        }
    }
}
