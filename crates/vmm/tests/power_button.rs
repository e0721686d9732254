//! The ACPI power button on real KVM, on both interrupt controllers: a press raises the GED's
//! interrupt (GSI 3, edge) into a guest that routed it through the IOAPIC; its handler reads
//! the event status as the DSDT's `_EVT` does and powers off through the sleep control
//! register, so the VM ends with `Outcome::PowerOff`. Without ACPI there is no button, and a
//! graceful shutdown stops the VM instead.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::time::{Duration, Instant};

use common::{build, config, kvm, Capture};
use vmm::{ControlError, IrqchipMode, Outcome, Shutdown};

/// Boots the power-button guest, presses the button once it waits, and returns how the VM
/// ended and what it printed.
fn press_and_wait(irqchip: IrqchipMode) -> Option<(Outcome, String)> {
    let kvm = kvm()?;
    let out = Capture::default();
    let mut c = config(test_guests::POWER_BUTTON, 1, &out);
    c.irqchip = irqchip;
    let mut vm = build(&kvm, c);
    vm.start().unwrap();
    let stop = vm.stop_handle();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        stop.stop(Outcome::Stopped("test time limit".into()));
    });
    let t0 = Instant::now();
    while !out.text().contains("waiting for the power button") {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", out.text());
        std::thread::sleep(Duration::from_millis(5));
    }
    let controller = vm.controller().unwrap();
    assert_eq!(
        controller.shutdown(Outcome::Requested("test".into())),
        Ok(Shutdown::PowerButton)
    );
    Some((vm.wait(), out.text()))
}

#[test]
fn the_power_button_powers_off_a_guest_on_kvm_irqchip() {
    let Some((outcome, out)) = press_and_wait(IrqchipMode::Kernel) else {
        return;
    };
    assert_eq!(outcome, Outcome::PowerOff, "{out}");
    assert!(out.contains("power button pressed"), "{out}");
    assert!(!out.contains("without an event"), "{out}");
}

#[test]
fn the_power_button_powers_off_a_guest_on_userspace_irqchip() {
    let Some((outcome, out)) = press_and_wait(IrqchipMode::Userspace) else {
        return;
    };
    assert_eq!(outcome, Outcome::PowerOff, "{out}");
    assert!(out.contains("power button pressed"), "{out}");
    assert!(!out.contains("without an event"), "{out}");
}

/// `--no-acpi`: no GED on the bus, no button to press; shutdown stops the VM.
#[test]
fn without_acpi_there_is_no_button_and_shutdown_stops() {
    let Some(kvm) = kvm() else { return };
    let out = Capture::default();
    let mut c = config(test_guests::POWER_BUTTON, 1, &out);
    c.acpi = false;
    let mut vm = build(&kvm, c);
    assert!(vm.power_button().is_none());
    vm.start().unwrap();
    let controller = vm.controller().unwrap();
    assert_eq!(
        controller.press_power_button(),
        Err(ControlError::NoPowerButton)
    );
    assert_eq!(
        controller.shutdown(Outcome::Requested("no button".into())),
        Ok(Shutdown::Stopped)
    );
    assert_eq!(
        controller.shutdown(Outcome::Requested("again".into())),
        Err(ControlError::Stopped)
    );
    assert_eq!(vm.wait(), Outcome::Requested("no button".into()));
}
