//! The hypervisor contract: what the VMM core asks of KVM or Hypervisor.framework.
//!
//! Three traits, top to bottom: a [`Hypervisor`] creates a [`Vm`], a [`Vm`] owns guest memory
//! slots, interrupt lines and hands out [`Vcpu`]s, and a [`Vcpu`] runs until the guest needs the
//! VMM, returning a [`VmExit`]. The answer to an exit (the value of a port or MMIO read) travels
//! in with the next call as a [`VmEntry`]; this keeps the read-completion protocol the same for
//! every backend.
//!
//! How each backend fits:
//! - **KVM** (implemented, [`kvm`]): the kernel decodes MMIO instructions and reports address,
//!   size and data; an in-kernel LAPIC/IOAPIC/PIT delivers interrupts; reads are completed by
//!   writing into the shared `kvm_run` page before the next `KVM_RUN`.
//! - **HVF x86_64** ([`hvf::x86_64`] on x86 hosts, generic over the framework's calls and
//!   tested against a fake): an EPT violation carries only a guest-physical address, so the
//!   backend returns [`VmExit::MmioInstruction`] and the VMM core emulates the instruction at
//!   RIP against guest memory and its MMIO bus. Interrupt controllers live in the VMM.
//! - **HVF arm64** ([`hvf::arm64`], generic over the framework's calls and tested against a
//!   fake): a data abort's syndrome (ESR) gives size, direction and register; the backend maps
//!   it to the same MMIO exits and writes the register on the next entry. PSCI, WFI and the
//!   virtual timer are handled inside the backend.
//!
//! The core never names a backend type: it is generic over these traits (plus [`ArchVm`] /
//! [`ArchVcpu`], the guest-architecture half: registers, CPUID, ...), and the backend is chosen
//! by `cfg(target_os)` in exactly one place ([`default_hypervisor`]). The architecture traits
//! and the portable exit logic ([`arm64`]) compile on every host, so a backend for either
//! architecture can be built and tested against a fake anywhere. [`Event`] is the one
//! wake-up primitive every layer shares (an eventfd on Linux, a pipe on macOS).

// Portable: compiled on every host, so it is tested here.
pub mod arm64;
pub mod event;
pub mod exit;
// Portable: generic over the framework's calls, tested on Linux against a fake.
pub mod hvf;
#[cfg(target_os = "linux")]
pub mod kvm;
// Portable: the register types and the x86 traits compile on every host.
pub mod x86_64;

/// The architecture-specific traits the VMM core needs of a backend on this host.
#[cfg(target_arch = "x86_64")]
pub use x86_64::{X86Vcpu as ArchVcpu, X86Vm as ArchVm};

use std::io;

pub use event::Event;

pub use exit::{VmEntry, VmExit};

