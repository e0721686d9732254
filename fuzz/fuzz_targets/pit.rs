//! The PIT (and port B) as a guest drives it: writes and reads of ports 0x40-0x43 and 0x61 with
//! any value, time passing by any amount (even backwards, as a racing reader may see it).
//! Checks what the timer thread relies on: a deadline, once armed, never lies in the past after
//! a tick; a periodic channel 0 never fires twice without time passing, nor more often than
//! the clamp.
#![no_main]

use devices::irqchip::lapic::MIN_PERIODIC_NS;
use devices::irqchip::pit::Pit;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = Pit::new();
    let mut now = 0u64;
    // Four bytes an operation: kind, port, value, time step.
    for op in data.chunks_exact(4) {
        let (kind, port, value) = (op[0], u64::from(op[1] % 4), op[2]);
        // Mostly small steps, sometimes a long sleep, rarely a step back.
        now = match op[3] {
            0xff => now.saturating_sub(1_000),
            0xfe => now.saturating_add(10_000_000_000),
            s => now.saturating_add(u64::from(s) * 997),
        };
        match kind % 6 {
            0 => p.write(port, value, now),
            1 => {
                let _ = p.read(port, now);
            }
            2 => p.write_port_b(value, now),
            3 => {
                let _ = p.read_port_b(now);
            }
            // Linux's periodic and one-shot programming, so they are reached often.
            4 => {
                p.write(3, if value & 1 == 0 { 0x34 } else { 0x38 }, now);
                p.write(0, value, now);
                p.write(0, op[1], now);
            }
            _ => {
                let deadline = p.deadline();
                if p.tick(now) {
                    let d = deadline.expect("fired without a deadline");
                    assert!(d <= now, "fired before its deadline");
                    assert!(!p.tick(now), "fired twice at {now}");
                    // Only a periodic channel re-arms: a clamped period on from the last
                    // deadline, never more than one 65536-tick period (55 ms) from now.
                    if let Some(next) = p.deadline() {
                        assert!(next > now, "re-armed in the past");
                        assert!(next - d >= MIN_PERIODIC_NS, "period under the clamp");
                        assert!(next - now <= 60_000_000, "period beyond 65536 ticks");
                    }
                }
            }
        }
    }
});
