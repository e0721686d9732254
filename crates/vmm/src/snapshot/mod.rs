//! Snapshots: a paused VM written to a directory, and a new VM resumed from one.
//!
//! A snapshot directory holds two files:
//! - `state.json`: the versioned [`Snapshot`]: what the machine was built with, every vCPU's
//!   state, the hypervisor's interrupt controllers and clock, the devices' state, and where
//!   each RAM region lies in `memory`;
//! - `memory`: guest RAM, region after region, as a plain (sparse) file.
//!
//! Saving ([`Writer`]) needs the VM paused: each parked vCPU thread saves its own vCPU
//! ([`vcpus`]), then the VM-wide state, the devices and RAM are written, `state.json` last.
//! Restoring ([`load`], then `Vm::restore`) checks the format version and the host CPU, maps
//! `memory` copy-on-write ([`memory`]) and builds the machine again with the saved state in
//! place of a kernel. docs/snapshot.md describes the format and its limits.

pub mod memory;
pub(crate) mod vcpus;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use devices::i8042::{I8042State, I8042};
use devices::lock;
use devices::mmio_console::{MmioConsole, MmioConsoleState};
use devices::serial::{Serial, SerialState};
use devices::virtio::{TransportSnapshot, VirtioTransport};
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use crate::config::{IrqchipMode, KernelImage, Transport, VmConfig};
use crate::state::VmState;
use crate::vcpu::VcpuSetup;

/// What `state.json` says it is.
pub const FORMAT: &str = "vibe-vmm snapshot";
/// The format version this vibe-vmm writes.
pub const VERSION: u32 = 3;
/// The oldest format version it reads (versions 2 and 3 only added fields and variants, each
/// field with a default).
pub const MIN_VERSION: u32 = 1;
/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state.json";
/// The guest RAM file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// The largest `state.json` read (a real one is a few tens of KiB per vCPU).
const MAX_STATE_BYTES: u64 = 16 << 20;
/// How long a snapshot waits for the parked vCPU threads to save themselves.
const VCPU_SAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the VM must be paused to take a snapshot")]
    NotPaused,
    #[error("the VM is stopping")]
    Stopped,
    #[error("cannot take a snapshot of this VM: {0}")]
    Unsupported(String),
    #[error("{path} already holds a snapshot; choose an empty or new directory")]
    Exists { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a vibe-vmm snapshot ({detail})")]
    NotASnapshot { path: PathBuf, detail: String },
    #[error("the snapshot is format version {found}; this vibe-vmm reads versions {MIN_VERSION} to {VERSION}")]
    Version { found: u64 },
    #[error("the snapshot's state is corrupt: {0}")]
    Corrupt(String),
    #[error("the snapshot was taken on another kind of host ({saved}); this one is {here}")]
    IncompatibleHost { saved: String, here: String },
    #[error("vCPU {id} could not be saved")]
    Vcpu {
        id: u32,
        #[source]
        source: Box<crate::Error>,
    },
    #[error("vCPU {0} did not save its state in time")]
    VcpuTimeout(u32),
}

/// One whole `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written.
    pub version: u32,
    /// The vibe-vmm that wrote it (for people; not checked).
    pub vmm_version: String,
    pub host: Host,
    pub machine: Machine,
    /// Where each RAM region lies in the memory file.
    pub memory: Vec<MemoryRegion>,
    pub arch: ArchState,
    pub devices: DeviceStates,
}

/// The host a snapshot can be restored on: the same hypervisor and the same CPU model, since
/// vCPU state (CPUID, MSRs, XSAVE layout) is only meaningful there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub arch: String,
    pub hypervisor: String,
    /// CPUID leaf 0's vendor string ("GenuineIntel", "AuthenticAMD").
    pub cpu_vendor: String,
    /// CPUID leaf 1 EAX: family, model and stepping.
    pub cpu_signature: u32,
}

