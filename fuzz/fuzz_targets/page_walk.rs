//! The guest page-table walker: any control registers, any page tables (the input is the
//! guest memory after a 48-byte header), any address, any access.
#![no_main]

use arch::x86_64::mmu::{page_fault_code, translate, Access, Mode, PagingRegs, PhysRead};
use libfuzzer_sys::fuzz_target;

struct Mem<'a>(&'a [u8]);

impl PhysRead for Mem<'_> {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let at = usize::try_from(gpa).ok()?;
        let b = self.0.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
    fn read_u32(&self, gpa: u64) -> Option<u32> {
        let at = usize::try_from(gpa).ok()?;
        let b = self.0.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 48 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap());
    let flags = word(5);
    let regs = PagingRegs {
        cr0: word(0),
        // Keep the tables inside the fuzzed memory most of the time.
        cr3: word(1) % 0x10000,
        cr4: word(2),
        efer: word(3),
        gb_pages: flags & 1 == 1,
    };
    let access = match (flags >> 1) % 3 {
        0 => Access::Read,
        1 => Access::Write,
        _ => Access::Execute,
    };
    let mode = match (flags >> 3) % 4 {
        0 => Mode::User,
        1 => Mode::Supervisor { ac: false },
        2 => Mode::Supervisor { ac: true },
        _ => Mode::Implicit,
    };
    if let Err(e) = translate(&Mem(&data[48..]), &regs, word(4), access, mode) {
        std::hint::black_box(page_fault_code(&e, &regs, access, mode));
    }
});
