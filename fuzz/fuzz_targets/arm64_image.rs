//! The arm64 `Image` loader on hostile files: header parsing, placement for any RAM size the
//! VMM accepts and any initrd size, and the copy into guest memory. Checks it answers with
//! errors, not panics, and that an accepted placement is one the kernel can boot from: kernel
//! at a 2 MiB-aligned base plus its text_offset, then the initrd, then the device tree, all
//! inside RAM and in that order.
#![no_main]

use arch::aarch64::image::{self, Header, BASE_ALIGN, FDT_MAX_SIZE};
use arch::aarch64::layout::RAM_START;
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The smallest RAM the arm64 VMM accepts (vmm::aarch64::MIN_RAM).
const MIN_RAM: u64 = 32 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap());
    let ram = MIN_RAM + ((word(0) % (1 << 40)) & !0xfff);
    let initrd = (word(1) & 1 == 1).then(|| word(1) >> 1);
    let file = &data[16..];
    let Ok(h) = Header::parse(file) else {
        return;
    };
    assert!(h.image_size >= file.len() as u64);
    if let Ok(p) = image::plan(&h, ram, initrd) {
        let ram_end = RAM_START + ram;
        assert_eq!(
            p.kernel - h.text_offset,
            RAM_START.next_multiple_of(BASE_ALIGN)
        );
        assert_eq!(p.kernel_end, p.kernel + h.image_size);
        assert!(p.kernel_end <= p.fdt && p.fdt % 8 == 0);
        assert!(p.fdt + FDT_MAX_SIZE.min(ram) <= ram_end);
        match (initrd, p.initrd) {
            (Some(size), Some((addr, placed))) => {
                assert_eq!(size, placed);
                assert!(addr >= p.kernel_end && addr + size <= p.fdt && addr % 4096 == 0);
            }
            (None, None) => {}
            other => panic!("initrd asked/placed: {other:?}"),
        }
    }
    // The copy, into the smallest RAM (a hostile image must not reach past it).
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_START), MIN_RAM as usize)]).unwrap();
    let small_initrd = [0x5a; 64];
    if let Ok(p) = image::load(&mem, file, Some(&small_initrd), MIN_RAM) {
        assert!(p.kernel_end <= RAM_START + MIN_RAM);
    }
});