impl Host {
    /// This host, as a snapshot records it.
    pub fn this() -> Self {
        let (cpu_vendor, cpu_signature) = cpu_model();
        Host {
            arch: std::env::consts::ARCH.into(),
            hypervisor: if cfg!(target_os = "linux") {
                "kvm"
            } else {
                "hvf"
            }
            .into(),
            cpu_vendor,
            cpu_signature,
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} on {} CPU signature {:#x}",
            self.arch, self.hypervisor, self.cpu_vendor, self.cpu_signature
        )
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_model() -> (String, u32) {
    // SAFETY: CPUID exists on every x86_64 CPU and has no side effects (newer compilers call
    // the intrinsic safe).
    #[allow(unused_unsafe)]
    let (l0, l1) = unsafe { (std::arch::x86_64::__cpuid(0), std::arch::x86_64::__cpuid(1)) };
    let mut vendor = Vec::with_capacity(12);
    for r in [l0.ebx, l0.edx, l0.ecx] {
        vendor.extend_from_slice(&r.to_le_bytes());
    }
    (String::from_utf8_lossy(&vendor).into_owned(), l1.eax)
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_model() -> (String, u32) {
    (String::new(), 0)
}

/// What the machine was built with: enough to build it again without the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// The kernel it booted and its command line (for people: nothing is loaded again).
    pub kernel: String,
    pub cmdline: String,
    pub acpi: bool,
    /// "kernel" or "userspace".
    pub irqchip: String,
    pub mmio_console: bool,
    /// The virtio devices' transport, "mmio" or "pci" (format 2).
    #[serde(default = "mmio")]
    pub transport: String,
    /// The disks, in order (format 2): re-opened by path on restore unless overridden.
    #[serde(default)]
    pub disks: Vec<SavedDisk>,
    /// The network devices, in order (format 2).
    #[serde(default)]
    pub nets: Vec<SavedNet>,
    /// Whether there is a virtio-console (format 2).
    #[serde(default)]
    pub virtio_console: bool,
}

fn mmio() -> String {
    "mmio".into()
}

/// A disk as the machine opened it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedDisk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A network device: where its frames went, and its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedNet {
    /// A TAP by name, or a Unix datagram socket peer (and our own end, if one was given).
    #[serde(default)]
    pub tap: Option<String>,
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub local: Option<PathBuf>,
    pub mac: Option<[u8; 6]>,
}

impl SavedNet {
    fn new(n: &crate::NetConfig) -> Self {
        let (tap, socket, local) = match &n.backend {
            crate::NetBackendConfig::Tap(name) => (Some(name.clone()), None, None),
            crate::NetBackendConfig::Socket { path, local } => {
                (None, Some(path.clone()), local.clone())
            }
        };
        SavedNet {
            tap,
            socket,
            local,
            mac: n.mac,
        }
    }

    /// The config to open it again with; exactly one backend must be named.
    fn config(&self) -> Result<crate::NetConfig, SnapshotError> {
        let backend = match (&self.tap, &self.socket) {
            (Some(t), None) => crate::NetBackendConfig::Tap(t.clone()),
            (None, Some(p)) => crate::NetBackendConfig::Socket {
                path: p.clone(),
                local: self.local.clone(),
            },
            _ => {
                return Err(SnapshotError::Corrupt(format!(
                    "network device {self:?} names not exactly one of tap and socket"
                )))
            }
        };
        Ok(crate::NetConfig {
            backend,
            mac: self.mac,
        })
    }
}

impl Machine {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn new(config: &VmConfig) -> Self {
        Machine {
            cpus: config.cpus,
            memory: config.memory,
            kernel: match &config.kernel {
                KernelImage::Path(p) => p.display().to_string(),
                KernelImage::Bytes(b) => format!("built-in image ({} bytes)", b.len()),
            },
            cmdline: config.cmdline.clone(),
            acpi: config.acpi,
            irqchip: match config.irqchip {
                IrqchipMode::Kernel => "kernel",
                IrqchipMode::Userspace => "userspace",
            }
            .into(),
            mmio_console: config.mmio_console.is_some(),
            transport: match config.transport {
                Transport::Mmio => "mmio",
                Transport::Pci => "pci",
            }
            .into(),
            disks: config
                .disks
                .iter()
                .map(|d| SavedDisk {
                    path: d.path.clone(),
                    read_only: d.read_only,
                })
                .collect(),
            nets: config.nets.iter().map(SavedNet::new).collect(),
            virtio_console: config.virtio_console.is_some(),
        }
    }
}

/// One RAM region: `size` bytes at guest-physical `gpa`, at `offset` in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRegion {
    pub gpa: u64,
    pub size: u64,
    pub offset: u64,
}

