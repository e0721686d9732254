//! VFIO passthrough on real KVM with the fake device standing in for the VFIO ioctls
//! (`vfio::fake`): a tiny guest enumerates the function, sizes and moves its BARs, reaches its
//! registers, fills its memory, has it DMA into guest RAM through the mappings the VMM gave it,
//! and takes the completion through MSI-X. With the BAR mapped into the guest, its accesses
//! never reach the VMM (counted); with it trapped, every one does.
//!
//! Needs /dev/kvm: without it each test prints why it is skipped, except under CI=true.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vfio::device::Stats;
use vfio::fake::{FakeDevice, FakeHandle};
use vmm::{IrqchipMode, Outcome, VfioConfig};

/// Boots the VFIO guest with the fake; returns the fake's handle, the function's counters
/// and the output.
fn boot_fake(irqchip: IrqchipMode, mappable: bool) -> Option<(FakeHandle, Arc<Stats>, String)> {
    let kvm = kvm()?;
    let out = Capture::default();
    let mut c = config(test_guests::VFIO, 1, &out);
    c.irqchip = irqchip;
    let (fake, handle) = FakeDevice::new(mappable).unwrap();
    let stats = Arc::new(Stats::default());
    c.vfio = vec![VfioConfig::Backend {
        name: "fake".into(),
        backend: Box::new(fake),
        stats: stats.clone(),
    }];
    let outcome = run_with_limit(build(&kvm, c), Duration::from_secs(60));
    let text = out.text();
    assert_eq!(
        outcome,
        Outcome::DebugExit(0),
        "{irqchip:?}, mappable {mappable}: the status is the failed check; output:\n{text}"
    );
    assert!(text.contains("vfio: 1b36:0100 at device 01\r\n"), "{text}");
    assert!(
        text.contains("vfio: DMA of 4096 bytes into RAM, MSI-X vector 0 arrived"),
        "{text}"
    );
    // The device was reset when the VM was made and when it went, and can no longer reach
    // guest RAM.
    handle.stats(|s| {
        assert_eq!(s.resets, 2);
        assert!(s.dma.is_empty(), "DMA mappings left: {:?}", s.dma);
        assert!(
            s.msix.is_none() && s.intx.is_none(),
            "interrupts left wired"
        );
    });
    // What the guest wrote through BAR 2 is in the device's memory.
    let bar2 = handle.bar2(4 * 1023, 4);
    assert_eq!(
        u32::from_le_bytes(bar2.try_into().unwrap()),
        1023u32.wrapping_mul(0x9e37_79b9)
    );
    Some((handle, stats, text))
}

#[test]
fn a_guest_drives_a_passed_through_function_with_its_bar_mapped_and_no_exits() {
    let Some((fake, stats, _)) = boot_fake(IrqchipMode::Kernel, true) else {
        return;
    };
    // 1024 stores and a load in BAR 2, none of which reached the VMM or the device's
    // trapped path: the guest wrote the device's memory directly.
    fake.stats(|s| assert_eq!((s.reads[2], s.writes[2]), (0, 0), "BAR 2 accesses trapped"));
    let trapped = stats.trapped.load(Ordering::Relaxed);
    assert!(trapped < 20, "only the register accesses trap: {trapped}");
    // Vector 0 was unmasked when the device fired it: the device's eventfd was the irqfd,
    // so the interrupt reached the guest without the VMM.
    assert_eq!(stats.relayed.load(Ordering::Relaxed), 0);
}

#[test]
fn without_the_mapping_every_bar_access_traps_to_the_device() {
    let Some((fake, stats, _)) = boot_fake(IrqchipMode::Kernel, false) else {
        return;
    };
    fake.stats(|s| {
        assert_eq!(s.writes[2], 1024, "one trapped access per store");
        assert_eq!(s.reads[2], 1);
    });
    assert!(stats.trapped.load(Ordering::Relaxed) > 1025);
}

#[test]
fn the_userspace_irqchip_relays_the_devices_interrupts() {
    let Some((_, stats, _)) = boot_fake(IrqchipMode::Userspace, true) else {
        return;
    };
    // No irqfd there: the device signals the VMM's event, which delivers the vector.
    assert!(stats.relayed.load(Ordering::Relaxed) >= 1);
}
