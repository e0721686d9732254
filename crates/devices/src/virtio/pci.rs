//! The virtio-pci transport, modern interface only (virtio 1.x, section 4.1): a PCI function
//! whose vendor capabilities point into one 64-bit memory BAR holding the common
//! configuration, the ISR, the device configuration, the queue notify addresses and the MSI-X
//! table and pending bits. Queues and the configuration each get an MSI-X vector; with MSI-X
//! off, INTx.
//!
//! The negotiation is [`DeviceState`]'s, shared with virtio-mmio; this maps the common
//! configuration structure onto it. Each field is taken only at its own offset and width
//! (64-bit queue addresses also as two 32-bit halves, as drivers write them); anything else
//! reads 0 and is ignored.
//!
//! Queue notifications: where the hypervisor can, each queue's notify address is bound to its
//! event ([`NotifyBinding`], a KVM ioeventfd), and re-bound when the guest moves the BAR;
//! otherwise the write reaches [`VirtioPciDevice::write_bar`].

use std::io;

use hypervisor::{Event, IrqLine, MsiLine};
use vm_memory::GuestMemoryMmap;

use super::state::{DeviceState, QueueField, RestoreError, INT_CONFIG, INT_VRING};
use super::{TransportSnapshot, VirtioDevice, VirtioTransport};
use crate::pci::config::{self, Identity, PciConfig, COMMAND_INTX_DISABLE};
use crate::pci::msix::{self, Msix};
use crate::pci::{Bar, BarKind, PciDevice};

/// Red Hat's virtio vendor ID; modern device IDs are 0x1040 + the virtio device type.
pub const VENDOR: u16 = 0x1af4;
pub const DEVICE_ID_BASE: u16 = 0x1040;
/// Modern-only devices have revision 1 or higher.
pub const REVISION: u8 = 1;

/// BAR 0 (a 64-bit BAR, so BAR 1 is its upper half) and its layout.
pub const BAR: u8 = 0;
pub const BAR_SIZE: u64 = 0x8000;
pub const COMMON_OFFSET: u64 = 0x0000;
pub const ISR_OFFSET: u64 = 0x1000;
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
const REGION_SIZE: u64 = 0x1000;
/// Queue `q` is notified at NOTIFY_OFFSET + q * NOTIFY_MULTIPLIER (queue_notify_off = q).
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// The size of the common configuration structure.
const COMMON_SIZE: u32 = 0x38;

/// "No vector" in config_msix_vector and queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;

// Capability types (cfg_type).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_VENDOR: u8 = 0x09;

// Common configuration fields.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// Binds a queue's notify address to its event in the hypervisor (KVM ioeventfd), so a
/// notification costs no exit to the VMM.
pub trait NotifyBinding: Send {
    fn bind(&self, evt: &Event, addr: u64) -> io::Result<()>;
    fn unbind(&self, evt: &Event, addr: u64) -> io::Result<()>;
}

/// The PCI class code of a virtio device type.
fn class_code(device_type: u32) -> u32 {
    match device_type {
        super::TYPE_NET => 0x02_00_00,
        super::TYPE_BLOCK => 0x01_80_00,
        super::TYPE_CONSOLE => 0x07_80_00,
        _ => 0xff_00_00,
    }
}

/// A virtio vendor capability pointing at `length` bytes at `offset` of BAR 0.
fn virtio_capability(cfg_type: u8, offset: u64, length: u32, extra: &[u8]) -> Vec<u8> {
    let mut c = vec![
        CAP_VENDOR,
        0,
        (16 + extra.len()) as u8,
        cfg_type,
        BAR,
        0,
        0,
        0,
    ];
    c.extend((offset as u32).to_le_bytes());
    c.extend(length.to_le_bytes());
    c.extend(extra);
    c
}

pub struct VirtioPciDevice {
    state: DeviceState,
    config: PciConfig,
    msix: Msix,
    /// Offset of the MSI-X message control register in configuration space.
    msix_control: usize,
    config_vector: u16,
    queue_vectors: Vec<u16>,
    device_features_sel: u32,
    driver_features_sel: u32,
    intx: Box<dyn IrqLine>,
    notify_binding: Option<Box<dyn NotifyBinding>>,
    /// A binding failed and was logged as a warning (later ones go to debug).
    binding_warned: bool,
    /// Where BAR 0 decodes exclusively now, as the bus last reported.
    bar_base: Option<u64>,
}

