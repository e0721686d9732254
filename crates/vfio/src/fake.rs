//! A fake VFIO device standing in for the ioctls, for tests: what a host's vfio-pci would
//! hand the VMM for a small DMA-capable device.
//!
//! - Configuration space with a capability list that exercises the policy of
//!   [`crate::config`]: PM, MSI (4 vectors, 64-bit, in 16 bytes), MSI-X, PCI Express, an
//!   unknown capability and a vendor one; SR-IOV, AER and DSN extended capabilities. INTA.
//! - BAR 0 (4 KiB, trapped): a register file ([`reg`]).
//! - BAR 2 (64 KiB, 64-bit prefetchable): memory, mappable (its pages are shared anonymous
//!   memory the fake reads too), or trapped ([`FakeOptions::mappable`]).
//! - BAR 4 (4 KiB): the MSI-X table (8 vectors) and PBA, which the VMM emulates; or, with
//!   [`FakeOptions::msix_in_bar2`], no BAR 4 and the table and PBA in BAR 2's page at
//!   0x8000, which BAR 2's sparse-mmap areas leave out with [`FakeOptions::sparse`].
//! - Interrupts as VFIO offers them: INTx, MSI and MSI-X as [`FakeOptions`] says, one kind
//!   at a time as vfio-pci allows.
//! - A DMA engine: copies bytes of BAR 2 to a bus address through the mappings the VMM gave
//!   it ([`VfioBackend::dma_map`]), only with bus mastering on, then raises the vector
//!   [`reg::VECTOR`] names of MSI-X or MSI, or INTx, by signalling the eventfd the VMM set,
//!   as the kernel's vfio-pci does. INTx behaves as vfio-pci's: after each trigger the line
//!   stays masked until the unmask eventfd is signalled (the guest's EOI); an interrupt
//!   meanwhile waits, and goes at the unmask. A thread of the fake watches the unmask
//!   eventfd, as the kernel's virqfd does (so no VMM thread ever reads it).
//!
//! [`FakeHandle`] lets a test look inside: accesses per region, resets, DMA mappings.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use hypervisor::Event;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{IrqInfo, MsiKind, RegionInfo, VfioBackend, CONFIG_REGION};

/// The register file in BAR 0.
pub mod reg {
    /// Reads [`MAGIC`].
    pub const ID: u64 = 0x00;
    /// Reads back what was written.
    pub const SCRATCH: u64 = 0x04;
    /// DMA: source offset in BAR 2, length, destination bus address (low, high).
    pub const DMA_SRC: u64 = 0x08;
    pub const DMA_LEN: u64 = 0x0c;
    pub const DMA_DST_LO: u64 = 0x10;
    pub const DMA_DST_HI: u64 = 0x14;
    /// Writing 1 runs the DMA.
    pub const DOORBELL: u64 = 0x18;
    /// DMAs completed.
    pub const DONE: u64 = 0x1c;
    /// The last DMA's error: [`ERR_BUS_MASTER`], [`ERR_UNMAPPED`], [`ERR_SOURCE`].
    pub const ERROR: u64 = 0x20;
    /// The MSI or MSI-X vector a completion raises.
    pub const VECTOR: u64 = 0x24;
    pub const MAGIC: u32 = 0x7e57_f00d;
    pub const ERR_BUS_MASTER: u32 = 1;
    pub const ERR_UNMAPPED: u32 = 2;
    pub const ERR_SOURCE: u32 = 3;
}

pub const VENDOR: u16 = 0x1b36;
pub const DEVICE: u16 = 0x0100;
pub const BAR2_SIZE: usize = 0x10000;
const MSIX_VECTORS: u32 = 8;
const MSI_VECTORS: u32 = 4;
/// With [`FakeOptions::msix_in_bar2`]: the table and the PBA in BAR 2.
pub const BAR2_MSIX_TABLE: u64 = 0x8000;
pub const BAR2_MSIX_PBA: u64 = 0x8800;

/// What the fake offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeOptions {
    /// BAR 2 may be mapped (else every access traps).
    pub mappable: bool,
    /// Whether VFIO offers MSI (4 vectors) and MSI-X (8 vectors).
    pub msi: bool,
    pub msix: bool,
    /// The MSI-X table and PBA at [`BAR2_MSIX_TABLE`] and [`BAR2_MSIX_PBA`], no BAR 4.
    pub msix_in_bar2: bool,
    /// BAR 2 maps only in the areas of a sparse-mmap capability: all but the page of the
    /// table (as the kernel's vfio-pci reports it); else, mappable, it maps whole.
    pub sparse: bool,
    /// A thread of the fake's own unmasks INTx when the VMM signals the unmask eventfd, as
    /// vfio-pci's virqfd does. The fuzz target goes without (a thread per input is most of
    /// its time, and the unmask would race its checks).
    pub unmask_watcher: bool,
}

