//! The 16550 UART (COM1) as the guest sees it: any sequence of port reads and writes of any
//! width, with host input arriving in between. Checks the registers a driver relies on read
//! back what was written (scratch, line control, divisor latch, interrupt enable, modem
//! control), and that the host sees exactly the bytes the guest transmitted outside loopback.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use devices::console_output::ConsoleOutput;
use devices::serial::Serial;
use devices::{BusDevice, ConsoleInput};
use libfuzzer_sys::fuzz_target;

struct NoIrq;
impl hypervisor::IrqLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;

/// One writer thread for the whole run (a thread per input would dominate the cost).
static OUTPUT: OnceLock<(ConsoleOutput, Sink)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (output, out) = OUTPUT.get_or_init(|| {
        let sink = Sink::default();
        let output = ConsoleOutput::spawn(Box::new(sink.clone()), "fuzz-serial-out").unwrap();
        (output, sink)
    });
    out.0.lock().unwrap().clear();
    let lost_before = output.lost();
    let mut uart = Serial::new(Box::new(NoIrq), output.clone());
    let (mut lcr, mut mcr) = (0u8, 0x08u8); // reset values: 8 bits off, OUT2 set
    let mut sent = Vec::new();
    // Three bytes an access: kind (bit 0 write, bits 1-2 width, bit 3 host input first),
    // register offset, value.
    for op in data.chunks_exact(3) {
        let (kind, offset, value) = (op[0], u64::from(op[1] & 7), op[2]);
        if kind & 8 != 0 {
            let n = uart.queue_input(&[value; 7][..usize::from(kind >> 5)]);
            assert!(n <= usize::from(kind >> 5));
        }
        let width = 1usize << ((kind >> 1) & 3);
        if kind & 1 == 0 {
            let mut buf = [0xffu8; 8];
            uart.read(offset, &mut buf[..width]);
            assert!(
                buf[1..width].iter().all(|&b| b == 0),
                "wide read past the register"
            );
            continue;
        }
        let mut buf = [0u8; 8];
        buf[0] = value;
        uart.write(offset, &buf[..width]);
        let readback = |uart: &mut Serial, off: u64| {
            let mut b = [0u8];
            uart.read(off, &mut b);
            b[0]
        };
        match offset {
            0 if lcr & DLAB == 0 && mcr & MCR_LOOP == 0 => sent.push(value),
            0 | 1 if lcr & DLAB != 0 => assert_eq!(readback(&mut uart, offset), value),
            1 => assert_eq!(readback(&mut uart, 1), value & 0x0f),
            3 => {
                lcr = value;
                assert_eq!(readback(&mut uart, 3), value);
            }
            4 => {
                mcr = value;
                assert_eq!(readback(&mut uart, 4) & 0x1f, value & 0x1f);
            }
            7 => assert_eq!(readback(&mut uart, 7), value),
            _ => {}
        }
    }
    while output.pending() > 0 {
        std::thread::yield_now();
    }
    // Bytes written into a full transmitter are dropped, and counted.
    let lost = (output.lost() - lost_before) as usize;
    let got = out.0.lock().unwrap();
    if lost == 0 {
        assert_eq!(*got, sent, "host output differs from THR writes");
    } else {
        assert_eq!(got.len() + lost, sent.len(), "bytes vanished uncounted");
    }
});
