//! Virtio devices and their transports: virtio-mmio (version 2) and virtio-pci (modern).
//!
//! A device implements [`VirtioDevice`]: its type, features, config space, and what to do when
//! the driver makes buffers available on a queue. [`state::DeviceState`] is what the driver
//! negotiates with it (status, features, queues) whatever the transport; a transport
//! ([`mmio::MmioTransport`], [`pci::VirtioPciDevice`]) lays registers over that state and
//! delivers its interrupts. Queue work runs on the VMM's event-loop thread, woken by one
//! notify event per queue (a KVM ioeventfd where available, else written by the transport
//! when the guest notifies).

pub mod block;
pub mod console;
pub mod counters;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod state;

use hypervisor::Event;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Virtio device types (virtio 1.x, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_CONSOLE: u32 = 3;

/// A virtio device model, independent of its transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// The largest size of each queue; also how many queues the device has.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver (VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; most devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with these negotiated features.
    fn activate(&mut self, _features: u64) {}
    /// Processes what the driver made available on queue `index`, at most [`PASS_CHAINS`]
    /// chains (and whatever other budget the device has) in one pass. Bad requests are
    /// answered with an error status or skipped, never trusted.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Pass;
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// The device holds input from its host side (a frame from the TAP) that no guest buffer
    /// can take yet, so its host source need not be watched until the guest posts buffers.
    fn input_blocked(&self) -> bool {
        false
    }
    /// The device's own state for a snapshot, beyond what the transport saves.
    fn save_state(&self) -> state::DeviceSnapshot {
        state::DeviceSnapshot::None
    }
    /// Loads saved state into this freshly built device; a mismatch is named.
    fn restore_state(&mut self, saved: &state::DeviceSnapshot) -> Result<(), String> {
        match saved {
            state::DeviceSnapshot::None => Ok(()),
            _ => Err("saved state of another kind of device".into()),
        }
    }
}

/// A device behind its transport, as the event loop drives it.
pub trait VirtioTransport: Send {
    fn state(&self) -> &state::DeviceState;
    /// Runs the device on queue `index` and interrupts the driver as the pass asks.
    fn process_queue(&mut self, index: usize);

    /// The queue-notify events, index = queue number.
    fn notify_events(&self) -> &[Event] {
        self.state().notify_events()
    }

    /// Whether host input for queue `index` must wait for the guest.
    fn input_blocked(&self, index: usize) -> bool {
        self.state().input_blocked(index)
    }

    /// The device and transport state for a snapshot; `None` where the transport cannot be
    /// saved yet.
    fn save(&self) -> Option<TransportSnapshot> {
        None
    }

    /// Loads saved state into this freshly built transport.
    fn restore(&mut self, saved: &TransportSnapshot) -> Result<(), state::RestoreError> {
        Err(state::RestoreError::Device {
            device_type: saved.device().device_type,
            detail: "this transport cannot be restored".into(),
        })
    }
}

/// A virtio device's snapshot with its transport's own registers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TransportSnapshot {
    /// virtio-mmio: the device, and which halves of the feature words are selected.
    Mmio {
        device: state::VirtioSnapshot,
        device_features_sel: u32,
        driver_features_sel: u32,
    },
    /// virtio-pci (format 3): the device, the function's configuration space (command
    /// register, BARs as the guest placed them, MSI-X control), its MSI-X table and pending
    /// bits, and the vectors the driver chose.
    Pci {
        device: state::VirtioSnapshot,
        device_features_sel: u32,
        driver_features_sel: u32,
        /// The first bytes of configuration space; only the bits a driver may write are
        /// loaded back.
        config: Vec<u8>,
        msix: crate::pci::msix::MsixState,
        config_vector: u16,
        queue_vectors: Vec<u16>,
    },
}

impl TransportSnapshot {
    pub fn device(&self) -> &state::VirtioSnapshot {
        match self {
            TransportSnapshot::Mmio { device, .. } | TransportSnapshot::Pci { device, .. } => {
                device
            }
        }
    }
}

/// The most chains a device takes from a queue in one pass, so one busy queue cannot keep the
/// device thread from the others (or from stopping).
pub const PASS_CHAINS: usize = 128;

/// What one pass over a queue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Buffers went back to the driver: it may need an interrupt.
    pub used: bool,
    /// The pass stopped at its budget with work left: run the queue again after the others.
    pub more: bool,
    /// The rings cannot be used (an available index running ahead of the ring, a head
    /// index out of range, a used ring that cannot be written): the device needs a reset.
    pub broken: bool,
    /// Chains returned to the driver ([`Pass::complete`] counts them).
    pub requests: u32,
    /// Data bytes the device moved between guest memory and its back end.
    pub bytes: u64,
    /// Of the chains returned, those answered with an error or dropped as malformed.
    pub errors: u32,
}

impl Pass {
    pub fn used(used: bool) -> Self {
        Pass {
            used,
            ..Default::default()
        }
    }

    /// Takes the next chain the driver made available, if any. Unlike
    /// `QueueT::pop_descriptor_chain`, a broken available ring sets [`Pass::broken`] rather
    /// than looking empty (and is not logged: the guest controls it).
    pub fn next_chain<'m>(
        &mut self,
        queue: &mut Queue,
        mem: &'m GuestMemoryMmap,
    ) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
        match queue.iter(mem) {
            Ok(mut chains) => chains.next(),
            Err(_) => {
                self.broken = true;
                None
            }
        }
    }

    /// Returns a chain to the driver and notes it in [`Pass::used`]; false (and
    /// [`Pass::broken`]) for a head out of range or a used ring that cannot be written.
    pub fn complete(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        head: u16,
        len: u32,
    ) -> bool {
        // Checked here too: virtio-queue logs an out-of-range head, and the guest chooses it.
        if head >= queue.size() || queue.add_used(mem, head, len).is_err() {
            self.broken = true;
            return false;
        }
        self.used = true;
        self.requests += 1;
        true
    }
}

/// Reads `data.len()` bytes at `offset` of a little-endian config space; out of range reads 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