impl Default for FakeOptions {
    /// What the fake always offered: BAR 2 mapped, MSI-X in BAR 4, no MSI.
    fn default() -> Self {
        FakeOptions {
            mappable: true,
            msi: false,
            msix: true,
            msix_in_bar2: false,
            sparse: false,
            unmask_watcher: true,
        }
    }
}

/// The fake's configuration space (also what config.rs's tests virtualise).
pub fn fake_config() -> Vec<u8> {
    config_for(&FakeOptions::default())
}

fn config_for(o: &FakeOptions) -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    let put = |c: &mut Vec<u8>, at: usize, b: &[u8]| c[at..at + b.len()].copy_from_slice(b);
    put(&mut c, 0x00, &VENDOR.to_le_bytes());
    put(&mut c, 0x02, &DEVICE.to_le_bytes());
    put(&mut c, 0x06, &0x0210u16.to_le_bytes()); // capabilities, DEVSEL medium
    put(&mut c, 0x08, &0xff00_0002u32.to_le_bytes()); // revision 2, class ff0000
    c[0x0e] = 0x80; // multi-function
    put(&mut c, 0x10, &0u32.to_le_bytes()); // BAR0: memory 32
    put(&mut c, 0x18, &0x0cu32.to_le_bytes()); // BAR2: memory 64, prefetchable
    put(&mut c, 0x20, &0u32.to_le_bytes()); // BAR4: memory 32
    put(&mut c, 0x2c, &0x0001_1b36u32.to_le_bytes());
    c[0x34] = 0x40;
    c[0x3d] = 1;
    put(
        &mut c,
        0x40,
        &[0x01, 0x50, 0x03, 0x00, 0x08, 0x00, 0x00, 0x00],
    ); // PM
    put(&mut c, 0x50, &[0x05, 0x60, 0x84, 0x00]); // MSI, 64-bit, 4 vectors capable
    put(&mut c, 0x60, &[0x11, 0x70]); // MSI-X
    put(&mut c, 0x62, &(MSIX_VECTORS as u16 - 1).to_le_bytes());
    if o.msix_in_bar2 {
        put(&mut c, 0x64, &(BAR2_MSIX_TABLE as u32 | 2).to_le_bytes());
        put(&mut c, 0x68, &(BAR2_MSIX_PBA as u32 | 2).to_le_bytes());
    } else {
        put(&mut c, 0x64, &4u32.to_le_bytes()); // table: BAR4 + 0
        put(&mut c, 0x68, &0x804u32.to_le_bytes()); // PBA: BAR4 + 0x800
    }
    put(&mut c, 0x70, &[0x10, 0xb0, 0x02, 0x00]); // PCI Express v2, endpoint
    put(&mut c, 0x74, &0x0000_8000u32.to_le_bytes()); // devcap: FLR
    put(&mut c, 0xb0, &[0x0d, 0xc0, 0, 0]); // bridge subsystem ID: not for an endpoint
    put(
        &mut c,
        0xc0,
        &[0x09, 0x00, 0x08, 0x00, b'V', b'I', b'B', b'E'],
    ); // vendor
    put(&mut c, 0x100, &(0x140u32 << 20 | 0x1_0010).to_le_bytes()); // SR-IOV
    put(&mut c, 0x140, &(0x190u32 << 20 | 0x2_0001).to_le_bytes()); // AER v2
    put(&mut c, 0x190, &0x1_0003u32.to_le_bytes()); // DSN
    put(&mut c, 0x194, &0x0123_4567_89ab_cdefu64.to_le_bytes());
    c
}

