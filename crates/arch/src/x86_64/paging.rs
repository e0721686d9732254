//! Identity-mapped page tables for entering long mode: the first 4 GiB in 2 MiB pages, so the
//! guest reaches RAM and the device hole (IOAPIC, LAPIC, MMIO devices) alike.

use super::layout::{PDPT_START, PD_START, PML4_START};
use super::{write_bytes, Result};
use vm_memory::GuestMemoryMmap;

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Writes the tables and returns the value for CR3.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64> {
    write_bytes(
        mem,
        PML4_START,
        &(PDPT_START | PRESENT_RW).to_le_bytes(),
        "PML4",
    )?;
    let mut pdpt = [0u8; 32];
    for i in 0..4u64 {
        let pde = (PD_START + i * 0x1000) | PRESENT_RW;
        pdpt[i as usize * 8..][..8].copy_from_slice(&pde.to_le_bytes());
    }
    write_bytes(mem, PDPT_START, &pdpt, "PDPT")?;
    let mut pd = vec![0u8; 4 * 4096];
    for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
        let entry = ((i as u64) << 21) | PRESENT_RW | PAGE_SIZE_2M;
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    write_bytes(mem, PD_START, &pd, "page directories")?;
    Ok(PML4_START)
}
