//! The serial console on the host terminal: raw mode while the VM runs (restored on every way
//! out, panics included), and a thread that forwards stdin to the guest's UART.
//!
//! Escape: Ctrl-A then `x` stops the VM; Ctrl-A Ctrl-A sends one Ctrl-A.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::ConsoleInput;
use hypervisor::Event;
use vmm::seccomp::{self, SeccompMode, ThreadKind};
use vmm::{Outcome, StopHandle};

const CTRL_A: u8 = 0x01;

/// The terminal settings to put back, shared with the panic hook.
static SAVED_TERMIOS: OnceLock<libc::termios> = OnceLock::new();

fn restore_terminal() {
    if let Some(t) = SAVED_TERMIOS.get() {
        // SAFETY: tcsetattr on stdin with a termios read from it earlier.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
    }
}

/// Puts stdin in raw mode if it is a terminal; returns whether it did.
fn enter_raw_mode() -> io::Result<bool> {
    // SAFETY: isatty/tcgetattr/tcsetattr on stdin with a properly sized termios.
    unsafe {
        if libc::isatty(libc::STDIN_FILENO) != 1 {
            return Ok(false);
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Once per process: a reboot attaches again, to the same terminal settings.
        if SAVED_TERMIOS.set(t).is_ok() {
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                hook(info);
            }));
        }
        let mut raw = t;
        libc::cfmakeraw(&mut raw);
        // Keep output post-processing so host-side messages still start at column 0.
        raw.c_oflag |= libc::OPOST;
        if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(true)
}

pub struct Console {
    raw: bool,
    done: Arc<Event>,
    thread: Option<JoinHandle<()>>,
}

impl Console {
    /// Puts the terminal in raw mode and forwards stdin to `input` (a console device).
    /// The thread is confined as `seccomp` says.
    pub fn attach(
        input: Arc<Mutex<dyn ConsoleInput>>,
        stop: StopHandle,
        seccomp: SeccompMode,
    ) -> anyhow::Result<Self> {
        let raw = enter_raw_mode()?;
        let done = Arc::new(Event::new()?);
        let d = done.clone();
        let thread = seccomp::spawn("console", ThreadKind::ConsoleInput, seccomp, move || {
            forward_stdin(&*input, &stop, &d)
        });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                if raw {
                    restore_terminal();
                }
                return Err(e.into());
            }
        };
        Ok(Console {
            raw,
            done,
            thread: Some(thread),
        })
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.done.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.raw {
            restore_terminal();
        }
    }
}

/// Waits for stdin or `done`; forwards input to the console device, handling the escape key.
fn forward_stdin(input: &Mutex<dyn ConsoleInput>, stop: &StopHandle, done: &Event) {
    let stdin = io::stdin();
    let mut escape = false;
    let mut buf = [0u8; 64];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: stdin.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: done.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid descriptors.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        // SAFETY: read into a buffer we own.
        let got = unsafe { libc::read(stdin.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            return; // EOF or error: no more input, the guest keeps running
        }
        let mut out = Vec::with_capacity(got as usize);
        for &b in &buf[..got as usize] {
            match (escape, b) {
                (false, CTRL_A) => escape = true,
                (true, b'x') | (true, b'X') => {
                    stop.stop(Outcome::Stopped("Ctrl-A x pressed".into()));
                    return;
                }
                (true, _) => {
                    escape = false;
                    out.push(b);
                }
                (false, _) => out.push(b),
            }
        }
        let mut rest = &out[..];
        while !rest.is_empty() {
            let n = devices::lock(input).queue_input(rest);
            rest = &rest[n..];
            if n == 0 {
                // FIFO full: wait for the guest to drain it, unless the VM is ending.
                let mut pfd = libc::pollfd {
                    fd: done.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one valid descriptor.
                if unsafe { libc::poll(&mut pfd, 1, 0) } > 0 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}
