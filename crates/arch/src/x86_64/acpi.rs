//! ACPI tables, built with `acpi_tables`: RSDP -> XSDT -> FADT (-> DSDT), MADT and MCFG.
//!
//! A stock distro kernel (Debian's cloud kernel has no MP-table parser) learns its CPUs and
//! IOAPIC only from the MADT. The platform is "hardware-reduced" ACPI: no PM timer, no SCI, no
//! legacy PIC, as in other microVMs. The RSDP sits at `layout::ACPI_START`, inside the BIOS
//! area a legacy kernel scans; PVH and zero-page boots also pass its address directly.
//!
//! The DSDT describes every device a guest must be told about: COM1 (`PNP0501`, so that the
//! kernel routes its IRQ 4 through the IOAPIC; a hardware-reduced platform has no legacy IRQs
//! otherwise), the virtio-mmio devices, and the `_S5_` sleep type that, written with SLP_EN
//! to the FADT's sleep control register, powers the machine off. The i8042 is not described:
//! it has no keyboard behind it, only the reset line, which Linux pulses without a driver.
//!
//! The power button: a hardware-reduced platform has no fixed-feature events (no SCI, no
//! PM1 registers), so it signals them through a Generic Event Device, `\_SB_.GED0`
//! (`ACPI0013`, Linux's `drivers/acpi/evged.c`): an edge interrupt on
//! `layout::ACPI_GED_GSI`, and an `_EVT` method that the kernel runs for it. `_EVT` reads the
//! event status register (`layout::ACPI_GED_PORT`, cleared by the read) and, for the power
//! button's bit, notifies `\_SB_.PWRB` (`PNP0C0C`, a control-method power button, which the
//! FADT's PWR_BUTTON flag announces) with 0x80, "button pressed": Linux's `button.c` turns
//! that into a KEY_POWER press for user space (systemd-logind, acpid) to act on.
//!
//! The PCI host bridge is always there: `\_SB_.PCI0` (`PNP0A08`, PCI Express root, segment 0,
//! bus 0) with its windows (configuration ports 0xcf8-0xcff, I/O 0x1000-0xffff, memory
//! `layout::PCI_MMIO_START`) and a `_PRT` routing every slot's INTA-INTD to GSIs 20-23; the
//! MCFG table gives the ECAM address of bus 0, and `\_SB_.MBRD` (`PNP0C02`) reserves the ECAM
//! window as a motherboard resource, which is where Linux checks for it.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::GuestMemoryMmap;

use acpi_tables::mcfg::MCFG;

use super::layout::{
    self, VirtioMmioSlot, ACPI_GED_GSI, ACPI_GED_PORT, ACPI_PM_PORT, ACPI_START, APIC_START,
    COM1_IRQ, COM1_PORT, IOAPIC_START, PCIE_ECAM_SIZE, PCIE_ECAM_START, PCI_BUS_COUNT,
    PCI_CONFIG_PORT, PCI_CONFIG_PORT_SIZE, PCI_INTX_PINS, PCI_IO_SIZE, PCI_IO_START, PCI_MMIO_SIZE,
    PCI_MMIO_START,
};
use super::mptable::MAX_CPUS;
use super::{write_bytes, Error, Result};

const OEM_ID: [u8; 6] = *b"VIBEVM";
const OEM_TABLE_ID: [u8; 8] = *b"VIBEVMM ";
const OEM_REVISION: u32 = 1;
/// IAPC_BOOT_ARCH: ISA-style devices present (COM1), no 8042 described (see the module
/// comment), no VGA, ASPM not to be touched, no CMOS RTC. MSI is supported: the bit that says
/// otherwise (bit 3) would make Linux turn MSI and MSI-X off for every PCI device.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
pub const IAPC_BOOT_ARCH: u16 = IAPC_LEGACY_DEVICES
    | IAPC_VGA_NOT_PRESENT
    | IAPC_PCIE_ASPM_CONTROLS
    | IAPC_CMOS_RTC_NOT_PRESENT;

/// The power-management registers at `ACPI_PM_PORT` (devices::acpi_pm implements them).
pub const SLEEP_CONTROL_PORT: u64 = ACPI_PM_PORT;
pub const SLEEP_STATUS_PORT: u64 = ACPI_PM_PORT + 1;
pub const RESET_PORT: u64 = ACPI_PM_PORT + 2;
pub const RESET_VALUE: u8 = 1;
/// SLP_TYP for S5 (soft off), the first element of the DSDT's `_S5_` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The power button's bit in the GED's event status register (devices::acpi_ged sets it).
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 0;
/// What `_EVT` notifies the power button with: "the button was pressed" (ACPI 6.5, 4.8.2.2.1).
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// AML already encoded, to be placed among other objects.
struct Encoded(Vec<u8>);

