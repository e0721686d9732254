//! The x86_64 guest-physical memory map: every fixed address the VMM uses, in one place.
//!
//! ```text
//! 0x0000_0000 .. 0x0009_fc00   low RAM: GDT, IDT, boot stack, page tables, zero page, cmdline
//! 0x0009_fc00 .. 0x0010_0000   reserved: EBDA, legacy VGA/ROM hole, BIOS area with the
//!                              ACPI tables (0xe_0000) and the MP table (0xf_0000)
//! 0x0010_0000 .. RAM_LOW_END   RAM; kernels load at 1 MiB or above
//! 0xc000_0000 .. 0xd000_0000   PCI MMIO window: the guest assigns the BARs of PCI devices here
//!                              (not in e820: Linux only uses a window the map leaves free)
//! 0xd000_0000 .. 0xd100_0000   virtio-mmio windows, 4 KiB each
//! 0xd100_0000 .. 0xd200_0000   platform MMIO devices (MMIO console, test devices), 4 KiB each
//! 0xe000_0000 .. 0xf000_0000   PCIe ECAM, reserved in e820 (1 MiB per bus; only bus 0 is used)
//! 0xfec0_0000 .. 0xfec0_1000   IOAPIC
//! 0xfee0_0000 .. 0xfee0_1000   local APIC
//! 0xfffb_c000 .. 0xfffc_0000   KVM private (identity-map page, TSS)
//! 0x1_0000_0000 ..             high RAM: whatever did not fit below RAM_LOW_END
//! ```
//!
//! The I/O port space: legacy devices below 0x1000 (i8042 0x60/0x64, debug exit 0xf4, COM1
//! 0x3f8, ACPI PM 0x600-0x602, the ACPI GED's event status 0x603, PCI configuration
//! 0xcf8-0xcff), PCI I/O BARs 0x1000-0xffff.
//!
//! IOAPIC lines (GSIs): i8042 1 and 12, the ACPI GED 3, COM1 4, virtio-mmio 5-19, PCI INTx
//! 20-23 (0 and 2 are the PIT's, where there is one).
//!
//! The specification's own picture overlaps itself (virtio windows inside low RAM, a PCI hole
//! below the end of low RAM); this map keeps its intent with ranges that never collide, and
//! [`memory_map`] plus its test prove that for every RAM size.

use crate::{GIB, KIB, MIB};

// Boot structures in low RAM.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` and its memory map follow it.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MEMMAP_START: u64 = PVH_INFO_START + 0x40;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Top of the boot stack (grows down from here).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4, PDPT, then four page directories identity-mapping the first 4 GiB.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Kernel command line, up to [`CMDLINE_MAX_SIZE`] bytes.
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;

pub const EBDA_START: u64 = 0x9_fc00;
/// RSDP, then the other ACPI tables, up to the MP table.
pub const ACPI_START: u64 = 0xe_0000;
/// MP floating pointer and configuration table.
pub const MPTABLE_START: u64 = 0xf_0000;
/// Kernels and the PVH entry are loaded at or above 1 MiB.
pub const HIMEM_START: u64 = MIB;

/// RAM below 4 GiB ends here; the rest of the 32-bit space is for devices.
pub const RAM_LOW_END: u64 = 3 * GIB;
/// Where the guest places PCI memory BARs (the host bridge's memory window).
pub const PCI_MMIO_START: u64 = 0xc000_0000;
pub const PCI_MMIO_SIZE: u64 = 256 * MIB;
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 16 * MIB;
pub const PLATFORM_MMIO_START: u64 = 0xd100_0000;
pub const PLATFORM_MMIO_SIZE: u64 = 16 * MIB;
/// Each MMIO device gets one 4 KiB window.
pub const MMIO_WINDOW_SIZE: u64 = 4 * KIB;
/// The PCIe enhanced configuration window: room for buses 0-255, 1 MiB each. All of it is
/// reserved in e820; the MCFG table and the host bridge describe only the buses in use.
pub const PCIE_ECAM_START: u64 = 0xe000_0000;
pub const PCIE_ECAM_SIZE: u64 = 256 * MIB;
/// Configuration space of one bus in ECAM: 32 devices x 8 functions x 4 KiB.
pub const PCIE_ECAM_BUS_SIZE: u64 = MIB;
/// Buses behind the host bridge: bus 0 only (segment 0).
pub const PCI_BUS_COUNT: u8 = 1;
/// The part of the ECAM window that the MCFG table describes: buses 0..PCI_BUS_COUNT.
pub const PCIE_ECAM_USED_SIZE: u64 = PCI_BUS_COUNT as u64 * PCIE_ECAM_BUS_SIZE;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 4 * KIB;
pub const APIC_START: u64 = 0xfee0_0000;
/// Each vCPU sees its own local APIC in this page.
pub const APIC_SIZE: u64 = 4 * KIB;
pub const KVM_PRIVATE_START: u64 = 0xfffb_c000;
pub const KVM_PRIVATE_SIZE: u64 = 0x4000;
pub const HIGH_RAM_START: u64 = 4 * GIB;

