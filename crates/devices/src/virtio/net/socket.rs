//! Ethernet frames over a Unix datagram socket, one frame a datagram, with no header: the
//! user-mode networking convention of macOS VM tools (gvproxy's and vfkit's `unixgram://`,
//! QEMU's `-netdev dgram`), and the way to network a guest on a Mac, which has no TAP.
//!
//! vibe-vmm binds its own end to a path (so the peer can answer) and connects it to the
//! peer's. The guest's frames carry a virtio-net header the peer does not want: it is taken
//! off on the way out and a plain one (no offloads, one buffer) put on on the way in.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use super::{NetBackend, VNET_HDR_LEN};

/// Socket buffer sizes: macOS's default for datagram sockets (2 KiB sends) would refuse a
/// full-size frame.
const SEND_BUFFER: libc::c_int = 1 << 20;
const RECV_BUFFER: libc::c_int = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SocketNetError {
    #[error("cannot bind vibe-vmm's end of the network socket at {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to the network socket {path} (is its peer, e.g. `gvproxy --listen-vfkit unixgram://{path}`, running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the network socket {path}")]
    Setup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub struct SocketNet {
    socket: UnixDatagram,
    peer: PathBuf,
    /// Our own bound path, removed when the device goes.
    local: PathBuf,
    name: String,
}

impl SocketNet {
    /// Binds `local` (which must not exist) and connects to the peer's socket at `peer`.
    pub fn open(peer: &Path, local: &Path) -> Result<Self, SocketNetError> {
        let socket = UnixDatagram::bind(local).map_err(|source| SocketNetError::Bind {
            path: local.into(),
            source,
        })?;
        let net = SocketNet {
            socket,
            peer: peer.into(),
            local: local.into(),
            name: format!("socket {}", peer.display()),
        };
        net.socket
            .connect(peer)
            .map_err(|source| SocketNetError::Connect {
                path: peer.into(),
                source,
            })?;
        let setup = |source| SocketNetError::Setup {
            path: peer.into(),
            source,
        };
        net.socket.set_nonblocking(true).map_err(setup)?;
        set_buffer(&net.socket, libc::SO_SNDBUF, SEND_BUFFER).map_err(setup)?;
        set_buffer(&net.socket, libc::SO_RCVBUF, RECV_BUFFER).map_err(setup)?;
        Ok(net)
    }

    /// The peer's path.
    pub fn peer(&self) -> &Path {
        &self.peer
    }
}

fn set_buffer(socket: &UnixDatagram, option: libc::c_int, size: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt on our socket with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl NetBackend for SocketNet {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(frame) = buf.get_mut(VNET_HDR_LEN..) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        match self.socket.recv(frame) {
            Ok(n) => {
                // virtio_net_hdr_v1: no flags, no GSO, num_buffers = 1.
                buf[..VNET_HDR_LEN].fill(0);
                buf[10] = 1;
                Ok(Some(VNET_HDR_LEN + n))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let Some(ethernet) = frame.get(VNET_HDR_LEN..) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        // A peer that is slow (full buffer) or gone loses the frame, as a cable would.
        self.socket.send(ethernet).map(|_| ())
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.socket.as_raw_fd())
    }
}

impl Drop for SocketNet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.local);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vibe-sock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn frames_cross_without_the_virtio_header() {
        let peer_path = temp("peer");
        let local = temp("local");
        let peer = UnixDatagram::bind(&peer_path).unwrap();
        let mut net = SocketNet::open(&peer_path, &local).unwrap();

        let mut out = vec![0xee; VNET_HDR_LEN];
        out.extend_from_slice(b"ethernet frame out");
        net.write_frame(&out).unwrap();
        let mut got = [0u8; 64];
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], b"ethernet frame out");

        let mut buf = [0xffu8; 128];
        assert_eq!(net.read_frame(&mut buf).unwrap(), None, "nothing yet");
        peer.send_to(b"frame in", &local).unwrap();
        let n = net.read_frame(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[VNET_HDR_LEN..n], b"frame in");
        assert_eq!(buf[..VNET_HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);

        drop(net);
        assert!(!local.exists(), "our end's path is removed");
        let _ = std::fs::remove_file(peer_path);
    }

    #[test]
    fn a_missing_peer_is_explained() {
        let local = temp("lonely");
        let err = SocketNet::open(&temp("nobody"), &local).err().unwrap();
        assert!(err.to_string().contains("is its peer"), "{err}");
    }
}