/// Everything that can go wrong talking to the hypervisor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path} (is the kvm module loaded, and may this user open it?)")]
    Open { path: String, source: io::Error },
    #[error("{path} speaks API version {found}, this VMM needs {expected}")]
    ApiVersion {
        path: String,
        found: i32,
        expected: i32,
    },
    #[error("the hypervisor lacks a required capability: {0}")]
    MissingCapability(&'static str),
    #[error("{op} failed")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to map hva {hva:#x} to gpa {gpa:#x}, size {size:#x}")]
    MapMemory {
        gpa: u64,
        size: u64,
        hva: u64,
        #[source]
        source: io::Error,
    },
    #[error("failed to create vcpu {id}")]
    CreateVcpu {
        id: u32,
        #[source]
        source: io::Error,
    },
    #[error("{op} failed with Hypervisor.framework error {code:#x}")]
    Hvf { op: &'static str, code: i32 },
    #[error("saved {what} cannot be loaded: {detail}")]
    BadState { what: &'static str, detail: String },
    #[error("no hypervisor backend for this platform")]
    Unsupported,
    #[error("string port I/O (rep ins/outs) at port {port:#x} is not supported by {backend}")]
    StringIoUnsupported { port: u16, backend: &'static str },
    #[error("no GSI left for another MSI vector: the hypervisor routes {max} GSIs and {in_use} are in use")]
    GsisExhausted { max: u32, in_use: u32 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an OS error from the call named `op`.
#[cfg(target_os = "linux")]
pub(crate) fn os_err<E: Into<io::Error>>(op: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Os {
        op,
        source: e.into(),
    }
}

/// What `vibe-vmm info` prints about the hypervisor.
#[derive(Debug, Clone)]
pub struct HypervisorInfo {
    pub name: &'static str,
    pub api_version: i32,
    /// Largest vCPU count one VM may have.
    pub max_vcpus: u32,
    /// Capabilities the VMM uses, with whether the host has them.
    pub capabilities: Vec<(&'static str, bool)>,
}

/// A hypervisor: the entry point of a backend.
pub trait Hypervisor: Send + Sync {
    type Vm: Vm;

    fn info(&self) -> HypervisorInfo;
    /// Largest vCPU count one VM may have.
    fn max_vcpus(&self) -> u32;
    fn create_vm(&self) -> Result<Self::Vm>;
}

/// An edge-triggered interrupt line into the guest (a GSI on x86).
///
/// On KVM this is an eventfd bound to the in-kernel IOAPIC by irqfd, so device threads raise
/// interrupts without a trip through any vCPU thread.
pub trait IrqLine: Send + Sync {
    fn trigger(&self) -> io::Result<()>;
}

/// The message a device writes to raise an MSI or MSI-X vector (PCI 3.0 / x86: address
/// 0xfeeX_XXXX with the destination APIC ID in bits 19:12, data with the vector in bits 7:0 and
/// the delivery mode in 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// One MSI/MSI-X vector of a device. The device decides masking (it keeps pending bits
/// itself); the line only carries the message the guest programmed.
pub trait MsiLine: Send + Sync {
    /// Programs the message later triggers deliver; `None` disables the line (triggers do
    /// nothing).
    fn set_message(&self, message: Option<MsiMessage>) -> io::Result<()>;
    /// Delivers the programmed message, if any.
    fn trigger(&self) -> io::Result<()>;
    /// The eventfd the hypervisor turns into this line's message (KVM: the irqfd of its GSI),
    /// so that something outside the VMM (a passed-through device, through VFIO) can raise it
    /// directly. Only meaningful while a message is set. `None` where each trigger is a call.
    fn irqfd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Stops a running vCPU from any thread: its `run` returns [`VmExit::Interrupted`] promptly,
/// whether it was inside the guest or about to enter it.
pub trait VcpuKicker: Send + Sync {
    fn kick(&self);
}

/// A virtual machine: its memory slots, interrupt controllers and vCPUs.
pub trait Vm: Send + Sync {
    type Vcpu: Vcpu;

    /// Maps `size` bytes of host memory at `hva` into the guest at `gpa`.
    ///
    /// # Safety
    /// The host range must stay mapped and valid for as long as this VM exists.
    unsafe fn map_memory(&self, slot: u32, gpa: u64, size: u64, hva: u64) -> Result<()>;

    /// Creates the platform's interrupt controllers (x86: LAPICs, IOAPIC, PIC) and, when
    /// `legacy_timer` is set, the x86 PIT. Must be called before any vCPU is created.
    fn create_irqchip(&self, legacy_timer: bool) -> Result<()>;

    /// An interrupt line for `gsi`. With `eventfd` the hypervisor is signalled through an
    /// eventfd it watches (KVM irqfd: no system call into the VM); without, each trigger is a
    /// direct call (KVM_IRQ_LINE), the only way on hypervisors without eventfds.
    fn irq_line(&self, gsi: u32, eventfd: bool) -> Result<Box<dyn IrqLine>>;

    /// Makes a 4-byte guest write of `value` to MMIO address `addr` signal `evt` inside the
    /// hypervisor, without an exit to the VMM (KVM ioeventfd). Backends without the feature
    /// return [`Error::Unsupported`]; the write then reaches the device through the MMIO bus.
    fn register_mmio_notify(&self, evt: &Event, addr: u64, value: u32) -> Result<()>;

    /// A new MSI vector (KVM: a GSI of its own with an MSI routing entry and, with `eventfd`,
    /// an irqfd; without, KVM_SIGNAL_MSI on each trigger). Backends without MSI, and KVM
    /// without its in-kernel irqchip, return [`Error::Unsupported`]: the VMM's own interrupt
    /// controller delivers MSIs there.
    fn msi_line(&self, eventfd: bool) -> Result<Box<dyn MsiLine>>;

    /// Like [`Vm::register_mmio_notify`], but any write of any length (up to 8 bytes) at
    /// `addr` signals `evt` (no datamatch).
    fn register_mmio_notify_any(&self, evt: &Event, addr: u64) -> Result<()>;

    /// Undoes [`Vm::register_mmio_notify_any`] (a BAR moved). [`Error::Unsupported`] where
    /// registering is.
    fn unregister_mmio_notify_any(&self, evt: &Event, addr: u64) -> Result<()>;

    fn create_vcpu(&self, id: u32) -> Result<Self::Vcpu>;

    /// Maps `size` bytes of host memory at `hva` (a passed-through device's BAR) into the
    /// guest at `gpa` as a slot of its own, from any thread while the VM runs; returns the
    /// slot for [`Vm::unmap_device_memory`]. Guest accesses there then never exit.
    /// [`Error::Unsupported`] where the backend cannot (the access keeps trapping).
    ///
    /// # Safety
    /// The host range must stay mapped until the slot is unmapped or the VM is gone.
    unsafe fn map_device_memory(&self, _gpa: u64, _size: u64, _hva: u64) -> Result<u32> {
        Err(Error::Unsupported)
    }

    /// Removes a slot [`Vm::map_device_memory`] made.
    fn unmap_device_memory(&self, _slot: u32) -> Result<()> {
        Err(Error::Unsupported)
    }

    /// A level-triggered line for `gsi` driven from outside the VMM (a passed-through
    /// device's INTx, through VFIO): a signal on `trigger` raises it, and when the guest
    /// acknowledges it (EOI) the hypervisor lowers it and signals `resample`, which the
    /// device takes as "unmask". KVM: an irqfd with KVM_IRQFD_FLAG_RESAMPLE. Needs the
    /// in-kernel irqchip; [`Error::Unsupported`] elsewhere.
    fn level_irqfd(&self, _gsi: u32, _trigger: &Event, _resample: &Event) -> Result<()> {
        Err(Error::Unsupported)
    }
}

/// One virtual CPU. Its methods are called only from the thread that runs it. What depends on
/// the guest architecture (registers, CPUID, ...) is in [`x86_64::X86Vcpu`] and its arm64
/// counterpart, so a backend for either architecture builds and tests on any host.
pub trait Vcpu: Send {
    /// Enters the guest, completing the previous exit with `entry`, and runs until the next exit.
    fn run(&mut self, entry: VmEntry) -> Result<VmExit>;

    /// Prepares the calling thread to run this vCPU and returns a handle that can interrupt it.
    /// Call once, on the vCPU's own thread, before the first `run`.
    fn kicker(&mut self) -> Result<Box<dyn VcpuKicker>>;

    /// Translates a guest virtual address with the vCPU's current page tables. The core walks
    /// the tables itself (`arch::x86_64::mmu`); this is the hypervisor's own answer, which
    /// `crates/vmm/tests/mmu.rs` checks that walker against (KVM on x86 only).
    fn translate_gva(&self, gva: u64) -> Result<Option<u64>>;

    /// The elements of the string port I/O the last exit reported
    /// ([`VmExit::IoInString`], [`VmExit::IoOutString`]): `size * count` bytes, in the
    /// order the guest moves them; for an IN the VMM fills them before the next `run`. Empty
    /// for any other exit, and on backends that never report string I/O.
    fn string_io_data(&mut self) -> &mut [u8] {
        &mut []
    }

    /// Completes the last exit with `entry` without running a guest instruction, so that the
    /// vCPU's registers are consistent for a snapshot (KVM finishes an IN or MMIO read only on
    /// the next `KVM_RUN`; this one returns at once). [`Error::Unsupported`] where the backend
    /// cannot.
    fn finish_exit(&mut self, _entry: VmEntry) -> Result<()> {
        Err(Error::Unsupported)
    }
}

/// The backend for this host.
#[cfg(target_os = "linux")]
pub fn default_hypervisor() -> Result<kvm::Kvm> {
    kvm::Kvm::open()
}

/// The backend for this host.
#[cfg(all(target_os = "macos", target_arch = "x86_64"))]
pub fn default_hypervisor() -> Result<hvf::x86_64::HvfX86<hvf::x86_64::ffi::Framework>> {
    Ok(hvf::x86_64::HvfX86::new(hvf::x86_64::ffi::Framework))
}

/// The backend for this host.
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub fn default_hypervisor() -> Result<hvf::arm64::HvfArm64<hvf::arm64::ffi::Framework>> {
    Ok(hvf::arm64::HvfArm64::new(hvf::arm64::ffi::Framework::load()))
}
