//! An x86 interrupt controller in the VMM: one local APIC per vCPU ([`lapic`]) and an IOAPIC
//! ([`ioapic`]), for hypervisors that have none (Hypervisor.framework on Intel) and for KVM
//! with `--irqchip userspace` (no `KVM_CREATE_IRQCHIP`), which proves it on real hardware.
//!
//! [`Irqchip`] ties them together: device lines raise IOAPIC pins, pins and IPIs latch vectors
//! in local APICs, and the vCPU whose APIC got one is kicked out of the guest so its thread can
//! inject it (on KVM with `KVM_INTERRUPT` once the guest opens an interrupt window). A timer
//! thread fires the APIC timers. vCPUs other than the boot one wait for INIT and STARTUP IPIs,
//! as on hardware. Message-signalled interrupts (PCI MSI/MSI-X, decoded by [`msi`]) go
//! straight to the APICs they name, as an IOAPIC redirection entry's do.
//!
//! With ACPI the platform is hardware-reduced: no PIC, no PIT. Without it (the MP table), a
//! guest also finds a PIT ([`pit`], fired by the same timer thread into ISA IRQ 0) and a pair
//! of 8259As that it can only mask ([`pic`]): every line still goes through the IOAPIC.
//!
//! A level line driven from outside the VMM (a passed-through function's INTx through VFIO)
//! is [`Irqchip::level_line`]: asserting it holds its pin high; the guest's EOI of its vector
//! lowers it and signals the line's resample event, which VFIO takes as "unmask", as KVM's
//! resampling irqfd does with the in-kernel irqchip.

pub mod ioapic;
pub mod lapic;
pub mod msi;
pub mod pic;
pub mod pit;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypervisor::{Event, IrqLine, MsiLine, MsiMessage, VcpuKicker};

use crate::lock;
use ioapic::{Ioapic, IoapicState};
use lapic::{Destination, Ipi, Lapic, LapicState, WriteEffect};
use pit::{Pit, PitState};

/// Whether a vCPU runs or waits for a STARTUP IPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    Running,
    WaitForSipi,
    /// A STARTUP arrived with this vector; the vCPU thread starts it in real mode.
    Starting(u8),
}

struct Inner {
    lapics: Vec<Lapic>,
    power: Vec<Power>,
    /// Whether each vCPU's thread sleeps on `changed` (halted, or waiting for STARTUP): a
    /// notify wakes it, no signal needed.
    asleep: Vec<bool>,
    ioapic: Ioapic,
    /// Per IOAPIC pin: the events its EOI signals, one per level line on it (functions may
    /// share a pin, as PCI INTx lines do) ([`Irqchip::level_line`]).
    resample: Vec<Vec<Event>>,
    /// The PIT, on a machine without ACPI ([`Irqchip::add_pit`]).
    pit: Option<Pit>,
    shutdown: bool,
}

pub struct Irqchip {
    inner: Mutex<Inner>,
    /// Signalled on every change a waiting vCPU may care about.
    changed: Condvar,
    /// Signalled when a timer register or `shutdown` changes: what the timer thread waits on.
    timer_changed: Condvar,
    kickers: Mutex<Vec<Option<Box<dyn VcpuKicker>>>>,
    epoch: Instant,
    /// Added to the time since `epoch`: a restored chip's clock goes on from the saved one,
    /// so what happened before the snapshot (a PIT count's start) stays in its past.
    clock_base: AtomicU64,
    timer: Mutex<Option<JoinHandle<()>>>,
}

/// The whole controller as a snapshot keeps it: per vCPU its local APIC and power state, the
/// IOAPIC and the PIT. Timer deadlines are the time they had left.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrqchipState {
    /// The chip's clock when saved (nanoseconds since it started, or since the first start
    /// of a restored chain).
    pub clock_ns: u64,
    pub lapics: Vec<LapicState>,
    pub power: Vec<Power>,
    pub ioapic: IoapicState,
    pub pit: Option<PitState>,
}

/// Saved state that does not fit this controller.
#[derive(Debug, thiserror::Error)]
#[error("the saved interrupt controller does not fit: {0}")]
pub struct StateError(String);

impl Irqchip {
    /// A controller for `cpus` vCPUs (APIC IDs 0..cpus; vCPU 0 runs, the others wait for
    /// STARTUP), with its timer thread running until the returned owner is dropped.
    pub fn start(cpus: u32) -> std::io::Result<OwnedIrqchip> {
        Self::start_with(cpus, crate::thread::no_hook())
    }

