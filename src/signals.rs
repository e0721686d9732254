//! SIGINT, SIGTERM and SIGHUP end the VM cleanly: they are blocked in every thread and taken by
//! one thread with `sigwait`, which asks the VM to stop (so vCPUs are kicked, the terminal is
//! restored and the exit status says which signal it was).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm::seccomp::{self, SeccompMode, ThreadKind};
use vmm::{Outcome, StopHandle};

/// Sent by `finish` to end the signal thread.
const WAKE: libc::c_int = libc::SIGUSR2;

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, WAKE] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

pub struct SignalThread;

pub struct RunningSignals {
    thread: Option<JoinHandle<()>>,
    pthread: libc::pthread_t,
    received: Arc<AtomicI32>,
    /// Set by `finish` before it sends [`WAKE`]: only then does the thread end.
    done: Arc<AtomicBool>,
}

impl SignalThread {
    /// Blocks the signals in this thread (and so in every thread it starts later).
    pub fn block() -> io::Result<Self> {
        let set = signal_set();
        // SAFETY: changes this thread's signal mask only.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(SignalThread)
    }

    /// Starts the thread that takes the signals, confined as `seccomp` says.
    pub fn spawn(self, stop: StopHandle, seccomp: SeccompMode) -> io::Result<RunningSignals> {
        let received = Arc::new(AtomicI32::new(0));
        let r = received.clone();
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let thread = seccomp::spawn("signals", ThreadKind::Signals, seccomp, move || loop {
            let set = signal_set();
            let mut sig = 0;
            // SAFETY: waits for one of the blocked signals.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if sig == WAKE {
                // A SIGUSR2 from anyone else (`kill -USR2`) must not end the thread: the
                // stop signals would then stay blocked and pending, unanswered.
                if d.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            r.store(sig, Ordering::SeqCst);
            stop.stop(Outcome::Stopped(format!("received signal {sig}")));
        })?;
        use std::os::unix::thread::JoinHandleExt;
        let pthread = thread.as_pthread_t();
        Ok(RunningSignals {
            thread: Some(thread),
            pthread,
            received,
            done,
        })
    }
}

impl RunningSignals {
    /// The signal taken so far, if any.
    pub fn received(&self) -> Option<i32> {
        match self.received.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// Ends the signal thread; returns the signal that stopped the VM, if one did, and the
    /// signals, still blocked, for the thread of the next boot. A signal that arrives in
    /// between stays pending until that thread takes it.
    pub fn finish(mut self) -> (Option<i32>, SignalThread) {
        if let Some(t) = self.thread.take() {
            self.done.store(true, Ordering::SeqCst);
            // SAFETY: the thread is alive until joined below.
            unsafe { libc::pthread_kill(self.pthread, WAKE) };
            let _ = t.join();
        }
        (self.received(), SignalThread)
    }
}