/// How a virtio-pci function is wired into the machine.
pub struct PciWiring {
    /// Where firmware put BAR 0.
    pub bar_base: u64,
    /// One per MSI-X vector: [`VirtioPciDevice::msix_vectors`] of them.
    pub msi: Vec<Box<dyn MsiLine>>,
    /// INTA and the interrupt line (GSI) it is routed to.
    pub intx: Box<dyn IrqLine>,
    pub intx_line: u8,
    pub notify_binding: Option<Box<dyn NotifyBinding>>,
}

impl VirtioPciDevice {
    /// MSI-X vectors a device needs: one per queue and one for configuration changes.
    pub fn msix_vectors(device: &dyn VirtioDevice) -> usize {
        device.queue_max_sizes().len() + 1
    }

    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        wiring: PciWiring,
    ) -> io::Result<Self> {
        let device_type = device.device_type();
        let state = DeviceState::new(device, mem)?;
        let queues = state.num_queues();
        let mut config = PciConfig::new(Identity {
            vendor: VENDOR,
            device: DEVICE_ID_BASE + device_type as u16,
            revision: REVISION,
            class: class_code(device_type),
            subsystem_vendor: VENDOR,
            subsystem: 0x1100,
        });
        config.add_bar(
            usize::from(BAR),
            BarKind::Memory64 {
                prefetchable: false,
            },
            BAR_SIZE,
        );
        config.set_bar_address(usize::from(BAR), wiring.bar_base);
        config.set_command(config::COMMAND_MEMORY | config::COMMAND_BUS_MASTER);
        config.set_interrupt(1, wiring.intx_line);
        let notify_len = queues as u32 * NOTIFY_MULTIPLIER;
        for cap in [
            virtio_capability(CAP_COMMON, COMMON_OFFSET, COMMON_SIZE, &[]),
            virtio_capability(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                notify_len,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            virtio_capability(CAP_ISR, ISR_OFFSET, 4, &[]),
            virtio_capability(CAP_DEVICE, DEVICE_CONFIG_OFFSET, REGION_SIZE as u32, &[]),
        ] {
            config.add_capability(&cap, &[]);
        }
        let msix = Msix::new(wiring.msi);
        let (cap, writable) = msix.capability(
            (BAR, MSIX_TABLE_OFFSET as u32),
            (BAR, MSIX_PBA_OFFSET as u32),
        );
        let msix_control = config.add_capability(&cap, &writable) + 2;
        Ok(VirtioPciDevice {
            state,
            config,
            msix,
            msix_control,
            config_vector: NO_VECTOR,
            queue_vectors: vec![NO_VECTOR; queues],
            device_features_sel: 0,
            driver_features_sel: 0,
            intx: wiring.intx,
            notify_binding: wiring.notify_binding,
            binding_warned: false,
            bar_base: None,
        })
    }

    /// Interrupts the driver for the `raised` status bits of queue `queue`: through the
    /// vectors the driver chose, or INTx while MSI-X is off.
    fn deliver(&mut self, raised: u32, queue: Option<usize>) {
        if raised == 0 {
            return;
        }
        if self.msix.enabled() {
            if let Some(&v) = queue.and_then(|q| self.queue_vectors.get(q)) {
                if raised & INT_VRING != 0 {
                    self.msix.trigger(v);
                }
            }
            if raised & INT_CONFIG != 0 {
                self.msix.trigger(self.config_vector);
            }
        } else if self.config.command() & COMMAND_INTX_DISABLE == 0 {
            if let Err(e) = self.intx.trigger() {
                log::warn!("virtio-pci INTx failed: {e}");
            }
        }
    }

    /// A vector the driver asked for, or NO_VECTOR if the table has no such entry.
    fn vector(&self, v: u64) -> u16 {
        if v < u64::from(self.msix.vectors()) {
            v as u16
        } else {
            NO_VECTOR
        }
    }

    fn reset_transport(&mut self) {
        self.config_vector = NO_VECTOR;
        self.queue_vectors.fill(NO_VECTOR);
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let s = &self.state;
        let sel = s.queue_select() as usize;
        let queue_exists = sel < s.num_queues();
        let half = |low: QueueField, high: QueueField| match (offset % 8, data.len()) {
            (0, 4) => u64::from(s.read_queue(low)),
            (4, 4) => u64::from(s.read_queue(high)),
            (0, 8) => u64::from(s.read_queue(low)) | u64::from(s.read_queue(high)) << 32,
            _ => 0,
        };
        let value: u64 = match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => u64::from(self.device_features_sel),
            (DEVICE_FEATURE, 4) => u64::from(s.device_features_word(self.device_features_sel)),
            (DRIVER_FEATURE_SELECT, 4) => u64::from(self.driver_features_sel),
            (DRIVER_FEATURE, 4) => u64::from(s.driver_features_word(self.driver_features_sel)),
            (CONFIG_MSIX_VECTOR, 2) => u64::from(self.config_vector),
            (NUM_QUEUES, 2) => s.num_queues() as u64,
            (DEVICE_STATUS, 1) => u64::from(s.status() as u8),
            (CONFIG_GENERATION, 1) => 0,
            (QUEUE_SELECT, 2) => u64::from(s.queue_select() as u16),
            (QUEUE_SIZE, 2) => u64::from(s.read_queue(QueueField::Size)),
            (QUEUE_MSIX_VECTOR, 2) => {
                u64::from(self.queue_vectors.get(sel).copied().unwrap_or(NO_VECTOR))
            }
            (QUEUE_ENABLE, 2) => u64::from(s.read_queue(QueueField::Ready)),
            (QUEUE_NOTIFY_OFF, 2) if queue_exists => sel as u64,
            (QUEUE_DESC..0x28, _) => half(QueueField::DescLow, QueueField::DescHigh),
            (QUEUE_DRIVER..0x30, _) => half(QueueField::DriverLow, QueueField::DriverHigh),
            (QUEUE_DEVICE..0x38, _) => half(QueueField::DeviceLow, QueueField::DeviceHigh),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(bytes);
        let v32 = value as u32;
        let halves = |low: QueueField, high: QueueField| match (offset % 8, data.len()) {
            (0, 4) => vec![(low, v32)],
            (4, 4) => vec![(high, v32)],
            (0, 8) => vec![(low, v32), (high, (value >> 32) as u32)],
            _ => Vec::new(),
        };
        let fields = match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => return self.device_features_sel = v32,
            (DRIVER_FEATURE_SELECT, 4) => return self.driver_features_sel = v32,
            (DRIVER_FEATURE, 4) => {
                return self
                    .state
                    .write_driver_features(self.driver_features_sel, v32)
            }
            (CONFIG_MSIX_VECTOR, 2) => return self.config_vector = self.vector(value),
            (DEVICE_STATUS, 1) => {
                if value == 0 {
                    self.reset_transport();
                }
                let raised = self.state.set_status(v32);
                return self.deliver(raised, None);
            }
            (QUEUE_SELECT, 2) => return self.state.select_queue(v32),
            (QUEUE_MSIX_VECTOR, 2) => {
                let v = self.vector(value);
                let sel = self.state.queue_select() as usize;
                if let Some(slot) = self.queue_vectors.get_mut(sel) {
                    *slot = v;
                }
                return;
            }
            (QUEUE_SIZE, 2) => vec![(QueueField::Size, v32)],
            // Only enabling: the driver may not write 0 (virtio 1.x 4.1.4.3.2).
            (QUEUE_ENABLE, 2) if value == 1 => vec![(QueueField::Ready, 1)],
            (QUEUE_DESC..0x28, _) => halves(QueueField::DescLow, QueueField::DescHigh),
            (QUEUE_DRIVER..0x30, _) => halves(QueueField::DriverLow, QueueField::DriverHigh),
            (QUEUE_DEVICE..0x38, _) => halves(QueueField::DeviceLow, QueueField::DeviceHigh),
            _ => return,
        };
        for (field, v) in fields {
            self.state.write_queue(field, v);
        }
    }

    fn notify_addresses(&self, base: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..self.state.num_queues()).map(move |q| {
            (
                q,
                base + NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_MULTIPLIER),
            )
        })
    }
}