    /// [`Irqchip::start`], with `on_start` run first on the timer thread (where the VMM
    /// confines it).
    pub fn start_with(
        cpus: u32,
        on_start: crate::thread::OnStart,
    ) -> std::io::Result<OwnedIrqchip> {
        let n = cpus as usize;
        let chip = Arc::new(Irqchip {
            inner: Mutex::new(Inner {
                lapics: (0..cpus).map(|id| Lapic::new(id as u8)).collect(),
                power: (0..n)
                    .map(|i| {
                        if i == 0 {
                            Power::Running
                        } else {
                            Power::WaitForSipi
                        }
                    })
                    .collect(),
                asleep: vec![false; n],
                ioapic: Ioapic::default(),
                resample: (0..ioapic::PINS).map(|_| Vec::new()).collect(),
                pit: None,
                shutdown: false,
            }),
            changed: Condvar::new(),
            timer_changed: Condvar::new(),
            kickers: Mutex::new((0..n).map(|_| None).collect()),
            epoch: Instant::now(),
            clock_base: AtomicU64::new(0),
            timer: Mutex::new(None),
        });
        let c = chip.clone();
        let handle = crate::thread::spawn("apic-timer", on_start, move || c.timer_thread())?;
        *lock(&chip.timer) = Some(handle);
        Ok(OwnedIrqchip(chip))
    }

    fn now(&self) -> u64 {
        let since = self.epoch.elapsed().as_nanos() as u64;
        since.saturating_add(self.clock_base.load(Ordering::Relaxed))
    }

    /// The controller's state now. The VM is paused: no vCPU changes it meanwhile (the timer
    /// thread may still latch a due interrupt, which the saved IRR then holds).
    pub fn state(&self) -> IrqchipState {
        let now = self.now();
        let inner = self.lock();
        IrqchipState {
            clock_ns: now,
            lapics: inner.lapics.iter().map(|a| a.state(now)).collect(),
            power: inner.power.clone(),
            ioapic: inner.ioapic.state(),
            pit: inner.pit.as_ref().map(|p| p.state(now)),
        }
    }

    /// Loads saved state into a chip built for the same machine, before any vCPU runs.
    pub fn set_state(&self, s: &IrqchipState) -> Result<(), StateError> {
        let mut inner = self.lock();
        let n = inner.lapics.len();
        if s.lapics.len() != n || s.power.len() != n {
            return Err(StateError(format!(
                "{} local APICs and {} power states saved for {n} vCPUs",
                s.lapics.len(),
                s.power.len()
            )));
        }
        if s.pit.is_some() != inner.pit.is_some() {
            return Err(StateError(format!(
                "a PIT saved: {}, the machine has one: {}",
                s.pit.is_some(),
                inner.pit.is_some()
            )));
        }
        let now = self.now().saturating_add(s.clock_ns);
        let pit = s
            .pit
            .as_ref()
            .map(|p| Pit::from_state(p, now))
            .transpose()?;
        self.clock_base.fetch_add(s.clock_ns, Ordering::Relaxed);
        inner.lapics = s.lapics.iter().map(|a| Lapic::from_state(a, now)).collect();
        inner.power = s.power.clone();
        inner.ioapic = Ioapic::from_state(&s.ioapic);
        inner.pit = pit;
        drop(inner);
        self.timer_changed.notify_all();
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Stops the timer thread (which holds a reference to the chip) and waits for it.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.changed.notify_all();
        self.timer_changed.notify_all();
        if let Some(t) = lock(&self.timer).take() {
            let _ = t.join();
        }
    }

    /// Registers the handle that pulls vCPU `id` out of the guest when an interrupt arrives.
    pub fn attach(&self, id: u32, kicker: Box<dyn VcpuKicker>) {
        if let Some(k) = lock(&self.kickers).get_mut(id as usize) {
            *k = Some(kicker);
        }
    }

    /// Drops vCPU `id`'s kicker; its thread calls this before it ends. Kicks happen under
    /// the same lock, so once this returns nothing signals that thread (whose id may be
    /// reused by a new thread once it is joined).
    pub fn detach(&self, id: u32) {
        if let Some(k) = lock(&self.kickers).get_mut(id as usize) {
            *k = None;
        }
    }

    /// How many vCPUs have a kicker attached.
    pub fn attached(&self) -> usize {
        lock(&self.kickers).iter().filter(|k| k.is_some()).count()
    }

    /// Makes the vCPUs `ids` look at their APICs: a notify for those asleep on `changed`, a
    /// kick out of the guest for the others. Takes the lock that `asleep` was read under, so a
    /// vCPU about to sleep sees the new state before it does.
    fn wake(&self, inner: MutexGuard<'_, Inner>, ids: &[usize]) {
        let (asleep, running): (Vec<usize>, Vec<usize>) = ids
            .iter()
            .partition(|&&id| inner.asleep.get(id).copied().unwrap_or(false));
        drop(inner);
        if !asleep.is_empty() {
            self.changed.notify_all();
        }
        let kickers = lock(&self.kickers);
        for id in running {
            if let Some(Some(k)) = kickers.get(id) {
                k.kick();
            }
        }
    }