/// The saved state of one vCPU, by guest architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VcpuSnapshot {
    X86_64(hypervisor::x86_64::VcpuState),
}

/// The vCPUs and the hypervisor's VM-wide state, by guest architecture (arm64 will add its
/// GIC and timer state as a variant of its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchState {
    X86_64 {
        vm: hypervisor::x86_64::VmState,
        vcpus: Vec<hypervisor::x86_64::VcpuState>,
        /// The VMM's own interrupt controller, with `--irqchip userspace` (format 3).
        #[serde(default)]
        irqchip: Option<devices::irqchip::IrqchipState>,
    },
}

impl ArchState {
    fn vcpu_count(&self) -> usize {
        match self {
            ArchState::X86_64 { vcpus, .. } => vcpus.len(),
        }
    }
}

/// The platform devices' state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStates {
    pub serial: SerialState,
    pub i8042: Option<I8042State>,
    pub mmio_console: Option<MmioConsoleState>,
    /// Every virtio device with its transport, in the order they were built (format 2).
    #[serde(default)]
    pub virtio: Vec<TransportSnapshot>,
}

/// The devices a snapshot saves, and the names of those it cannot save yet.
pub(crate) struct DeviceHandles {
    pub serial: Arc<Mutex<Serial>>,
    pub i8042: Option<Arc<Mutex<I8042>>>,
    pub mmio_console: Option<Arc<Mutex<MmioConsole>>>,
    /// The virtio transports, in the order they were built.
    pub virtio: Vec<Arc<Mutex<dyn VirtioTransport>>>,
    /// The PCI root, which routes the BARs restored functions bring back.
    pub pci_root: Option<Arc<devices::pci::PciRoot>>,
    pub unsaved: Vec<String>,
}

