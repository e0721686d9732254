//! A passed-through PCI function on the guest's bus: [`VfioPciDevice`] implements
//! `devices::pci::PciDevice` over any [`VfioBackend`].
//!
//! - Configuration space: [`VirtConfig`]'s policy; passed-through bytes go to the device.
//! - BARs: at the addresses the VMM assigned (the guest may move them). While a BAR is
//!   exclusive, the parts of it the region lets map ([`VfioBackend::mmap_areas`]), less the
//!   pages of the MSI-X table and PBA, are mapped into the guest as memory slots of their
//!   own ([`DeviceMemory`]), so accesses there never exit; every other access traps and goes
//!   to the backend, or to the emulated table.
//! - Interrupts, one kind at a time at the device as vfio-pci requires: MSI-X if the guest
//!   enabled it, else MSI if it enabled that, else INTx. MSI-X's table and MSI's capability
//!   are emulated (`devices::pci::msix::Msix`, `devices::pci::msi::Msi`), each vector an
//!   `MsiLine`. A vector the guest unmasked is wired device -> the line's irqfd, so the
//!   device's interrupt reaches the guest without the VMM; a masked one (or one whose line
//!   has no irqfd) is wired to an event of the VMM's ([`VfioPciDevice::vector_events`]),
//!   whose handler sets the pending bit or delivers it ([`VfioPciDevice::serve_vector`]).
//! - INTx: the device's trigger eventfd raises a level line whose EOI signals the unmask
//!   eventfd: KVM's resampling irqfd, or the VMM's own IOAPIC through its event loop.
//! - DMA: all guest RAM is mapped for the device at creation and unmapped on drop; the
//!   device is reset at creation and on drop (VM start and stop).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use devices::pci::config::COMMAND;
use devices::pci::msi::{self, Msi};
use devices::pci::msix::Msix;
use devices::pci::{Bar, PciDevice};
use hypervisor::{Event, MsiLine};

use crate::backend::{MsiKind, VfioBackend, CONFIG_REGION};
use crate::config::{BarSpec, MsixLayout, Offered, VirtConfig};

/// The most MSI-X vectors a function gets (each takes a GSI of the VM).
pub const MAX_VECTORS: u16 = 64;
/// What a memory slot maps: whole host pages.
const PAGE: u64 = 4096;

/// Maps device memory into the guest (the VMM's bridge to `hypervisor::Vm`).
pub trait DeviceMemory: Send {
    /// Maps `size` bytes at host address `hva` at guest address `gpa`; returns a slot.
    /// The caller keeps the host range mapped until it unmaps the slot.
    fn map(&self, gpa: u64, size: u64, hva: u64) -> io::Result<u32>;
    fn unmap(&self, slot: u32) -> io::Result<()>;
}

/// What the VMM gives a function.
pub struct Wiring {
    /// Where each BAR starts (by [`VfioPciDevice::probe`]'s order).
    pub bar_addresses: Vec<u64>,
    /// One line per MSI-X vector ([`Probe::msix_vectors`] of them).
    pub msix: Vec<Box<dyn MsiLine>>,
    /// One line per MSI vector ([`Probe::msi_vectors`] of them).
    pub msi: Vec<Box<dyn MsiLine>>,
    /// INTx: the GSI the line register reports, and the trigger and resample events of a
    /// level line the VMM serves (`hypervisor::Vm::level_irqfd`, or its own IOAPIC's
    /// `level_line`). None: no INTx (pin 0).
    pub intx: Option<(u8, Event, Event)>,
    /// None: every BAR access traps.
    pub memory: Option<Box<dyn DeviceMemory>>,
    /// Guest RAM: (guest address, size, host address) of each region, mapped for DMA.
    pub ram: Vec<(u64, u64, u64)>,
    /// Whatever keeps that RAM mapped: held until the device can no longer reach it.
    pub ram_owner: Box<dyn std::any::Any + Send>,
    /// Where the function counts (the owner may read them).
    pub stats: Arc<Stats>,
}

