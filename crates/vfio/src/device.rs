//! A passed-through PCI function on the guest's bus: [`VfioPciDevice`] implements
//! `devices::pci::PciDevice` over any [`VfioBackend`].
//!
//! - Configuration space: [`VirtConfig`]'s policy; passed-through bytes go to the device.
//! - BARs: at the addresses the VMM assigned (the guest may move them). While a BAR is
//!   exclusive and its region may be mapped, the device's memory is mapped into the guest
//!   as a memory slot of its own ([`DeviceMemory`]), so accesses never exit; otherwise each
//!   access traps and goes to the backend. A BAR holding the MSI-X table always traps.
//! - MSI-X: the table is emulated (`devices::pci::msix::Msix`), each vector an `MsiLine`. A
//!   vector the guest unmasked is wired device -> the line's irqfd, so the device's interrupt
//!   reaches the guest without the VMM; a masked one (or one whose line has no irqfd) is
//!   wired to an event of the VMM's ([`VfioPciDevice::vector_events`]), whose handler sets the
//!   pending bit or delivers it ([`VfioPciDevice::serve_vector`]).
//! - INTx: the device's trigger eventfd is a level irqfd of the VM; the guest's EOI
//!   (KVM's resample) unmasks it in VFIO, again without the VMM.
//! - DMA: all guest RAM is mapped for the device at creation and unmapped on drop; the
//!   device is reset at creation and on drop (VM start and stop).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use devices::pci::config::COMMAND;
use devices::pci::msix::Msix;
use devices::pci::{Bar, PciDevice};
use hypervisor::{Event, MsiLine};

use crate::backend::{VfioBackend, CONFIG_REGION};
use crate::config::{BarSpec, VirtConfig};

/// The most MSI-X vectors a function gets (each takes a GSI of the VM).
pub const MAX_VECTORS: u16 = 64;

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
    pub msi: Vec<Box<dyn MsiLine>>,
    /// INTx: the GSI the line register reports, and the trigger and resample events the VM
    /// watches (`hypervisor::Vm::level_irqfd`). None: no INTx (pin 0).
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
}

/// Counters a test (or a curious operator) reads.
#[derive(Debug, Default)]
pub struct Stats {
    /// BAR accesses that trapped to the VMM and went to the device.
    pub trapped: AtomicU64,
    /// Interrupts that came through the VMM (masked vectors, lines without irqfd).
    pub relayed: AtomicU64,
    /// BARs mapped into the guest now.
    pub mapped: AtomicU64,
}

struct BarState {
    spec: BarSpec,
    /// The region may be mapped and holds no MSI-X structure.
    mappable: bool,
    hva: Option<u64>,
    slot: Option<u32>,
}

struct MsixState {
    msix: Msix,
    /// The VMM-side event of each vector.
    events: Vec<Event>,
    /// What each vector is wired to at the device now (None: not yet).
    wired: Vec<Option<RawFd>>,
    /// MSI-X is on at the device.
    on: bool,
}

