//! The MMIO instruction emulator: any instruction bytes in any mode, any register values and
//! segment bases; memory answers reads from a pattern and refuses some addresses, the way an
//! unmapped page would. Checks that a completed instruction moved RIP by its length (or left
//! it on a REP instruction cut short), that a refusal left RIP alone (and everything else but
//! a string instruction's finished iterations), and that every refusal names what the guest
//! is owed.
#![no_main]

use arch::x86_64::emulator::{decode, emulate, CpuState, EmuError, GuestBus};
use arch::x86_64::mmu::WalkError;
use hypervisor::x86_64::Regs;
use libfuzzer_sys::fuzz_target;

struct Bus {
    accesses: usize,
}

impl GuestBus for Bus {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> Result<(), EmuError> {
        self.accesses += 1;
        if linear % 7 == 3 {
            return Err(not_present(linear));
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (linear as u8).wrapping_add(i as u8);
        }
        Ok(())
    }
    fn write(&mut self, linear: u64, _data: &[u8]) -> Result<(), EmuError> {
        self.accesses += 1;
        if linear % 7 == 3 {
            return Err(not_present(linear));
        }
        Ok(())
    }
}

fn not_present(linear: u64) -> EmuError {
    EmuError::PageFault {
        linear,
        code: 0,
        cause: WalkError::NotPresent { level: 1, entry: 0 },
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 + 8 * 8 {
        return;
    }
    let (head, bytes) = data.split_at(8 * 8);
    let word = |i: usize| u64::from_le_bytes(head[i * 8..i * 8 + 8].try_into().unwrap());
    let bitness = [16, 32, 64, 64][(word(0) & 3) as usize];
    let regs = Regs {
        rax: word(1),
        rbx: word(2),
        rcx: word(3) & 0xffff, // keep REP counts small enough to finish quickly
        rdx: word(4),
        rsi: word(5),
        rdi: word(6),
        rip: word(7),
        rflags: word(0) >> 8,
        ..Default::default()
    };
    let mut cpu = CpuState {
        regs,
        bitness,
        seg_base: [word(1), 0, 0, word(2), word(4), word(5)],
        cpl: (word(0) >> 4) as u8 & 3,
    };
    let before = cpu;
    let mut bus = Bus { accesses: 0 };
    match emulate(bytes, &mut cpu, &mut bus) {
        Ok(()) => {
            let len = decode(bytes, &before).map(|i| i.len() as u64).unwrap_or(0);
            let mask = match bitness {
                64 => u64::MAX,
                32 => 0xffff_ffff,
                _ => 0xffff,
            };
            let advanced = cpu.regs.rip == before.regs.rip.wrapping_add(len) & mask;
            assert!(advanced || cpu.regs.rip == before.regs.rip);
        }
        Err(e) => {
            assert_eq!(cpu.regs.rip, before.regs.rip);
            let string = decode(bytes, &before).is_ok_and(|i| i.is_string_instruction());
            assert!(string || cpu == before);
            assert!(e.exception().is_some(), "{e}");
        }
    }
});