/// What a function needs before it can be wired.
pub struct Probe {
    pub config: VirtConfig,
}

impl Probe {
    pub fn bars(&self) -> &[BarSpec] {
        &self.config.bars
    }

    pub fn msix_vectors(&self) -> u16 {
        self.config.msix.map_or(0, |m| m.vectors)
    }

    pub fn msi_vectors(&self) -> u8 {
        self.config.msi.map_or(0, |m| m.vectors)
    }
}

/// Counters a test (or a curious operator) reads.
#[derive(Debug, Default)]
pub struct Stats {
    /// BAR accesses that trapped to the VMM and went to the device.
    pub trapped: AtomicU64,
    /// Interrupts that came through the VMM (masked vectors, lines without irqfd).
    pub relayed: AtomicU64,
    /// Parts of BARs mapped into the guest now (one memory slot each).
    pub mapped: AtomicU64,
}

/// A message-signalled vector of the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vector {
    Msi(u8),
    Msix(u16),
}

/// A page-aligned part of a BAR, mapped in this process at `hva`, and into the guest while
/// the BAR is exclusive.
struct Piece {
    offset: u64,
    size: u64,
    hva: u64,
    slot: Option<u32>,
}

struct BarState {
    spec: BarSpec,
    pieces: Vec<Piece>,
}

/// The interrupt kind on at the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Intx,
    Msi,
    Msix,
}

/// The VMM's side of one kind's vectors.
struct Relay {
    /// The VMM-side event of each vector.
    events: Vec<Event>,
    /// What each vector is wired to at the device; empty while the kind is off there.
    wired: Vec<RawFd>,
}

impl Relay {
    fn new(n: usize) -> io::Result<Self> {
        Ok(Relay {
            events: (0..n).map(|_| Event::new()).collect::<io::Result<_>>()?,
            wired: Vec::new(),
        })
    }

    /// Vector `v`'s target: its line's irqfd when `direct` has one, else the VMM's event.
    fn target(&self, v: usize, direct: Option<RawFd>) -> RawFd {
        direct.unwrap_or_else(|| self.events[v].as_raw_fd())
    }
}

pub struct VfioPciDevice {
    name: String,
    backend: Box<dyn VfioBackend>,
    config: VirtConfig,
    bars: Vec<BarState>,
    msix: Option<(Msix, Relay)>,
    msi: Option<(Msi, Relay)>,
    intx: Option<(Event, Event)>,
    mode: Mode,
    memory: Option<Box<dyn DeviceMemory>>,
    dma: Vec<(u64, u64)>,
    stats: Arc<Stats>,
    /// Logged once: mapping a BAR failed, it traps.
    map_failed: bool,
    /// Dropped after the DMA mappings are gone (see `Drop`).
    _ram_owner: Box<dyn std::any::Any + Send>,
}

fn other(op: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{op}: {e}"))
}

/// The page-aligned parts of a BAR that may be mapped into the guest: the region's mappable
/// `areas` (offset, size), inside its `region_size`, less every page that holds part of a
/// `hole` (the MSI-X table and PBA, which trap to be emulated). As (offset, size).
pub fn mappable_pieces(
    areas: &[(u64, u64)],
    region_size: u64,
    holes: &[(u64, u64)],
) -> Vec<(u64, u64)> {
    let mut pieces = Vec::new();
    for &(offset, size) in areas {
        let Some(start) = offset.checked_next_multiple_of(PAGE) else {
            continue;
        };
        let end = offset.saturating_add(size).min(region_size) / PAGE * PAGE;
        let mut parts = vec![(start, end)];
        for &(at, len) in holes.iter().filter(|h| h.1 > 0) {
            let (hole_start, hole_end) = (
                at / PAGE * PAGE,
                at.saturating_add(len)
                    .checked_next_multiple_of(PAGE)
                    .unwrap_or(u64::MAX),
            );
            parts = parts
                .into_iter()
                .flat_map(|(s, e)| [(s, e.min(hole_start)), (s.max(hole_end), e)])
                .filter(|&(s, e)| s < e)
                .collect();
        }
        pieces.extend(parts.into_iter().map(|(s, e)| (s, e - s)));
    }
    pieces
}

