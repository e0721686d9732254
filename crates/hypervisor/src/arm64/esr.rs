//! Decoding an exception syndrome (ESR_EL2) for a data abort into an MMIO access, and
//! completing a load into the destination register (Arm ARM, D17.2.40 "ESR_EL2", ISS encoding
//! for an exception from a Data Abort).
//!
//! Only aborts with a valid instruction syndrome (ISV = 1) carry size, direction and register;
//! the rest (load/store pair, writeback forms, SIMD registers) would need the instruction to
//! be decoded and are refused with a clear error, as other VMMs do.

/// Exception class of a data abort taken from a lower exception level.
pub const EC_DATA_ABORT_LOWER: u32 = 0x24;

const ISV: u64 = 1 << 24;
const SSE: u64 = 1 << 21;
const SF: u64 = 1 << 15;
const CM: u64 = 1 << 8;
const S1PTW: u64 = 1 << 7;
const WNR: u64 = 1 << 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EsrError {
    #[error("exception class {0:#x} is not a data abort from the guest")]
    NotDataAbort(u32),
    #[error("data abort without a valid instruction syndrome (ISV = 0): the instruction (load/store pair, writeback, SIMD) cannot be emulated")]
    NoSyndrome,
    #[error("data abort on a cache maintenance instruction or a stage-1 page-table walk")]
    Unsupported,
}

/// An MMIO access as the syndrome describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAccess {
    /// 1, 2, 4 or 8 bytes.
    pub size: u8,
    pub write: bool,
    /// Source or destination register, 0..=30; 31 is XZR (reads 0, writes are discarded).
    pub reg: u8,
    /// A load that sign-extends (LDRSB, LDRSH, LDRSW).
    pub sign_extend: bool,
    /// The register is 64-bit (Xn) rather than 32-bit (Wn).
    pub reg64: bool,
}

pub const XZR: u8 = 31;

/// Decodes ESR_EL2 for a data abort.
pub fn decode(esr: u64) -> Result<MmioAccess, EsrError> {
    let ec = ((esr >> 26) & 0x3f) as u32;
    if ec != EC_DATA_ABORT_LOWER {
        return Err(EsrError::NotDataAbort(ec));
    }
    if esr & ISV == 0 {
        return Err(EsrError::NoSyndrome);
    }
    if esr & (CM | S1PTW) != 0 {
        return Err(EsrError::Unsupported);
    }
    Ok(MmioAccess {
        size: 1 << ((esr >> 22) & 3),
        write: esr & WNR != 0,
        reg: ((esr >> 16) & 0x1f) as u8,
        sign_extend: esr & SSE != 0,
        reg64: esr & SF != 0,
    })
}

