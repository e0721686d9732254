//! Console output that never blocks the thread producing it.
//!
//! A vCPU (serial port, MMIO console) or the device thread (virtio-console) only copies bytes
//! into a bounded buffer; a thread of its own writes them to the host side (a terminal, a pipe,
//! a file), where a write may block for as long as the reader likes. So a terminal that stops
//! reading, or a pipe into a process that never reads, cannot stall a vCPU or keep the VM
//! from stopping.
//!
//! Policy when the buffer is full: the device's transmitter stalls, as a real UART's does when
//! its FIFO is full. The 16550 reports its transmitter busy and holds back its THR-empty
//! interrupt; the MMIO console clears its output-ready bit; virtio-console leaves the guest's
//! buffers unused. [`ConsoleOutput::on_room`] tells the device when the buffer has room again.
//! Bytes are lost only when a guest writes into a full transmitter regardless (counted, and
//! logged), or when the VM stops while the host side still refuses them (after a grace
//! period of [`FLUSH_GRACE`]).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{lock, thread};

/// What the buffer holds at most.
pub const CAPACITY: usize = 64 * 1024;
/// How long stopping waits for the writer threads to hand the last bytes to the host.
pub const FLUSH_GRACE: Duration = Duration::from_millis(300);
/// The most the writer thread hands to the host in one write.
const CHUNK: usize = 16 * 1024;

/// A handle on one output stream; clones share it. When the last clone goes, the writer
/// thread writes what is left and ends.
#[derive(Clone)]
pub struct ConsoleOutput {
    shared: Arc<Shared>,
    _close: Arc<CloseOnDrop>,
}

struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        lock(&self.0.state).closed = true;
        self.0.changed.notify_all();
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when bytes arrive, when they have been written, and on close.
    changed: Condvar,
}

struct State {
    /// Output nobody wants (`--serial none`): taken and dropped, not counted as lost.
    discard: bool,
    buf: VecDeque<u8>,
    /// Bytes taken by the writer thread and not yet accepted by the host.
    in_flight: usize,
    closed: bool,
    /// The writer thread ended (host side failed, or closed and drained).
    done: bool,
    /// A producer found the buffer full and wants to hear when there is room.
    waiting: bool,
    on_room: Option<Arc<dyn Fn() + Send + Sync>>,
    lost: u64,
    writer: Option<JoinHandle<()>>,
}

impl ConsoleOutput {
    /// Starts a writer thread named `name` that moves buffered bytes to `dest`.
    pub fn spawn(dest: Box<dyn Write + Send>, name: &str) -> io::Result<Self> {
        Self::spawn_with(dest, name, thread::no_hook())
    }

    /// [`ConsoleOutput::spawn`], with `on_start` run first on the writer thread (where the
    /// VMM confines it).
    pub fn spawn_with(
        dest: Box<dyn Write + Send>,
        name: &str,
        on_start: thread::OnStart,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                discard: false,
                buf: VecDeque::new(),
                in_flight: 0,
                closed: false,
                done: false,
                waiting: false,
                on_room: None,
                lost: 0,
                writer: None,
            }),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        let handle = thread::spawn(name, on_start, move || s.write_out(dest))?;
        lock(&shared.state).writer = Some(handle);
        Ok(ConsoleOutput {
            _close: Arc::new(CloseOnDrop(shared.clone())),
            shared,
        })
    }

    /// Output that goes nowhere, with no thread.
    pub fn discard() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                discard: true,
                buf: VecDeque::new(),
                in_flight: 0,
                closed: true,
                done: true,
                waiting: false,
                on_room: None,
                lost: 0,
                writer: None,
            }),
            changed: Condvar::new(),
        });
        ConsoleOutput {
            _close: Arc::new(CloseOnDrop(shared.clone())),
            shared,
        }
    }

    /// Calls `f` (on the writer thread) when the buffer has room again after a producer found
    /// it full.
    pub fn on_room(&self, f: Arc<dyn Fn() + Send + Sync>) {
        lock(&self.shared.state).on_room = Some(f);
    }

    /// Arms the [`ConsoleOutput::on_room`] callback without a write: for a device that
    /// stalled before the buffer was quite full (the 16550 holds back its THR-empty interrupt
    /// once it cannot take a FIFO's worth).
    pub fn want_room(&self) {
        lock(&self.shared.state).waiting = true;
    }

    /// Free space in the buffer (unbounded once nothing will be written any more).
    pub fn room(&self) -> usize {
        let s = lock(&self.shared.state);
        if s.done {
            return usize::MAX;
        }
        CAPACITY.saturating_sub(s.buf.len())
    }

    /// Buffers as much of `bytes` as fits and returns how much that was; never blocks. A short
    /// count arms the [`ConsoleOutput::on_room`] callback.
    pub fn try_write(&self, bytes: &[u8]) -> usize {
        let mut s = lock(&self.shared.state);
        if s.done {
            // Nobody will write them: the host side is gone or the VM stopped.
            if !s.discard {
                s.lost += bytes.len() as u64;
            }
            return bytes.len();
        }
        let n = bytes.len().min(CAPACITY.saturating_sub(s.buf.len()));
        s.buf.extend(&bytes[..n]);
        if n < bytes.len() {
            s.waiting = true;
        }
        drop(s);
        if n > 0 {
            self.shared.changed.notify_all();
        }
        n
    }

    /// Bytes taken but not yet handed to the host side (buffered or being written).
    pub fn pending(&self) -> usize {
        let s = lock(&self.shared.state);
        s.buf.len() + s.in_flight
    }

    /// Counts bytes a guest wrote into a full transmitter; logs the first.
    pub fn lose(&self, n: usize) {
        let first = {
            let mut s = lock(&self.shared.state);
            s.lost += n as u64;
            s.lost == n as u64
        };
        // Not under the lock: the log may be written through a ConsoleOutput too.
        if first {
            log::warn!("console output full: the guest wrote past its stalled transmitter");
        }
    }

    /// Bytes lost so far (written into a full transmitter, or left when the VM stopped).
    pub fn lost(&self) -> u64 {
        lock(&self.shared.state).lost
    }

    /// Ends the stream: waits until the writer thread has handed everything to the host, or
    /// `deadline` passes (a host side that does not read); then the thread is left to end on
    /// its own, and what it still holds is counted as lost. Later writes are dropped.
    pub fn finish(&self, deadline: Instant) {
        let mut s = lock(&self.shared.state);
        s.closed = true;
        self.shared.changed.notify_all();
        while !s.done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let stuck = (s.buf.len() + s.in_flight) as u64;
                s.lost += stuck;
                s.buf.clear();
                s.done = true;
                // Detached: it ends when its write returns, or with the process.
                s.writer.take();
                drop(s);
                // Not under the lock: the log may go through this very output (the CLI's
                // messages), which is done now and drops it.
                if stuck > 0 {
                    log::warn!("console output: {stuck} bytes not taken by the host side");
                }
                return;
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let writer = s.writer.take();
        drop(s);
        if let Some(w) = writer {
            let _ = w.join();
        }
    }
}

