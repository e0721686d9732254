//! The PC's 8254 programmable interval timer (PIT) and system control port B (port 0x61), for
//! the userspace irqchip on a machine without ACPI: there Linux wires its tick to ISA IRQ 0
//! and verifies its APIC timer against it. A pure register model, like [`super::lapic`]: time
//! comes in as nanoseconds, and [`Pit::tick`] says when channel 0's output raises IRQ 0.
//!
//! Channel 0 drives IRQ 0; channel 2's gate and output are bits 0 and 5 of port B (what
//! Linux's PIT calibration of the TSC polls); channel 1 (once DRAM refresh) counts and drives
//! nothing. Modes 0-5, the counter latch and read-back commands, and LSB/MSB access are
//! modelled; BCD counting is not (the counter counts in binary, the status reports the bit).
//! A periodic channel 0 interrupts at most every [`MIN_PERIODIC_NS`], as KVM's in-kernel PIT.

use super::lapic::MIN_PERIODIC_NS;

/// The PIT's input clock.
pub const FREQUENCY_HZ: u64 = 1_193_182;
/// Counters 0-2 at offsets 0-2, the mode/command register at 3.
pub const PORT_BASE: u64 = 0x40;
pub const PORT_COUNT: u64 = 4;
/// System control port B: channel 2's gate and output, the speaker, the refresh toggle.
pub const PORT_B: u64 = 0x61;
/// The ISA interrupt channel 0 raises (IOAPIC pin 0 through the MP table's 1:1 ISA entries).
pub const IRQ: u32 = 0;

const COMMAND: u64 = 3;
/// Port B: channel 2 gate (rw), speaker enable (rw), refresh toggle (ro), channel 2 out (ro).
const PORT_B_GATE2: u8 = 1 << 0;
const PORT_B_WRITABLE: u8 = 0x0f;
const PORT_B_REFRESH: u8 = 1 << 4;
const PORT_B_OUT2: u8 = 1 << 5;
/// The refresh request bit toggles about every 15 us on a PC.
const REFRESH_NS: u64 = 15_085;

/// How a counter's 16-bit value crosses the 8-bit port (command bits 4-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    #[default]
    Lsb,
    Msb,
    /// LSB then MSB.
    Word,
}

#[derive(Debug, Clone, Default)]
struct Channel {
    mode: u8,
    access: Access,
    bcd: bool,
    /// The count the counter restarts from: 1..=65536 (a written 0 means 65536).
    reload: u64,
    /// When counting (re)started; `None` until a count is written after the mode.
    started: Option<u64>,
    /// Input gate: always high for channels 0 and 1, port B bit 0 for channel 2.
    gate: bool,
    /// The LSB of a word being written.
    low_written: Option<u8>,
    /// A latched count, and whether its MSB is read next.
    latched: Option<(u16, bool)>,
    latched_status: Option<u8>,
    /// Word access to the live count: whether the MSB is read next.
    read_msb_next: bool,
}

impl Channel {
    fn new(gate: bool) -> Self {
        Channel {
            gate,
            reload: 0x1_0000,
            ..Default::default()
        }
    }

    /// Input clock ticks since counting started.
    fn elapsed(&self, now: u64) -> Option<u64> {
        let started = self.started?;
        let ns = u128::from(now.saturating_sub(started));
        Some((ns * u128::from(FREQUENCY_HZ) / 1_000_000_000) as u64)
    }

    /// The counter's value now (0 stands for 65536, as the hardware reads it).
    fn count(&self, now: u64) -> u16 {
        let Some(e) = self.elapsed(now) else {
            return 0;
        };
        let r = self.reload;
        let c = match self.mode {
            2 => r - e % r,
            // Square wave: counts down by two, twice per period.
            3 => r - (2 * e) % r,
            // One shot and strobes: down to 0, then on through 0xffff.
            _ => r.wrapping_sub(e),
        };
        c as u16
    }

    /// The counter's output pin now.
    fn out(&self, now: u64) -> bool {
        let Some(e) = self.elapsed(now) else {
            // After a mode write: low in mode 0, high in the others.
            return self.mode != 0;
        };
        let r = self.reload;
        match self.mode {
            0 | 1 => e >= r,
            2 => e % r != r - 1,
            3 => e % r < r.div_ceil(2),
            _ => e != r,
        }
    }

