//! A guest must not make the host log at the rate it can program PCI configuration space
//! (see log_flood.rs): 00:02.0's BAR0 programmed over 00:01.0's and back 1,000 times
//! (`asm/pci_hostile.S`, scenario a) with ioeventfds, each move an ioeventfd the kernel
//! refuses (the address is taken) or cannot find. Alone in its own test binary (process),
//! which counts every warning and error logged in it.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use vmm::{DiskConfig, Outcome};

static WARNINGS: AtomicUsize = AtomicUsize::new(0);
static FIRST: Mutex<Vec<String>> = Mutex::new(Vec::new());

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

/// As log_flood.rs: what one guest error repeated 1,000 times may cost.
const BOUND: usize = 20;

#[test]
fn overlapping_bar_moves_are_not_logged_at_exit_speed() {
    let Some(kvm) = kvm() else { return };
    log::set_logger(&Counter).expect("the only logger in this process");
    log::set_max_level(log::LevelFilter::Warn);
    let disks: Vec<_> = [("pci-flood-1.img", 16), ("pci-flood-2.img", 8)]
        .iter()
        .map(|(n, sectors)| disk_image(n, sectors * 512))
        .collect();
    let out = Capture::default();
    let mut c = config(test_guests::PCI_HOSTILE, 1, &out);
    c.transport = vmm::Transport::Pci;
    c.cmdline = "a".into();
    c.ioeventfd = true;
    c.disks = disks
        .iter()
        .map(|p| DiskConfig {
            path: p.clone(),
            read_only: false,
        })
        .collect();
    let outcome = run_with_limit(build(&kvm, c), Duration::from_secs(60));
    for d in disks {
        let _ = std::fs::remove_file(d);
    }
    assert_eq!(outcome, Outcome::DebugExit(0), "{}", out.text());
    let n = WARNINGS.load(Ordering::SeqCst);
    println!(
        "warnings and errors logged: {n}; the first: {:#?}",
        FIRST.lock().unwrap()
    );
    assert!(
        n <= BOUND,
        "{n} warnings and errors for 1,000 overlapping BAR moves; the first: {:#?}",
        FIRST.lock().unwrap()
    );
}
