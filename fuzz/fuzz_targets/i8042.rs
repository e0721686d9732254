//! The i8042 keyboard controller as the guest sees it: any reads and writes of ports
//! 0x60-0x64, of any width. A small model of the controller says what each read must return
//! (the output buffer and its status bit, the configuration byte, the self-test answers) and
//! when the guest has asked for a reset (command 0xfe, or an output-port write with bit 0 clear).
#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use devices::i8042::I8042;
use devices::{BusDevice, StopReason, VmControl};
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct Resets(AtomicUsize);
impl VmControl for Resets {
    fn request_stop(&self, reason: StopReason) {
        assert_eq!(reason, StopReason::Reset);
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the guest may rely on.
struct Model {
    ctr: u8,
    output: Option<u8>,
    pending: Option<u8>,
    resets: usize,
}

fuzz_target!(|data: &[u8]| {
    let resets = Arc::new(Resets::default());
    let mut kbd = I8042::new(resets.clone());
    let mut m = Model {
        ctr: 0x30,
        output: None,
        pending: None,
        resets: 0,
    };
    // Three bytes an access: kind (bit 0 write, bits 1-2 width), port offset, value.
    for op in data.chunks_exact(3) {
        let (kind, offset, value) = (op[0], u64::from(op[1] % 6), op[2]);
        let width = 1usize << ((kind >> 1) & 3);
        if kind & 1 == 0 {
            let mut buf = [0xffu8; 8];
            kbd.read(offset, &mut buf[..width]);
            assert!(buf[1..width].iter().all(|&b| b == 0));
            match offset {
                0 => assert_eq!(buf[0], m.output.take().unwrap_or(0)),
                4 => assert_eq!(buf[0] & 1, u8::from(m.output.is_some()), "output-full bit"),
                _ => assert_eq!(buf[0], 0),
            }
            continue;
        }
        let mut buf = [0u8; 8];
        buf[0] = value;
        kbd.write(offset, &buf[..width]);
        match (offset, value) {
            (4, 0x20) => m.output = Some(m.ctr),
            // A command that takes a data byte waits for it; others leave a pending one be.
            (4, 0x60 | 0xd1) => m.pending = Some(value),
            (4, 0xaa) => m.output = Some(0x55),
            (4, 0xab) => m.output = Some(0),
            (4, 0xd0) => m.output = Some(1),
            (4, 0xfe) => m.resets += 1,
            (0, _) => match m.pending.take() {
                Some(0x60) => m.ctr = value,
                Some(0xd1) if value & 1 == 0 => m.resets += 1,
                _ => {}
            },
            _ => {}
        }
        assert_eq!(resets.0.load(Ordering::Relaxed), m.resets);
    }
    // The configuration byte survives whatever came before.
    kbd.write(4, &[0x20]);
    let mut b = [0u8];
    kbd.read(0, &mut b);
    assert_eq!(b[0], m.ctr);
});
