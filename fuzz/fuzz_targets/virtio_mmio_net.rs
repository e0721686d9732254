//! virtio-mmio transport registers and the virtio-net paths, with a backend that always has a
//! frame to deliver (of a fuzz-chosen length) and swallows what the guest sends.
#![no_main]

#[path = "harness.rs"]
mod harness;

use devices::virtio::net::{Net, NetBackend};
use libfuzzer_sys::fuzz_target;

struct Loop(usize);

impl NetBackend for Loop {
    fn name(&self) -> &str {
        "fuzz"
    }
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let n = self.0.min(buf.len());
        buf[..n].fill(0xab);
        Ok(Some(n))
    }
    fn write_frame(&mut self, _frame: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let len = data.get(1).map_or(60, |&b| usize::from(b) * 16);
    let net = Net::new(Box::new(Loop(len)), [0x52, 0x54, 0, 0, 0, 1]);
    harness::run(Box::new(net), data);
});