/// The (offset, size) ranges of BAR `bar` that hold the MSI-X table or PBA.
fn msix_holes(layout: Option<MsixLayout>, bar: u8) -> Vec<(u64, u64)> {
    let Some(l) = layout else { return Vec::new() };
    [(l.table, l.table_size()), (l.pba, l.pba_size())]
        .into_iter()
        .filter(|&((b, _), _)| b == bar)
        .map(|((_, at), size)| (at, size))
        .collect()
}

/// Brings the device's wiring of one kind's vectors to `want`: in one call when the kind is
/// off there or its vector count changed (kernels before 6.5 allocate exactly the vectors the
/// first call names), else vector by vector.
fn wire(
    backend: &mut dyn VfioBackend,
    name: &str,
    kind: MsiKind,
    wired: &mut Vec<RawFd>,
    want: &[RawFd],
) {
    if wired.len() != want.len() {
        if !wired.is_empty() {
            let _ = backend.disable_vectors(kind);
            wired.clear();
        }
        let all: Vec<Option<RawFd>> = want.iter().copied().map(Some).collect();
        match backend.set_vectors(kind, 0, &all) {
            Ok(()) => *wired = want.to_vec(),
            Err(e) => log::warn!("{name}: cannot turn {kind:?} on: {e}"),
        }
        return;
    }
    for (v, &fd) in want.iter().enumerate() {
        if wired[v] != fd {
            match backend.set_vectors(kind, v as u32, &[Some(fd)]) {
                Ok(()) => wired[v] = fd,
                Err(e) => log::warn!("{name}: {kind:?} vector {v}: {e}"),
            }
        }
    }
}

impl VfioPciDevice {
    /// Reads the device's configuration space and regions and applies the policy.
    pub fn probe(backend: &mut dyn VfioBackend, intx: bool) -> io::Result<Probe> {
        let size = backend
            .region(CONFIG_REGION)
            .map_or(256, |r| r.size.min(4096)) as usize;
        let mut raw = vec![0u8; size];
        for (i, chunk) in raw.chunks_mut(4).enumerate() {
            backend
                .read(CONFIG_REGION, i as u64 * 4, chunk)
                .map_err(|e| other("read configuration space", e))?;
        }
        let regions = std::array::from_fn(|i| backend.region(i as u32).map(|r| r.size));
        let irqs = backend.irqs();
        let offered = Offered {
            intx: intx && irqs.intx,
            msi: irqs.msi,
            msix: irqs.msix.min(u32::from(MAX_VECTORS)) as u16,
        };
        Ok(Probe {
            config: VirtConfig::new(&raw, regions, offered),
        })
    }

