//! virtio-net with each host back end, a frame each way between the guest and the test:
//! - a real TAP: the test creates the interface, watches it with an AF_PACKET socket for the
//!   guest's frame, and injects a frame for the guest. Needs root (CAP_NET_ADMIN) for
//!   `ip tuntap add` and the raw socket: without it the test says why it is skipped, except
//!   under CI=true, where it fails;
//! - a Unix datagram socket (`--net socket=PATH`, the macOS way): the test owns the peer.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::tap::{Packet, TapIf, ETHERTYPE, GUEST_MAC};
use common::*;
use vmm::Outcome;

/// The far end of the guest's link, as the test sees it.
trait Peer {
    /// The next frame with our ethertype, within `limit`.
    fn recv_ours(&self, limit: Duration) -> Option<Vec<u8>>;
    fn send(&self, frame: &[u8]);
}

impl Peer for Packet {
    fn recv_ours(&self, limit: Duration) -> Option<Vec<u8>> {
        Packet::recv_ours(self, limit)
    }

    fn send(&self, frame: &[u8]) {
        Packet::send(self, frame)
    }
}

/// A Unix datagram socket playing the network (as gvproxy would), and where vibe-vmm's end is.
struct SocketPeer {
    socket: UnixDatagram,
    vmm_end: PathBuf,
}

impl Peer for SocketPeer {
    fn recv_ours(&self, limit: Duration) -> Option<Vec<u8>> {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let t = Instant::now();
        while t.elapsed() < limit {
            let mut buf = vec![0u8; 2048];
            let n = self.socket.recv(&mut buf).ok()?;
            if n >= 14 && buf[12..14] == ETHERTYPE.to_be_bytes() {
                buf.truncate(n);
                return Some(buf);
            }
        }
        None
    }

    fn send(&self, frame: &[u8]) {
        self.socket.send_to(frame, &self.vmm_end).unwrap();
    }
}

#[test]
fn frames_cross_between_guest_and_tap_both_ways() {
    let Some(kvm) = kvm() else { return };
    let tap = match TapIf::create("net") {
        Ok(t) => t,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but cannot create a TAP: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot create a TAP interface (needs CAP_NET_ADMIN): {e}");
            return;
        }
    };
    let sock = Packet::bind(&tap.0);
    exchange_frames(&kvm, vmm::NetBackendConfig::Tap(tap.0.clone()), &sock);
}

#[test]
fn frames_cross_between_guest_and_a_socket_peer_both_ways() {
    let Some(kvm) = kvm() else { return };
    let dir = std::env::temp_dir();
    let peer_path = dir.join(format!("vibe-net-peer-{}.sock", std::process::id()));
    let vmm_end = dir.join(format!("vibe-net-vmm-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&peer_path);
    let _ = std::fs::remove_file(&vmm_end);
    let peer = SocketPeer {
        socket: UnixDatagram::bind(&peer_path).unwrap(),
        vmm_end: vmm_end.clone(),
    };
    let backend = vmm::NetBackendConfig::Socket {
        path: peer_path.clone(),
        local: Some(vmm_end.clone()),
    };
    exchange_frames(&kvm, backend, &peer);
    assert!(!vmm_end.exists(), "vibe-vmm removed its end of the socket");
    let _ = std::fs::remove_file(peer_path);
}

/// Boots the net guest on `backend`: it broadcasts a frame, which `peer` must see, then
/// waits for the frame `peer` sends back and prints it.
fn exchange_frames(kvm: &hypervisor::kvm::Kvm, backend: vmm::NetBackendConfig, peer: &dyn Peer) {
    let out = Capture::default();
    let mut c = config(test_guests::VIRTIO_NET, 1, &out);
    c.nets = vec![vmm::NetConfig { backend, mac: None }];
    let mut vm = build(kvm, c);
    vm.start().unwrap();
    let stop = vm.stop_handle();

    let frame = peer
        .recv_ours(Duration::from_secs(30))
        .expect("no frame from the guest");
    assert_eq!(&frame[..6], &[0xff; 6], "broadcast");
    assert_eq!(
        &frame[6..12],
        &GUEST_MAC,
        "the default MAC from the config space"
    );
    assert_eq!(&frame[14..34], b"hello from the guest");

    let mut reply = vec![0u8; 60];
    reply[..6].copy_from_slice(&GUEST_MAC);
    reply[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    reply[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    reply[14..33].copy_from_slice(b"hello from the host");
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        stop.stop(Outcome::Stopped("test time limit".into()));
    });
    // Sent again until the guest has it: a TAP's queue starts only once the kernel's link
    // watch has seen the carrier come up (when the VMM attached), asynchronously, and until
    // then the kernel drops what we send (counted as TX dropped on the TAP).
    let t = Instant::now();
    let mut sent: Option<Instant> = None;
    while !out.text().contains("received: ") && t.elapsed() < Duration::from_secs(20) {
        if sent.is_none_or(|s| s.elapsed() > Duration::from_millis(300)) {
            peer.send(&reply);
            sent = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(vm.wait(), Outcome::DebugExit(0), "{}", out.text());
    assert!(
        out.text().contains("received: hello from the host\r\n"),
        "{}",
        out.text()
    );
}