impl Aml for Encoded {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// PCI slots the `_PRT` routes (slot 0, the host bridge, has no INTx pin; listing it is
/// harmless).
const PCI_SLOTS: u8 = 32;

/// `PCI0`: the host bridge of segment 0. `_CRS` gives the buses behind it, the configuration
/// ports it decodes, and the I/O and memory windows it forwards (where the guest assigns BARs);
/// `_PRT` maps INTA-INTD of each slot straight to an IOAPIC GSI ([`layout::pci_intx_gsi`]),
/// which Linux then programs level-triggered, active-low.
fn pci_host_bridge() -> Encoded {
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let buses = aml::AddressSpace::new_bus_number(0u16, u16::from(PCI_BUS_COUNT) - 1);
    let config = aml::IO::new(
        PCI_CONFIG_PORT as u16,
        PCI_CONFIG_PORT as u16,
        1,
        PCI_CONFIG_PORT_SIZE as u8,
    );
    let io = aml::AddressSpace::new_io(
        PCI_IO_START as u16,
        (PCI_IO_START + PCI_IO_SIZE - 1) as u16,
        None,
    );
    let mem = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START as u32,
        (PCI_MMIO_START + PCI_MMIO_SIZE - 1) as u32,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&buses, &config, &io, &mem]);

    // Package { address (slot << 16 | 0xffff: any function), pin, source 0 (a GSI), GSI }.
    let routes: Vec<(u32, u8, u32)> = (0..PCI_SLOTS)
        .flat_map(|slot| {
            (0..PCI_INTX_PINS as u8).map(move |pin| {
                (
                    u32::from(slot) << 16 | 0xffff,
                    pin,
                    layout::pci_intx_gsi(slot, pin),
                )
            })
        })
        .collect();
    let entries: Vec<aml::Package> = routes
        .iter()
        .map(|(addr, pin, gsi)| aml::Package::new(vec![addr, pin, &aml::ZERO, gsi]))
        .collect();
    let prt = aml::Package::new(entries.iter().map(|p| p as &dyn Aml).collect());

    let fields = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CID".into(), &cid),
        aml::Name::new("_ADR".into(), &aml::ZERO),
        aml::Name::new("_SEG".into(), &aml::ZERO),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_BBN".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &crs),
        aml::Name::new("_PRT".into(), &prt),
    ];
    let dev = aml::Device::new(
        "PCI0".into(),
        fields.iter().map(|x| x as &dyn Aml).collect(),
    );
    Encoded(bytes(&dev))
}

/// `MBRD`: motherboard resources (`PNP0C02`), the whole ECAM window. Linux uses the MCFG's
/// ECAM only if it lies in such a resource (else it says so and falls back to e820).
fn motherboard_resources() -> Encoded {
    let hid = aml::EISAName::new("PNP0C02");
    let ecam = aml::Memory32Fixed::new(true, PCIE_ECAM_START as u32, PCIE_ECAM_SIZE as u32);
    let crs = aml::ResourceTemplate::new(vec![&ecam]);
    let fields = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &crs),
    ];
    let dev = aml::Device::new(
        "MBRD".into(),
        fields.iter().map(|x| x as &dyn Aml).collect(),
    );
    Encoded(bytes(&dev))
}