/// Anonymous shared memory: BAR 2's pages.
struct Pages {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the pages are plain memory, accessed with volatile copies under the state's lock
// (and by the guest, as a device's memory is).
unsafe impl Send for Pages {}

impl Pages {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Pages {
            ptr: ptr.cast(),
            len,
        })
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: inside the mapping (callers check); volatile because the guest writes it.
            *b = unsafe { self.ptr.add(offset + i).read_volatile() };
        }
    }

    fn write(&self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as in `read`.
            unsafe { self.ptr.add(offset + i).write_volatile(b) };
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// What the fake saw and holds.
#[derive(Default)]
pub struct Stats {
    /// Accesses that reached the fake, per region index (0-7).
    pub reads: [u64; 8],
    pub writes: [u64; 8],
    pub resets: u64,
    /// (bus address, size, host address) of each DMA mapping.
    pub dma: Vec<(u64, u64, u64)>,
    /// MSI-X vectors' eventfds, while MSI-X is on.
    pub msix: Option<Vec<Option<RawFd>>>,
    /// MSI vectors' eventfds, while MSI is on (as many as were enabled).
    pub msi: Option<Vec<Option<RawFd>>>,
    /// INTx (trigger, unmask) eventfds.
    pub intx: Option<(RawFd, RawFd)>,
    /// INTx: the line is masked (triggered, not yet unmasked), an interrupt waits, and how
    /// many times the unmask eventfd unmasked it.
    pub intx_masked: bool,
    pub intx_waiting: bool,
    pub unmasks: u64,
    /// Every interrupt signalled, by kind: (INTx, MSI, MSI-X).
    pub raised: (u64, u64, u64),
    /// (region, offset, size) of each `mmap`.
    pub mmaps: Vec<(u32, u64, u64)>,
}

struct State {
    options: FakeOptions,
    config: Vec<u8>,
    regs: [u32; 10],
    bar2: Pages,
    stats: Stats,
    /// The device is gone: the unmask watcher ends.
    stopped: bool,
}

/// The fake device (a [`VfioBackend`]).
pub struct FakeDevice {
    state: Arc<Mutex<State>>,
    options: FakeOptions,
    /// The unmask watcher: told of a new INTx wiring, or to stop.
    watcher: Option<(Arc<Event>, std::thread::JoinHandle<()>)>,
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        if let Some((wake, thread)) = self.watcher.take() {
            lock(&self.state).stopped = true;
            let _ = wake.signal();
            let _ = thread.join();
        }
    }
}

