//! Guest RAM in a snapshot: written region after region into one plain file (pages of zeros
//! left as holes, so a mostly empty guest makes a small file), and mapped back either
//! copy-on-write (`MAP_PRIVATE`: nothing is read until the guest touches it) or read whole.

use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use super::{MemoryMode, MemoryRegion, SnapshotError};

const PAGE: usize = 4096;
/// Read and written this much at a time.
const CHUNK: usize = 1 << 20;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    super::io_err(op, path)
}

/// Writes every region of `mem` to a new file at `path`; returns where each one went.
pub fn write(mem: &GuestMemoryMmap, path: &Path) -> Result<Vec<MemoryRegion>, SnapshotError> {
    let f = super::create_fresh(path)?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for region in mem.iter() {
        let (gpa, size) = (region.start_addr().0, region.len());
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(CHUNK as u64) as usize;
            mem.read_slice(&mut buf[..n], GuestAddress(gpa + done))
                .map_err(|e| SnapshotError::Io {
                    op: "read guest memory for",
                    path: path.into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let at = offset + done + (i * PAGE) as u64;
                    f.write_all_at(page, at).map_err(io_err("write", path))?;
                }
            }
            done += n as u64;
        }
        regions.push(MemoryRegion { gpa, size, offset });
        offset += size;
    }
    // Trailing zero pages: the length makes them holes too.
    f.set_len(offset).map_err(io_err("size", path))?;
    f.sync_all().map_err(io_err("sync", path))?;
    Ok(regions)
}

/// Maps the memory file at `path` as guest RAM laid out as `regions` say.
pub fn map(
    path: &Path,
    regions: &[MemoryRegion],
    mode: MemoryMode,
) -> Result<GuestMemoryMmap, SnapshotError> {
    let f = super::open_regular(path)?;
    let len = f.metadata().map_err(io_err("stat", path))?.len();
    let end = regions.last().map_or(0, |r| r.offset + r.size);
    if len < end {
        return Err(SnapshotError::Corrupt(format!(
            "{} has {len} bytes, the regions need {end}",
            path.display()
        )));
    }
    let bad = |e: String| SnapshotError::Io {
        op: "map guest memory from",
        path: path.into(),
        source: std::io::Error::other(e),
    };
    match mode {
        MemoryMode::Private => {
            let mut mapped = Vec::with_capacity(regions.len());
            for r in regions {
                let file = f.try_clone().map_err(io_err("dup", path))?;
                let mmap = MmapRegionBuilder::new(r.size as usize)
                    .with_file_offset(FileOffset::new(file, r.offset))
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                let region = GuestRegionMmap::new(mmap, GuestAddress(r.gpa))
                    .ok_or_else(|| bad(format!("region {r:?} wraps around")))?;
                mapped.push(region);
            }
            GuestMemoryMmap::from_regions(mapped).map_err(|e| bad(e.to_string()))
        }
        MemoryMode::Copy => {
            let ranges: Vec<(GuestAddress, usize)> = regions
                .iter()
                .map(|r| (GuestAddress(r.gpa), r.size as usize))
                .collect();
            let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| bad(e.to_string()))?;
            let mut buf = vec![0u8; CHUNK];
            for r in regions {
                let mut done = 0u64;
                while done < r.size {
                    let n = (r.size - done).min(CHUNK as u64) as usize;
                    f.read_exact_at(&mut buf[..n], r.offset + done)
                        .map_err(io_err("read", path))?;
                    mem.write_slice(&buf[..n], GuestAddress(r.gpa + done))
                        .map_err(|e| bad(e.to_string()))?;
                    done += n as u64;
                }
            }
            Ok(mem)
        }
    }
}
