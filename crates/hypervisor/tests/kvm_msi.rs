//! MSI lines and any-length notify addresses on the real KVM: the ioctls are accepted and the
//! routing table survives lines coming and going. (Delivery into a guest is proven by the
//! guest programs in `crates/vmm/tests`.)
//!
//! Needs /dev/kvm: without it each test prints why it is skipped, except under CI=true where a
//! missing /dev/kvm fails the test.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use hypervisor::kvm::Kvm;
use hypervisor::{Error, Event, Hypervisor, MsiMessage, Vm};

fn kvm() -> Option<Kvm> {
    match Kvm::open() {
        Ok(k) => Some(k),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but KVM is unusable: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: this test needs KVM, which is unusable here: {e}");
            None
        }
    }
}

/// Vector `vector`, fixed delivery, to APIC ID `dest` in physical mode.
fn msg(dest: u8, vector: u8) -> MsiMessage {
    MsiMessage {
        address: 0xfee0_0000 | u64::from(dest) << 12,
        data: u32::from(vector),
    }
}

#[test]
fn msi_lines_program_trigger_and_drop() {
    let Some(kvm) = kvm() else { return };
    let vm = kvm.create_vm().unwrap();
    vm.create_irqchip(false).unwrap();
    let _vcpu = vm.create_vcpu(0).unwrap(); // APIC ID 0
    let a = vm.msi_line(true).unwrap();
    let b = vm.msi_line(true).unwrap();
    let direct = vm.msi_line(false).unwrap();
    // Before any message: triggers do nothing, without error.
    for line in [&a, &b, &direct] {
        line.trigger().unwrap();
    }
    a.set_message(Some(msg(0, 0x40))).unwrap();
    b.set_message(Some(msg(0, 0x41))).unwrap();
    direct.set_message(Some(msg(0, 0x42))).unwrap();
    for line in [&a, &b, &direct] {
        line.trigger().unwrap();
    }
    // The same message again (no ioctl), a new one, and a destination no APIC has.
    a.set_message(Some(msg(0, 0x40))).unwrap();
    a.set_message(Some(msg(0, 0x50))).unwrap();
    direct.set_message(Some(msg(7, 0x42))).unwrap();
    a.trigger().unwrap();
    direct.trigger().unwrap();
    // Disabled lines.
    a.set_message(None).unwrap();
    direct.set_message(None).unwrap();
    a.trigger().unwrap();
    direct.trigger().unwrap();
    // Lines come and go; their GSIs are reused.
    drop(b);
    let c = vm.msi_line(true).unwrap();
    c.set_message(Some(msg(0, 0x43))).unwrap();
    c.trigger().unwrap();
    drop(a);
    // A line outliving its VM is inert.
    drop(_vcpu);
    drop(vm);
    c.set_message(Some(msg(0, 0x44))).unwrap();
    c.trigger().unwrap();
    direct.set_message(Some(msg(0, 0x45))).unwrap();
    direct.trigger().unwrap();
}

#[test]
fn without_the_in_kernel_irqchip_msi_is_unsupported() {
    let Some(kvm) = kvm() else { return };
    let vm = kvm.create_vm().unwrap();
    for eventfd in [true, false] {
        assert!(matches!(vm.msi_line(eventfd), Err(Error::Unsupported)));
    }
}

#[test]
fn notify_any_registers_and_unregisters() {
    let Some(kvm) = kvm() else { return };
    let vm = kvm.create_vm().unwrap();
    let evt = Event::new().unwrap();
    let addr = 0xe000_0000;
    vm.register_mmio_notify_any(&evt, addr).unwrap();
    // Moved: gone from the old address, registered at the new one.
    vm.unregister_mmio_notify_any(&evt, addr).unwrap();
    vm.register_mmio_notify_any(&evt, addr + 0x1000).unwrap();
    assert!(
        vm.unregister_mmio_notify_any(&evt, addr).is_err(),
        "nothing left there"
    );
    vm.unregister_mmio_notify_any(&evt, addr + 0x1000).unwrap();
}