// The I/O port space: the legacy devices the ACPI tables and the MP table describe.
/// COM1, the 16550A serial port: eight ports and ISA IRQ 4.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// The ACPI sleep control, sleep status and reset registers (one byte each) of the FADT.
pub const ACPI_PM_PORT: u64 = 0x600;
/// The ACPI Generic Event Device's event status register (one byte, read-to-clear), right
/// after the PM registers; the DSDT's `_EVT` reads it.
pub const ACPI_GED_PORT: u64 = 0x603;
/// The GED's interrupt: GSI 3, the ISA line of a COM2 this machine does not have, so it is
/// edge-triggered, active-high as ISA lines are, and free on both interrupt controllers.
pub const ACPI_GED_GSI: u32 = 3;
/// PCI configuration mechanism #1: the address register at 0xcf8, data at 0xcfc-0xcff.
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
pub const PCI_CONFIG_PORT_SIZE: u64 = 8;
/// Where the guest places PCI I/O BARs (the host bridge's I/O window): 0x1000-0xffff, above
/// every legacy port.
pub const PCI_IO_START: u64 = 0x1000;
pub const PCI_IO_SIZE: u64 = 0xf000;

// The port ranges never overlap (the i8042 at 0x60/0x64 and the debug exit at 0xf4, defined
// with their devices, are below COM1) and the PCI I/O window ends with the 16-bit space.
const _: () = {
    assert!(COM1_PORT + 8 <= ACPI_PM_PORT);
    assert!(ACPI_PM_PORT + 3 <= ACPI_GED_PORT);
    assert!(ACPI_GED_PORT < PCI_CONFIG_PORT);
    assert!(PCI_CONFIG_PORT + PCI_CONFIG_PORT_SIZE <= PCI_IO_START);
    assert!(PCI_IO_START + PCI_IO_SIZE == 0x1_0000);
    assert!(PCIE_ECAM_USED_SIZE <= PCIE_ECAM_SIZE);
};

// The boot structures in low RAM never overlap (checked at compile time).
const _: () = {
    assert!(PD_START + 4 * 4096 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER - 0x800);
    assert!(PVH_MEMMAP_START + 16 * 24 <= ZERO_PAGE_START);
    assert!(ACPI_START < MPTABLE_START && MPTABLE_START < HIMEM_START);
};

/// Smallest guest RAM the boot structures and a kernel at 1 MiB fit in.
pub const MIN_RAM: u64 = 2 * MIB;

/// MMIO window of the `n`th platform device (MMIO console = 0).
pub const fn platform_mmio_window(n: u64) -> u64 {
    PLATFORM_MMIO_START + n * MMIO_WINDOW_SIZE
}

/// MMIO window of the `n`th virtio-mmio device.
pub const fn virtio_mmio_window(n: u64) -> u64 {
    VIRTIO_MMIO_START + n * MMIO_WINDOW_SIZE
}

/// Interrupt lines for virtio-mmio devices: GSIs 5..=19 of the IOAPIC (0-4 are the PIT,
/// keyboard, cascade, the ACPI GED and COM1; 20-23 are PCI INTx).
pub const VIRTIO_GSI_START: u32 = 5;
pub const IOAPIC_PINS: u32 = 24;
/// How many virtio-mmio devices a VM can have: one interrupt line each.
pub const MAX_VIRTIO_DEVICES: u32 = PCI_INTX_GSI_BASE - VIRTIO_GSI_START;

/// PCI INTx lines: INTA-INTD of every slot share the IOAPIC GSIs 20-23 (level-triggered,
/// active-low), rotated by slot as a PCI-to-PCI bridge swizzles them.
pub const PCI_INTX_GSI_BASE: u32 = 20;
/// Number of INTx lines (INTA-INTD), one GSI each.
pub const PCI_INTX_PINS: u32 = 4;

