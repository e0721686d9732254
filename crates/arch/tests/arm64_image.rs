//! The arm64 loader on a real kernel: Debian's 6.1 arm64 `Image`, fetched and extracted by
//! `scripts/arm64-kernel.sh` (needs apt-get; without it the test says why it is skipped,
//! except under CI=true).

use std::path::Path;
use std::process::Command;

use arch::aarch64::image::{self, Header, BASE_ALIGN};
use arch::aarch64::layout::RAM_START;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[test]
fn debian_arm64_image_header_and_placement() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("build/arm64");
    let path = dir.join("Image");
    if !path.exists() {
        let ok = Command::new(root.join("scripts/arm64-kernel.sh"))
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI=true but the arm64 kernel could not be fetched"
            );
            eprintln!("SKIPPED: could not fetch Debian's arm64 kernel (scripts/arm64-kernel.sh)");
            return;
        }
    }
    let bytes = std::fs::read(&path).unwrap();
    let h = Header::parse(&bytes).unwrap();
    // Since Linux 3.17: text_offset 0, image_size covers the file and its bss, little-endian,
    // 4 KiB pages (flags bits 1-2 = 1), placeable anywhere (bit 3).
    assert_eq!(h.text_offset, 0);
    assert!(h.image_size >= bytes.len() as u64, "{h:?}");
    assert_eq!(h.flags & 1, 0, "little-endian");
    assert_eq!((h.flags >> 1) & 3, 1, "4 KiB pages");

    let ram = 512u64 << 20;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_START), ram as usize)]).unwrap();
    let initrd = vec![0x5au8; 1 << 20];
    let p = image::load(&mem, &bytes, Some(&initrd), ram).unwrap();
    assert_eq!(p.kernel, RAM_START);
    assert!(p.kernel.is_multiple_of(BASE_ALIGN));
    assert_eq!(p.kernel_end, p.kernel + h.image_size);
    assert!(
        p.fdt.is_multiple_of(BASE_ALIGN)
            && p.fdt >= p.kernel_end
            && p.fdt + (2 << 20) <= RAM_START + ram
    );
    let (ia, is) = p.initrd.unwrap();
    assert!(ia >= p.kernel_end && ia + is <= p.fdt);
    let mut head = [0u8; 64];
    mem.read_slice(&mut head, GuestAddress(p.kernel)).unwrap();
    assert_eq!(&head[..], &bytes[..64]);
    // The same kernel does not fit in 32 MiB.
    assert!(image::plan(&h, 32 << 20, None).is_err());
}
