//! The Intel MultiProcessor table: how a guest without ACPI finds its CPUs, the IOAPIC and the
//! ISA interrupt routing. Written at `layout::MPTABLE_START`, inside the BIOS area a kernel
//! scans for the `_MP_` floating pointer.

use super::layout::{APIC_START, IOAPIC_START, MPTABLE_START};
use super::{write_bytes, Error, Result};
use vm_memory::GuestMemoryMmap;

/// APIC IDs are 8 bits, 0xff is broadcast and the IOAPIC takes the ID after the last CPU.
pub const MAX_CPUS: u32 = 254;
/// ISA interrupts 0..=23 map 1:1 onto IOAPIC pins.
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature, FPU and APIC present.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The table bytes for `num_cpus` CPUs, to be placed at `base`.
pub fn build(num_cpus: u32, base: u64) -> Result<Vec<u8>> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus as u8;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.extend([ENTRY_PROCESSOR, cpu as u8, APIC_VERSION]);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(b"ISA   ");
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_START as u32).to_le_bytes());
    count += 2;
    for irq in 0..IOAPIC_PINS {
        // Default polarity and trigger (conforming to the ISA bus: active high, edge).
        entries.extend([
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // LINT0 is the 8259 (ExtINT) and LINT1 NMI on every local APIC (0xff).
    entries.extend([
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        ISA_BUS_ID,
        0,
        0xff,
        0,
    ]);
    entries.extend([
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        ISA_BUS_ID,
        0,
        0xff,
        1,
    ]);
    count += 2;

    // Floating pointer (16 bytes), then the configuration table header (44 bytes) and entries.
    let table_addr = base + 16;
    let mut header = Vec::with_capacity(44);
    header.extend(b"PCMP");
    header.extend(((44 + entries.len()) as u16).to_le_bytes());
    header.extend([SPEC_REV, 0]); // checksum patched below
    header.extend(b"VIBEVMM ");
    header.extend(b"000000000000");
    header.extend([0u8; 4]); // OEM table pointer
    header.extend([0u8; 2]); // OEM table size
    header.extend(count.to_le_bytes());
    header.extend((APIC_START as u32).to_le_bytes());
    header.extend([0u8; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend(entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend(b"_MP_");
    fp.extend((table_addr as u32).to_le_bytes());
    fp.extend([1, SPEC_REV, 0, 0, 0, 0, 0, 0]); // length in 16-byte units, rev, checksum, features
    fp[10] = checksum(&fp);

    fp.extend(table);
    Ok(fp)
}

/// Writes the table for `num_cpus` CPUs at `layout::MPTABLE_START`.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u32) -> Result<()> {
    let bytes = build(num_cpus, MPTABLE_START)?;
    write_bytes(mem, MPTABLE_START, &bytes, "MP table")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_lengths_are_valid() {
        for cpus in [1, 2, 64, MAX_CPUS] {
            let t = build(cpus, MPTABLE_START).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(len, t.len() - 16);
            assert_eq!(t[16..].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
            assert_eq!(u32::from(count), cpus + 2 + 24 + 2);
            // The biggest table still fits in the BIOS area.
            assert!(MPTABLE_START + t.len() as u64 <= 0x10_0000);
        }
    }

    #[test]
    fn refuses_impossible_cpu_counts() {
        assert!(build(0, MPTABLE_START).is_err());
        assert!(build(MAX_CPUS + 1, MPTABLE_START).is_err());
    }
}