pub struct VfioPciDevice {
    name: String,
    backend: Box<dyn VfioBackend>,
    config: VirtConfig,
    bars: Vec<BarState>,
    msix: Option<MsixState>,
    intx: Option<(Event, Event)>,
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
        let intx = intx && backend.irqs().intx;
        let max = MAX_VECTORS.min(backend.irqs().msix.min(u32::from(MAX_VECTORS)) as u16);
        Ok(Probe {
            config: VirtConfig::new(&raw, regions, max, intx),
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
        backend.reset().map_err(|e| other("reset", e))?;
        let mut config = probe.config;
        let mut bars = Vec::new();
        for (spec, &addr) in config.bars.iter().zip(&wiring.bar_addresses) {
            config.shadow.set_bar_address(usize::from(spec.index), addr);
            let info = backend.region(u32::from(spec.index)).unwrap_or_default();
            let holds_msix = config
                .msix
                .is_some_and(|m| m.overlaps(spec.index, 0, spec.size));
            bars.push(BarState {
                spec: *spec,
                mappable: info.mmap && !holds_msix && spec.region_size % 4096 == 0,
                hva: None,
                slot: None,
            });
        }
        let msix = match config.msix {
            Some(_) => Some(MsixState {
                events: (0..wiring.msi.len())
                    .map(|_| Event::new())
                    .collect::<io::Result<_>>()?,
                wired: vec![None; wiring.msi.len()],
                msix: Msix::new(wiring.msi),
                on: false,
            }),
            None => None,
        };
        let mut dev = VfioPciDevice {
            name,
            backend,
            config,
            bars,
            msix,
            intx: None,
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
        }
        Ok(dev)
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// (vector, event) for every MSI-X vector: the event loop serves each with
    /// [`VfioPciDevice::serve_vector`].
    pub fn vector_events(&self) -> io::Result<Vec<(u16, Event)>> {
        let Some(m) = &self.msix else {
            return Ok(Vec::new());
        };
        m.events
            .iter()
            .enumerate()
            .map(|(v, e)| Ok((v as u16, e.try_clone()?)))
            .collect()
    }

    /// The device signalled `vector` through the VMM: deliver it, or keep it pending while
    /// masked.
    pub fn serve_vector(&mut self, vector: u16) {
        let Some(m) = &mut self.msix else { return };
        if let Some(e) = m.events.get(usize::from(vector)) {
            if !matches!(e.drain(), Ok(true)) {
                return;
            }
        }
        self.stats.relayed.fetch_add(1, Ordering::Relaxed);
        m.msix.trigger(vector);
    }

    /// Brings the device's interrupt wiring in line with the guest's MSI-X programming.
    fn sync_msix(&mut self) {
        let Some(m) = &mut self.msix else { return };
        let control = self.config.msix.map_or(0, |l| {
            u16::from_le_bytes([
                self.config.shadow.bytes(l.offset + 2, 1)[0],
                self.config.shadow.bytes(l.offset + 3, 1)[0],
            ])
        });
        let enable = control & 0x8000 != 0;
        if enable != m.on {
            if enable {
                // vfio-pci takes one interrupt type at a time.
                if self.intx.is_some() {
                    let _ = self.backend.set_intx(None);
                }
            } else {
                if let Err(e) = self.backend.disable_msix() {
                    log::warn!("{}: cannot turn MSI-X off: {e}", self.name);
                }
                m.wired.fill(None);
                if let Some((t, r)) = &self.intx {
                    let fds = Some((t.as_raw_fd(), r.as_raw_fd()));
                    if let Err(e) = self.backend.set_intx(fds) {
                        log::warn!("{}: cannot turn INTx back on: {e}", self.name);
                    }
                }
            }
            m.on = enable;
        }
        if !m.on {
            return;
        }
        let want: Vec<RawFd> = (0..m.msix.vectors())
            .map(|v| {
                let direct = if m.msix.program(v) {
                    m.msix.irqfd(v)
                } else {
                    None
                };
                direct.unwrap_or_else(|| m.events[usize::from(v)].as_raw_fd())
            })
            .collect();
        // Turning MSI-X on sets every vector in one call: kernels before 6.5 allocate
        // exactly the vectors the first call names.
        if m.wired.iter().all(Option::is_none) {
            let all: Vec<Option<RawFd>> = want.iter().copied().map(Some).collect();
            match self.backend.set_msix(0, &all) {
                Ok(()) => m.wired = all,
                Err(e) => log::warn!("{}: cannot turn MSI-X on: {e}", self.name),
            }
            return;
        }
        for (v, &fd) in want.iter().enumerate() {
            if m.wired[v] != Some(fd) {
                match self.backend.set_msix(v as u32, &[Some(fd)]) {
                    Ok(()) => m.wired[v] = Some(fd),
                    Err(e) => log::warn!("{}: MSI-X vector {v}: {e}", self.name),
                }
            }
        }
    }

    fn bar(&self, index: u8) -> Option<usize> {
        self.bars.iter().position(|b| b.spec.index == index)
    }

    fn unmap_bar(&mut self, i: usize) {
        if let (Some(slot), Some(mem)) = (self.bars[i].slot.take(), &self.memory) {
            if let Err(e) = mem.unmap(slot) {
                log::warn!(
                    "{}: cannot unmap BAR {}: {e}",
                    self.name,
                    self.bars[i].spec.index
                );
            }
            self.stats.mapped.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn map_bar(&mut self, i: usize, gpa: u64) {
        let b = &self.bars[i];
        let (Some(mem), true) = (&self.memory, b.mappable) else {
            return;
        };
        let index = b.spec.index;
        let hva = match b.hva {
            Some(h) => Ok(h),
            None => self.backend.mmap(u32::from(index)),
        };
        let r = hva.and_then(|hva| {
            self.bars[i].hva = Some(hva);
            mem.map(gpa, self.bars[i].spec.region_size, hva)
        });
        match r {
            Ok(slot) => {
                self.bars[i].slot = Some(slot);
                self.stats.mapped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if !self.map_failed => {
                self.map_failed = true;
                log::warn!("{}: BAR {index} traps: cannot map it: {e}", self.name);
            }
            Err(_) => {}
        }
    }

    /// An access to BAR `bar` the VMM emulates (MSI-X) or hands to the device.
    fn bar_access(&mut self, bar: u8, offset: u64, read: Option<&mut [u8]>, write: Option<&[u8]>) {
        let len = read
            .as_ref()
            .map_or_else(|| write.map_or(0, <[u8]>::len), |d| d.len());
        if let (Some(l), Some(m)) = (self.config.msix, &mut self.msix) {
            if l.overlaps(bar, offset, len as u64) {
                let in_table = l.table.0 == bar && offset >= l.table.1;
                match (read, write) {
                    (Some(d), _) if in_table && offset < l.table.1 + l.table_size() => {
                        m.msix.read_table(offset - l.table.1, d)
                    }
                    (Some(d), _) => m.msix.read_pba(offset.saturating_sub(l.pba.1), d),
                    (None, Some(d)) if in_table && offset < l.table.1 + l.table_size() => {
                        m.msix.write_table(offset - l.table.1, d);
                        self.sync_msix();
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
        if let Some(l) = self.config.msix {
            if offset < l.offset + 4 && end > l.offset + 2 {
                let b = self.config.shadow.bytes(l.offset + 2, 2);
                let control = u16::from_le_bytes([b[0], b[1]]);
                if let Some(m) = &mut self.msix {
                    m.msix.set_control(control);
                }
                self.sync_msix();
            }
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
        if self.msix.as_ref().is_some_and(|m| m.on) {
            let _ = self.backend.disable_msix();
        }
        if self.intx.is_some() {
            let _ = self.backend.set_intx(None);
        }
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
    use crate::fake::FakeDevice;
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

    pub(crate) fn device(mappable: bool) -> (VfioPciDevice, crate::fake::FakeHandle) {
        let (fake, handle) = FakeDevice::new(mappable).unwrap();
        let mut backend: Box<dyn VfioBackend> = Box::new(fake);
        let probe = VfioPciDevice::probe(&mut *backend, false).unwrap();
        let n = probe.msix_vectors();
        let wiring = Wiring {
            bar_addresses: vec![0xc000_0000, 0xc001_0000, 0xc002_0000],
            msi: (0..n)
                .map(|_| Box::new(NoLine) as Box<dyn MsiLine>)
                .collect(),
            intx: None,
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
}
