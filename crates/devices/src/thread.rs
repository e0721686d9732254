//! Threads the devices start for themselves (a console's writer, the APIC timer), with a hook
//! the VMM runs first on each: that is where it confines the thread (seccomp on Linux) before
//! the thread touches anything a guest controls. The devices never learn what the hook does.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::lock;

/// Runs first on a new thread; an error ends the thread before its work starts.
pub type OnStart = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// A hook that does nothing (tests, and library users who confine nothing).
pub fn no_hook() -> OnStart {
    Box::new(|| Ok(()))
}

/// Starts a thread named `name` that runs `on_start`, then `work`. Returns once `on_start`
/// has finished, with its error if it failed (the thread has then ended without working).
pub fn spawn<F>(name: &str, on_start: OnStart, work: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    spawn_boxed(name, on_start, Box::new(work))
}

/// Not generic, so that the callers share one copy (the VMM's memory target counts code).
fn spawn_boxed(
    name: &str,
    on_start: OnStart,
    work: Box<dyn FnOnce() + Send>,
) -> io::Result<JoinHandle<()>> {
    // The hook's result, handed back from the new thread.
    let started: Arc<(Mutex<Option<io::Result<()>>>, Condvar)> = Arc::default();
    let slot = started.clone();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let result = panic::catch_unwind(AssertUnwindSafe(on_start))
                .unwrap_or_else(|_| Err(io::Error::other("the thread's start-up hook panicked")));
            let ok = result.is_ok();
            *lock(&slot.0) = Some(result);
            slot.1.notify_one();
            if ok {
                work();
            }
        })?;
    let mut guard = lock(&started.0);
    let result = loop {
        match guard.take() {
            Some(r) => break r,
            None => guard = started.1.wait(guard).unwrap_or_else(|e| e.into_inner()),
        }
    };
    drop(guard);
    match result {
        Ok(()) => Ok(handle),
        Err(e) => {
            let _ = handle.join();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_hook_stops_the_thread_before_its_work() {
        use std::sync::mpsc;
        let (tx, rx) = mpsc::channel();
        let err = spawn(
            "t",
            Box::new(|| Err(io::Error::other("refused"))),
            move || {
                let _ = tx.send(());
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "refused");
        assert!(rx.recv().is_err(), "the work never ran");

        let (tx, rx) = mpsc::channel();
        spawn("t", no_hook(), move || tx.send(()).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(rx.recv().is_ok());

        let err = spawn("t", Box::new(|| panic!("hook")), || {}).unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }
}