/// The GSI that interrupt pin `pin` (0 = INTA .. 3 = INTD) of the device in `slot` raises.
pub const fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + ((slot as u32 + pin as u32) % PCI_INTX_PINS)
}

// Virtio-mmio lines and PCI INTx lines never meet, and both fit in the IOAPIC.
const _: () = {
    assert!(VIRTIO_GSI_START + MAX_VIRTIO_DEVICES <= PCI_INTX_GSI_BASE);
    assert!(ACPI_GED_GSI < VIRTIO_GSI_START && ACPI_GED_GSI != COM1_IRQ);
    assert!(PCI_INTX_GSI_BASE + PCI_INTX_PINS <= IOAPIC_PINS);
    assert!(MAX_VIRTIO_DEVICES == 15);
};

/// Interrupt line of the `n`th virtio-mmio device (`n < MAX_VIRTIO_DEVICES`).
pub const fn virtio_gsi(n: u32) -> u32 {
    VIRTIO_GSI_START + n
}

pub use crate::VirtioMmioSlot;

/// Virtio-mmio device `n`'s window and interrupt line (a GSI).
pub const fn virtio_slot(n: u32) -> VirtioMmioSlot {
    VirtioMmioSlot {
        base: virtio_mmio_window(n as u64),
        size: MMIO_WINDOW_SIZE,
        gsi: virtio_gsi(n),
    }
}

/// What a range of the guest-physical space is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Guest RAM, reported as usable to the guest.
    Ram,
    /// Backed by RAM (or, for KVM's private pages, by nothing the guest may use) but reserved
    /// from the guest's allocator.
    Reserved,
    /// Not RAM: device windows.
    Mmio,
    /// Not RAM: a device window the guest must be told is reserved (the PCIe ECAM window,
    /// which Linux uses only if the firmware reserved it).
    ReservedMmio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub name: &'static str,
    pub start: u64,
    pub size: u64,
    pub kind: RegionKind,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// The host-memory ranges that back guest RAM: `[0, min(ram, RAM_LOW_END))` and, if RAM is
/// bigger, the rest from 4 GiB. The legacy hole and EBDA sit inside the first range (backed
/// but not reported as RAM), as on a PC.
pub fn ram_ranges(ram_size: u64) -> Vec<(u64, u64)> {
    let low = ram_size.min(RAM_LOW_END);
    let mut v = vec![(0, low)];
    if ram_size > low {
        v.push((HIGH_RAM_START, ram_size - low));
    }
    v
}

