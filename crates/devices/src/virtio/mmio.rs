//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2): one 4 KiB window of
//! registers per device, one interrupt line. The negotiation itself is
//! [`DeviceState`](super::state::DeviceState)'s; this maps registers onto it. Accesses that
//! are not aligned 32-bit register accesses are ignored.

use hypervisor::IrqLine;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::state::{DeviceState, QueueField, RestoreError};
pub use super::state::{
    INT_CONFIG, INT_VRING, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use super::{TransportSnapshot, VirtioDevice, VirtioTransport};
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

pub struct MmioTransport {
    state: DeviceState,
    irq: Box<dyn IrqLine>,
    device_features_sel: u32,
    driver_features_sel: u32,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: Box<dyn IrqLine>,
    ) -> std::io::Result<Self> {
        Ok(MmioTransport {
            state: DeviceState::new(device, mem)?,
            irq,
            device_features_sel: 0,
            driver_features_sel: 0,
        })
    }

    pub fn device_type(&self) -> u32 {
        self.state.device_type()
    }

    pub fn status(&self) -> u32 {
        self.state.status()
    }

    /// One line for every cause; InterruptStatus says which.
    fn deliver(&self, raised: u32) {
        if raised != 0 {
            if let Err(e) = self.irq.trigger() {
                log::warn!("virtio interrupt failed: {e}");
            }
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let s = &self.state;
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => s.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => s.device_features_word(self.device_features_sel),
            REG_QUEUE_NUM_MAX => s.queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => s.read_queue(QueueField::Ready),
            REG_INTERRUPT_STATUS => s.interrupt_status(),
            REG_STATUS => s.status(),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let field = match offset {
            REG_QUEUE_NUM => QueueField::Size,
            REG_QUEUE_READY => QueueField::Ready,
            REG_QUEUE_DESC_LOW => QueueField::DescLow,
            REG_QUEUE_DESC_HIGH => QueueField::DescHigh,
            REG_QUEUE_DRIVER_LOW => QueueField::DriverLow,
            REG_QUEUE_DRIVER_HIGH => QueueField::DriverHigh,
            REG_QUEUE_DEVICE_LOW => QueueField::DeviceLow,
            REG_QUEUE_DEVICE_HIGH => QueueField::DeviceHigh,
            REG_DEVICE_FEATURES_SEL => return self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => return self.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                return self
                    .state
                    .write_driver_features(self.driver_features_sel, value)
            }
            REG_QUEUE_SEL => return self.state.select_queue(value),
            REG_QUEUE_NOTIFY => return self.state.notify(value),
            REG_INTERRUPT_ACK => return self.state.ack_interrupt(value),
            REG_STATUS => {
                if value == 0 {
                    self.device_features_sel = 0;
                    self.driver_features_sel = 0;
                }
                let raised = self.state.set_status(value);
                return self.deliver(raised);
            }
            _ => return,
        };
        self.state.write_queue(field, value);
    }
}

impl VirtioTransport for MmioTransport {
    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn process_queue(&mut self, index: usize) {
        let raised = self.state.process_queue(index);
        self.deliver(raised);
    }

    fn save(&self) -> Option<TransportSnapshot> {
        Some(TransportSnapshot::Mmio {
            device: self.state.save(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
        })
    }

    fn restore(&mut self, saved: &TransportSnapshot) -> Result<(), RestoreError> {
        let TransportSnapshot::Mmio {
            device,
            device_features_sel,
            driver_features_sel,
        } = saved
        else {
            return Err(RestoreError::Device {
                device_type: saved.device().device_type,
                detail: "saved on another virtio transport".into(),
            });
        };
        self.state.restore(device)?;
        self.device_features_sel = *device_features_sel;
        self.driver_features_sel = *driver_features_sel;
        Ok(())
    }
}

impl BusDevice for MmioTransport {
    fn name(&self) -> String {
        match self.state.device_type() {
            1 => "virtio-net",
            2 => "virtio-blk",
            3 => "virtio-console",
            _ => "virtio-mmio",
        }
        .into()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.state.read_config(offset - REG_CONFIG, data);
            return;
        }
        data.fill(0);
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            self.state.write_config(offset - REG_CONFIG, data);
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
    use crate::virtio::{Pass, VirtioTransport};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use virtio_queue::Queue;
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
            requests: 2,
            bytes: 10,
            errors: 1,
            ..Pass::default()
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
        // The passes and interrupts are in the device's counters.
        let c = t.state().counters().clone();
        let q = &c.queues()[0];
        assert_eq!(
            (q.requests.get(), q.bytes.get(), q.errors.get()),
            (2, 10, 1)
        );
        assert_eq!(c.used_interrupts.get(), 1);
        assert_eq!(c.config_interrupts.get(), 1);
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
    fn saved_state_loads_into_a_fresh_transport_and_bad_state_is_named() {
        let (mut t, _, processed) = transport();
        bring_up(&mut t, 1 << 32, 0x1000);
        let saved = t.save().unwrap();
        let (mut fresh, _, processed2) = transport();
        fresh.restore(&saved).unwrap();
        assert_eq!(fresh.save(), Some(saved.clone()));
        assert_eq!(
            r(&mut fresh, REG_STATUS) & STATUS_DRIVER_OK,
            STATUS_DRIVER_OK
        );
        // A live device's queues are woken: work may have been left.
        assert!(fresh.notify_events()[0].drain().unwrap());
        fresh.process_queue(0);
        assert_eq!(processed2.load(Ordering::SeqCst), 1);
        assert_eq!(processed.load(Ordering::SeqCst), 0);

        let TransportSnapshot::Mmio { device, .. } = &saved else {
            unreachable!("an mmio transport saves mmio state")
        };
        let mut bad = device.clone();
        bad.queues[1].size = 3;
        let e = MmioTransport::restore(&mut transport().0, &mmio(bad)).unwrap_err();
        assert!(e.to_string().contains("queue 1"), "{e}");
        let mut bad = device.clone();
        bad.device_type = 2;
        assert!(transport().0.restore(&mmio(bad)).is_err());
        let mut bad = device.clone();
        bad.driver_features |= 1 << 5;
        assert!(transport().0.restore(&mmio(bad)).is_err());
        let mut bad = device.clone();
        bad.queues.pop();
        assert!(transport().0.restore(&mmio(bad)).is_err());
        let mut bad = device.clone();
        bad.queues[0].desc_table = 0xdead_0000_0000;
        let e = transport().0.restore(&mmio(bad)).unwrap_err();
        assert!(e.to_string().contains("not in guest memory"), "{e}");
    }

    fn mmio(device: crate::virtio::state::VirtioSnapshot) -> TransportSnapshot {
        TransportSnapshot::Mmio {
            device,
            device_features_sel: 0,
            driver_features_sel: 0,
        }
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
