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
        self.entries.insert(at, Entry { base, len, device });
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` in it.
    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let i = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        let e = &self.entries[i];
        let offset = addr - e.base;
        // The whole access must lie inside the device's range.
        (offset.checked_add(size as u64)? <= e.len).then_some((e, offset))
    }

    /// Routes a read; returns false (and leaves `data` as is) if no device covers it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; returns false if no device covers it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.device).write(offset, data);
                true
            }
            None => false,
        }
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
    }
}
