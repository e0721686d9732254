//! What a driver negotiates with a virtio device, whatever the transport (virtio 1.x,
//! sections 2 and 3): the device status, the feature bits, the queues, the interrupt status
//! bits, and running the device on its queues. The virtio-mmio and virtio-pci transports are
//! register layouts over this one state machine.
//!
//! Every value the guest writes is checked before it is used: feature bits the device did not
//! offer refuse FEATURES_OK, queue fields are only taken while the driver sets the device up
//! and the queue is not live, and DRIVER_OK with a queue whose rings fall outside guest memory
//! sets NEEDS_RESET instead of activating the device.

mod snapshot;

pub use snapshot::{DeviceSnapshot, QueueSnapshot, RestoreError, VirtioSnapshot};

use std::sync::Arc;

use hypervisor::Event;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::counters::DeviceCounters;
use super::{VirtioDevice, VIRTIO_F_VERSION_1};

// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// Interrupt status bits (virtio-mmio InterruptStatus, virtio-pci ISR): a queue was used /
/// the configuration changed.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A queue field the driver programs while it sets the device up. Addresses come in 32-bit
/// halves on both transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueField {
    Size,
    Ready,
    DescLow,
    DescHigh,
    DriverLow,
    DriverHigh,
    DeviceLow,
    DeviceHigh,
}

pub struct DeviceState {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    /// One per queue: written on a queue notification (or directly by KVM's ioeventfd).
    notify: Vec<Event>,
    status: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    /// What the device did, for the statistics.
    counters: Arc<DeviceCounters>,
}