    fn status(&self, now: u64) -> u8 {
        let access = match self.access {
            Access::Lsb => 1,
            Access::Msb => 2,
            Access::Word => 3,
        };
        u8::from(self.out(now)) << 7
            | u8::from(self.started.is_none()) << 6
            | access << 4
            | self.mode << 1
            | u8::from(self.bcd)
    }

    /// A control word for this channel (access bits nonzero: latch commands go elsewhere).
    fn set_mode(&mut self, command: u8) {
        self.access = match (command >> 4) & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        // Modes 6 and 7 are modes 2 and 3 on the 8254.
        self.mode = match (command >> 1) & 7 {
            m @ 6..=7 => m - 4,
            m => m,
        };
        self.bcd = command & 1 != 0;
        self.started = None;
        self.low_written = None;
        self.latched = None;
        self.latched_status = None;
        self.read_msb_next = false;
    }

    fn latch(&mut self, now: u64) {
        if self.latched.is_none() {
            self.latched = Some((self.count(now), false));
        }
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(s) = self.latched_status.take() {
            return s;
        }
        let (value, msb) = match self.latched {
            Some((v, msb)) => {
                let done = self.access != Access::Word || msb;
                self.latched = if done { None } else { Some((v, true)) };
                (v, msb)
            }
            None => {
                let msb = self.read_msb_next;
                if self.access == Access::Word {
                    self.read_msb_next = !msb;
                }
                (self.count(now), msb)
            }
        };
        let msb = msb || self.access == Access::Msb;
        if msb {
            (value >> 8) as u8
        } else {
            value as u8
        }
    }

    /// Writes one byte of a new count; returns whether counting restarted.
    fn write(&mut self, value: u8, now: u64) -> bool {
        let count = match self.access {
            Access::Lsb => u16::from(value),
            Access::Msb => u16::from(value) << 8,
            Access::Word => match self.low_written.take() {
                None => {
                    self.low_written = Some(value);
                    return false;
                }
                Some(low) => u16::from_le_bytes([low, value]),
            },
        };
        self.reload = if count == 0 {
            0x1_0000
        } else {
            u64::from(count)
        };
        self.started = Some(now);
        true
    }

    /// Port B's gate for channel 2: a rising edge restarts the count in modes 1, 2, 3 and 5.
    /// (Gating modes 0 and 4 off does not pause them here, as in most emulators.)
    fn set_gate(&mut self, gate: bool, now: u64) {
        if gate && !self.gate && matches!(self.mode, 1 | 2 | 3 | 5) && self.started.is_some() {
            self.started = Some(now);
        }
        self.gate = gate;
    }
}

/// The three channels, port B, and when channel 0 next raises IRQ 0.
#[derive(Debug, Clone)]
pub struct Pit {
    channels: [Channel; 3],
    port_b: u8,
    next_irq: Option<u64>,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    pub fn new() -> Self {
        Pit {
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            port_b: 0,
            next_irq: None,
        }
    }

    /// Channel 0's interrupt period in nanoseconds, clamped in the periodic modes.
    fn period_ns(&self) -> u64 {
        let ns = (u128::from(self.channels[0].reload) * 1_000_000_000)
            .div_ceil(u128::from(FREQUENCY_HZ)) as u64;
        if matches!(self.channels[0].mode, 2 | 3) {
            ns.max(MIN_PERIODIC_NS)
        } else {
            ns
        }
    }

    /// Channel 0 (re)started: its output next rises after one period. Modes 1 and 5 wait for
    /// a gate edge that never comes on channel 0.
    fn arm(&mut self, now: u64) {
        self.next_irq = match self.channels[0].mode {
            0 | 2 | 3 | 4 => Some(now.saturating_add(self.period_ns())),
            _ => None,
        };
    }

    /// When channel 0 next raises IRQ 0, if it will.
    pub fn deadline(&self) -> Option<u64> {
        self.next_irq
    }

