//! A bus maps address ranges (ports or guest-physical addresses) to devices.
//!
//! Built once before the vCPUs start and then only read, so lookups take no lock; each device
//! sits behind its own mutex.

use std::sync::{Arc, Mutex};

use crate::lock;

/// A device on a bus. `offset` is relative to the start of the device's range; `data` is the
/// access (1, 2, 4 or 8 bytes, little-endian).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
    /// A short name for statistics and exit traces ("serial", "virtio-mmio-blk", ...).
    fn name(&self) -> String {
        "device".into()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps {other_base:#x}+{other_len:#x}")]
    Overlap {
        base: u64,
        len: u64,
        other_base: u64,
        other_len: u64,
    },
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
}

struct Entry {
    base: u64,
    len: u64,
    /// The device's own offset at `base` (nonzero for a device placed in pieces).
    offset: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges to devices, sorted by base.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        self.insert_part(device, base, len, 0)
    }

    /// Adds the part of `device` from its offset `offset` on at `[base, base + len)`: for a
    /// device whose registers are not contiguous on the bus (the i8042 at ports 0x60 and
    /// 0x64, with port B of the PIT between them).
    pub fn insert_part(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
        offset: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap {
                base,
                len,
                other_base: e.base,
                other_len: e.len,
            });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(
            at,
            Entry {
                base,
                len,
                offset,
                device,
            },
        );
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` in it.
    fn find(&self, addr: u64, size: usize) -> Option<(usize, &Entry, u64)> {
        let i = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        let e = &self.entries[i];
        let offset = addr - e.base;
        // The whole access must lie inside the device's range.
        (offset.checked_add(size as u64)? <= e.len).then_some((i, e, e.offset.checked_add(offset)?))
    }

    /// Routes a read; returns false (and leaves `data` as is) if no device covers it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.read_at(addr, data).is_some()
    }

    /// Routes a write; returns false if no device covers it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.write_at(addr, data).is_some()
    }

    /// Routes a read; returns the index of the device that answered (its place in
    /// [`Bus::devices`]), or `None` (and leaves `data` as is) if no device covers it.
    pub fn read_at(&self, addr: u64, data: &mut [u8]) -> Option<usize> {
        let (i, e, offset) = self.find(addr, data.len())?;
        lock(&e.device).read(offset, data);
        Some(i)
    }

    /// Routes a write; returns the index of the device that took it, if one did.
    pub fn write_at(&self, addr: u64, data: &[u8]) -> Option<usize> {
        let (i, e, offset) = self.find(addr, data.len())?;
        lock(&e.device).write(offset, data);
        Some(i)
    }

    /// How many devices sit on the bus.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (base, length, name) of every device, in address order: index `i` is the device
    /// [`Bus::read_at`] and [`Bus::write_at`] report as `i`. Locks each device once.
    pub fn devices(&self) -> Vec<(u64, u64, String)> {
        self.entries
            .iter()
            .map(|e| (e.base, e.len, lock(&e.device).name()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u64);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill((self.0 + offset) as u8);
        }
        fn write(&mut self, offset: u64, _: &[u8]) {
            self.0 = offset;
        }
    }

    fn dev(v: u64) -> Arc<Mutex<dyn BusDevice>> {
        Arc::new(Mutex::new(Echo(v)))
    }

    #[test]
    fn routes_by_range_and_rejects_overlaps() {
        let mut bus = Bus::new();
        bus.insert(dev(0x10), 0x100, 0x10).unwrap();
        bus.insert(dev(0x20), 0x200, 0x10).unwrap();
        assert!(bus.insert(dev(0), 0x108, 0x10).is_err());
        assert!(bus.insert(dev(0), 0x0f8, 0x10).is_err());
        assert!(bus.insert(dev(0), u64::MAX, 2).is_err());
        assert!(bus.insert(dev(0), 5, 0).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x101, &mut b));
        assert_eq!(b[0], 0x11);
        assert!(bus.read(0x20f, &mut b));
        assert_eq!(b[0], 0x2f);
        assert!(!bus.read(0x210, &mut b));
        assert!(!bus.read(0xff, &mut b));
        // An access straddling the end of a device is not routed.
        assert!(!bus.read(0x10e, &mut [0u8; 4]));
        assert!(bus.write(0x100, &[1]));
        assert_eq!(bus.write_at(0x200, &[1]), Some(1));
        assert_eq!(bus.read_at(0x100, &mut b), Some(0));
        assert_eq!(bus.devices()[1], (0x200, 0x10, "device".to_string()));
    }

    #[test]
    fn a_device_in_pieces_sees_its_own_offsets() {
        let mut bus = Bus::new();
        let d = dev(0);
        bus.insert_part(d.clone(), 0x60, 1, 0).unwrap();
        bus.insert_part(d, 0x64, 1, 4).unwrap();
        bus.insert(dev(0x80), 0x61, 1).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(bus.read_at(0x64, &mut b), Some(2));
        assert_eq!(b[0], 4);
        assert_eq!(bus.read_at(0x60, &mut b), Some(0));
        assert_eq!(b[0], 0);
        assert_eq!(bus.read_at(0x61, &mut b), Some(1));
        assert_eq!(b[0], 0x80);
        assert!(!bus.read(0x62, &mut b));
    }
}
