//! ACPI power management registers of a hardware-reduced platform, on three I/O ports: the
//! FADT's sleep control and sleep status registers and its reset register.
//!
//! A guest powers off by writing `SLP_TYP | SLP_EN` to the sleep control register, with the
//! SLP_TYP it read from the DSDT's `_S5_` package ([`S5_SLEEP_TYPE`]); it reboots by writing
//! [`RESET_VALUE`] to the reset register. Both end the VM.

use std::sync::Arc;

use crate::{BusDevice, StopReason, VmControl};

/// Sleep control, sleep status, reset: one byte each.
pub const PORT_RANGE: u64 = 3;
pub const SLEEP_CONTROL: u64 = 0;
pub const SLEEP_STATUS: u64 = 1;
pub const RESET: u64 = 2;
/// The SLP_TYP value of S5 (soft off), as the DSDT's `_S5_` package gives it.
pub const S5_SLEEP_TYPE: u8 = 5;
/// What the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 1;
/// Sleep control register fields (ACPI 6.5, 4.8.3.7): SLP_TYP in bits 2-4, SLP_EN in bit 5.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
const SLP_EN: u8 = 1 << 5;

pub struct AcpiPm {
    vm: Arc<dyn VmControl>,
}

impl AcpiPm {
    pub fn new(vm: Arc<dyn VmControl>) -> Self {
        AcpiPm { vm }
    }
}

impl BusDevice for AcpiPm {
    fn name(&self) -> String {
        "acpi-pm".into()
    }

    /// Sleep status reads 0: the machine never sleeps, so WAK_STS is never set.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            SLEEP_CONTROL
                if value & SLP_EN != 0
                    && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLEEP_TYPE =>
            {
                self.vm.request_stop(StopReason::PowerOff)
            }
            RESET if value == RESET_VALUE => self.vm.request_stop(StopReason::Reset),
            // Other sleep states are not offered; clearing WAK_STS has nothing to clear.
            _ => log::debug!("acpi-pm: ignored write {value:#x} at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StopRecorder;

    #[test]
    fn only_s5_with_slp_en_powers_off_and_only_the_reset_value_resets() {
        let rec = Arc::new(StopRecorder::default());
        let mut pm = AcpiPm::new(rec.clone());
        // What Linux writes before sleeping (clear WAK_STS), S5 without SLP_EN, S1 with it.
        pm.write(SLEEP_STATUS, &[0x80]);
        pm.write(SLEEP_CONTROL, &[S5_SLEEP_TYPE << 2]);
        pm.write(SLEEP_CONTROL, &[(1 << 2) | SLP_EN]);
        pm.write(RESET, &[0]);
        assert!(rec.0.lock().unwrap().is_empty());
        let mut b = [0xffu8];
        pm.read(SLEEP_STATUS, &mut b);
        assert_eq!(b[0], 0);
        pm.write(SLEEP_CONTROL, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        pm.write(RESET, &[RESET_VALUE]);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![StopReason::PowerOff, StopReason::Reset]
        );
    }
}
