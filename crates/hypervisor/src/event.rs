//! [`Event`]: a wake-up one thread sends another through a file descriptor, so it can be
//! waited on with `poll(2)` beside sockets and terminals, on every host.
//!
//! On Linux it is an eventfd, which KVM can also signal itself (ioeventfd) or watch (irqfd);
//! elsewhere (macOS) a non-blocking pipe. Both made by vmm-sys-util. Signalling never blocks:
//! a pipe that is full already holds a wake-up, which is all a reader needs to know.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

#[cfg(not(target_os = "linux"))]
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
#[cfg(target_os = "linux")]
use vmm_sys_util::eventfd::EventFd;

/// A level-triggered wake-up: readable from the first [`Event::signal`] until
/// [`Event::drain`].
#[derive(Debug)]
pub struct Event {
    #[cfg(target_os = "linux")]
    fd: EventFd,
    #[cfg(not(target_os = "linux"))]
    rx: EventConsumer,
    #[cfg(not(target_os = "linux"))]
    tx: EventNotifier,
}

impl Event {
    #[cfg(target_os = "linux")]
    pub fn new() -> io::Result<Self> {
        Ok(Event {
            fd: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new() -> io::Result<Self> {
        let (rx, tx) = new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        Ok(Event { rx, tx })
    }

    /// Wakes whoever waits on this event. Never blocks.
    pub fn signal(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        let r = self.fd.write(1);
        #[cfg(not(target_os = "linux"))]
        let r = self.tx.notify();
        match r {
            // A full pipe (or a saturated counter) is already signalled.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            r => r,
        }
    }

    /// Consumes every pending signal; true if there was one.
    pub fn drain(&self) -> io::Result<bool> {
        #[cfg(target_os = "linux")]
        let r = self.fd.read().map(|_| true);
        #[cfg(not(target_os = "linux"))]
        let r = {
            // Every notification is one 8-byte write: read them until the pipe is empty.
            let mut any = false;
            loop {
                match self.rx.consume() {
                    Ok(()) => any = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(any),
                    Err(e) => break Err(e),
                }
            }
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            r => r,
        }
    }

    /// Blocks until the event is signalled (then drains it) or `timeout` passes; returns
    /// whether it was signalled.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        if poll_readable(&[self.as_raw_fd()], timeout)?.first() == Some(&true) {
            self.drain()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A second handle on the same event (signalling either wakes waiters on both).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Event {
            #[cfg(target_os = "linux")]
            fd: self.fd.try_clone()?,
            #[cfg(not(target_os = "linux"))]
            rx: self.rx.try_clone()?,
            #[cfg(not(target_os = "linux"))]
            tx: self.tx.try_clone()?,
        })
    }

    /// The eventfd underneath, for KVM's irqfd and ioeventfd.
    #[cfg(target_os = "linux")]
    pub fn eventfd(&self) -> &EventFd {
        &self.fd
    }
}

impl AsRawFd for Event {
    /// The descriptor that becomes readable when the event is signalled.
    fn as_raw_fd(&self) -> RawFd {
        #[cfg(target_os = "linux")]
        return self.fd.as_raw_fd();
        #[cfg(not(target_os = "linux"))]
        return self.rx.as_raw_fd();
    }
}

/// Waits with `poll(2)` until at least one of `fds` is readable (or hung up), or `timeout`
/// passes, retrying on EINTR; returns which ones are. `None` waits for ever.
pub fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_wakes_a_waiter_once() {
        let e = Event::new().unwrap();
        assert!(!e.wait(Some(Duration::ZERO)).unwrap());
        e.signal().unwrap();
        e.signal().unwrap();
        let other = e.try_clone().unwrap();
        assert!(other.wait(Some(Duration::from_secs(1))).unwrap());
        assert!(!e.drain().unwrap(), "both signals consumed");
    }

    #[test]
    fn signal_from_another_thread() {
        let e = std::sync::Arc::new(Event::new().unwrap());
        let e2 = e.clone();
        let t = std::thread::spawn(move || e2.signal().unwrap());
        assert!(e.wait(None).unwrap());
        t.join().unwrap();
    }
}
