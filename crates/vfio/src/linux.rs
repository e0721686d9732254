//! The real [`VfioBackend`]: a host PCI function opened through the kernel's VFIO, on
//! rust-vmm's `vfio-ioctls` (0.10: a type-1 IOMMU container, the function's group, the
//! device). Compiles and is wired in, but no machine this project is built on has an IOMMU or
//! VFIO: everything it does is proven only on such a host (docs/sriov.md).
//!
//! `vfio-ioctls` enables interrupts only as a whole set of `EventFd`s; the VMM rewires one
//! MSI or MSI-X vector at a time (masked vectors to its own event, unmasked ones to the
//! irqfd), so VFIO_DEVICE_SET_IRQS is issued here directly, as the kernel's uapi describes
//! it. A region with a sparse-mmap capability is mapped area by area.
//! The legacy container/group path is used: the crate's iommufd path (its `vfio_cdev`
//! feature) needs a newer KVM binding than this workspace's.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps, VfioRegionInfoCap};

use crate::backend::{IrqInfo, MsiKind, RegionInfo, VfioBackend, CONFIG_REGION};

// <linux/vfio.h>
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// `_IO(VFIO_TYPE, VFIO_BASE + 10)`: type ';', base 100.
const VFIO_DEVICE_SET_IRQS: u64 = (0x3b << 8) | 110;

/// The VFIO ioctls a running VM issues (for the seccomp filters): interrupt rewiring from a
/// vCPU (an MSI-X table or control write), and on stop, from the thread that drops the
/// function, the reset and the DMA unmapping.
pub fn running_ioctls() -> Vec<(u64, &'static str)> {
    const VFIO: u64 = 0x3b << 8;
    vec![
        (VFIO_DEVICE_SET_IRQS, "VFIO_DEVICE_SET_IRQS"),
        (VFIO | 111, "VFIO_DEVICE_RESET"),
        (VFIO | 114, "VFIO_IOMMU_UNMAP_DMA"),
    ]
}

fn irq_index(kind: MsiKind) -> u32 {
    match kind {
        MsiKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
        MsiKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
    }
}

fn err(op: &str) -> impl FnOnce(vfio_ioctls::VfioError) -> io::Error + '_ {
    move |e| io::Error::other(format!("{op}: {e}"))
}

/// A host function opened through VFIO.
pub struct HostDevice {
    container: Arc<VfioContainer>,
    device: VfioDevice,
    /// BAR mappings made by `mmap`: (region, offset, host address, size).
    maps: Vec<(u32, u64, u64, usize)>,
}

