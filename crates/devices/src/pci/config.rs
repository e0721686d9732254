//! A type 0 configuration space (PCI Local Bus 3.0, chapter 6) for emulated functions: 4 KiB
//! of registers with a write mask per byte, the six BAR registers, and the capability list.
//!
//! BARs need no sizing state: a BAR register's writable bits are the address bits above its
//! size, so the all-ones write reads back as `!(size - 1)` plus the type bits, exactly as on
//! hardware.

use super::{Bar, BarKind};

/// Bytes of configuration space of a PCI Express function (ECAM gives all of it; ports
/// 0xcf8/0xcfc reach the first 256).
pub const CONFIG_SPACE_SIZE: usize = 4096;

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION: usize = 0x08;
pub const CLASS_CODE: usize = 0x09;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAPABILITIES: u16 = 1 << 4;

/// Capabilities start after the standard header, dword aligned.
const FIRST_CAPABILITY: usize = 0x40;
/// The capability list lives in the first 256 bytes, where every access method reaches.
const CAPABILITIES_END: usize = 0x100;

/// Who a function is: the identification registers.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Base class, subclass, programming interface (e.g. 0x06_00_00, a host bridge).
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

pub struct PciConfig {
    bytes: Box<[u8; CONFIG_SPACE_SIZE]>,
    writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<Bar>; 6],
    next_capability: usize,
    last_capability: Option<usize>,
}

