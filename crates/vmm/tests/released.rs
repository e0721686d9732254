//! What a VM took is given back, on every path: failed creations leak no thread or descriptor,
//! the VM's descriptor closes with the VM even while a device outlives it, and nothing is
//! kicked once the vCPU threads are gone. Alone in its own test binary (process), and the
//! tests take turns, so no other VM disturbs the counts.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::*;
use vmm::{DiskConfig, IrqchipMode, Outcome, Vm};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn fd_targets() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn failed_creations_leak_no_thread_or_descriptor() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(kvm) = kvm() else { return };
    let out = Capture::default();
    let create = || {
        let mut c = config(test_guests::DEMO, 2, &out);
        c.irqchip = IrqchipMode::Userspace;
        c.disks = vec![DiskConfig {
            path: "/nonexistent/vibe-vmm-disk.img".into(),
            read_only: false,
        }];
        assert!(Vm::new(&kvm, c).is_err(), "a missing disk must fail");
    };
    create(); // anything process-wide is set up by the first
    let (fds, tasks) = (fd_targets().len(), threads());
    for _ in 0..100 {
        create();
    }
    // A console's writer thread is not joined when its output is dropped (a stuck host
    // write must not block the drop): it ends a moment later. A leaked thread never does.
    let settled = std::time::Instant::now();
    while threads() > tasks && settled.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (fds_after, tasks_after) = (fd_targets().len(), threads());
    println!("100 failed creations: fds {fds} -> {fds_after}, threads {tasks} -> {tasks_after}");
    assert_eq!(fds_after, fds, "descriptors leaked: {:?}", fd_targets());
    assert_eq!(tasks_after, tasks, "threads leaked");
}

#[test]
fn the_vm_descriptor_closes_with_the_vm_while_its_serial_lives_on() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(kvm) = kvm() else { return };
    let vm_fds = || {
        fd_targets()
            .iter()
            .filter(|t| t.as_str() == "anon_inode:kvm-vm")
            .count()
    };
    let before = vm_fds();
    let out = Capture::default();
    let mut c = config(test_guests::DEMO, 1, &out);
    c.irqfd = false; // serial line pulsed with KVM_IRQ_LINE on the VM descriptor
    let vm = build(&kvm, c);
    let serial = vm.serial();
    assert_eq!(vm_fds(), before + 1);
    drop(vm);
    // Guest memory is unmapped now: the VM must not exist any more.
    assert_eq!(vm_fds(), before, "the VM descriptor outlived the VM");
    // The held serial still takes input; its interrupt goes nowhere.
    serial.lock().unwrap().enqueue_input(b"x");
}

/// Whether any of 4 threads started now, each blocking the kick signal (SIGRTMIN), has it
/// pending after `poke` ran. New threads reuse the stacks, and so the `pthread_t`s, of
/// joined ones, so a kick sent to a joined vCPU thread lands here.
fn kick_lands_in_a_new_thread(poke: impl FnOnce()) -> bool {
    const N: usize = 4;
    let start = Arc::new(Barrier::new(N + 1));
    let poked = Arc::new(Barrier::new(N + 1));
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let (start, poked) = (start.clone(), poked.clone());
            std::thread::spawn(move || {
                // SAFETY: plain signal-set calls on a local set.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGRTMIN());
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    start.wait();
                    poked.wait();
                    libc::sigemptyset(&mut set);
                    libc::sigpending(&mut set);
                    libc::sigismember(&set, libc::SIGRTMIN()) == 1
                }
            })
        })
        .collect();
    start.wait();
    poke();
    poked.wait();
    threads.into_iter().any(|t| t.join().unwrap())
}

#[test]
fn nothing_is_kicked_after_the_vcpu_threads_are_joined() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(kvm) = kvm() else { return };
    let out = Capture::default();
    let mut c = config(test_guests::SERIAL_IRQ, 1, &out);
    c.irqchip = IrqchipMode::Userspace;
    let vm = build(&kvm, c);
    let serial = vm.serial();
    // The guest routed the serial line to vCPU 0 and enabled the received-data interrupt.
    let outcome = run_with_limit(vm, Duration::from_secs(30));
    assert_eq!(outcome, Outcome::DebugExit(0), "{}", out.text());
    let kicked = kick_lands_in_a_new_thread(|| {
        for _ in 0..4 {
            serial.lock().unwrap().enqueue_input(b"x");
        }
    });
    assert!(
        !kicked,
        "host input after the join kicked a joined vCPU thread's id"
    );
}