/// Configuration space saved: the header and the capability list (the rest is read-only
/// zeros for an emulated function).
const SAVED_CONFIG: usize = 0x100;

impl VirtioTransport for VirtioPciDevice {
    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn process_queue(&mut self, index: usize) {
        let raised = self.state.process_queue(index);
        self.deliver(raised, Some(index));
    }

    fn save(&self) -> Option<TransportSnapshot> {
        Some(TransportSnapshot::Pci {
            device: self.state.save(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            config: self.config.bytes(0, SAVED_CONFIG).to_vec(),
            msix: self.msix.state(),
            config_vector: self.config_vector,
            queue_vectors: self.queue_vectors.clone(),
        })
    }

    /// Loads saved state into this freshly built function. The BAR address lands in
    /// configuration space only: the PCI root routes it (and tells [`PciDevice::bar_moved`],
    /// which re-binds the notify addresses) when it re-reads the BARs after the restore.
    fn restore(&mut self, saved: &TransportSnapshot) -> Result<(), RestoreError> {
        let device_type = saved.device().device_type;
        let bad = |detail: String| RestoreError::Device {
            device_type,
            detail,
        };
        let TransportSnapshot::Pci {
            device,
            device_features_sel,
            driver_features_sel,
            config,
            msix,
            config_vector,
            queue_vectors,
        } = saved
        else {
            return Err(bad("saved on another virtio transport".into()));
        };
        if config.len() != SAVED_CONFIG || queue_vectors.len() != self.queue_vectors.len() {
            return Err(bad(format!(
                "{} bytes of configuration space and {} queue vectors saved, the function has \
                 {SAVED_CONFIG} and {}",
                config.len(),
                queue_vectors.len(),
                self.queue_vectors.len()
            )));
        }
        self.msix.restore(msix).map_err(bad)?;
        self.state.restore(device)?;
        self.device_features_sel = *device_features_sel;
        self.driver_features_sel = *driver_features_sel;
        // Through the write masks: only what the driver could have written comes back.
        self.config.write(0, config);
        self.config_vector = self.vector(u64::from(*config_vector));
        for (slot, &v) in self.queue_vectors.iter_mut().zip(queue_vectors) {
            *slot = if u64::from(v) < u64::from(self.msix.vectors()) {
                v
            } else {
                NO_VECTOR
            };
        }
        let c = self.config.bytes(self.msix_control, 2);
        let control = u16::from_le_bytes([c[0], c[1]]);
        self.msix.set_control(control);
        self.msix.reprogram();
        Ok(())
    }
}

impl PciDevice for VirtioPciDevice {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let control = self.msix_control;
        if offset < control + 2 && control < offset + data.len() {
            let c = self.config.bytes(control, 2);
            self.msix.set_control(u16::from_le_bytes([c[0], c[1]]));
        }
    }