impl PciConfig {
    pub fn new(id: Identity) -> Self {
        let mut c = PciConfig {
            bytes: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; 6],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
        };
        c.set16(VENDOR_ID, id.vendor);
        c.set16(DEVICE_ID, id.device);
        c.bytes[REVISION] = id.revision;
        c.bytes[CLASS_CODE..CLASS_CODE + 3].copy_from_slice(&id.class.to_le_bytes()[..3]);
        c.set16(SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        c.set16(SUBSYSTEM_ID, id.subsystem);
        let command = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&command.to_le_bytes());
        // Cache line size and latency timer: kept, unused.
        c.writable[0x0c] = 0xff;
        c.writable[0x0d] = 0xff;
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn get32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes[at..at + 4].try_into().unwrap_or_default())
    }

    fn set32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[COMMAND], self.bytes[COMMAND + 1]])
    }

    /// Sets the command register (as firmware does before the OS runs).
    pub fn set_command(&mut self, command: u16) {
        self.set16(COMMAND, command);
    }

    /// The function signals INTx `pin` (1 = INTA) and firmware routed it to `line`.
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.bytes[INTERRUPT_PIN] = pin;
        self.bytes[INTERRUPT_LINE] = line;
    }

    /// Declares BAR `index` (a 64-bit BAR also takes `index + 1`). `size` is a power of two,
    /// at least 16 bytes for memory and 4 for I/O.
    ///
    /// # Panics
    /// On a BAR the VMM's own code declares wrongly (bad index or size); never on guest input.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) {
        let is64 = matches!(kind, BarKind::Memory64 { .. });
        assert!(index + usize::from(is64) < 6 && self.bars[index].is_none());
        assert!(size.is_power_of_two() && size >= if kind == BarKind::Io { 4 } else { 16 });
        let mask = !(size - 1);
        let at = BAR0 + 4 * index;
        let (flags, low_mask) = match kind {
            BarKind::Io => (0b01, mask as u32 & !0b11),
            BarKind::Memory32 { prefetchable } => {
                (u32::from(prefetchable) << 3, mask as u32 & !0xf)
            }
            BarKind::Memory64 { prefetchable } => {
                (0b100 | u32::from(prefetchable) << 3, mask as u32 & !0xf)
            }
        };
        self.set32(at, flags);
        self.writable[at..at + 4].copy_from_slice(&low_mask.to_le_bytes());
        if is64 {
            let high_mask = (mask >> 32) as u32;
            self.writable[at + 4..at + 8].copy_from_slice(&high_mask.to_le_bytes());
        }
        self.bars[index] = Some(Bar {
            index: index as u8,
            kind,
            base: 0,
            size,
        });
    }

    /// Where BAR `index` is programmed (type bits stripped); 0 if it is not declared.
    pub fn bar_address(&self, index: usize) -> u64 {
        let Some(Some(bar)) = self.bars.get(index) else {
            return 0;
        };
        let at = BAR0 + 4 * index;
        let low = self.get32(at);
        match bar.kind {
            BarKind::Io => u64::from(low & !0b11),
            BarKind::Memory32 { .. } => u64::from(low & !0xf),
            BarKind::Memory64 { .. } => u64::from(low & !0xf) | u64::from(self.get32(at + 4)) << 32,
        }
    }

    /// Programs BAR `index` to `addr` (the VMM's allocation at creation).
    pub fn set_bar_address(&mut self, index: usize, addr: u64) {
        let Some(&Some(bar)) = self.bars.get(index) else {
            return;
        };
        let at = BAR0 + 4 * index;
        let flags = self.get32(at) & if bar.kind == BarKind::Io { 0b11 } else { 0xf };
        self.set32(at, (addr & !(bar.size - 1)) as u32 | flags);
        if matches!(bar.kind, BarKind::Memory64 { .. }) {
            self.set32(at + 4, (addr >> 32) as u32);
        }
    }

    /// The declared BARs with their programmed addresses, whether or not they decode.
    pub fn bars(&self) -> Vec<Bar> {
        self.bars
            .iter()
            .flatten()
            .map(|b| Bar {
                base: self.bar_address(usize::from(b.index)),
                ..*b
            })
            .collect()
    }

    /// The BARs the function responds at now: its memory (I/O) BARs while memory (I/O)
    /// space is enabled in the command register.
    pub fn decoded_bars(&self) -> Vec<Bar> {
        let command = self.command();
        self.bars()
            .into_iter()
            .filter(|b| match b.kind {
                BarKind::Io => command & COMMAND_IO != 0,
                _ => command & COMMAND_MEMORY != 0,
            })
            .collect()
    }

    /// Appends a capability: `body` starts with its ID and a placeholder for the next
    /// pointer; `writable` (same length, or shorter) gives the bits the driver may change.
    /// Returns its offset in configuration space.
    ///
    /// # Panics
    /// If the VMM's capabilities overflow the first 256 bytes (a bug, not guest input).
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> usize {
        let at = self.next_capability;
        assert!(body.len() >= 2 && at + body.len() <= CAPABILITIES_END);
        self.bytes[at..at + body.len()].copy_from_slice(body);
        self.bytes[at + 1] = 0;
        self.writable[at..at + writable.len()].copy_from_slice(writable);
        match self.last_capability {
            Some(prev) => self.bytes[prev + 1] = at as u8,
            None => {
                self.bytes[CAPABILITIES] = at as u8;
                let status = STATUS_CAPABILITIES;
                self.set16(STATUS, status);
            }
        }
        self.last_capability = Some(at);
        self.next_capability = (at + body.len()).next_multiple_of(4);
        at
    }

    /// Reads `data.len()` bytes at `offset`; the caller checked it lies inside.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        match self.bytes.get(offset..offset + data.len()) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0xff),
        }
    }

    /// Writes the bits the function lets the driver change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let Some(end) = offset
            .checked_add(data.len())
            .filter(|&e| e <= CONFIG_SPACE_SIZE)
        else {
            return;
        };
        for (i, &v) in (offset..end).zip(data) {
            let mask = self.writable[i];
            self.bytes[i] = (self.bytes[i] & !mask) | (v & mask);
        }
    }

    /// Sets registers outright, with the bits the driver may change: a passed-through
    /// function copies the device's own registers (capabilities at the device's offsets)
    /// this way. Out-of-range parts are ignored.
    pub fn set_raw(&mut self, offset: usize, bytes: &[u8], writable: &[u8]) {
        let Some(end) = offset
            .checked_add(bytes.len())
            .filter(|&e| e <= CONFIG_SPACE_SIZE)
        else {
            return;
        };
        self.bytes[offset..end].copy_from_slice(bytes);
        let w = writable.len().min(bytes.len());
        self.writable[offset..offset + w].copy_from_slice(&writable[..w]);
    }

    /// The raw bytes, for a device's own capability registers.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        self.bytes.get(offset..offset + len).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PciConfig {
        PciConfig::new(Identity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x01_80_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        })
    }

    fn r32(c: &PciConfig, at: usize) -> u32 {
        let mut b = [0; 4];
        c.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(c: &mut PciConfig, at: usize, v: u32) {
        c.write(at, &v.to_le_bytes());
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = config();
        assert_eq!(r32(&c, 0), 0x1042_1af4);
        assert_eq!(r32(&c, 8), 0x0180_0001);
        w32(&mut c, 0, 0);
        w32(&mut c, 8, 0);
        assert_eq!(r32(&c, 0), 0x1042_1af4);
        assert_eq!(r32(&c, 8), 0x0180_0001);
    }

    #[test]
    fn bars_size_by_all_ones_and_move() {
        let mut c = config();
        c.add_bar(
            0,
            BarKind::Memory64 {
                prefetchable: false,
            },
            0x8000,
        );
        c.add_bar(2, BarKind::Memory32 { prefetchable: true }, 0x1000);
        c.add_bar(3, BarKind::Io, 0x20);
        c.set_bar_address(0, 0xc000_0000);
        assert_eq!(r32(&c, BAR0), 0xc000_0004);
        for at in [BAR0, BAR0 + 4, BAR0 + 8, BAR0 + 12, BAR0 + 16] {
            w32(&mut c, at, !0);
        }
        assert_eq!(r32(&c, BAR0), 0xffff_8004);
        assert_eq!(r32(&c, BAR0 + 4), 0xffff_ffff);
        assert_eq!(r32(&c, BAR0 + 8), 0xffff_f008);
        assert_eq!(r32(&c, BAR0 + 12), 0xffff_ffe1);
        assert_eq!(r32(&c, BAR0 + 16), 0, "undeclared BARs read 0");
        w32(&mut c, BAR0, 0xc010_0000);
        w32(&mut c, BAR0 + 4, 0);
        assert_eq!(c.bar_address(0), 0xc010_0000);
        // Low address bits inside the BAR cannot be set.
        w32(&mut c, BAR0 + 8, 0xc000_0fff);
        assert_eq!(c.bar_address(2), 0xc000_0000);
    }

    #[test]
    fn decoding_follows_the_command_register() {
        let mut c = config();
        c.add_bar(
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x1000,
        );
        c.add_bar(1, BarKind::Io, 0x20);
        assert!(c.decoded_bars().is_empty());
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        let d = c.decoded_bars();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].index, 0);
        c.write(COMMAND, &(COMMAND_MEMORY | COMMAND_IO).to_le_bytes());
        assert_eq!(c.decoded_bars().len(), 2);
    }

    #[test]
    fn capabilities_chain() {
        let mut c = config();
        let a = c.add_capability(&[0x09, 0xff, 16, 1], &[]);
        let b = c.add_capability(&[0x11, 0xff, 0, 0], &[0, 0, 0, 0xc0]);
        assert_eq!(c.bytes(CAPABILITIES, 1)[0] as usize, a);
        assert_eq!(c.bytes(a + 1, 1)[0] as usize, b);
        assert_eq!(c.bytes(b + 1, 1)[0], 0);
        assert_ne!(r32(&c, COMMAND) >> 16 & u32::from(STATUS_CAPABILITIES), 0);
        c.write(b + 3, &[0xff]);
        assert_eq!(c.bytes(b + 3, 1)[0], 0xc0);
        c.write(b, &[0]);
        assert_eq!(c.bytes(b, 1)[0], 0x11);
    }
}
