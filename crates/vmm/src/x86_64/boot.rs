//! Puts a kernel into guest memory and prepares what it expects at entry (x86_64): loads an
//! ELF (PVH entry if it has one, else the 64-bit entry) or a bzImage (64-bit boot protocol)
//! with `linux-loader`, places the initrd and command line, and writes the GDT, page tables,
//! MP table and zero page or PVH start info.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use arch::x86_64::boot::{self as xboot, BootInfo};
use arch::x86_64::layout::VirtioMmioSlot;
use arch::x86_64::regs::{self, BootProtocol};
use arch::x86_64::{acpi, layout, mptable, paging};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::config::KernelImage;
use crate::image_file::open;
use crate::{Error, Result, VmConfig};

/// How to enter the loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootPlan {
    pub protocol: BootProtocol,
    pub entry: u64,
    pub cr3: u64,
}

/// The Linux boot protocol's 64-bit entry is this far into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `xloadflags` bit: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1;
/// x86 `COMMAND_LINE_SIZE` when the kernel does not say.
const DEFAULT_CMDLINE_MAX: usize = 2048;

trait KernelFile: Read + ReadVolatile + Seek {}
impl<T: Read + ReadVolatile + Seek> KernelFile for T {}

enum Format {
    Elf,
    BzImage,
}

fn detect<F: KernelFile>(image: &mut F, what: &str) -> Result<Format> {
    let not_a_kernel = || Error::NotAKernel { what: what.into() };
    let mut head = [0u8; 0x206];
    image.rewind().map_err(|_| not_a_kernel())?;
    let n = read_up_to(image, &mut head);
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Format::Elf);
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(Format::BzImage);
    }
    Err(not_a_kernel())
}

fn read_up_to<F: KernelFile>(r: &mut F, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

fn load_kernel<F: KernelFile>(
    mem: &GuestMemoryMmap,
    image: &mut F,
    what: &str,
    memory: u64,
) -> Result<(KernelLoaderResult, Format)> {
    let format = detect(image, what)?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let result = match format {
        Format::Elf => Elf::load(mem, None, image, himem),
        Format::BzImage => BzImage::load(mem, None, image, himem),
    };
    let result = result.map_err(|e| {
        let too_big = matches!(
            e,
            loader::Error::Elf(loader::elf::Error::ReadKernelImage)
                | loader::Error::Bzimage(loader::bzimage::Error::ReadBzImageCompressedKernel)
        );
        if too_big {
            Error::KernelTooBig {
                what: what.into(),
                memory,
                detail: "a segment lies outside guest RAM".into(),
            }
        } else {
            Error::BadKernel {
                what: what.into(),
                detail: e.to_string(),
            }
        }
    })?;
    if result.kernel_end > memory.min(layout::RAM_LOW_END) {
        return Err(Error::KernelTooBig {
            what: what.into(),
            memory,
            detail: format!("it ends at {:#x}", result.kernel_end),
        });
    }
    Ok((result, format))
}

/// Loads an ELF or bzImage kernel held in `bytes` into `mem` (`memory` bytes of RAM), as
/// [`load`] does a kernel file. Public for the fuzzer, which feeds it hostile images; the VMM
/// itself goes through [`load`].
pub fn load_kernel_bytes(
    mem: &GuestMemoryMmap,
    bytes: &[u8],
    memory: u64,
) -> Result<KernelLoaderResult> {
    load_kernel(mem, &mut Cursor::new(bytes), "kernel image", memory).map(|(r, _)| r)
}

/// Loads the kernel, initrd and command line of `config` and writes the boot structures,
/// describing the virtio-mmio devices in `virtio` (in ACPI, or on the command line without it).
pub fn load(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    virtio: &[VirtioMmioSlot],
) -> Result<BootPlan> {
    let (result, format) = match &config.kernel {
        KernelImage::Path(path) => {
            let mut file = open(path, "kernel")?;
            load_kernel(mem, &mut file, &path.display().to_string(), config.memory)?
        }
        KernelImage::Bytes(bytes) => load_kernel(
            mem,
            &mut Cursor::new(*bytes),
            "built-in demo guest",
            config.memory,
        )?,
    };

    let header: Option<setup_header> = result.setup_header;
    let (protocol, entry) = match (format, result.pvh_boot_cap) {
        (Format::Elf, PvhBootCapability::PvhEntryPresent(addr)) => (BootProtocol::Pvh, addr.0),
        (Format::Elf, _) => (BootProtocol::Linux64, result.kernel_load.0),
        (Format::BzImage, _) => {
            let h = header.as_ref().ok_or_else(|| Error::BadKernel {
                what: "bzImage".into(),
                detail: "no setup header".into(),
            })?;
            if h.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::BadKernel {
                    what: "bzImage".into(),
                    detail: "it has no 64-bit entry point (xloadflags)".into(),
                });
            }
            (
                BootProtocol::Linux64,
                result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            )
        }
    };

    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(
            mem,
            path,
            config.memory,
            result.kernel_end,
            header.as_ref(),
        )?),
        None => None,
    };

    let cmdline_max = header
        .as_ref()
        .map(|h| h.cmdline_size as usize)
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_CMDLINE_MAX);
    // Without ACPI, kernels built with VIRTIO_MMIO_CMDLINE_DEVICES find the devices here.
    // (With ACPI they are in the DSDT; listing them twice would register them twice.)
    let mut cmdline = config.cmdline.clone();
    if !config.acpi {
        for slot in virtio {
            cmdline = format!("{cmdline} {}", slot.cmdline())
                .trim_start()
                .to_string();
        }
    }
    xboot::write_cmdline(mem, &cmdline, cmdline_max)?;

    arch_write(mem, &regs::gdt_bytes(), layout::BOOT_GDT_START)?;
    let cr3 = paging::write_identity_tables(mem)?;
    mptable::write(mem, config.cpus)?;
    let rsdp = if config.acpi {
        Some(acpi::write(mem, config.cpus, virtio)?)
    } else {
        None
    };
    let info = BootInfo {
        rsdp,
        ram_size: config.memory,
        cmdline_len: cmdline.len(),
        initrd,
        setup_header: header.as_ref(),
    };
    match protocol {
        BootProtocol::Linux64 => xboot::write_zero_page(mem, &info)?,
        BootProtocol::Pvh => xboot::write_pvh_start_info(mem, &info)?,
    }
    Ok(BootPlan {
        protocol,
        entry,
        cr3,
    })
}

fn arch_write(mem: &GuestMemoryMmap, bytes: &[u8], addr: u64) -> Result<()> {
    use vm_memory::Bytes;
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|_| arch::x86_64::Error::GuestMemory {
            what: "boot GDT",
            addr,
            len: bytes.len(),
        })?;
    Ok(())
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    memory: u64,
    kernel_end: u64,
    header: Option<&setup_header>,
) -> Result<(u64, u64)> {
    use vm_memory::Bytes;
    let mut file = open(path, "initrd")?;
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|s| file.rewind().map(|_| s))
        .map_err(|source| Error::ReadFile {
            what: "initrd",
            path: path.to_owned(),
            source,
        })?;
    let addr = xboot::initrd_address(memory, kernel_end, size, header)?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| Error::ReadFile {
            what: "initrd",
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((addr, size))
}
