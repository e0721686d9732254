//! The boot GDT and the segment registers it implies.
//!
//! Selectors follow the Linux boot protocol: 0x10 is `__BOOT_CS` (64-bit code here), 0x18 is
//! `__BOOT_DS`. 0x08 is a flat 32-bit code segment for the PVH entry, 0x20 a TSS (KVM wants a
//! usable TR on VM entry).

use hypervisor::x86_64::Segment;

pub const CODE32_SELECTOR: u16 = 0x08;
pub const CODE64_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;
pub const TSS_SELECTOR: u16 = 0x20;

/// Builds a descriptor from flags (the type/attribute nibbles, as in `0xa09b`), base and limit.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0xffff)
}

/// The table written at `layout::BOOT_GDT_START`.
pub const BOOT_GDT: [u64; 5] = [
    0,
    entry(0xc09b, 0, 0xfffff), // 32-bit code, flat
    entry(0xa09b, 0, 0xfffff), // 64-bit code
    entry(0xc093, 0, 0xfffff), // data, flat
    entry(0x808b, 0, 0xfffff), // 32-bit busy TSS
];

/// The segment register contents a descriptor loads.
pub fn segment(table: &[u64], selector: u16) -> Segment {
    let e = table[usize::from(selector >> 3)];
    let limit = (((e >> 32) & 0x000f_0000) | (e & 0xffff)) as u32;
    // Bits 40..56 of a descriptor are its access rights (with the limit's top nibble).
    let mut s = Segment::from_access_rights(((e >> 40) & 0xf0ff) as u32);
    s.unusable = u8::from(s.present == 0);
    s.base = ((e >> 16) & 0x00ff_ffff) | ((e >> 32) & 0xff00_0000);
    // The hidden limit is in bytes.
    s.limit = if s.g == 1 {
        (limit << 12) | 0xfff
    } else {
        limit
    };
    s.selector = selector;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_architecture_manual() {
        assert_eq!(BOOT_GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9300_0000_ffff);
        let cs = segment(&BOOT_GDT, CODE64_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.type_, cs.s, cs.present), (1, 0, 0xb, 1, 1));
        let ds = segment(&BOOT_GDT, DATA_SELECTOR);
        assert_eq!((ds.limit, ds.db, ds.g), (0xffff_ffff, 1, 1));
        let tss = segment(&BOOT_GDT, TSS_SELECTOR);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
    }
}
