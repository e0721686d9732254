//! A guest must not be able to make the host log at the rate it can cause exits: the same
//! guest error, repeated, is logged a bounded number of times (the CLI logs warnings and
//! errors by default, so each such line can end up on a terminal or in a journal). Alone in
//! its own test binary (process), which counts every warning and error logged in it.
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

/// How many warnings and errors one guest error repeated 1,000 times may cost.
const BOUND: usize = 20;

#[test]
fn repeated_guest_errors_are_not_logged_at_exit_speed() {
    let Some(kvm) = kvm() else { return };
    log::set_logger(&Counter).expect("the only logger in this process");
    log::set_max_level(log::LevelFilter::Warn);
    let disks: Vec<_> = ["flood-0.img", "flood-1.img"]
        .iter()
        .map(|n| disk_image(n, 16 * 512))
        .collect();
    let out = Capture::default();
    let mut c = config(test_guests::VIRTQ_ABUSE, 1, &out);
    c.cmdline = "z".into();
    c.ioeventfd = false; // every notify reaches the transport, none coalesce in an eventfd
    c.disks = disks
        .iter()
        .map(|p| DiskConfig {
            path: p.clone(),
            read_only: false,
        })
        .collect();
    let outcome = run_with_limit(build(&kvm, c), Duration::from_secs(30));
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
        "{n} warnings and errors for 3 guest errors repeated 1,000 times each; the first: {:#?}",
        FIRST.lock().unwrap()
    );
}
