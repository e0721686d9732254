//! The root of PCI segment 0: bus 0 and its 32 device numbers (function 0 each), the
//! configuration access methods, and BAR routing.
//!
//! - Configuration mechanism #1 (ports 0xcf8/0xcfc, [`ConfigPorts`]) and ECAM ([`Ecam`],
//!   4 KiB per function) reach the same registers. Absent functions and other buses read
//!   all-ones and ignore writes, as a master abort does.
//! - BARs are decoded only inside the host bridge's windows ([`BarWindow`] covers each), as
//!   a root complex forwards only the ranges it was given. A BAR the guest moves outside them
//!   (over RAM, say) answers nowhere, and RAM stays RAM; two BARs programmed over each other
//!   do not crash anything: the lower device number answers.
//! - After every configuration write the bus compares the function's decoded BARs with what
//!   it routes and updates its table. A BAR that overlaps no other routed BAR is *exclusive*:
//!   only such a BAR may carry hypervisor-side state (ioeventfds, a mapping), because only
//!   there is it certain the function answers every address. The bus tells functions when a
//!   BAR stops or starts being exclusive (`PciDevice::bar_moved`): all stops first, then the
//!   starts, so one function's state is gone before another's takes the same address.
//!   Accesses to BARs that are not exclusive trap to the VMM and are routed as above.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::{Bar, BarKind, PciDevice};
use crate::{lock, BusDevice};

/// Device numbers on a bus.
pub const DEVICES: usize = 32;
/// Configuration space per function through ECAM.
pub const ECAM_FUNCTION_SIZE: u64 = 4096;

/// The address ranges the host bridge forwards to the bus: (start, size) each.
#[derive(Debug, Clone, Copy)]
pub struct PciWindows {
    pub mmio: (u64, u64),
    pub io: (u64, u64),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI device number {0} is taken or out of range")]
    SlotTaken(u8),
    #[error("no room for a {size:#x}-byte BAR in the PCI window")]
    NoSpace { size: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    io: bool,
    base: u64,
    size: u64,
    device: u8,
    bar: u8,
}

impl Route {
    fn overlaps(&self, other: &Route) -> bool {
        self.io == other.io
            && self.base < other.base.saturating_add(other.size)
            && other.base < self.base.saturating_add(self.size)
    }

    fn covers(&self, io: bool, addr: u64, len: usize) -> Option<u64> {
        let offset = addr.checked_sub(self.base)?;
        (self.io == io && offset.checked_add(len as u64)? <= self.size).then_some(offset)
    }
}

type Function = Arc<Mutex<dyn PciDevice>>;

pub struct PciRoot {
    devices: Vec<Option<Function>>,
    windows: PciWindows,
    /// Where the next BAR of each kind is allocated at creation.
    next_mmio: u64,
    next_io: u64,
    routes: RwLock<Vec<Route>>,
    /// The routes last reported exclusive to their functions.
    exclusive: Mutex<Vec<Route>>,
    /// The 0xcf8 address register.
    address: AtomicU32,
    /// One configuration write (and the BAR moves it causes) at a time, so moves are applied
    /// in the order the guest made them.
    config_writes: Mutex<()>,
}

impl PciRoot {
    pub fn new(windows: PciWindows) -> Self {
        PciRoot {
            devices: vec![None; DEVICES],
            windows,
            next_mmio: windows.mmio.0,
            next_io: windows.io.0,
            routes: RwLock::new(Vec::new()),
            exclusive: Mutex::new(Vec::new()),
            address: AtomicU32::new(0),
            config_writes: Mutex::new(()),
        }
    }

    pub fn windows(&self) -> PciWindows {
        self.windows
    }

    /// The lowest free device number.
    pub fn free_device_number(&self) -> Option<u8> {
        self.devices
            .iter()
            .position(Option::is_none)
            .map(|n| n as u8)
    }

    /// Puts `function` at device number `n` (function 0).
    pub fn add(&mut self, n: u8, function: Function) -> Result<(), PciError> {
        match self.devices.get_mut(usize::from(n)) {
            Some(slot @ None) => {
                *slot = Some(function);
                Ok(())
            }
            _ => Err(PciError::SlotTaken(n)),
        }
    }

