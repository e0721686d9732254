//! A fake VFIO device standing in for the ioctls, for tests: what a host's vfio-pci would
//! hand the VMM for a small DMA-capable device.
//!
//! - Configuration space with a capability list that exercises the policy of
//!   [`crate::config`]: PM, MSI, MSI-X, PCI Express, an unknown capability and a vendor
//!   one; SR-IOV, AER and DSN extended capabilities. INTA.
//! - BAR 0 (4 KiB, trapped): a register file ([`reg`]).
//! - BAR 2 (64 KiB, 64-bit prefetchable): memory, mappable (its pages are shared anonymous
//!   memory the fake reads too), or trapped when made with `mappable = false`.
//! - BAR 4 (4 KiB): the MSI-X table (8 vectors) and PBA, which the VMM emulates.
//! - A DMA engine: copies bytes of BAR 2 to a bus address through the mappings the VMM gave
//!   it ([`VfioBackend::dma_map`]), only with bus mastering on, then raises MSI-X vector 0
//!   (or INTx) by signalling the eventfd the VMM set, as the kernel's vfio-pci does.
//!
//! [`FakeHandle`] lets a test look inside: accesses per region, resets, DMA mappings.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{IrqInfo, RegionInfo, VfioBackend, CONFIG_REGION};

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
    pub const MAGIC: u32 = 0x7e57_f00d;
    pub const ERR_BUS_MASTER: u32 = 1;
    pub const ERR_UNMAPPED: u32 = 2;
    pub const ERR_SOURCE: u32 = 3;
}

pub const VENDOR: u16 = 0x1b36;
pub const DEVICE: u16 = 0x0100;
pub const BAR2_SIZE: usize = 0x10000;
const MSIX_VECTORS: u32 = 8;

/// The fake's configuration space (also what config.rs's tests virtualise).
pub fn fake_config() -> Vec<u8> {
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
    put(&mut c, 0x50, &[0x05, 0x60, 0x80, 0x00]); // MSI, 64-bit
    put(&mut c, 0x60, &[0x11, 0x70]); // MSI-X
    put(&mut c, 0x62, &(MSIX_VECTORS as u16 - 1).to_le_bytes());
    put(&mut c, 0x64, &4u32.to_le_bytes()); // table: BAR4 + 0
    put(&mut c, 0x68, &0x804u32.to_le_bytes()); // PBA: BAR4 + 0x800
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
    /// INTx (trigger, unmask) eventfds.
    pub intx: Option<(RawFd, RawFd)>,
}

struct State {
    config: Vec<u8>,
    regs: [u32; 9],
    bar2: Pages,
    stats: Stats,
}

/// The fake device (a [`VfioBackend`]).
pub struct FakeDevice {
    state: Arc<Mutex<State>>,
    mappable: bool,
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
    /// A fake whose BAR 2 may be mapped into the guest (`mappable`) or must trap.
    pub fn new(mappable: bool) -> io::Result<(Self, FakeHandle)> {
        let state = Arc::new(Mutex::new(State {
            config: fake_config(),
            regs: [0; 9],
            bar2: Pages::new(BAR2_SIZE)?,
            stats: Stats::default(),
        }));
        let handle = FakeHandle(state.clone());
        Ok((FakeDevice { state, mappable }, handle))
    }
}

impl State {
    fn reg_read(&self, offset: u64) -> u32 {
        match offset {
            reg::ID => reg::MAGIC,
            o if o % 4 == 0 && o <= reg::ERROR => self.regs[o as usize / 4],
            _ => 0,
        }
    }

    fn reg_write(&mut self, offset: u64, v: u32) {
        match offset {
            reg::ID | reg::DONE | reg::ERROR => {}
            reg::DOORBELL if v == 1 => self.dma(),
            o if o % 4 == 0 && o < reg::DOORBELL => self.regs[o as usize / 4] = v,
            _ => {}
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
        let fd = match &self.stats.msix {
            Some(fds) => fds.first().copied().flatten(),
            None => self.stats.intx.map(|(trigger, _)| trigger),
        };
        if let Some(fd) = fd {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes to an eventfd the VMM handed over and keeps open.
            unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
        }
    }
}

impl VfioBackend for FakeDevice {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        let (size, mmap) = match index {
            0 | 4 => (0x1000, false),
            2 => (BAR2_SIZE as u64, self.mappable),
            CONFIG_REGION => (4096, false),
            _ => return None,
        };
        Some(RegionInfo { size, mmap })
    }

    fn irqs(&self) -> IrqInfo {
        IrqInfo {
            intx: true,
            msix: MSIX_VECTORS,
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

    fn mmap(&mut self, index: u32) -> io::Result<u64> {
        if index != 2 || !self.mappable {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        Ok(lock(&self.state).bar2.ptr as u64)
    }

    fn set_msix(&mut self, first: u32, fds: &[Option<RawFd>]) -> io::Result<()> {
        let mut s = lock(&self.state);
        if s.stats.intx.is_some() {
            // As vfio-pci: one interrupt type at a time.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let table = s
            .stats
            .msix
            .get_or_insert_with(|| vec![None; MSIX_VECTORS as usize]);
        for (i, &fd) in fds.iter().enumerate() {
            match table.get_mut(first as usize + i) {
                Some(slot) => *slot = fd,
                None => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
        Ok(())
    }

    fn disable_msix(&mut self) -> io::Result<()> {
        lock(&self.state).stats.msix = None;
        Ok(())
    }

    fn set_intx(&mut self, fds: Option<(RawFd, RawFd)>) -> io::Result<()> {
        let mut s = lock(&self.state);
        if fds.is_some() && s.stats.msix.is_some() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        s.stats.intx = fds;
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.stats.resets += 1;
        s.regs = [0; 9];
        s.config = fake_config();
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
