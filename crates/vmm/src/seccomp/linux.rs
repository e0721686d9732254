//! The allow-lists, one per [`ThreadKind`], and their installation with `seccompiler`.
//!
//! Generated from what the threads really call: every guest test and CLI test run under
//! `strace -f`, calls grouped by thread name; then the same suites run again with the filters
//! in log mode, each thread's calls after its `seccomp()` compared with its list, and finally
//! in the default kill mode (docs/security.md says how). Arguments are checked where that is
//! cheap and closes a door: ioctls (only the KVM requests a running VM needs, and restoring the
//! terminal), signals (only to this process, only the kick, abort and wake-up signals), and
//! memory (no file mappings, nothing made executable).

use std::collections::BTreeMap;
use std::io;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};

use super::{Error, SeccompMode, ThreadKind};

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// What every thread needs: the allocator, locks and condition variables, clocks and sleeps,
/// logging to stderr and signalling eventfds (`write`), dropping what it owns (`close`),
/// kicking vCPUs, and the way out (thread exit, or a panic's message and abort).
const COMMON: &[i64] = &[
    // malloc falls back to the main arena when it cannot map a new one.
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_futex,
    libc::SYS_getpid,
    // std's HashMap seeds its hasher once per thread.
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_munmap,
    // A call interrupted by a kick resumes through it.
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_write,
];

/// `poll(2)`: glibc's `poll` is the `ppoll` call on arm64, which has no `poll`.
#[cfg(target_arch = "x86_64")]
const POLL: &[i64] = &[libc::SYS_poll, libc::SYS_ppoll];
#[cfg(target_arch = "aarch64")]
const POLL: &[i64] = &[libc::SYS_ppoll];

/// Calls, beyond [`COMMON`], that each kind of thread makes without argument checks.
/// Writing a snapshot directory.
const SNAPSHOT_FILES: &[i64] = &[
    libc::SYS_openat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_pwrite64,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    // A name in the destination is unlinked before its file is created (never written
    // through), and a failed snapshot removes what it wrote.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
];

fn plain_calls(kind: ThreadKind) -> Vec<i64> {
    match kind {
        // The kick's handler returns through `rt_sigreturn`; a trapped access to a
        // passed-through function's BAR is a pread/pwrite on its VFIO descriptor.
        ThreadKind::Vcpu => vec![
            libc::SYS_rt_sigreturn,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
        ],
        // Events (poll, read), disks (pread/pwrite, preadv2 with RWF_NOWAIT, io_uring for
        // reads that wait, fdatasync for flushes), TAP (read/write) and socket back ends.
        ThreadKind::Devices => [
            POLL,
            &[
                libc::SYS_read,
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_preadv2,
                libc::SYS_fdatasync,
                libc::SYS_io_uring_enter,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
            ],
        ]
        .concat(),
        // Condition variables, clocks and kicks: all in COMMON.
        ThreadKind::ApicTimer => vec![],
        // `write` to stdout or a file opened before: in COMMON.
        ThreadKind::ConsoleOutput => vec![],
        ThreadKind::ConsoleInput => [POLL, &[libc::SYS_read]].concat(),
        ThreadKind::Signals => vec![libc::SYS_rt_sigtimedwait],
        // Waits on its clients and its wake-up event (poll), takes connections (accept4,
        // non-blocking), reads requests and writes answers (recvfrom/sendto, as std's
        // sockets do). The socket was bound before; it never opens or connects.
        // `PUT /vm/snapshot` writes the snapshot on this thread: it creates the directory and
        // its two files (openat, mkdir, pwrite64, ftruncate, fsync, rename, unlink, stat).
        ThreadKind::Api => [
            POLL,
            &[libc::SYS_accept4, libc::SYS_recvfrom, libc::SYS_sendto],
            SNAPSHOT_FILES,
        ]
        .concat(),
        // Waits for the stop event (poll, read), then tears down: a socket back end removes
        // its own socket file, and the process exits.
        ThreadKind::Main => [
            POLL,
            &[
                libc::SYS_read,
                #[cfg(target_arch = "x86_64")]
                libc::SYS_unlink,
                libc::SYS_unlinkat,
                libc::SYS_exit_group,
            ],
        ]
        .concat(),
    }
}

