//! The x86 kernel loader (ELF with or without a PVH note, bzImage) on hostile files, then the
//! boot structures built from what the file's header says (initrd placement, command-line
//! size, zero page). Checks it answers with errors, not panics; that a kernel it accepts ends
//! inside RAM (every write lands in the fuzzer's guest memory, which is all there is); and that
//! an initrd placed for it fits between the kernel and the limits the header and RAM set.
#![no_main]

use arch::x86_64::boot::{self, BootInfo};
use arch::x86_64::layout::HIMEM_START;
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Small, so that most hostile segment addresses fall outside it.
const RAM: u64 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    // The first 4 bytes size the initrd placed afterwards; the rest is the kernel file.
    if data.len() < 4 {
        return;
    }
    let initrd_size = u64::from(u32::from_le_bytes(data[..4].try_into().unwrap()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let Ok(kernel) = vmm::load_kernel_bytes(&mem, &data[4..], RAM) else {
        return;
    };
    assert!(
        kernel.kernel_end <= RAM,
        "kernel ends at {:#x}",
        kernel.kernel_end
    );

    let header = kernel.setup_header;
    if let Ok(addr) = boot::initrd_address(RAM, kernel.kernel_end, initrd_size, header.as_ref()) {
        assert!(addr >= kernel.kernel_end.max(HIMEM_START) && addr % 4096 == 0);
        assert!(addr + initrd_size <= RAM);
        if let Some(max) = header.map(|h| h.initrd_addr_max).filter(|&m| m != 0) {
            assert!(addr + initrd_size <= u64::from(max) + 1);
        }
    }
    let cmdline_max = header.map_or(2048, |h| h.cmdline_size as usize);
    let _ = boot::write_cmdline(&mem, "console=ttyS0", cmdline_max);
    let info = BootInfo {
        ram_size: RAM,
        cmdline_len: 13,
        initrd: None,
        setup_header: header.as_ref(),
        rsdp: None,
    };
    boot::write_zero_page(&mem, &info).unwrap();
});