impl MmioAccess {
    /// The value a load puts in its register, from the `size` bytes the device returned.
    pub fn load_value(&self, raw: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        let mut v = if bits == 64 {
            raw
        } else {
            raw & ((1 << bits) - 1)
        };
        if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            v = (((v << shift) as i64) >> shift) as u64;
        }
        if !self.reg64 {
            v &= 0xffff_ffff;
        }
        v
    }

    /// The bytes a store writes, from the value of its register (XZR stores zero).
    pub fn store_value(&self, reg_value: u64) -> u64 {
        if self.reg == XZR {
            return 0;
        }
        let bits = u32::from(self.size) * 8;
        if bits == 64 {
            reg_value
        } else {
            reg_value & ((1 << bits) - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ESR_EL2 for a data abort, assembled from the ISS fields of the Arm ARM (D17.2.40):
    /// EC 0x24, IL 1, ISV 1, SAS, SSE, SRT, SF, WnR; DFSC 0x10 (synchronous external abort
    /// is what an unmapped IPA looks like to the host, the value does not matter here).
    fn esr(sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> u64 {
        (0x24 << 26)
            | (1 << 25)
            | ISV
            | (sas << 22)
            | (u64::from(sse) << 21)
            | (srt << 16)
            | (u64::from(sf) << 15)
            | (u64::from(wnr) << 6)
            | 0x10
    }

    fn access(size: u8, write: bool, reg: u8, sign_extend: bool, reg64: bool) -> MmioAccess {
        MmioAccess {
            size,
            write,
            reg,
            sign_extend,
            reg64,
        }
    }

    #[test]
    fn every_load_and_store_width() {
        // Instruction -> the syndrome the CPU reports for it.
        let cases = [
            (
                "strb w1, [x0]",
                esr(0, false, 1, false, true),
                access(1, true, 1, false, false),
            ),
            (
                "strh w2, [x0]",
                esr(1, false, 2, false, true),
                access(2, true, 2, false, false),
            ),
            (
                "str w3, [x0]",
                esr(2, false, 3, false, true),
                access(4, true, 3, false, false),
            ),
            (
                "str x4, [x0]",
                esr(3, false, 4, true, true),
                access(8, true, 4, false, true),
            ),
            (
                "ldrb w5, [x0]",
                esr(0, false, 5, false, false),
                access(1, false, 5, false, false),
            ),
            (
                "ldrh w6, [x0]",
                esr(1, false, 6, false, false),
                access(2, false, 6, false, false),
            ),
            (
                "ldr w7, [x0]",
                esr(2, false, 7, false, false),
                access(4, false, 7, false, false),
            ),
            (
                "ldr x8, [x0]",
                esr(3, false, 8, true, false),
                access(8, false, 8, false, true),
            ),
            (
                "ldrsb w9, [x0]",
                esr(0, true, 9, false, false),
                access(1, false, 9, true, false),
            ),
            (
                "ldrsb x10, [x0]",
                esr(0, true, 10, true, false),
                access(1, false, 10, true, true),
            ),
            (
                "ldrsh w11, [x0]",
                esr(1, true, 11, false, false),
                access(2, false, 11, true, false),
            ),
            (
                "ldrsh x12, [x0]",
                esr(1, true, 12, true, false),
                access(2, false, 12, true, true),
            ),
            (
                "ldrsw x13, [x0]",
                esr(2, true, 13, true, false),
                access(4, false, 13, true, true),
            ),
            (
                "str wzr, [x0]",
                esr(2, false, 31, false, true),
                access(4, true, XZR, false, false),
            ),
        ];
        for (insn, syndrome, want) in cases {
            assert_eq!(decode(syndrome), Ok(want), "{insn}");
        }
    }

    #[test]
    fn loads_extend_like_the_cpu() {
        let ldrsb_w = decode(esr(0, true, 1, false, false)).unwrap();
        assert_eq!(ldrsb_w.load_value(0x80), 0xffff_ff80);
        let ldrsb_x = decode(esr(0, true, 1, true, false)).unwrap();
        assert_eq!(ldrsb_x.load_value(0x80), 0xffff_ffff_ffff_ff80);
        let ldrsh_x = decode(esr(1, true, 1, true, false)).unwrap();
        assert_eq!(ldrsh_x.load_value(0x7fff), 0x7fff);
        let ldrsw = decode(esr(2, true, 1, true, false)).unwrap();
        assert_eq!(
            ldrsw.load_value(0xdead_beef_8000_0000),
            0xffff_ffff_8000_0000
        );
        let ldrb = decode(esr(0, false, 1, false, false)).unwrap();
        assert_eq!(ldrb.load_value(0x1ff), 0xff);
        let ldr_x = decode(esr(3, false, 1, true, false)).unwrap();
        assert_eq!(ldr_x.load_value(u64::MAX), u64::MAX);
        let strh = decode(esr(1, false, 2, false, true)).unwrap();
        assert_eq!(strh.store_value(0x1234_5678), 0x5678);
        let str_xzr = decode(esr(3, false, 31, true, true)).unwrap();
        assert_eq!(str_xzr.store_value(0x1234), 0);
    }

    #[test]
    fn refuses_what_it_cannot_emulate() {
        // ldp x1, x2, [x0]: load pair, reported with ISV = 0.
        let ldp = esr(3, false, 1, true, false) & !ISV;
        assert_eq!(decode(ldp), Err(EsrError::NoSyndrome));
        // An instruction abort (EC 0x20) is not MMIO.
        assert_eq!(decode(0x20 << 26), Err(EsrError::NotDataAbort(0x20)));
        assert_eq!(
            decode(esr(2, false, 1, false, false) | S1PTW),
            Err(EsrError::Unsupported)
        );
        assert_eq!(
            decode(esr(2, false, 1, false, true) | CM),
            Err(EsrError::Unsupported)
        );
    }
}