    fn decoded_bars(&self) -> Vec<Bar> {
        self.config.decoded_bars()
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // No register is wider than 8 bytes (an emulated SSE access could be).
        if bar != BAR || data.len() > 8 {
            return;
        }
        let at = offset % REGION_SIZE;
        match offset / REGION_SIZE * REGION_SIZE {
            COMMON_OFFSET => self.read_common(at, data),
            ISR_OFFSET if at == 0 => data[0] = self.state.take_interrupt_status() as u8,
            DEVICE_CONFIG_OFFSET => self.state.read_config(at, data),
            MSIX_TABLE_OFFSET => self.msix.read_table(at, data),
            MSIX_PBA_OFFSET => self.msix.read_pba(at, data),
            _ => {}
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != BAR || data.len() > 8 {
            return;
        }
        let at = offset % REGION_SIZE;
        match offset / REGION_SIZE * REGION_SIZE {
            COMMON_OFFSET => self.write_common(at, data),
            DEVICE_CONFIG_OFFSET => self.state.write_config(at, data),
            NOTIFY_OFFSET => self
                .state
                .notify((at / u64::from(NOTIFY_MULTIPLIER)) as u32),
            MSIX_TABLE_OFFSET => self.msix.write_table(at, data),
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: u8, from: Option<u64>, to: Option<u64>) {
        if bar != BAR {
            return;
        }
        self.bar_base = to;
        let Some(binding) = &self.notify_binding else {
            return;
        };
        let events = self.state.notify_events();
        let mut failed = None;
        if let Some(old) = from {
            for (q, addr) in self.notify_addresses(old) {
                if let Err(e) = binding.unbind(&events[q], addr) {
                    failed = Some(format!("cannot unbind the notify address {addr:#x}: {e}"));
                }
            }
        }
        if let Some(new) = to {
            for (q, addr) in self.notify_addresses(new) {
                // The write still reaches write_bar then, only more slowly.
                if let Err(e) = binding.bind(&events[q], addr) {
                    failed = Some(format!("cannot bind the notify address {addr:#x}: {e}"));
                }
            }
        }
        // Once per device at warning level: the guest decides how often BARs move.
        if let Some(why) = failed {
            if std::mem::replace(&mut self.binding_warned, true) {
                log::debug!("virtio-pci: {why}");
            } else {
                log::warn!("virtio-pci: {why}");
            }
        }
    }
}

// The MSI-X table and PBA fit their regions for any device with up to 255 queues.
const _: () = assert!(256 * msix::ENTRY_SIZE <= REGION_SIZE);
const _: () = assert!(MSIX_PBA_OFFSET + REGION_SIZE <= BAR_SIZE);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{Pass, VIRTIO_F_VERSION_1};
    use hypervisor::MsiMessage;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;

    /// Counts triggers: index 0 is INTx, 1.. the MSI-X vectors.
    #[derive(Clone, Default)]
    struct Counts(Arc<Mutex<Vec<usize>>>);

    struct Line(Counts, usize);
    impl IrqLine for Line {
        fn trigger(&self) -> io::Result<()> {
            self.0 .0.lock().unwrap()[self.1] += 1;
            Ok(())
        }
    }
    impl MsiLine for Line {
        fn set_message(&self, _: Option<MsiMessage>) -> io::Result<()> {
            Ok(())
        }
        fn trigger(&self) -> io::Result<()> {
            IrqLine::trigger(self)
        }
    }

    /// One queue; every pass uses a buffer.
    struct Used(Arc<AtomicUsize>);
    impl VirtioDevice for Used {
        fn device_type(&self) -> u32 {
            super::super::TYPE_BLOCK
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[7, 8], offset, data);
        }
        fn process_queue(&mut self, _: usize, _: &mut Queue, _: &GuestMemoryMmap) -> Pass {
            self.0.fetch_add(1, Ordering::SeqCst);
            Pass::used(true)
        }
    }

