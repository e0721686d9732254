//! The API thread: one `poll(2)` loop over the listening socket and its clients, each client
//! with a size and a time limit, at most [`Limits::max_clients`] at a time. Nothing here
//! waits on a client: reads and writes are non-blocking, so a slow, silent or hostile client
//! costs a slot until its deadline and nothing else. The thread touches the VM only through
//! its [`VmController`] (a pause waits for the vCPUs to park; nothing waits for this thread).
//! A reboot builds a new VM; [`ApiServer::serve_vm`] hands the server its controller, so the
//! same socket serves every boot.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use hypervisor::Event;

use super::http::{self, Parsed, Response};
use crate::control::VmController;
use crate::seccomp::{self, SeccompMode, ThreadKind};

/// How much the server gives each client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the socket's backlog until a slot frees.
    pub max_clients: usize,
    /// Time from connecting to having sent the whole request (408 after it) and to having
    /// taken the whole response.
    pub timeout: Duration,
    /// Largest request body.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: 16,
            timeout: Duration::from_secs(5),
            max_body: 16 * 1024,
        }
    }
}

/// A bound, listening API socket (bound before the VM is built, so a bad path fails early).
pub struct Listener {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl Listener {
    /// Binds `path` with owner-only permissions. A path that exists is an error: it is never
    /// replaced (it may be another VMM's live socket).
    pub fn bind(path: &Path) -> io::Result<Listener> {
        if path.symlink_metadata().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists (another VMM's socket, or a stale one: remove it first)",
                    path.display()
                ),
            ));
        }
        // Created owner-only from the start, so no other user can connect in between.
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above; restores the mask.
        unsafe { libc::umask(old) };
        let listener = bound?;
        listener.set_nonblocking(true)?;
        let owned = Listener {
            listener: Some(listener),
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(owned)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes the socket file, on the thread that owns the [`Listener`] (the API thread itself
/// may not `unlink`).
impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The running API thread; [`ApiServer::stop`] (or drop) ends it and removes the socket.
pub struct ApiServer {
    wake: Arc<Event>,
    /// The VM being served: replaced after a reboot.
    current: Arc<Mutex<VmController>>,
    thread: Option<JoinHandle<()>>,
    /// Dropped (the socket file removed) after the thread ended.
    socket: Option<Listener>,
}

impl ApiServer {
    /// Serves `vm` on `listener` from a thread named `api`, confined as an API thread.
    pub fn start(
        mut listener: Listener,
        vm: VmController,
        limits: Limits,
        mode: SeccompMode,
    ) -> io::Result<ApiServer> {
        let wake = Arc::new(Event::new()?);
        let w = wake.clone();
        let socket = listener.listener.take().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the listener was already used")
        })?;
        let current = Arc::new(Mutex::new(vm));
        let c = current.clone();
        let thread = seccomp::spawn("api", ThreadKind::Api, mode, move || {
            serve(&socket, &c, limits, &w);
        })?;
        Ok(ApiServer {
            wake,
            current,
            thread: Some(thread),
            socket: Some(listener),
        })
    }

    /// Serves `vm` from now on (the VM a reboot built); a request being answered finishes
    /// with the VM it started with.
    pub fn serve_vm(&self, vm: VmController) {
        *devices::lock(&self.current) = vm;
    }

    /// Ends the thread, waits for it, and removes the socket file.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.wake.signal();
            let _ = t.join();
        }
        self.socket = None;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Client {
    stream: UnixStream,
    received: Vec<u8>,
    /// The response once there is one; then the client is only written to.
    reply: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

impl Client {
    fn answer(&mut self, r: &Response) {
        self.reply = Some((r.to_bytes(), 0));
    }

    /// Reads and drops what the client sent beyond its request (a little, without waiting):
    /// closing a Unix socket with unread data resets the connection, and the client would
    /// lose its answer.
    fn drain(&mut self) {
        let mut chunk = [0u8; 4096];
        for _ in 0..16 {
            match self.stream.read(&mut chunk) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Reads what is there; false if the client is done (closed, or an error).
    fn read(&mut self, vm: &VmController, limits: &Limits) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            if self.received.len() > http::MAX_HEAD + limits.max_body {
                break;
            }
        }
        match http::parse(&self.received, limits.max_body) {
            Parsed::Incomplete if self.received.len() > http::MAX_HEAD + limits.max_body => {
                self.answer(&Response::error(413, "request too large"))
            }
            Parsed::Incomplete => {}
            Parsed::Request(req) => self.answer(&super::handle(vm, &req)),
            Parsed::Refused(r) => self.answer(&r),
        }
        true
    }

    /// Writes what the socket takes; false once all is written or the client is gone.
    fn write(&mut self) -> bool {
        let Some((bytes, at)) = &mut self.reply else {
            return true;
        };
        while *at < bytes.len() {
            match self.stream.write(&bytes[*at..]) {
                Ok(0) => return false,
                Ok(n) => *at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.drain();
        false
    }
}

/// Accepts one connection, non-blocking and close-on-exec.
fn accept(listener: &UnixListener) -> io::Result<UnixStream> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::FromRawFd;
        // SAFETY: accept4 on our listening socket; the descriptor it returns is ours.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(unsafe { UnixStream::from_raw_fd(fd) })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let (s, _) = listener.accept()?;
        s.set_nonblocking(true)?;
        Ok(s)
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn serve(listener: &UnixListener, current: &Mutex<VmController>, limits: Limits, wake: &Event) {
    let mut clients: Vec<Client> = Vec::new();
    loop {
        let now = Instant::now();
        // A full house stops taking connections (they wait in the backlog): a negative
        // descriptor is skipped by poll.
        let listening = if clients.len() < limits.max_clients {
            listener.as_raw_fd()
        } else {
            -1
        };
        let mut fds = vec![
            pollfd(wake.as_raw_fd(), libc::POLLIN),
            pollfd(listening, libc::POLLIN),
        ];
        for c in &clients {
            let events = if c.reply.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            };
            fds.push(pollfd(c.stream.as_raw_fd(), events));
        }
        let timeout = clients
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .map_or(-1, |d| d.as_millis().min(60_000) as libc::c_int + 1);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("API socket: poll failed, the API stops: {e}");
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        // Cloned, so that no lock is held while a request (a pause) waits for the vCPUs.
        let vm = devices::lock(current).clone();
        // Clients first (their indices match `fds[2..]`), then new connections.
        let mut keep = Vec::with_capacity(clients.len());
        for (mut c, pfd) in clients.drain(..).zip(&fds[2..]) {
            let mut alive = true;
            if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                && c.reply.is_none()
            {
                alive = c.read(&vm, &limits);
            }
            if alive && c.reply.is_some() {
                alive = c.write();
            }
            if alive && Instant::now() >= c.deadline {
                if c.reply.is_none() {
                    c.answer(&Response::error(
                        408,
                        format!(
                            "no complete request within {} ms",
                            limits.timeout.as_millis()
                        ),
                    ));
                    c.write();
                }
                alive = false;
            }
            if alive {
                keep.push(c);
            }
        }
        clients = keep;
        if fds[1].revents != 0 {
            while clients.len() < limits.max_clients {
                let stream = match accept(listener) {
                    Ok(s) => s,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("API socket: accept failed: {e}");
                        break;
                    }
                };
                let c = Client {
                    stream,
                    received: Vec::new(),
                    reply: None,
                    deadline: Instant::now() + limits.timeout,
                };
                clients.push(c);
            }
        }
    }
}
