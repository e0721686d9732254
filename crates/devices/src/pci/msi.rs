//! MSI (PCI Local Bus 3.0, section 6.8.1): the capability with a 64-bit message address and
//! per-vector masking, and delivering its vectors. The virtio-pci transport uses MSI-X
//! ([`super::msix`]); MSI is for functions that have only it (passed-through devices).
//!
//! The registers live in the function's configuration space, where the driver writes them;
//! after each write there the function hands the capability's bytes to [`Msi::update`], which
//! takes the new state and delivers what unmasking released. Up to 32 vectors; vector `i` of
//! an `n`-vector enable sends the programmed data with its low log2(n) bits replaced by `i`.

use hypervisor::{MsiLine, MsiMessage};

pub const CAPABILITY_ID: u8 = 0x05;
/// ID, next, message control, address (low, high), data, reserved, mask bits, pending bits.
pub const CAPABILITY_SIZE: usize = 24;
const CONTROL: usize = 2;
const ADDRESS: usize = 4;
const DATA: usize = 12;
const MASK: usize = 16;
/// The pending bits, read-only to the driver: the function writes them back into its
/// configuration space from [`Msi::pending`].
pub const PENDING: usize = 20;

const CONTROL_ENABLE: u16 = 1;
const CONTROL_64BIT: u16 = 1 << 7;
const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;

pub struct Msi {
    lines: Vec<Box<dyn MsiLine>>,
    enabled: bool,
    /// Vectors the driver enabled (a power of two, at most `lines.len()`).
    enabled_vectors: usize,
    address: u64,
    data: u16,
    mask: u32,
    pending: u32,
    /// Which lines got the current message.
    programmed: u32,
}

impl Msi {
    /// A capability for `lines.len()` vectors (a power of two from 1 to 32).
    ///
    /// # Panics
    /// On another count: a bug in the VMM, not guest input.
    pub fn new(lines: Vec<Box<dyn MsiLine>>) -> Self {
        assert!(lines.len().is_power_of_two() && lines.len() <= 32);
        Msi {
            lines,
            enabled: false,
            enabled_vectors: 1,
            address: 0,
            data: 0,
            mask: 0,
            pending: 0,
            programmed: 0,
        }
    }