    /// Marks vCPU `id` as sleeping on `changed` (or awake again).
    fn set_asleep(inner: &mut Inner, id: u32, asleep: bool) {
        if let Some(a) = inner.asleep.get_mut(id as usize) {
            *a = asleep;
        }
    }

    /// Wakes vCPU threads waiting in [`Irqchip::wait_for_interrupt`] or for a STARTUP, so they
    /// notice a stop or pause request.
    pub fn wake_all(&self) {
        drop(self.lock());
        self.changed.notify_all();
    }

    /// An interrupt line into IOAPIC pin `pin` (the GSI).
    pub fn line(self: &Arc<Self>, pin: u32) -> Box<dyn IrqLine> {
        Box::new(PinLine {
            chip: self.clone(),
            pin,
        })
    }

    /// A level-triggered line into IOAPIC pin `pin`: each trigger asserts the pin (delivered
    /// once the guest's entry lets it), and the guest's EOI of its vector lowers it and
    /// signals `resample` (and those of the other level lines sharing the pin, as KVM's
    /// resampling irqfds do: a source still asserting triggers again).
    pub fn level_line(self: &Arc<Self>, pin: u32, resample: Event) -> Box<dyn IrqLine> {
        if let Some(r) = self.lock().resample.get_mut(pin as usize) {
            r.push(resample);
        }
        Box::new(LevelLine {
            chip: self.clone(),
            pin,
        })
    }

    /// Asserts IOAPIC pin `pin` as a level ([`Irqchip::level_line`]).
    fn assert_level(&self, pin: u32) {
        let mut inner = self.lock();
        let Some(route) = inner.ioapic.assert_level(pin) else {
            return;
        };
        let targets = deliver(&mut inner, route.vector, route.dest, route.level, 0);
        self.wake(inner, &targets);
    }

    /// Delivers the level pins an IOAPIC write or an EOI let fire; returns who to wake.
    fn deliver_released(inner: &mut Inner) -> Vec<usize> {
        let mut targets = Vec::new();
        for route in inner.ioapic.released() {
            targets.extend(deliver(inner, route.vector, route.dest, route.level, 0));
        }
        targets
    }

    /// Raises IOAPIC pin `pin` (an edge).
    pub fn raise(&self, pin: u32) {
        let mut inner = self.lock();
        let Some(route) = inner.ioapic.raise(pin) else {
            return;
        };
        let targets = deliver(&mut inner, route.vector, route.dest, route.level, 0);
        self.wake(inner, &targets);
    }

    /// An MSI/MSI-X vector of a device: [`Irqchip::deliver_msi`] with the message the guest
    /// last programmed.
    pub fn msi_line(self: &Arc<Self>) -> Box<dyn MsiLine> {
        Box::new(ChipMsiLine {
            chip: self.clone(),
            message: Mutex::new(None),
        })
    }

    /// Delivers a device's MSI write to the local APICs it names, as an edge (physical or
    /// logical destination, 0xff for all; lowest priority to one of them). A message the
    /// APICs cannot take is dropped, as the guest sent it.
    pub fn deliver_msi(&self, message: MsiMessage) {
        let m = match msi::decode(message) {
            Ok(m) => m,
            Err(e) => {
                log::debug!("irqchip: MSI {message:x?} dropped: {e}");
                return;
            }
        };
        let mut inner = self.lock();
        let targets = if m.one_target {
            deliver_to_one(&mut inner, m.vector, m.dest)
        } else {
            deliver(&mut inner, m.vector, m.dest, false, 0)
        };
        self.wake(inner, &targets);
    }

    /// vCPU `id` reads its local APIC at `offset`.
    pub fn read_lapic(&self, id: u32, offset: u64, data: &mut [u8]) {
        let now = self.now();
        let v = match self.lock().lapics.get(id as usize) {
            Some(a) if data.len() == 4 && offset.is_multiple_of(16) => a.read(offset, now),
            _ => 0,
        };
        let n = data.len().min(4);
        data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
        data[n..].fill(0);
    }

