//! The 16550A UART (on a PC, COM1: `arch::x86_64::layout::COM1_PORT`), on `vm-superio`.
//!
//! Output goes through a [`ConsoleOutput`], so a vCPU writing THR never waits for the host.
//! When that buffer cannot take a FIFO's worth, the transmitter stalls as a real one does:
//! LSR clears THRE and TEMT (a polling driver, like Linux's console, waits) and the THR-empty
//! interrupt is held back until the host has read enough (an interrupt-driven driver waits
//! too). A byte written into the full transmitter anyway is lost and counted. Input is pushed
//! in with [`Serial::enqueue_input`] by whoever reads the host side.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hypervisor::IrqLine;
use vm_superio::serial::NoEvents;
use vm_superio::Trigger;

use crate::console_output::ConsoleOutput;
use crate::BusDevice;

/// Eight registers.
pub const PORT_RANGE: u64 = 8;
/// The 16550A's transmit FIFO: THRE means a driver may write this many bytes.
const FIFO_SIZE: usize = 16;
const THR: u8 = 0;
const LCR: u8 = 3;
const MCR: u8 = 4;
const LSR: u8 = 5;
const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

/// The UART's interrupt line, which holds back THR-empty interrupts while the output stalls.
struct SerialIrq {
    line: Arc<dyn IrqLine>,
    out: ConsoleOutput,
    /// Set around the register writes after which vm-superio signals THR-empty.
    transmit: AtomicBool,
    /// An interrupt was held back; raised when the output has room.
    held: Arc<AtomicBool>,
}

impl Trigger for SerialIrq {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        if self.transmit.load(Ordering::Relaxed) && self.out.room() < FIFO_SIZE {
            self.held.store(true, Ordering::Release);
            self.out.want_room();
            // The writer may have made room between the check and `want_room`: then nobody
            // else will release the interrupt.
            if self.out.room() < FIFO_SIZE || !self.held.swap(false, Ordering::AcqRel) {
                return Ok(());
            }
        }
        self.line.trigger()
    }
}

pub struct Serial {
    uart: vm_superio::Serial<SerialIrq, NoEvents, ConsoleOutput>,
    out: ConsoleOutput,
}

impl Serial {
    pub fn new(irq: Box<dyn IrqLine>, out: ConsoleOutput) -> Self {
        let line: Arc<dyn IrqLine> = Arc::from(irq);
        let held = Arc::new(AtomicBool::new(false));
        let (l, h) = (line.clone(), held.clone());
        out.on_room(Arc::new(move || {
            if h.swap(false, Ordering::AcqRel) {
                let _ = l.trigger();
            }
        }));
        let irq = SerialIrq {
            line,
            out: out.clone(),
            transmit: AtomicBool::new(false),
            held,
        };
        Serial {
            uart: vm_superio::Serial::new(irq, out.clone()),
            out,
        }
    }

    /// Whether the output buffer cannot take a FIFO's worth of bytes.
    fn stalled(&self) -> bool {
        self.out.room() < FIFO_SIZE
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        <Self as crate::ConsoleInput>::queue_input(self, bytes)
    }
}

/// What a snapshot keeps of the UART: its registers and the input FIFO (vm-superio's
/// `SerialState`, as plain data).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl Serial {
    pub fn state(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Loads saved registers into the UART, keeping its interrupt line and output. Fails
    /// (changing nothing) on more input than the FIFO holds.
    pub fn set_state(&mut self, s: &SerialState) -> io::Result<()> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let old = self.uart.interrupt_evt();
        let irq = SerialIrq {
            line: old.line.clone(),
            out: old.out.clone(),
            transmit: AtomicBool::new(false),
            held: old.held.clone(),
        };
        self.uart = vm_superio::Serial::from_state(&state, irq, NoEvents, self.out.clone())
            .map_err(|e| io::Error::other(format!("bad serial state: {e:?}")))?;
        Ok(())
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
    fn name(&self) -> String {
        "serial".into()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are one byte wide; wider reads see the register then zeros.
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(off);
            if off == LSR && self.stalled() {
                *first &= !(LSR_THRE | LSR_TEMT);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        let to_host = off == THR
            && self.uart.read(LCR) & LCR_DLAB == 0
            && self.uart.read(MCR) & MCR_LOOP == 0;
        if to_host && self.out.room() == 0 {
            // Written into a full transmitter regardless of LSR.
            self.out.lose(1);
            return;
        }
        let irq = self.uart.interrupt_evt();
        irq.transmit.store(to_host || off == 1, Ordering::Relaxed);
        if let Err(e) = self.uart.write(off, value) {
            log::debug!("serial write failed: {e:?}");
        }
        self.uart
            .interrupt_evt()
            .transmit
            .store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    struct Count(Arc<AtomicUsize>);
    impl IrqLine for Count {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A host side that takes nothing until opened.
    struct Gate(Arc<(Mutex<bool>, Condvar)>);
    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (m, c) = &*self.0;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lsr(s: &mut Serial) -> u8 {
        let mut b = [0u8];
        s.read(u64::from(LSR), &mut b);
        b[0]
    }

    /// With the host not reading, the transmitter reports busy and the THR-empty interrupt is
    /// held back; once the host reads again, the interrupt comes and nothing was lost.
    #[test]
    fn a_host_that_does_not_read_stalls_the_transmitter() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let out = ConsoleOutput::spawn(Box::new(Gate(gate.clone())), "test-serial").unwrap();
        let irqs = Arc::new(AtomicUsize::new(0));
        let mut s = Serial::new(Box::new(Count(irqs.clone())), out.clone());
        s.write(1, &[0x02]); // IER: THR empty
        let t = Instant::now();
        let mut sent = 0;
        // Like an interrupt-driven driver: read IIR (which clears THR-empty), then write.
        let iir = |s: &mut Serial| s.read(2, &mut [0u8]);
        while lsr(&mut s) & LSR_THRE != 0 {
            iir(&mut s);
            s.write(u64::from(THR), b"x");
            sent += 1;
            assert!(t.elapsed() < Duration::from_secs(5), "never stalled");
        }
        assert_eq!(lsr(&mut s) & LSR_TEMT, 0);
        let before = irqs.load(Ordering::SeqCst);
        iir(&mut s);
        s.write(u64::from(THR), b"y"); // a driver that ignores LSR while there is still room
        assert_eq!(irqs.load(Ordering::SeqCst), before, "THR-empty held back");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        while irqs.load(Ordering::SeqCst) == before {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the held interrupt never came"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_ne!(lsr(&mut s) & LSR_THRE, 0);
        assert!(sent > 1000);
        out.finish(Instant::now() + Duration::from_secs(5));
        assert_eq!(out.lost(), 0);
    }
}
