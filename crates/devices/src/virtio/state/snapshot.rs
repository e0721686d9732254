//! A virtio device's negotiated state as plain data, for snapshots: what the driver set up
//! (status, features, queues and where they stand) and the device's own state beyond it.
//! Saved from a [`DeviceState`] at pause and loaded into a freshly built one on restore; every
//! value is checked as a guest write would be, since the file is the user's.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{DeviceState, INT_CONFIG, INT_VRING, STATUS_DRIVER_OK, STATUS_NEEDS_RESET};

/// One queue as the driver set it up, and how far the device got in its rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// What a device keeps beyond its queues.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceSnapshot {
    /// Nothing (virtio-net: a frame read from the TAP but not yet delivered is dropped, as
    /// a network may drop any frame).
    #[default]
    None,
    /// virtio-blk: the disk's size and mode, which the driver has read and the re-opened
    /// disk must match.
    Block { capacity: u64, read_only: bool },
    /// virtio-console: host input the guest has not read, and the part of a transmit chain
    /// the output has not taken yet (its head is returned once it has).
    Console {
        input: Vec<u8>,
        tx_pending: Option<(u16, Vec<u8>)>,
    },
}

/// The transport-independent state of one virtio device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioSnapshot {
    pub device_type: u32,
    pub status: u32,
    /// What the device offered (checked: a disk re-opened read-only offers another set).
    pub offered_features: u64,
    pub driver_features: u64,
    pub queue_select: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueSnapshot>,
    pub device: DeviceSnapshot,
}

/// Why saved virtio state does not fit the device built on restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("a virtio device of type {saved} was saved where this machine has type {here}")]
    DeviceType { saved: u32, here: u32 },
    #[error("virtio device type {device_type}: features {saved:#x} were offered, the device now offers {here:#x}")]
    Features {
        device_type: u32,
        saved: u64,
        here: u64,
    },
    #[error(
        "virtio device type {device_type}: the driver's features {driver:#x} were never offered"
    )]
    DriverFeatures { device_type: u32, driver: u64 },
    #[error("virtio device type {device_type}: {saved} queues saved, the device has {here}")]
    QueueCount {
        device_type: u32,
        saved: usize,
        here: usize,
    },
    #[error("virtio device type {device_type}, queue {index}: {detail}")]
    Queue {
        device_type: u32,
        index: usize,
        detail: String,
    },
    #[error("virtio device type {device_type}: {detail}")]
    Device { device_type: u32, detail: String },
}

impl DeviceState {
    /// The state to save; the VM is paused, so no queue is being worked on.
    pub fn save(&self) -> VirtioSnapshot {
        VirtioSnapshot {
            device_type: self.device_type(),
            status: self.status,
            offered_features: self.offered_features(),
            driver_features: self.driver_features,
            queue_select: self.queue_sel,
            interrupt_status: self.interrupt_status,
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
            device: self.device.save_state(),
        }
    }

    /// Loads saved state into this freshly built device, then wakes every queue of a live
    /// device (a pass may have left work, and buffers may wait). The interrupt itself is not
    /// raised again: the saved interrupt controller holds it.
    pub fn restore(&mut self, s: &VirtioSnapshot) -> Result<(), RestoreError> {
        let device_type = self.device_type();
        if s.device_type != device_type {
            return Err(RestoreError::DeviceType {
                saved: s.device_type,
                here: device_type,
            });
        }
        let offered = self.offered_features();
        if s.offered_features != offered {
            return Err(RestoreError::Features {
                device_type,
                saved: s.offered_features,
                here: offered,
            });
        }
        if s.driver_features & !offered != 0 {
            return Err(RestoreError::DriverFeatures {
                device_type,
                driver: s.driver_features,
            });
        }
        if s.queues.len() != self.queues.len() {
            return Err(RestoreError::QueueCount {
                device_type,
                saved: s.queues.len(),
                here: self.queues.len(),
            });
        }
        let live = s.status & STATUS_DRIVER_OK != 0 && s.status & STATUS_NEEDS_RESET == 0;
        let mut queues = Vec::with_capacity(s.queues.len());
        for (index, (saved, q)) in s.queues.iter().zip(&self.queues).enumerate() {
            let bad = |detail: String| RestoreError::Queue {
                device_type,
                index,
                detail,
            };
            if saved.max_size != q.max_size() {
                return Err(bad(format!(
                    "largest size {} saved, the device's is {}",
                    saved.max_size,
                    q.max_size()
                )));
            }
            let queue =
                Queue::try_from(QueueState::from(*saved)).map_err(|e| bad(format!("{e:?}")))?;
            if live && queue.ready() && !queue.is_valid(&self.mem) {
                return Err(bad("its rings are not in guest memory".into()));
            }
            queues.push(queue);
        }
        self.device
            .restore_state(&s.device)
            .map_err(|detail| RestoreError::Device {
                device_type,
                detail,
            })?;
        self.queues = queues;
        self.status = s.status;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_select;
        self.interrupt_status = s.interrupt_status & (INT_VRING | INT_CONFIG);
        if live {
            self.device.activate(self.driver_features);
            for evt in &self.notify {
                let _ = evt.signal();
            }
        }
        Ok(())
    }
}
