//! Confinement proven on a real vCPU thread: a device on the port bus that, on the guest's
//! first write, does what subverted device code would do (open a host file, start a program).
//!
//! The default mode kills the whole process, test harness included, so each case runs in a
//! child: this test binary started again with `CHILD` set, running only `child`. The parent
//! asserts that the child died of SIGSYS before the forbidden call returned (the child prints
//! a line after it), and, as controls, that the same child with `--seccomp off` or `log`
//! performs the call and runs the guest to its end, so the kill is the filter's doing and the
//! device really runs the call on the vCPU thread.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use devices::BusDevice;
use vmm::{Outcome, SeccompMode};

/// Names the case a child runs: "ACTION MODE", e.g. "open default".
const CHILD: &str = "VIBE_SECCOMP_TEST_CHILD";
/// What the child prints once the forbidden call has returned.
const SURVIVED: &str = "forbidden call returned:";

/// The io guest's test device (reads return the NOT of what was written), which on its first
/// write also makes a call no vCPU thread may make.
struct Intruder {
    inner: NotDevice,
    action: &'static str,
    done: bool,
}

impl BusDevice for Intruder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.inner.read(offset, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !std::mem::replace(&mut self.done, true) {
            let result = match self.action {
                "open" => std::fs::File::open("/etc/hostname").map(|_| "opened".to_string()),
                _ => Command::new("/bin/true")
                    .status()
                    .map(|s| format!("ran /bin/true: {s}")),
            };
            println!("{SURVIVED} {result:?}");
        }
        self.inner.write(offset, data)
    }
}

/// The child's side: boots the io guest with the intruder on its port.
#[test]
fn child() {
    let Ok(case) = std::env::var(CHILD) else {
        return; // run as an ordinary test: nothing to do
    };
    let Some(kvm) = kvm() else { return };
    let (action, mode) = case.split_once(' ').expect("CHILD is \"ACTION MODE\"");
    let action = if action == "open" { "open" } else { "exec" };
    let out = Capture::default();
    let mut c = config(test_guests::IO, 1, &out);
    match mode {
        "default" => {} // what every library user and the CLI get
        "off" => c.seccomp = SeccompMode::Off,
        "log" => c.seccomp = SeccompMode::Log,
        _ => panic!("unknown mode {mode}"),
    }
    let mut vm = vmm::Vm::new(&kvm, c).expect("create VM");
    let dev = Intruder {
        inner: NotDevice(vec![0; 4]),
        action,
        done: false,
    };
    vm.add_pio_device(Arc::new(Mutex::new(dev)), TEST_PORT, 4)
        .unwrap();
    vm.add_mmio_device(
        Arc::new(Mutex::new(NotDevice(vec![0; 4096]))),
        TEST_MMIO,
        4096,
    )
    .unwrap();
    let outcome = run_with_limit(vm, Duration::from_secs(30));
    println!("guest outcome: {outcome:?}");
    assert_eq!(outcome, Outcome::DebugExit(0), "{}", out.text());
}

fn run_child(action: &str, mode: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{action} {mode}"))
        .output()
        .unwrap()
}

fn assert_killed(action: &str) {
    if kvm().is_none() {
        return;
    }
    let out = run_child(action, "default");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{action}: the child was not killed by seccomp: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(SURVIVED), "{stdout}");
}

fn assert_allowed(action: &str, mode: &str) {
    if kvm().is_none() {
        return;
    }
    let out = run_child(action, mode);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{action} with --seccomp {mode}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(SURVIVED), "{stdout}");
    assert!(stdout.contains("guest outcome: DebugExit(0)"), "{stdout}");
}

#[test]
fn a_vcpu_thread_that_opens_a_file_kills_the_vmm_by_default() {
    assert_killed("open");
}

#[test]
fn a_vcpu_thread_that_starts_a_program_kills_the_vmm_by_default() {
    assert_killed("exec");
}

#[test]
fn without_filters_or_in_log_mode_the_same_calls_go_through() {
    assert_allowed("open", "off");
    assert_allowed("open", "log");
}

/// docs/security.md's table gives the size of each allow-list (on x86_64): keep it true.
#[test]
fn the_documented_list_sizes_are_the_real_ones() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/security.md"
    ))
    .unwrap();
    for kind in vmm::seccomp::ThreadKind::ALL {
        let cell = format!("| `{kind:?}` |");
        let row = doc
            .lines()
            .find(|l| l.contains(&cell))
            .unwrap_or_else(|| panic!("no row for {kind:?} in docs/security.md"));
        let documented: usize = row
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count in {row:?}"));
        assert_eq!(
            documented,
            vmm::seccomp::allowed_calls(kind),
            "{kind:?} in docs/security.md"
        );
    }
}