    /// Whether IRQ 0 fires now; re-arms a periodic channel 0 (once, from now, if it fell
    /// behind: bounded work per wake-up, as the APIC timer).
    pub fn tick(&mut self, now: u64) -> bool {
        let Some(deadline) = self.next_irq else {
            return false;
        };
        if now < deadline {
            return false;
        }
        self.next_irq = if matches!(self.channels[0].mode, 2 | 3) {
            let p = self.period_ns();
            let next = deadline.saturating_add(p);
            Some(if next > now {
                next
            } else {
                now.saturating_add(p)
            })
        } else {
            None
        };
        true
    }

    /// A read of port `0x40 + offset`.
    pub fn read(&mut self, offset: u64, now: u64) -> u8 {
        match self.channels.get_mut(offset as usize) {
            Some(c) => c.read(now),
            // The command register is write-only.
            None => 0xff,
        }
    }

    /// A write to port `0x40 + offset`.
    pub fn write(&mut self, offset: u64, value: u8, now: u64) {
        if offset == COMMAND {
            self.command(value, now);
            return;
        }
        let Some(c) = self.channels.get_mut(offset as usize) else {
            return;
        };
        if c.write(value, now) && offset == 0 {
            self.arm(now);
        }
    }

    fn command(&mut self, value: u8, now: u64) {
        let select = value >> 6;
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status, bits 1-3
            // pick the channels.
            for (i, c) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & (1 << 5) == 0 {
                    c.latch(now);
                }
                if value & (1 << 4) == 0 && c.latched_status.is_none() {
                    c.latched_status = Some(c.status(now));
                }
            }
            return;
        }
        let c = &mut self.channels[select as usize];
        if (value >> 4) & 3 == 0 {
            c.latch(now);
            return;
        }
        c.set_mode(value);
        if select == 0 {
            self.next_irq = None;
        }
    }

    /// A read of port B.
    pub fn read_port_b(&self, now: u64) -> u8 {
        let refresh = if (now / REFRESH_NS) % 2 == 1 {
            PORT_B_REFRESH
        } else {
            0
        };
        let out2 = if self.channels[2].out(now) {
            PORT_B_OUT2
        } else {
            0
        };
        self.port_b | refresh | out2
    }

    /// A write to port B: the gate of channel 2, the speaker (bit 1, silent here) and two
    /// NMI enables (no NMIs are raised).
    pub fn write_port_b(&mut self, value: u8, now: u64) {
        self.port_b = value & PORT_B_WRITABLE;
        self.channels[2].set_gate(value & PORT_B_GATE2 != 0, now);
    }
}

/// One channel as a snapshot keeps it; times are relative to when it was saved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelState {
    pub mode: u8,
    pub access: Access,
    pub bcd: bool,
    /// 1..=65536.
    pub reload: u64,
    /// How long ago counting (re)started, if it did.
    pub started_ago_ns: Option<u64>,
    pub gate: bool,
    pub low_written: Option<u8>,
    pub latched: Option<(u16, bool)>,
    pub latched_status: Option<u8>,
    pub read_msb_next: bool,
}

/// The PIT as a snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PitState {
    pub channels: [ChannelState; 3],
    pub port_b: u8,
    /// Nanoseconds until channel 0 next raises IRQ 0, if it will.
    pub irq_remaining_ns: Option<u64>,
}

impl Pit {
    /// The PIT at time `now`.
    pub fn state(&self, now: u64) -> PitState {
        let channel = |c: &Channel| ChannelState {
            mode: c.mode,
            access: c.access,
            bcd: c.bcd,
            reload: c.reload,
            started_ago_ns: c.started.map(|t| now.saturating_sub(t)),
            gate: c.gate,
            low_written: c.low_written,
            latched: c.latched,
            latched_status: c.latched_status,
            read_msb_next: c.read_msb_next,
        };
        PitState {
            channels: [
                channel(&self.channels[0]),
                channel(&self.channels[1]),
                channel(&self.channels[2]),
            ],
            port_b: self.port_b,
            irq_remaining_ns: self.next_irq.map(|d| d.saturating_sub(now)),
        }
    }