    fn device() -> (VirtioPciDevice, Counts, Arc<AtomicUsize>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let counts = Counts(Arc::new(Mutex::new(vec![0; 3])));
        let processed = Arc::new(AtomicUsize::new(0));
        let wiring = PciWiring {
            bar_base: 0xc000_0000,
            msi: (1..3)
                .map(|i| Box::new(Line(counts.clone(), i)) as Box<dyn MsiLine>)
                .collect(),
            intx: Box::new(Line(counts.clone(), 0)),
            intx_line: 21,
            notify_binding: None,
        };
        let d = VirtioPciDevice::new(Box::new(Used(processed.clone())), mem, wiring).unwrap();
        (d, counts, processed)
    }

    fn w(d: &mut VirtioPciDevice, offset: u64, value: u64, len: usize) {
        d.write_bar(BAR, offset, &value.to_le_bytes()[..len]);
    }

    fn r(d: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        d.read_bar(BAR, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// Negotiates VERSION_1 and sets queue 0 up with its rings at 0x1000.
    fn bring_up(d: &mut VirtioPciDevice) {
        w(d, DEVICE_STATUS, 3, 1);
        w(d, DRIVER_FEATURE_SELECT, 1, 4);
        w(d, DRIVER_FEATURE, 1 << (VIRTIO_F_VERSION_1 - 32), 4);
        w(d, DEVICE_STATUS, 11, 1);
        w(d, QUEUE_SELECT, 0, 2);
        w(d, QUEUE_SIZE, 8, 2);
        w(d, QUEUE_DESC, 0x1000, 4);
        w(d, QUEUE_DESC + 4, 0, 4);
        w(d, QUEUE_DRIVER, 0x2000, 8);
        w(d, QUEUE_DEVICE, 0x3000, 8);
        w(d, QUEUE_ENABLE, 1, 2);
        w(d, DEVICE_STATUS, 15, 1);
    }

    #[test]
    fn common_configuration_negotiates_and_notify_reaches_the_queue() {
        let (mut d, _, processed) = device();
        assert_eq!(r(&mut d, NUM_QUEUES, 2), 1);
        assert_eq!(r(&mut d, QUEUE_SIZE, 2), 8, "the maximum before set-up");
        // Fields answer only at their own width.
        assert_eq!(r(&mut d, NUM_QUEUES, 4), 0);
        w(&mut d, DEVICE_FEATURE_SELECT, 1, 4);
        assert_eq!(r(&mut d, DEVICE_FEATURE, 4), 1, "VERSION_1 is bit 32");
        bring_up(&mut d);
        assert_eq!(r(&mut d, DEVICE_STATUS, 1), 15);
        assert_eq!(r(&mut d, QUEUE_DRIVER, 8), 0x2000);
        assert_eq!(r(&mut d, QUEUE_DESC + 4, 4), 0);
        assert_eq!(r(&mut d, QUEUE_NOTIFY_OFF, 2), 0);
        assert_eq!(r(&mut d, DEVICE_CONFIG_OFFSET + 1, 1), 8);
        let _ = d.notify_events()[0].drain();
        w(&mut d, NOTIFY_OFFSET, 0, 2);
        assert!(d.notify_events()[0].drain().unwrap());
        d.process_queue(0);
        assert_eq!(processed.load(Ordering::SeqCst), 1);
        // Reset: status 0 clears the vectors too.
        w(&mut d, CONFIG_MSIX_VECTOR, 0, 2);
        w(&mut d, DEVICE_STATUS, 0, 1);
        assert_eq!(r(&mut d, DEVICE_STATUS, 1), 0);
        assert_eq!(r(&mut d, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    }

    #[test]
    fn interrupts_go_through_msix_when_enabled_else_intx_and_the_isr() {
        let (mut d, counts, _) = device();
        bring_up(&mut d);
        // INTx while MSI-X is off; the ISR says why and reading clears it.
        d.process_queue(0);
        assert_eq!(*counts.0.lock().unwrap(), [1, 0, 0]);
        assert_eq!(r(&mut d, ISR_OFFSET, 1), 1);
        assert_eq!(r(&mut d, ISR_OFFSET, 1), 0);
        // Vectors beyond the table read back NO_VECTOR.
        w(&mut d, QUEUE_MSIX_VECTOR, 7, 2);
        assert_eq!(r(&mut d, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        w(&mut d, QUEUE_MSIX_VECTOR, 1, 2);
        assert_eq!(r(&mut d, QUEUE_MSIX_VECTOR, 2), 1);
        // Program and unmask vector 1, enable MSI-X in configuration space.
        w(&mut d, MSIX_TABLE_OFFSET + 16, 0xfee0_0000, 4);
        w(&mut d, MSIX_TABLE_OFFSET + 16 + 8, 0x41, 4);
        w(&mut d, MSIX_TABLE_OFFSET + 16 + 12, 0, 4);
        let control = d.msix_control;
        d.write_config(control, &0x8000u16.to_le_bytes());
        d.process_queue(0);
        assert_eq!(*counts.0.lock().unwrap(), [1, 0, 1]);
        // Over-long accesses are ignored, not a panic.
        d.read_bar(BAR, 0, &mut [0u8; 16]);
        d.write_bar(BAR, 0, &[0u8; 16]);
    }
}