/// `GED0`, the Generic Event Device, and `PWRB`, the power button it notifies (see the
/// module comment). In ASL:
///
/// ```text
/// Device (GED0) {
///     Name (_HID, "ACPI0013")
///     Name (_UID, 0)
///     Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh,
///         Exclusive) { ACPI_GED_GSI } })
///     OperationRegion (GDST, SystemIO, ACPI_GED_PORT, 1)
///     Field (GDST, ByteAcc, NoLock, WriteAsZeros) { GDAT, 8 }
///     Method (_EVT, 1, Serialized) {
///         Local0 = GDAT                   // reading clears the events
///         If (Local0 & GED_EVENT_POWER_BUTTON) { Notify (\_SB_.PWRB, 0x80) }
///     }
/// }
/// Device (PWRB) { Name (_HID, EisaId ("PNP0C0C")) Name (_UID, 0) }
/// ```
///
/// Linux looks for `_Exx` (here `_E03`) first and falls back to `_EVT`, passing the GSI; one
/// interrupt carries every event, so `_EVT` ignores it and reads which events are pending.
fn power_button() -> (Encoded, Encoded) {
    let irq = aml::Interrupt::new(true, true, false, false, ACPI_GED_GSI);
    let crs = aml::ResourceTemplate::new(vec![&irq]);
    let region = aml::OpRegion::new(
        "GDST".into(),
        aml::OpRegionSpace::SystemIO,
        &(ACPI_GED_PORT as u16),
        &1u8,
    );
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 8)],
    );
    let events = aml::Local(0);
    let status = aml::Path::new("GDAT");
    let read = aml::Store::new(&events, &status);
    let pressed = aml::And::new(&aml::ZERO, &events, &GED_EVENT_POWER_BUTTON);
    let button = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&button, &NOTIFY_BUTTON_PRESSED);
    let if_pressed = aml::If::new(&pressed, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &if_pressed]);
    let ged_fields: [&dyn Aml; 6] = [
        &aml::Name::new("_HID".into(), &"ACPI0013"),
        &aml::Name::new("_UID".into(), &aml::ZERO),
        &aml::Name::new("_CRS".into(), &crs),
        &region,
        &field,
        &evt,
    ];
    let ged = aml::Device::new("GED0".into(), ged_fields.to_vec());

    let hid = aml::EISAName::new("PNP0C0C");
    let pwrb_fields = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &aml::ZERO),
    ];
    let pwrb = aml::Device::new(
        "PWRB".into(),
        pwrb_fields.iter().map(|x| x as &dyn Aml).collect(),
    );
    (Encoded(bytes(&ged)), Encoded(bytes(&pwrb)))
}

/// The MCFG: one ECAM allocation, segment 0, for the buses behind the host bridge.
pub fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCIE_ECAM_START, 0, 0, PCI_BUS_COUNT - 1);
    bytes(&mcfg)
}

