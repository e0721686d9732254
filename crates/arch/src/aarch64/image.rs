//! Loading an arm64 Linux `Image` (Documentation/arm64/booting.rst): the 64-byte header, the
//! placement rules, and where the device tree and initrd go.
//!
//! The kernel is placed at a 2 MiB-aligned base (the start of RAM) plus its `text_offset`;
//! the device tree in the last 2 MiB of RAM (8-byte aligned, at most 2 MiB); the initrd just
//! below it, page-aligned, above the kernel.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::RAM_START;
use crate::MIB;

/// "ARM\x64", at offset 56.
pub const MAGIC: u32 = 0x644d_5241;
pub const HEADER_SIZE: usize = 64;
/// The kernel's base must be aligned to this.
pub const BASE_ALIGN: u64 = 2 * MIB;
/// The device tree's space at the end of RAM.
pub const FDT_MAX_SIZE: u64 = 2 * MIB;
/// Before Linux 3.17 `image_size` was 0 and `text_offset` had to be assumed.
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not an arm64 Image: {0}")]
    BadHeader(&'static str),
    #[error("kernel of {size:#x} bytes at {load:#x} does not fit in RAM ending at {ram_end:#x}")]
    TooBig { size: u64, load: u64, ram_end: u64 },
    #[error("text_offset {text_offset:#x} in the Image header puts the kernel past the end of the address space")]
    BadTextOffset { text_offset: u64 },
    #[error("{ram_size:#x} bytes of RAM from {start:#x} pass the end of the address space")]
    BadRamSize { ram_size: u64, start: u64 },
    #[error("initrd of {size} bytes does not fit between the kernel ({kernel_end:#x}) and the device tree ({fdt:#x})")]
    InitrdTooBig {
        size: u64,
        kernel_end: u64,
        fdt: u64,
    },
    #[error("cannot write {what} into guest memory at {addr:#x}")]
    Memory { what: &'static str, addr: u64 },
}

/// The fields of the header the loader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address, bss included.
    pub image_size: u64,
    pub flags: u64,
}

impl Header {
    pub fn parse(bytes: &[u8]) -> Result<Header, Error> {
        let h = bytes
            .get(..HEADER_SIZE)
            .ok_or(Error::BadHeader("shorter than its 64-byte header"))?;
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or([0; 8]));
        if u32::from_le_bytes([h[56], h[57], h[58], h[59]]) != MAGIC {
            return Err(Error::BadHeader("no ARM\\x64 magic at offset 56"));
        }
        let flags = u64_at(24);
        if flags & 1 != 0 {
            return Err(Error::BadHeader("big-endian kernel"));
        }
        let (text_offset, image_size) = match u64_at(16) {
            0 => (LEGACY_TEXT_OFFSET, bytes.len() as u64),
            size => (u64_at(8), size),
        };
        Ok(Header {
            text_offset,
            image_size: image_size.max(bytes.len() as u64),
            flags,
        })
    }
}

/// Where everything went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Load address, which is also the entry point (x0 = the device tree).
    pub kernel: u64,
    pub kernel_end: u64,
    pub fdt: u64,
    /// (address, size)
    pub initrd: Option<(u64, u64)>,
}

/// Plans the placement of a kernel with `header`, an initrd of `initrd_size` bytes and the
/// device tree, in `ram_size` bytes of RAM from [`RAM_START`].
pub fn plan(header: &Header, ram_size: u64, initrd_size: Option<u64>) -> Result<Placement, Error> {
    let base = RAM_START.next_multiple_of(BASE_ALIGN);
    // Both come from outside (the Image header, the configuration): no wrapping sums.
    let kernel = base
        .checked_add(header.text_offset)
        .ok_or(Error::BadTextOffset {
            text_offset: header.text_offset,
        })?;
    let ram_end = RAM_START.checked_add(ram_size).ok_or(Error::BadRamSize {
        ram_size,
        start: RAM_START,
    })?;
    let kernel_end = kernel
        .checked_add(header.image_size)
        .filter(|&e| e <= ram_end)
        .ok_or(Error::TooBig {
            size: header.image_size,
            load: kernel,
            ram_end,
        })?;
    let fdt = (ram_end - FDT_MAX_SIZE.min(ram_size)) & !(BASE_ALIGN - 1);
    if fdt < kernel_end {
        return Err(Error::TooBig {
            size: header.image_size.saturating_add(FDT_MAX_SIZE),
            load: kernel,
            ram_end,
        });
    }
    let initrd = match initrd_size {
        None => None,
        Some(size) => {
            let addr = fdt
                .checked_sub(size)
                .map(|a| a & !0xfff)
                .filter(|&a| a >= kernel_end)
                .ok_or(Error::InitrdTooBig {
                    size,
                    kernel_end,
                    fdt,
                })?;
            Some((addr, size))
        }
    };
    Ok(Placement {
        kernel,
        kernel_end,
        fdt,
        initrd,
    })
}

