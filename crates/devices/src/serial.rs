//! The 16550A UART (COM1 at port 0x3f8, IRQ 4), on `vm-superio`.
//!
//! Output goes to any writer (stdout, a file, a test buffer); input is pushed in with
//! [`Serial::enqueue_input`] by whoever reads the host side.

use std::io::{self, Write};

use hypervisor::IrqLine;
use vm_superio::serial::NoEvents;
use vm_superio::Trigger;

use crate::BusDevice;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// Eight registers.
pub const PORT_RANGE: u64 = 8;

/// Adapts an interrupt line to vm-superio's trigger.
pub struct IrqTrigger(pub Box<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    pub fn new(irq: Box<dyn IrqLine>, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        <Self as crate::ConsoleInput>::queue_input(self, bytes)
    }
}

impl crate::ConsoleInput for Serial {
    fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are one byte wide; wider reads see the register then zeros.
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, value) {
                // The host side went away (closed pipe, full disk): the guest carries on.
                log::debug!("serial output failed: {e:?}");
            }
        }
    }
}