impl DeviceState {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> std::io::Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(|e| std::io::Error::other(format!("{e:?}"))))
            .collect::<std::io::Result<Vec<_>>>()?;
        let notify = queues
            .iter()
            .map(|_| Event::new())
            .collect::<std::io::Result<Vec<_>>>()?;
        let counters = Arc::new(DeviceCounters::new(device.device_type(), queues.len()));
        Ok(DeviceState {
            device,
            mem,
            queues,
            notify,
            status: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            counters,
        })
    }

    /// The device's request, byte, error and interrupt counters, readable from any thread.
    pub fn counters(&self) -> &Arc<DeviceCounters> {
        &self.counters
    }

    /// The queue-notify events, index = queue number, for the event loop and ioeventfd.
    pub fn notify_events(&self) -> &[Event] {
        &self.notify
    }

    /// The driver notified queue `index` through the transport's registers.
    pub fn notify(&self, index: u32) {
        if let Some(evt) = self.notify.get(index as usize) {
            let _ = evt.signal();
        }
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn offered_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    /// Word `sel` (0 or 1) of the offered features; 0 beyond.
    pub fn device_features_word(&self, sel: u32) -> u32 {
        match sel {
            0 => self.offered_features() as u32,
            1 => (self.offered_features() >> 32) as u32,
            _ => 0,
        }
    }

    /// Features are only taken between DRIVER and FEATURES_OK.
    pub fn write_driver_features(&mut self, sel: u32, value: u32) {
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        let v = u64::from(value);
        match sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
            _ => {}
        }
    }

    /// Word `sel` of what the driver wrote as its features.
    pub fn driver_features_word(&self, sel: u32) -> u32 {
        match sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    fn active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_NEEDS_RESET == 0
    }

    /// Runs the device on queue `index` (called from the event loop after its notify event
    /// fired). Returns the interrupt status bits raised ([`INT_VRING`], [`INT_CONFIG`]), for
    /// the transport to deliver.
    pub fn process_queue(&mut self, index: usize) -> u32 {
        if !self.active() {
            return 0;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return 0;
        };
        if !queue.ready() {
            return 0;
        }
        let pass = self.device.process_queue(index, queue, &self.mem);
        self.counters.pass(index, &pass);
        let mut raised = 0;
        // Without VIRTIO_RING_F_EVENT_IDX this is "unless the driver asked for no
        // interrupts"; a ring that cannot be read counts as "interrupt".
        if pass.used && queue.needs_notification(&self.mem).unwrap_or(true) {
            raised |= INT_VRING;
        }
        if pass.broken {
            // Virtio 1.x 2.1.2: the device is in an error state the driver must reset.
            self.status |= STATUS_NEEDS_RESET;
            raised |= INT_CONFIG;
        } else if pass.more {
            // Yield to the other queues and devices; this one runs again after them.
            self.notify(index as u32);
        }
        self.interrupt_status |= raised;
        self.counters.raised(raised);
        raised
    }

    /// Whether host input for queue `index` must wait for the guest: the driver is not ready,
    /// or the device holds input that no posted buffer can take.
    pub fn input_blocked(&self, index: usize) -> bool {
        !self.active()
            || !self.queues.get(index).is_some_and(|q| q.ready())
            || self.device.input_blocked()
    }

    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    pub fn ack_interrupt(&mut self, bits: u32) {
        self.interrupt_status &= !bits;
    }

    /// Reads and clears the interrupt status (the virtio-pci ISR).
    pub fn take_interrupt_status(&mut self) -> u32 {
        std::mem::take(&mut self.interrupt_status)
    }

    /// Queue fields may change only while the driver sets the device up.
    fn queue_config_allowed(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
    }

    /// The driver wrote the device status: 0 resets, other bits are only ever added. Returns
    /// the interrupt status bits raised (a configuration interrupt when activation failed).
    pub fn set_status(&mut self, value: u32) -> u32 {
        if value == 0 {
            self.reset();
            return 0;
        }
        let added = value & !self.status;
        let mut status = self.status | value;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.offered_features();
            let ok = self.status & STATUS_DRIVER != 0
                && self.driver_features & !offered == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if !ok {
                status &= !STATUS_FEATURES_OK;
            }
        }
        if added & STATUS_DRIVER_OK != 0 {
            if status & STATUS_FEATURES_OK == 0 {
                status &= !STATUS_DRIVER_OK;
            } else if self
                .queues
                .iter()
                .any(|q| q.ready() && !q.is_valid(&self.mem))
            {
                // A ready queue whose rings are not in guest memory: the driver must reset.
                self.status = status | STATUS_NEEDS_RESET;
                self.interrupt_status |= INT_CONFIG;
                self.counters.raised(INT_CONFIG);
                return INT_CONFIG;
            } else {
                self.status = status;
                self.device.activate(self.driver_features);
                // Buffers may already be waiting.
                for evt in &self.notify {
                    let _ = evt.signal();
                }
                return 0;
            }
        }
        self.status = status;
        0
    }

    pub fn queue_select(&self) -> u32 {
        self.queue_sel
    }

    pub fn select_queue(&mut self, index: u32) {
        self.queue_sel = index;
    }

    /// The selected queue, if it exists.
    pub fn queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// Reads a field of the selected queue (0 if there is none).
    pub fn read_queue(&self, field: QueueField) -> u32 {
        let Some(q) = self.queue() else {
            return 0;
        };
        let (addr, high) = match field {
            QueueField::Size => return u32::from(q.size()),
            QueueField::Ready => return u32::from(q.ready()),
            QueueField::DescLow => (q.desc_table(), false),
            QueueField::DescHigh => (q.desc_table(), true),
            QueueField::DriverLow => (q.avail_ring(), false),
            QueueField::DriverHigh => (q.avail_ring(), true),
            QueueField::DeviceLow => (q.used_ring(), false),
            QueueField::DeviceHigh => (q.used_ring(), true),
        };
        if high {
            (addr >> 32) as u32
        } else {
            addr as u32
        }
    }

    /// Writes a field of the selected queue, if the driver may (during set-up, and only
    /// `Ready` once the queue is live).
    pub fn write_queue(&mut self, field: QueueField, value: u32) {
        if !self.queue_config_allowed() {
            return;
        }
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return;
        };
        if field == QueueField::Ready {
            q.set_ready(value == 1);
            return;
        }
        if q.ready() {
            return;
        }
        // The `try_` setters: a bad size or alignment is the guest's to fix (the queue then
        // fails validation at DRIVER_OK), not something to log on its behalf.
        let low = |old: u64| GuestAddress((old & !0xffff_ffff) | u64::from(value));
        let high = |old: u64| GuestAddress((old & 0xffff_ffff) | u64::from(value) << 32);
        let _ = match field {
            QueueField::Size => q.try_set_size(u16::try_from(value).unwrap_or(0)),
            QueueField::DescLow => q.try_set_desc_table_address(low(q.desc_table())),
            QueueField::DescHigh => q.try_set_desc_table_address(high(q.desc_table())),
            QueueField::DriverLow => q.try_set_avail_ring_address(low(q.avail_ring())),
            QueueField::DriverHigh => q.try_set_avail_ring_address(high(q.avail_ring())),
            QueueField::DeviceLow => q.try_set_used_ring_address(low(q.used_ring())),
            QueueField::DeviceHigh => q.try_set_used_ring_address(high(q.used_ring())),
            QueueField::Ready => Ok(()),
        };
    }

    /// Reads the device-specific configuration space.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.device.read_config(offset, data);
    }

    /// Config writes are only meaningful while the driver owns the device.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.status & STATUS_DRIVER != 0 {
            self.device.write_config(offset, data);
        }
    }
}