impl DeviceHandles {
    fn state(&self) -> Result<DeviceStates, SnapshotError> {
        let virtio = self
            .virtio
            .iter()
            .map(|t| {
                let t = lock(t);
                t.save().ok_or_else(|| {
                    SnapshotError::Unsupported(format!(
                        "saving virtio device type {} on this transport is not supported yet",
                        t.state().device_type()
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(DeviceStates {
            serial: lock(&self.serial).state(),
            i8042: self.i8042.as_ref().map(|d| lock(d).state()),
            mmio_console: self.mmio_console.as_ref().map(|d| lock(d).state()),
            virtio,
        })
    }

    /// Loads saved device state into a machine built from the same [`Machine`].
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn restore(&self, s: &DeviceStates) -> Result<(), SnapshotError> {
        lock(&self.serial)
            .set_state(&s.serial)
            .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        if let (Some(d), Some(s)) = (&self.i8042, &s.i8042) {
            lock(d).set_state(s);
        }
        if let (Some(d), Some(s)) = (&self.mmio_console, &s.mmio_console) {
            lock(d).set_state(s);
        }
        if s.virtio.len() != self.virtio.len() {
            return Err(SnapshotError::Corrupt(format!(
                "{} virtio devices saved, the machine has {}",
                s.virtio.len(),
                self.virtio.len()
            )));
        }
        for (t, saved) in self.virtio.iter().zip(&s.virtio) {
            lock(t)
                .restore(saved)
                .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        }
        // PCI functions came back with the BAR addresses the guest gave them.
        if let Some(root) = &self.pci_root {
            root.reroute();
        }
        Ok(())
    }
}

/// Writes snapshots of a running VM; reachable from any thread through the VM's controller.
pub(crate) trait Snapshotter: Send + Sync {
    /// Writes a snapshot of the paused VM into `dir` (created if missing, refused if it
    /// already holds one).
    fn write(&self, dir: &Path) -> Result<(), SnapshotError>;
}

/// What a VM needs to write snapshots of itself. Holds the hypervisor's VM weakly, like the
/// interrupt lines do: the VM's owner decides when it goes.
pub(crate) struct Writer<V: hypervisor::Vm> {
    pub vm: Weak<V>,
    pub setup: Arc<dyn VcpuSetup<V>>,
    pub state: Arc<VmState>,
    pub mem: Arc<GuestMemoryMmap>,
    pub devices: DeviceHandles,
    pub cpus: u32,
}

impl<V: hypervisor::Vm + 'static> Snapshotter for Writer<V> {
    fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        if self.state.stopping() {
            return Err(SnapshotError::Stopped);
        }
        if !self.state.pause_requested() {
            return Err(SnapshotError::NotPaused);
        }
        let vm = self.vm.upgrade().ok_or(SnapshotError::Stopped)?;
        let machine = self.setup.machine().ok_or_else(|| {
            SnapshotError::Unsupported("this platform has no snapshot support yet".into())
        })?;
        if !self.devices.unsaved.is_empty() {
            return Err(SnapshotError::Unsupported(format!(
                "saving the state of {} is not supported yet",
                self.devices.unsaved.join(", ")
            )));
        }
        // A file in the way (the destination, or a folder above it) is found before any
        // work, and named as what it is.
        let not_a_dir = || SnapshotError::NotADirectory { path: dir.into() };
        if dir.exists() && !dir.is_dir() {
            return Err(not_a_dir());
        }
        let state_path = dir.join(STATE_FILE);
        if state_path.exists() {
            return Err(SnapshotError::Exists { path: dir.into() });
        }
        // Every vCPU thread is parked: each saves its own vCPU.
        let vcpus = self
            .state
            .saves
            .collect(self.cpus, &self.state, VCPU_SAVE_TIMEOUT)?;
        let arch = self
            .setup
            .save_vm(&vm, vcpus)
            .map_err(|e| SnapshotError::Unsupported(e.to_string()))?;
        let devices = self.devices.state()?;
        std::fs::create_dir_all(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotADirectory | std::io::ErrorKind::AlreadyExists => not_a_dir(),
            _ => io_err("create the snapshot directory", dir)(e),
        })?;
        let memory_path = dir.join(MEMORY_FILE);
        let tmp = dir.join(".state.json.tmp");
        let written = (|| {
            let memory = memory::write(&self.mem, &memory_path)?;
            let snapshot = Snapshot {
                format: FORMAT.into(),
                version: VERSION,
                vmm_version: env!("CARGO_PKG_VERSION").into(),
                host: Host::this(),
                machine: machine.clone(),
                memory,
                arch,
                devices,
            };
            let json = serde_json::to_vec_pretty(&snapshot)
                .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
            // Written aside and renamed: a directory with a state file holds a whole snapshot.
            let mut f = create_fresh(&tmp)?;
            f.write_all(&json).map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("sync", &tmp))?;
            std::fs::rename(&tmp, &state_path).map_err(io_err("rename", &state_path))
        })();
        if written.is_err() {
            // A failed snapshot (a full disk) leaves no partial files holding the space.
            let _ = std::fs::remove_file(&memory_path);
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// Creates `path` as a new file. Whatever was there (a file left by a failed snapshot, or a
/// symlink or hard link planted in the destination) is unlinked first, never written through:
/// `create_new` (`O_EXCL`) does not follow a symlink and fails if one reappears.
fn create_fresh(path: &Path) -> Result<File, SnapshotError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err("remove the old", path)(e))
        }
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err("create", path))
}

/// Opens a file of a snapshot directory for reading, refusing anything but a plain file:
/// opening a FIFO would block (signals are not yet taken while a restore builds the VM), and
/// a device has no length to check. `O_NONBLOCK` does nothing to a plain file.
fn open_regular(path: &Path) -> Result<File, SnapshotError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err("open", path))?;
    if !f.metadata().map_err(io_err("stat", path))?.is_file() {
        return Err(SnapshotError::NotASnapshot {
            path: path.into(),
            detail: "not a plain file".into(),
        });
    }
    Ok(f)
}

/// Parses and checks a `state.json`: its format and version first (so an old or foreign
/// file is named as such), then every field, then that its parts agree with each other.
/// Pure, so it is fuzzed (fuzz/fuzz_targets/snapshot_state.rs).
pub fn parse(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    let not_ours = |detail: &str| SnapshotError::NotASnapshot {
        path: STATE_FILE.into(),
        detail: detail.into(),
    };
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(not_ours("no \"format\": \"vibe-vmm snapshot\""));
    }
    let version = value
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| not_ours("no version number"))?;
    if !(u64::from(MIN_VERSION)..=u64::from(VERSION)).contains(&version) {
        return Err(SnapshotError::Version { found: version });
    }
    let snapshot: Snapshot =
        serde_json::from_value(value).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    check(&snapshot)?;
    Ok(snapshot)
}