fn cond(arg: u8, op: Op, value: u64) -> Result<Cond, BackendError> {
    Cond::new(arg, Len::Dword, op, value)
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(conds)
}

/// The ioctls of `kind`, as rules on (descriptor, request).
fn ioctl_rules(kind: ThreadKind) -> Result<Vec<SeccompRule>, BackendError> {
    use hypervisor::kvm::ioctls;
    let request = |n: u64| rule(vec![cond(1, Op::Eq, n)?]);
    let mut rules = Vec::new();
    match kind {
        ThreadKind::Vcpu => {
            // A snapshot asks each parked vCPU thread for its vCPU's state.
            for (n, _) in ioctls::vcpu_run().into_iter().chain(ioctls::vcpu_save()) {
                rules.push(request(n)?);
            }
            rules.push(request(ioctls::irq_line())?);
            rules.push(request(ioctls::signal_msi())?);
        }
        // Interrupts without irqfd: the device thread for virtio, the input thread for the
        // console devices it feeds.
        ThreadKind::Devices | ThreadKind::ConsoleInput => {
            rules.push(request(ioctls::irq_line())?);
            rules.push(request(ioctls::signal_msi())?);
        }
        // A snapshot through the API reads the in-kernel irqchip, PIT and clock.
        ThreadKind::Api => {
            for (n, _) in ioctls::vm_save() {
                rules.push(request(n)?);
            }
        }
        _ => {}
    }
    // PCI programming once the guest runs: a vCPU moves a BAR (its notify ioeventfds) or
    // unmasks an MSI-X vector, the device thread sends a vector with a new message, and the
    // owner drops the MSI lines (their irqfds and routes) when the VM goes.
    if matches!(
        kind,
        ThreadKind::Vcpu | ThreadKind::Devices | ThreadKind::Main
    ) {
        for (n, _) in ioctls::msi_routing() {
            rules.push(request(n)?);
        }
        // A passed-through function: a vCPU maps its BAR as a memory slot when the guest
        // moves it, and rewires its MSI-X vectors in VFIO; the owner resets it and unmaps
        // its DMA on stop.
        rules.push(request(ioctls::set_user_memory_region())?);
        for (n, _) in vfio::linux::running_ioctls() {
            rules.push(request(n)?);
        }
    }
    // The CLI's panic hook and its exit path put the terminal (stdin) back as it was;
    // `tcsetattr` reads it back to check.
    // `libc::Ioctl` is a u64 here but not in every libc.
    #[allow(clippy::unnecessary_cast)]
    for request in [libc::TCSETS as u64, libc::TCGETS as u64] {
        rules.push(rule(vec![
            cond(0, Op::Eq, libc::STDIN_FILENO as u64)?,
            cond(1, Op::Eq, request)?,
        ])?);
    }
    Ok(rules)
}

/// Signals a thread may send, only to threads of this process: the vCPU kick, abort (a
/// panic), and for the main thread the signal thread's wake-up.
fn tgkill_rules(kind: ThreadKind) -> Result<Vec<SeccompRule>, BackendError> {
    let pid = u64::from(std::process::id());
    let mut signals = vec![hypervisor::kvm::kick_signal(), libc::SIGABRT];
    if kind == ThreadKind::Main {
        signals.push(libc::SIGUSR2);
    }
    signals
        .into_iter()
        .map(|s| rule(vec![cond(0, Op::Eq, pid)?, cond(2, Op::Eq, s as u64)?]))
        .collect()
}

/// The whole allow-list of `kind`: syscall number -> rules (empty: any arguments).
pub(super) fn rules(kind: ThreadKind) -> Rules {
    // Conditions only fail on an argument index above 5: none here.
    try_rules(kind).unwrap_or_default()
}