    /// Wires a probed function: resets it, maps guest RAM for its DMA, programs its BARs and
    /// interrupts.
    pub fn new(
        name: String,
        mut backend: Box<dyn VfioBackend>,
        probe: Probe,
        wiring: Wiring,
    ) -> io::Result<Self> {
        let msi_vectors = usize::from(probe.msi_vectors());
        if wiring.msi.len() != msi_vectors || wiring.msix.len() != usize::from(probe.msix_vectors())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "one MSI line per vector the probe found",
            ));
        }
        backend.reset().map_err(|e| other("reset", e))?;
        let mut config = probe.config;
        let mut bars = Vec::new();
        for (spec, &addr) in config.bars.iter().zip(&wiring.bar_addresses) {
            config.shadow.set_bar_address(usize::from(spec.index), addr);
            let index = u32::from(spec.index);
            let areas = match backend.region(index) {
                Some(r) if r.mmap => backend.mmap_areas(index),
                _ => Vec::new(),
            };
            let holes = msix_holes(config.msix, spec.index);
            // Mapped into this process now, on the thread that makes the function (vCPUs,
            // which later map them into the guest, may not mmap a device).
            let pieces = mappable_pieces(&areas, spec.region_size, &holes)
                .into_iter()
                .filter_map(|(offset, size)| match backend.mmap(index, offset, size) {
                    Ok(hva) => Some(Piece {
                        offset,
                        size,
                        hva,
                        slot: None,
                    }),
                    Err(e) => {
                        log::warn!("{name}: BAR {index} at {offset:#x} traps: {e}");
                        None
                    }
                })
                .collect();
            bars.push(BarState {
                spec: *spec,
                pieces,
            });
        }
        let msix = match config.msix {
            Some(l) => Some((Msix::new(wiring.msix), Relay::new(usize::from(l.vectors))?)),
            None => None,
        };
        let msi = match config.msi {
            Some(_) if msi_vectors > 0 => Some((Msi::new(wiring.msi), Relay::new(msi_vectors)?)),
            _ => None,
        };
        let mut dev = VfioPciDevice {
            name,
            backend,
            config,
            bars,
            msix,
            msi,
            intx: None,
            mode: Mode::Off,
            memory: wiring.memory,
            dma: Vec::new(),
            stats: wiring.stats,
            map_failed: false,
            _ram_owner: wiring.ram_owner,
        };
        for &(gpa, size, hva) in &wiring.ram {
            dev.backend
                .dma_map(gpa, size, hva)
                .map_err(|e| other(&format!("map guest RAM {gpa:#x}+{size:#x} for DMA"), e))?;
            dev.dma.push((gpa, size));
        }
        if let Some((line, trigger, resample)) = wiring.intx {
            dev.config.shadow.set_interrupt(1, line);
            dev.backend
                .set_intx(Some((trigger.as_raw_fd(), resample.as_raw_fd())))
                .map_err(|e| other("wire INTx", e))?;
            dev.intx = Some((trigger, resample));
            dev.mode = Mode::Intx;
        }
        Ok(dev)
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// (vector, event) for every MSI and MSI-X vector: the event loop serves each with
    /// [`VfioPciDevice::serve_vector`].
    pub fn vector_events(&self) -> io::Result<Vec<(Vector, Event)>> {
        let mut all = Vec::new();
        if let Some((_, r)) = &self.msix {
            for (v, e) in r.events.iter().enumerate() {
                all.push((Vector::Msix(v as u16), e.try_clone()?));
            }
        }
        if let Some((_, r)) = &self.msi {
            for (v, e) in r.events.iter().enumerate() {
                all.push((Vector::Msi(v as u8), e.try_clone()?));
            }
        }
        Ok(all)
    }

    /// The device signalled `vector` through the VMM: deliver it, or keep it pending while
    /// masked.
    pub fn serve_vector(&mut self, vector: Vector) {
        let (relay, v) = match vector {
            Vector::Msix(v) => (self.msix.as_ref().map(|m| &m.1), usize::from(v)),
            Vector::Msi(v) => (self.msi.as_ref().map(|m| &m.1), usize::from(v)),
        };
        let Some(event) = relay.and_then(|r| r.events.get(v)) else {
            return;
        };
        if !matches!(event.drain(), Ok(true)) {
            return;
        }
        self.stats.relayed.fetch_add(1, Ordering::Relaxed);
        match (vector, &mut self.msix, &mut self.msi) {
            (Vector::Msix(v), Some((m, _)), _) => m.trigger(v),
            (Vector::Msi(_), _, Some((m, _))) => m.trigger(v),
            _ => {}
        }
    }

    /// The kind the guest's programming asks for: MSI-X over MSI over INTx.
    fn wanted_mode(&self) -> Mode {
        if self.msix.as_ref().is_some_and(|(m, _)| m.enabled()) {
            Mode::Msix
        } else if self.msi.as_ref().is_some_and(|(m, _)| m.enabled()) {
            Mode::Msi
        } else if self.intx.is_some() {
            Mode::Intx
        } else {
            Mode::Off
        }
    }

    /// Brings the device's interrupt wiring in line with the guest's programming: one kind
    /// on at a time (the old one off first), and each of its vectors wired to its irqfd
    /// when the guest would take it now, else to the VMM's event.
    fn sync_irqs(&mut self) {
        let want = self.wanted_mode();
        if want != self.mode {
            let r = match self.mode {
                Mode::Off => Ok(()),
                Mode::Intx => self.backend.set_intx(None),
                Mode::Msi => self.backend.disable_vectors(MsiKind::Msi),
                Mode::Msix => self.backend.disable_vectors(MsiKind::Msix),
            };
            if let Err(e) = r {
                log::warn!("{}: cannot turn {:?} off: {e}", self.name, self.mode);
            }
            for (_, r) in self.msix.iter_mut() {
                r.wired.clear();
            }
            for (_, r) in self.msi.iter_mut() {
                r.wired.clear();
            }
            self.mode = want;
            if let (Mode::Intx, Some((t, r))) = (want, &self.intx) {
                let fds = Some((t.as_raw_fd(), r.as_raw_fd()));
                if let Err(e) = self.backend.set_intx(fds) {
                    log::warn!("{}: cannot turn INTx back on: {e}", self.name);
                }
            }
        }
        let backend = &mut *self.backend;
        match (self.mode, &mut self.msix, &mut self.msi) {
            (Mode::Msix, Some((m, relay)), _) => {
                let want: Vec<RawFd> = (0..m.vectors())
                    .map(|v| {
                        let direct = m.program(v).then(|| m.irqfd(v)).flatten();
                        relay.target(usize::from(v), direct)
                    })
                    .collect();
                wire(backend, &self.name, MsiKind::Msix, &mut relay.wired, &want);
            }
            (Mode::Msi, _, Some((m, relay))) => {
                let want: Vec<RawFd> = (0..m.enabled_vectors())
                    .map(|v| {
                        let direct = m.program(v).then(|| m.irqfd(v)).flatten();
                        relay.target(v, direct)
                    })
                    .collect();
                wire(backend, &self.name, MsiKind::Msi, &mut relay.wired, &want);
            }
            _ => {}
        }
    }

    fn bar(&self, index: u8) -> Option<usize> {
        self.bars.iter().position(|b| b.spec.index == index)
    }

    fn unmap_bar(&mut self, i: usize) {
        let index = self.bars[i].spec.index;
        let Some(mem) = &self.memory else { return };
        for p in &mut self.bars[i].pieces {
            let Some(slot) = p.slot.take() else { continue };
            if let Err(e) = mem.unmap(slot) {
                log::warn!("{}: cannot unmap BAR {index}: {e}", self.name);
            }
            self.stats.mapped.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn map_bar(&mut self, i: usize, gpa: u64) {
        let Some(mem) = &self.memory else { return };
        let index = self.bars[i].spec.index;
        for p in &mut self.bars[i].pieces {
            match mem.map(gpa + p.offset, p.size, p.hva) {
                Ok(slot) => {
                    p.slot = Some(slot);
                    self.stats.mapped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if !self.map_failed => {
                    self.map_failed = true;
                    log::warn!(
                        "{}: BAR {index} at {:#x} traps: cannot map it: {e}",
                        self.name,
                        p.offset
                    );
                }
                Err(_) => {}
            }
        }
    }

    /// An access to BAR `bar` the VMM emulates (MSI-X) or hands to the device.
    fn bar_access(&mut self, bar: u8, offset: u64, read: Option<&mut [u8]>, write: Option<&[u8]>) {
        let len = read
            .as_ref()
            .map_or_else(|| write.map_or(0, <[u8]>::len), |d| d.len());
        if let (Some(l), Some((m, _))) = (self.config.msix, &mut self.msix) {
            if l.overlaps(bar, offset, len as u64) {
                let in_table = l.table.0 == bar && offset >= l.table.1;
                match (read, write) {
                    (Some(d), _) if in_table && offset < l.table.1 + l.table_size() => {
                        m.read_table(offset - l.table.1, d)
                    }
                    (Some(d), _) => m.read_pba(offset.saturating_sub(l.pba.1), d),
                    (None, Some(d)) if in_table && offset < l.table.1 + l.table_size() => {
                        m.write_table(offset - l.table.1, d);
                        self.sync_irqs();
                    }
                    _ => {}
                }
                return;
            }
        }
        let Some(i) = self.bar(bar) else { return };
        let inside = offset + len as u64 <= self.bars[i].spec.region_size;
        self.stats.trapped.fetch_add(1, Ordering::Relaxed);
        let r = match (read, write) {
            (Some(d), _) if inside => self.backend.read(u32::from(bar), offset, d),
            (Some(d), _) => {
                d.fill(0xff);
                Ok(())
            }
            (None, Some(d)) if inside => self.backend.write(u32::from(bar), offset, d),
            _ => Ok(()),
        };
        if let Err(e) = r {
            log::debug!("{}: BAR {bar} access at {offset:#x}: {e}", self.name);
        }
    }
}

impl PciDevice for VfioPciDevice {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        if let (Some(l), Some((m, _))) = (self.config.msi, &self.msi) {
            // The pending bits are the model's.
            let pending = m.pending().to_le_bytes();
            self.config
                .shadow
                .set_raw(l.offset + msi::PENDING, &pending, &[]);
        }
        self.config.shadow.read(offset, data);
        if (offset..offset + data.len()).any(|o| self.config.passthrough(o)) {
            let mut dev = vec![0u8; data.len()];
            if self
                .backend
                .read(CONFIG_REGION, offset as u64, &mut dev)
                .is_ok()
            {
                for (i, b) in data.iter_mut().enumerate() {
                    if self.config.passthrough(offset + i) {
                        *b = dev[i];
                    }
                }
            }
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.shadow.write(offset, data);
        let end = offset + data.len();
        if (offset..end).all(|o| self.config.passthrough(o)) {
            let _ = self.backend.write(CONFIG_REGION, offset as u64, data);
        } else {
            for (i, b) in data.iter().enumerate() {
                if self.config.passthrough(offset + i) {
                    let _ = self
                        .backend
                        .write(CONFIG_REGION, (offset + i) as u64, &[*b]);
                }
            }
        }
        if offset < COMMAND + 2 && end > COMMAND {
            let command = self.config.shadow.command().to_le_bytes();
            let _ = self.backend.write(CONFIG_REGION, COMMAND as u64, &command);
        }
        let mut irqs = false;
        if let (Some(l), Some((m, _))) = (self.config.msix, &mut self.msix) {
            if offset < l.offset + 4 && end > l.offset + 2 {
                let b = self.config.shadow.bytes(l.offset + 2, 2);
                m.set_control(u16::from_le_bytes([b[0], b[1]]));
                irqs = true;
            }
        }
        if let (Some(l), Some((m, _))) = (self.config.msi, &mut self.msi) {
            if l.overlaps(offset, data.len()) {
                m.update(self.config.shadow.bytes(l.offset, msi::CAPABILITY_SIZE));
                irqs = true;
            }
        }
        if irqs {
            self.sync_irqs();
        }
    }

    fn decoded_bars(&self) -> Vec<Bar> {
        self.config.shadow.decoded_bars()
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        self.bar_access(bar, offset, Some(data), None);
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        self.bar_access(bar, offset, None, Some(data));
    }

    fn bar_moved(&mut self, bar: u8, from: Option<u64>, to: Option<u64>) {
        let Some(i) = self.bar(bar) else { return };
        if from.is_some() {
            self.unmap_bar(i);
        }
        if let Some(gpa) = to {
            self.map_bar(i, gpa);
        }
    }
}

impl Drop for VfioPciDevice {
    /// The VM stops: the guest's mappings go, the device is quiesced and reset, and it may
    /// no longer reach guest RAM.
    fn drop(&mut self) {
        for i in 0..self.bars.len() {
            self.unmap_bar(i);
        }
        let _ = match self.mode {
            Mode::Off => Ok(()),
            Mode::Intx => self.backend.set_intx(None),
            Mode::Msi => self.backend.disable_vectors(MsiKind::Msi),
            Mode::Msix => self.backend.disable_vectors(MsiKind::Msix),
        };
        if let Err(e) = self.backend.reset() {
            log::warn!("{}: reset on stop: {e}", self.name);
        }
        for (gpa, size) in std::mem::take(&mut self.dma) {
            if let Err(e) = self.backend.dma_unmap(gpa, size) {
                log::warn!("{}: unmap guest RAM {gpa:#x} for DMA: {e}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeDevice, FakeHandle, FakeOptions};
    use hypervisor::MsiMessage;

    struct NoLine;
    impl MsiLine for NoLine {
        fn set_message(&self, _: Option<MsiMessage>) -> io::Result<()> {
            Ok(())
        }
        fn trigger(&self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines(n: usize) -> Vec<Box<dyn MsiLine>> {
        (0..n)
            .map(|_| Box::new(NoLine) as Box<dyn MsiLine>)
            .collect()
    }

    /// A function over the fake, with INTx wired to two fresh events when `intx`.
    pub(crate) fn device_with(o: FakeOptions, intx: bool) -> (VfioPciDevice, FakeHandle) {
        let (fake, handle) = FakeDevice::with(o).unwrap();
        let mut backend: Box<dyn VfioBackend> = Box::new(fake);
        let probe = VfioPciDevice::probe(&mut *backend, intx).unwrap();
        let wiring = Wiring {
            bar_addresses: vec![0xc000_0000, 0xc001_0000, 0xc002_0000],
            msix: lines(usize::from(probe.msix_vectors())),
            msi: lines(usize::from(probe.msi_vectors())),
            intx: intx.then(|| (20, Event::new().unwrap(), Event::new().unwrap())),
            memory: None,
            ram: vec![],
            ram_owner: Box::new(()),
            stats: Arc::default(),
        };
        (
            VfioPciDevice::new("t".into(), backend, probe, wiring).unwrap(),
            handle,
        )
    }

    pub(crate) fn device(mappable: bool) -> (VfioPciDevice, FakeHandle) {
        let o = FakeOptions {
            mappable,
            ..FakeOptions::default()
        };
        device_with(o, false)
    }

    fn r32(d: &mut VfioPciDevice, at: usize) -> u32 {
        let mut b = [0; 4];
        d.read_config(at, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn config_reads_merge_the_shadow_and_the_device() {
        let (mut d, _) = device(true);
        assert_eq!(r32(&mut d, 0x34), 0x40);
        assert_eq!(r32(&mut d, 0x04) >> 16, 0x0210);
        assert_eq!(r32(&mut d, 0x40) & 0xffff, 0x6001);
    }

    #[test]
    fn msix_enable_wires_the_device() {
        let (mut d, h) = device(true);
        d.write_bar(4, 0, &0xfee0_0000u32.to_le_bytes());
        d.write_bar(4, 8, &0x50u32.to_le_bytes());
        d.write_bar(4, 12, &0u32.to_le_bytes());
        d.write_config(0x62, &0x8007u16.to_le_bytes());
        assert!(h.stats(|s| s.msix.clone()).is_some());
    }

    /// The kinds on at the fake: (INTx, MSI vectors, MSI-X).
    fn on(h: &FakeHandle) -> (bool, Option<usize>, bool) {
        h.stats(|s| {
            (
                s.intx.is_some(),
                s.msi.as_ref().map(Vec::len),
                s.msix.is_some(),
            )
        })
    }

    #[test]
    fn one_interrupt_kind_at_a_time_msix_over_msi_over_intx() {
        let o = FakeOptions {
            msi: true,
            ..FakeOptions::default()
        };
        let (mut d, h) = device_with(o, true);
        let msi = d.config.msi.unwrap().offset;
        assert_eq!(msi, 0x48);
        assert_eq!(on(&h), (true, None, false), "INTx until the guest picks");
        // MSI with 2 of 4 vectors (multiple message enable 1), 64-bit address.
        d.write_config(msi + 4, &0xfee0_0000u32.to_le_bytes());
        d.write_config(msi + 12, &0x40u16.to_le_bytes());
        d.write_config(msi + 2, &0x0011u16.to_le_bytes());
        assert_eq!(on(&h), (false, Some(2), false), "MSI, INTx off");
        // MSI-X on too: it wins, MSI goes off at the device.
        d.write_config(0x62, &0x8000u16.to_le_bytes());
        assert_eq!(on(&h), (false, None, true));
        d.write_config(0x62, &0u16.to_le_bytes());
        assert_eq!(on(&h), (false, Some(2), false), "back to MSI");
        // A vector count changed while on: re-enabled with the new count.
        d.write_config(msi + 2, &0x0001u16.to_le_bytes());
        assert_eq!(on(&h), (false, Some(1), false));
        d.write_config(msi + 2, &0u16.to_le_bytes());
        assert_eq!(on(&h), (true, None, false), "INTx again");
        drop(d);
        assert_eq!(on(&h), (false, None, false));
    }

    #[test]
    fn a_masked_msi_vector_is_relayed_and_kept_pending() {
        let o = FakeOptions {
            msi: true,
            msix: false,
            ..FakeOptions::default()
        };
        let (mut d, h) = device_with(o, false);
        assert!(d.config.msix.is_none(), "no MSI-X offered: hidden");
        let msi = d.config.msi.unwrap().offset;
        d.write_config(msi + 16, &1u32.to_le_bytes()); // vector 0 masked
        d.write_config(msi + 2, &0x0001u16.to_le_bytes());
        // Masked (and these lines have no irqfd): wired to the VMM's event.
        assert!(h.stats(|s| s.msi.clone()).unwrap()[0].is_some());
        let events = d.vector_events().unwrap();
        assert_eq!(events[0].0, Vector::Msi(0));
        events[0].1.signal().unwrap();
        d.serve_vector(Vector::Msi(0));
        assert_eq!(r32(&mut d, msi + msi::PENDING), 1, "pending while masked");
        d.write_config(msi + 16, &0u32.to_le_bytes());
        assert_eq!(r32(&mut d, msi + msi::PENDING), 0, "delivered on unmask");
        assert_eq!(d.stats.relayed.load(Ordering::Relaxed), 1);
        d.serve_vector(Vector::Msi(3));
        d.serve_vector(Vector::Msix(0));
    }

    #[test]
    fn the_pages_of_the_msix_table_and_pba_are_cut_out_of_a_bar() {
        let page = PAGE;
        // Whole region, table and PBA in one page in the middle.
        assert_eq!(
            mappable_pieces(&[(0, 16 * page)], 16 * page, &[(0x8000, 128), (0x8800, 8)]),
            [(0, 8 * page), (9 * page, 7 * page)]
        );
        // A table straddling two pages; areas not page-aligned shrink to whole pages; an
        // area past the region is clipped.
        assert_eq!(
            mappable_pieces(
                &[(0x100, 0x3f00), (0x6000, 0x100_0000)],
                0x8000,
                &[(0x1ff0, 0x20)]
            ),
            [(0x3000, 0x1000), (0x6000, 0x2000)]
        );
        // Hostile numbers end cleanly.
        assert!(mappable_pieces(&[(u64::MAX, u64::MAX)], u64::MAX, &[(u64::MAX, 1)]).is_empty());
        assert!(mappable_pieces(&[(0, page)], page, &[(0, 0x10)]).is_empty());
    }
}