/// One byte-wide register in I/O space, as the FADT points at it.
fn io_register(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

/// The DSDT: `_S5_`; COM1; the power button and the GED that signals it; the PCI host bridge and the motherboard resource that reserves its
/// ECAM window; one `LNRO0005` (virtio-mmio) device per slot, with its window and interrupt,
/// the way a stock kernel without command-line virtio devices finds them.
pub fn dsdt(virtio: &[VirtioMmioSlot]) -> Vec<u8> {
    // SLP_TYP for the sleep control register; the second value (SLP_TYPb) is unused there.
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8]);
    let s5 = aml::Name::new("_S5_".into(), &s5);
    // COM1: its eight ports and ISA IRQ 4 (edge, active high, as an ISA interrupt is).
    let com1_io = aml::IO::new(COM1_PORT as u16, COM1_PORT as u16, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::EISAName::new("PNP0501");
    let com1_fields = [
        aml::Name::new("_HID".into(), &com1_hid),
        aml::Name::new("_UID".into(), &0u8),
        aml::Name::new("_CRS".into(), &com1_crs),
    ];
    let com1 = aml::Device::new(
        "COM1".into(),
        com1_fields.iter().map(|x| x as &dyn Aml).collect(),
    );

    let crs: Vec<(aml::Memory32Fixed, aml::Interrupt)> = virtio
        .iter()
        .map(|s| {
            (
                aml::Memory32Fixed::new(true, s.base as u32, s.size as u32),
                // Consumer, edge-triggered, active-high, exclusive: an irqfd pulse.
                aml::Interrupt::new(true, true, false, false, s.gsi),
            )
        })
        .collect();
    let templates: Vec<aml::ResourceTemplate> = crs
        .iter()
        .map(|(m, i)| aml::ResourceTemplate::new(vec![m, i]))
        .collect();
    let uids: Vec<u32> = (0..virtio.len() as u32).collect();
    let names: Vec<[aml::Name; 3]> = templates
        .iter()
        .zip(&uids)
        .map(|(t, uid)| {
            [
                aml::Name::new("_HID".into(), &"LNRO0005"),
                aml::Name::new("_UID".into(), uid),
                aml::Name::new("_CRS".into(), t),
            ]
        })
        .collect();
    let paths: Vec<String> = (0..virtio.len()).map(|n| format!("V{n:03X}")).collect();
    let devices: Vec<aml::Device> = names
        .iter()
        .zip(&paths)
        .map(|(n, p)| {
            aml::Device::new(p.as_str().into(), n.iter().map(|x| x as &dyn Aml).collect())
        })
        .collect();
    let pci0 = pci_host_bridge();
    let mbrd = motherboard_resources();
    let (ged, pwrb) = power_button();
    let mut children: Vec<&dyn Aml> = vec![&com1, &ged, &pwrb, &pci0, &mbrd];
    children.extend(devices.iter().map(|d| d as &dyn Aml));
    let scope = aml::Scope::new("\\_SB_".into(), children);
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = Vec::new();
    s5.to_aml_bytes(&mut body);
    scope.to_aml_bytes(&mut body);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

/// The tables for `num_cpus` CPUs and the virtio-mmio devices: (guest address, bytes) of each,
/// RSDP first.
pub fn build(num_cpus: u32, virtio: &[VirtioMmioSlot]) -> Result<Vec<(u64, Vec<u8>)>> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::TooManyCpus(num_cpus));
    }
    let mut tables = Vec::new();
    let mut next = ACPI_START + 64; // after the RSDP
    let mut place = |data: Vec<u8>, tables: &mut Vec<(u64, Vec<u8>)>| {
        let addr = next;
        next = (next + data.len() as u64 + 15) & !15;
        tables.push((addr, data));
        addr
    };

    let dsdt_addr = place(dsdt(virtio), &mut tables);

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    // Hardware-reduced sleep and reset: byte registers on I/O ports.
    fadt.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    fadt.reset_reg = io_register(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"VIBEVMM\0").into();
    let fadt_addr = place(bytes(&fadt.finalize()), &mut tables);

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for cpu in 0..num_cpus {
        madt.add_structure(ProcessorLocalApic::new(
            cpu as u8,
            cpu as u8,
            EnabledStatus::Enabled,
        ));
    }
    // The IOAPIC's ID follows the last CPU's, as in the MP table.
    madt.add_structure(IoApic::new(num_cpus as u8, IOAPIC_START as u32, 0));
    let madt_addr = place(bytes(&madt), &mut tables);
    let mcfg_addr = place(mcfg(), &mut tables);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(mcfg_addr);
    let xsdt_addr = place(bytes(&xsdt), &mut tables);

    tables.insert(0, (ACPI_START, bytes(&Rsdp::new(OEM_ID, xsdt_addr))));
    Ok(tables)
}

