//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2): one 4 KiB window of
//! registers per device, one interrupt line.
//!
//! Every value the guest writes is checked before it is used: accesses that are not aligned
//! 32-bit register accesses are ignored, feature bits the device did not offer refuse
//! FEATURES_OK, queue registers are only taken while the driver sets the device up, and
//! DRIVER_OK with a queue whose rings fall outside guest memory sets NEEDS_RESET instead of
//! activating the device.

use hypervisor::Event;
use hypervisor::IrqLine;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::BusDevice;

pub const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
pub const VERSION: u32 = 2;
pub const VENDOR_ID: u32 = 0x4542_4956; // "VIBE"

// Register offsets.
pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const REG_CONFIG: u64 = 0x100;

// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// InterruptStatus bits: a queue was used / the configuration changed.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    /// One per queue: written on QueueNotify (or directly by KVM's ioeventfd).
    notify: Vec<Event>,
    irq: Box<dyn IrqLine>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: Box<dyn IrqLine>,
    ) -> std::io::Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(|e| std::io::Error::other(format!("{e:?}"))))
            .collect::<std::io::Result<Vec<_>>>()?;
        let notify = queues
            .iter()
            .map(|_| Event::new())
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            mem,
            queues,
            notify,
            irq,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
        })
    }

    /// The queue-notify events, index = queue number, for the event loop and ioeventfd.
    pub fn notify_events(&self) -> &[Event] {
        &self.notify
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_NEEDS_RESET == 0
    }

    /// Runs the device on queue `index` (called from the event loop after its notify event fired)
    /// and interrupts the driver if buffers were used.
    pub fn process_queue(&mut self, index: usize) {
        if !self.active() {
            return;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let pass = self.device.process_queue(index, queue, &self.mem);
        // Without VIRTIO_RING_F_EVENT_IDX this is "unless the driver asked for no
        // interrupts"; a ring that cannot be read counts as "interrupt".
        if pass.used && queue.needs_notification(&self.mem).unwrap_or(true) {
            self.raise(INT_VRING);
        }
        if pass.broken {
            // Virtio 1.x 2.1.2: the device is in an error state the driver must reset.
            self.status |= STATUS_NEEDS_RESET;
            self.raise(INT_CONFIG);
        } else if pass.more {
            // Yield to the other queues and devices; this one runs again after them.
            if let Some(evt) = self.notify.get(index) {
                let _ = evt.signal();
            }
        }
    }

    /// Whether host input for queue `index` must wait for the guest: the driver is not ready,
    /// or the device holds input that no posted buffer can take.
    pub fn input_blocked(&self, index: usize) -> bool {
        !self.active()
            || !self.queues.get(index).is_some_and(|q| q.ready())
            || self.device.input_blocked()
    }

    fn raise(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        if let Err(e) = self.irq.trigger() {
            log::warn!("virtio interrupt failed: {e}");
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only while the driver sets the device up, and only for a
    /// queue that is not live.
    fn queue_config_allowed(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
    }

    fn reset(&mut self) {
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added (the driver resets to clear them).
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
                self.raise(INT_CONFIG);
                return;
            } else {
                self.status = status;
                self.device.activate(self.driver_features);
                // Buffers may already be waiting.
                for evt in &self.notify {
                    let _ = evt.signal();
                }
                return;
            }
        }
        self.status = status;
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt_status,
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            // Features are only taken between DRIVER and FEATURES_OK.
            REG_DRIVER_FEATURES
                if self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0 =>
            {
                let v = u64::from(value);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NOTIFY => {
                if let Some(evt) = self.notify.get(value as usize) {
                    let _ = evt.signal();
                }
            }
            REG_INTERRUPT_ACK => self.interrupt_status &= !value,
            REG_STATUS => self.set_status(value),
            REG_QUEUE_NUM
            | REG_QUEUE_READY
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                if !self.queue_config_allowed() {
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    return;
                };
                if offset == REG_QUEUE_READY {
                    q.set_ready(value == 1);
                    return;
                }
                if q.ready() {
                    return;
                }
                // The `try_` setters: a bad size or alignment is the guest's to fix (the queue
                // then fails validation at DRIVER_OK), not something to log on its behalf.
                let low = |old: u64| GuestAddress((old & !0xffff_ffff) | u64::from(value));
                let high = |old: u64| GuestAddress((old & 0xffff_ffff) | u64::from(value) << 32);
                let _ = match offset {
                    REG_QUEUE_NUM => q.try_set_size(u16::try_from(value).unwrap_or(0)),
                    REG_QUEUE_DESC_LOW => q.try_set_desc_table_address(low(q.desc_table())),
                    REG_QUEUE_DESC_HIGH => q.try_set_desc_table_address(high(q.desc_table())),
                    REG_QUEUE_DRIVER_LOW => q.try_set_avail_ring_address(low(q.avail_ring())),
                    REG_QUEUE_DRIVER_HIGH => q.try_set_avail_ring_address(high(q.avail_ring())),
                    REG_QUEUE_DEVICE_LOW => q.try_set_used_ring_address(low(q.used_ring())),
                    REG_QUEUE_DEVICE_HIGH => q.try_set_used_ring_address(high(q.used_ring())),
                    _ => Ok(()),
                };
            }
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        data.fill(0);
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            // Config writes are only meaningful while the driver owns the device.
            if self.status & STATUS_DRIVER != 0 {
                self.device.write_config(offset - REG_CONFIG, data);
            }
            return;
        }
        if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::Pass;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Count(Arc<AtomicUsize>);
    impl IrqLine for Count {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    struct Dummy {
        processed: Arc<AtomicUsize>,
        /// What each pass reports.
        pass: Arc<std::sync::Mutex<Pass>>,
    }
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8, 8]
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn process_queue(&mut self, _: usize, _: &mut Queue, _: &GuestMemoryMmap) -> Pass {
            self.processed.fetch_add(1, Ordering::SeqCst);
            *self.pass.lock().unwrap()
        }
    }

    fn transport() -> (MmioTransport, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (t, irqs, processed, _) = transport_reporting(Pass::used(true));
        (t, irqs, processed)
    }

    type Reported = Arc<std::sync::Mutex<Pass>>;

    fn transport_reporting(
        pass: Pass,
    ) -> (MmioTransport, Arc<AtomicUsize>, Arc<AtomicUsize>, Reported) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let irqs = Arc::new(AtomicUsize::new(0));
        let processed = Arc::new(AtomicUsize::new(0));
        let pass = Arc::new(std::sync::Mutex::new(pass));
        let t = MmioTransport::new(
            Box::new(Dummy {
                processed: processed.clone(),
                pass: pass.clone(),
            }),
            mem,
            Box::new(Count(irqs.clone())),
        )
        .unwrap();
        (t, irqs, processed, pass)
    }

    #[test]
    fn a_pass_with_work_left_runs_again_and_a_broken_queue_needs_a_reset() {
        let more = Pass {
            used: true,
            more: true,
            broken: false,
        };
        let (mut t, irqs, _, pass) = transport_reporting(more);
        bring_up(&mut t, 1 << 32, 0x1000);
        let _ = t.notify_events()[0].drain();
        t.process_queue(0);
        assert!(
            t.notify_events()[0].drain().unwrap(),
            "re-notified to run again"
        );
        assert_eq!(irqs.load(Ordering::SeqCst), 1);

        *pass.lock().unwrap() = Pass {
            broken: true,
            ..Pass::default()
        };
        t.process_queue(0);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
        assert_eq!(irqs.load(Ordering::SeqCst), 2, "a configuration interrupt");
        // A device that needs a reset runs no more queues until the driver resets it.
        t.process_queue(0);
        assert_eq!(irqs.load(Ordering::SeqCst), 2);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Drives the transport like a driver: negotiate `features`, set up both queues.
    fn bring_up(t: &mut MmioTransport, features: u64, desc: u64) -> u32 {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, features as u32);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for q in 0..2 {
            w(t, REG_QUEUE_SEL, q);
            w(t, REG_QUEUE_NUM, 8);
            w(t, REG_QUEUE_DESC_LOW, desc as u32 + q * 0x1000);
            w(t, REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
            w(t, REG_QUEUE_DRIVER_LOW, 0x8000 + q * 0x1000);
            w(t, REG_QUEUE_DEVICE_LOW, 0xa000 + q * 0x1000);
            w(t, REG_QUEUE_READY, 1);
        }
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        r(t, REG_STATUS)
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _, _) = transport();
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC_VALUE);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1); // VERSION_1 is bit 32
        w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1 << 3);
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 8);
        w(&mut t, REG_QUEUE_SEL, 2);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
        let mut b = [0u8; 2];
        t.read(REG_CONFIG + 1, &mut b);
        assert_eq!(b, [2, 3]);
        // Narrow or unaligned register reads see nothing.
        let mut b = [0xffu8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn full_negotiation_activates_and_notify_reaches_the_device() {
        let (mut t, irqs, processed) = transport();
        let status = bring_up(&mut t, (1 << 32) | (1 << 3), 0x1000);
        assert_ne!(status & STATUS_DRIVER_OK, 0, "status {status:#x}");
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        assert!(t.notify_events()[1].drain().unwrap()); // activation + notify
        t.process_queue(1);
        assert_eq!(processed.load(Ordering::SeqCst), 1);
        assert_eq!(irqs.load(Ordering::SeqCst), 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_VRING);
        w(&mut t, REG_INTERRUPT_ACK, INT_VRING);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        // Out-of-range queue numbers are ignored.
        w(&mut t, REG_QUEUE_NOTIFY, 7);
        t.process_queue(7);
        // Reset clears everything and stops processing.
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        t.process_queue(1);
        assert_eq!(processed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn refuses_unoffered_features_and_legacy_drivers() {
        let (mut t, _, _) = transport();
        let status = bring_up(&mut t, (1 << 32) | (1 << 5), 0x1000);
        assert_eq!(status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK), 0);
        let (mut t, _, _) = transport();
        let status = bring_up(&mut t, 1 << 3, 0x1000); // no VERSION_1
        assert_eq!(status & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn rings_outside_memory_need_a_reset() {
        let (mut t, irqs, processed) = transport();
        let status = bring_up(&mut t, 1 << 32, 0xdead_0000_0000);
        assert_ne!(status & STATUS_NEEDS_RESET, 0);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(irqs.load(Ordering::SeqCst), 1);
        t.process_queue(0);
        assert_eq!(processed.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn queue_registers_are_frozen_outside_setup() {
        let (mut t, _, _) = transport();
        // Before FEATURES_OK: ignored.
        w(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
        bring_up(&mut t, 1 << 32, 0x1000);
        // After DRIVER_OK: ignored too.
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
    }
}
