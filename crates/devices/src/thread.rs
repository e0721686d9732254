//! Threads the devices start for themselves (a console's writer, the APIC timer), with a hook
//! the VMM runs first on each: that is where it confines the thread (seccomp on Linux) before
//! the thread touches anything a guest controls. The devices never learn what the hook does.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

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
    let (started_tx, started_rx) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let started = on_start();
            let ok = started.is_ok();
            let _ = started_tx.send(started);
            if ok {
                work();
            }
        })?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        // The hook panicked.
        Err(_) => {
            let _ = handle.join();
            Err(io::Error::other(format!("thread {name} failed to start")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_hook_stops_the_thread_before_its_work() {
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
    }
}
