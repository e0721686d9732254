//! The back-end benchmark on Linux (see `backends.rs`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use devices::virtio::block::Block;
use devices::virtio::net::{Net, Tap};
use devices::virtio::VirtioDevice;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// 1 GiB; `VIBE_BENCH_IMAGE_MB` makes it smaller (for profiling under valgrind).
fn image_size() -> u64 {
    std::env::var("VIBE_BENCH_IMAGE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(1 << 30, |mb| mb << 20)
}
const QUEUE_SIZE: u16 = 256;
/// Requests per batch: a third of the descriptor table (three descriptors each).
const BATCH: u16 = 64;
const HDR_BASE: u64 = 0x10_0000;
const STATUS_BASE: u64 = 0x20_0000;
const DATA_BASE: u64 = 0x100_0000;

/// A little xorshift so both sides use the same "random" offsets.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A driver's side of one split queue, with its rings at fixed addresses. (Not
/// `virtio_queue::mock::MockSplitQueue`: in 0.18 it lays the used ring over the upper half of
/// the available ring.)
struct Driver<'a> {
    queue: Queue,
    mem: &'a GuestMemoryMmap,
    avail: u16,
}

const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        Driver {
            queue,
            mem,
            avail: 0,
        }
    }

    /// Puts one chain of (addr, len, device-writable) descriptors at `slot`.
    fn chain(&mut self, slot: u16, descs: &[(u64, u32, bool)]) {
        let first = slot * 3;
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            let last = i + 1 == descs.len();
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { first + i as u16 + 1 };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            let at = DESC_TABLE + u64::from(first + i as u16) * 16;
            self.mem.write_slice(&d, GuestAddress(at)).unwrap();
        }
        let at = AVAIL_RING + 4 + u64::from(self.avail % QUEUE_SIZE) * 2;
        self.mem.write_obj(first, GuestAddress(at)).unwrap();
        self.avail = self.avail.wrapping_add(1);
    }

    fn publish(&self) {
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    fn process(&mut self, dev: &mut dyn VirtioDevice, index: usize) {
        let before = self.queue.next_used();
        dev.process_queue(index, &mut self.queue, self.mem);
        let done = self.queue.next_used().wrapping_sub(before);
        assert_eq!(done, BATCH, "only {done} of {BATCH} requests were used");
    }
}

fn blk_header(mem: &GuestMemoryMmap, slot: u16, kind: u32, sector: u64) -> u64 {
    let addr = HDR_BASE + u64::from(slot) * 16;
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
    addr
}

/// Drops the image's pages from the page cache, so reads go to the disk.
fn evict(path: &std::path::Path) {
    let f = File::open(path).unwrap();
    // SAFETY: fadvise on our own descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Times `ops` requests of `size` bytes through the device, and the same through pread/pwrite.
/// With `cold`, the image is evicted from the page cache before each side.
fn block_case(
    name: &str,
    path: &std::path::Path,
    ops: u64,
    size: u32,
    (write, random, cold): (bool, bool, bool),
) -> f64 {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let mut blk = Block::open(path, false).unwrap();
    if std::env::var_os("VIBE_BENCH_NO_IO_URING").is_some() {
        blk = blk.without_io_uring();
    }
    let mut drv = Driver::new(&mem);
    let sectors = image_size() / 512 - u64::from(size / 512);
    let offset = |i: u64, rng: &mut Rng| {
        if random {
            (rng.next() % sectors) & !7
        } else {
            (i * u64::from(size / 512)) % sectors
        }
    };
    let kind = if write { 1 } else { 0 };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let offsets: Vec<u64> = (0..ops).map(|i| offset(i, &mut rng)).collect();
    let file = File::options().read(true).write(true).open(path).unwrap();
    // The same destination footprint as the device path: BATCH buffers used in turn.
    let mut bufs = vec![0u8; size as usize * BATCH as usize];

    // The two sides take turns, a tenth of the requests each time (cold: one turn each, the
    // cache emptied before), so drift on the host affects both alike. Only the device's work
    // is timed on its side; filling the rings is the guest's.
    let rounds = if cold { 1 } else { 10 };
    let per_round = (ops / rounds).next_multiple_of(u64::from(BATCH));
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0u64;
    while done < ops {
        let end = (done + per_round).min(ops);
        if cold {
            evict(path);
        }
        let mut i = done;
        while i < end {
            for slot in 0..BATCH {
                let hdr = blk_header(&mem, slot, kind, offsets[(i + u64::from(slot)) as usize]);
                let data = DATA_BASE + u64::from(slot) * u64::from(size);
                let status = STATUS_BASE + u64::from(slot);
                drv.chain(
                    slot,
                    &[(hdr, 16, false), (data, size, !write), (status, 1, true)],
                );
            }
            drv.publish();
            let t = Instant::now();
            drv.process(&mut blk, 0);
            ours += t.elapsed();
            i += u64::from(BATCH);
        }
        if cold {
            evict(path);
        }
        let t = Instant::now();
        for i in done..end {
            // Half the run away from the device's: not the pages whose page-cache bookkeeping it
            // just pulled into the CPU caches (the same ones made the raw side up to ~10% faster
            // at 4 KiB), and for random offsets an equally random sample.
            let off = (offsets[((i + ops / 2) % ops) as usize] * 512) as i64;
            let at = (i % u64::from(BATCH)) as usize * size as usize;
            let buf = &mut bufs[at..at + size as usize];
            // SAFETY: pread/pwrite into or from our own buffer.
            let n = unsafe {
                if write {
                    libc::pwrite(file.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off)
                } else {
                    libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off)
                }
            };
            assert_eq!(n, size as isize);
        }
        raw += t.elapsed();
        done = end;
    }
    // Every request must have been used, and the last batch's succeeded, or the timing means
    // nothing.
    assert_eq!(
        drv.queue.next_used(),
        ops as u16,
        "{name}: not every request was used"
    );
    let mut statuses = [0xffu8; BATCH as usize];
    mem.read_slice(&mut statuses, GuestAddress(STATUS_BASE))
        .unwrap();
    assert!(
        statuses.iter().all(|&s| s == 0),
        "{name}: statuses {statuses:?}"
    );
    report(name, ops, u64::from(size), ours, raw)
}

