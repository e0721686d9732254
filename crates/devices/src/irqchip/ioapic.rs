//! The I/O APIC (82093AA): 24 input pins, each with a redirection entry naming a vector and
//! destination; registers reached through IOREGSEL (offset 0x00) and IOWIN (0x10). A pure
//! register model: a raised pin comes back as a [`Route`] for [`super::Irqchip`] to deliver.
//!
//! Most inputs are edges ([`Ioapic::raise`]). A line driven from outside the VMM as a level
//! (a passed-through function's INTx) is held asserted ([`Ioapic::assert_level`]) until the
//! guest's EOI ends it: while its entry is masked or still in service it waits, and it is
//! delivered when the guest unmasks the entry ([`Ioapic::released`]).

use super::lapic::Destination;

pub const PINS: usize = 24;
pub const REG_SELECT: u64 = 0x00;
pub const REG_WINDOW: u64 = 0x10;
/// Version 0x11, 24 entries (maximum redirection entry 23).
const VERSION: u32 = 0x0017_0011;
const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
const LOGICAL: u64 = 1 << 11;

/// Where a raised pin's interrupt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub vector: u8,
    pub dest: Destination,
    pub level: bool,
}

#[derive(Debug, Clone)]
pub struct Ioapic {
    id: u32,
    select: u32,
    entries: [u64; PINS],
    /// Pins held asserted by level lines, one bit each.
    asserted: u32,
}

impl Default for Ioapic {
    fn default() -> Self {
        Ioapic {
            id: 0,
            select: 0,
            entries: [MASKED; PINS],
            asserted: 0,
        }
    }
}

/// The IOAPIC's registers as a snapshot keeps them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoapicState {
    pub id: u32,
    pub select: u32,
    pub entries: [u64; PINS],
    /// Pins held asserted by level lines, one bit each.
    pub asserted: u32,
}

impl Ioapic {
    pub fn state(&self) -> IoapicState {
        IoapicState {
            id: self.id,
            select: self.select,
            entries: self.entries,
            asserted: self.asserted,
        }
    }

    /// An IOAPIC with saved registers (only the bits its registers hold).
    pub fn from_state(s: &IoapicState) -> Self {
        Ioapic {
            id: s.id & 0x0f00_0000,
            select: s.select & 0xff,
            entries: s.entries.map(|e| e & !(1 << 12)),
            asserted: s.asserted & ((1 << PINS) - 1),
        }
    }

    /// Pin `pin` saw an edge (or was asserted): where its interrupt goes, unless it is masked
    /// or a level-triggered interrupt from it is still in service.
    pub fn raise(&mut self, pin: u32) -> Option<Route> {
        let e = self.entries.get_mut(pin as usize)?;
        if *e & MASKED != 0 || *e & REMOTE_IRR != 0 {
            return None;
        }
        let level = *e & LEVEL != 0;
        if level {
            *e |= REMOTE_IRR;
        }
        let target = (*e >> 56) as u8;
        Some(Route {
            vector: *e as u8,
            dest: if *e & LOGICAL != 0 {
                Destination::Logical(target)
            } else {
                Destination::Physical(target)
            },
            level,
        })
    }

    /// A level line asserts pin `pin` and holds it until [`Ioapic::deassert`]: where its
    /// interrupt goes now, unless the entry is masked or still in service (then it waits).
    pub fn assert_level(&mut self, pin: u32) -> Option<Route> {
        if pin as usize >= PINS {
            return None;
        }
        self.asserted |= 1 << pin;
        self.raise(pin)
    }

    pub fn deassert(&mut self, pin: u32) {
        if (pin as usize) < PINS {
            self.asserted &= !(1 << pin);
        }
    }

    /// A local APIC ended level-triggered `vector`: entries using it may fire again. Returns
    /// the pins whose interrupt this ended (one bit each).
    pub fn end_of_interrupt(&mut self, vector: u8) -> u32 {
        let mut ended = 0;
        for (pin, e) in self.entries.iter_mut().enumerate() {
            if *e as u8 == vector && *e & REMOTE_IRR != 0 {
                *e &= !REMOTE_IRR;
                ended |= 1 << pin;
            }
        }
        ended
    }