    /// An address for a new BAR of `kind` and `size` (a power of two), aligned to its size,
    /// as firmware assigns them before the OS runs.
    pub fn allocate_bar(&mut self, kind: BarKind, size: u64) -> Result<u64, PciError> {
        let ((start, len), next) = if kind.is_io() {
            (self.windows.io, &mut self.next_io)
        } else {
            (self.windows.mmio, &mut self.next_mmio)
        };
        let base = next
            .checked_next_multiple_of(size)
            .filter(|b| b.checked_add(size).is_some_and(|end| end <= start + len))
            .ok_or(PciError::NoSpace { size })?;
        *next = base + size;
        Ok(base)
    }

    /// Starts routing every function's BARs (and tells each where they are).
    pub fn into_shared(self) -> Arc<Self> {
        let root = Arc::new(self);
        let _serial = lock(&root.config_writes);
        for n in 0..DEVICES as u8 {
            root.refresh(n);
        }
        drop(_serial);
        root
    }

    /// Re-reads every function's BARs and routes them anew, as if the guest had just
    /// written them: after a restore loaded saved configuration space into the functions.
    pub fn reroute(&self) {
        let _serial = lock(&self.config_writes);
        for n in 0..DEVICES as u8 {
            self.refresh(n);
        }
    }

    fn function(&self, bus: u8, device: u8, function: u8) -> Option<&Function> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.devices.get(usize::from(device))?.as_ref()
    }

    /// A configuration read; all-ones where nothing answers or the access is malformed.
    pub fn config_read(&self, bus: u8, device: u8, function: u8, offset: usize, data: &mut [u8]) {
        data.fill(0xff);
        if !valid_access(offset, data.len()) {
            return;
        }
        if let Some(f) = self.function(bus, device, function) {
            lock(f).read_config(offset, data);
        }
    }

    /// A configuration write; ignored where nothing answers or the access is malformed.
    pub fn config_write(&self, bus: u8, device: u8, function: u8, offset: usize, data: &[u8]) {
        if !valid_access(offset, data.len()) {
            return;
        }
        let Some(f) = self.function(bus, device, function) else {
            return;
        };
        let _serial = lock(&self.config_writes);
        lock(f).write_config(offset, data);
        self.refresh(device);
    }

    /// Re-reads device `n`'s decoded BARs and routes them, then tells every function whose
    /// BARs stopped or started being exclusive. Called with `config_writes` held.
    fn refresh(&self, n: u8) {
        let Some(Some(f)) = self.devices.get(usize::from(n)) else {
            return;
        };
        let bars = lock(f).decoded_bars();
        let wanted = bars
            .iter()
            .filter(|b| self.inside_window(b))
            .map(|b| Route {
                io: b.kind.is_io(),
                base: b.base,
                size: b.size,
                device: n,
                bar: b.index,
            });
        let exclusive = {
            let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
            routes.retain(|r| r.device != n);
            routes.extend(wanted);
            routes.sort_by_key(|r| (r.device, r.bar));
            routes
                .iter()
                .filter(|r| !routes.iter().any(|o| o != *r && o.overlaps(r)))
                .copied()
                .collect::<Vec<_>>()
        };
        let mut reported = lock(&self.exclusive);
        let stopped: Vec<Route> = reported
            .iter()
            .filter(|r| !exclusive.contains(r))
            .copied()
            .collect();
        let started: Vec<Route> = exclusive
            .iter()
            .filter(|r| !reported.contains(r))
            .copied()
            .collect();
        for r in &stopped {
            self.tell(r, Some(r.base), None);
        }
        for r in &started {
            self.tell(r, None, Some(r.base));
        }
        *reported = exclusive;
    }

    fn tell(&self, r: &Route, from: Option<u64>, to: Option<u64>) {
        if let Some(Some(f)) = self.devices.get(usize::from(r.device)) {
            lock(f).bar_moved(r.bar, from, to);
        }
    }

