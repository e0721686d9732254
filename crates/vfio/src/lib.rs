//! VFIO device passthrough and SR-IOV virtual functions (Linux hosts).
//!
//! - [`sysfs`]: the host's PCI functions as sysfs shows them, under one root (a fake tree in
//!   tests), and the checks that say why a function cannot be passed through.
//! - [`sriov`]: `vibe-vmm sriov`: list PFs and VFs, create and destroy VFs, hand a VF to
//!   vfio-pci and back.
//!
//! Everything here but the kernel boundary compiles on every host, so it is tested anywhere.
//! See docs/sriov.md.

pub mod sriov;
pub mod sysfs;
