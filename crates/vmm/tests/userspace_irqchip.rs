//! The same guests as `guests.rs`, with vibe-vmm's own interrupt controller instead of KVM's
//! (`--irqchip userspace`: no KVM_CREATE_IRQCHIP, LAPIC and IOAPIC in `devices::irqchip`,
//! interrupts injected with KVM_INTERRUPT when the guest opens an interrupt window). This is
//! how Hypervisor.framework on Intel runs, proven on this machine's real KVM.

mod common;

use std::time::Duration;

use common::{
    build, config, kvm, run_with_limit, stop_pause_and_resume, virtio_interrupt, Capture,
};
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
    virtio_interrupt(IrqchipMode::Userspace, true, false);
    virtio_interrupt(IrqchipMode::Userspace, false, false);
}

#[test]
fn a_vcpu_waiting_for_startup_stops_promptly() {
    stop_pause_and_resume(IrqchipMode::Userspace);
}
