//! Configuration space of a passed-through function: what the guest sees of the device's
//! registers, and what reaches the device. A pure value built from the device's own 4 KiB,
//! so the policy is unit-tested and fuzzed without a device.
//!
//! The policy, register by register (docs/sriov.md has it as a table):
//! - **Identification** (vendor, device, revision, class, subsystem): the device's, read-only.
//!   The header type's multi-function bit is dropped (each function is its own device here).
//! - **Command**: I/O space, memory space, bus master and INTx disable are the guest's; each
//!   write goes to the device too (bus master gates its DMA). Every other bit reads 0.
//! - **Status**: the device's at open (DEVSEL timing, 66 MHz, fast back-to-back), read-only;
//!   the capability-list bit says whether the rebuilt list below is empty. Error bits are not
//!   reported.
//! - **BARs**: emulated, sized as the device's regions (rounded up to a power of two), at the
//!   addresses the VMM assigns; the real BARs stay where the host put them. No ROM BAR.
//! - **Capabilities** (the list is rebuilt, each kept capability at the device's own offset):
//!   MSI-X is emulated (its table too); MSI is emulated with 64-bit addresses and per-vector
//!   masking whatever the device's own has, at the device's offset when its 24 bytes fit
//!   there, else in the first free 24 bytes of the list's space; power management, PCI
//!   Express and vendor-specific ones are passed through (reads from the device, writes to
//!   it; the kernel's vfio-pci filters them again); every other one is unlinked and reads 0.
//!   MSI and MSI-X are shown only when VFIO offers vectors for them.
//! - **Extended capabilities** (0x100 up): AER, the device serial number and vendor-specific
//!   ones are passed through; SR-IOV, ATS, PRI, PASID, resizable BAR and everything else are
//!   unlinked (a null capability at 0x100 starts the list when the first kept one is later).
//! - **Interrupt pin**: INTA when the device has INTx and the VMM can wire it, else none;
//!   the line register is the guest's.

use devices::pci::config::{
    Identity, PciConfig, BAR0, CAPABILITIES, CONFIG_SPACE_SIZE, DEVICE_ID, REVISION, STATUS,
    SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID, VENDOR_ID,
};
use devices::pci::msi::{self, CAPABILITY_ID as MSI_ID};
use devices::pci::msix::CAPABILITY_ID as MSIX_ID;
use devices::pci::BarKind;

const CAP_PM: u8 = 0x01;
const CAP_PCIE: u8 = 0x10;
const CAP_VENDOR: u8 = 0x09;
const EXT_AER: u16 = 0x0001;
const EXT_DSN: u16 = 0x0003;
const EXT_VENDOR: u16 = 0x000b;
const EXT_START: usize = 0x100;
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// The status bits kept: 66 MHz, fast back-to-back, DEVSEL timing.
const STATUS_KEPT: u16 = 1 << 5 | 1 << 7 | 3 << 9;

/// Where a function keeps its MSI-X structures, and how many vectors the guest gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Offset of the capability in configuration space.
    pub offset: usize,
    pub vectors: u16,
    /// (BAR, offset) of the table and of the pending bit array.
    pub table: (u8, u64),
    pub pba: (u8, u64),
}

impl MsixLayout {
    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors) * 16
    }

    pub fn pba_size(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// Whether `[offset, offset + len)` of BAR `bar` touches the table or the PBA.
    pub fn overlaps(&self, bar: u8, offset: u64, len: u64) -> bool {
        let hit = |(b, start): (u8, u64), size: u64| {
            b == bar && offset < start + size && start < offset.saturating_add(len)
        };
        hit(self.table, self.table_size()) || hit(self.pba, self.pba_size())
    }
}

/// Where a function's emulated MSI capability is, and how many vectors it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiLayout {
    pub offset: usize,
    /// A power of two, 1 to 32.
    pub vectors: u8,
}

impl MsiLayout {
    /// Whether `[offset, offset + len)` of configuration space touches the capability.
    pub fn overlaps(&self, offset: usize, len: usize) -> bool {
        offset < self.offset + msi::CAPABILITY_SIZE && self.offset < offset + len
    }
}

/// What the VMM can wire of a function's interrupts: VFIO's counts, capped by the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offered {
    pub intx: bool,
    pub msi: u32,
    pub msix: u16,
}