/// The checks the types alone do not make.
fn check(s: &Snapshot) -> Result<(), SnapshotError> {
    let bad = |m: String| Err(SnapshotError::Corrupt(m));
    let m = &s.machine;
    if m.cpus == 0 || m.cpus as usize != s.arch.vcpu_count() {
        return bad(format!(
            "{} vCPUs in the machine, {} saved",
            m.cpus,
            s.arch.vcpu_count()
        ));
    }
    let ArchState::X86_64 { irqchip, .. } = &s.arch;
    match (m.irqchip.as_str(), irqchip) {
        ("kernel", None) | ("userspace", Some(_)) => {}
        ("kernel" | "userspace", _) => {
            return bad(format!(
                "a {} irqchip with{} the VMM's interrupt controller state",
                m.irqchip,
                if irqchip.is_some() { "" } else { "out" }
            ))
        }
        _ => return bad(format!("unknown irqchip {:?}", m.irqchip)),
    }
    if !matches!(m.transport.as_str(), "mmio" | "pci") {
        return bad(format!("unknown virtio transport {:?}", m.transport));
    }
    let virtio = m.disks.len() + m.nets.len() + usize::from(m.virtio_console);
    if s.devices.virtio.len() != virtio {
        return bad(format!(
            "{virtio} virtio devices in the machine, {} saved",
            s.devices.virtio.len()
        ));
    }
    let mut total = 0u64;
    let mut file_end = 0u64;
    for r in &s.memory {
        if r.size == 0 || r.size % 4096 != 0 || r.gpa % 4096 != 0 || r.offset != file_end {
            return bad(format!(
                "memory region {r:?} is not page-aligned or in file order"
            ));
        }
        file_end = r
            .offset
            .checked_add(r.size)
            .ok_or_else(|| SnapshotError::Corrupt(format!("memory region {r:?} ends past 2^64")))?;
        total = total.saturating_add(r.size);
    }
    if total != m.memory {
        return bad(format!(
            "memory regions hold {total} bytes, the machine has {}",
            m.memory
        ));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let layout: Vec<(u64, u64)> = s.memory.iter().map(|r| (r.gpa, r.size)).collect();
        if m.memory < arch::x86_64::layout::MIN_RAM
            || layout != arch::x86_64::layout::ram_ranges(m.memory)
        {
            return bad(format!(
                "memory regions {layout:x?} are not the memory map of {} bytes",
                m.memory
            ));
        }
    }
    Ok(())
}

/// Reads a snapshot directory's state and checks that this host can run it.
pub fn load(dir: &Path) -> Result<Snapshot, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let f = open_regular(&path)?;
    let mut bytes = Vec::new();
    f.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", &path))?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(SnapshotError::Corrupt(format!(
            "{} is larger than {MAX_STATE_BYTES} bytes",
            path.display()
        )));
    }
    let snapshot = parse(&bytes).map_err(|e| match e {
        SnapshotError::NotASnapshot { detail, .. } => SnapshotError::NotASnapshot { path, detail },
        e => e,
    })?;
    let here = Host::this();
    if snapshot.host != here {
        return Err(SnapshotError::IncompatibleHost {
            saved: snapshot.host.to_string(),
            here: here.to_string(),
        });
    }
    Ok(snapshot)
}

/// How a restored VM gets its RAM from the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryMode {
    /// Mapped copy-on-write: pages are read on first touch, restore time does not grow with
    /// RAM, and the file must stay while the VM runs.
    #[default]
    Private,
    /// Read whole into fresh memory: slower, and the file can go at once.
    Copy,
}

