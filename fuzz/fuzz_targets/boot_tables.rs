//! The x86 boot tables for odd machine configurations: any vCPU count, any RAM size the VMM
//! accepts, any number of virtio-mmio slots (with any window and GSI in the DSDT). Checks the
//! builders refuse what they cannot describe and otherwise produce tables a kernel accepts:
//! every checksum and length right, the pointers leading to the tables (the FADT's DSDT and
//! the PCI host bridge's MCFG among them), all of it inside the BIOS area it is written to,
//! and an e820 map that is sorted, lists all RAM and reserves the PCIe ECAM window.
#![no_main]

use std::sync::OnceLock;

use arch::x86_64::boot::{self, BootInfo, E820_RAM, E820_RESERVED};
use arch::x86_64::layout::{self, MAX_VIRTIO_DEVICES, MIN_RAM};
use arch::x86_64::{acpi, mptable};
use arch::VirtioMmioSlot;
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().unwrap()
}

/// Guest memory for the zero page and PVH info (low RAM only: they live below 1 MiB).
fn low_ram() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIN_RAM as usize)]).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 13 {
        return;
    }
    let raw_cpus = u32::from_le_bytes(le(data, 0));
    // Mostly near the limits, sometimes anything.
    let cpus = if raw_cpus & 1 == 0 {
        (raw_cpus >> 1) % 260
    } else {
        raw_cpus
    };
    // Anything the VMM accepts: at least MIN_RAM, 4 KiB pages, up to 1 TiB.
    let ram = MIN_RAM + ((u64::from_le_bytes(le(data, 4)) % (1 << 40)) & !0xfff);
    let standard = data[12] & 0x80 == 0;
    let slots: Vec<VirtioMmioSlot> = if standard {
        (0..u32::from(data[12]) % (MAX_VIRTIO_DEVICES + 1))
            .map(layout::virtio_slot)
            .collect()
    } else {
        data[13..]
            .chunks_exact(20)
            .map(|c| VirtioMmioSlot {
                base: u64::from_le_bytes(le(c, 0)),
                size: u64::from_le_bytes(le(c, 8)),
                gsi: u32::from_le_bytes(le(c, 16)),
            })
            .collect()
    };
    let valid_cpus = (1..=mptable::MAX_CPUS).contains(&cpus);

    // MP table.
    match mptable::build(cpus, layout::MPTABLE_START) {
        Ok(t) => {
            assert!(valid_cpus);
            assert_eq!((&t[..4], sum(&t[..16])), (&b"_MP_"[..], 0));
            let table = u32::from_le_bytes(le(&t, 4));
            assert_eq!(u64::from(table), layout::MPTABLE_START + 16);
            let len = u16::from_le_bytes(le(&t, 20)) as usize;
            assert_eq!(
                (&t[16..20], len, sum(&t[16..])),
                (&b"PCMP"[..], t.len() - 16, 0)
            );
            assert!(layout::MPTABLE_START + t.len() as u64 <= layout::HIMEM_START);
        }
        Err(_) => assert!(!valid_cpus),
    }

    // ACPI.
    match acpi::build(cpus, &slots) {
        Ok(tables) => {
            assert!(valid_cpus);
            let (rsdp_at, rsdp) = &tables[0];
            assert_eq!(*rsdp_at, layout::ACPI_START);
            assert_eq!(
                (&rsdp[..8], sum(&rsdp[..20]), sum(rsdp)),
                (&b"RSD PTR "[..], 0, 0)
            );
            let mut end = layout::ACPI_START + rsdp.len() as u64;
            for (addr, t) in &tables[1..] {
                assert!(*addr >= end, "tables overlap at {addr:#x}");
                assert_eq!(u32::from_le_bytes(le(t, 4)) as usize, t.len());
                assert_eq!(sum(t), 0, "checksum of {:?}", &t[..4]);
                end = addr + t.len() as u64;
            }
            let find = |a: u64| tables.iter().find(|(at, _)| *at == a).map(|(_, t)| t);
            let xsdt = find(u64::from_le_bytes(le(rsdp, 24))).expect("RSDP -> XSDT");
            let mut mcfg = false;
            for e in xsdt[36..].chunks_exact(8) {
                let t = find(u64::from_le_bytes(le(e, 0))).expect("XSDT entry -> table");
                if &t[..4] == b"FACP" {
                    let dsdt = find(u64::from_le_bytes(le(t, 140))).expect("FADT -> DSDT");
                    assert_eq!(&dsdt[..4], b"DSDT");
                }
                if &t[..4] == b"MCFG" {
                    // One ECAM allocation, inside the window e820 reserves.
                    assert_eq!(t.len(), 60);
                    assert_eq!(u64::from_le_bytes(le(t, 44)), layout::PCIE_ECAM_START);
                    let buses = u64::from(t[55]) + 1 - u64::from(t[54]);
                    assert!(buses * layout::PCIE_ECAM_BUS_SIZE <= layout::PCIE_ECAM_SIZE);
                    mcfg = true;
                }
            }
            assert!(mcfg, "no MCFG in the XSDT");
            // What the VMM can configure must fit below the MP table.
            if standard {
                assert!(end <= layout::MPTABLE_START, "ACPI tables end at {end:#x}");
            }
        }
        Err(_) => assert!(!valid_cpus),
    }

    // e820 map, and the zero page and PVH info that carry it.
    let map = boot::e820_map(ram);
    assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
    let usable: u64 = map
        .iter()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.size)
        .sum();
    assert_eq!(usable, ram - (layout::HIMEM_START - layout::EBDA_START));
    assert!(map.iter().any(|e| e.kind == E820_RESERVED
        && e.addr == layout::PCIE_ECAM_START
        && e.size == layout::PCIE_ECAM_SIZE));
    let info = BootInfo {
        ram_size: ram,
        cmdline_len: usize::from(data[12]),
        initrd: None,
        setup_header: None,
        rsdp: Some(layout::ACPI_START),
    };
    boot::write_zero_page(low_ram(), &info).unwrap();
    boot::write_pvh_start_info(low_ram(), &info).unwrap();
});
