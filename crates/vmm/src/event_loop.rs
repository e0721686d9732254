//! The device event loop: one thread that waits (epoll) on the devices' eventfds and runs
//! each one's handler, so device work never happens on a vCPU thread.
//!
//! Virtio queue notifications arrive here: KVM signals a queue's eventfd directly when the
//! guest writes QueueNotify (ioeventfd), or the transport signals it when the hypervisor has
//! no such feature.

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Runs when its descriptor becomes readable.
pub(crate) type Handler = Box<dyn FnMut() + Send>;

/// Handlers collected before the loop starts.
#[derive(Default)]
pub(crate) struct EventLoopBuilder {
    handlers: Vec<(RawFd, EventSet, Handler)>,
}

pub(crate) struct EventLoop {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoopBuilder {
    /// Calls `handler` whenever `fd` is readable. The handler must consume the event (read
    /// the eventfd), or it runs again at once.
    pub fn add(&mut self, fd: RawFd, handler: Handler) {
        self.handlers.push((fd, EventSet::IN, handler));
    }

    /// Calls `handler` when `fd` becomes readable again (edge-triggered): for sources the
    /// handler may leave unread on purpose (a TAP whose frames have no guest buffer yet).
    pub fn add_edge(&mut self, fd: RawFd, handler: Handler) {
        self.handlers
            .push((fd, EventSet::IN | EventSet::EDGE_TRIGGERED, handler));
    }

    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// Starts the loop thread.
    pub fn start(self) -> std::io::Result<EventLoop> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_token = self.handlers.len() as u64;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_token),
        )?;
        for (i, (fd, events, _)) in self.handlers.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                *fd,
                EpollEvent::new(*events, i as u64),
            )?;
        }
        let mut handlers: Vec<Handler> = self.handlers.into_iter().map(|(_, _, h)| h).collect();
        let thread = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || {
                let mut events = vec![EpollEvent::default(); 32];
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::error!("device event loop stopped: {e}");
                            return;
                        }
                    };
                    for ev in &events[..n] {
                        match ev.data() {
                            t if t == stop_token => return,
                            t => {
                                if let Some(h) = handlers.get_mut(t as usize) {
                                    h();
                                }
                            }
                        }
                    }
                }
            })?;
        Ok(EventLoop {
            stop,
            thread: Some(thread),
        })
    }
}

impl EventLoop {
    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}