/// One BAR of the device, as the guest gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    pub index: u8,
    pub kind: BarKind,
    /// A power of two: the region's size rounded up.
    pub size: u64,
    /// The region's own size (accesses past it read all-ones).
    pub region_size: u64,
}

/// The guest's view of a device's configuration space.
pub struct VirtConfig {
    /// Every register the guest sees that is not passed through.
    pub shadow: PciConfig,
    /// Bytes whose reads come from the device and whose writes go to it.
    passthrough: Box<[bool; CONFIG_SPACE_SIZE]>,
    pub msix: Option<MsixLayout>,
    pub msi: Option<MsiLayout>,
    pub bars: Vec<BarSpec>,
}

fn u16_at(raw: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([raw[at], raw[at + 1]])
}

fn u32_at(raw: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]])
}

impl VirtConfig {
    /// Builds the guest's view from the device's configuration space `raw` (shorter than
    /// 4 KiB reads as zeros past its end), the sizes of its BAR regions, and the interrupts
    /// the VMM can wire.
    pub fn new(raw: &[u8], regions: [Option<u64>; 6], offered: Offered) -> Self {
        let mut full = vec![0u8; CONFIG_SPACE_SIZE];
        let n = raw.len().min(CONFIG_SPACE_SIZE);
        full[..n].copy_from_slice(&raw[..n]);
        let raw = &full[..];
        let mut shadow = PciConfig::new(Identity {
            vendor: u16_at(raw, VENDOR_ID),
            device: u16_at(raw, DEVICE_ID),
            revision: raw[REVISION],
            class: u32_at(raw, REVISION) >> 8,
            subsystem_vendor: u16_at(raw, SUBSYSTEM_VENDOR_ID),
            subsystem: u16_at(raw, SUBSYSTEM_ID),
        });
        let bars = bar_specs(raw, regions);
        for b in &bars {
            shadow.add_bar(usize::from(b.index), b.kind, b.size);
        }
        if offered.intx && (1..=4).contains(&raw[0x3d]) {
            shadow.set_interrupt(1, 0);
        }
        let mut c = VirtConfig {
            shadow,
            passthrough: Box::new([false; CONFIG_SPACE_SIZE]),
            msix: None,
            msi: None,
            bars,
        };
        let kept = c.standard_capabilities(raw, offered);
        let status = u16_at(raw, STATUS) & STATUS_KEPT | if kept { STATUS_CAPABILITIES } else { 0 };
        c.shadow.set_raw(STATUS, &status.to_le_bytes(), &[]);
        c.extended_capabilities(raw);
        c
    }

    /// Walks the device's capability list, keeps what the policy keeps, and links those.
    /// Returns whether any was kept.
    fn standard_capabilities(&mut self, raw: &[u8], offered: Offered) -> bool {
        let mut found = Vec::new();
        let mut seen = [false; 256];
        let mut at = usize::from(raw[CAPABILITIES] & 0xfc);
        while (0x40..0x100).contains(&at) && !seen[at] {
            seen[at] = true;
            found.push((at, raw[at]));
            at = usize::from(raw[at + 1] & 0xfc);
        }
        // (offset, bytes) of each kept capability.
        let mut kept: Vec<(usize, usize)> = Vec::new();
        let mut msi_at = None;
        for &(at, id) in &found {
            // Bytes up to the next capability (or the end of the list's space) at most.
            let room = found
                .iter()
                .map(|&(o, _)| o)
                .filter(|&o| o > at)
                .min()
                .unwrap_or(0x100)
                - at;
            let len = match id {
                MSIX_ID if room >= 12 => {
                    if let Some(m) = msix_layout(raw, at, &self.bars, offered.msix) {
                        let control = m.vectors - 1;
                        self.shadow
                            .set_raw(at + 2, &control.to_le_bytes(), &[0, 0xc0]);
                        let table = m.table.1 as u32 | u32::from(m.table.0);
                        let pba = m.pba.1 as u32 | u32::from(m.pba.0);
                        self.shadow.set_raw(at + 4, &table.to_le_bytes(), &[]);
                        self.shadow.set_raw(at + 8, &pba.to_le_bytes(), &[]);
                        self.msix = Some(m);
                        kept.push((at, 12));
                    }
                    continue;
                }
                MSI_ID if offered.msi > 0 && room >= 4 => {
                    msi_at.get_or_insert(at);
                    continue;
                }
                CAP_PM => 8,
                CAP_PCIE => 0x3c,
                CAP_VENDOR => usize::from(raw[at + 2]).max(3),
                _ => continue,
            };
            let end = (at + len.min(room)).min(0x100);
            self.passthrough[at + 2..end].fill(true);
            kept.push((at, end - at));
        }
        if let Some(at) = msi_at {
            // Multiple message capable (3:1), at most what VFIO offers.
            let capable = 1u32 << ((u16_at(raw, at + 2) >> 1) & 7).min(5);
            let vectors = capable.min(1 << offered.msi.min(32).ilog2()) as u8;
            let free = |o: usize| {
                o + msi::CAPABILITY_SIZE <= 0x100
                    && kept
                        .iter()
                        .all(|&(k, len)| o + msi::CAPABILITY_SIZE <= k || k + len <= o)
            };
            let spot = Some(at)
                .filter(|&o| free(o))
                .or_else(|| (0x40..0x100).step_by(4).find(|&o| free(o)));
            if let Some(o) = spot {
                let (body, writable) = msi::capability(usize::from(vectors));
                self.shadow.set_raw(o, &body, &writable);
                self.msi = Some(MsiLayout { offset: o, vectors });
                kept.push((o, msi::CAPABILITY_SIZE));
                kept.sort_unstable();
            }
        }
        // The links: 0x34 to the first, each to the next, read-only.
        let mut prev = CAPABILITIES;
        for &(at, _) in &kept {
            self.shadow.set_raw(prev, &[at as u8], &[]);
            let id = if Some(at) == self.msi.map(|m| m.offset) {
                MSI_ID
            } else {
                raw[at]
            };
            self.shadow.set_raw(at, &[id], &[]);
            prev = at + 1;
        }
        self.shadow.set_raw(prev, &[0], &[]);
        !kept.is_empty()
    }

