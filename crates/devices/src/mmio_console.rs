//! The MMIO console (the specification's own device): a page of registers in the platform
//! MMIO range through which a guest writes and reads bytes by polling, with no driver stack.
//!
//! | offset | register | access |
//! |---|---|---|
//! | 0x00 | DATA: write a byte to the console; read the next input byte (0 when none) | R/W |
//! | 0x04 | STATUS: bit 0 input available, bit 1 ready for output | R |
//! | 0x08 | ID: `0x4e4f_434d` ("MCON"), to probe for the device | R |
//!
//! Accesses of any width work; only the low byte of a DATA write is used. Output goes through a
//! [`ConsoleOutput`]: while the host side does not keep up, "ready for output" is clear and a
//! byte written anyway is lost (counted).

use std::collections::VecDeque;

use crate::console_output::ConsoleOutput;
use crate::{BusDevice, ConsoleInput};

/// The console's register page.
pub const WINDOW_SIZE: u64 = 0x1000;
pub const REG_DATA: u64 = 0x00;
pub const REG_STATUS: u64 = 0x04;
pub const REG_ID: u64 = 0x08;
pub const ID: u32 = 0x4e4f_434d;
pub const STATUS_INPUT: u32 = 1;
pub const STATUS_OUTPUT_READY: u32 = 2;
/// Input held for the guest at most; the host waits while it is full.
const INPUT_CAPACITY: usize = 4096;

pub struct MmioConsole {
    out: ConsoleOutput,
    input: VecDeque<u8>,
}

impl MmioConsole {
    pub fn new(out: ConsoleOutput) -> Self {
        MmioConsole {
            out,
            input: VecDeque::new(),
        }
    }
}

/// What a snapshot keeps of the console: input the guest has not read yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioConsoleState {
    pub input: Vec<u8>,
}

impl MmioConsole {
    pub fn state(&self) -> MmioConsoleState {
        MmioConsoleState {
            input: self.input.iter().copied().collect(),
        }
    }

    /// Input beyond what the console holds is dropped.
    pub fn set_state(&mut self, s: &MmioConsoleState) {
        self.input = s.input.iter().take(INPUT_CAPACITY).copied().collect();
    }
}

impl ConsoleInput for MmioConsole {
    fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(INPUT_CAPACITY - self.input.len());
        self.input.extend(&bytes[..n]);
        n
    }
}

impl BusDevice for MmioConsole {
    fn name(&self) -> String {
        "mmio-console".into()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            REG_DATA => self.input.pop_front().map_or(0, u32::from),
            REG_STATUS => {
                let ready = if self.out.room() > 0 {
                    STATUS_OUTPUT_READY
                } else {
                    0
                };
                ready | u32::from(!self.input.is_empty())
            }
            REG_ID => ID,
            _ => 0,
        };
        data.fill(0);
        let n = data.len().min(4);
        data[..n].copy_from_slice(&value.to_le_bytes()[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (REG_DATA, Some(&b)) = (offset, data.first()) {
            if self.out.try_write(&[b]) == 0 {
                self.out.lose(1); // written while not ready
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn registers() {
        let out = Buf::default();
        let handle = ConsoleOutput::spawn(Box::new(out.clone()), "test-out").unwrap();
        let mut c = MmioConsole::new(handle.clone());
        let mut b = [0u8; 4];
        c.read(REG_ID, &mut b);
        assert_eq!(u32::from_le_bytes(b), ID);
        c.read(REG_STATUS, &mut b);
        assert_eq!(u32::from_le_bytes(b), STATUS_OUTPUT_READY);
        c.write(REG_DATA, &[b'h', 0, 0, 0]);
        c.write(REG_DATA, b"i");
        c.write(0x800, b"x"); // not a register
        handle.finish(Instant::now() + Duration::from_secs(5));
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert_eq!(c.queue_input(b"ok"), 2);
        c.read(REG_STATUS, &mut b);
        assert_eq!(u32::from_le_bytes(b) & STATUS_INPUT, 1);
        let mut one = [0u8; 1];
        c.read(REG_DATA, &mut one);
        assert_eq!(one[0], b'o');
        c.read(REG_DATA, &mut one);
        c.read(REG_DATA, &mut one);
        assert_eq!(one[0], 0);
        assert_eq!(c.queue_input(&vec![1; 10_000]), INPUT_CAPACITY);
    }

    /// A host side that never reads.
    struct Stuck;
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_not_ready_while_the_host_does_not_read() {
        let out = ConsoleOutput::spawn(Box::new(Stuck), "test-stuck").unwrap();
        let mut c = MmioConsole::new(out.clone());
        let mut b = [0u8; 4];
        let t = Instant::now();
        loop {
            c.read(REG_STATUS, &mut b);
            if u32::from_le_bytes(b) & STATUS_OUTPUT_READY == 0 {
                break;
            }
            c.write(REG_DATA, b"x");
            assert!(t.elapsed() < Duration::from_secs(5), "never stalled");
        }
        assert_eq!(out.lost(), 0, "nothing lost while the guest polls STATUS");
        c.write(REG_DATA, b"y");
        assert_eq!(out.lost(), 1, "a byte written while not ready is counted");
        out.finish(Instant::now());
    }
}
