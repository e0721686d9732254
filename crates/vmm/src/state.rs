//! Run state shared by a VM's threads: the stop request (first one wins and becomes the
//! [`Outcome`]), pause/resume, and the kickers that pull vCPUs out of the guest.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use devices::{lock, StopReason, VmControl};
use hypervisor::{Event, VcpuKicker};

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote this status to the debug-exit port.
    DebugExit(u8),
    /// The guest reset the machine (i8042 or a reset request). The CLI reboots in API mode.
    Reset,
    /// The guest powered the machine off.
    PowerOff,
    /// The guest cannot go on: triple fault, an instruction the hypervisor could not run, ...
    Crash { vcpu: u32, reason: String },
    /// The host stopped the VM (a signal, the user's escape key, the VM being dropped).
    Stopped(String),
    /// Someone asked for the stop through the VM's controller (the API socket's stop or
    /// shutdown): an orderly end, not an interruption.
    Requested(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::DebugExit(c) => write!(f, "guest exited with status {c} (debug-exit port)"),
            Outcome::Reset => write!(f, "guest reset the machine"),
            Outcome::PowerOff => write!(f, "guest powered off"),
            Outcome::Crash { vcpu, reason } => write!(f, "guest crashed on vCPU {vcpu}: {reason}"),
            Outcome::Stopped(why) | Outcome::Requested(why) => write!(f, "VM stopped: {why}"),
        }
    }
}

pub(crate) struct VmState {
    stopping: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    /// (vCPU id, kicker): each vCPU thread adds its own and removes them before it ends.
    kickers: Mutex<Vec<(u32, Box<dyn VcpuKicker>)>>,
    /// True while the VM should be paused; vCPUs count themselves in `parked`.
    pause: Mutex<PauseState>,
    pause_changed: Condvar,
    /// `pause.requested`, readable without the lock: the vCPU loop checks it on every exit.
    paused: AtomicBool,
    /// Written once a stop is requested; `Vm::wait` blocks on it.
    exit_evt: Event,
    /// A stop asked for after the guest reset: the VMM ends instead of rebooting.
    after_reset: Mutex<Option<Outcome>>,
    /// Where parked vCPUs hand a snapshot their state.
    pub(crate) saves: crate::snapshot::vcpus::VcpuSaves,
}

#[derive(Default)]
struct PauseState {
    requested: bool,
    parked: usize,
}

impl VmState {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(VmState {
            stopping: AtomicBool::new(false),
            outcome: Mutex::new(None),
            kickers: Mutex::new(Vec::new()),
            pause: Mutex::new(PauseState::default()),
            pause_changed: Condvar::new(),
            paused: AtomicBool::new(false),
            exit_evt: Event::new()?,
            after_reset: Mutex::new(None),
            saves: Default::default(),
        })
    }

    #[inline]
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn pause_requested(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub(crate) fn add_kicker(&self, vcpu: u32, k: Box<dyn VcpuKicker>) {
        lock(&self.kickers).push((vcpu, k));
    }

    /// Drops vCPU `vcpu`'s kickers; its thread calls this before it ends. Kicks happen under
    /// the same lock, so once this returns none signals that thread, whose id a new thread
    /// may take after the join.
    pub(crate) fn remove_kickers(&self, vcpu: u32) {
        lock(&self.kickers).retain(|(id, _)| *id != vcpu);
    }

    fn kick_all(&self) {
        for (_, k) in lock(&self.kickers).iter() {
            k.kick();
        }
    }

    /// Ends the VM. The first request decides the outcome; later ones are ignored.
    pub(crate) fn request_stop(&self, outcome: Outcome) {
        {
            let mut o = lock(&self.outcome);
            if o.is_some() {
                return;
            }
            *o = Some(outcome);
        }
        self.stopping.store(true, Ordering::Release);
        self.kick_all();
        self.pause_changed.notify_all();
        let _ = self.exit_evt.signal();
    }

    pub(crate) fn outcome(&self) -> Option<Outcome> {
        lock(&self.outcome).clone()
    }

    /// Records a stop asked for after the guest reset (the first one wins); false if the VM
    /// ended some other way, so there is nothing to stop.
    pub(crate) fn stop_after_reset(&self, outcome: Outcome) -> bool {
        if self.outcome() != Some(Outcome::Reset) {
            return false;
        }
        lock(&self.after_reset).get_or_insert(outcome);
        true
    }

    pub(crate) fn stopped_after_reset(&self) -> Option<Outcome> {
        lock(&self.after_reset).clone()
    }

    /// Blocks until a stop is requested.
    pub(crate) fn wait_for_stop(&self) {
        while !self.stopping() {
            // A failed wait just loops.
            let _ = self.exit_evt.wait(None);
        }
    }

    /// Pauses every vCPU and waits until `vcpus` of them are parked.
    pub(crate) fn pause(&self, vcpus: usize) {
        let mut p = lock(&self.pause);
        p.requested = true;
        self.paused.store(true, Ordering::Release);
        self.kick_all();
        while p.parked < vcpus && !self.stopping() {
            p = self
                .pause_changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(crate) fn resume(&self) {
        let mut p = lock(&self.pause);
        p.requested = false;
        self.paused.store(false, Ordering::Release);
        drop(p);
        self.pause_changed.notify_all();
    }

    /// Called by a vCPU thread that saw a pause request: waits until resumed or stopped,
    /// running `work` on the parked thread whenever `wanted` says there is some (a snapshot
    /// asking for the vCPU's state; see [`VmState::wake_parked`]).
    pub(crate) fn park_with(&self, wanted: impl Fn() -> bool, mut work: impl FnMut()) {
        let mut p = lock(&self.pause);
        p.parked += 1;
        self.pause_changed.notify_all();
        while p.requested && !self.stopping() {
            if wanted() {
                drop(p);
                work();
                p = lock(&self.pause);
                continue;
            }
            p = self
                .pause_changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
        p.parked -= 1;
    }

    /// Makes every parked vCPU thread check for work. Taking the pause lock orders this after
    /// any check a thread made before it waits, so none misses the call.
    pub(crate) fn wake_parked(&self) {
        let _p = lock(&self.pause);
        self.pause_changed.notify_all();
    }
}

impl VmControl for VmState {
    fn request_stop(&self, reason: StopReason) {
        VmState::request_stop(
            self,
            match reason {
                StopReason::Reset => Outcome::Reset,
                StopReason::DebugExit(code) => Outcome::DebugExit(code),
                StopReason::PowerOff => Outcome::PowerOff,
            },
        );
    }
}

/// Lets another thread (a signal handler thread, a console escape) end the VM.
#[derive(Clone)]
pub struct StopHandle(pub(crate) Arc<VmState>);

impl StopHandle {
    pub fn stop(&self, outcome: Outcome) {
        self.0.request_stop(outcome);
    }
}
