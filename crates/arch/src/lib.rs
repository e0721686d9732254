//! Guest platform set-up for each architecture: the guest-physical memory map, boot structures
//! written into guest memory, and the initial CPU register values. This crate computes and
//! writes; it never runs a vCPU or calls the hypervisor.

/// Portable: compiled on every host, so it is tested here.
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// Shorthands for sizes.
pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
