//! The VMM core: builds a VM from a [`VmConfig`], runs one thread per vCPU, dispatches their
//! exits to the device buses, and reports how the guest ended ([`Outcome`]).
//!
//! It is generic over the [`hypervisor`] traits and never names a backend.
//!
//! ```text
//! VmConfig ──> Vm::new: memory ─ irqchip ─ devices ─ kernel + boot structures
//!              Vm::start: one thread per vCPU ──> run ─> exit ─> bus ─> device
//!              Vm::wait:  first stop request wins ─> kick every vCPU ─> join ─> Outcome
//! ```

pub mod aarch64;
pub mod api;
pub mod config;
mod control;
mod device_manager;
mod error;
mod event_loop;
mod image_file;
mod irq_counts;
pub mod memory;
pub mod seccomp;
pub mod snapshot;
mod state;
pub mod stats;
pub mod trace;
mod vcpu;
mod vm;
#[cfg(target_arch = "x86_64")]
mod x86_64;

/// The most vCPUs the machine of this host's architecture describes.
#[cfg(target_arch = "aarch64")]
pub use aarch64::MAX_VCPUS;
pub use config::{
    ConsoleKind, DiskConfig, IrqchipMode, KernelImage, NetBackendConfig, NetConfig, SerialOutput,
    Transport, VfioConfig, VmConfig,
};
pub use control::{ControlError, RunState, Shutdown, VmController, VmInfo};
pub use error::{Error, Result};
pub use seccomp::SeccompMode;
pub use state::{Outcome, StopHandle};
pub use vm::Vm;
/// Public for the fuzzer only (fuzz/fuzz_targets/x86_kernel_loader.rs).
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub use x86_64::boot::load_kernel_bytes;
#[cfg(target_arch = "x86_64")]
pub use x86_64::MAX_VCPUS;