    fn inside_window(&self, bar: &Bar) -> bool {
        let (start, len) = if bar.kind.is_io() {
            self.windows.io
        } else {
            self.windows.mmio
        };
        bar.size > 0
            && bar.base >= start
            && bar
                .base
                .checked_add(bar.size)
                .is_some_and(|end| end <= start + len)
    }

    fn route(&self, io: bool, addr: u64, len: usize) -> Option<(Function, u8, u64)> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.iter().find_map(|r| {
            let offset = r.covers(io, addr, len)?;
            let f = self.devices.get(usize::from(r.device))?.as_ref()?;
            Some((Arc::clone(f), r.bar, offset))
        })
    }

    /// An access at `addr` in the MMIO (or, with `io`, the port) window: false when no BAR
    /// decodes it.
    pub fn bar_read(&self, io: bool, addr: u64, data: &mut [u8]) -> bool {
        let Some((f, bar, offset)) = self.route(io, addr, data.len()) else {
            return false;
        };
        lock(&f).read_bar(bar, offset, data);
        true
    }

    pub fn bar_write(&self, io: bool, addr: u64, data: &[u8]) -> bool {
        let Some((f, bar, offset)) = self.route(io, addr, data.len()) else {
            return false;
        };
        lock(&f).write_bar(bar, offset, data);
        true
    }
}

/// 1, 2 or 4 bytes, naturally aligned, inside a function's 4 KiB.
fn valid_access(offset: usize, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len) && offset + len <= 4096
}

/// Configuration mechanism #1: the address register at 0xcf8 (32-bit accesses only; other
/// sizes go to whatever else decodes those ports on a PC, here nothing) and the data window
/// at 0xcfc-0xcff.
pub struct ConfigPorts(pub Arc<PciRoot>);

/// Ports the mechanism takes.
pub const CONFIG_PORTS_SIZE: u64 = 8;

impl ConfigPorts {
    /// The function and register the address register selects, with the byte `offset` into
    /// the data window; None while the enable bit is clear.
    fn target(&self, offset: u64) -> Option<(u8, u8, u8, usize)> {
        let a = self.0.address.load(Ordering::Relaxed);
        if a & 0x8000_0000 == 0 {
            return None;
        }
        let reg = (a & 0xfc) as usize + (offset as usize - 4);
        Some((
            (a >> 16) as u8,
            (a >> 11) as u8 & 0x1f,
            (a >> 8) as u8 & 7,
            reg,
        ))
    }
}

impl BusDevice for ConfigPorts {
    fn name(&self) -> String {
        "pci-config".into()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                data.copy_from_slice(&self.0.address.load(Ordering::Relaxed).to_le_bytes());
            }
            return;
        }
        if let Some((bus, dev, func, reg)) = self.target(offset) {
            self.0.config_read(bus, dev, func, reg, data);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < 4 {
            if let (0, Ok(v)) = (offset, <[u8; 4]>::try_from(data)) {
                // Bits 1:0 and the reserved 30:24 read as 0.
                let v = u32::from_le_bytes(v) & 0x80ff_fffc;
                self.0.address.store(v, Ordering::Relaxed);
            }
            return;
        }
        if let Some((bus, dev, func, reg)) = self.target(offset) {
            self.0.config_write(bus, dev, func, reg, data);
        }
    }
}

/// The ECAM window: bus << 20 | device << 15 | function << 12 | register.
pub struct Ecam(pub Arc<PciRoot>);

fn ecam_target(offset: u64) -> (u8, u8, u8, usize) {
    (
        (offset >> 20) as u8,
        (offset >> 15) as u8 & 0x1f,
        (offset >> 12) as u8 & 7,
        (offset & 0xfff) as usize,
    )
}

impl BusDevice for Ecam {
    fn name(&self) -> String {
        "pci-ecam".into()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, dev, func, reg) = ecam_target(offset);
        self.0.config_read(bus, dev, func, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bus, dev, func, reg) = ecam_target(offset);
        self.0.config_write(bus, dev, func, reg, data);
    }
}

