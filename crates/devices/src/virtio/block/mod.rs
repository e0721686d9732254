//! virtio-blk backed by a raw image file: read, write, flush (made durable: [`io::flush`]) and
//! get-id, with read-only disks.
//!
//! Each request is parsed by [`request::parse`] and only then executed against the file with
//! `pread`/`pwrite` straight into or out of guest memory (no bounce buffer). Requests past the
//! end of the disk, with data that is not whole sectors, or with buffers going the wrong way
//! get VIRTIO_BLK_S_IOERR; unknown types get VIRTIO_BLK_S_UNSUPP.

mod io;
pub mod request;
#[cfg(target_os = "linux")]
mod uring;

use std::fs::File;
use std::path::Path;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
};
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use self::io::{Io, Segment};
use self::request::{Desc, Kind, Request, SECTOR_SIZE};
use super::state::DeviceSnapshot;
use super::{read_config_bytes, Pass, VirtioDevice, PASS_CHAINS, TYPE_BLOCK};

pub const QUEUE_SIZE: u16 = 256;
/// Data a pass moves at most before it yields (a request carries at most 16 MiB, so a pass
/// always makes progress), so 256 huge requests cannot hold the device thread for seconds.
const PASS_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open disk image {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path} is {size} bytes, not a multiple of 512")]
    Size { path: String, size: u64 },
}

pub struct Block {
    file: File,
    capacity: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: [u8; 8],
    io: Io,
    /// Scratch space reused by `process_queue`: one chain's descriptors, the pass's requests
    /// and their data segments.
    descs: Vec<Desc>,
    completions: Vec<Completion>,
    segments: Vec<Segment>,
    slow: Vec<Segment>,
}

impl Block {
    /// Opens `path` (read-only if asked) as a disk.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, Error> {
        let name = path.display().to_string();
        let open_err = |source| Error::Open {
            path: name.clone(),
            source,
        };
        let file = File::options()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_dir() {
            return Err(open_err(std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        let size = meta.len();
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::Size { path: name, size });
        }
        // The serial is the file name's tail, as much as fits.
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let tail = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"disk");
        let tail = &tail[tail.len().saturating_sub(id.len())..];
        id[..tail.len()].copy_from_slice(tail);
        let capacity = size / SECTOR_SIZE;
        Ok(Block {
            file,
            capacity,
            read_only,
            id,
            config: capacity.to_le_bytes(),
            io: Io::new(),
            descs: Vec::new(),
            completions: Vec::new(),
            segments: Vec::new(),
            slow: Vec::new(),
        })
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    /// Whether transfers are batched through io_uring (else `pread`/`pwrite` each).
    pub fn batched_io(&self) -> bool {
        self.io.uses_io_uring()
    }

    /// Uses `pread`/`pwrite` for every transfer, even where io_uring works.
    pub fn without_io_uring(mut self) -> Self {
        self.io = Io::synchronous();
        self
    }

