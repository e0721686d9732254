//! VFIO passthrough on real KVM with the fake device standing in for the VFIO ioctls
//! (`vfio::fake`): a tiny guest enumerates the function, sizes and moves its BARs, reaches its
//! registers, fills its memory, has it DMA into guest RAM through the mappings the VMM gave it,
//! and takes the completion through MSI-X. With the BAR mapped into the guest, its accesses
//! never reach the VMM (counted); with it trapped, every one does; with the MSI-X table in
//! it, all but the table's page is mapped. Another guest takes the function's INTx (twice,
//! through the EOI's unmask), MSI and MSI-X in turn, on both irqchips.
//!
//! Needs /dev/kvm: without it each test prints why it is skipped, except under CI=true.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vfio::device::Stats;
use vfio::fake::{FakeDevice, FakeHandle, FakeOptions, BAR2_MSIX_TABLE};
use vmm::{IrqchipMode, Outcome, VfioConfig};

/// Boots the VFIO guest with the fake; returns the fake's handle, the function's counters
/// and the output.
fn boot_fake(irqchip: IrqchipMode, mappable: bool) -> Option<(FakeHandle, Arc<Stats>, String)> {
    let o = FakeOptions {
        mappable,
        ..FakeOptions::default()
    };
    boot_with(irqchip, o)
}

fn boot_with(irqchip: IrqchipMode, o: FakeOptions) -> Option<(FakeHandle, Arc<Stats>, String)> {
    let mappable = o.mappable;
    let (handle, stats, text) = boot(test_guests::VFIO, irqchip, o)?;
    assert!(text.contains("vfio: 1b36:0100 at device 01\r\n"), "{text}");
    assert!(
        text.contains("vfio: DMA of 4096 bytes into RAM, MSI-X vector 0 arrived"),
        "{text}"
    );
    // What the guest wrote through BAR 2 is in the device's memory.
    let word = |at| u32::from_le_bytes(handle.bar2(at, 4).try_into().unwrap());
    assert_eq!(word(4 * 1023), 1023u32.wrapping_mul(0x9e37_79b9));
    assert_eq!(word(0xa000), 0x5aa5_c33c, "mappable {mappable}");
    Some((handle, stats, text))
}

/// Boots `guest` with a fake made as `o` says; checks it ended well and left the device
/// reset, unmapped and unwired.
fn boot(
    guest: &'static [u8],
    irqchip: IrqchipMode,
    o: FakeOptions,
) -> Option<(FakeHandle, Arc<Stats>, String)> {
    let kvm = kvm()?;
    let out = Capture::default();
    let mut c = config(guest, 1, &out);
    c.irqchip = irqchip;
    let (fake, handle) = FakeDevice::with(o).unwrap();
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
        "{irqchip:?}, {o:?}: the status is the failed check; output:\n{text}"
    );
    // The device was reset when the VM was made and when it went, and can no longer reach
    // guest RAM.
    handle.stats(|s| {
        assert_eq!(s.resets, 2);
        assert!(s.dma.is_empty(), "DMA mappings left: {:?}", s.dma);
        assert!(
            s.msix.is_none() && s.msi.is_none() && s.intx.is_none(),
            "interrupts left wired"
        );
    });
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
        assert_eq!(s.writes[2], 1025, "one trapped access per store");
        assert_eq!(s.reads[2], 2);
    });
    assert!(stats.trapped.load(Ordering::Relaxed) > 1027);
}

#[test]
fn the_userspace_irqchip_relays_the_devices_interrupts() {
    let Some((_, stats, _)) = boot_fake(IrqchipMode::Userspace, true) else {
        return;
    };
    // No irqfd there: the device signals the VMM's event, which delivers the vector.
    assert!(stats.relayed.load(Ordering::Relaxed) >= 1);
}

/// The MSI-X table in BAR 2 (at 0x8000): the BAR is mapped around the table's page, in two
/// slots, so the guest's 1,025 stores and 2 loads in BAR 2 never exit, while its table
/// accesses trap to the emulated table. `sparse`: the region says which areas map (as the
/// kernel's vfio-pci does); else it maps whole and the VMM leaves the page out itself.
fn around_the_table(sparse: bool) {
    let o = FakeOptions {
        msix_in_bar2: true,
        sparse,
        ..FakeOptions::default()
    };
    let Some((fake, stats, _)) = boot_with(IrqchipMode::Kernel, o) else {
        return;
    };
    fake.stats(|s| {
        assert_eq!((s.reads[2], s.writes[2]), (0, 0), "BAR 2 accesses trapped");
        assert_eq!((s.reads[4], s.writes[4]), (0, 0), "no BAR 4");
        let page = BAR2_MSIX_TABLE..BAR2_MSIX_TABLE + 0x1000;
        assert!(!s.mmaps.is_empty());
        for &(region, offset, size) in &s.mmaps {
            assert_eq!(region, 2);
            assert!(
                offset + size <= page.start || offset >= page.end,
                "the table's page was mapped: {:?}",
                s.mmaps
            );
        }
    });
    assert!(stats.trapped.load(Ordering::Relaxed) < 20);
    assert_eq!(stats.relayed.load(Ordering::Relaxed), 0);
}

#[test]
fn a_bar_holding_the_msix_table_is_mapped_around_its_page() {
    around_the_table(false);
}

#[test]
fn a_sparse_mmap_region_is_mapped_in_its_areas() {
    around_the_table(true);
}

/// The interrupt guest on a fake with MSI, and MSI-X when `msix`.
fn interrupts(irqchip: IrqchipMode, msix: bool) {
    let o = FakeOptions {
        msi: true,
        msix,
        ..FakeOptions::default()
    };
    let Some((fake, stats, text)) = boot(test_guests::VFIO_IRQ, irqchip, o) else {
        return;
    };
    assert!(text.contains("vfio-irq: INTx twice\r\n"), "{text}");
    assert!(text.contains("vfio-irq: MSI vector 1\r\n"), "{text}");
    assert_eq!(
        text.contains("vfio-irq: MSI-X vector 0\r\n"),
        msix,
        "{text}"
    );
    fake.stats(|s| {
        // INTx fired twice and the guest's EOI of the first unmasked it; one MSI, one
        // MSI-X, and never two kinds at once (the fake refuses that, as vfio-pci does).
        assert_eq!(s.raised, (2, 1, u64::from(msix)), "{irqchip:?}");
        assert!(s.unmasks >= 1);
    });
    let relayed = stats.relayed.load(Ordering::Relaxed);
    match irqchip {
        // Unmasked vectors go from the device's eventfd straight to KVM's irqfd.
        IrqchipMode::Kernel => assert_eq!(relayed, 0),
        IrqchipMode::Userspace => assert_eq!(relayed, 1 + u64::from(msix)),
    }
}

#[test]
fn msi_and_intx_of_a_function_without_msix_on_the_kernel_irqchip() {
    interrupts(IrqchipMode::Kernel, false);
}

#[test]
fn msi_and_intx_of_a_function_without_msix_on_the_userspace_irqchip() {
    interrupts(IrqchipMode::Userspace, false);
}

#[test]
fn with_msi_and_msix_the_guest_picks_on_the_kernel_irqchip() {
    interrupts(IrqchipMode::Kernel, true);
}

#[test]
fn with_msi_and_msix_the_guest_picks_on_the_userspace_irqchip() {
    interrupts(IrqchipMode::Userspace, true);
}
