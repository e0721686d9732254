//! A guest must not be able to make the host log at the rate it can cause exits: the same
//! guest error, repeated, is logged a bounded number of times (the CLI logs warnings and
//! errors by default, so each such line can end up on a terminal or in a journal). Alone in
//! its own test binary (process), which counts every warning and error logged in it; the
//! tests take turns.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use common::*;
use vmm::{DiskConfig, Outcome, VmConfig};

static WARNINGS: AtomicUsize = AtomicUsize::new(0);
static FIRST: Mutex<Vec<String>> = Mutex::new(Vec::new());
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Counter;

impl log::Log for Counter {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) && WARNINGS.fetch_add(1, Ordering::SeqCst) < 5 {
            FIRST
                .lock()
                .unwrap()
                .push(format!("{} {}: {}", r.level(), r.target(), r.args()));
        }
    }
    fn flush(&self) {}
}

/// How many warnings and errors one guest error repeated 1,000 times may cost.
const BOUND: usize = 20;

/// Runs `guest` with its command line `cmdline` on disks of these sizes (in sectors), set up
/// further by `adjust`, and checks it exits 0 having caused at most [`BOUND`] log lines.
fn bounded_logging(
    guest: &'static [u8],
    cmdline: &str,
    disks: &[(&str, usize)],
    adjust: impl FnOnce(&mut VmConfig),
    what: &str,
) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(kvm) = kvm() else { return };
    static LOGGER: Once = Once::new();
    LOGGER.call_once(|| {
        log::set_logger(&Counter).expect("the only logger in this process");
        log::set_max_level(log::LevelFilter::Warn);
    });
    WARNINGS.store(0, Ordering::SeqCst);
    FIRST.lock().unwrap().clear();
    let paths: Vec<PathBuf> = disks
        .iter()
        .map(|(name, sectors)| disk_image(name, sectors * 512))
        .collect();
    let out = Capture::default();
    let mut c = config(guest, 1, &out);
    c.cmdline = cmdline.into();
    c.disks = paths
        .iter()
        .map(|p| DiskConfig {
            path: p.clone(),
            read_only: false,
        })
        .collect();
    adjust(&mut c);
    let outcome = run_with_limit(build(&kvm, c), Duration::from_secs(60));
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
    assert_eq!(outcome, Outcome::DebugExit(0), "{}", out.text());
    let n = WARNINGS.load(Ordering::SeqCst);
    println!(
        "{what}: warnings and errors logged: {n}; the first: {:#?}",
        FIRST.lock().unwrap()
    );
    assert!(
        n <= BOUND,
        "{n} warnings and errors for {what}; the first: {:#?}",
        FIRST.lock().unwrap()
    );
}

#[test]
fn repeated_guest_errors_are_not_logged_at_exit_speed() {
    bounded_logging(
        test_guests::VIRTQ_ABUSE,
        "z",
        &[("flood-0.img", 16), ("flood-1.img", 16)],
        // Every notify reaches the transport, none coalesce in an eventfd.
        |c| c.ioeventfd = false,
        "3 guest errors repeated 1,000 times each",
    );
}

/// 00:02.0's BAR0 programmed over 00:01.0's and back 1,000 times (`asm/pci_hostile.S`,
/// scenario a) with ioeventfds: each move an ioeventfd the kernel would refuse (the address
/// is taken) or could not find, were it attempted.
#[test]
fn overlapping_bar_moves_are_not_logged_at_exit_speed() {
    bounded_logging(
        test_guests::PCI_HOSTILE,
        "a",
        &[("pci-flood-1.img", 16), ("pci-flood-2.img", 8)],
        |c| {
            c.transport = vmm::Transport::Pci;
            c.ioeventfd = true;
        },
        "1,000 overlapping BAR moves",
    );
}
