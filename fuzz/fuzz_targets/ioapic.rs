//! The IOAPIC as the guest and the devices drive it: IOREGSEL/IOWIN accesses of any width and
//! offset, pins raised, EOIs broadcast. Checks the redirection entries' guest bits read back
//! as written (vector, delivery and destination modes, polarity, trigger, mask, destination),
//! the read-only ones stay the device's, and a raised pin routes exactly as its entry says:
//! nothing while masked, a level-triggered pin once until its EOI.
#![no_main]

use devices::irqchip::ioapic::{Ioapic, Route, PINS, REG_SELECT, REG_WINDOW};
use devices::irqchip::lapic::Destination;
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;

fn reg(io: &mut Ioapic, r: u32) -> u32 {
    io.write(REG_SELECT, &r.to_le_bytes());
    let mut b = [0u8; 4];
    io.read(REG_WINDOW, &mut b);
    u32::from_le_bytes(b)
}

fn entry(io: &mut Ioapic, pin: u32) -> u64 {
    u64::from(reg(io, 0x10 + 2 * pin)) | u64::from(reg(io, 0x11 + 2 * pin)) << 32
}

fuzz_target!(|data: &[u8]| {
    let mut io = Ioapic::default();
    // Six bytes an operation: kind, offset or pin, value (4 bytes).
    for op in data.chunks_exact(6) {
        let (kind, at) = (op[0], op[1]);
        let value = u32::from_le_bytes([op[2], op[3], op[4], op[5]]);
        let width = 1usize << ((kind >> 3) & 3);
        match kind & 7 {
            0 => {
                let mut b = [0u8; 8];
                io.read(u64::from(at), &mut b[..width]);
            }
            1 => {
                let b = u64::from(value).to_le_bytes();
                io.write(u64::from(at), &b[..width]);
            }
            2 => {
                // A full 32-bit write of a register, then its read-back.
                let r = u32::from(at) & 0x3f;
                let old = reg(&mut io, r);
                io.write(REG_WINDOW, &value.to_le_bytes());
                let back = reg(&mut io, r);
                match r {
                    0 => assert_eq!(back & 0x0f00_0000, value & 0x0f00_0000),
                    1 => assert_eq!(back & 0x00ff_00ff, 0x0017_0011, "24 pins, version 0x11"),
                    0x10..=0x3f if r % 2 == 0 => {
                        let ro = 1 << 12 | 1 << 14; // delivery status, remote IRR
                        assert_eq!(back & !ro, value & !ro);
                        assert_eq!(back & 1 << 14, old & 1 << 14);
                    }
                    0x11..=0x3f => assert_eq!(back >> 24, value >> 24),
                    _ => {}
                }
            }
            3 | 5..=7 => {
                let pin = u32::from(at) % (PINS as u32 + 2);
                let before = (pin < PINS as u32).then(|| entry(&mut io, pin));
                let route = io.raise(pin);
                let Some(e) = before else {
                    assert_eq!(route, None);
                    continue;
                };
                let masked_or_busy = e & 1 << 16 != 0 || e & 1 << 14 != 0;
                if masked_or_busy {
                    assert_eq!(route, None);
                    continue;
                }
                let target = (e >> 56) as u8;
                let level = e & 1 << 15 != 0;
                let dest = if e & 1 << 11 != 0 {
                    Destination::Logical(target)
                } else {
                    Destination::Physical(target)
                };
                assert_eq!(
                    route,
                    Some(Route {
                        vector: e as u8,
                        dest,
                        level
                    })
                );
                assert_eq!(entry(&mut io, pin) & 1 << 14 != 0, level, "remote IRR");
                if level {
                    assert_eq!(io.raise(pin), None, "level pin fired twice before its EOI");
                }
            }
            _ => {
                // A local APIC's EOI of a level-triggered vector, broadcast.
                io.end_of_interrupt(at);
                for pin in 0..PINS as u32 {
                    let e = entry(&mut io, pin);
                    assert!(e as u8 != at || e & 1 << 14 == 0);
                }
            }
        }
    }
});
