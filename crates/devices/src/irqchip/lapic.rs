//! One local APIC in xAPIC mode (Intel SDM vol. 3, chapter 11): the registers at 0xfee00000,
//! interrupt acceptance (IRR -> ISR by priority, EOI), the timer, and inter-processor
//! interrupts. A pure register model: time comes in as nanoseconds, IPIs go out as [`Ipi`]
//! values for [`super::Irqchip`] to deliver.
//!
//! Not modelled: x2APIC (hidden from the guest's CPUID), the TSC-deadline timer mode (hidden
//! too), LINT0/LINT1 delivery (the 8259s of a machine without ACPI never deliver), NMI and
//! SMI IPIs (logged and dropped), the error status register beyond reading zero.

/// The timer counts at 1 GHz before its divider, as KVM's in-kernel APIC does.
pub const BUS_NS_PER_TICK: u64 = 1;

/// The shortest period a periodic timer gets, as KVM's in-kernel APIC clamps it
/// (`min_timer_period_us`, 200 us by default, in arch/x86/kvm/x86.c): a guest cannot make the
/// timer thread fire more than 5,000 times a second per APIC. One-shot timers are not
/// clamped; each needs a register write (an exit) from the guest to re-arm.
pub const MIN_PERIODIC_NS: u64 = 200_000;

pub const REG_ID: u64 = 0x20;
pub const REG_VERSION: u64 = 0x30;
pub const REG_TPR: u64 = 0x80;
pub const REG_PPR: u64 = 0xa0;
pub const REG_EOI: u64 = 0xb0;
pub const REG_LDR: u64 = 0xd0;
pub const REG_DFR: u64 = 0xe0;
pub const REG_SVR: u64 = 0xf0;
pub const REG_ISR: u64 = 0x100;
pub const REG_TMR: u64 = 0x180;
pub const REG_IRR: u64 = 0x200;
pub const REG_ESR: u64 = 0x280;
pub const REG_ICR_LOW: u64 = 0x300;
pub const REG_ICR_HIGH: u64 = 0x310;
pub const REG_LVT_TIMER: u64 = 0x320;
pub const REG_LVT_LINT0: u64 = 0x350;
pub const REG_LVT_ERROR: u64 = 0x370;
pub const REG_TIMER_INITIAL: u64 = 0x380;
pub const REG_TIMER_CURRENT: u64 = 0x390;
pub const REG_TIMER_DIVIDE: u64 = 0x3e0;

/// Version 0x14 (integrated APIC), 6 LVT entries.
const VERSION: u32 = 0x0005_0014;
const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
const LVT_COUNT: usize = 6;

/// Where an interrupt goes (ICR or IOAPIC destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// One APIC by ID (0xff: all).
    Physical(u8),
    /// Flat logical mode: every APIC whose logical ID shares a bit with the mask.
    Logical(u8),
    ToSelf,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// An inter-processor interrupt the guest asked for by writing the ICR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipi {
    Fixed {
        vector: u8,
        dest: Destination,
    },
    /// INIT: the targets wait for a STARTUP.
    Init {
        dest: Destination,
    },
    /// STARTUP: the targets start in real mode at `vector << 12`.
    Startup {
        vector: u8,
        dest: Destination,
    },
}

/// 256 bits, one per vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct VectorSet([u32; 8]);

impl VectorSet {
    fn set(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] |= 1 << (v & 31);
    }
    fn clear(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] &= !(1 << (v & 31));
    }
    fn get(&self, v: u8) -> bool {
        self.0[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }
    fn highest(&self) -> Option<u8> {
        (0..8)
            .rev()
            .find(|&i| self.0[i] != 0)
            .map(|i| (i as u32 * 32 + 31 - self.0[i].leading_zeros()) as u8)
    }
}

#[derive(Debug, Clone)]
pub struct Lapic {
    id: u8,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: VectorSet,
    irr: VectorSet,
    tmr: VectorSet,
    icr_high: u32,
    icr_low: u32,
    /// Timer, thermal, performance, LINT0, LINT1, error.
    lvt: [u32; LVT_COUNT],
    timer_initial: u32,
    timer_divide: u32,
    /// When the running timer next fires (ns on the caller's clock).
    timer_deadline: Option<u64>,
}

