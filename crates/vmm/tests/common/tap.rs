//! A real TAP interface and a raw socket on it: the far end of a guest's virtio-net link in
//! the network tests (`net.rs`, `pci.rs`). Needs CAP_NET_ADMIN.

use std::process::Command;
use std::time::{Duration, Instant};

pub const ETHERTYPE: u16 = 0x88b5;
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A TAP interface that is deleted on drop.
pub struct TapIf(pub String);

impl TapIf {
    pub fn create(tag: &str) -> Result<TapIf, String> {
        let name = format!("vpci{}{tag}", std::process::id() % 1_000_000);
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))
                .and_then(|o| match o.status.success() {
                    true => Ok(()),
                    false => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                })
        };
        ip(&["tuntap", "add", &name, "mode", "tap"])?;
        let tap = TapIf(name);
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", tap.0),
            "1",
        );
        ip(&["link", "set", &tap.0, "up"])?;
        Ok(tap)
    }
}

impl Drop for TapIf {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// A raw AF_PACKET socket bound to one interface.
pub struct Packet(i32);

impl Packet {
    pub fn bind(ifname: &str) -> Packet {
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: plain socket calls with correctly sized arguments.
        unsafe {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let rc = libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            Packet(fd)
        }
    }

    /// The next frame with our ethertype, within `limit`.
    pub fn recv_ours(&self, limit: Duration) -> Option<Vec<u8>> {
        let t = Instant::now();
        while t.elapsed() < limit {
            let mut pfd = libc::pollfd {
                fd: self.0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll and recv on our socket into our buffer.
            unsafe {
                if libc::poll(&mut pfd, 1, 100) <= 0 {
                    continue;
                }
                let mut buf = vec![0u8; 2048];
                let n = libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n >= 14 && buf[12..14] == ETHERTYPE.to_be_bytes() {
                    buf.truncate(n as usize);
                    return Some(buf);
                }
            }
        }
        None
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: send from our buffer on our bound socket.
        let n = unsafe { libc::send(self.0, frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Packet {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(self.0) };
    }
}
