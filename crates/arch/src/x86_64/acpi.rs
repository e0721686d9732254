//! ACPI tables, built with `acpi_tables`: RSDP -> XSDT -> FADT (-> DSDT) and MADT.
//!
//! A stock distro kernel (Debian's cloud kernel has no MP-table parser) learns its CPUs and
//! IOAPIC only from the MADT. The platform is "hardware-reduced" ACPI: no PM timer, no SCI, no
//! legacy PIC, as in other microVMs. The RSDP sits at `layout::ACPI_START`, inside the BIOS
//! area a legacy kernel scans; PVH and zero-page boots also pass its address directly.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::GuestMemoryMmap;

use super::layout::{ACPI_START, APIC_START, IOAPIC_START};
use super::mptable::MAX_CPUS;
use super::{write_bytes, Error, Result};

const OEM_ID: [u8; 6] = *b"VIBEVM";
const OEM_TABLE_ID: [u8; 8] = *b"VIBEVMM ";
const OEM_REVISION: u32 = 1;
/// IAPC_BOOT_ARCH: no VGA, no MSI (no PCI yet), ASPM not to be touched.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_PRESENT: u16 = 1 << 3;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// The tables for `num_cpus` CPUs: (guest address, bytes) of each, RSDP first.
pub fn build(num_cpus: u32) -> Result<Vec<(u64, Vec<u8>)>> {
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

    let dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let dsdt_addr = place(dsdt.as_slice().to_vec(), &mut tables);

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch =
        (IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_PRESENT | IAPC_PCIE_ASPM_CONTROLS).into();
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

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(bytes(&xsdt), &mut tables);

    tables.insert(0, (ACPI_START, bytes(&Rsdp::new(OEM_ID, xsdt_addr))));
    Ok(tables)
}

/// Writes the tables and returns the RSDP's address.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u32) -> Result<u64> {
    for (addr, data) in build(num_cpus)? {
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
            let t = build(cpus).unwrap();
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
            assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
            // MADT: header (44 bytes), one 8-byte local APIC entry per CPU, one IOAPIC entry.
            let madt = find(t.iter().find(|(_, d)| &d[..4] == b"APIC").unwrap().0);
            assert_eq!(madt.len(), 44 + 8 * cpus as usize + 12);
            assert_eq!(le32(madt, 36), APIC_START as u32);
            // All of it stays below the MP table.
            let (last, data) = t.last().unwrap();
            assert!(last + data.len() as u64 <= MPTABLE_START);
        }
    }
}
