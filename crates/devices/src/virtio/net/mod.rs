//! virtio-net backed by a host TAP device ([`tap`], Linux) or a Unix datagram socket
//! ([`socket`], any host): queue 0 receives frames from it, queue 1 transmits the guest's
//! frames to it. The virtio-net header (12 bytes, VERSION_1) travels
//! with every frame in both directions; no offloads are offered, so it is always plain.
//!
//! Receiving reads the TAP only when the guest has a buffer for the frame (at most one frame
//! waits in the device), so a guest that posts no buffers makes the TAP queue up, not the VMM
//! spin. The event loop runs this device when the TAP is readable, and stops watching it
//! while [`VirtioDevice::input_blocked`] says the frame waiting has no guest buffer.

pub mod socket;
pub mod tap;

use std::os::fd::{AsRawFd, RawFd};

use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

pub use self::socket::{SocketNet, SocketNetError};
pub use self::tap::{Tap, TapError, VNET_HDR_LEN};
use super::TYPE_NET;
use super::{read_config_bytes, Pass, VirtioDevice, PASS_CHAINS};

pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Header plus the largest frame without offloads (and room for a VLAN tag).
const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;

/// Where a network device's frames go and come from: a TAP, a socket, or a test double.
pub trait NetBackend: Send {
    fn name(&self) -> &str;
    /// Reads one frame (with its virtio-net header); `Ok(None)` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>>;
    /// Writes one frame (with its virtio-net header).
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// A descriptor that becomes readable when frames arrive, if there is one.
    fn raw_fd(&self) -> Option<RawFd>;
}

impl NetBackend for Tap {
    fn name(&self) -> &str {
        Tap::name(self)
    }
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        Tap::write_frame(self, frame)
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

pub struct Net {
    tap: Box<dyn NetBackend>,
    config: [u8; 8],
    rx_frame: Vec<u8>,
    /// Length of a frame read from the TAP that no guest buffer has taken yet.
    rx_pending: Option<usize>,
    /// The last receive pass stopped on a backend error (retried on the next event).
    rx_failed: bool,
    tx_frame: Vec<u8>,
}

impl Net {
    pub fn new(tap: Box<dyn NetBackend>, mac: [u8; 6]) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        Net {
            tap,
            config,
            rx_frame: vec![0; MAX_FRAME],
            rx_pending: None,
            rx_failed: false,
            tx_frame: Vec::with_capacity(MAX_FRAME),
        }
    }

    /// The backend's descriptor, for the event loop.
    pub fn tap_fd(&self) -> Option<RawFd> {
        self.tap.raw_fd()
    }

    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Pass {
        let mut pass = Pass::default();
        self.rx_failed = false;
        for _ in 0..PASS_CHAINS {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(Some(len)) => len,
                    Ok(None) => return pass,
                    Err(e) => {
                        log::warn!("virtio-net: reading {}: {e}", self.tap.name());
                        self.rx_failed = true;
                        return pass;
                    }
                },
            };
            self.rx_pending = Some(len);
            let Some(chain) = pass.next_chain(queue, mem) else {
                return pass; // the frame waits for a buffer
            };
            let head = chain.head_index();
            let mut written = 0usize;
            for d in chain.filter(|d| d.is_write_only()) {
                let n = (d.len() as usize).min(len - written);
                if mem
                    .write_slice(&self.rx_frame[written..written + n], d.addr())
                    .is_err()
                {
                    break;
                }
                written += n;
                if written == len {
                    break;
                }
            }
            // A frame longer than the guest's buffers is cut short, as a NIC would drop it.
            self.rx_pending = None;
            if !pass.complete(queue, mem, head, written as u32) {
                return pass;
            }
            pass.bytes += written as u64;
            if written < len {
                pass.errors += 1;
            }
        }
        pass.more = true;
        pass
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Pass {
        let mut pass = Pass::default();
        for _ in 0..PASS_CHAINS {
            let Some(chain) = pass.next_chain(queue, mem) else {
                return pass;
            };
            let head = chain.head_index();
            self.tx_frame.clear();
            let mut ok = true;
            for d in chain.filter(|d| !d.is_write_only()) {
                let start = self.tx_frame.len();
                let n = (d.len() as usize).min(MAX_FRAME - start);
                self.tx_frame.resize(start + n, 0);
                if mem
                    .read_slice(&mut self.tx_frame[start..], d.addr())
                    .is_err()
                {
                    ok = false;
                    break;
                }
            }
            // Anything shorter than a header plus an Ethernet header is not a frame.
            let mut sent = false;
            if ok && self.tx_frame.len() >= VNET_HDR_LEN + 14 {
                match self.tap.write_frame(&self.tx_frame) {
                    Ok(()) => sent = true,
                    Err(e) => log::debug!("virtio-net: writing {}: {e}", self.tap.name()),
                }
            }
            if !pass.complete(queue, mem, head, 0) {
                return pass;
            }
            if sent {
                pass.bytes += self.tx_frame.len() as u64;
            } else {
                pass.errors += 1;
            }
        }
        pass.more = true;
        pass
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Pass {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => Pass::default(),
        }
    }

    fn reset(&mut self) {
        self.rx_pending = None;
    }

    fn input_blocked(&self) -> bool {
        self.rx_pending.is_some() || self.rx_failed
    }
}

/// Parses "52:54:00:12:34:56".
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:5f"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x5f])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("5:54:00:12:34:56"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
    }

    #[test]
    fn missing_taps_are_explained() {
        let e = Tap::open("vibe-nosuch0").err().unwrap();
        assert!(
            e.to_string()
                .contains("ip tuntap add vibe-nosuch0 mode tap"),
            "{e}"
        );
        assert!(matches!(Tap::open(""), Err(TapError::BadName(_))));
        assert!(matches!(Tap::open("a/b"), Err(TapError::BadName(_))));
    }
}