    /// Parses one chain and either completes it now (flush, get-id, errors) or queues its
    /// data segments for the pass's batch.
    fn prepare(&mut self, descs: &[Desc], mem: &GuestMemoryMmap) -> Completion {
        let parsed = request::parse(descs, |addr| {
            // One region lookup, no multi-region iteration: this runs for every request.
            let mut h = [0u8; request::HEADER_SIZE as usize];
            let slice = mem.get_slice(GuestAddress(addr), h.len()).ok()?;
            (slice.copy_to(&mut h[..]) == h.len()).then_some(h)
        });
        let req = match parsed {
            Ok(req) => req,
            Err(e) => {
                if e.status_addr().is_none() {
                    log::debug!("virtio-blk: dropping malformed request: {e:?}");
                }
                return Completion::new(e.status_addr(), VIRTIO_BLK_S_IOERR, 0);
            }
        };
        let status = Some(req.status);
        let (code, written) = match req.kind {
            Kind::In | Kind::Out if !req.in_range(self.capacity) => (VIRTIO_BLK_S_IOERR, 0),
            Kind::Out if self.read_only => (VIRTIO_BLK_S_IOERR, 0),
            Kind::In | Kind::Out => return self.queue_segments(&req, mem),
            Kind::Flush if self.read_only => (VIRTIO_BLK_S_OK, 0),
            Kind::Flush => {
                // Everything queued before the flush must reach the file first.
                self.run_segments();
                match io::flush(&self.file) {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            Kind::GetId => match req.data.iter().find(|d| d.len > 0) {
                Some(d) => {
                    let n = self.id.len().min(d.len as usize);
                    match mem.write_slice(&self.id[..n], GuestAddress(d.addr)) {
                        Ok(()) => (VIRTIO_BLK_S_OK, n as u32),
                        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                    }
                }
                None => (VIRTIO_BLK_S_IOERR, 0),
            },
            Kind::Unsupported(_) => (VIRTIO_BLK_S_UNSUPP, 0),
        };
        Completion::new(status, code, written)
    }

    /// Queues a read or write's buffers as segments of this pass's batch.
    fn queue_segments(&mut self, req: &Request, mem: &GuestMemoryMmap) -> Completion {
        let first = self.segments.len();
        let write = req.kind == Kind::Out;
        let mut offset = req.sector * SECTOR_SIZE;
        for d in req.data.iter().filter(|d| d.len > 0) {
            let Ok(slice) = mem.get_slice(GuestAddress(d.addr), d.len as usize) else {
                self.segments.truncate(first);
                return Completion::new(Some(req.status), VIRTIO_BLK_S_IOERR, 0);
            };
            self.segments.push(Segment {
                ptr: slice.ptr_guard_mut().as_ptr(),
                len: d.len,
                offset,
                write,
                request: self.completions.len(),
            });
            offset += u64::from(d.len);
        }
        let written = if write { 0 } else { req.data_len as u32 };
        Completion {
            bytes: req.data_len as u32,
            ..Completion::new(Some(req.status), VIRTIO_BLK_S_OK, written)
        }
    }

    /// Performs the queued segments; a request with a failed segment completes with IOERR.
    fn run_segments(&mut self) {
        let completions = &mut self.completions;
        self.io
            .run(&self.file, &self.segments, &mut self.slow, |r| {
                if let Some(c) = completions.get_mut(r) {
                    c.status = VIRTIO_BLK_S_IOERR;
                    c.written = 0;
                    c.bytes = 0;
                }
            });
        self.segments.clear();
    }
}

/// Writes a request's status byte; false if the address is not guest memory.
fn write_status(mem: &GuestMemoryMmap, addr: u64, status: u8) -> bool {
    mem.get_slice(GuestAddress(addr), 1)
        .is_ok_and(|s| s.write_obj(status, 0).is_ok())
}

/// How a request ends: the status to write (if the chain had a status byte), the bytes
/// the device wrote into the guest's buffers, and the data bytes it moved either way.
#[derive(Debug, Clone, Copy)]
struct Completion {
    head: u16,
    status_addr: Option<u64>,
    status: u32,
    written: u32,
    bytes: u32,
}

impl Completion {
    fn new(status_addr: Option<u64>, status: u32, written: u32) -> Self {
        Completion {
            head: 0,
            status_addr,
            status,
            written,
            bytes: written,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_BLK_F_FLUSH;
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn save_state(&self) -> DeviceSnapshot {
        DeviceSnapshot::Block {
            capacity: self.capacity,
            read_only: self.read_only,
        }
    }

    /// The driver has read the capacity: a re-opened disk of another size is refused.
    fn restore_state(&mut self, saved: &DeviceSnapshot) -> Result<(), String> {
        match *saved {
            DeviceSnapshot::Block {
                capacity,
                read_only,
            } if capacity == self.capacity && read_only == self.read_only => Ok(()),
            DeviceSnapshot::Block {
                capacity,
                read_only,
            } => Err(format!(
                "the disk was {capacity} sectors{}, it is now {} sectors{}",
                if read_only { " read-only" } else { "" },
                self.capacity,
                if self.read_only { " read-only" } else { "" },
            )),
            _ => Err("saved state of another kind of device".into()),
        }
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Pass {
        // One pass over what is available, up to the budget: parse each chain, batch the data
        // transfers, then write the statuses and return the chains in order.
        let mut pass = Pass::default();
        let mut descs = std::mem::take(&mut self.descs);
        self.completions.clear();
        let mut bytes = 0u64;
        match queue.iter(mem) {
            Ok(chains) => {
                for chain in chains {
                    let head = chain.head_index();
                    descs.clear();
                    // The chain iterator stops at loops (at most queue-size descriptors).
                    descs.extend(chain.map(|d| Desc {
                        addr: d.addr().0,
                        len: d.len(),
                        write_only: d.is_write_only(),
                    }));
                    bytes += descs.iter().map(|d| u64::from(d.len)).sum::<u64>();
                    let c = self.prepare(&descs, mem);
                    self.completions.push(Completion { head, ..c });
                    if self.completions.len() >= PASS_CHAINS || bytes >= PASS_BYTES {
                        pass.more = true;
                        break;
                    }
                }
            }
            // The available index runs more than a ring ahead: the driver is broken.
            Err(_) => pass.broken = true,
        }
        self.descs = descs;
        self.run_segments();
        for c in &self.completions {
            let len = match c.status_addr {
                Some(addr) if write_status(mem, addr, c.status as u8) => c.written + 1,
                _ => c.written,
            };
            if !pass.complete(queue, mem, c.head, len) {
                break;
            }
            if c.status == VIRTIO_BLK_S_OK {
                pass.bytes += u64::from(c.bytes);
            } else {
                pass.errors += 1;
            }
        }
        pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x10_1000;
    const STATUS: u64 = 0x10_3000;

    fn image(sectors: u64) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vibe-blk-{}-{n}.img", std::process::id()));
        std::fs::write(&p, vec![0u8; (sectors * SECTOR_SIZE) as usize]).unwrap();
        p
    }

    /// Submits one request (type, sector, data buffers as (len, device_writes)) and returns
    /// the status byte and the used length.
    fn submit(
        blk: &mut Block,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[(u32, bool)],
    ) -> (u8, u32) {
        let (status, used_len, pass) = submit_pass(blk, mem, kind, sector, data);
        assert!(pass.used);
        (status, used_len)
    }

    /// [`submit`], also returning what the pass reported.
    fn submit_pass(
        blk: &mut Block,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[(u32, bool)],
    ) -> (u8, u32, Pass) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut descs = vec![(HDR, 16u32, 0u16)];
        let mut addr = DATA;
        for &(len, w) in data {
            descs.push((addr, len, if w { VRING_DESC_F_WRITE as u16 } else { 0 }));
            addr += u64::from(len);
        }
        descs.push((STATUS, 1, VRING_DESC_F_WRITE as u16));
        let n = descs.len();
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, f))| {
                let (f, next) = if i + 1 < n {
                    (f | VRING_DESC_F_NEXT as u16, i as u16 + 1)
                } else {
                    (f, 0)
                };
                RawDescriptor::from(SplitDescriptor::new(a, l, f, next))
            })
            .collect();
        let vq = MockSplitQueue::new(mem, 16);
        vq.add_desc_chains(&raw, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let pass = blk.process_queue(0, &mut q, mem);
        let used_len = vq.used().ring().ref_at(0).unwrap().load().len();
        (
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            used_len,
            pass,
        )
    }

    #[test]
    fn a_pass_counts_its_requests_bytes_and_errors() {
        let path = image(8);
        let mem = memory();
        let mut blk = Block::open(&path, false).unwrap();
        let counts = |p: Pass| (p.requests, p.bytes, p.errors);
        // A write and a read of 1 KiB each, a flush, a get-id of 20 bytes: all data counted.
        let write = submit_pass(&mut blk, &mem, 1, 0, &[(512, false), (512, false)]);
        assert_eq!(counts(write.2), (1, 1024, 0));
        let read = submit_pass(&mut blk, &mem, 0, 0, &[(1024, true)]);
        assert_eq!(counts(read.2), (1, 1024, 0));
        assert_eq!(counts(submit_pass(&mut blk, &mem, 4, 0, &[]).2), (1, 0, 0));
        assert_eq!(
            counts(submit_pass(&mut blk, &mem, 8, 0, &[(20, true)]).2),
            (1, 20, 0)
        );
        // Past the end, an unknown type, a wrong direction: errors, moving nothing.
        for (kind, sector, data) in [
            (0, 8, (512, true)),
            (77, 0, (512, true)),
            (0, 0, (512, false)),
        ] {
            assert_eq!(
                counts(submit_pass(&mut blk, &mem, kind, sector, &[data]).2),
                (1, 0, 1)
            );
        }
        let _ = std::fs::remove_file(path);
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    #[test]
    fn write_flush_read_round_trip_lands_in_the_file() {
        for batched in [true, false] {
            round_trip(batched);
        }
    }

    fn round_trip(batched: bool) {
        let path = image(8);
        let mut blk = Block::open(&path, false).unwrap();
        if !batched {
            blk = blk.without_io_uring();
        }
        assert_eq!(blk.capacity_sectors(), 8);
        let mem = memory();
        let pattern: Vec<u8> = (0..512u32).map(|i| (i * 7) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        assert_eq!(submit(&mut blk, &mem, 1, 3, &[(512, false)]), (0, 1));
        assert_eq!(submit(&mut blk, &mem, 4, 0, &[]), (0, 1));
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[3 * 512..4 * 512], &pattern[..]);
        mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            submit(&mut blk, &mem, 0, 3, &[(256, true), (256, true)]),
            (0, 513)
        );
        let mut back = vec![0u8; 512];
        mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, pattern);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn errors_are_statuses_not_crashes() {
        let path = image(4);
        let mem = memory();
        let mut blk = Block::open(&path, false).unwrap();
        // Past the end, straddling the end, misaligned length, wrong direction, unknown type.
        assert_eq!(
            submit(&mut blk, &mem, 0, 4, &[(512, true)]).0,
            VIRTIO_BLK_S_IOERR as u8
        );
        assert_eq!(
            submit(&mut blk, &mem, 1, 3, &[(1024, false)]).0,
            VIRTIO_BLK_S_IOERR as u8
        );
        assert_eq!(
            submit(&mut blk, &mem, 0, 0, &[(100, true)]).0,
            VIRTIO_BLK_S_IOERR as u8
        );
        assert_eq!(
            submit(&mut blk, &mem, 0, 0, &[(512, false)]).0,
            VIRTIO_BLK_S_IOERR as u8
        );
        assert_eq!(
            submit(&mut blk, &mem, 77, 0, &[]).0,
            VIRTIO_BLK_S_UNSUPP as u8
        );
        // GET_ID writes the serial.
        assert_eq!(submit(&mut blk, &mem, 8, 0, &[(20, true)]), (0, 21));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert!(id.starts_with(b"vibe-blk-"));
        // A read-only disk refuses writes but flushes fine.
        let mut ro = Block::open(&path, true).unwrap();
        assert_ne!(ro.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(
            submit(&mut ro, &mem, 1, 0, &[(512, false)]).0,
            VIRTIO_BLK_S_IOERR as u8
        );
        assert_eq!(submit(&mut ro, &mem, 4, 0, &[]).0, VIRTIO_BLK_S_OK as u8);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn images_must_be_whole_sectors() {
        let p = std::env::temp_dir().join(format!("vibe-blk-odd-{}.img", std::process::id()));
        std::fs::write(&p, [0u8; 1000]).unwrap();
        assert!(matches!(
            Block::open(&p, false),
            Err(Error::Size { size: 1000, .. })
        ));
        assert!(matches!(
            Block::open(Path::new("/nonexistent.img"), false),
            Err(Error::Open { .. })
        ));
        let _ = std::fs::remove_file(p);
    }

    /// Chains of header + 16 MiB of data + status each, `n` of them, in a 256-entry queue.
    fn flood(mem: &GuestMemoryMmap, n: u16) -> (MockSplitQueue<'_, GuestMemoryMmap>, Queue) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&1u32.to_le_bytes()); // OUT, sector 0
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        let raw: Vec<RawDescriptor> = (0..n)
            .flat_map(|i| {
                let base = i * 3;
                let next = VRING_DESC_F_NEXT as u16;
                [
                    SplitDescriptor::new(HDR, 16, next, base + 1),
                    SplitDescriptor::new(DATA, 16 << 20, next, base + 2),
                    SplitDescriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
                ]
            })
            .map(RawDescriptor::from)
            .collect();
        let vq = MockSplitQueue::new(mem, 1024);
        vq.add_desc_chains(&raw, 0).unwrap();
        let q = vq.create_queue().unwrap();
        (vq, q)
    }

    #[test]
    fn a_pass_stops_at_its_budget_and_asks_to_run_again() {
        let path = image(8);
        let mem = memory();
        let mut blk = Block::open(&path, true).unwrap();
        // 200 requests of 16 MiB each (refused: read-only, but parsed and answered).
        let (vq, mut q) = flood(&mem, 200);
        let pass = blk.process_queue(0, &mut q, &mem);
        assert!(pass.used && pass.more && !pass.broken, "{pass:?}");
        let first = vq.used().idx().load();
        assert!(
            first > 0 && first <= 1,
            "8 MiB budget: one 16 MiB request, got {first}"
        );
        while blk.process_queue(0, &mut q, &mem).more {}
        assert_eq!(
            vq.used().idx().load(),
            200,
            "every request answered in the end"
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn an_available_index_running_ahead_breaks_the_queue() {
        let path = image(8);
        let mem = memory();
        let mut blk = Block::open(&path, false).unwrap();
        let (vq, mut q) = flood(&mem, 1);
        vq.avail().idx().store(5000); // more than a ring's worth ahead
        let pass = blk.process_queue(0, &mut q, &mem);
        assert!(pass.broken && !pass.used, "{pass:?}");
        let _ = std::fs::remove_file(path);
    }
}
