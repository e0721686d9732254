//! Confinement: every thread of the VMM runs under a seccomp-bpf filter that allows only the
//! system calls its kind of thread makes, so code that a guest manages to subvert (through a
//! device bug, say) cannot open files, start programs or reach the network. Each thread
//! installs its own filter as it starts, before it handles anything a guest controls.
//!
//! The allow-lists were generated from what the threads really call (every guest test run
//! under `strace -f`, calls grouped by thread name), then kept tight: see `linux.rs`, and
//! `docs/security.md` for the threat model. On other hosts this module does nothing.

#[cfg(target_os = "linux")]
mod linux;

use std::fmt;
use std::io;

/// What happens when a confined thread makes a call its filter does not allow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// No filters.
    Off,
    /// The call goes ahead and the kernel logs it (audit / dmesg): for building allow-lists.
    Log,
    /// The whole process is killed (SIGSYS) before the call runs.
    #[default]
    Kill,
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Off => "off",
            SeccompMode::Log => "log",
            SeccompMode::Kill => "kill",
        })
    }
}

/// The kinds of thread the VMM runs, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs one vCPU: KVM_RUN, and the devices on the PIO/MMIO buses it exits to.
    Vcpu,
    /// The device event loop: virtio queues, disk and network I/O, interrupts.
    Devices,
    /// The userspace irqchip's local APIC timers.
    ApicTimer,
    /// Moves a console's buffered output to the host (stdout or a file already open).
    ConsoleOutput,
    /// Forwards the terminal's input to a console device.
    ConsoleInput,
    /// Takes SIGINT, SIGTERM and SIGHUP and stops the VM.
    Signals,
    /// The CLI's main thread once the VM runs: waits, tears down, restores the terminal.
    Main,
    /// Serves the API socket (`--api-socket`): accepts, reads and answers its clients.
    Api,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Vcpu,
        ThreadKind::Devices,
        ThreadKind::ApicTimer,
        ThreadKind::ConsoleOutput,
        ThreadKind::ConsoleInput,
        ThreadKind::Signals,
        ThreadKind::Main,
        ThreadKind::Api,
    ];
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Devices => "device",
            ThreadKind::ApicTimer => "APIC timer",
            ThreadKind::ConsoleOutput => "console output",
            ThreadKind::ConsoleInput => "console input",
            ThreadKind::Signals => "signal",
            ThreadKind::Main => "main",
            ThreadKind::Api => "API",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this kernel cannot confine threads with seccomp in mode {mode} ({detail}); \
         run with --seccomp off to go without confinement"
    )]
    Unsupported { mode: SeccompMode, detail: String },
    #[error("cannot build the seccomp filter of the {kind} thread: {detail}")]
    Build { kind: ThreadKind, detail: String },
    #[error("cannot install the seccomp filter of the {kind} thread")]
    Install {
        kind: ThreadKind,
        #[source]
        source: io::Error,
    },
}

/// Checks, before any thread starts, that this kernel can enforce `mode`.
pub fn check(mode: SeccompMode) -> Result<(), Error> {
    match mode {
        SeccompMode::Off => Ok(()),
        #[cfg(target_os = "linux")]
        _ => linux::check(mode),
        #[cfg(not(target_os = "linux"))]
        _ => Ok(()),
    }
}

/// Confines the calling thread as a thread of kind `kind`. Filters are per thread and cannot
/// be removed; threads this one starts later inherit its filter.
pub fn confine(kind: ThreadKind, mode: SeccompMode) -> Result<(), Error> {
    match mode {
        SeccompMode::Off => Ok(()),
        #[cfg(target_os = "linux")]
        _ => linux::confine(kind, mode),
        #[cfg(not(target_os = "linux"))]
        _ => {
            let _ = kind;
            Ok(())
        }
    }
}

/// [`confine`] as a hook for threads the `devices` crate starts.
pub fn on_start(kind: ThreadKind, mode: SeccompMode) -> devices::thread::OnStart {
    Box::new(move || confine(kind, mode).map_err(io::Error::other))
}

/// Starts a thread named `name` confined as `kind` before it runs `work`; fails (and `work`
/// never runs) if the filter cannot be installed.
pub fn spawn<F>(
    name: &str,
    kind: ThreadKind,
    mode: SeccompMode,
    work: F,
) -> io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    devices::thread::spawn(name, on_start(kind, mode), work)
}

/// How many system calls the filter of `kind` allows (for documentation and tests); zero
/// where there are no filters.
pub fn allowed_calls(kind: ThreadKind) -> usize {
    #[cfg(target_os = "linux")]
    return linux::rules(kind).len();
    #[cfg(not(target_os = "linux"))]
    {
        let _ = kind;
        0
    }
}