/// Writes the tables and returns the RSDP's address.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u32, virtio: &[VirtioMmioSlot]) -> Result<u64> {
    for (addr, data) in build(num_cpus, virtio)? {
        write_bytes(mem, addr, &data, "ACPI tables")?;
    }
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::layout::MPTABLE_START;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn tables_are_well_formed_and_linked() {
        for cpus in [1, 2, 8, MAX_CPUS] {
            let slots: Vec<_> = (0..3).map(crate::x86_64::layout::virtio_slot).collect();
            let t = build(cpus, &slots).unwrap();
            let find = |addr: u64| &t.iter().find(|(a, _)| *a == addr).unwrap().1;
            let rsdp = &t[0].1;
            assert_eq!(&rsdp[..8], b"RSD PTR ");
            assert_eq!(sum(&rsdp[..20]), 0);
            assert_eq!(sum(rsdp), 0);
            let xsdt = find(u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
            assert_eq!(&xsdt[..4], b"XSDT");
            let mut sigs = Vec::new();
            for (_, table) in &t[1..] {
                assert_eq!(
                    le32(table, 4) as usize,
                    table.len(),
                    "length of {:?}",
                    &table[..4]
                );
                assert_eq!(sum(table), 0, "checksum of {:?}", &table[..4]);
            }
            for i in 0..(xsdt.len() - 36) / 8 {
                let addr = u64::from_le_bytes(xsdt[36 + i * 8..44 + i * 8].try_into().unwrap());
                sigs.push(find(addr)[..4].to_vec());
            }
            assert_eq!(
                sigs,
                vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]
            );
            // MADT: header (44 bytes), one 8-byte local APIC entry per CPU, one IOAPIC entry.
            let madt = find(t.iter().find(|(_, d)| &d[..4] == b"APIC").unwrap().0);
            assert_eq!(madt.len(), 44 + 8 * cpus as usize + 12);
            assert_eq!(le32(madt, 36), APIC_START as u32);
            let dsdt = find(t.iter().find(|(_, d)| &d[..4] == b"DSDT").unwrap().0);
            let hids = dsdt.windows(8).filter(|w| w == b"LNRO0005").count();
            assert_eq!(hids, 3);
            for name in [b"PCI0", b"_PRT", b"MBRD", b"GED0", b"PWRB", b"_EVT"] {
                assert!(
                    dsdt.windows(4).any(|w| w == name),
                    "{name:?} not in the DSDT"
                );
            }
            let mcfg = find(t.iter().find(|(_, d)| &d[..4] == b"MCFG").unwrap().0);
            assert_eq!(mcfg, &super::mcfg());
            // All of it stays below the MP table.
            let (last, data) = t.last().unwrap();
            assert!(last + data.len() as u64 <= MPTABLE_START);
        }
    }

    /// MCFG: header, 8 reserved bytes, one 16-byte allocation for segment 0, bus 0.
    #[test]
    fn mcfg_describes_bus_0_of_segment_0() {
        let m = mcfg();
        assert_eq!(&m[..4], b"MCFG");
        assert_eq!(le32(&m, 4) as usize, m.len());
        assert_eq!(m.len(), 36 + 8 + 16);
        assert_eq!(sum(&m), 0);
        assert_eq!(m[36..44], [0; 8]);
        assert_eq!(
            u64::from_le_bytes(m[44..52].try_into().unwrap()),
            layout::PCIE_ECAM_START
        );
        assert_eq!(m[52..56], [0, 0, 0, 0]); // segment 0, buses 0..=0
        assert_eq!(m[56..60], [0; 4]);
        // The buses described fit in the reserved ECAM window.
        let end = layout::PCIE_ECAM_START
            + (u64::from(m[55]) + 1 - u64::from(m[54])) * layout::PCIE_ECAM_BUS_SIZE;
        assert!(end <= layout::PCIE_ECAM_START + layout::PCIE_ECAM_SIZE);
    }
}

#[cfg(test)]
mod iasl {

    use std::process::Command;

    /// Decompiles `table` with ACPICA's `iasl` (Debian `acpica-tools`, installed by
    /// scripts/test.sh), or says why not.
    fn decompile(name: &str, table: &[u8]) -> Option<String> {
        if Command::new("iasl").arg("-v").output().is_err() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI=true but no iasl"
            );
            eprintln!("SKIPPED: iasl not installed (apt-get install acpica-tools)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("vibe-iasl-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.aml")), table).unwrap();
        let out = Command::new("iasl")
            .arg("-d")
            .arg(format!("{name}.aml"))
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
        let _ = std::fs::remove_dir_all(dir);
        Some(dsl)
    }

    /// The DSDT decompiles to every device as written, COM1 and `_S5_` included.
    #[test]
    fn iasl_decompiles_the_dsdt_to_our_devices() {
        let slots: Vec<_> = (0..3).map(crate::x86_64::layout::virtio_slot).collect();
        let Some(dsl) = decompile("dsdt", &super::dsdt(&slots)) else {
            return;
        };
        for (n, s) in slots.iter().enumerate() {
            assert!(dsl.contains(&format!("Device (V{n:03X})")), "{dsl}");
            assert!(
                dsl.contains(&format!("0x{:08X},         // Address Base", s.base)),
                "{dsl}"
            );
            assert!(dsl.contains(&format!("0x{:08X},\n", s.gsi)), "{dsl}");
        }
        assert_eq!(dsl.matches("Name (_HID, \"LNRO0005\")").count(), 3);
        assert_eq!(
            dsl.matches("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive")
                .count(),
            5,
            "COM1, GED0 and the three virtio-mmio devices"
        );
        // COM1: a 16550 at 0x3f8-0x3ff with IRQ 4.
        let com1 = &dsl[dsl.find("Device (COM1)").expect("COM1 in the DSDT")..];
        assert!(com1.contains("EisaId (\"PNP0501\")"), "{dsl}");
        assert!(
            com1.contains(
                "IO (Decode16,\n                    0x03F8,             // Range Minimum\n                    0x03F8,             // Range Maximum\n                    0x01,               // Alignment\n                    0x08,               // Length"
            ),
            "{dsl}"
        );
        assert!(com1.contains("0x00000004,\n"), "{dsl}");
        // _S5_: SLP_TYP 5 first.
        assert!(
            dsl.contains(
                "Name (_S5, Package (0x02)  // _S5_: S5 System State\n    {\n        0x05, "
            ),
            "{dsl}"
        );
    }

