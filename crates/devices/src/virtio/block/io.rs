//! Moving request data between the image file and guest memory: the portable part.
//!
//! Every host can transfer a segment with `pread`/`pwrite` ([`Io::synchronous`]) and make a
//! flush durable ([`flush`]). On Linux, [`Io::new`] adds the io_uring path of [`super::uring`]:
//! reads the page cache cannot serve at once are batched so they run in parallel.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// One contiguous transfer: `len` bytes at host address `ptr` (inside guest memory) to or from
/// file offset `offset`, on behalf of request number `request` of the pass.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub ptr: *mut u8,
    pub len: u32,
    pub offset: u64,
    pub write: bool,
    pub request: usize,
}

impl Segment {
    /// The part of the segment after its first `n` bytes.
    #[cfg(target_os = "linux")]
    pub(super) fn advanced(&self, n: u32) -> Segment {
        let n = n.min(self.len);
        Segment {
            ptr: self.ptr.wrapping_add(n as usize),
            len: self.len - n,
            offset: self.offset + u64::from(n),
            ..*self
        }
    }
}

// SAFETY: the pointer is into guest memory, which outlives the device and may be accessed from
// any thread; a Segment is only used within one queue pass.
unsafe impl Send for Segment {}

/// How a queue pass moves its segments.
pub struct Io {
    #[cfg(target_os = "linux")]
    uring: Option<super::uring::Uring>,
}

impl Io {
    /// The fastest way this host has (io_uring on Linux when the kernel allows it).
    pub fn new() -> Self {
        Io {
            #[cfg(target_os = "linux")]
            uring: super::uring::Uring::new(),
        }
    }

    /// Transfers with one `pread`/`pwrite` per segment, never io_uring.
    pub fn synchronous() -> Self {
        Io {
            #[cfg(target_os = "linux")]
            uring: None,
        }
    }

    pub fn uses_io_uring(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.uring.is_some();
        #[cfg(not(target_os = "linux"))]
        return false;
    }

    /// Performs every segment; calls `failed(request)` for each one that did not move all its
    /// bytes. `slow` is scratch space.
    pub fn run(
        &mut self,
        file: &File,
        segments: &[Segment],
        slow: &mut Vec<Segment>,
        mut failed: impl FnMut(usize),
    ) {
        #[cfg(target_os = "linux")]
        if let Some(uring) = &mut self.uring {
            if uring.run(file, segments, slow, &mut failed) {
                return;
            }
            self.uring = None; // the ring broke; it finished the pass the slow way
            return;
        }
        let _ = slow;
        for s in segments {
            if sync_transfer(file, s).is_err() {
                failed(s.request);
            }
        }
    }
}

/// Makes the file's written data durable, for a guest's flush: `fdatasync` on Linux; on macOS
/// `F_FULLFSYNC`, because its `fsync` leaves data in the drive's cache.
pub fn flush(file: &File) -> io::Result<()> {
    #[cfg(target_os = "macos")]
    {
        // SAFETY: fcntl with F_FULLFSYNC takes no argument beyond the descriptor.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_FULLFSYNC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "macos"))]
    file.sync_data()
}

/// One segment with `pread`/`pwrite`, looping over short transfers.
pub(super) fn sync_transfer(file: &File, s: &Segment) -> io::Result<()> {
    let mut done = 0usize;
    let len = s.len as usize;
    while done < len {
        // SAFETY: [ptr, ptr + len) is guest memory checked by `get_slice`.
        let n = unsafe {
            let p = s.ptr.add(done);
            let off = (s.offset + done as u64) as i64;
            if s.write {
                libc::pwrite(file.as_raw_fd(), p.cast(), len - done, off)
            } else {
                libc::pread(file.as_raw_fd(), p.cast(), len - done, off)
            }
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_transfers_read_and_write_the_file() {
        let path = std::env::temp_dir().join(format!("vibe-sync-io-{}.img", std::process::id()));
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut data = [9u8; 512];
        let mut back = [0u8; 1024];
        let segments = [
            Segment {
                ptr: data.as_mut_ptr(),
                len: 512,
                offset: 4096,
                write: true,
                request: 0,
            },
            Segment {
                ptr: back.as_mut_ptr(),
                len: 1024,
                offset: 3840,
                write: false,
                request: 1,
            },
            Segment {
                ptr: back.as_mut_ptr(),
                len: 512,
                offset: 8000,
                write: false,
                request: 2,
            },
        ];
        let mut failed = Vec::new();
        Io::synchronous().run(&file, &segments, &mut Vec::new(), |r| failed.push(r));
        flush(&file).unwrap();
        assert_eq!(failed, [2], "a read past the end fails its request only");
        assert!(back[..256].iter().all(|&b| b == 7));
        assert!(back[256..768].iter().all(|&b| b == 9));
        let _ = std::fs::remove_file(path);
    }
}