    /// The capability's initial bytes and the bits the driver may write: enable and
    /// multiple-message enable, address, data, mask bits.
    pub fn capability(&self) -> ([u8; CAPABILITY_SIZE], [u8; CAPABILITY_SIZE]) {
        capability(self.lines.len())
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Vectors offered.
    pub fn vectors(&self) -> usize {
        self.lines.len()
    }

    /// Vectors the driver enabled (meaningful while [`Msi::enabled`]).
    pub fn enabled_vectors(&self) -> usize {
        self.enabled_vectors
    }

    /// Whether `vector` would be delivered now (MSI enabled, the vector enabled and not
    /// masked). If so, its line gets the current message first, so that something outside
    /// the VMM may raise the line directly ([`MsiLine::irqfd`]: a passed-through device).
    pub fn program(&mut self, vector: usize) -> bool {
        if vector >= self.lines.len() || !self.deliverable(vector) {
            return false;
        }
        let bit = 1 << vector;
        if self.programmed & bit == 0 {
            if let Err(e) = self.lines[vector].set_message(Some(self.message(vector))) {
                log::warn!("MSI vector {vector}: cannot program the message: {e}");
                return false;
            }
            self.programmed |= bit;
        }
        true
    }

    /// The eventfd behind `vector`'s line, if the hypervisor gave it one.
    pub fn irqfd(&self, vector: usize) -> Option<std::os::fd::RawFd> {
        self.lines.get(vector)?.irqfd()
    }

    fn message(&self, v: usize) -> MsiMessage {
        let low = self.enabled_vectors as u16 - 1;
        MsiMessage {
            address: self.address,
            data: u32::from(self.data & !low | v as u16),
        }
    }

    /// The pending bits, for the function to show at [`PENDING`].
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// Takes the capability's registers as the driver left them (`cap` is its
    /// [`CAPABILITY_SIZE`] bytes), and delivers pending vectors it unmasked.
    pub fn update(&mut self, cap: &[u8]) {
        let Some(cap) = cap.get(..CAPABILITY_SIZE) else {
            return;
        };
        let word = |at: usize| u32::from_le_bytes([cap[at], cap[at + 1], cap[at + 2], cap[at + 3]]);
        let control = u16::from_le_bytes([cap[CONTROL], cap[CONTROL + 1]]);
        // A driver asking for more vectors than offered gets what there is.
        let asked = 1usize << ((control >> 4) & 7).min(5);
        let address = u64::from(word(ADDRESS)) | u64::from(word(ADDRESS + 4)) << 32;
        let data = u16::from_le_bytes([cap[DATA], cap[DATA + 1]]);
        let enabled_vectors = asked.min(self.lines.len());
        if address != self.address || data != self.data || enabled_vectors != self.enabled_vectors {
            self.programmed = 0;
        }
        self.enabled = control & CONTROL_ENABLE != 0;
        self.enabled_vectors = enabled_vectors;
        self.address = address;
        self.data = data;
        self.mask = word(MASK);
        for v in 0..self.lines.len() {
            let bit = 1 << v;
            if self.pending & bit != 0 && self.deliverable(v) {
                self.pending &= !bit;
                self.send(v);
            }
        }
    }

    fn deliverable(&self, v: usize) -> bool {
        self.enabled && v < self.enabled_vectors && self.mask & (1 << v) == 0
    }

    /// Raises `vector`: delivered, or pending while masked. Nothing while MSI is disabled or
    /// for a vector the driver did not enable.
    pub fn trigger(&mut self, vector: usize) {
        if !self.enabled || vector >= self.enabled_vectors {
            return;
        }
        if self.mask & (1 << vector) != 0 {
            self.pending |= 1 << vector;
            return;
        }
        self.send(vector);
    }

    fn send(&mut self, v: usize) {
        let bit = 1 << v;
        if self.programmed & bit == 0 {
            if let Err(e) = self.lines[v].set_message(Some(self.message(v))) {
                log::warn!("MSI vector {v}: cannot program the message: {e}");
                return;
            }
            self.programmed |= bit;
        }
        if let Err(e) = self.lines[v].trigger() {
            log::warn!("MSI vector {v}: {e}");
        }
    }
}

/// The capability's initial bytes for `vectors` vectors (a power of two up to 32), and the
/// bits the driver may write: enable and multiple-message enable, address, data, mask bits.
/// 64-bit addresses and per-vector masking, whatever a passed-through device's own has.
pub fn capability(vectors: usize) -> ([u8; CAPABILITY_SIZE], [u8; CAPABILITY_SIZE]) {
    let vectors = vectors.clamp(1, 32);
    let mut c = [0u8; CAPABILITY_SIZE];
    c[0] = CAPABILITY_ID;
    let capable = vectors.trailing_zeros() as u16;
    let control = capable << 1 | CONTROL_64BIT | CONTROL_PER_VECTOR_MASK;
    c[CONTROL..CONTROL + 2].copy_from_slice(&control.to_le_bytes());
    let mut w = [0u8; CAPABILITY_SIZE];
    w[CONTROL] = 0x71; // enable, multiple message enable (6:4)
    w[ADDRESS..ADDRESS + 4].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
    w[ADDRESS + 4..ADDRESS + 8].fill(0xff);
    w[DATA..DATA + 2].fill(0xff);
    let mask = (1u64 << vectors) - 1;
    w[MASK..MASK + 4].copy_from_slice(&(mask as u32).to_le_bytes());
    (c, w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{Identity, PciConfig};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl MsiLine for Log {
        fn set_message(&self, m: Option<MsiMessage>) -> std::io::Result<()> {
            let m = m.unwrap_or_default();
            let s = format!("set {:#x} {:#x}", m.address, m.data);
            self.0.lock().unwrap().push(s);
            Ok(())
        }
        fn trigger(&self) -> std::io::Result<()> {
            self.0.lock().unwrap().push("fire".into());
            Ok(())
        }
    }

    /// A function's configuration space with the capability, as a driver reaches it.
    fn function(n: usize) -> (PciConfig, usize, Msi, Vec<Log>) {
        let logs: Vec<Log> = (0..n).map(|_| Log::default()).collect();
        let msi = Msi::new(
            logs.iter()
                .map(|l| Box::new(l.clone()) as Box<dyn MsiLine>)
                .collect(),
        );
        let mut config = PciConfig::new(Identity {
            vendor: 1,
            device: 2,
            revision: 0,
            class: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        });
        let (c, w) = msi.capability();
        let at = config.add_capability(&c, &w);
        (config, at, msi, logs)
    }

    fn write(config: &mut PciConfig, msi: &mut Msi, at: usize, offset: usize, v: &[u8]) {
        config.write(at + offset, v);
        msi.update(config.bytes(at, CAPABILITY_SIZE));
    }

    fn events(l: &Log) -> Vec<String> {
        std::mem::take(&mut *l.0.lock().unwrap())
    }

    #[test]
    fn multiple_messages_masking_and_pending() {
        let (mut config, at, mut msi, logs) = function(4);
        // Control: 4 vectors capable (2 << 1), 64-bit, per-vector masking.
        assert_eq!(config.bytes(at + CONTROL, 2), [0x84, 0x01]);
        msi.trigger(0);
        assert!(events(&logs[0]).is_empty(), "disabled");
        write(
            &mut config,
            &mut msi,
            at,
            ADDRESS,
            &0xfee0_1003u32.to_le_bytes(),
        );
        write(&mut config, &mut msi, at, DATA, &0x0043u16.to_le_bytes());
        write(&mut config, &mut msi, at, MASK, &0b10u32.to_le_bytes());
        // Enable with 4 vectors (2 in bits 6:4).
        write(&mut config, &mut msi, at, CONTROL, &[0x21]);
        msi.trigger(2);
        assert_eq!(
            events(&logs[2]),
            ["set 0xfee01000 0x42", "fire"],
            "low bits = vector"
        );
        msi.trigger(1);
        assert_eq!(msi.pending(), 0b10);
        assert!(events(&logs[1]).is_empty());
        write(&mut config, &mut msi, at, MASK, &0u32.to_le_bytes());
        assert_eq!(events(&logs[1]), ["set 0xfee01000 0x41", "fire"]);
        assert_eq!(msi.pending(), 0);
        // The pending register and the capability bits are read-only to the driver.
        write(&mut config, &mut msi, at, PENDING, &[0xff; 4]);
        assert_eq!(config.bytes(at + PENDING, 4), [0; 4]);
        write(&mut config, &mut msi, at, CONTROL + 1, &[0]);
        assert_eq!(config.bytes(at + CONTROL + 1, 1), [0x01]);
    }

    #[test]
    fn vectors_beyond_what_was_enabled_or_offered_do_nothing() {
        let (mut config, at, mut msi, logs) = function(2);
        write(&mut config, &mut msi, at, CONTROL, &[0x71]); // enable, asks for 128
        msi.trigger(1);
        assert_eq!(
            events(&logs[1]).len(),
            2,
            "two vectors offered, two enabled"
        );
        msi.trigger(2);
        msi.trigger(usize::MAX);
        msi.update(&[0; 3]);
        write(&mut config, &mut msi, at, CONTROL, &[0x01]); // one vector
        msi.trigger(1);
        assert!(events(&logs[1]).is_empty());
    }
}