    /// `\_SB_.GED0` decompiles to what Linux's evged.c and button.c expect: an `ACPI0013`
    /// device with one edge interrupt on the GED's GSI and an `_EVT` method that reads the
    /// event register on its port and notifies `\_SB_.PWRB` (`PNP0C0C`) with 0x80.
    #[test]
    fn iasl_decompiles_the_ged_and_the_power_button() {
        use crate::x86_64::layout::{ACPI_GED_GSI, ACPI_GED_PORT};
        let Some(dsl) = decompile("dsdt-ged", &super::dsdt(&[])) else {
            return;
        };
        let ged = &dsl[dsl.find("Device (GED0)").expect("GED0 in the DSDT")..];
        let ged = &ged[..ged.find("Device (PWRB)").expect("PWRB after GED0")];
        assert!(
            ged.contains("Name (_HID, \"ACPI0013\" /* Generic Event Device */)"),
            "{dsl}"
        );
        assert!(
            ged.contains(&format!(
                "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )\n                {{\n                    0x{ACPI_GED_GSI:08X},\n"
            )),
            "{dsl}"
        );
        assert!(
            ged.contains(&format!(
                "OperationRegion (GDST, SystemIO, 0x{ACPI_GED_PORT:04X}, One)"
            )),
            "{dsl}"
        );
        assert!(
            ged.contains("Field (GDST, ByteAcc, NoLock, WriteAsZeros)\n            {\n                GDAT,   8\n"),
            "{dsl}"
        );
        assert!(ged.contains("Method (_EVT, 1, Serialized)"), "{dsl}");
        assert!(ged.contains("Local0 = GDAT"), "{dsl}");
        assert!(ged.contains("If ((Local0 & One))"), "{dsl}");
        assert!(ged.contains("Notify (\\_SB.PWRB, 0x80)"), "{dsl}");
        let pwrb = &dsl[dsl.find("Device (PWRB)").unwrap()..];
        assert!(
            pwrb.contains("EisaId (\"PNP0C0C\") /* Power Button Device */"),
            "{dsl}"
        );
    }

    /// `\_SB_.PCI0` decompiles to a PCI Express host bridge for segment 0, bus 0, with its
    /// windows and one `_PRT` entry per slot and pin; `\_SB_.MBRD` reserves the ECAM window.
    #[test]
    fn iasl_decompiles_the_pci_host_bridge() {
        use crate::x86_64::layout::pci_intx_gsi;
        let Some(dsl) = decompile("dsdt-pci", &super::dsdt(&[])) else {
            return;
        };
        let pci0 = &dsl[dsl.find("Device (PCI0)").expect("PCI0 in the DSDT")..];
        let pci0 = &pci0[..pci0.find("Device (MBRD)").expect("MBRD after PCI0")];
        for line in [
            "Name (_HID, EisaId (\"PNP0A08\")",
            "Name (_CID, EisaId (\"PNP0A03\")",
            "Name (_ADR, Zero)",
            "Name (_SEG, Zero)",
            "Name (_UID, Zero)",
            "Name (_BBN, Zero)",
        ] {
            assert!(pci0.contains(line), "{line} missing in {pci0}");
        }
        // _CRS: bus 0 only, the configuration ports, the I/O and memory windows.
        let range = |what: &str, min: &str, max: &str| {
            let at = pci0
                .find(what)
                .unwrap_or_else(|| panic!("no {what} in {pci0}"));
            let body: Vec<&str> = pci0[at..].lines().take(4).collect();
            assert!(body[2].contains(&format!("{min},")), "{what}: {body:?}");
            assert!(body[3].contains(&format!("{max},")), "{what}: {body:?}");
        };
        range("WordBusNumber (ResourceProducer,", "0x0000", "0x0000");
        range("WordIO (ResourceProducer,", "0x1000", "0xFFFF");
        range(
            "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
            "0xC0000000",
            "0xCFFFFFFF",
        );
        assert!(
            pci0.contains(
                "IO (Decode16,\n                    0x0CF8,             // Range Minimum\n                    0x0CF8,             // Range Maximum\n                    0x01,               // Alignment\n                    0x08,               // Length"
            ),
            "{pci0}"
        );
        // _PRT: 32 slots x 4 pins, each {slot << 16 | 0xffff, pin, Zero, GSI}.
        let prt = &pci0[pci0
            .find("Name (_PRT, Package (0x80)")
            .expect("_PRT of 128")..];
        let entries: Vec<Vec<&str>> = prt
            .split("Package (0x04)")
            .skip(1)
            .map(|e| {
                e.split(['{', '}'])
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .map(str::trim)
                    .collect()
            })
            .collect();
        assert_eq!(entries.len(), 128);
        let int = |s: &str| match s {
            "Zero" => 0,
            "One" => 1,
            _ => u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap(),
        };
        for (i, e) in entries.iter().enumerate() {
            let (slot, pin) = ((i / 4) as u8, (i % 4) as u8);
            assert_eq!(e.len(), 4, "{e:?}");
            assert_eq!(int(e[0]), u32::from(slot) << 16 | 0xffff, "{e:?}");
            assert_eq!(int(e[1]), u32::from(pin), "{e:?}");
            assert_eq!(e[2], "Zero", "{e:?}");
            assert_eq!(int(e[3]), pci_intx_gsi(slot, pin), "{e:?}");
        }
        // MBRD: the ECAM window as a motherboard resource.
        let mbrd = &dsl[dsl.find("Device (MBRD)").unwrap()..];
        assert!(mbrd.contains("EisaId (\"PNP0C02\")"), "{mbrd}");
        assert!(
            mbrd.contains("Memory32Fixed (ReadWrite,\n                    0xE0000000,         // Address Base\n                    0x10000000,         // Address Length"),
            "{mbrd}"
        );
    }

