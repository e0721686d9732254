//! The same guests as `guests.rs`, with vibe-vmm's own interrupt controller instead of KVM's
//! (`--irqchip userspace`: no KVM_CREATE_IRQCHIP, LAPIC and IOAPIC in `devices::irqchip`,
//! interrupts injected with KVM_INTERRUPT when the guest opens an interrupt window). This is
//! how Hypervisor.framework on Intel runs, proven on this machine's real KVM.

mod common;

use std::time::{Duration, Instant};

use common::{build, config, kvm, run_with_limit, Capture};
use vmm::{IrqchipMode, Outcome};

fn boot(guest: &'static [u8], cpus: u32) -> Option<(Outcome, String)> {
    let kvm = kvm()?;
    let out = Capture::default();
    let mut c = config(guest, cpus, &out);
    c.irqchip = IrqchipMode::Userspace;
    let outcome = run_with_limit(build(&kvm, c), Duration::from_secs(60));
    Some((outcome, out.text()))
}

#[test]
fn timer_interrupt_reaches_the_guest_handler() {
    let Some((outcome, out)) = boot(test_guests::IRQ, 1) else {
        return;
    };
    assert_eq!(outcome, Outcome::DebugExit(0), "{out}");
    assert!(out.contains("timer interrupt delivered"));
}

#[test]
fn init_and_startup_ipis_start_the_second_vcpu() {
    let Some((outcome, out)) = boot(test_guests::SMP, 2) else {
        return;
    };
    assert_eq!(outcome, Outcome::DebugExit(0), "{out}");
    assert!(out.contains("vCPU 1 is up"));
}

#[test]
fn demo_port_and_mmio_guests_still_run() {
    for guest in [test_guests::DEMO, test_guests::IO] {
        let Some((outcome, out)) = boot(guest, 2) else {
            return;
        };
        assert_eq!(outcome, Outcome::DebugExit(0), "{out}");
    }
}

#[test]
fn virtio_interrupt_reaches_the_guest_through_our_ioapic() {
    let Some(kvm) = kvm() else { return };
    let disk = std::env::temp_dir().join(format!("vibe-uirq-{}.img", std::process::id()));
    std::fs::write(&disk, vec![0u8; 8 * 512]).unwrap();
    let out = Capture::default();
    let mut c = config(test_guests::VIRTIO_IRQ, 1, &out);
    c.irqchip = IrqchipMode::Userspace;
    c.disks = vec![vmm::DiskConfig {
        path: disk.clone(),
        read_only: false,
    }];
    let outcome = run_with_limit(build(&kvm, c), Duration::from_secs(60));
    let _ = std::fs::remove_file(disk);
    assert_eq!(outcome, Outcome::DebugExit(0), "{}", out.text());
    assert!(
        out.text()
            .contains("virtio interrupt delivered, InterruptStatus 00000001"),
        "{}",
        out.text()
    );
}

#[test]
fn a_vcpu_waiting_for_startup_stops_promptly() {
    let Some(kvm) = kvm() else { return };
    let out = Capture::default();
    let mut c = config(test_guests::SERIAL_ECHO, 2, &out);
    c.irqchip = IrqchipMode::Userspace;
    let mut vm = build(&kvm, c);
    vm.start().unwrap();
    let t0 = Instant::now();
    while !out.text().contains("ready") {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    vm.pause();
    vm.resume();
    let stop = vm.stop_handle();
    let t = Instant::now();
    stop.stop(Outcome::Stopped("asked by the test".into()));
    assert_eq!(vm.wait(), Outcome::Stopped("asked by the test".into()));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}
