//! VFIO device passthrough and SR-IOV virtual functions (Linux hosts).
//!
//! - [`sysfs`]: the host's PCI functions as sysfs shows them, under one root (a fake tree in
//!   tests), and the checks that say why a function cannot be passed through.
//! - [`sriov`]: `vibe-vmm sriov`: list PFs and VFs, create and destroy VFs, hand a VF to
//!   vfio-pci and back.
//!
//! - [`backend`]: the kernel boundary as one trait, [`VfioBackend`]; [`fake`] is a device
//!   standing in for it in tests.
//! - [`config`]: the configuration-space policy (what the guest sees, what reaches the device).
//! - [`device`]: [`VfioPciDevice`], a passed-through function on the guest's PCI bus.
//!
//! Everything here but the kernel boundary compiles on every host, so it is tested anywhere.
//! See docs/sriov.md.

pub mod backend;
pub mod config;
pub mod device;
pub mod fake;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod sriov;
pub mod sysfs;

pub use backend::VfioBackend;
pub use device::VfioPciDevice;