    /// The MCFG decompiles to one allocation: ECAM at 0xe000_0000, segment 0, bus 0 to 0.
    #[test]
    fn iasl_decompiles_the_mcfg() {
        let Some(dsl) = decompile("mcfg", &super::mcfg()) else {
            return;
        };
        let field = |name: &str| -> Vec<String> {
            dsl.lines()
                .filter(|l| l.contains(&format!("{name} :")))
                .map(|l| l.rsplit(" : ").next().unwrap().trim().to_string())
                .collect()
        };
        assert_eq!(field("Base Address"), ["00000000E0000000"]);
        assert_eq!(field("Segment Group Number"), ["0000"]);
        assert_eq!(field("Start Bus Number"), ["00"]);
        assert_eq!(field("End Bus Number"), ["00"]);
    }

    /// The FADT decompiles to a hardware-reduced machine with sleep and reset registers on our
    /// ports and boot flags that match the DSDT (COM1 present, no 8042, no CMOS RTC).
    #[test]
    fn iasl_decompiles_the_fadt_to_our_registers() {
        let tables = super::build(1, &[]).unwrap();
        let fadt = &tables.iter().find(|(_, t)| &t[..4] == b"FACP").unwrap().1;
        let Some(dsl) = decompile("facp", fadt) else {
            return;
        };
        let field = |name: &str| -> String {
            let line = dsl
                .lines()
                .find(|l| l.contains(&format!("{name} :")))
                .unwrap_or_else(|| panic!("no {name} in {dsl}"));
            line.rsplit(" : ").next().unwrap().trim().to_string()
        };
        assert_eq!(field("Legacy Devices Supported (V2)"), "1");
        assert_eq!(field("8042 Present on ports 60/64 (V2)"), "0");
        assert_eq!(field("CMOS RTC Not Present (V5)"), "1");
        // MSI and MSI-X work (Linux turns them off for every device otherwise).
        assert_eq!(field("MSI Not Supported (V4)"), "0");
        assert_eq!(field("Hardware Reduced (V5)"), "1");
        assert_eq!(field("Reset Register Supported (V2)"), "1");
        assert_eq!(field("Value to cause reset"), "01");
        // Each register: Space ID then Address, in the order they follow its header.
        for (register, port) in [
            ("Reset Register", 0x602),
            ("Sleep Control Register", 0x600),
            ("Sleep Status Register", 0x601),
        ] {
            let at = dsl.find(&format!("{register} :")).unwrap();
            let gas: Vec<&str> = dsl[at..].lines().take(6).collect();
            assert!(gas[1].ends_with("Space ID : 01 [SystemIO]"), "{gas:?}");
            assert!(gas[2].ends_with("Bit Width : 08"), "{gas:?}");
            assert!(
                gas[5].ends_with(&format!("Address : {port:016X}")),
                "{gas:?}"
            );
        }
    }
}