    fn extended_capabilities(&mut self, raw: &[u8]) {
        let mut found = Vec::new();
        let mut seen = [false; CONFIG_SPACE_SIZE / 4];
        let mut at = EXT_START;
        while (EXT_START..CONFIG_SPACE_SIZE).contains(&at) && !seen[at / 4] {
            seen[at / 4] = true;
            let header = u32_at(raw, at);
            if header == 0 || header == u32::MAX {
                break;
            }
            found.push((at, header));
            at = (header >> 20) as usize & 0xffc;
        }
        let mut kept = Vec::new();
        for &(at, header) in &found {
            let room = found
                .iter()
                .map(|&(o, _)| o)
                .filter(|&o| o > at)
                .min()
                .unwrap_or(CONFIG_SPACE_SIZE)
                - at;
            let len = match header as u16 {
                EXT_AER => 0x48,
                EXT_DSN => 0x0c,
                EXT_VENDOR if at + 8 <= CONFIG_SPACE_SIZE => (u32_at(raw, at + 4) >> 20) as usize,
                _ => continue,
            };
            let end = (at + len.min(room)).min(CONFIG_SPACE_SIZE);
            if end > at + 4 {
                self.passthrough[at + 4..end].fill(true);
            }
            kept.push((at, header & 0x000f_ffff));
        }
        // A null capability at 0x100 leads to the first kept one that is not there.
        if let Some(&(first, _)) = kept.first() {
            if first != EXT_START {
                kept.insert(0, (EXT_START, 0));
            }
        }
        for (i, &(at, id_version)) in kept.iter().enumerate() {
            let next = kept.get(i + 1).map_or(0, |&(n, _)| n as u32);
            self.shadow
                .set_raw(at, &(id_version | next << 20).to_le_bytes(), &[]);
        }
    }

    /// Whether byte `offset` is passed through to the device.
    pub fn passthrough(&self, offset: usize) -> bool {
        self.passthrough.get(offset).copied().unwrap_or(false)
    }
}