    /// Routes for the pins still asserted that may fire now (unmasked, not in service):
    /// after the guest rewrote an entry, or after an EOI.
    pub fn released(&mut self) -> Vec<Route> {
        let mut routes = Vec::new();
        for pin in 0..PINS as u32 {
            if self.asserted & (1 << pin) != 0 {
                routes.extend(self.raise(pin));
            }
        }
        routes
    }

    fn register(&self) -> u32 {
        match self.select {
            0 => self.id,
            1 => VERSION,
            2 => self.id,
            r @ 0x10..=0x3f => {
                let e = self.entries[((r - 0x10) / 2) as usize];
                if r % 2 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn set_register(&mut self, value: u32) {
        match self.select {
            0 => self.id = value & 0x0f00_0000,
            r @ 0x10..=0x3f => {
                let e = &mut self.entries[((r - 0x10) / 2) as usize];
                *e = if r % 2 == 0 {
                    // Remote IRR (and delivery status) are read-only.
                    let keep = *e & (REMOTE_IRR | 0xffff_ffff_0000_0000);
                    keep | (u64::from(value) & !(REMOTE_IRR | 1 << 12))
                } else {
                    (*e & 0xffff_ffff) | (u64::from(value) << 32)
                };
            }
            _ => {}
        }
    }
}

impl crate::BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            REG_SELECT => self.select,
            REG_WINDOW => self.register(),
            _ => 0,
        };
        let n = data.len().min(4);
        data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        match offset {
            REG_SELECT => self.select = v & 0xff,
            REG_WINDOW => self.set_register(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusDevice;

    fn set(io: &mut Ioapic, reg: u32, v: u32) {
        io.write(REG_SELECT, &reg.to_le_bytes());
        io.write(REG_WINDOW, &v.to_le_bytes());
    }

    fn get(io: &mut Ioapic, reg: u32) -> u32 {
        io.write(REG_SELECT, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(REG_WINDOW, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn routes_unmasked_pins() {
        let mut io = Ioapic::default();
        assert_eq!(get(&mut io, 1), VERSION);
        assert_eq!(io.raise(5), None, "masked after reset");
        set(&mut io, 0x10 + 2 * 5, 0x31);
        set(&mut io, 0x11 + 2 * 5, 2 << 24);
        assert_eq!(
            io.raise(5),
            Some(Route {
                vector: 0x31,
                dest: Destination::Physical(2),
                level: false
            })
        );
        assert_eq!(io.raise(99), None);
        // Level-triggered: once until the EOI.
        set(&mut io, 0x10 + 2 * 6, 0x32 | LEVEL as u32 | LOGICAL as u32);
        assert!(io.raise(6).is_some());
        assert_eq!(io.raise(6), None);
        assert_ne!(get(&mut io, 0x10 + 2 * 6) & REMOTE_IRR as u32, 0);
        assert_eq!(io.end_of_interrupt(0x32), 1 << 6);
        assert_eq!(io.end_of_interrupt(0x32), 0, "nothing in service");
        assert_eq!(io.raise(6).map(|r| r.dest), Some(Destination::Logical(0)));
    }

    #[test]
    fn an_asserted_level_waits_for_its_entry() {
        let mut io = Ioapic::default();
        assert_eq!(io.assert_level(7), None, "masked: it waits");
        assert_eq!(io.assert_level(99), None);
        set(&mut io, 0x10 + 2 * 7, 0x33 | LEVEL as u32);
        let r = io.released();
        assert_eq!(r.len(), 1, "delivered once unmasked");
        assert!(io.released().is_empty(), "in service");
        io.end_of_interrupt(0x33);
        assert_eq!(io.released().len(), 1, "still asserted: again");
        io.end_of_interrupt(0x33);
        io.deassert(7);
        assert!(io.released().is_empty());
    }
}
