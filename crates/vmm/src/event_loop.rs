//! The device event loop: one thread that waits (`poll(2)`, the same on Linux and macOS) on
//! the devices' descriptors and runs each one's handler, so device work never happens on a
//! vCPU thread.
//!
//! Virtio queue notifications arrive here as [`Event`]s: KVM signals a queue's event directly
//! when the guest writes QueueNotify (ioeventfd), or the transport signals it when the
//! hypervisor has no such feature. `poll` rather than epoll/kqueue: a VM has a handful of
//! descriptors, and one portable call keeps the loop the same on every host.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use devices::lock;
use hypervisor::Event;

use crate::seccomp::{self, SeccompMode, ThreadKind};

/// What a handler tells the loop about its descriptor after it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Wake the handler whenever the descriptor is readable.
    Readable,
    /// The descriptor is still readable but the handler cannot take more now (a TAP whose
    /// frames have no guest buffer yet): skip it until some other handler has run.
    Blocked,
}

/// Runs when its descriptor becomes readable.
pub(crate) type Handler = Box<dyn FnMut() -> Interest + Send>;

/// Handlers collected before the loop starts.
#[derive(Default)]
pub(crate) struct EventLoopBuilder {
    handlers: Vec<(RawFd, Handler)>,
}

pub(crate) struct EventLoop {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

/// How the owner stops or pauses the loop thread: set the request, then signal `wake`.
struct Control {
    wake: Event,
    state: Mutex<ControlState>,
    changed: Condvar,
}

#[derive(Default)]
struct ControlState {
    stop: bool,
    pause: bool,
    /// The loop thread is parked: no handler runs until the pause is lifted.
    parked: bool,
    /// The loop thread has ended.
    ended: bool,
}

impl Control {
    /// On the loop thread, after `wake` fired: false if it must end; parks while paused.
    fn check(&self) -> bool {
        let _ = self.wake.drain();
        let mut s = lock(&self.state);
        while s.pause && !s.stop {
            s.parked = true;
            self.changed.notify_all();
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked = false;
        !s.stop
    }

    fn end(&self) {
        lock(&self.state).ended = true;
        self.changed.notify_all();
    }
}

impl EventLoopBuilder {
    /// Calls `handler` whenever `fd` is readable. The handler must consume what made it
    /// readable (drain the event) or return [`Interest::Blocked`], or it runs again at once.
    pub fn add(&mut self, fd: RawFd, handler: Handler) {
        self.handlers.push((fd, handler));
    }

    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// Starts the loop thread, confined as a device thread.
    pub fn start(self, seccomp: SeccompMode) -> io::Result<EventLoop> {
        let control = Arc::new(Control {
            wake: Event::new()?,
            state: Mutex::default(),
            changed: Condvar::new(),
        });
        let mut fds: Vec<libc::pollfd> = std::iter::once(control.wake.as_raw_fd())
            .chain(self.handlers.iter().map(|(fd, _)| *fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut handlers: Vec<Handler> = self.handlers.into_iter().map(|(_, h)| h).collect();
        let c = control.clone();
        let thread = seccomp::spawn("devices", ThreadKind::Devices, seccomp, move || {
            run(&mut fds, &mut handlers, &c);
            c.end();
        })?;
        Ok(EventLoop {
            control,
            thread: Some(thread),
        })
    }
}

/// `fds[0]` is the control event, `fds[i + 1]` belongs to `handlers[i]`.
fn run(fds: &mut [libc::pollfd], handlers: &mut [Handler], control: &Control) {
    loop {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("device event loop stopped: {e}");
            return;
        }
        if fds[0].revents != 0 && !control.check() {
            return;
        }
        for i in 0..handlers.len() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            fds[i + 1].revents = 0;
            match handlers[i]() {
                // A negative descriptor is skipped by poll.
                Interest::Blocked => fds[i + 1].fd = !fds[i + 1].fd,
                // This may have unblocked the others (a guest posting buffers).
                Interest::Readable => {
                    for pfd in &mut fds[1..] {
                        if pfd.fd < 0 {
                            pfd.fd = !pfd.fd;
                        }
                    }
                }
            }
        }
    }
}

impl EventLoop {
    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            lock(&self.control.state).stop = true;
            self.control.changed.notify_all();
            let _ = self.control.wake.signal();
            let _ = t.join();
        }
    }

    /// A handle that pauses and resumes the loop from another thread.
    pub fn pauser(&self) -> Pauser {
        Pauser(self.control.clone())
    }

    /// See [`Pauser::pause`].
    pub fn pause(&self) {
        self.pauser().pause()
    }

    pub fn resume(&self) {
        self.pauser().resume()
    }
}

/// Pauses and resumes the device loop (the VM's controller holds one).
#[derive(Clone)]
pub(crate) struct Pauser(Arc<Control>);

impl Pauser {
    /// Returns once no handler runs and none will until [`Pauser::resume`]: no device
    /// touches guest memory or raises an interrupt in between. Notifications that arrive
    /// meanwhile wait in their events.
    pub fn pause(&self) {
        let c = &self.0;
        let mut s = lock(&c.state);
        s.pause = true;
        let _ = c.wake.signal();
        while !s.parked && !s.ended && !s.stop {
            s = c.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn resume(&self) {
        lock(&self.0.state).pause = false;
        self.0.changed.notify_all();
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A source that stays readable but reports Blocked is not run again until another
    /// handler has run (no busy loop), then it is.
    #[test]
    fn blocked_sources_wait_for_another_event() {
        let stuck = Event::new().unwrap();
        stuck.signal().unwrap(); // never drained: level-triggered readable for ever
        let kick = Arc::new(Event::new().unwrap());
        let stuck_runs = Arc::new(AtomicU32::new(0));
        let mut b = EventLoopBuilder::default();
        let runs = stuck_runs.clone();
        b.add(
            stuck.as_raw_fd(),
            Box::new(move || {
                runs.fetch_add(1, Ordering::SeqCst);
                Interest::Blocked
            }),
        );
        let k = kick.clone();
        b.add(
            kick.as_raw_fd(),
            Box::new(move || {
                let _ = k.drain();
                Interest::Readable
            }),
        );
        let mut l = b.start(SeccompMode::Off).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            stuck_runs.load(Ordering::SeqCst),
            1,
            "ran once, then skipped"
        );
        kick.signal().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            stuck_runs.load(Ordering::SeqCst),
            2,
            "retried after the other event"
        );
        l.stop();
    }
}