    /// vCPU `id` writes its local APIC at `offset` (32-bit aligned writes only, as the SDM
    /// requires; others are dropped).
    pub fn write_lapic(&self, id: u32, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(16) {
            return;
        }
        let now = self.now();
        let mut inner = self.lock();
        let Some(a) = inner.lapics.get_mut(id as usize) else {
            return;
        };
        let from = a.id();
        let deadline = a.timer_deadline();
        let effect = a.write(offset, u32::from_le_bytes(bytes), now);
        if a.timer_deadline() != deadline {
            self.timer_changed.notify_all();
        }
        let targets = match effect {
            WriteEffect::None => Vec::new(),
            WriteEffect::LevelEoi(v) => {
                let chip = &mut *inner;
                let ended = chip.ioapic.end_of_interrupt(v);
                for pin in (0..ioapic::PINS as u32).filter(|p| ended & (1 << p) != 0) {
                    // A level line's EOI lowers it and tells its sources (VFIO: unmask).
                    let sources = chip.resample.get(pin as usize).map_or(&[][..], |r| r);
                    if !sources.is_empty() {
                        chip.ioapic.deassert(pin);
                    }
                    for r in sources {
                        let _ = r.signal();
                    }
                }
                Self::deliver_released(&mut inner)
            }
            WriteEffect::Ipi(Ipi::Fixed { vector, dest }) => {
                deliver(&mut inner, vector, dest, false, from)
            }
            WriteEffect::Ipi(Ipi::Init { dest }) => {
                set_power(&mut inner, dest, from, |p| *p = Power::WaitForSipi)
            }
            WriteEffect::Ipi(Ipi::Startup { vector, dest }) => {
                set_power(&mut inner, dest, from, |p| {
                    if *p == Power::WaitForSipi {
                        *p = Power::Starting(vector);
                    }
                })
            }
        };
        // The writer itself looks at its APIC before it re-enters the guest.
        let others: Vec<usize> = targets.into_iter().filter(|&t| t != id as usize).collect();
        self.wake(inner, &others);
    }

    /// Before vCPU `id` enters the guest: if it has an interrupt and `can_take()` says the
    /// guest can take one, moves it to in-service and returns it; also says whether one is
    /// (still) waiting. One lock for what the vCPU loop asks on every entry.
    pub fn take_interrupt(&self, id: u32, can_take: impl FnOnce() -> bool) -> (Option<u8>, bool) {
        let mut inner = self.lock();
        let Some(a) = inner.lapics.get_mut(id as usize) else {
            return (None, false);
        };
        if a.pending().is_none() {
            return (None, false);
        }
        let taken = if can_take() { a.acknowledge() } else { None };
        (taken, a.pending().is_some())
    }