/// The BARs the device decodes, by its BAR registers and the sizes of its regions.
fn bar_specs(raw: &[u8], regions: [Option<u64>; 6]) -> Vec<BarSpec> {
    let mut bars = Vec::new();
    let mut i = 0;
    while i < 6 {
        let reg = u32_at(raw, BAR0 + 4 * i);
        let kind = if reg & 1 == 1 {
            BarKind::Io
        } else if reg & 0b110 == 0b100 {
            BarKind::Memory64 {
                prefetchable: reg & 8 != 0,
            }
        } else {
            BarKind::Memory32 {
                prefetchable: reg & 8 != 0,
            }
        };
        let is64 = matches!(kind, BarKind::Memory64 { .. });
        let fits = !is64 || i < 5;
        if let Some(size) = regions[i].filter(|&s| s > 0 && fits) {
            let min = if kind.is_io() { 4 } else { 16 };
            let max = if kind.is_io() { 1 << 16 } else { 1 << 40 };
            if size <= max {
                bars.push(BarSpec {
                    index: i as u8,
                    kind,
                    size: size.next_power_of_two().max(min),
                    region_size: size,
                });
            }
        }
        i += if is64 { 2 } else { 1 };
    }
    bars
}

/// The MSI-X capability at `at`, if its table and PBA lie inside memory BARs of the device.
fn msix_layout(raw: &[u8], at: usize, bars: &[BarSpec], max: u16) -> Option<MsixLayout> {
    let control = u16_at(raw, at + 2);
    let vectors = ((control & 0x7ff) + 1).min(max);
    if vectors == 0 {
        return None;
    }
    let table = u32_at(raw, at + 4);
    let pba = u32_at(raw, at + 8);
    let m = MsixLayout {
        offset: at,
        vectors,
        table: ((table & 7) as u8, u64::from(table & !7)),
        pba: ((pba & 7) as u8, u64::from(pba & !7)),
    };
    let inside = |(bar, off): (u8, u64), size: u64| {
        bars.iter()
            .any(|b| b.index == bar && !b.kind.is_io() && off + size <= b.region_size)
    };
    (inside(m.table, m.table_size()) && inside(m.pba, m.pba_size())).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::fake_config;

    fn r32(c: &VirtConfig, at: usize) -> u32 {
        let mut b = [0; 4];
        c.shadow.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    fn regions() -> [Option<u64>; 6] {
        [Some(0x1000), None, Some(0x10000), None, Some(0x1000), None]
    }

    fn offered(msi: u32, msix: u16, intx: bool) -> Offered {
        Offered { intx, msi, msix }
    }

    fn chain(c: &VirtConfig) -> Vec<(usize, u8)> {
        let mut chain = vec![];
        let mut at = c.shadow.bytes(CAPABILITIES, 1)[0] as usize;
        while at != 0 {
            chain.push((at, c.shadow.bytes(at, 1)[0]));
            at = c.shadow.bytes(at + 1, 1)[0] as usize;
        }
        chain
    }

    #[test]
    fn the_fake_devices_space_is_virtualised_as_the_policy_says() {
        let raw = fake_config();
        let mut c = VirtConfig::new(&raw, regions(), offered(0, 64, true));
        assert_eq!(r32(&c, 0), 0x0100_1b36, "IDs");
        assert_eq!(r32(&c, 8) >> 8, 0xff0000, "class");
        assert_eq!(c.shadow.bytes(0x0e, 1)[0], 0, "single function");
        assert_eq!(r32(&c, 4) >> 16, 0x0210, "status: caps + DEVSEL");
        // BARs: 32-bit 4K, 64-bit prefetchable 64K, 32-bit 4K.
        let kinds: Vec<(u8, u64)> = c.bars.iter().map(|b| (b.index, b.size)).collect();
        assert_eq!(kinds, [(0, 0x1000), (2, 0x10000), (4, 0x1000)]);
        c.shadow.write(BAR0 + 8, &[0xff; 4]);
        assert_eq!(r32(&c, BAR0 + 8), 0xffff_000c, "sized like the region");
        // The list: PM 0x40 -> MSI-X 0x60 -> PCIe 0x70 -> vendor 0xc0; MSI at 0x50 and the
        // unknown 0x0d at 0xb0 are gone (no MSI vectors offered).
        assert_eq!(
            chain(&c),
            [(0x40, 1), (0x60, 0x11), (0x70, 0x10), (0xc0, 9)]
        );
        assert!(c.passthrough(0x42) && c.passthrough(0x72) && c.passthrough(0xc4));
        assert!(!c.passthrough(0x50) && !c.passthrough(0x60) && !c.passthrough(0xb2));
        assert_eq!(r32(&c, 0x50), 0, "MSI hidden");
        let m = c.msix.unwrap();
        assert_eq!(
            (m.offset, m.vectors, m.table, m.pba),
            (0x60, 8, (4, 0), (4, 0x800))
        );
        assert_eq!(r32(&c, 0x60) >> 16, 7, "table size, MSI-X off");
        c.shadow.write(0x62, &[0xff, 0xff]);
        assert_eq!(r32(&c, 0x60) >> 16, 0xc007, "only enable and function mask");
        // Extended: SR-IOV at 0x100 hidden behind a null capability; AER and DSN kept.
        assert_eq!(r32(&c, 0x100), 0x140 << 20);
        assert_eq!(r32(&c, 0x140), 0x190 << 20 | 0x2_0001);
        assert_eq!(r32(&c, 0x190), 0x1_0003);
        assert!(c.passthrough(0x144) && c.passthrough(0x194) && !c.passthrough(0x104));
        assert_eq!(c.shadow.bytes(0x3d, 1)[0], 1, "INTA");
        // Fewer vectors than the device has: the table size says so.
        let c = VirtConfig::new(&raw, regions(), offered(0, 2, false));
        assert_eq!(r32(&c, 0x60) >> 16, 1);
        assert_eq!(c.shadow.bytes(0x3d, 1)[0], 0, "no INTx");
    }

    #[test]
    fn msi_is_emulated_where_its_24_bytes_fit() {
        let raw = fake_config();
        // The device's MSI at 0x50 has 16 bytes before MSI-X: the emulated one goes to the
        // first free 24 bytes, 0x48 (after PM's 8).
        let mut c = VirtConfig::new(&raw, regions(), offered(4, 64, true));
        assert_eq!(
            c.msi,
            Some(MsiLayout {
                offset: 0x48,
                vectors: 4
            })
        );
        assert_eq!(
            chain(&c),
            [(0x40, 1), (0x48, 5), (0x60, 0x11), (0x70, 0x10), (0xc0, 9)]
        );
        // 4 vectors capable, 64-bit, per-vector masking; the driver's bits only.
        assert_eq!(r32(&c, 0x48) >> 16, 0x0184);
        c.shadow.write(0x4a, &[0xff, 0xff]);
        assert_eq!(r32(&c, 0x48) >> 16, 0x01f5);
        assert!(!c.passthrough(0x4c) && !c.passthrough(0x50));
        // VFIO offers 3: the guest gets 2. Without MSI-X, MSI alone; with room, in place.
        let c = VirtConfig::new(&raw, regions(), offered(3, 0, true));
        assert_eq!(c.msi.map(|m| m.vectors), Some(2));
        assert!(c.msix.is_none());
        let mut raw = fake_config();
        raw[0x51] = 0x70; // MSI -> PCIe: MSI-X unlinked, 32 bytes of room at 0x50
        let c = VirtConfig::new(&raw, regions(), offered(32, 64, false));
        assert_eq!(
            c.msi,
            Some(MsiLayout {
                offset: 0x50,
                vectors: 4
            })
        );
        // No free 24 bytes anywhere: MSI stays hidden.
        let mut raw = vec![0u8; 256];
        raw[6] = 0x10;
        raw[0x34] = 0x40;
        for at in (0x40..0x100).step_by(8) {
            raw[at] = 0x09; // vendor-specific, 8 bytes each, back to back
            raw[at + 1] = if at + 8 < 0x100 { (at + 8) as u8 } else { 0 };
            raw[at + 2] = 8;
        }
        raw[0x48] = 0x05;
        let c = VirtConfig::new(&raw, [None; 6], offered(1, 0, false));
        assert!(c.msi.is_none());
    }

    #[test]
    fn hostile_lists_end() {
        let mut raw = fake_config();
        raw[0x41] = 0x40; // PM points at itself
        raw[0x102..0x104].copy_from_slice(&0x1000u16.to_le_bytes()); // next past the end
        let c = VirtConfig::new(&raw, regions(), offered(1, 64, true));
        assert_eq!(c.shadow.bytes(0x41, 1)[0], 0);
        assert_eq!(r32(&c, 0x100), 0, "SR-IOV hidden, nothing else reached");
        // An MSI-X table outside its BAR: MSI-X hidden, not trusted.
        let mut raw = fake_config();
        raw[0x64..0x68].copy_from_slice(&0x0000_0ff4u32.to_le_bytes());
        let c = VirtConfig::new(&raw, regions(), offered(0, 64, true));
        assert!(c.msix.is_none());
        let c = VirtConfig::new(&[0xff; 64], [None; 6], offered(32, 64, true));
        assert!(c.bars.is_empty());
    }
}