/// One of the host bridge's windows on the MMIO or port bus: routes accesses to the BAR that
/// decodes them. Nothing decoded reads all-ones.
pub struct BarWindow {
    pub root: Arc<PciRoot>,
    pub io: bool,
    /// Where the window starts, to turn offsets back into addresses.
    pub base: u64,
}

impl BusDevice for BarWindow {
    fn name(&self) -> String {
        "pci-bar".into()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.root.bar_read(self.io, self.base + offset, data) {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.root.bar_write(self.io, self.base + offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{self, Identity, PciConfig, COMMAND_MEMORY};

    /// A function with one 4 KiB memory BAR that remembers the last write and its moves.
    struct Probe {
        config: PciConfig,
        last: Option<(u8, u64, Vec<u8>)>,
        moves: Vec<(u8, Option<u64>, Option<u64>)>,
    }

    impl PciDevice for Probe {
        fn read_config(&mut self, offset: usize, data: &mut [u8]) {
            self.config.read(offset, data);
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn decoded_bars(&self) -> Vec<Bar> {
            self.config.decoded_bars()
        }
        fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            data.fill(bar + offset as u8);
        }
        fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
            self.last = Some((bar, offset, data.to_vec()));
        }
        fn bar_moved(&mut self, bar: u8, from: Option<u64>, to: Option<u64>) {
            self.moves.push((bar, from, to));
        }
    }

    const WINDOWS: PciWindows = PciWindows {
        mmio: (0xc000_0000, 0x1000_0000),
        io: (0x1000, 0xf000),
    };

    /// A probe with its BAR allocated in `root`, memory space on.
    fn probe(root: &mut PciRoot) -> Arc<Mutex<Probe>> {
        let mut config = PciConfig::new(Identity {
            vendor: 0x1234,
            device: 0x5678,
            revision: 0,
            class: 0xff_00_00,
            subsystem_vendor: 0,
            subsystem: 0,
        });
        let kind = BarKind::Memory32 {
            prefetchable: false,
        };
        config.add_bar(0, kind, 0x1000);
        config.set_bar_address(0, root.allocate_bar(kind, 0x1000).unwrap());
        config.set_command(COMMAND_MEMORY);
        Arc::new(Mutex::new(Probe {
            config,
            last: None,
            moves: Vec::new(),
        }))
    }

    fn root_with_probe() -> (Arc<PciRoot>, Arc<Mutex<Probe>>) {
        let mut root = PciRoot::new(WINDOWS);
        let probe = probe(&mut root);
        root.add(3, probe.clone()).unwrap();
        (root.into_shared(), probe)
    }

    #[test]
    fn overlapping_bars_lose_exclusivity_and_the_lower_device_answers() {
        let mut root = PciRoot::new(WINDOWS);
        let (a, b) = (probe(&mut root), probe(&mut root));
        root.add(3, a.clone()).unwrap();
        root.add(4, b.clone()).unwrap();
        let root = root.into_shared();
        let mut e = Ecam(root.clone());
        let bar0 = |dev: u64| dev << 15 | config::BAR0 as u64;
        // Device 4's BAR onto device 3's: neither may keep hypervisor-side state there.
        e.write(bar0(4), &0xc000_0000u32.to_le_bytes());
        assert_eq!(
            lock(&a).moves,
            [(0, None, Some(0xc000_0000)), (0, Some(0xc000_0000), None)]
        );
        assert_eq!(
            lock(&b).moves,
            [(0, None, Some(0xc000_1000)), (0, Some(0xc000_1000), None)]
        );
        root.bar_write(false, 0xc000_0004, &[1]);
        assert!(lock(&a).last.is_some(), "the lower device answers");
        assert!(lock(&b).last.is_none());
        // Apart again: both exclusive.
        e.write(bar0(4), &0xc000_2000u32.to_le_bytes());
        assert_eq!(lock(&a).moves[2..], [(0, None, Some(0xc000_0000))]);
        assert_eq!(lock(&b).moves[2..], [(0, None, Some(0xc000_2000))]);
    }

    fn cf8(ports: &mut ConfigPorts, dev: u32, reg: u32) -> u32 {
        ports.write(0, &(0x8000_0000 | dev << 11 | reg).to_le_bytes());
        let mut b = [0; 4];
        ports.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    fn ecam(e: &mut Ecam, bus: u64, dev: u64, reg: u64) -> u32 {
        let mut b = [0; 4];
        e.read(bus << 20 | dev << 15 | reg, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn both_access_methods_see_the_same_registers() {
        let (root, _) = root_with_probe();
        let mut ports = ConfigPorts(root.clone());
        let mut e = Ecam(root.clone());
        assert_eq!(cf8(&mut ports, 3, 0), 0x5678_1234);
        assert_eq!(ecam(&mut e, 0, 3, 0), 0x5678_1234);
        assert_eq!(cf8(&mut ports, 4, 0), !0, "absent device");
        assert_eq!(ecam(&mut e, 1, 3, 0), !0, "other bus");
        // A byte read at 0xcfe reads register byte 2.
        ports.write(0, &(0x8000_0000u32 | 3 << 11).to_le_bytes());
        let mut b = [0; 1];
        ports.read(6, &mut b);
        assert_eq!(b[0], 0x78);
        // Without the enable bit nothing answers.
        ports.write(0, &(3u32 << 11).to_le_bytes());
        let mut b = [0; 4];
        ports.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
        // Misaligned ECAM accesses are refused.
        let mut b = [0; 4];
        e.read(3 << 15 | 2, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn bars_route_move_and_stop_with_memory_space() {
        let (root, probe) = root_with_probe();
        let mut e = Ecam(root.clone());
        assert_eq!(
            lock(&probe).moves,
            vec![(0, None, Some(0xc000_0000))],
            "initial placement reported"
        );
        let mut b = [0; 1];
        assert!(root.bar_read(false, 0xc000_0010, &mut b));
        assert_eq!(b[0], 0x10);
        // Move it.
        e.write(3 << 15 | config::BAR0 as u64, &0xc010_0000u32.to_le_bytes());
        assert!(!root.bar_read(false, 0xc000_0010, &mut b));
        assert!(root.bar_write(false, 0xc010_0ffc, &[1, 2, 3, 4]));
        assert_eq!(lock(&probe).last, Some((0, 0xffc, vec![1, 2, 3, 4])));
        // An access running past the BAR's end is not routed.
        assert!(!root.bar_write(false, 0xc010_0ffe, &[1, 2, 3, 4]));
        // Outside the window (over RAM, say): answers nowhere.
        e.write(3 << 15 | config::BAR0 as u64, &0x0010_0000u32.to_le_bytes());
        assert!(!root.bar_read(false, 0x0010_0000, &mut b));
        e.write(3 << 15 | config::BAR0 as u64, &0xc020_0000u32.to_le_bytes());
        e.write(3 << 15 | config::COMMAND as u64, &[0, 0]);
        assert!(!root.bar_read(false, 0xc020_0000, &mut b));
        assert_eq!(
            lock(&probe).moves[1..],
            [
                (0, Some(0xc000_0000), None),
                (0, None, Some(0xc010_0000)),
                (0, Some(0xc010_0000), None),
                (0, None, Some(0xc020_0000)),
                (0, Some(0xc020_0000), None),
            ]
        );
    }

    #[test]
    fn allocation_aligns_and_runs_out() {
        let mut root = PciRoot::new(PciWindows {
            mmio: (0xc000_0000, 0x10000),
            io: (0x1000, 0x100),
        });
        let m = BarKind::Memory64 {
            prefetchable: false,
        };
        assert_eq!(root.allocate_bar(m, 0x1000), Ok(0xc000_0000));
        assert_eq!(root.allocate_bar(m, 0x8000), Ok(0xc000_8000));
        assert_eq!(
            root.allocate_bar(m, 0x8000),
            Err(PciError::NoSpace { size: 0x8000 })
        );
        assert_eq!(root.allocate_bar(BarKind::Io, 0x20), Ok(0x1000));
    }
}
