//! A host TAP device opened by name (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`):
//! frames carry the 12-byte virtio-net header, so they pass between guest and TAP unchanged.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Linux's `<linux/if_tun.h>`.
#[cfg(target_os = "linux")]
mod tun {
    pub const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
    pub const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
    pub const IFF_TAP: libc::c_short = 0x0002;
    pub const IFF_NO_PI: libc::c_short = 0x1000;
    pub const IFF_VNET_HDR: libc::c_short = 0x4000;

    #[repr(C)]
    pub struct IfReq {
        pub name: [u8; 16],
        pub flags: libc::c_short,
        pub _pad: [u8; 22],
    }
}
/// virtio_net_hdr_v1: what a VERSION_1 driver puts before every frame.
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("TAP device {0} does not exist: create it with `ip tuntap add {0} mode tap user $USER` and `ip link set {0} up`")]
    Missing(String),
    #[error("cannot open /dev/net/tun (is the tun module loaded?)")]
    NoTun(#[source] io::Error),
    #[error("no permission to use TAP device {0}: run as root, or create it for this user with `ip tuntap add {0} mode tap user $USER`")]
    Permission(String),
    #[error("TAP devices exist only on Linux: on this host use --net socket=PATH (Ethernet frames over a Unix datagram socket, e.g. from gvproxy or vfkit)")]
    NotOnThisHost,
    #[error("cannot attach to TAP device {name}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
}

pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// TAP is a Linux interface.
    #[cfg(not(target_os = "linux"))]
    pub fn open(_name: &str) -> Result<Self, TapError> {
        Err(TapError::NotOnThisHost)
    }

    /// Attaches to the existing TAP interface `name`.
    #[cfg(target_os = "linux")]
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() > 15 || name.contains('/') {
            return Err(TapError::BadName(name.into()));
        }
        // TUNSETIFF would quietly create a missing interface for a privileged user: refuse.
        if !std::path::Path::new("/sys/class/net").join(name).exists() {
            return Err(TapError::Missing(name.into()));
        }
        use std::os::unix::fs::OpenOptionsExt;
        use tun::*;
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::NoTun)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let attach = |e: io::Error| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name.into()),
            _ => TapError::Attach {
                name: name.into(),
                source: e,
            },
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: ioctls on our tun descriptor with correctly sized arguments.
        unsafe {
            if libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) < 0 {
                return Err(attach(io::Error::last_os_error()));
            }
            if libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) < 0
                || libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, 0 as libc::c_uint) < 0
            {
                return Err(attach(io::Error::last_os_error()));
            }
        }
        Ok(Tap {
            file,
            name: name.into(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (with its header); `Ok(None)` when none is waiting.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: read into a buffer we own.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        }
    }

    /// Writes one frame (with its header).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: write from a buffer we own.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
