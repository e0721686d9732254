//! Emulated devices and the buses that route guest port and MMIO accesses to them.
//!
//! A device implements [`BusDevice`] and never learns which hypervisor runs the guest: it gets
//! an offset into its own window and raises interrupts through [`hypervisor::IrqLine`].

pub mod acpi_ged;
pub mod acpi_pm;
pub mod bus;
pub mod console_output;
pub mod counter;
pub mod debug_exit;
pub mod i8042;
pub mod irqchip;
pub mod mmio_console;
pub mod pci;
pub mod serial;
pub mod thread;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

/// Locks a device or its shared state. A holder that panicked leaves plain register state
/// behind, still usable, so poisoning is ignored rather than spread to every thread.
pub fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a device asks the VM to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine (i8042 reset line, triple fault).
    Reset,
    /// The guest wrote its exit status to the debug-exit port.
    DebugExit(u8),
    /// The guest powered the machine off (ACPI S5).
    PowerOff,
}

/// A console device that takes host keyboard input.
pub trait ConsoleInput: Send {
    /// Queues bytes for the guest; returns how many fit (the caller retries the rest later).
    fn queue_input(&mut self, bytes: &[u8]) -> usize;
}

/// Lets a device end the VM. Implemented by the VMM core.
pub trait VmControl: Send + Sync {
    fn request_stop(&self, reason: StopReason);
}

/// A [`VmControl`] that records the stop requests, for device unit tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct StopRecorder(pub std::sync::Mutex<Vec<StopReason>>);

#[cfg(test)]
impl VmControl for StopRecorder {
    fn request_stop(&self, reason: StopReason) {
        lock(&self.0).push(reason);
    }
}