impl HostDevice {
    /// Opens the function whose sysfs directory is `sysfs` (bound to vfio-pci, its group
    /// viable: [`crate::sysfs::Host::check_passthrough`] says why not first).
    pub fn open(sysfs: &Path) -> io::Result<Self> {
        let container = Arc::new(VfioContainer::new(None).map_err(err("open /dev/vfio/vfio"))?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device = VfioDevice::new(sysfs, ops, false)
            .map_err(err("open the device through its IOMMU group"))?;
        Ok(HostDevice {
            container,
            device,
            maps: Vec::new(),
        })
    }

    /// VFIO_DEVICE_SET_IRQS with eventfds (or none: `fds` empty with DATA_NONE).
    fn set_irqs(&self, index: u32, flags: u32, start: u32, fds: &[RawFd]) -> io::Result<()> {
        // struct vfio_irq_set: argsz, flags, index, start, count, then the data.
        let mut buf: Vec<u32> = vec![0; 5 + fds.len()];
        buf[0] = (buf.len() * 4) as u32;
        buf[1] = flags;
        buf[2] = index;
        buf[3] = start;
        buf[4] = fds.len() as u32;
        for (i, &fd) in fds.iter().enumerate() {
            buf[5 + i] = fd as u32;
        }
        // SAFETY: `buf` is a complete vfio_irq_set of `argsz` bytes; the kernel only reads it.
        let rc = unsafe {
            libc::ioctl(
                self.device.as_raw_fd(),
                VFIO_DEVICE_SET_IRQS as _,
                buf.as_ptr(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn trigger_off(&self, index: u32) -> io::Result<()> {
        self.set_irqs(
            index,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            &[],
        )
    }
}

impl VfioBackend for HostDevice {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        let size = self.device.get_region_size(index);
        if size == 0 {
            return None;
        }
        let mmap = self.device.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP != 0;
        Some(RegionInfo {
            size,
            mmap: mmap && index != CONFIG_REGION,
        })
    }

    fn mmap_areas(&self, index: u32) -> Vec<(u64, u64)> {
        let Some(r) = self.region(index).filter(|r| r.mmap) else {
            return Vec::new();
        };
        // A sparse region maps only in the areas it lists (the MSI-X table's pages left out).
        let caps = self.device.get_region_caps(index);
        match caps.iter().find_map(|c| match c {
            VfioRegionInfoCap::SparseMmap(m) => Some(m),
            _ => None,
        }) {
            Some(m) => m.areas.iter().map(|a| (a.offset, a.size)).collect(),
            None => vec![(0, r.size)],
        }
    }

    fn irqs(&self) -> IrqInfo {
        let count = |i| self.device.get_irq_info(i).map_or(0, |irq| irq.count);
        IrqInfo {
            intx: count(VFIO_PCI_INTX_IRQ_INDEX) > 0,
            msi: count(VFIO_PCI_MSI_IRQ_INDEX),
            msix: count(VFIO_PCI_MSIX_IRQ_INDEX),
        }
    }

    fn read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.device.region_read(index, data, offset);
        Ok(())
    }

    fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.device.region_write(index, data, offset);
        Ok(())
    }

    fn mmap(&mut self, index: u32, offset: u64, size: u64) -> io::Result<u64> {
        if let Some(&(.., hva, _)) = self
            .maps
            .iter()
            .find(|m| (m.0, m.1, m.3 as u64) == (index, offset, size))
        {
            return Ok(hva);
        }
        let at = self
            .device
            .get_region_offset(index)
            .checked_add(offset)
            .and_then(|a| libc::off_t::try_from(a).ok())
            .ok_or(io::ErrorKind::InvalidInput)?;
        let len = usize::try_from(size).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: maps part of the region of the device descriptor VFIO describes (the kernel
        // refuses what may not be mapped); nothing existing is replaced (it picks the address).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                at,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.maps.push((index, offset, ptr as u64, len));
        Ok(ptr as u64)
    }

    fn set_vectors(&mut self, kind: MsiKind, first: u32, fds: &[Option<RawFd>]) -> io::Result<()> {
        let fds: Vec<RawFd> = fds.iter().map(|f| f.unwrap_or(-1)).collect();
        self.set_irqs(
            irq_index(kind),
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            first,
            &fds,
        )
    }

    fn disable_vectors(&mut self, kind: MsiKind) -> io::Result<()> {
        self.trigger_off(irq_index(kind))
    }

    fn set_intx(&mut self, fds: Option<(RawFd, RawFd)>) -> io::Result<()> {
        let Some((trigger, unmask)) = fds else {
            return self.trigger_off(VFIO_PCI_INTX_IRQ_INDEX);
        };
        let eventfd = VFIO_IRQ_SET_DATA_EVENTFD;
        self.set_irqs(
            VFIO_PCI_INTX_IRQ_INDEX,
            eventfd | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            &[trigger],
        )?;
        self.set_irqs(
            VFIO_PCI_INTX_IRQ_INDEX,
            eventfd | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            &[unmask],
        )
    }

    fn reset(&mut self) -> io::Result<()> {
        self.device.reset();
        Ok(())
    }

    fn dma_map(&mut self, iova: u64, size: u64, hva: u64) -> io::Result<()> {
        // SAFETY: the caller keeps [hva, hva + size) mapped until dma_unmap (the device holds
        // the guest memory's owner until then).
        unsafe {
            self.container
                .vfio_dma_map(iova, size as usize, hva as *mut u8)
                .map_err(err("VFIO_IOMMU_MAP_DMA"))
        }
    }

    fn dma_unmap(&mut self, iova: u64, size: u64) -> io::Result<()> {
        self.container
            .vfio_dma_unmap(iova, size as usize)
            .map_err(err("VFIO_IOMMU_UNMAP_DMA"))
    }
}

impl Drop for HostDevice {
    fn drop(&mut self) {
        for &(.., hva, size) in &self.maps {
            // SAFETY: a mapping `mmap` made; the guest's slot on it is gone (the function
            // unmaps its BARs first).
            unsafe { libc::munmap(hva as *mut libc::c_void, size) };
        }
    }
}