fn report(name: &str, ops: u64, size: u64, ours: Duration, raw: Duration) -> f64 {
    let rate = |d: Duration| ops as f64 / d.as_secs_f64();
    let ratio = rate(ours) / rate(raw);
    println!(
        "{name:<34} {:>10.0} ops/s {:>8.1} MB/s   raw {:>10.0} ops/s   ours/raw {ratio:.2}",
        rate(ours),
        rate(ours) * size as f64 / 1e6,
        rate(raw)
    );
    ratio
}

fn net_case() {
    let name = format!("vibeb{}", std::process::id() % 100_000);
    let ok = Command::new("ip")
        .args(["tuntap", "add", &name, "mode", "tap"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("virtio-net: SKIPPED (cannot create a TAP; needs CAP_NET_ADMIN)");
        return;
    }
    let _ = Command::new("ip")
        .args(["link", "set", &name, "up"])
        .status();
    let frames: u64 = 200_000;
    let frame = {
        let mut f = vec![0u8; 12 + 64];
        f[12..18].fill(0xff);
        f[24..26].copy_from_slice(&0x88b5u16.to_be_bytes());
        f
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    mem.write_slice(&frame, GuestAddress(DATA_BASE)).unwrap();
    let mut net = Net::new(
        Box::new(Tap::open(&name).unwrap()),
        [0x52, 0x54, 0, 0, 0, 1],
    );
    let mut drv = Driver::new(&mem);
    let mut ours = Duration::ZERO;
    let mut i = 0;
    while i < frames {
        for slot in 0..BATCH {
            drv.chain(slot, &[(DATA_BASE, frame.len() as u32, false)]);
        }
        drv.publish();
        let t = Instant::now();
        drv.process(&mut net, 1);
        ours += t.elapsed();
        i += u64::from(BATCH);
    }
    drop(net);
    let tap = Tap::open(&name).unwrap();
    let t = Instant::now();
    for _ in 0..frames {
        tap.write_frame(&frame).unwrap();
    }
    let raw = t.elapsed();
    report("virtio-net tx 64 B frames", frames, 64, ours, raw);
    let _ = Command::new("ip").args(["link", "del", &name]).status();
}

pub fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let path = std::env::temp_dir().join(format!("vibe-bench-{}.img", std::process::id()));
    {
        // Real data, not a sparse file, so reads copy pages like a real disk image in cache.
        let f = File::create(&path).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        for _ in 0..(image_size() >> 20) {
            w.write_all(&chunk).unwrap();
        }
    }
    println!("1 GiB image; in each case the device path and the raw syscalls on the same file take turns");
    println!("(cached: image in the page cache; cold: evicted before each side)");
    let batched = Block::open(&path, false).is_ok_and(|b| b.batched_io())
        && std::env::var_os("VIBE_BENCH_NO_IO_URING").is_none();
    println!(
        "device transfers: {}\n",
        if batched {
            "cached reads inline (RWF_NOWAIT probes; pread once the file is hot), the rest batched through io_uring"
        } else {
            "pread/pwrite per segment"
        }
    );
    if std::env::var_os("VIBE_BENCH_ONLY_4K").is_some() {
        block_case(
            "virtio-blk 4 KiB random read, cached",
            &path,
            49_984,
            4096,
            (false, true, false),
        );
        let _ = std::fs::remove_file(&path);
        return;
    }
    let hot = block_case(
        "virtio-blk 4 KiB random read, cached",
        &path,
        200_000,
        4096,
        (false, true, false),
    );
    block_case(
        "virtio-blk 128 KiB seq read, cached",
        &path,
        16_384,
        128 << 10,
        (false, false, false),
    );
    block_case(
        "virtio-blk 128 KiB seq write, cached",
        &path,
        8_192,
        128 << 10,
        (true, false, false),
    );
    // Last: it empties the page cache of the image.
    let cold = block_case(
        "virtio-blk 4 KiB random read, cold",
        &path,
        4_096,
        4096,
        (false, true, true),
    );
    net_case();
    let _ = std::fs::remove_file(&path);
    println!("\n4 KiB random read, ours/raw: cached {hot:.2}, cold {cold:.2} (target >= 0.90)");
}