    /// A PIT with saved state, going on at `now`. A mode or count the guest could not have
    /// written is refused (a zero count would divide by zero).
    pub fn from_state(s: &PitState, now: u64) -> Result<Self, super::StateError> {
        let mut channels = [Channel::new(true), Channel::new(true), Channel::new(false)];
        for (i, (c, saved)) in channels.iter_mut().zip(&s.channels).enumerate() {
            if saved.mode > 5 || !(1..=0x1_0000).contains(&saved.reload) {
                return Err(super::StateError(format!(
                    "PIT channel {i}: mode {} and count {} (modes 0-5, counts 1-65536)",
                    saved.mode, saved.reload
                )));
            }
            *c = Channel {
                mode: saved.mode,
                access: saved.access,
                bcd: saved.bcd,
                reload: saved.reload,
                started: saved.started_ago_ns.map(|a| now.saturating_sub(a)),
                gate: saved.gate,
                low_written: saved.low_written,
                latched: saved.latched,
                latched_status: saved.latched_status,
                read_msb_next: saved.read_msb_next,
            };
        }
        Ok(Pit {
            channels,
            port_b: s.port_b & PORT_B_WRITABLE,
            next_irq: s.irq_remaining_ns.map(|r| now.saturating_add(r)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const PORT_B_SPEAKER: u8 = 1 << 1;

    /// The first nanosecond at which exactly `ticks` input clocks have passed.
    fn at(ticks: u64) -> u64 {
        ticks * 1_000_000_000 / FREQUENCY_HZ + 1
    }

    #[test]
    fn linux_periodic_tick_interrupts_every_period() {
        let mut p = Pit::new();
        // What Linux's PIT clockevent writes for HZ=1000: channel 0, LSB/MSB, mode 2.
        let latch = 1193u16;
        p.write(3, 0x34, 0);
        p.write(0, latch as u8, 0);
        assert_eq!(p.deadline(), None, "no count yet");
        p.write(0, (latch >> 8) as u8, 0);
        let d = p.deadline().unwrap();
        assert!((999_000..1_001_000).contains(&d), "{d}");
        assert!(!p.tick(d - 1));
        assert!(p.tick(d));
        assert_eq!(p.deadline(), Some(2 * d));
        // Asleep for a second: one interrupt, then the next period from now.
        assert!(p.tick(1000 * MS));
        assert_eq!(p.deadline(), Some(1000 * MS + d));
        assert!(!p.tick(1000 * MS + 1));
    }

    #[test]
    fn one_shot_modes_fire_once_and_a_new_count_rearms() {
        let mut p = Pit::new();
        // Linux's oneshot clockevent: mode 4, then a count per event.
        p.write(3, 0x38, 0);
        p.write(0, 100, 0);
        p.write(0, 0, 0);
        let d = p.deadline().unwrap();
        assert_eq!(d, (100u64 * 1_000_000_000).div_ceil(FREQUENCY_HZ));
        assert!(p.tick(d));
        assert_eq!(p.deadline(), None);
        assert!(!p.tick(10 * d));
        p.write(0, 50, 20 * d);
        p.write(0, 0, 20 * d);
        assert!(p.tick(20 * d + d / 2 + 1));
        // Linux's shutdown: mode 0 and a zero count (65536): one late interrupt, no more.
        p.write(3, 0x30, 0);
        assert_eq!(p.deadline(), None, "a mode write stops the channel");
        p.write(0, 0, 0);
        p.write(0, 0, 0);
        assert!(p.tick(at(65536)));
        assert!(!p.tick(u64::MAX));
    }

    #[test]
    fn a_tiny_period_is_clamped_and_one_shots_are_not() {
        let mut p = Pit::new();
        p.write(3, 0x14, 0); // mode 2, LSB only
        p.write(0, 1, 0);
        assert_eq!(p.deadline(), Some(MIN_PERIODIC_NS));
        p.write(3, 0x10, 0); // mode 0
        p.write(0, 1, 0);
        assert_eq!(p.deadline(), Some(at(1)));
        // Nothing the guest writes makes tick() fire twice without time passing.
        let mut p = Pit::new();
        p.write(3, 0x16, 0); // mode 3, LSB
        p.write(0, 2, 0);
        let t = 5 * MIN_PERIODIC_NS;
        assert!(p.tick(t));
        assert!(!p.tick(t));
    }

    #[test]
    fn counts_read_back_live_latched_and_through_read_back() {
        let mut p = Pit::new();
        p.write(3, 0x30, 0); // channel 0, word, mode 0
        p.write(0, 0x00, 0);
        p.write(0, 0x10, 0); // 4096
        let t = at(1000);
        let live = u16::from_le_bytes([p.read(0, t), p.read(0, t)]);
        assert_eq!(live, 4096 - 1000);
        // Latch, then read later: still the latched value.
        p.write(3, 0x00, t);
        let later = at(2000);
        assert_eq!(
            u16::from_le_bytes([p.read(0, later), p.read(0, later)]),
            4096 - 1000
        );
        // Read-back of count and status for channel 0: status first.
        p.write(3, 0xc2, later);
        let status = p.read(0, later);
        assert_eq!(status, 0x30, "out low, count loaded, word access, mode 0");
        assert_eq!(
            u16::from_le_bytes([p.read(0, later), p.read(0, later)]),
            4096 - 2000
        );
        // After terminal count the output is high and the count wraps on.
        let past = at(4096 + 10);
        p.write(3, 0xe2, past); // status only
        assert_eq!(p.read(0, past) & 0x80, 0x80);
        assert_eq!(
            u16::from_le_bytes([p.read(0, past), p.read(0, past)]),
            0u16.wrapping_sub(10)
        );
    }

    #[test]
    fn channel_2_through_port_b_as_linux_calibrates_the_tsc() {
        let mut p = Pit::new();
        // pit_calibrate_tsc: gate on, speaker off; channel 2 mode 0; count 0xffff.
        let b = p.read_port_b(0);
        p.write_port_b((b & !PORT_B_SPEAKER) | PORT_B_GATE2, 0);
        p.write(3, 0xb0, 0);
        p.write(2, 0xff, 0);
        p.write(2, 0xff, 0);
        assert_eq!(p.read_port_b(at(100)) & PORT_B_OUT2, 0);
        // quick_pit_calibrate reads LSB then MSB; the MSB falls with time.
        let _ = p.read(2, at(600));
        assert_eq!(p.read(2, at(600)), 0xfd);
        assert_ne!(p.read_port_b(at(0xffff)) & PORT_B_OUT2, 0);
        assert_eq!(p.deadline(), None, "channel 2 interrupts nobody");
        // Bits 4 and 5 are read-only; the command register reads all-ones.
        p.write_port_b(0xff, 0);
        assert_eq!(p.port_b, PORT_B_WRITABLE);
        assert_eq!(p.read(COMMAND, 0), 0xff);
    }

    #[test]
    fn square_wave_output_and_count() {
        let mut p = Pit::new();
        p.write(3, 0x96, 0); // channel 2, LSB, mode 3
        p.write(2, 100, 0);
        assert!(p.channels[2].out(at(10)));
        assert!(!p.channels[2].out(at(60)));
        assert_eq!(p.read(2, at(10)), 80);
        // A gate edge restarts it.
        p.write_port_b(0, at(60));
        p.write_port_b(PORT_B_GATE2, at(60));
        assert!(p.channels[2].out(at(70)));
    }

    #[test]
    fn a_saved_pit_goes_on_with_its_count_and_refuses_a_zero_count() {
        let mut p = Pit::new();
        p.write(3, 0x34, 0);
        p.write(0, 0xa9, 0);
        p.write(0, 0x04, 0);
        let now = MS / 2;
        let s = p.state(now);
        // Restored on a clock that reads 10 ms at the time: the same count, the same wait.
        let mut q = Pit::from_state(&s, 10 * MS).unwrap();
        assert_eq!(q.read(0, 10 * MS), p.read(0, now));
        assert_eq!(
            q.deadline().map(|d| d - 10 * MS),
            p.deadline().map(|d| d - now)
        );
        let mut bad = s.clone();
        bad.channels[1].reload = 0;
        assert!(Pit::from_state(&bad, 0).is_err());
        bad.channels[1].reload = 1;
        bad.channels[2].mode = 6;
        assert!(Pit::from_state(&bad, 0).is_err());
    }
}
