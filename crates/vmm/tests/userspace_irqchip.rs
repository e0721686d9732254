//! The same guests as `guests.rs`, with vibe-vmm's own interrupt controller instead of KVM's
//! (`--irqchip userspace`: no KVM_CREATE_IRQCHIP, LAPIC and IOAPIC in `devices::irqchip`,
//! interrupts injected with KVM_INTERRUPT when the guest opens an interrupt window). This is
//! how Hypervisor.framework on Intel runs, proven on this machine's real KVM.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use common::{
    boot_on, pit_ticks, second_vcpu_starts, stop_pause_and_resume, string_io, timer_interrupt,
    virtio_interrupt,
};
use vmm::{IrqchipMode, Outcome};

fn boot(guest: &'static [u8], cpus: u32) -> Option<(Outcome, String)> {
    boot_on(IrqchipMode::Userspace, guest, cpus)
}

#[test]
fn timer_interrupt_reaches_the_guest_handler() {
    timer_interrupt(IrqchipMode::Userspace);
}

/// Without ACPI the machine has a PIT (ours, on this irqchip) and 8259s the guest can mask:
/// what Linux needs there to count time (issue 16).
#[test]
fn pit_ticks_reach_the_guest_without_acpi() {
    pit_ticks(IrqchipMode::Userspace);
}

#[test]
fn init_and_startup_ipis_start_the_second_vcpu() {
    second_vcpu_starts(IrqchipMode::Userspace);
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

#[test]
fn string_port_io_is_one_access_per_element() {
    string_io(IrqchipMode::Userspace);
}
