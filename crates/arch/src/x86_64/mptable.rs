//! The Intel MultiProcessor table: how a guest without ACPI finds its CPUs, the IOAPIC and the
//! ISA and PCI interrupt routing. Written at `layout::MPTABLE_START`, inside the BIOS area a
//! kernel scans for the `_MP_` floating pointer.
//!
//! Two buses: PCI bus 0 (its MP bus ID must be its bus number: Linux looks a PCI device's
//! interrupt up by bus number, slot and pin) and ISA, which takes ID 1. ISA interrupts 0-19
//! go 1:1 to IOAPIC pins 0-19, edge-triggered and active-high; INTA-INTD of PCI slots 1-31 go
//! to pins 20-23 ([`layout::pci_intx_gsi`]), level-triggered and active-low.

use super::layout::{
    self, APIC_START, IOAPIC_START, MPTABLE_START, PCI_INTX_GSI_BASE, PCI_INTX_PINS,
};
use super::{write_bytes, Error, Result};
use vm_memory::GuestMemoryMmap;

/// APIC IDs are 8 bits, 0xff is broadcast and the IOAPIC takes the ID after the last CPU.
pub const MAX_CPUS: u32 = 254;
/// ISA interrupts below the PCI INTx lines map 1:1 onto IOAPIC pins.
const ISA_IRQS: u8 = PCI_INTX_GSI_BASE as u8;
/// PCI slots whose INTx lines are described (slot 0 is the host bridge, which has none).
const PCI_SLOTS: std::ops::RangeInclusive<u8> = 1..=31;
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
/// I/O interrupt flags: polarity (bits 1:0) and trigger mode (bits 3:2); 0 conforms to the bus.
const INT_FLAGS_CONFORMING: u16 = 0;
const INT_FLAGS_ACTIVE_LOW_LEVEL: u16 = 0b11 | 0b11 << 2;
const PCI_BUS_ID: u8 = 0;
const ISA_BUS_ID: u8 = 1;

/// Number of entries besides the processors: two buses, the IOAPIC, the ISA and PCI interrupt
/// assignments, two local interrupts.
const fn fixed_entries() -> u32 {
    2 + 1 + ISA_IRQS as u32 + 31 * PCI_INTX_PINS + 2
}

// The biggest table (floating pointer, header, 20 bytes per processor, 8 per other entry) fits
// between its start and the kernel at 1 MiB.
const _: () = assert!(
    MPTABLE_START + 16 + 44 + 20 * MAX_CPUS as u64 + 8 * fixed_entries() as u64
        <= layout::HIMEM_START
);

/// An I/O interrupt assignment entry: `src_irq` of bus `bus` raises IOAPIC pin `pin`.
fn io_interrupt(bus: u8, src_irq: u8, flags: u16, ioapic_id: u8, pin: u8) -> [u8; 8] {
    let [f0, f1] = flags.to_le_bytes();
    [
        ENTRY_IO_INTERRUPT,
        INT_TYPE_INT,
        f0,
        f1,
        bus,
        src_irq,
        ioapic_id,
        pin,
    ]
}

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
    // Bus entries in ascending ID order.
    entries.extend([ENTRY_BUS, PCI_BUS_ID]);
    entries.extend(b"PCI   ");
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(b"ISA   ");
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_START as u32).to_le_bytes());
    count += 3;
    for irq in 0..ISA_IRQS {
        // Conforming to the ISA bus: active high, edge.
        entries.extend(io_interrupt(
            ISA_BUS_ID,
            irq,
            INT_FLAGS_CONFORMING,
            ioapic_id,
            irq,
        ));
        count += 1;
    }
    for slot in PCI_SLOTS {
        for pin in 0..PCI_INTX_PINS as u8 {
            // A PCI source IRQ is the device number (bits 6:2) and pin (bits 1:0).
            entries.extend(io_interrupt(
                PCI_BUS_ID,
                slot << 2 | pin,
                INT_FLAGS_ACTIVE_LOW_LEVEL,
                ioapic_id,
                layout::pci_intx_gsi(slot, pin) as u8,
            ));
            count += 1;
        }
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
            assert_eq!(u32::from(count), cpus + 3 + 20 + 31 * 4 + 2);
            assert_eq!(u32::from(count), cpus + fixed_entries());
            assert_eq!(
                t.len(),
                16 + 44 + 20 * cpus as usize + 8 * fixed_entries() as usize
            );
            // The biggest table still fits in the BIOS area.
            assert!(MPTABLE_START + t.len() as u64 <= layout::HIMEM_START);
        }
    }

    /// The entries after the processors, as Linux's MP parser reads them.
    #[test]
    fn buses_and_interrupt_routing() {
        let cpus = 2;
        let t = build(cpus, MPTABLE_START).unwrap();
        let rest = &t[16 + 44 + 20 * cpus as usize..];
        assert_eq!(&rest[..8], b"\x01\x00PCI   ");
        assert_eq!(&rest[8..16], b"\x01\x01ISA   ");
        assert_eq!(rest[16..20], [ENTRY_IOAPIC, 2, IOAPIC_VERSION, 1]);
        let ints: Vec<&[u8]> = rest[24..].chunks(8).collect();
        assert_eq!(ints.len(), 20 + 124 + 2);
        // ISA IRQs 0-19: edge, active high, 1:1.
        for (irq, e) in ints[..20].iter().enumerate() {
            assert_eq!(**e, [3, 0, 0, 0, ISA_BUS_ID, irq as u8, 2, irq as u8]);
        }
        // PCI slot 1-31, INTA-INTD: level, active low, swizzled onto pins 20-23.
        let pci = &ints[20..144];
        for (i, e) in pci.iter().enumerate() {
            let (slot, pin) = (1 + i / 4, i % 4);
            let gsi = 20 + (slot + pin) % 4;
            assert_eq!(
                **e,
                [
                    3,
                    0,
                    0x0f,
                    0,
                    PCI_BUS_ID,
                    (slot << 2 | pin) as u8,
                    2,
                    gsi as u8
                ]
            );
        }
        assert_eq!(pci[0][5..], [0x04, 2, 21]); // 01.0 INTA -> GSI 21
        assert_eq!(pci[123][5..], [0x7f, 2, 22]); // 31.0 INTD -> GSI 22
        assert_eq!(ints[144][..2], [ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT]);
        assert_eq!(ints[145][..2], [ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI]);
    }

    #[test]
    fn refuses_impossible_cpu_counts() {
        assert!(build(0, MPTABLE_START).is_err());
        assert!(build(MAX_CPUS + 1, MPTABLE_START).is_err());
    }
}