/// Writes the kernel (and initrd) where [`plan`] says.
pub fn load(
    mem: &GuestMemoryMmap,
    image: &[u8],
    initrd: Option<&[u8]>,
    ram_size: u64,
) -> Result<Placement, Error> {
    let header = Header::parse(image)?;
    let p = plan(&header, ram_size, initrd.map(|i| i.len() as u64))?;
    mem.write_slice(image, GuestAddress(p.kernel))
        .map_err(|_| Error::Memory {
            what: "kernel",
            addr: p.kernel,
        })?;
    if let (Some(bytes), Some((addr, _))) = (initrd, p.initrd) {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|_| Error::Memory {
                what: "initrd",
                addr,
            })?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(&MAGIC.to_le_bytes());
        h
    }

    #[test]
    fn parses_and_places() {
        let h = Header::parse(&header(0, 30 * MIB, 0xa)).unwrap();
        assert_eq!((h.text_offset, h.image_size), (0, 30 * MIB));
        let p = plan(&h, 256 * MIB, Some(MIB)).unwrap();
        assert_eq!(p.kernel, RAM_START);
        assert_eq!(p.kernel % BASE_ALIGN, 0);
        assert_eq!(p.fdt, RAM_START + 254 * MIB);
        let (initrd, _) = p.initrd.unwrap();
        assert!(initrd >= p.kernel_end && initrd + MIB <= p.fdt && initrd % 4096 == 0);
        // Pre-3.17 kernels: image_size 0 means text_offset 0x80000.
        let old = Header::parse(&header(0, 0, 0)).unwrap();
        assert_eq!(old.text_offset, 0x8_0000);
    }

    #[test]
    fn a_crafted_text_offset_or_ram_size_is_an_error_not_an_overflow() {
        let h = Header::parse(&header(u64::MAX - 0x1000, MIB, 0)).unwrap();
        assert_eq!(
            plan(&h, 64 * MIB, None),
            Err(Error::BadTextOffset {
                text_offset: u64::MAX - 0x1000
            })
        );
        let h = Header::parse(&header(0, MIB, 0)).unwrap();
        assert!(matches!(
            plan(&h, u64::MAX, None),
            Err(Error::BadRamSize { .. })
        ));
    }

    #[test]
    fn refuses_what_cannot_boot() {
        assert!(matches!(Header::parse(&[0; 10]), Err(Error::BadHeader(_))));
        assert!(matches!(
            Header::parse(&vec![0; 4096]),
            Err(Error::BadHeader(_))
        ));
        assert!(matches!(
            Header::parse(&header(0, MIB, 1)),
            Err(Error::BadHeader(_))
        ));
        let h = Header::parse(&header(0, 30 * MIB, 0)).unwrap();
        assert!(matches!(
            plan(&h, 16 * MIB, None),
            Err(Error::TooBig { .. })
        ));
        assert!(matches!(
            plan(&h, 64 * MIB, Some(40 * MIB)),
            Err(Error::InitrdTooBig { .. })
        ));
        let huge = Header {
            image_size: u64::MAX,
            ..h
        };
        assert!(matches!(
            plan(&huge, 64 * MIB, None),
            Err(Error::TooBig { .. })
        ));
    }

    /// Found by fuzz/fuzz_targets/arm64_image.rs: a text_offset near 2^64 overflowed the load
    /// address (a panic in debug builds, a wrapped address in release builds).
    #[test]
    fn fuzz_regression_text_offset_overflow() {
        let image: [u8; 80] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x60, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0x2d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x41, 0x52, 0x4d, 0x64, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0a,
        ];
        let h = Header::parse(&image).unwrap();
        assert_eq!(h.text_offset, u64::MAX);
        assert!(matches!(
            plan(&h, 64 * MIB, None),
            Err(Error::BadTextOffset { .. })
        ));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_START), 32 << 20)]).unwrap();
        assert!(load(&mem, &image, None, 32 << 20).is_err());
    }
}
