//! Many VMs in one process: create, start, stop and destroy, with KVM's irqchip and with
//! vibe-vmm's own, each over virtio-mmio and over virtio-pci, then failed creations of several
//! kinds, while open descriptors (/proc/self/fd), threads (/proc/self/task) and resident
//! memory (/proc/self/statm) stay flat. Alone in its own test binary (process), and the tests take turns, so no other VM
//! disturbs the counts.
//!
//! The suite runs 50 cycles of each; the full run (1,000 each, 100 failed creations) is
//! ignored by default:
//!
//! ```text
//! cargo test -p vmm --test cycles -- --ignored --nocapture
//! ```
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use hypervisor::kvm::Kvm;
use vmm::{DiskConfig, IrqchipMode, KernelImage, Outcome, SerialOutput, Transport, Vm};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Resident memory may grow this much over a whole run (allocator caches, lazily mapped
/// libraries); a leak of guest RAM (32 MiB a VM) or of a VM's structures shows far above it.
const RSS_SLACK_KIB: u64 = 8 << 10;
/// ... and this much over the second half of a run, when every cache is warm.
const RSS_SECOND_HALF_SLACK_KIB: u64 = 2 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

fn usage() -> Usage {
    let count = |dir| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Usage {
        fds: count("/proc/self/fd"),
        threads: count("/proc/self/task"),
        rss_kib: pages * page / 1024,
    }
}

/// The usage once threads that are ending have ended: console writer threads and the like
/// may take a moment after the VM is gone. Waits at most 2 s for the counts to come back to
/// `baseline`.
fn settled(baseline: Usage) -> Usage {
    let t = Instant::now();
    loop {
        let u = usage();
        if (u.fds <= baseline.fds && u.threads <= baseline.threads)
            || t.elapsed() > Duration::from_secs(2)
        {
            return u;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An error and its sources, for a message that says why.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// One full life: a 2-vCPU VM with a disk, a virtio-console and the MMIO console is created
/// and started; on even cycles it is stopped once the guest runs (it waits for serial input
/// for ever, its second vCPU for a start-up IPI), on odd ones at once; then it is destroyed.
fn one_cycle(
    kvm: &Kvm,
    (irqchip, transport): (IrqchipMode, Transport),
    disk: &std::path::Path,
    n: usize,
) {
    let out = Capture::default();
    let mut c = config(test_guests::SERIAL_ECHO, 2, &out);
    c.irqchip = irqchip;
    c.transport = transport;
    c.disks = vec![DiskConfig {
        path: disk.to_path_buf(),
        read_only: false,
    }];
    c.virtio_console = Some(SerialOutput::None);
    c.mmio_console = Some(SerialOutput::None);
    let mut vm = Vm::new(kvm, c).unwrap_or_else(|e| panic!("cycle {n}: create: {}", chain(&e)));
    vm.start()
        .unwrap_or_else(|e| panic!("cycle {n}: start: {}", chain(&e)));
    if n.is_multiple_of(2) {
        let t = Instant::now();
        while !out.text().contains("ready") {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "cycle {n}: the guest never got going: {:?}",
                out.text()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    vm.stop_handle().stop(Outcome::Stopped("cycle".into()));
    let t = Instant::now();
    assert_eq!(vm.wait(), Outcome::Stopped("cycle".into()), "cycle {n}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "cycle {n}: stopping took {:?}",
        t.elapsed()
    );
}

/// A creation that must fail, of kind `n % 5`: a missing disk (fails late, after the
/// irqchip, memory and vCPUs exist), a kernel that is no image, too little memory, no vCPU,
/// a disk that is a directory.
fn one_failed_creation(kvm: &Kvm, n: usize) {
    let out = Capture::default();
    let irqchip = if n % 10 < 5 {
        IrqchipMode::Userspace
    } else {
        IrqchipMode::Kernel
    };
    let mut c = config(test_guests::DEMO, 2, &out);
    c.irqchip = irqchip;
    let what = match n % 5 {
        0 => {
            c.disks = vec![DiskConfig {
                path: "/nonexistent/vibe-vmm-disk.img".into(),
                read_only: false,
            }];
            "a missing disk"
        }
        1 => {
            c.kernel = KernelImage::Bytes(b"\x7fELF but not really an image");
            "a kernel that is no image"
        }
        2 => {
            c.memory = 4096;
            "4 KiB of memory"
        }
        3 => {
            c.cpus = 0;
            "no vCPU"
        }
        _ => {
            c.disks = vec![DiskConfig {
                path: std::env::temp_dir(),
                read_only: false,
            }];
            "a disk that is a directory"
        }
    };
    match Vm::new(kvm, c) {
        Ok(_) => panic!("creation {n} with {what} ({irqchip:?}) succeeded"),
        Err(e) if n < 5 => println!("with {what}: {e}"),
        Err(_) => {}
    }
}

fn cycles(ok: usize, failed: usize) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(kvm) = kvm() else { return };
    let disk = disk_image("cycles.img", 16 * 512);
    let check = |what: &str, before: Usage, half: Usage, after: Usage| {
        println!(
            "{what}: fds {} -> {}, threads {} -> {}, RSS {} KiB -> {} KiB (at half way {} KiB)",
            before.fds,
            after.fds,
            before.threads,
            after.threads,
            before.rss_kib,
            after.rss_kib,
            half.rss_kib
        );
        assert_eq!(after.fds, before.fds, "{what}: descriptors leaked");
        assert_eq!(after.threads, before.threads, "{what}: threads leaked");
        assert!(
            after.rss_kib <= before.rss_kib + RSS_SLACK_KIB,
            "{what}: resident memory grew by {} KiB",
            after.rss_kib - before.rss_kib
        );
        assert!(
            after.rss_kib <= half.rss_kib + RSS_SECOND_HALF_SLACK_KIB,
            "{what}: resident memory still growing: {} KiB in the second half",
            after.rss_kib - half.rss_kib
        );
    };
    // virtio-pci adds MSI lines (on KVM a GSI, a route and an irqfd each) and notify
    // ioeventfds: all released with the VM.
    for machine in [
        (IrqchipMode::Kernel, Transport::Mmio),
        (IrqchipMode::Userspace, Transport::Mmio),
        (IrqchipMode::Kernel, Transport::Pci),
        (IrqchipMode::Userspace, Transport::Pci),
    ] {
        // Whatever is process-wide (the kick signal handler, allocator arenas, io_uring's
        // first set-up) comes with the first VMs: count after them.
        for n in 0..4 {
            one_cycle(&kvm, machine, &disk, n);
        }
        let before = settled(usage());
        let t = Instant::now();
        let mut half = before;
        for n in 0..ok {
            one_cycle(&kvm, machine, &disk, n);
            if n + 1 == ok / 2 {
                half = settled(before);
            }
        }
        let after = settled(before);
        check(
            &format!("{ok} cycles, {machine:?}, {:?}", t.elapsed()),
            before,
            half,
            after,
        );
    }
    for n in 0..10 {
        one_failed_creation(&kvm, n);
    }
    let before = settled(usage());
    let mut half = before;
    for n in 0..failed {
        one_failed_creation(&kvm, n);
        if n + 1 == failed / 2 {
            half = settled(before);
        }
    }
    let after = settled(before);
    check(&format!("{failed} failed creations"), before, half, after);
    let _ = std::fs::remove_file(disk);
}

#[test]
fn fifty_lives_with_each_irqchip_and_twenty_failed_creations_leak_nothing() {
    cycles(50, 20);
}

#[test]
#[ignore = "about a minute: the full run, whose figures are reported"]
fn a_thousand_lives_with_each_irqchip_and_a_hundred_failed_creations_leak_nothing() {
    cycles(1000, 100);
}