impl Lapic {
    /// The state after reset: masked LVTs, software-disabled, APIC ID `id`.
    pub fn new(id: u8) -> Self {
        Lapic {
            id,
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xff,
            isr: VectorSet::default(),
            irr: VectorSet::default(),
            tmr: VectorSet::default(),
            icr_high: 0,
            icr_low: 0,
            lvt: [LVT_MASKED; LVT_COUNT],
            timer_initial: 0,
            timer_divide: 0,
            timer_deadline: None,
        }
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// Whether this APIC is a target of `dest`, sent by APIC `from`.
    pub fn matches(&self, dest: Destination, from: u8) -> bool {
        match dest {
            Destination::Physical(id) => id == 0xff || id == self.id,
            Destination::Logical(mask) => (self.ldr >> 24) as u8 & mask != 0,
            Destination::ToSelf => from == self.id,
            Destination::AllIncludingSelf => true,
            Destination::AllExcludingSelf => from != self.id,
        }
    }

    fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// Latches `vector` in the IRR (`level`: remember it for the IOAPIC's EOI). Vectors below
    /// 16 are illegal and dropped, as is anything while the APIC is software-disabled.
    pub fn accept(&mut self, vector: u8, level: bool) {
        if vector < 16 || !self.software_enabled() {
            return;
        }
        self.irr.set(vector);
        if level {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
    }

    /// The processor priority: the higher of the task priority and the in-service class.
    fn ppr(&self) -> u32 {
        let isr = self.isr.highest().map_or(0, |v| u32::from(v) & 0xf0);
        let tpr = self.tpr & 0xff;
        if (tpr & 0xf0) >= isr {
            tpr
        } else {
            isr
        }
    }

    /// What lowest-priority arbitration compares: the processor priority, or `None` while
    /// the APIC is software-disabled (it would drop the interrupt).
    pub fn arbitration_priority(&self) -> Option<u32> {
        self.software_enabled().then(|| self.ppr())
    }

    /// The vector the CPU would take now, if any.
    pub fn pending(&self) -> Option<u8> {
        let v = self.irr.highest()?;
        (u32::from(v) & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// Moves the pending vector from IRR to ISR, as the CPU does when it takes it.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending()?;
        self.irr.clear(v);
        self.isr.set(v);
        Some(v)
    }

    /// Ends the highest in-service interrupt; returns its vector if it was level-triggered
    /// (the IOAPIC must hear about it).
    fn eoi(&mut self) -> Option<u8> {
        let v = self.isr.highest()?;
        self.isr.clear(v);
        self.tmr.get(v).then_some(v)
    }

    fn divide(&self) -> u64 {
        let code = (self.timer_divide & 3) | ((self.timer_divide >> 1) & 4);
        if code == 7 {
            1
        } else {
            2 << code
        }
    }

    /// The time between two interrupts: the count times the divider, at least
    /// [`MIN_PERIODIC_NS`] in periodic mode.
    fn period_ns(&self) -> u64 {
        let p = u64::from(self.timer_initial) * self.divide() * BUS_NS_PER_TICK;
        if self.lvt[0] & LVT_PERIODIC != 0 && p > 0 {
            p.max(MIN_PERIODIC_NS)
        } else {
            p
        }
    }

    /// When the timer next fires, if it runs.
    pub fn timer_deadline(&self) -> Option<u64> {
        self.timer_deadline
    }

    /// Fires the timer if its deadline has passed: latches its vector (unless masked) and
    /// re-arms a periodic timer. Returns whether a new interrupt became pending (the vCPU
    /// needs a kick); one already waiting in the IRR absorbs this one, as on hardware.
    pub fn tick(&mut self, now: u64) -> bool {
        let Some(deadline) = self.timer_deadline else {
            return false;
        };
        if now < deadline {
            return false;
        }
        let lvt = self.lvt[0];
        let p = self.period_ns();
        self.timer_deadline = if lvt & LVT_PERIODIC != 0 && p > 0 {
            // A timer that fell behind (the host slept) fires once and re-arms from now:
            // bounded work per wake-up, never a burst or a catch-up loop.
            let next = deadline.saturating_add(p);
            Some(if next > now {
                next
            } else {
                now.saturating_add(p)
            })
        } else {
            None
        };
        let vector = lvt as u8;
        if lvt & LVT_MASKED != 0 || self.irr.get(vector) {
            return false;
        }
        self.accept(vector, false);
        self.irr.get(vector)
    }

    fn timer_current(&self, now: u64) -> u32 {
        match self.timer_deadline {
            // Never above the initial count, even while a clamped period runs.
            Some(d) if d > now => ((d - now) / (self.divide() * BUS_NS_PER_TICK))
                .min(u64::from(self.timer_initial)) as u32,
            _ => 0,
        }
    }

    /// A 32-bit register read at `offset` (other widths and misaligned offsets read 0).
    pub fn read(&self, offset: u64, now: u64) -> u32 {
        let bank = |set: &VectorSet, base| set.0[((offset - base) >> 4) as usize];
        match offset {
            REG_ID => u32::from(self.id) << 24,
            REG_VERSION => VERSION,
            REG_TPR => self.tpr,
            REG_PPR => self.ppr(),
            REG_LDR => self.ldr,
            REG_DFR => self.dfr,
            REG_SVR => self.svr,
            0x100..=0x170 if offset & 0xf == 0 => bank(&self.isr, REG_ISR),
            0x180..=0x1f0 if offset & 0xf == 0 => bank(&self.tmr, REG_TMR),
            0x200..=0x270 if offset & 0xf == 0 => bank(&self.irr, REG_IRR),
            REG_ICR_LOW => self.icr_low,
            REG_ICR_HIGH => self.icr_high,
            0x320..=0x370 if offset & 0xf == 0 => {
                self.lvt[((offset - REG_LVT_TIMER) >> 4) as usize]
            }
            REG_TIMER_INITIAL => self.timer_initial,
            REG_TIMER_CURRENT => self.timer_current(now),
            REG_TIMER_DIVIDE => self.timer_divide,
            _ => 0,
        }
    }

    /// A 32-bit register write; what it asks of the rest of the system comes back.
    pub fn write(&mut self, offset: u64, value: u32, now: u64) -> WriteEffect {
        match offset {
            REG_ID => self.id = (value >> 24) as u8,
            REG_TPR => self.tpr = value & 0xff,
            REG_EOI => return self.eoi().map_or(WriteEffect::None, WriteEffect::LevelEoi),
            REG_LDR => self.ldr = value & 0xff00_0000,
            REG_DFR => self.dfr = value | 0x0fff_ffff,
            REG_SVR => {
                self.svr = value & 0x3ff;
                if !self.software_enabled() {
                    // Disabling masks every LVT entry (SDM 11.4.7.2).
                    for l in &mut self.lvt {
                        *l |= LVT_MASKED;
                    }
                }
            }
            REG_ESR => {}
            REG_ICR_HIGH => self.icr_high = value,
            REG_ICR_LOW => {
                self.icr_low = value & !(1 << 12); // delivery is instantaneous: never pending
                return self.ipi().map_or(WriteEffect::None, WriteEffect::Ipi);
            }
            0x320..=0x370 if offset & 0xf == 0 => {
                let mut v = value;
                if !self.software_enabled() {
                    v |= LVT_MASKED;
                }
                self.lvt[((offset - REG_LVT_TIMER) >> 4) as usize] = v;
            }
            REG_TIMER_INITIAL => {
                self.timer_initial = value;
                self.timer_deadline = (value != 0).then(|| now.saturating_add(self.period_ns()));
            }
            REG_TIMER_DIVIDE => self.timer_divide = value & 0xb,
            _ => {}
        }
        WriteEffect::None
    }

    fn ipi(&self) -> Option<Ipi> {
        let icr = self.icr_low;
        let vector = icr as u8;
        let dest = match (icr >> 18) & 3 {
            1 => Destination::ToSelf,
            2 => Destination::AllIncludingSelf,
            3 => Destination::AllExcludingSelf,
            _ if icr & (1 << 11) != 0 => Destination::Logical((self.icr_high >> 24) as u8),
            _ => Destination::Physical((self.icr_high >> 24) as u8),
        };
        match (icr >> 8) & 7 {
            // Fixed and lowest-priority both go to the named CPU(s) here.
            0 | 1 => Some(Ipi::Fixed { vector, dest }),
            // INIT level de-assert (level 0, trigger level) is a no-op since the P4.
            5 if icr & (1 << 14) == 0 && icr & (1 << 15) != 0 => None,
            5 => Some(Ipi::Init { dest }),
            6 => Some(Ipi::Startup { vector, dest }),
            mode => {
                log::debug!("APIC {}: IPI delivery mode {mode} not supported", self.id);
                None
            }
        }
    }
}

/// A local APIC's registers as a snapshot keeps them: plain data, the timer's deadline as the
/// time it had left (the clock it was on does not survive the process).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LapicState {
    pub id: u8,
    pub tpr: u32,
    pub ldr: u32,
    pub dfr: u32,
    pub svr: u32,
    pub isr: [u32; 8],
    pub irr: [u32; 8],
    pub tmr: [u32; 8],
    pub icr_high: u32,
    pub icr_low: u32,
    /// Timer, thermal, performance, LINT0, LINT1, error.
    pub lvt: [u32; LVT_COUNT],
    pub timer_initial: u32,
    pub timer_divide: u32,
    /// Nanoseconds until the running timer fires, if it runs.
    pub timer_remaining_ns: Option<u64>,
}

impl Lapic {
    /// The registers at time `now`.
    pub fn state(&self, now: u64) -> LapicState {
        LapicState {
            id: self.id,
            tpr: self.tpr,
            ldr: self.ldr,
            dfr: self.dfr,
            svr: self.svr,
            isr: self.isr.0,
            irr: self.irr.0,
            tmr: self.tmr.0,
            icr_high: self.icr_high,
            icr_low: self.icr_low,
            lvt: self.lvt,
            timer_initial: self.timer_initial,
            timer_divide: self.timer_divide,
            timer_remaining_ns: self.timer_deadline.map(|d| d.saturating_sub(now)),
        }
    }

    /// An APIC with saved registers, its timer resumed at `now`. Each register keeps only
    /// the bits a guest write could set, so a saved file holds nothing a guest could not.
    pub fn from_state(s: &LapicState, now: u64) -> Self {
        Lapic {
            id: s.id,
            tpr: s.tpr & 0xff,
            ldr: s.ldr & 0xff00_0000,
            dfr: s.dfr | 0x0fff_ffff,
            svr: s.svr & 0x3ff,
            isr: VectorSet(s.isr),
            irr: VectorSet(s.irr),
            tmr: VectorSet(s.tmr),
            icr_high: s.icr_high,
            icr_low: s.icr_low & !(1 << 12),
            lvt: s.lvt,
            timer_initial: s.timer_initial,
            timer_divide: s.timer_divide & 0xb,
            timer_deadline: s.timer_remaining_ns.map(|r| now.saturating_add(r)),
        }
    }
}

/// What a register write asks of the interrupt controller hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteEffect {
    None,
    Ipi(Ipi),
    /// A level-triggered interrupt ended: the IOAPIC clears its remote IRR.
    LevelEoi(u8),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> Lapic {
        let mut a = Lapic::new(0);
        a.write(REG_SVR, 0x1ff, 0);
        a
    }

    #[test]
    fn priorities_and_eoi() {
        let mut a = enabled();
        a.accept(0x31, false);
        a.accept(0x52, false);
        assert_eq!(a.acknowledge(), Some(0x52));
        // 0x31 is in a lower class than the in-service 0x52: it waits for the EOI.
        assert_eq!(a.pending(), None);
        assert_eq!(a.read(REG_PPR, 0), 0x50);
        assert_eq!(a.write(REG_EOI, 0, 0), WriteEffect::None);
        assert_eq!(a.acknowledge(), Some(0x31));
        a.write(REG_TPR, 0x40, 0);
        a.accept(0x45, true);
        assert_eq!(a.pending(), None, "TPR class 4 blocks 0x45");
        a.write(REG_TPR, 0, 0);
        a.write(REG_EOI, 0, 0);
        assert_eq!(a.acknowledge(), Some(0x45));
        assert_eq!(a.write(REG_EOI, 0, 0), WriteEffect::LevelEoi(0x45));
        // Disabled APICs and illegal vectors take nothing.
        a.accept(3, false);
        assert_eq!(a.pending(), None);
        let mut off = Lapic::new(1);
        off.accept(0x40, false);
        assert_eq!(off.pending(), None);
    }

    #[test]
    fn one_shot_and_periodic_timer() {
        let mut a = enabled();
        a.write(REG_TIMER_DIVIDE, 0xb, 0); // divide by 1
        a.write(REG_LVT_TIMER, 0x40, 0);
        a.write(REG_TIMER_INITIAL, 1000, 100);
        assert_eq!(a.timer_deadline(), Some(1100));
        assert_eq!(a.read(REG_TIMER_CURRENT, 600), 500);
        assert!(!a.tick(1099));
        assert!(a.tick(1100));
        assert_eq!((a.pending(), a.timer_deadline()), (Some(0x40), None));
        a.write(REG_TIMER_DIVIDE, 0x3, 0); // divide by 16
        a.write(REG_LVT_TIMER, 0x41 | LVT_PERIODIC, 0);
        a.write(REG_TIMER_INITIAL, 20_000, 0); // 320 us
        assert!(a.tick(330_000)); // on time: the next period keeps the phase
        assert_eq!(a.timer_deadline(), Some(640_000));
        assert!(
            !a.tick(5_000_000),
            "0x41 is still pending: no new interrupt, no kick"
        );
        assert_eq!(a.acknowledge(), Some(0x41));
        a.write(REG_EOI, 0, 0);
        // Many periods late: one interrupt, re-armed a whole period from now.
        assert_eq!(a.timer_deadline(), Some(5_320_000));
        assert!(a.tick(9_000_000));
        assert_eq!(a.timer_deadline(), Some(9_320_000));
        a.write(REG_LVT_TIMER, 0x41 | LVT_PERIODIC | LVT_MASKED, 0);
        assert!(!a.tick(9_400_000));
    }

    #[test]
    fn a_periodic_timer_is_clamped_to_kvms_minimum_period() {
        let mut a = enabled();
        a.write(REG_TIMER_DIVIDE, 0xb, 0); // divide by 1
        a.write(REG_LVT_TIMER, 0x40 | LVT_PERIODIC, 0);
        a.write(REG_TIMER_INITIAL, 1, 1000); // 1 ns as written
        assert_eq!(a.timer_deadline(), Some(1000 + MIN_PERIODIC_NS));
        assert!(
            a.read(REG_TIMER_CURRENT, 1000) <= 1,
            "never above the initial count"
        );
        // A host that woke late fires once, and the next deadline is a whole period away.
        assert!(a.tick(10_000_000));
        assert_eq!(a.timer_deadline(), Some(10_000_000 + MIN_PERIODIC_NS));
        // One-shot timers are not clamped.
        a.write(REG_LVT_TIMER, 0x40, 0);
        a.write(REG_TIMER_INITIAL, 1, 0);
        assert_eq!(a.timer_deadline(), Some(1));
    }

    #[test]
    fn saved_registers_come_back_with_the_timer_time_left() {
        let mut a = enabled();
        a.write(REG_TIMER_DIVIDE, 0xb, 0);
        a.write(REG_LVT_TIMER, 0x40, 0);
        a.write(REG_TIMER_INITIAL, 1000, 100);
        a.accept(0x31, true);
        let s = a.state(600);
        assert_eq!(s.timer_remaining_ns, Some(500));
        // Restored on a clock that reads 5 at the time.
        let b = Lapic::from_state(&s, 5);
        assert_eq!(b.timer_deadline(), Some(505));
        assert_eq!(b.read(REG_TIMER_CURRENT, 5), 500);
        assert_eq!(b.pending(), Some(0x31));
        assert_eq!(b.state(5), Lapic::from_state(&s, 0).state(0));
    }

    #[test]
    fn icr_writes_become_ipis() {
        let mut a = enabled();
        a.write(REG_ICR_HIGH, 1 << 24, 0);
        assert_eq!(
            a.write(REG_ICR_LOW, 0x4500, 0),
            WriteEffect::Ipi(Ipi::Init {
                dest: Destination::Physical(1)
            })
        );
        assert_eq!(
            a.write(REG_ICR_LOW, 0x4610, 0),
            WriteEffect::Ipi(Ipi::Startup {
                vector: 0x10,
                dest: Destination::Physical(1)
            })
        );
        assert_eq!(a.write(REG_ICR_LOW, 0x8500, 0), WriteEffect::None); // INIT de-assert
        assert_eq!(
            a.write(REG_ICR_LOW, 0xc_0030, 0),
            WriteEffect::Ipi(Ipi::Fixed {
                vector: 0x30,
                dest: Destination::AllExcludingSelf
            })
        );
        assert_eq!(a.read(REG_ICR_LOW, 0) & (1 << 12), 0, "never busy");
        assert!(a.matches(Destination::AllExcludingSelf, 1));
        assert!(!a.matches(Destination::AllExcludingSelf, 0));
        a.write(REG_LDR, 0x0100_0000, 0);
        assert!(a.matches(Destination::Logical(0x3), 1));
    }
}
