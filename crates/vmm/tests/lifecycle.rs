//! VM destruction releases what creation took. Alone in its own test binary (process) so no
//! other test's descriptors disturb the count.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use std::time::Duration;

use common::*;
use vmm::Outcome;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn destroying_a_vm_releases_its_descriptors_and_threads() {
    let Some(kvm) = kvm() else { return };
    let out = Capture::default();
    // The first VM opens process-wide things (the kick signal handler); count after it.
    let _ = run_with_limit(
        build(&kvm, config(test_guests::DEMO, 2, &out)),
        Duration::from_millis(500),
    );
    std::thread::sleep(Duration::from_millis(600)); // let its time-limit thread finish
    let (fds, _) = (open_fds(), threads());
    for _ in 0..3 {
        let vm = build(&kvm, config(test_guests::DEMO, 2, &out));
        assert_eq!(
            run_with_limit(vm, Duration::from_millis(500)),
            Outcome::DebugExit(0)
        );
    }
    // A VM dropped without ever starting releases everything too.
    drop(build(&kvm, config(test_guests::DEMO, 4, &out)));
    // vCPU threads are joined by wait(); the test's own time-limit threads hold a stop handle
    // (and so the VM's exit eventfd) until they wake.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(open_fds(), fds, "descriptors leaked");
    assert!(threads() <= 2, "{} threads still alive", threads());
}
