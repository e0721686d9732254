//! x86 message-signalled interrupts (Intel SDM vol. 3, 11.11): a device's write of `data` to
//! `address` in the 0xfeeX_XXXX window, decoded into what [`super::Irqchip`] delivers. A pure
//! parser: the guest writes both words into the device, so anything may arrive here.
//!
//! Address: bits 31:20 are 0xfee, 19:12 the destination ID, bit 3 the redirection hint (RH),
//! bit 2 the destination mode (DM, 1: logical). Data: bits 7:0 the vector, 10:8 the delivery
//! mode, 14 the level, 15 the trigger mode.

use std::fmt;

use hypervisor::MsiMessage;

use super::lapic::Destination;

const ADDRESS_WINDOW: u64 = 0xfee0_0000;
const ADDRESS_WINDOW_MASK: u64 = 0xffff_ffff_fff0_0000;
const ADDRESS_RH: u64 = 1 << 3;
const ADDRESS_DM_LOGICAL: u64 = 1 << 2;
const MODE_FIXED: u32 = 0;
const MODE_LOWEST_PRIORITY: u32 = 1;

/// A message the local APICs can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msi {
    pub vector: u8,
    pub dest: Destination,
    /// Only one of the APICs `dest` names gets it: lowest-priority delivery, or a redirection
    /// hint in logical mode (which lets the chipset pick one of the group, as KVM reads it).
    pub one_target: bool,
}

/// Why a message is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not a write into the local APICs' window (an x2APIC extended destination included).
    Address(u64),
    /// Vectors 0-15 are reserved; an APIC refuses them.
    Vector(u8),
    /// SMI, NMI, INIT, ExtINT or a reserved mode: not modelled (as for IPIs).
    DeliveryMode(u32),
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Address(a) => write!(f, "address {a:#x} is outside 0xfee00000-0xfeefffff"),
            Invalid::Vector(v) => write!(f, "reserved vector {v:#x}"),
            Invalid::DeliveryMode(m) => write!(f, "unsupported delivery mode {m}"),
        }
    }
}

/// Decodes `message`. The trigger mode is not looked at: a PCI device never deasserts an
/// MSI, so every message is delivered as an edge.
pub fn decode(message: MsiMessage) -> Result<Msi, Invalid> {
    let MsiMessage { address, data } = message;
    if address & ADDRESS_WINDOW_MASK != ADDRESS_WINDOW {
        return Err(Invalid::Address(address));
    }
    let vector = data as u8;
    if vector < 16 {
        return Err(Invalid::Vector(vector));
    }
    let mode = (data >> 8) & 7;
    if mode != MODE_FIXED && mode != MODE_LOWEST_PRIORITY {
        return Err(Invalid::DeliveryMode(mode));
    }
    let id = (address >> 12) as u8;
    let logical = address & ADDRESS_DM_LOGICAL != 0;
    Ok(Msi {
        vector,
        dest: if logical {
            Destination::Logical(id)
        } else {
            Destination::Physical(id)
        },
        one_target: mode == MODE_LOWEST_PRIORITY || (logical && address & ADDRESS_RH != 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(address: u64, data: u32) -> MsiMessage {
        MsiMessage { address, data }
    }

    #[test]
    fn physical_logical_and_lowest_priority() {
        assert_eq!(
            decode(m(0xfee0_3000, 0x41)),
            Ok(Msi {
                vector: 0x41,
                dest: Destination::Physical(3),
                one_target: false
            })
        );
        // Broadcast stays a destination the APICs match all of.
        assert_eq!(
            decode(m(0xfeef_f000, 0x22)).map(|d| d.dest),
            Ok(Destination::Physical(0xff))
        );
        // Logical, with and without the redirection hint; lowest priority in physical mode.
        let logical = decode(m(0xfee0_5004, 0x30)).unwrap();
        assert_eq!(
            (logical.dest, logical.one_target),
            (Destination::Logical(5), false)
        );
        assert!(decode(m(0xfee0_500c, 0x30)).unwrap().one_target);
        assert!(decode(m(0xfee0_1000, 0x130)).unwrap().one_target);
        // RH alone in physical mode changes nothing.
        assert!(!decode(m(0xfee0_1008, 0x30)).unwrap().one_target);
        // The trigger mode and level bits are ignored.
        assert_eq!(decode(m(0xfee0_0000, 0xc031)).unwrap().vector, 0x31);
    }

    #[test]
    fn bad_messages_are_refused() {
        assert_eq!(
            decode(m(0xfed0_0000, 0x41)),
            Err(Invalid::Address(0xfed0_0000))
        );
        assert_eq!(
            decode(m(0x1_fee0_0000, 0x41)),
            Err(Invalid::Address(0x1_fee0_0000))
        );
        assert_eq!(decode(m(0, 0)), Err(Invalid::Address(0)));
        assert_eq!(decode(m(0xfee0_0000, 0x0f)), Err(Invalid::Vector(0x0f)));
        for mode in [2, 3, 4, 5, 6, 7] {
            assert_eq!(
                decode(m(0xfee0_0000, mode << 8 | 0x41)),
                Err(Invalid::DeliveryMode(mode))
            );
        }
        let e = decode(m(0xfee0_0000, 0x441)).unwrap_err().to_string();
        assert!(e.contains("mode 4"), "{e}");
    }
}