    /// Blocks a halted vCPU until it has an interrupt or `give_up()` says to stop waiting.
    pub fn wait_for_interrupt(&self, id: u32, give_up: impl Fn() -> bool) {
        let mut inner = self.lock();
        Self::set_asleep(&mut inner, id, true);
        while !give_up()
            && !inner.shutdown
            && inner
                .lapics
                .get(id as usize)
                .is_some_and(|a| a.pending().is_none())
        {
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        Self::set_asleep(&mut inner, id, false);
    }

    /// For a vCPU that must not run yet (after reset or INIT): waits for a STARTUP IPI and
    /// returns its vector, or `None` if `give_up()` said to stop waiting. A running vCPU gets
    /// `None` at once.
    pub fn wait_for_startup(&self, id: u32, give_up: impl Fn() -> bool) -> Option<u8> {
        let mut inner = self.lock();
        Self::set_asleep(&mut inner, id, true);
        let vector = loop {
            match inner.power.get(id as usize).copied() {
                Some(Power::Starting(v)) => {
                    inner.power[id as usize] = Power::Running;
                    break Some(v);
                }
                Some(Power::WaitForSipi) if !give_up() && !inner.shutdown => {
                    inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
                }
                _ => break None,
            }
        };
        Self::set_asleep(&mut inner, id, false);
        vector
    }

    /// Whether vCPU `id` is held until a STARTUP IPI.
    pub fn is_waiting_for_startup(&self, id: u32) -> bool {
        self.lock()
            .power
            .get(id as usize)
            .is_some_and(|p| *p != Power::Running)
    }

    /// Gives the chip a PIT (ports [`pit::PORT_BASE`] and [`pit::PORT_B`], through
    /// [`PitDevice`]), its channel 0 firing ISA IRQ 0 from the timer thread.
    pub fn add_pit(&self) {
        self.lock().pit = Some(Pit::new());
    }

    /// Runs `f` on the PIT (if there is one) at the current time; wakes the timer thread if
    /// that moved channel 0's deadline.
    fn with_pit<R: Default>(&self, f: impl FnOnce(&mut Pit, u64) -> R) -> R {
        let now = self.now();
        let mut inner = self.lock();
        let Some(pit) = inner.pit.as_mut() else {
            return R::default();
        };
        let deadline = pit.deadline();
        let r = f(pit, now);
        if pit.deadline() != deadline {
            self.timer_changed.notify_all();
        }
        r
    }

    fn timer_thread(&self) {
        let mut inner = self.lock();
        while !inner.shutdown {
            let now = self.now();
            let mut fired = Vec::new();
            for (i, a) in inner.lapics.iter_mut().enumerate() {
                if a.tick(now) {
                    fired.push(i);
                }
            }
            if inner.pit.as_mut().is_some_and(|p| p.tick(now)) {
                if let Some(route) = inner.ioapic.raise(pit::IRQ) {
                    fired.extend(deliver(
                        &mut inner,
                        route.vector,
                        route.dest,
                        route.level,
                        0,
                    ));
                }
            }
            if !fired.is_empty() {
                self.wake(inner, &fired);
                inner = self.lock();
                continue;
            }
            let pit_deadline = inner.pit.as_ref().and_then(Pit::deadline);
            let next = inner
                .lapics
                .iter()
                .filter_map(Lapic::timer_deadline)
                .chain(pit_deadline)
                .min();
            inner = match next {
                Some(d) => {
                    let wait = Duration::from_nanos(d.saturating_sub(now));
                    self.timer_changed
                        .wait_timeout(inner, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self
                    .timer_changed
                    .wait(inner)
                    .unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// Latches `vector` in every APIC `dest` names; returns their indices.
fn deliver(inner: &mut Inner, vector: u8, dest: Destination, level: bool, from: u8) -> Vec<usize> {
    let mut targets = Vec::new();
    for (i, a) in inner.lapics.iter_mut().enumerate() {
        if a.matches(dest, from) {
            a.accept(vector, level);
            targets.push(i);
        }
    }
    targets
}

/// Lowest-priority delivery: latches `vector` in the one APIC `dest` names that has the lowest
/// processor priority (the first of equals), skipping software-disabled ones.
fn deliver_to_one(inner: &mut Inner, vector: u8, dest: Destination) -> Vec<usize> {
    let chosen = inner
        .lapics
        .iter()
        .enumerate()
        .filter(|(_, a)| a.matches(dest, 0))
        .filter_map(|(i, a)| Some((a.arbitration_priority()?, i)))
        .min();
    let Some((_, i)) = chosen else {
        return Vec::new();
    };
    inner.lapics[i].accept(vector, false);
    vec![i]
}

fn set_power(inner: &mut Inner, dest: Destination, from: u8, f: impl Fn(&mut Power)) -> Vec<usize> {
    let mut targets = Vec::new();
    for (i, a) in inner.lapics.iter().enumerate() {
        if a.matches(dest, from) {
            f(&mut inner.power[i]);
            targets.push(i);
        }
    }
    targets
}

/// An [`Irqchip`] and its timer thread: dropping the owner stops and joins the thread (which
/// holds a reference to the chip), on every path, failed VM creations included. Device lines
/// may keep the chip itself alive longer.
pub struct OwnedIrqchip(Arc<Irqchip>);

impl std::ops::Deref for OwnedIrqchip {
    type Target = Arc<Irqchip>;
    fn deref(&self) -> &Arc<Irqchip> {
        &self.0
    }
}

impl Drop for OwnedIrqchip {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A device's interrupt line into an IOAPIC pin.
struct PinLine {
    chip: Arc<Irqchip>,
    pin: u32,
}

impl IrqLine for PinLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.chip.raise(self.pin);
        Ok(())
    }
}

/// A level line from outside the VMM into an IOAPIC pin.
struct LevelLine {
    chip: Arc<Irqchip>,
    pin: u32,
}

impl IrqLine for LevelLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.chip.assert_level(self.pin);
        Ok(())
    }
}

/// A device's MSI vector: the message it delivers, once the guest programmed one.
struct ChipMsiLine {
    chip: Arc<Irqchip>,
    message: Mutex<Option<MsiMessage>>,
}

impl MsiLine for ChipMsiLine {
    fn set_message(&self, message: Option<MsiMessage>) -> std::io::Result<()> {
        *lock(&self.message) = message;
        Ok(())
    }

    fn trigger(&self) -> std::io::Result<()> {
        let message = *lock(&self.message);
        if let Some(m) = message {
            self.chip.deliver_msi(m);
        }
        Ok(())
    }
}

/// The IOAPIC's registers on the MMIO bus.
pub struct IoapicDevice(pub Arc<Irqchip>);

impl crate::BusDevice for IoapicDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.lock().ioapic.read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut inner = self.0.lock();
        inner.ioapic.write(offset, data);
        // An entry unmasked under an asserted level line fires now.
        let targets = Irqchip::deliver_released(&mut inner);
        self.0.wake(inner, &targets);
    }
}

/// The PIT's counters and command register on the port bus ([`pit::PORT_BASE`], 4 ports).
pub struct PitDevice(pub Arc<Irqchip>);

impl crate::BusDevice for PitDevice {
    fn name(&self) -> String {
        "pit".into()
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.0.with_pit(|p, now| p.read(offset, now));
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.0.with_pit(|p, now| p.write(offset, v, now));
        }
    }
}

/// System control port B ([`pit::PORT_B`]): the PIT's channel 2 gate and output.
pub struct PortB(pub Arc<Irqchip>);

impl crate::BusDevice for PortB {
    fn name(&self) -> String {
        "port-b".into()
    }
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.0.with_pit(|p, now| p.read_port_b(now));
        }
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.0.with_pit(|p, now| p.write_port_b(v, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(Arc<AtomicUsize>);
    impl VcpuKicker for Count {
        fn kick(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn w(chip: &Irqchip, id: u32, offset: u64, v: u32) {
        chip.write_lapic(id, offset, &v.to_le_bytes());
    }

    #[test]
    fn device_line_to_apic_and_startup_ipis() {
        let chip = Irqchip::start(2).unwrap();
        let kicks = Arc::new(AtomicUsize::new(0));
        chip.attach(1, Box::new(Count(kicks.clone())));
        for id in 0..2 {
            w(&chip, id, lapic::REG_SVR, 0x1ff);
        }
        // IOAPIC pin 5 -> vector 0x35 on APIC 1.
        let mut dev = IoapicDevice(chip.clone());
        use crate::BusDevice;
        dev.write(ioapic::REG_SELECT, &[0x1a]);
        dev.write(ioapic::REG_WINDOW, &0x35u32.to_le_bytes());
        dev.write(ioapic::REG_SELECT, &[0x1b]);
        dev.write(ioapic::REG_WINDOW, &(1u32 << 24).to_le_bytes());
        chip.line(5).trigger().unwrap();
        assert_eq!(kicks.load(Ordering::SeqCst), 1);
        assert_eq!(
            chip.take_interrupt(0, || false),
            (None, false),
            "not for vCPU 0"
        );
        assert_eq!(
            chip.take_interrupt(1, || false),
            (None, true),
            "window closed"
        );
        assert_eq!(chip.take_interrupt(1, || true), (Some(0x35), false));
        // vCPU 1 waits for STARTUP; INIT then STARTUP from vCPU 0 release it.
        assert!(chip.is_waiting_for_startup(1));
        w(&chip, 0, lapic::REG_ICR_HIGH, 1 << 24);
        w(&chip, 0, lapic::REG_ICR_LOW, 0x4500);
        w(&chip, 0, lapic::REG_ICR_LOW, 0x4610);
        assert_eq!(chip.wait_for_startup(1, || false), Some(0x10));
        assert!(!chip.is_waiting_for_startup(1));
        assert_eq!(chip.wait_for_startup(0, || false), None);
        // A detached vCPU is kicked no more.
        let before = kicks.load(Ordering::SeqCst);
        chip.detach(1);
        assert_eq!(chip.attached(), 0);
        chip.line(5).trigger().unwrap();
        assert_eq!(kicks.load(Ordering::SeqCst), before);
    }

    /// A chip with `n` enabled APICs, vCPU `i`'s kicks counted in the `i`th counter (all of
    /// them running, so every delivery is a kick).
    fn chip_with_kicks(n: u32) -> (OwnedIrqchip, Vec<Arc<AtomicUsize>>) {
        let chip = Irqchip::start(n).unwrap();
        let kicks: Vec<_> = (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        for (id, k) in kicks.iter().enumerate() {
            chip.attach(id as u32, Box::new(Count(k.clone())));
            w(&chip, id as u32, lapic::REG_SVR, 0x1ff);
        }
        (chip, kicks)
    }

    /// The vector each vCPU would take now; each handles it at once (EOI).
    fn taken(chip: &Irqchip, n: u32) -> Vec<Option<u8>> {
        (0..n)
            .map(|id| {
                let v = chip.take_interrupt(id, || true).0;
                if v.is_some() {
                    w(chip, id, lapic::REG_EOI, 0);
                }
                v
            })
            .collect()
    }

    fn msi(dest: u8, flags: u64, data: u32) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000 | u64::from(dest) << 12 | flags,
            data,
        }
    }

    #[test]
    fn msis_reach_the_apics_they_name() {
        let (chip, kicks) = chip_with_kicks(3);
        // Physical: APIC 2 only, and it is kicked.
        chip.deliver_msi(msi(2, 0, 0x41));
        assert_eq!(kicks[2].load(Ordering::SeqCst), 1);
        assert_eq!(taken(&chip, 3), [None, None, Some(0x41)]);
        // Broadcast.
        chip.deliver_msi(msi(0xff, 0, 0x42));
        assert_eq!(taken(&chip, 3), [Some(0x42); 3]);
        // Logical (flat): APICs 0 and 2 have logical IDs 1 and 4.
        w(&chip, 0, lapic::REG_LDR, 1 << 24);
        w(&chip, 2, lapic::REG_LDR, 4 << 24);
        chip.deliver_msi(msi(0x05, 1 << 2, 0x43));
        assert_eq!(taken(&chip, 3), [Some(0x43), None, Some(0x43)]);
        // Lowest priority to the same group: one of them, the lower priority (APIC 2 while 0
        // raises its TPR).
        w(&chip, 0, lapic::REG_TPR, 0x20);
        chip.deliver_msi(msi(0x05, 1 << 2, 0x144));
        assert_eq!(taken(&chip, 3), [None, None, Some(0x44)]);
        // ... and in physical mode to all: one of the three.
        chip.deliver_msi(msi(0xff, 0, 0x145));
        assert_eq!(taken(&chip, 3).iter().flatten().count(), 1);
    }

    #[test]
    fn bad_or_disabled_msis_go_nowhere() {
        let (chip, kicks) = chip_with_kicks(2);
        let kicked = || {
            kicks
                .iter()
                .map(|k| k.load(Ordering::SeqCst))
                .sum::<usize>()
        };
        let ioapic_window = MsiMessage {
            address: 0xfec0_0000,
            data: 0x41,
        };
        for bad in [
            msi(0, 0, 0x0e),  // reserved vector
            msi(0, 0, 0x441), // NMI
            ioapic_window,
            msi(7, 0, 0x41), // no such APIC
        ] {
            chip.deliver_msi(bad);
        }
        assert_eq!(kicked(), 0);
        assert_eq!(taken(&chip, 2), [None, None]);
        // A software-disabled APIC takes nothing, and is not chosen for lowest priority.
        w(&chip, 0, lapic::REG_SVR, 0xff);
        chip.deliver_msi(msi(0xff, 0, 0x150));
        assert_eq!(taken(&chip, 2), [None, Some(0x50)]);
        // A line delivers only once it has a message, and not after it loses it.
        let line = chip.msi_line();
        line.trigger().unwrap();
        line.set_message(Some(msi(1, 0, 0x51))).unwrap();
        line.trigger().unwrap();
        assert_eq!(taken(&chip, 2), [None, Some(0x51)]);
        line.set_message(None).unwrap();
        line.trigger().unwrap();
        assert_eq!(taken(&chip, 2), [None, None]);
    }

    #[test]
    fn the_pit_raises_isa_irq_0_through_the_ioapic() {
        use crate::BusDevice;
        let chip = Irqchip::start(1).unwrap();
        w(&chip, 0, lapic::REG_SVR, 0x1ff);
        // Pin 0 -> vector 0x30 on APIC 0, edge.
        let mut ioapic = IoapicDevice(chip.clone());
        ioapic.write(ioapic::REG_SELECT, &[0x10]);
        ioapic.write(ioapic::REG_WINDOW, &0x30u32.to_le_bytes());
        // No PIT yet: its ports read 0 and writes go nowhere.
        let mut pit = PitDevice(chip.clone());
        pit.write(3, &[0x34]);
        let mut b = [0xff];
        pit.read(0, &mut b);
        assert_eq!(b, [0]);
        chip.add_pit();
        // Channel 0, mode 2, 2 ms.
        let count = (pit::FREQUENCY_HZ / 500) as u16;
        pit.write(3, &[0x34]);
        pit.write(0, &[count as u8]);
        pit.write(0, &[(count >> 8) as u8]);
        let t = Instant::now();
        chip.wait_for_interrupt(0, || t.elapsed() > Duration::from_secs(5));
        assert_eq!(chip.take_interrupt(0, || true), (Some(0x30), false));
        assert!(t.elapsed() >= Duration::from_millis(1), "{:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(5), "woken by the PIT");
        // Periodic: it comes again after the EOI.
        w(&chip, 0, lapic::REG_EOI, 0);
        let t = Instant::now();
        chip.wait_for_interrupt(0, || t.elapsed() > Duration::from_secs(5));
        assert_eq!(chip.take_interrupt(0, || true), (Some(0x30), false));
        // Port B reaches channel 2's gate.
        let mut port_b = PortB(chip.clone());
        port_b.write(0, &[1]);
        port_b.read(0, &mut b);
        assert_eq!(b[0] & 1, 1);
    }

    #[test]
    fn a_saved_chip_comes_back_with_its_timer_pending_and_power_states() {
        let chip = Irqchip::start(2).unwrap();
        w(&chip, 0, lapic::REG_SVR, 0x1ff);
        w(&chip, 0, lapic::REG_TIMER_DIVIDE, 0xb);
        w(&chip, 0, lapic::REG_LVT_TIMER, 0x40);
        w(&chip, 0, lapic::REG_TIMER_INITIAL, 50_000_000); // 50 ms
        chip.deliver_msi(msi(0, 0, 0x51));
        chip.add_pit();
        let s = chip.state();
        assert_eq!(s.power, [Power::Running, Power::WaitForSipi]);
        let left = s.lapics[0].timer_remaining_ns.unwrap();
        assert!(left > 0 && left <= 50_000_000, "{left}");

        let copy = Irqchip::start(2).unwrap();
        copy.add_pit();
        copy.set_state(&s).unwrap();
        assert!(copy.is_waiting_for_startup(1));
        assert!(
            copy.now() >= s.clock_ns,
            "its clock goes on from the saved one"
        );
        assert_eq!(copy.take_interrupt(0, || true), (Some(0x51), false));
        w(&copy, 0, lapic::REG_EOI, 0);
        let t = Instant::now();
        copy.wait_for_interrupt(0, || t.elapsed() > Duration::from_secs(5));
        assert_eq!(copy.take_interrupt(0, || true), (Some(0x40), false));
        // Another machine's state does not fit.
        let one = Irqchip::start(1).unwrap();
        assert!(one.set_state(&s).is_err());
        let no_pit = Irqchip::start(2).unwrap();
        assert!(no_pit.set_state(&s).is_err());
    }

    #[test]
    fn dropping_the_owner_ends_the_timer_thread() {
        let chip = Irqchip::start(1).unwrap();
        let weak = Arc::downgrade(&*chip);
        drop(chip);
        assert!(
            weak.upgrade().is_none(),
            "the timer thread let go of the chip"
        );
    }

    #[test]
    fn the_timer_thread_fires_and_wakes_a_halted_vcpu() {
        let chip = Irqchip::start(1).unwrap();
        w(&chip, 0, lapic::REG_SVR, 0x1ff);
        w(&chip, 0, lapic::REG_TIMER_DIVIDE, 0xb);
        w(&chip, 0, lapic::REG_LVT_TIMER, 0x40);
        w(&chip, 0, lapic::REG_TIMER_INITIAL, 2_000_000); // 2 ms
        let t = Instant::now();
        chip.wait_for_interrupt(0, || t.elapsed() > Duration::from_secs(5));
        assert_eq!(
            chip.take_interrupt(0, || false),
            (None, true),
            "woken by the timer, not the 5 s limit"
        );
        assert!(t.elapsed() >= Duration::from_millis(1));
    }

    #[test]
    fn a_level_line_waits_for_its_entry_and_resamples_on_eoi() {
        use crate::BusDevice;
        let chip = Irqchip::start(1).unwrap();
        w(&chip, 0, lapic::REG_SVR, 0x1ff);
        let resample = Event::new().unwrap();
        let line = chip.level_line(21, resample.try_clone().unwrap());
        // Another function's line on the same pin (PCI INTx lines share pins).
        let shared = Event::new().unwrap();
        let _other = chip.level_line(21, shared.try_clone().unwrap());
        line.trigger().unwrap();
        assert_eq!(chip.take_interrupt(0, || true), (None, false), "masked");
        // Pin 21 -> vector 0x41, level: unmasking delivers the asserted line.
        let mut dev = IoapicDevice(chip.clone());
        dev.write(ioapic::REG_SELECT, &[0x10 + 2 * 21]);
        dev.write(ioapic::REG_WINDOW, &(0x41u32 | 1 << 15).to_le_bytes());
        assert_eq!(chip.take_interrupt(0, || true), (Some(0x41), false));
        assert!(!resample.drain().unwrap());
        w(&chip, 0, lapic::REG_EOI, 0);
        assert!(resample.drain().unwrap(), "the EOI resampled the line");
        assert!(shared.drain().unwrap(), "and every line on the pin");
        assert_eq!(
            chip.take_interrupt(0, || true),
            (None, false),
            "lowered: not again until the next trigger"
        );
        line.trigger().unwrap();
        assert_eq!(chip.take_interrupt(0, || true), (Some(0x41), false));
    }
}
