//! Just enough of the i8042 keyboard controller (ports 0x60 and 0x64) for a guest to probe it
//! and to reset the machine by pulsing the CPU reset line (command 0xfe), which is how Linux
//! reboots without ACPI.

use std::sync::Arc;

use crate::{BusDevice, StopReason, VmControl};

pub const I8042_DATA_PORT: u64 = 0x60;
/// The data port's offset, and the command/status register's (port 0x64).
pub const DATA: u64 = 0;
pub const COMMAND: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_COMMAND: u8 = 0x08;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_INTERFACE_TEST: u8 = 0xab;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_PULSE_RESET: u8 = 0xfe;
const SELF_TEST_OK: u8 = 0x55;

pub struct I8042 {
    vm: Arc<dyn VmControl>,
    status: u8,
    /// Controller configuration byte.
    ctr: u8,
    output: Option<u8>,
    /// The command awaiting a data byte on port 0x60.
    pending: Option<u8>,
}

impl I8042 {
    pub fn new(vm: Arc<dyn VmControl>) -> Self {
        I8042 {
            vm,
            status: STATUS_SYSTEM_FLAG,
            ctr: 0x30, // both ports' clocks disabled, no interrupts
            output: None,
            pending: None,
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.output = Some(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.pending = Some(cmd),
            CMD_SELF_TEST => self.output = Some(SELF_TEST_OK),
            CMD_INTERFACE_TEST => self.output = Some(0),
            CMD_READ_OUTPUT_PORT => self.output = Some(0x01), // reset line not asserted
            CMD_PULSE_RESET => self.vm.request_stop(StopReason::Reset),
            _ => {}
        }
    }
}

/// What a snapshot keeps of the controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    pub status: u8,
    pub ctr: u8,
    pub output: Option<u8>,
    pub pending: Option<u8>,
}

impl I8042 {
    pub fn state(&self) -> I8042State {
        I8042State {
            status: self.status,
            ctr: self.ctr,
            output: self.output,
            pending: self.pending,
        }
    }

    pub fn set_state(&mut self, s: &I8042State) {
        self.status = s.status;
        self.ctr = s.ctr;
        self.output = s.output;
        self.pending = s.pending;
    }
}

impl BusDevice for I8042 {
    fn name(&self) -> String {
        "i8042".into()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            DATA => self.output.take().unwrap_or(0),
            COMMAND => {
                self.status
                    | if self.output.is_some() {
                        STATUS_OUTPUT_FULL
                    } else {
                        0
                    }
            }
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            COMMAND => self.command(value),
            DATA => {
                self.status &= !STATUS_COMMAND;
                match self.pending.take() {
                    Some(CMD_WRITE_CTR) => self.ctr = value,
                    // Bit 0 of the output port is the reset line, active low.
                    Some(CMD_WRITE_OUTPUT_PORT) if value & 1 == 0 => {
                        self.vm.request_stop(StopReason::Reset)
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StopRecorder;

    #[test]
    fn self_test_config_and_reset() {
        let rec = Arc::new(StopRecorder::default());
        let mut kbd = I8042::new(rec.clone());
        let mut b = [0u8];
        kbd.write(4, &[CMD_SELF_TEST]);
        kbd.read(4, &mut b);
        assert_eq!(b[0] & STATUS_OUTPUT_FULL, 1);
        kbd.read(0, &mut b);
        assert_eq!(b[0], SELF_TEST_OK);
        kbd.write(4, &[CMD_WRITE_CTR]);
        kbd.write(0, &[0x47]);
        kbd.write(4, &[CMD_READ_CTR]);
        kbd.read(0, &mut b);
        assert_eq!(b[0], 0x47);
        assert!(rec.0.lock().unwrap().is_empty());
        kbd.write(4, &[CMD_PULSE_RESET]);
        assert_eq!(*rec.0.lock().unwrap(), vec![StopReason::Reset]);
    }
}
