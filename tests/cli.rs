//! The `vibe-vmm` binary end to end: the demo guest, `info`, and a clear one-line error (never
//! a panic) for every kind of bad input.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // spawns the x86 demo guest on KVM

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vibe-vmm"))
}

fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but /dev/kvm is unusable: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: this test boots a guest on KVM, which is unusable here: {e}");
            false
        }
    }
}

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vibe-vmm-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

fn run(args: &[&str]) -> Output {
    bin().args(args).stdin(Stdio::null()).output().unwrap()
}

/// Asserts a failed run with one clear error line mentioning `needle`.
fn assert_error(args: &[&str], needle: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: want {needle:?} in {err:?}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
}

#[test]
fn no_arguments_boots_the_demo_guest() {
    if !kvm_usable() {
        return;
    }
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Hello from the vibe-vmm demo guest!"),
        "{stdout}"
    );
    assert!(stdout.contains("vCPUs: 1"));
}

#[test]
fn the_userspace_interrupt_controller_is_selectable() {
    if !kvm_usable() {
        return;
    }
    let out = run(&["run", "--irqchip", "userspace", "--cpus", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("vCPUs: 2"), "{stdout}");
    let bad = run(&["run", "--irqchip", "qemu"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not kernel or userspace"));
}

#[test]
fn seccomp_modes_are_selectable() {
    if !kvm_usable() {
        return;
    }
    // The default (kill) is what every other test here runs under.
    for mode in ["off", "log", "kill"] {
        let out = run(&["run", "--seccomp", mode]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "--seccomp {mode}: {stdout}");
        assert!(stdout.contains("vCPUs: 1"), "{stdout}");
    }
    let bad = run(&["run", "--seccomp", "on"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not off, log or kill"));
}

#[test]
fn run_options_reach_the_guest() {
    if !kvm_usable() {
        return;
    }
    let log = temp_file("serial.log", b"");
    let arg = format!("file:{}", log.display());
    let out = run(&[
        "run",
        "--cpus",
        "3",
        "--memory",
        "64M",
        "--cmdline",
        "hello there",
        "--serial",
        &arg,
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stdout.is_empty(),
        "serial went to a file, stdout must be empty"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("vCPUs: 3"), "{text}");
    assert!(text.contains("command line: \"hello there\""), "{text}");
}

/// An ACPI power-off (the guest writes S5 to the FADT's sleep control register) ends
/// vibe-vmm with status 0.
#[test]
fn acpi_power_off_exits_zero() {
    if !kvm_usable() {
        return;
    }
    let guest = temp_file("poweroff.elf", test_guests::ACPI_POWEROFF);
    let out = run(&["run", "--kernel", guest.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("ACPI S5: SLP_TYP 5"), "{stdout}");
}

#[test]
fn info_reports_the_hypervisor() {
    if !kvm_usable() {
        return;
    }
    let out = run(&["info"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        s.contains("hypervisor:  KVM") && s.contains("api version: 12"),
        "{s}"
    );
    assert!(s.contains("irqchip") && s.contains("max vCPUs"), "{s}");
}

#[test]
fn bad_kernels_are_refused() {
    if !kvm_usable() {
        return;
    }
    assert_error(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "cannot read kernel /nonexistent/vmlinux",
    );
    assert_error(&["run", "--kernel", "/"], "cannot read kernel /");
    let empty = temp_file("empty", b"");
    assert_error(&["run", "--kernel", empty.to_str().unwrap()], "is empty");
    let text = temp_file("notes.txt", b"this is not a kernel at all\n");
    assert_error(
        &["run", "--kernel", text.to_str().unwrap()],
        "is not a kernel vibe-vmm can boot",
    );
    // An ELF whose one segment is bigger than guest RAM.
    let big = temp_file("big.elf", &elf_with_segment(0x10_0000, 8 << 20));
    assert_error(
        &["run", "--kernel", big.to_str().unwrap(), "--memory", "4M"],
        "does not fit",
    );
    // A truncated ELF header.
    let short = temp_file("short.elf", b"\x7fELF\x02\x01\x01");
    assert_error(&["run", "--kernel", short.to_str().unwrap()], "bad kernel");
}

#[test]
fn bad_initrds_are_refused() {
    if !kvm_usable() {
        return;
    }
    assert_error(
        &["run", "--initrd", "/nonexistent/initrd"],
        "cannot read initrd",
    );
    let big = temp_file("initrd.img", &vec![0u8; 6 << 20]);
    assert_error(
        &["run", "--initrd", big.to_str().unwrap(), "--memory", "4M"],
        "does not fit",
    );
}

#[test]
fn bad_sizes_and_counts_are_refused() {
    if !kvm_usable() {
        return;
    }
    assert_error(&["run", "--memory", "0"], "too small");
    assert_error(&["run", "--memory", "1000T"], "more than this host has");
    assert_error(&["run", "--cpus", "0"], "0 vCPUs requested");
    assert_error(&["run", "--cpus", "100000"], "100000 vCPUs requested");
    assert_error(
        &["run", "--console", "virtio", "--serial", "stdio"],
        "both want the terminal",
    );
    let odd = temp_file("odd.img", &[0u8; 1000]);
    assert_error(
        &["run", "--disk", odd.to_str().unwrap()],
        "not a multiple of 512",
    );
    assert_error(
        &["run", "--disk", "/nonexistent/disk.img"],
        "cannot open disk image",
    );
    assert_error(
        &["run", "--net", "tap=vibenotap9"],
        "TAP device vibenotap9 does not exist: create it with `ip tuntap add",
    );
    assert_error(
        &[
            "run",
            "--net",
            "tap=vibe-no-tap0,mac=52:54:00:00:00:01",
            "--net",
            "tap=vibe-no-tap1,mac=52:54:00:00:00:01",
        ],
        "52:54:00:00:00:01",
    );
    let long = "x".repeat(3000);
    assert_error(&["run", "--cmdline", &long], "command line of 3000 bytes");
}

#[test]
fn unparsable_arguments_are_usage_errors() {
    for args in [
        &["run", "--memory", "lots"][..],
        &["run", "--serial", "tcp:1234"],
        &["run", "--cpuid-hide", "warp-drive"],
        &["run", "--bogus"],
        &["run", "--console", "vga"],
        &["run", "--disk", "a.img,turbo"],
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn no_permission_on_dev_kvm_is_explained() {
    // Needs root to switch to an unprivileged user who cannot open /dev/kvm (mode 0600).
    let root = unsafe { libc_geteuid() } == 0;
    let setpriv = std::path::Path::new("/usr/bin/setpriv").exists();
    if !root || !setpriv {
        eprintln!("SKIPPED: needs root and setpriv to run as a user without /dev/kvm access");
        return;
    }
    let exe = env!("CARGO_BIN_EXE_vibe-vmm");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            exe,
            "run",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Permission denied") && err.contains("vibe-vmm") && !err.contains("/dev/kvm") {
        eprintln!("SKIPPED: the test binary is not reachable by an unprivileged user: {err}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot open /dev/kvm") && err.contains("Permission denied"),
        "{err}"
    );
}

#[test]
fn missing_dev_kvm_is_explained() {
    // Needs root to hide /dev behind an empty tmpfs in a private mount namespace.
    let root = unsafe { libc_geteuid() } == 0;
    let unshare = std::path::Path::new("/usr/bin/unshare").exists();
    if !root || !unshare {
        eprintln!("SKIPPED: needs root and unshare to run without a /dev/kvm");
        return;
    }
    let exe = env!("CARGO_BIN_EXE_vibe-vmm");
    let out = Command::new("unshare")
        .args([
            "-m",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs none /dev && exec \"$0\" run",
            exe,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("unshare:") || err.contains("mount:") {
        eprintln!("SKIPPED: cannot make a mount namespace here: {err}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot open /dev/kvm") && err.contains("No such file or directory"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[test]
fn sigterm_stops_a_running_guest_promptly() {
    if !kvm_usable() {
        return;
    }
    // This guest waits forever for serial input that never comes.
    let guest = temp_file("echo.elf", test_guests::SERIAL_ECHO);
    let mut child = bin()
        .args([
            "run",
            "--kernel",
            guest.to_str().unwrap(),
            "--cpus",
            "2",
            "--serial",
            "none",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unsafe { kill(child.id() as i32, 15) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "VMM did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(128 + 15));
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// SIGUSR2 is what ends the signal thread between boots; one sent from outside must not end
/// it, or SIGTERM would then stay pending and never stop the VM.
#[test]
fn a_stray_sigusr2_does_not_disarm_sigterm() {
    if !kvm_usable() {
        return;
    }
    let guest = temp_file("echo-usr2.elf", test_guests::SERIAL_ECHO);
    let mut child = bin()
        .args([
            "run",
            "--kernel",
            guest.to_str().unwrap(),
            "--serial",
            "none",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unsafe { kill(child.id() as i32, libc::SIGUSR2) };
    std::thread::sleep(Duration::from_millis(200));
    unsafe { kill(child.id() as i32, 15) };
    assert_eq!(exits_within_a_second(&mut child, Instant::now()), 128 + 15);
}

/// Waits for `child` to exit after a stop request sent at `since`; the VMM must be gone
/// within a second, whatever its guest and its output are doing.
fn exits_within_a_second(child: &mut std::process::Child, since: Instant) -> i32 {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            let took = since.elapsed();
            assert!(took < Duration::from_secs(1), "took {took:?} to stop");
            return s.code().unwrap_or(-1);
        }
        if since.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("the VMM did not stop");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A guest floods the serial port into a pipe that nobody reads (the pipe fills, then the
/// VMM's buffer): SIGTERM, SIGINT and SIGHUP each still stop the VM within a second.
#[test]
fn a_console_flood_into_a_pipe_nobody_reads_does_not_delay_a_stop() {
    if !kvm_usable() {
        return;
    }
    let guest = temp_file("flood.elf", test_guests::SERIAL_FLOOD);
    /// Kills the VMM if the test fails before it stops it.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    for sig in [15, 2, 1] {
        let mut reap = Reap(
            bin()
                .args(["run", "--kernel", guest.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped()) // never read
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let child = &mut reap.0;
        // The smallest pipe, and wait until it is full: the VMM's writes to it now block.
        use std::os::fd::AsRawFd;
        let fd = child.stdout.as_ref().unwrap().as_raw_fd();
        // SAFETY: fcntl and ioctl on our own pipe descriptor with the right argument types.
        let capacity = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096) };
        assert!(
            capacity > 0,
            "F_SETPIPE_SZ: {}",
            std::io::Error::last_os_error()
        );
        let t = Instant::now();
        loop {
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
            // Within a write of full (a write that does not fit whole waits for room).
            if queued >= capacity - 1024 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the guest does not write: {queued} of {capacity}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the guest is still running"
        );
        let t = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { kill(child.id() as i32, sig) };
        assert_eq!(exits_within_a_second(child, t), 128 + sig);
    }
}

#[test]
fn inherited_descriptors_are_closed() {
    use std::os::unix::process::CommandExt;
    if !kvm_usable() {
        return;
    }
    let guest = temp_file("echo.elf", test_guests::SERIAL_ECHO);
    let leaked = temp_file("leaked.txt", b"not for the VMM");
    let leak = std::fs::File::open(&leaked).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&leak);
    let mut cmd = bin();
    cmd.args([
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--serial",
        "none",
    ])
    .stdin(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it gives the child descriptor 7 without CLOEXEC.
    unsafe {
        cmd.pre_exec(move || match libc::dup2(fd, 7) {
            7 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Descriptor 7 itself may have been reused by then: look for the file.
    let open: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    let running = child.try_wait().unwrap().is_none();
    unsafe { kill(child.id() as i32, 15) };
    let _ = child.wait();
    assert!(running, "the guest should still be running");
    assert!(!open.contains(&leaked), "{leaked:?} still open: {open:?}");
}

/// A minimal x86_64 ELF with one PT_LOAD of `size` bytes at `paddr`, entry at `paddr`.
fn elf_with_segment(paddr: u64, size: usize) -> Vec<u8> {
    let mut e = vec![0u8; 64 + 56];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little-endian
    e[6] = 1;
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&paddr.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = &mut e[64..];
    ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // offset
    ph[16..24].copy_from_slice(&paddr.to_le_bytes());
    ph[24..32].copy_from_slice(&paddr.to_le_bytes());
    ph[32..40].copy_from_slice(&(size as u64).to_le_bytes()); // filesz
    ph[40..48].copy_from_slice(&(size as u64).to_le_bytes()); // memsz
    e.resize(120 + size, 0x90);
    e
}

/// Runs the serial-echo guest on a pseudo-terminal, like a user at a shell would.
struct Pty {
    master: std::fs::File,
    slave_fd: i32,
    child: std::process::Child,
    /// The slave's local modes before the VMM started (it may go raw at once).
    initial_lflag: libc::tcflag_t,
}

impl Pty {
    fn spawn(args: &[&str]) -> Pty {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty fills two descriptors we then own.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty failed");
        let initial_lflag = lflag_of(slave);
        // SAFETY: each dup'd descriptor is owned by exactly one Stdio.
        let stdio = || unsafe { Stdio::from_raw_fd(libc::dup(slave)) };
        let child = bin()
            .args(args)
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio())
            .spawn()
            .unwrap();
        // SAFETY: `master` is ours.
        let master = unsafe { std::fs::File::from_raw_fd(master) };
        Pty {
            master,
            slave_fd: slave,
            child,
            initial_lflag,
        }
    }

    /// Reads until `needle` shows up (or 20 s pass); returns everything read.
    fn read_until(&mut self, needle: &str) -> String {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut seen = String::new();
        let t = Instant::now();
        while !seen.contains(needle) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no {needle:?} in {seen:?}"
            );
            let mut pfd = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid descriptor.
            if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                continue;
            }
            let mut buf = [0u8; 256];
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => break,
            }
        }
        seen
    }

    fn wait(&mut self) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(t.elapsed() < Duration::from_secs(10), "VMM did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn lflag(&self) -> libc::tcflag_t {
        lflag_of(self.slave_fd)
    }
}

fn lflag_of(fd: i32) -> libc::tcflag_t {
    // SAFETY: tcgetattr on a descriptor the caller owns, into a local struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd, &mut t), 0);
        t.c_lflag
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // SAFETY: closing the slave descriptor we own.
        unsafe { libc::close(self.slave_fd) };
    }
}

#[test]
fn terminal_input_reaches_the_guest_and_the_terminal_is_restored() {
    if !kvm_usable() {
        return;
    }
    let guest = temp_file("echo.elf", test_guests::SERIAL_ECHO);
    let mut pty = Pty::spawn(&["run", "--kernel", guest.to_str().unwrap()]);
    let before = pty.initial_lflag;
    assert_ne!(
        before & libc::ICANON,
        0,
        "a fresh pty starts in canonical mode"
    );
    pty.read_until("ready");
    assert_eq!(
        pty.lflag() & (libc::ICANON | libc::ECHO),
        0,
        "raw mode while the VM runs"
    );
    use std::io::Write;
    pty.master.write_all(b"z").unwrap();
    pty.read_until("got z");
    assert_eq!(pty.wait(), 0);
    assert_eq!(pty.lflag(), before, "terminal settings restored");
}

/// A guest floods the serial port onto a terminal that nobody reads (its output buffer is
/// full, stderr too): Ctrl-A x still stops the VM within a second and restores the terminal.
#[test]
fn ctrl_a_x_stops_a_flood_on_a_terminal_nobody_reads() {
    if !kvm_usable() {
        return;
    }
    let guest = temp_file("flood.elf", test_guests::SERIAL_FLOOD);
    let mut pty = Pty::spawn(&["run", "--kernel", guest.to_str().unwrap()]);
    let before = pty.initial_lflag;
    // Ctrl-A x reaches the VMM only once its terminal is raw (a loaded machine may be slow).
    let t = Instant::now();
    while pty.lflag() & libc::ICANON != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the terminal never went raw"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(700)); // the flood fills the terminal
    use std::io::Write;
    let t = Instant::now();
    pty.master.write_all(b"\x01x").unwrap();
    assert_eq!(exits_within_a_second(&mut pty.child, t), 130);
    assert_eq!(pty.lflag(), before, "terminal settings restored");
}

#[test]
fn ctrl_a_x_stops_the_vm_and_restores_the_terminal() {
    if !kvm_usable() {
        return;
    }
    let guest = temp_file("echo.elf", test_guests::SERIAL_ECHO);
    let mut pty = Pty::spawn(&["run", "--kernel", guest.to_str().unwrap(), "--cpus", "2"]);
    let before = pty.initial_lflag;
    pty.read_until("ready");
    use std::io::Write;
    // Ctrl-A Ctrl-A is one literal Ctrl-A, which the guest echoes (and then exits).
    pty.master.write_all(b"\x01\x01").unwrap();
    pty.read_until("got \x01");
    assert_eq!(pty.wait(), 0);
    drop(pty);
    let mut pty = Pty::spawn(&["run", "--kernel", guest.to_str().unwrap()]);
    pty.read_until("ready");
    pty.master.write_all(b"\x01x").unwrap();
    let out = pty.read_until("Ctrl-A x");
    assert!(out.contains("VM stopped"), "{out}");
    assert_eq!(pty.wait(), 130);
    assert_eq!(pty.lflag(), before, "terminal settings restored");
}

fn ctl(socket: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = bin()
        .args(["ctl", "--api-socket", socket.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vibe-vmm ctl` against `vibe-vmm run --api-socket`: info, pause, a second pause refused,
/// resume, stats as text and JSON, stop; the VMM then exits 0 and removes its socket.
#[test]
fn ctl_drives_a_running_vm_through_its_api_socket() {
    if !kvm_usable() {
        return;
    }
    let guest = temp_file("counter.elf", test_guests::COUNTER);
    let disk = temp_file("ctl-disk.img", &[0; 4096]);
    let socket = guest.with_file_name("api.sock");
    let mut child = bin()
        .args([
            "run",
            "--kernel",
            guest.to_str().unwrap(),
            "--serial",
            "none",
            "--disk",
            disk.to_str().unwrap(),
        ])
        .args(["--memory", "32M", "--api-socket", socket.to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !socket.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no API socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, out, err) = ctl(&socket, &["info"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state:    running"), "{out}");
    assert!(out.contains("memory:   32 MiB"), "{out}");
    assert!(out.contains("counter.elf"), "{out}");
    assert_eq!(ctl(&socket, &["pause"]).1.trim(), "paused");
    let (code, _, err) = ctl(&socket, &["pause"]);
    assert_eq!(code, 1);
    assert!(err.contains("already paused (HTTP 409)"), "{err}");
    assert_eq!(ctl(&socket, &["resume"]).1.trim(), "running");
    let (code, out, err) = ctl(&socket, &["stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pio_out"), "{out}");
    assert!(out.contains("unclaimed"), "{out}");
    assert!(out.contains("virtio-blk0          0 requests"), "{out}");
    let (_, json, _) = ctl(&socket, &["--json", "stats"]);
    assert!(
        json.starts_with('{') && json.contains("\"pio_out\""),
        "{json}"
    );
    assert!(json.contains("\"device\":\"virtio-blk0\""), "{json}");
    assert!(json.contains("\"interrupts\":["), "{json}");
    assert!(ctl(&socket, &["info"]).1.contains("boot:     1"));
    // The counter guest has ACPI: shutdown presses its button, which it ignores.
    assert_eq!(
        ctl(&socket, &["shutdown"]).1.trim(),
        "power button pressed (the guest decides when to power off)"
    );
    assert_eq!(ctl(&socket, &["stop"]).1.trim(), "stopped");
    let status = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("stop requested through the API"), "{err}");
    assert!(!socket.exists(), "socket left behind");
    // Nobody listening any more.
    let (code, _, err) = ctl(&socket, &["info"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to the API socket"), "{err}");
}

/// The boot number `ctl info` reports, 0 if it cannot say (between boots it may not).
fn boot_of(socket: &std::path::Path) -> u32 {
    let (_, out, _) = ctl(socket, &["info"]);
    out.lines()
        .find_map(|l| l.strip_prefix("boot:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// In API mode a guest reset reboots the VM in the same process, behind the same socket, at
/// most once a second; the serial file keeps every boot's output; a stop ends it all.
#[test]
fn a_reset_reboots_in_api_mode_until_stopped() {
    if !kvm_usable() {
        return;
    }
    let guest = temp_file("reset.elf", test_guests::RESET);
    let socket = guest.with_file_name("api.sock");
    let serial = guest.with_file_name("serial.txt");
    let mut child = bin()
        .args([
            "run",
            "--kernel",
            guest.to_str().unwrap(),
            "--memory",
            "32M",
        ])
        .args(["--serial", &format!("file:{}", serial.display())])
        .args(["--api-socket", socket.to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while boot_of(&socket) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no third boot");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Boots 2 and 3 each waited for the rate limit (1 s after the boot before started).
    assert!(
        t0.elapsed() > Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    // Whether the guest runs or is between boots, the stop ends vibe-vmm.
    let (code, _, err) = ctl(&socket, &["stop"]);
    assert_eq!(code, 0, "{err}");
    let since = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        since.elapsed() < Duration::from_secs(5),
        "{:?}",
        since.elapsed()
    );
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("guest reset the machine; rebooting (boot 2)"),
        "{err}"
    );
    assert!(
        err.contains("guest reset the machine; rebooting (boot 3)"),
        "{err}"
    );
    assert!(err.contains("stop requested through the API"), "{err}");
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(text.matches("resetting").count() >= 3, "{text}");
    assert!(!socket.exists(), "socket left behind");
}

/// `--no-reboot` keeps the one-shot behaviour in API mode; without an API socket a reset
/// always ends vibe-vmm (status 0), each saying why.
#[test]
fn a_reset_ends_the_vm_with_no_reboot_or_without_an_api_socket() {
    if !kvm_usable() {
        return;
    }
    let guest = temp_file("reset.elf", test_guests::RESET);
    let socket = guest.with_file_name("api.sock");
    let kernel = guest.to_str().unwrap();
    let out = run(&[
        "run",
        "--kernel",
        kernel,
        "--api-socket",
        socket.to_str().unwrap(),
        "--no-reboot",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("guest reset the machine; stopping (--no-reboot)"),
        "{err}"
    );
    assert!(!socket.exists(), "socket left behind");
    let out = run(&["run", "--kernel", kernel]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("stopping (vibe-vmm reboots only with --api-socket)"),
        "{err}"
    );
}

#[test]
fn an_api_socket_path_in_use_is_refused() {
    let taken = temp_file("taken.sock", b"not a socket");
    assert_error(
        &["run", "--api-socket", taken.to_str().unwrap()],
        "already exists",
    );
    assert_eq!(std::fs::read(&taken).unwrap(), b"not a socket");
}

/// `--stats` prints the exit counts when the guest ends; `--trace` writes one line per exit.
#[test]
fn stats_and_trace_are_printed() {
    if !kvm_usable() {
        return;
    }
    let trace = temp_file("trace.txt", b"");
    let out = run(&[
        "run",
        "--stats",
        "--trace",
        "exits=pio_out",
        "--trace-file",
        trace.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("exits: "), "{err}");
    assert!(err.contains("serial"), "{err}");
    let lines = std::fs::read_to_string(&trace).unwrap();
    let first = lines.lines().next().unwrap_or_default();
    assert!(first.starts_with("vcpu0 pio_out"), "{first}");
    assert!(first.contains("-> serial"), "{first}");
    assert!(first.contains("  rip 0x"), "{first}");
    assert!(
        lines.lines().last().unwrap().contains("-> debug-exit"),
        "{lines}"
    );
    let bad = run(&["run", "--trace", "exits=nope"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"nope\" is not an exit kind"));
}

/// `run --config`: a good TOML and a good JSON file boot the guest with their settings, and
/// a flag on the command line wins over the file.
#[test]
fn a_config_file_sets_the_flags_and_flags_win() {
    if !kvm_usable() {
        return;
    }
    let toml = temp_file(
        "vm.toml",
        b"# the demo guest, small\nmemory = \"64M\"\ncpus = 2\ncmdline = \"from the file\"\nstats = true\n",
    );
    let out = run(&["run", "--config", toml.to_str().unwrap()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("vCPUs: 2"), "{stdout}");
    assert!(
        stdout.contains("command line: \"from the file\""),
        "{stdout}"
    );
    assert!(stderr.contains("exits: "), "stats = true: {stderr}");
    let out = run(&["run", "--config", toml.to_str().unwrap(), "--cpus", "1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("vCPUs: 1"));
    let json = temp_file(
        "vm.json",
        br#"{ "memory": "64M", "cmdline": "json", "cpus": 1 }"#,
    );
    let out = run(&["run", "--config", json.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("command line: \"json\""));
}

/// Unknown keys, wrong types and bad values are one-line errors naming the key and the line.
#[test]
fn bad_config_files_name_the_key_and_line() {
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "a.toml",
            b"cpus = 1\nmemroy = \"1G\"\n",
            "line 2: unknown key \"memroy\"",
        ),
        (
            "b.toml",
            b"\n\ncpus = \"two\"\n",
            "line 3: cpus: invalid value 'two'",
        ),
        (
            "c.toml",
            b"stats = \"yes\"\n",
            "line 1: stats: expected true or false",
        ),
        (
            "d.toml",
            b"memory = \"12Q\"\n",
            "line 1: memory: invalid value '12Q'",
        ),
        (
            "e.toml",
            b"disk = 3\n",
            "line 1: disk: expected an array of strings",
        ),
        (
            "f.json",
            b"{\n \"cpus\": 1,\n \"kernel\": 7\n}",
            "line 3: kernel: expected a string, found an integer",
        ),
        ("g.json", b"{ \"cpus\": ", "EOF while parsing"),
        ("h.toml", b"[vm]\ncpus = 1\n", "line 1: tables"),
    ];
    for (name, text, needle) in cases {
        let f = temp_file(name, text);
        assert_error(&["run", "--config", f.to_str().unwrap()], needle);
    }
    assert_error(
        &["run", "--config", "/nonexistent/vm.toml"],
        "cannot read the config file",
    );
}