fn try_rules(kind: ThreadKind) -> Result<Rules, BackendError> {
    let mut rules: Rules = COMMON
        .iter()
        .chain(&plain_calls(kind))
        .map(|&n| (n, Vec::new()))
        .collect();
    let no_exec = cond(2, Op::MaskedEq(libc::PROT_EXEC as u64), 0)?;
    // Anonymous memory only (guest RAM and kvm_run are mapped before threads are confined).
    rules.insert(
        libc::SYS_mmap,
        vec![rule(vec![
            no_exec.clone(),
            cond(
                3,
                Op::MaskedEq(libc::MAP_ANONYMOUS as u64),
                libc::MAP_ANONYMOUS as u64,
            )?,
        ])?],
    );
    rules.insert(libc::SYS_mprotect, vec![rule(vec![no_exec])?]);
    // std checks in debug builds that a descriptor is open before it closes it.
    rules.insert(
        libc::SYS_fcntl,
        vec![rule(vec![cond(1, Op::Eq, libc::F_GETFD as u64)?])?],
    );
    rules.insert(libc::SYS_ioctl, ioctl_rules(kind)?);
    rules.insert(libc::SYS_tgkill, tgkill_rules(kind)?);
    Ok(rules)
}

fn program(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, Error> {
    let build = |e: &dyn std::fmt::Display| Error::Build {
        kind,
        detail: e.to_string(),
    };
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::KillProcess,
    };
    let rules = try_rules(kind).map_err(|e| build(&e))?;
    let filter =
        SeccompFilter::new(rules, mismatch, SeccompAction::Allow, ARCH).map_err(|e| build(&e))?;
    BpfProgram::try_from(filter).map_err(|e| build(&e))
}

pub(super) fn confine(kind: ThreadKind, mode: SeccompMode) -> Result<(), Error> {
    let program = program(kind, mode)?;
    seccompiler::apply_filter(&program).map_err(|e| Error::Install {
        kind,
        source: match e {
            seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
            other => io::Error::other(other.to_string()),
        },
    })
}

pub(super) fn check(mode: SeccompMode) -> Result<(), Error> {
    let (action, name) = match mode {
        SeccompMode::Log => (libc::SECCOMP_RET_LOG, "SECCOMP_RET_LOG"),
        _ => (libc::SECCOMP_RET_KILL_PROCESS, "SECCOMP_RET_KILL_PROCESS"),
    };
    // SAFETY: SECCOMP_GET_ACTION_AVAIL only reads the u32 it is given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    let detail = match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => format!("no {name} action"),
        Some(libc::ENOSYS) | Some(libc::EINVAL) => {
            format!("no seccomp filters, or a kernel older than 4.14: {e}")
        }
        _ => e.to_string(),
    };
    Err(Error::Unsupported { mode, detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_in_every_mode() {
        for kind in ThreadKind::ALL {
            for mode in [SeccompMode::Log, SeccompMode::Kill] {
                let p = program(kind, mode).unwrap();
                assert!(!p.is_empty(), "{kind}");
            }
            assert!(rules(kind).contains_key(&libc::SYS_futex), "{kind}");
        }
    }

    #[test]
    fn only_threads_that_need_them_get_io_calls() {
        let has = |k, n| rules(k).contains_key(&n);
        assert!(has(ThreadKind::Devices, libc::SYS_io_uring_enter));
        assert!(!has(ThreadKind::Vcpu, libc::SYS_io_uring_enter));
        assert!(!has(ThreadKind::Vcpu, libc::SYS_read));
        assert!(has(ThreadKind::Api, libc::SYS_accept4));
        assert!(!has(ThreadKind::Devices, libc::SYS_accept4));
        // The API thread creates snapshot files (and nothing else opens a file).
        assert!(has(ThreadKind::Api, libc::SYS_openat));
        assert!(has(ThreadKind::Api, libc::SYS_unlinkat));
        for kind in ThreadKind::ALL {
            for n in [libc::SYS_execve, libc::SYS_socket, libc::SYS_clone3] {
                assert!(!has(kind, n), "{kind} may call {n}");
            }
            if kind != ThreadKind::Api {
                assert!(!has(kind, libc::SYS_openat), "{kind} may open files");
            }
        }
    }

    /// A list that grows past this was probably widened by hand rather than regenerated.
    #[test]
    fn lists_stay_small() {
        for kind in ThreadKind::ALL {
            let n = rules(kind).len();
            // The API thread's includes the snapshot files' calls.
            let max = if kind == ThreadKind::Api { 49 } else { 35 };
            assert!((20..=max).contains(&n), "{kind}: {n} calls");
        }
    }

    #[test]
    fn this_kernel_has_seccomp() {
        check(SeccompMode::Kill).unwrap();
        check(SeccompMode::Log).unwrap();
    }
}