/// What `Vm::restore` builds a VM from besides the snapshot itself.
pub struct RestoreConfig {
    pub dir: PathBuf,
    pub memory: MemoryMode,
    /// Where the serial console's output goes now.
    pub serial: crate::SerialOutput,
    /// Where the MMIO console's output goes, if the machine has one.
    pub mmio_console: crate::SerialOutput,
    /// Where the virtio-console's output goes, if the machine has one.
    pub virtio_console: crate::SerialOutput,
    /// New paths for the machine's disks, in order (the first replaces disk 0, ...); the
    /// rest are re-opened where they were. A disk must keep its size and mode.
    pub disks: Vec<PathBuf>,
    /// New backends for the machine's network devices, in order; the MAC stays the saved one
    /// (the guest has read it), so one given here must equal it.
    pub nets: Vec<crate::NetConfig>,
    pub seccomp: crate::SeccompMode,
    pub trace: Option<crate::trace::TraceConfig>,
}

impl RestoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RestoreConfig {
            dir: dir.into(),
            memory: MemoryMode::default(),
            serial: crate::SerialOutput::Stdout,
            mmio_console: crate::SerialOutput::Stdout,
            virtio_console: crate::SerialOutput::Stdout,
            disks: Vec::new(),
            nets: Vec::new(),
            seccomp: crate::SeccompMode::default(),
            trace: None,
        }
    }
}

/// A loaded snapshot with its RAM mapped, ready for the machine to be built around.
// Used by the x86 machine only until arm64 snapshots exist.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Restore {
    pub snapshot: Snapshot,
    pub mem: GuestMemoryMmap,
}

/// Reads the snapshot in `rc.dir`, maps its memory, and gives the config to build the
/// machine again with.
// Used by the x86 machine only until arm64 snapshots exist.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn prepare(rc: &mut RestoreConfig) -> crate::Result<(VmConfig, Restore)> {
    let snapshot = load(&rc.dir)?;
    let m = &snapshot.machine;
    // What `run --memory` would refuse is refused before anything is mapped (a private
    // mapping of a sparse file would otherwise take any size).
    #[cfg(target_arch = "x86_64")]
    crate::memory::check_size(m.memory, arch::x86_64::layout::MIN_RAM)?;
    let mem = memory::map(&rc.dir.join(MEMORY_FILE), &snapshot.memory, rc.memory)?;
    let mut config = VmConfig::new(KernelImage::Path(m.kernel.clone().into()));
    config.cmdline = m.cmdline.clone();
    config.memory = m.memory;
    config.cpus = m.cpus;
    config.acpi = m.acpi;
    config.irqchip = match m.irqchip.as_str() {
        "userspace" => IrqchipMode::Userspace,
        _ => IrqchipMode::Kernel,
    };
    config.transport = match m.transport.as_str() {
        "pci" => Transport::Pci,
        _ => Transport::Mmio,
    };
    if rc.disks.len() > m.disks.len() || rc.nets.len() > m.nets.len() {
        return Err(SnapshotError::Unsupported(format!(
            "the snapshot has {} disks and {} network devices; {} and {} replacements given",
            m.disks.len(),
            m.nets.len(),
            rc.disks.len(),
            rc.nets.len()
        ))
        .into());
    }
    config.disks = m
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| crate::DiskConfig {
            path: rc.disks.get(i).unwrap_or(&d.path).clone(),
            read_only: d.read_only,
        })
        .collect();
    config.nets = m
        .nets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut saved = n.config()?;
            if let Some(new) = rc.nets.get(i) {
                // The guest has read its MAC: only where the frames go may change.
                if new.mac.is_some() && new.mac != saved.mac {
                    return Err(SnapshotError::Unsupported(format!(
                        "network device {i} keeps the MAC it was saved with"
                    )));
                }
                saved.backend = new.backend.clone();
            }
            Ok(saved)
        })
        .collect::<Result<_, SnapshotError>>()?;
    if m.virtio_console {
        config.virtio_console = Some(std::mem::replace(
            &mut rc.virtio_console,
            crate::SerialOutput::None,
        ));
    }
    config.seccomp = rc.seccomp;
    config.trace = rc.trace.take();
    config.serial = std::mem::replace(&mut rc.serial, crate::SerialOutput::None);
    if m.mmio_console {
        config.mmio_console = Some(std::mem::replace(
            &mut rc.mmio_console,
            crate::SerialOutput::None,
        ));
    }
    Ok((config, Restore { snapshot, mem }))
}

#[cfg(test)]
mod tests;
