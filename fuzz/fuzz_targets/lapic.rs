//! One local APIC as the guest and the interrupt controller drive it: register reads and
//! writes at any offset, interrupts arriving, the CPU taking them, time passing. Checks what
//! the SDM says a guest may rely on: the read/write bits of each register read back as
//! written, the processor priority follows TPR and ISR, a vector is offered only above it,
//! taking one moves it from IRR to ISR, an EOI retires the highest in-service vector, and a
//! running timer's deadline lies ahead.
#![no_main]

use devices::irqchip::lapic::*;
use libfuzzer_sys::fuzz_target;

/// Bit `v` of the 256-bit register bank at `base` (ISR, TMR, IRR).
fn bit(a: &Lapic, base: u64, v: u8, now: u64) -> bool {
    a.read(base + u64::from(v >> 5) * 0x10, now) & (1 << (v & 31)) != 0
}

fn highest(a: &Lapic, base: u64, now: u64) -> Option<u8> {
    (0..8u8).rev().find_map(|i| {
        let word = a.read(base + u64::from(i) * 0x10, now);
        (word != 0).then(|| i * 32 + 31 - word.leading_zeros() as u8)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut a = Lapic::new(data.first().copied().unwrap_or(0));
    let mut now = 0u64;
    // Seven bytes an operation: kind, offset (2 bytes), value (4 bytes).
    for op in data.get(1..).unwrap_or(&[]).chunks_exact(7) {
        let kind = op[0];
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) & 0xfff;
        let value = u32::from_le_bytes([op[3], op[4], op[5], op[6]]);
        // Aligned registers most of the time, any offset sometimes.
        let reg = if kind & 0x80 != 0 {
            offset
        } else {
            offset & 0xff0
        };
        match kind & 7 {
            0 => {
                let _ = a.read(reg, now);
            }
            1 | 2 => {
                let svr = a.read(REG_SVR, now);
                let isr_top = highest(&a, REG_ISR, now);
                let effect = a.write(reg, value, now);
                check_write(&a, reg, value, svr, isr_top, effect, now);
            }
            3 => a.accept(value as u8, value & 0x100 != 0),
            4 => {
                let offered = a.pending();
                let ppr = a.read(REG_PPR, now);
                let taken = a.acknowledge();
                assert_eq!(offered, taken);
                if let Some(v) = taken {
                    assert!(
                        u32::from(v) & 0xf0 > ppr & 0xf0,
                        "{v:#x} offered at PPR {ppr:#x}"
                    );
                    assert!(bit(&a, REG_ISR, v, now) && !bit(&a, REG_IRR, v, now));
                }
            }
            5 => {
                // Time passes (up to ~4 s); the timer thread would call tick.
                now += u64::from(value);
                a.tick(now);
                if let Some(d) = a.timer_deadline() {
                    assert!(d > now, "deadline {d} not after {now}");
                }
            }
            _ => {
                let (tpr, isr) = (a.read(REG_TPR, now), highest(&a, REG_ISR, now));
                let class = isr.map_or(0, |v| u32::from(v) & 0xf0);
                let ppr = if tpr & 0xf0 >= class { tpr } else { class };
                assert_eq!(a.read(REG_PPR, now), ppr);
                if let Some(v) = a.pending() {
                    assert!(bit(&a, REG_IRR, v, now) && u32::from(v) & 0xf0 > ppr & 0xf0);
                }
            }
        }
    }
});

fn check_write(
    a: &Lapic,
    reg: u64,
    value: u32,
    svr_before: u32,
    isr_top: Option<u8>,
    effect: WriteEffect,
    now: u64,
) {
    let enabled = svr_before & 0x100 != 0;
    let back = a.read(reg, now);
    match reg {
        REG_ID => assert_eq!(back >> 24, value >> 24),
        REG_TPR => assert_eq!(back & 0xff, value & 0xff),
        REG_LDR => assert_eq!(back >> 24, value >> 24),
        REG_DFR => assert_eq!(back >> 28, value >> 28),
        REG_SVR => assert_eq!(back & 0x1ff, value & 0x1ff),
        REG_ICR_HIGH => assert_eq!(back >> 24, value >> 24),
        REG_ICR_LOW => assert_eq!(back & 0x000c_cfff, value & 0x000c_cfff & !(1 << 12)),
        REG_TIMER_INITIAL => assert_eq!(back, value),
        REG_TIMER_DIVIDE => assert_eq!(back & 0xb, value & 0xb),
        // LVT: vector, mask and (timer) mode are the guest's; a disabled APIC keeps them masked.
        0x320..=0x370 if reg & 0xf == 0 => {
            let rw = if reg == REG_LVT_TIMER { 0x2_00ff } else { 0xff };
            assert_eq!(back & rw, value & rw);
            assert_eq!(back & 1 << 16 != 0, value & 1 << 16 != 0 || !enabled);
        }
        REG_EOI => {
            assert!(!bit(a, REG_ISR, isr_top.unwrap_or(0), now));
            if let WriteEffect::LevelEoi(v) = effect {
                assert_eq!(Some(v), isr_top);
            }
        }
        _ => {}
    }
    if reg != REG_EOI {
        assert!(!matches!(effect, WriteEffect::LevelEoi(_)));
    }
    if reg != REG_ICR_LOW {
        assert!(!matches!(effect, WriteEffect::Ipi(_)));
    }
}
