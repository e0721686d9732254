//! virtio-mmio transport registers and the virtio-console paths, with pending host input.
#![no_main]

#[path = "harness.rs"]
mod harness;

use devices::ConsoleInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let console =
        devices::virtio::console::Console::new(devices::console_output::ConsoleOutput::discard());
    let mut input = console.input_handle();
    input.queue_input(b"host input for the receive queue");
    harness::run(Box::new(console), data);
});