/// What vfio-pci's virqfd does with the unmask eventfd: waits on it, and on a signal
/// unmasks INTx, sending an interrupt that waited.
fn watch_unmask(state: Arc<Mutex<State>>, wake: Arc<Event>) {
    loop {
        let unmask = {
            let s = lock(&state);
            if s.stopped {
                return;
            }
            s.stats.intx.map(|(_, unmask)| unmask)
        };
        let mut fds = vec![libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.extend(unmask.map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: polls descriptors of a live array of `fds.len()` entries.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        let _ = wake.drain();
        let mut s = lock(&state);
        if unmask.is_some() && s.stats.intx.map(|(_, u)| u) == unmask {
            s.poll_unmask();
        }
    }
}

/// A test's view into a [`FakeDevice`] it gave away.
#[derive(Clone)]
pub struct FakeHandle(Arc<Mutex<State>>);

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeHandle {
    /// Runs `f` on the fake's counters and wiring.
    pub fn stats<T>(&self, f: impl FnOnce(&Stats) -> T) -> T {
        f(&lock(&self.0).stats)
    }

    /// Bytes of BAR 2 (the device's memory).
    pub fn bar2(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        lock(&self.0).bar2.read(offset, &mut out);
        out
    }
}

impl FakeDevice {
    /// A fake whose BAR 2 may be mapped into the guest (`mappable`) or must trap, with
    /// MSI-X in BAR 4 and no MSI.
    pub fn new(mappable: bool) -> io::Result<(Self, FakeHandle)> {
        Self::with(FakeOptions {
            mappable,
            ..FakeOptions::default()
        })
    }

    pub fn with(options: FakeOptions) -> io::Result<(Self, FakeHandle)> {
        let state = Arc::new(Mutex::new(State {
            options,
            config: config_for(&options),
            regs: [0; 10],
            bar2: Pages::new(BAR2_SIZE)?,
            stats: Stats::default(),
            stopped: false,
        }));
        let handle = FakeHandle(state.clone());
        let watcher = if options.unmask_watcher {
            let wake = Arc::new(Event::new()?);
            let (s, w) = (state.clone(), wake.clone());
            let thread = std::thread::Builder::new()
                .name("fake-virqfd".into())
                .spawn(move || watch_unmask(s, w))?;
            Some((wake, thread))
        } else {
            None
        };
        let dev = FakeDevice {
            state,
            options,
            watcher,
        };
        Ok((dev, handle))
    }
}

/// Signals an eventfd the VMM handed over (and keeps open).
fn signal(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to a descriptor; no memory of ours changes.
    unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
}

/// Consumes an eventfd's count without blocking (the VMM's events are non-blocking);
/// whether it had one.
fn consume(fd: RawFd) -> bool {
    let mut count = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live 8-byte buffer.
    unsafe { libc::read(fd, count.as_mut_ptr().cast(), 8) == 8 }
}

impl State {
    fn reg_read(&self, offset: u64) -> u32 {
        match offset {
            reg::ID => reg::MAGIC,
            o if o % 4 == 0 && o <= reg::VECTOR => self.regs[o as usize / 4],
            _ => 0,
        }
    }

    fn reg_write(&mut self, offset: u64, v: u32) {
        match offset {
            reg::ID | reg::DONE | reg::ERROR => {}
            reg::DOORBELL if v == 1 => self.dma(),
            o if o % 4 == 0 && (o < reg::DOORBELL || o == reg::VECTOR) => {
                self.regs[o as usize / 4] = v
            }
            _ => {}
        }
    }

    /// What vfio-pci's unmask eventfd does: a signal there unmasks INTx, and an interrupt
    /// that waited goes now.
    fn poll_unmask(&mut self) {
        let Some((trigger, unmask)) = self.stats.intx else {
            return;
        };
        if self.stats.intx_masked && consume(unmask) {
            self.stats.intx_masked = false;
            self.stats.unmasks += 1;
            if std::mem::take(&mut self.stats.intx_waiting) {
                self.stats.intx_masked = true;
                self.stats.raised.0 += 1;
                signal(trigger);
            }
        }
    }

    /// Raises the completion interrupt on whatever is on.
    fn interrupt(&mut self) {
        let v = self.regs[reg::VECTOR as usize / 4] as usize;
        if let Some(fds) = &self.stats.msix {
            if let Some(&Some(fd)) = fds.get(v) {
                self.stats.raised.2 += 1;
                signal(fd);
            }
        } else if let Some(fds) = &self.stats.msi {
            if let Some(&Some(fd)) = fds.get(v) {
                self.stats.raised.1 += 1;
                signal(fd);
            }
        } else if let Some((trigger, _)) = self.stats.intx {
            if self.stats.intx_masked {
                self.stats.intx_waiting = true;
            } else {
                self.stats.intx_masked = true;
                self.stats.raised.0 += 1;
                signal(trigger);
            }
        }
    }

    /// Copies BAR 2 bytes to the bus address through the mappings, then interrupts.
    fn dma(&mut self) {
        let r = |o: u64| self.regs[o as usize / 4];
        let (src, len) = (r(reg::DMA_SRC) as usize, r(reg::DMA_LEN) as usize);
        let dst = u64::from(r(reg::DMA_DST_LO)) | u64::from(r(reg::DMA_DST_HI)) << 32;
        let error = if self.config[4] & 4 == 0 {
            reg::ERR_BUS_MASTER
        } else if src.checked_add(len).is_none_or(|e| e > BAR2_SIZE) {
            reg::ERR_SOURCE
        } else if let Some(&(iova, _, hva)) = self
            .stats
            .dma
            .iter()
            .find(|&&(iova, size, _)| dst >= iova && dst + len as u64 <= iova + size)
        {
            let mut bytes = vec![0; len];
            self.bar2.read(src, &mut bytes);
            let to = (hva + (dst - iova)) as *mut u8;
            // SAFETY: the VMM mapped [iova, iova + size) to host memory at hva that stays
            // mapped until it unmaps it, and the range was checked to lie inside: what an
            // IOMMU guarantees a real device.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), to, len) };
            0
        } else {
            reg::ERR_UNMAPPED
        };
        self.regs[reg::ERROR as usize / 4] = error;
        if error != 0 {
            return;
        }
        self.regs[reg::DONE as usize / 4] += 1;
        self.interrupt();
    }

    /// Whether some interrupt kind other than `kind` is on (vfio-pci refuses a second).
    fn other_on(&self, kind: Option<MsiKind>) -> bool {
        let s = &self.stats;
        (s.intx.is_some() && kind.is_some())
            || (s.msi.is_some() && kind != Some(MsiKind::Msi))
            || (s.msix.is_some() && kind != Some(MsiKind::Msix))
    }
}

impl VfioBackend for FakeDevice {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        let (size, mmap) = match index {
            0 => (0x1000, false),
            4 if !self.options.msix_in_bar2 => (0x1000, false),
            2 => (BAR2_SIZE as u64, self.options.mappable),
            CONFIG_REGION => (4096, false),
            _ => return None,
        };
        Some(RegionInfo { size, mmap })
    }

    fn mmap_areas(&self, index: u32) -> Vec<(u64, u64)> {
        match index {
            2 if self.options.mappable && self.options.sparse => {
                let table_page = BAR2_MSIX_TABLE;
                vec![
                    (0, table_page),
                    (table_page + 0x1000, BAR2_SIZE as u64 - table_page - 0x1000),
                ]
            }
            2 if self.options.mappable => vec![(0, BAR2_SIZE as u64)],
            _ => Vec::new(),
        }
    }

    fn irqs(&self) -> IrqInfo {
        IrqInfo {
            intx: true,
            msi: if self.options.msi { MSI_VECTORS } else { 0 },
            msix: if self.options.msix { MSIX_VECTORS } else { 0 },
        }
    }

    fn read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let mut s = lock(&self.state);
        if let Some(n) = s.stats.reads.get_mut(index as usize) {
            *n += 1;
        }
        data.fill(0xff);
        let end = offset as usize + data.len();
        match index {
            0 if data.len() == 4 => data.copy_from_slice(&s.reg_read(offset).to_le_bytes()),
            2 if end <= BAR2_SIZE => s.bar2.read(offset as usize, data),
            CONFIG_REGION if end <= 4096 => data.copy_from_slice(&s.config[offset as usize..end]),
            _ => {}
        }
        Ok(())
    }

    fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = lock(&self.state);
        if let Some(n) = s.stats.writes.get_mut(index as usize) {
            *n += 1;
        }
        let end = offset as usize + data.len();
        match index {
            0 if data.len() == 4 => {
                let v = u32::from_le_bytes(data.try_into().unwrap_or_default());
                s.reg_write(offset, v);
            }
            2 if end <= BAR2_SIZE => s.bar2.write(offset as usize, data),
            // Only the command register is kept (bus mastering gates the DMA engine).
            CONFIG_REGION if (4..6).contains(&offset) && end <= 6 => {
                s.config[offset as usize..end].copy_from_slice(data)
            }
            _ => {}
        }
        Ok(())
    }

    fn mmap(&mut self, index: u32, offset: u64, size: u64) -> io::Result<u64> {
        // As vfio-pci: only inside one of the areas it reported.
        let inside = self
            .mmap_areas(index)
            .iter()
            .any(|&(o, s)| offset >= o && offset.saturating_add(size) <= o + s);
        if !inside || size == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut s = lock(&self.state);
        s.stats.mmaps.push((index, offset, size));
        Ok(s.bar2.ptr as u64 + offset)
    }

    fn set_vectors(&mut self, kind: MsiKind, first: u32, fds: &[Option<RawFd>]) -> io::Result<()> {
        let mut s = lock(&self.state);
        if s.other_on(Some(kind)) {
            // As vfio-pci: one interrupt type at a time.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let (table, offered) = match kind {
            MsiKind::Msi => (&mut s.stats.msi, self.options.msi.then_some(MSI_VECTORS)),
            MsiKind::Msix => (&mut s.stats.msix, self.options.msix.then_some(MSIX_VECTORS)),
        };
        let Some(offered) = offered else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let table = match table {
            Some(t) => t,
            // Enabling allocates what the call names (MSI-X: all the fake has).
            None => {
                let n = match kind {
                    MsiKind::Msi => first as usize + fds.len(),
                    MsiKind::Msix => offered as usize,
                };
                if n > offered as usize || n == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                table.insert(vec![None; n])
            }
        };
        for (i, &fd) in fds.iter().enumerate() {
            match table.get_mut(first as usize + i) {
                Some(slot) => *slot = fd,
                None => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
        Ok(())
    }

    fn disable_vectors(&mut self, kind: MsiKind) -> io::Result<()> {
        let mut s = lock(&self.state);
        match kind {
            MsiKind::Msi => s.stats.msi = None,
            MsiKind::Msix => s.stats.msix = None,
        }
        Ok(())
    }

    fn set_intx(&mut self, fds: Option<(RawFd, RawFd)>) -> io::Result<()> {
        let mut s = lock(&self.state);
        if fds.is_some() && s.other_on(None) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        s.stats.intx = fds;
        s.stats.intx_masked = false;
        s.stats.intx_waiting = false;
        drop(s);
        if let Some((wake, _)) = &self.watcher {
            let _ = wake.signal();
        }
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.stats.resets += 1;
        s.regs = [0; 10];
        s.config = config_for(&s.options);
        Ok(())
    }

    fn dma_map(&mut self, iova: u64, size: u64, hva: u64) -> io::Result<()> {
        lock(&self.state).stats.dma.push((iova, size, hva));
        Ok(())
    }

    fn dma_unmap(&mut self, iova: u64, size: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        let before = s.stats.dma.len();
        s.stats.dma.retain(|&(i, sz, _)| (i, sz) != (iova, size));
        if s.stats.dma.len() == before {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(())
    }
}