/// The whole map for `ram_size` bytes of RAM, sorted by address.
pub fn memory_map(ram_size: u64) -> Vec<Region> {
    let low = ram_size.min(RAM_LOW_END);
    let r = |name, start, end: u64, kind| Region {
        name,
        start,
        size: end - start,
        kind,
    };
    let mut v = vec![
        r("low RAM", 0, EBDA_START, RegionKind::Ram),
        // One range, as Linux merges it anyway: it reserves 0xa_0000.. itself.
        r(
            "EBDA, legacy hole, BIOS area",
            EBDA_START,
            HIMEM_START,
            RegionKind::Reserved,
        ),
    ];
    if low > HIMEM_START {
        v.push(r("RAM", HIMEM_START, low, RegionKind::Ram));
    }
    v.extend([
        r(
            "PCI MMIO window",
            PCI_MMIO_START,
            PCI_MMIO_START + PCI_MMIO_SIZE,
            RegionKind::Mmio,
        ),
        r(
            "virtio-mmio",
            VIRTIO_MMIO_START,
            VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE,
            RegionKind::Mmio,
        ),
        r(
            "platform MMIO",
            PLATFORM_MMIO_START,
            PLATFORM_MMIO_START + PLATFORM_MMIO_SIZE,
            RegionKind::Mmio,
        ),
        r(
            "PCIe ECAM",
            PCIE_ECAM_START,
            PCIE_ECAM_START + PCIE_ECAM_SIZE,
            RegionKind::ReservedMmio,
        ),
        r(
            "IOAPIC",
            IOAPIC_START,
            IOAPIC_START + 4 * KIB,
            RegionKind::Mmio,
        ),
        r(
            "local APIC",
            APIC_START,
            APIC_START + 4 * KIB,
            RegionKind::Mmio,
        ),
        r(
            "KVM private",
            KVM_PRIVATE_START,
            KVM_PRIVATE_START + KVM_PRIVATE_SIZE,
            RegionKind::Reserved,
        ),
    ]);
    if ram_size > low {
        v.push(r(
            "high RAM",
            HIGH_RAM_START,
            HIGH_RAM_START + (ram_size - low),
            RegionKind::Ram,
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> impl Iterator<Item = u64> {
        let mut v = vec![
            MIN_RAM,
            16 * MIB,
            255 * MIB,
            512 * MIB,
            GIB,
            RAM_LOW_END - 4096,
        ];
        v.extend([
            RAM_LOW_END,
            RAM_LOW_END + 4096,
            4 * GIB,
            8 * GIB,
            33 * GIB,
            64 * GIB,
        ]);
        let mut s = 16 * MIB;
        while s <= 64 * GIB {
            v.push(s);
            s = s * 3 / 2;
        }
        v.into_iter()
    }

    #[test]
    fn regions_never_overlap_and_ram_adds_up() {
        for ram in sizes() {
            let map = memory_map(ram);
            for w in map.windows(2) {
                assert!(
                    w[0].end() <= w[1].start,
                    "{ram:#x}: {:?} overlaps {:?}",
                    w[0],
                    w[1]
                );
            }
            // Every byte of RAM is backed, and everything reported RAM or reserved is backed.
            let backed = ram_ranges(ram);
            let total: u64 = backed.iter().map(|r| r.1).sum();
            assert_eq!(total, ram);
            for reg in map.iter().filter(|r| {
                matches!(r.kind, RegionKind::Ram | RegionKind::Reserved) && r.name != "KVM private"
            }) {
                assert!(
                    backed
                        .iter()
                        .any(|&(s, l)| reg.start >= s && reg.end() <= s + l),
                    "{ram:#x}: {reg:?} is not backed by RAM"
                );
            }
            // No device window is backed by RAM.
            for reg in map
                .iter()
                .filter(|r| r.start >= RAM_LOW_END && r.start < HIGH_RAM_START)
            {
                assert!(backed
                    .iter()
                    .all(|&(s, l)| reg.end() <= s || reg.start >= s + l));
            }
        }
    }

    #[test]
    fn pci_windows_ecam_reserved_mmio_window_free() {
        for ram in sizes() {
            let map = memory_map(ram);
            let find = |start| map.iter().find(|r| r.start == start).unwrap();
            // Linux uses MMCONFIG only where the firmware reserved it, and assigns BARs only
            // in a window the map leaves free.
            let ecam = find(PCIE_ECAM_START);
            assert_eq!(
                (ecam.size, ecam.kind),
                (PCIE_ECAM_SIZE, RegionKind::ReservedMmio)
            );
            let mmio = find(PCI_MMIO_START);
            assert_eq!((mmio.size, mmio.kind), (PCI_MMIO_SIZE, RegionKind::Mmio));
        }
        assert_eq!(PCIE_ECAM_USED_SIZE, MIB);
    }

    #[test]
    fn pci_intx_swizzle_uses_gsis_20_to_23_only() {
        assert_eq!(pci_intx_gsi(0, 0), 20);
        assert_eq!(pci_intx_gsi(1, 0), 21);
        assert_eq!(pci_intx_gsi(1, 3), 20);
        assert_eq!(pci_intx_gsi(3, 2), 21);
        assert_eq!(pci_intx_gsi(31, 3), 22);
        for slot in 0..32 {
            let gsis: Vec<u32> = (0..4).map(|pin| pci_intx_gsi(slot, pin)).collect();
            let mut sorted = gsis.clone();
            sorted.sort();
            assert_eq!(sorted, vec![20, 21, 22, 23], "slot {slot}: {gsis:?}");
        }
        // The last virtio-mmio line is below them.
        assert_eq!(virtio_gsi(MAX_VIRTIO_DEVICES - 1), 19);
    }

    #[test]
    fn kvm_private_region_matches_the_backend() {
        #[cfg(target_os = "linux")]
        assert_eq!(
            hypervisor::kvm::KVM_PRIVATE_REGION,
            (KVM_PRIVATE_START, KVM_PRIVATE_SIZE)
        );
    }
}
