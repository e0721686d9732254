//! Finishing, in the VMM, the few instructions a hypervisor's instruction emulator may fail on
//! while the guest still has to run them.
//!
//! Seen on this project's nested KVM (which emulates all guest code): Linux executes `int3` in
//! its self-test, `clac`/`stac` on every user-memory access and interrupt entry, and `fwait`
//! when saving FPU state, and KVM's emulator stops on each. Their effect is simple enough to complete exactly here; anything
//! else is left as the error it is. On hardware virtualization these never come up.

/// RFLAGS.AC, which `clac` clears and `stac` sets.
pub use super::regs::RFLAGS_AC;
/// #BP.
pub const VECTOR_BREAKPOINT: u8 = 3;

/// How to finish one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixup {
    pub mnemonic: &'static str,
    /// Bytes to advance RIP by.
    pub length: u8,
    pub rflags_clear: u64,
    pub rflags_set: u64,
    /// An exception to deliver after advancing (a trap: it reports the next RIP).
    pub exception: Option<u8>,
}

/// The fix-up for the instruction starting at `bytes`, if it is one this module knows.
pub fn for_instruction(bytes: &[u8]) -> Option<Fixup> {
    let f = |mnemonic, length, rflags_clear, rflags_set, exception| Fixup {
        mnemonic,
        length,
        rflags_clear,
        rflags_set,
        exception,
    };
    match bytes {
        [0xcc, ..] => Some(f("int3", 1, 0, 0, Some(VECTOR_BREAKPOINT))),
        // FWAIT raises #MF only for a pending unmasked x87 exception; guests that reach it
        // with one pending (none of those seen) would miss that #MF.
        [0x9b, ..] => Some(f("fwait", 1, 0, 0, None)),
        [0x0f, 0x01, 0xca, ..] => Some(f("clac", 3, RFLAGS_AC, 0, None)),
        [0x0f, 0x01, 0xcb, ..] => Some(f("stac", 3, 0, RFLAGS_AC, None)),
        _ => None,
    }
}

impl Fixup {
    /// The new RIP and RFLAGS.
    pub fn apply(&self, rip: u64, rflags: u64) -> (u64, u64) {
        (
            rip.wrapping_add(u64::from(self.length)),
            (rflags & !self.rflags_clear) | self.rflags_set,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instructions_only() {
        let int3 = for_instruction(&[0xcc, 0x90]).unwrap();
        assert_eq!((int3.length, int3.exception), (1, Some(3)));
        assert_eq!(int3.apply(0x1000, 0x2), (0x1001, 0x2));
        let clac = for_instruction(&[0x0f, 0x01, 0xca]).unwrap();
        assert_eq!(clac.apply(0x1000, 0x2 | RFLAGS_AC), (0x1003, 0x2));
        let stac = for_instruction(&[0x0f, 0x01, 0xcb, 0xff]).unwrap();
        assert_eq!(stac.apply(0x1000, 0x2), (0x1003, 0x2 | RFLAGS_AC));
        assert_eq!(for_instruction(&[0x9b, 0x65]).unwrap().apply(7, 2), (8, 2));
        assert_eq!(for_instruction(&[0x0f, 0x01]), None);
        assert_eq!(for_instruction(&[0xf3, 0x0f, 0xb8, 0xc0]), None); // popcnt: not ours
        assert_eq!(for_instruction(&[]), None);
    }
}
