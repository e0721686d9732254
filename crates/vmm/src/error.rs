//! Errors from building and running a VM, each naming what failed and with which values.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::Error),
    #[error("not supported yet: {0}")]
    Unsupported(&'static str),
    #[error("guest memory of {size} bytes is too small (at least {min} bytes are needed)")]
    MemoryTooSmall { size: u64, min: u64 },
    #[error("guest memory of {size} bytes is more than this host has ({host} bytes)")]
    MemoryTooBig { size: u64, host: u64 },
    #[error("cannot allocate {size} bytes of guest memory: {reason}")]
    AllocateMemory { size: u64, reason: String },
    #[error("{cpus} vCPUs requested; this hypervisor allows 1 to {max}")]
    BadCpuCount { cpus: u32, max: u32 },
    #[error("cannot read {what} {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("{what} is not a kernel vibe-vmm can boot (neither an x86_64 ELF nor a bzImage)")]
    NotAKernel { what: String },
    #[error("kernel {what} does not fit in {memory} bytes of guest memory: {detail}")]
    KernelTooBig {
        what: String,
        memory: u64,
        detail: String,
    },
    #[error("bad kernel {what}: {detail}")]
    BadKernel { what: String, detail: String },
    #[cfg(target_arch = "x86_64")]
    #[error(transparent)]
    Boot(#[from] arch::x86_64::Error),
    #[error(transparent)]
    Arm64Image(#[from] arch::aarch64::image::Error),
    #[error("cannot build the device tree: {0}")]
    DeviceTree(String),
    #[error("cannot open serial output {path}")]
    SerialFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("device at {base:#x}")]
    Bus {
        base: u64,
        #[source]
        source: devices::BusError,
    },
    #[error("cannot start a VMM thread")]
    SpawnThread(#[source] io::Error),
    #[error("{op} failed")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Disk(#[from] devices::virtio::block::Error),
    #[error(transparent)]
    Tap(#[from] devices::virtio::net::TapError),
    #[error(transparent)]
    SocketNet(#[from] devices::virtio::net::SocketNetError),
    #[error("MAC address {0} is used by two network devices")]
    DuplicateMac(String),
    #[error("{count} virtio devices requested; at most {max} fit (one interrupt line or PCI device number each)")]
    TooManyDevices { count: usize, max: u32 },
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
    #[error(transparent)]
    Pci(#[from] devices::pci::root::PciError),
    #[error("this platform has no PCI bus: use the mmio transport")]
    NoPci,
    #[error("VFIO device {device}")]
    Vfio {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    VfioHost(#[from] vfio::sysfs::HostError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("the VM was already started")]
    AlreadyStarted,
}

pub type Result<T> = std::result::Result<T, Error>;