impl Shared {
    /// The writer thread: blocking writes to the host, outside the lock.
    fn write_out(&self, mut dest: Box<dyn Write + Send>) {
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            let mut s = lock(&self.state);
            while s.buf.is_empty() && !s.closed {
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.buf.is_empty() || s.done {
                s.done = true;
                drop(s);
                self.changed.notify_all();
                let _ = dest.flush();
                return;
            }
            let n = s.buf.len().min(CHUNK);
            chunk.clear();
            chunk.extend(s.buf.drain(..n));
            s.in_flight = n;
            let wake = std::mem::take(&mut s.waiting).then(|| s.on_room.clone());
            drop(s);
            if let Some(Some(f)) = wake {
                f();
            }
            let result = dest.write_all(&chunk).and_then(|()| dest.flush());
            let mut s = lock(&self.state);
            s.in_flight = 0;
            if let Err(e) = result {
                // The host side is gone (closed pipe, full disk): the guest carries on.
                s.lost += (n + s.buf.len()) as u64;
                s.buf.clear();
                s.done = true;
                drop(s);
                self.changed.notify_all();
                log::debug!("console output stopped: {e}");
                return;
            }
            drop(s);
            self.changed.notify_all();
        }
    }
}

impl Write for ConsoleOutput {
    /// Never blocks and never fails: what does not fit is counted as lost (for callers, like
    /// a logger, that cannot wait; the devices use [`ConsoleOutput::try_write`]).
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.try_write(bytes);
        if n < bytes.len() {
            lock(&self.shared.state).lost += (bytes.len() - n) as u64;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Switch = Arc<(Mutex<bool>, Condvar)>;
    type Got = Arc<Mutex<Vec<u8>>>;

    /// A host side that takes nothing until released.
    struct Gate {
        open: Switch,
        got: Got,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (m, c) = &*self.open;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn gate() -> (Gate, Switch, Got) {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = Gate {
            open: open.clone(),
            got: got.clone(),
        };
        (g, open, got)
    }

    #[test]
    fn a_host_that_does_not_read_never_blocks_the_producer() {
        let (g, open, got) = gate();
        let out = ConsoleOutput::spawn(Box::new(g), "test-out").unwrap();
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        out.on_room(Arc::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }));
        let t = Instant::now();
        let mut taken = 0;
        for _ in 0..(3 * CAPACITY / 1000) {
            taken += out.try_write(&[b'x'; 1000]);
        }
        assert!(t.elapsed() < Duration::from_secs(1), "never blocked");
        // The buffer plus at most one chunk in the writer's hands.
        assert!(taken <= CAPACITY + CHUNK, "{taken}");
        assert!(out.room() < 1000);
        // The host reads again: everything taken arrives, in order, and producers hear of it.
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        out.finish(Instant::now() + Duration::from_secs(5));
        assert_eq!(got.lock().unwrap().len(), taken);
        assert!(woken.load(Ordering::SeqCst) >= 1);
        assert_eq!(out.lost(), 0);
    }

    #[test]
    fn finishing_gives_up_on_a_stuck_host_within_the_grace_period() {
        let (g, _open, _got) = gate();
        let out = ConsoleOutput::spawn(Box::new(g), "test-out").unwrap();
        assert_eq!(out.try_write(b"hello"), 5);
        let t = Instant::now();
        out.finish(Instant::now() + Duration::from_millis(100));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(out.lost(), 5, "counted, not silently dropped");
        // Writes after the end are dropped without blocking, and counted.
        assert_eq!(out.try_write(b"more"), 4);
        assert_eq!(out.lost(), 9);
    }

    #[test]
    fn the_writer_thread_ends_with_the_last_handle() {
        let got = Arc::new(Mutex::new(Vec::new()));
        struct Collect(Arc<Mutex<Vec<u8>>>);
        impl Write for Collect {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = ConsoleOutput::spawn(Box::new(Collect(got.clone())), "test-out").unwrap();
        let shared = out.shared.clone();
        out.clone().try_write(b"bye");
        drop(out);
        let t = Instant::now();
        while !lock(&shared.state).done {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "writer thread still running"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*got.lock().unwrap(), b"bye");
    }
}
