//! Parsing a virtio-blk request from its descriptor chain, apart from executing it.
//!
//! The parser is pure: it sees the descriptors (address, length, direction) and a way to read
//! the 16-byte header, and returns a validated [`Request`] or why the chain is malformed. It
//! is unit-tested and fuzzed without a VM or a file.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

pub const SECTOR_SIZE: u64 = 512;
pub const HEADER_SIZE: u32 = 16;
/// The largest transfer one request may ask for; bigger ones are refused as malformed.
pub const MAX_DATA_BYTES: u64 = 16 << 20;

/// One descriptor as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (the driver reads what the device puts there).
    pub write_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    Flush,
    GetId,
    /// A type this device does not implement: answered with UNSUPP.
    Unsupported(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub kind: Kind,
    pub sector: u64,
    /// Data buffers, in order (zero-length ones included: they move nothing).
    pub data: &'a [Desc],
    /// Total length of `data`.
    pub data_len: u64,
    /// Guest address of the one-byte status.
    pub status: u64,
}

/// Why a chain is not a request. When the status byte could be located the device still
/// answers (with IOERR); otherwise the chain is returned unused-but-acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Empty,
    /// The header descriptor is device-writable or shorter than 16 bytes.
    BadHeader,
    /// The header could not be read from guest memory.
    UnreadableHeader,
    /// The last descriptor is not a writable byte for the status.
    NoStatus,
    /// A data buffer goes the wrong way for the request type.
    WrongDirection {
        status: u64,
    },
    /// Read/write data that is not a whole number of sectors, or too much of it.
    BadLength {
        status: u64,
    },
}

impl ParseError {
    /// Where to write IOERR, if the status byte is known.
    pub fn status_addr(&self) -> Option<u64> {
        match self {
            ParseError::WrongDirection { status } | ParseError::BadLength { status } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// Parses a chain: header, then data buffers, then the status byte.
pub fn parse<'a>(
    descs: &'a [Desc],
    read_header: impl FnOnce(u64) -> Option<[u8; HEADER_SIZE as usize]>,
) -> Result<Request<'a>, ParseError> {
    let (header, rest) = descs.split_first().ok_or(ParseError::Empty)?;
    if header.write_only || header.len < HEADER_SIZE {
        return Err(ParseError::BadHeader);
    }
    let (status, data) = rest.split_last().ok_or(ParseError::NoStatus)?;
    if !status.write_only || status.len < 1 {
        return Err(ParseError::NoStatus);
    }
    let h = read_header(header.addr).ok_or(ParseError::UnreadableHeader)?;
    let kind_raw = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    let kind = match kind_raw {
        VIRTIO_BLK_T_IN => Kind::In,
        VIRTIO_BLK_T_OUT => Kind::Out,
        VIRTIO_BLK_T_FLUSH => Kind::Flush,
        VIRTIO_BLK_T_GET_ID => Kind::GetId,
        other => Kind::Unsupported(other),
    };
    let status = status.addr;
    let data_len: u64 = data.iter().map(|d| u64::from(d.len)).sum();
    let device_writes = match kind {
        Kind::In | Kind::GetId => Some(true),
        Kind::Out => Some(false),
        Kind::Flush | Kind::Unsupported(_) => None,
    };
    if let Some(w) = device_writes {
        if data.iter().any(|d| d.len > 0 && d.write_only != w) {
            return Err(ParseError::WrongDirection { status });
        }
    }
    let bad_length = match kind {
        Kind::In | Kind::Out => !data_len.is_multiple_of(SECTOR_SIZE) || data_len > MAX_DATA_BYTES,
        Kind::GetId => data_len < u64::from(VIRTIO_BLK_ID_BYTES),
        Kind::Flush | Kind::Unsupported(_) => false,
    };
    if bad_length {
        return Err(ParseError::BadLength { status });
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}

impl Request<'_> {
    /// Whether the request's sectors lie inside a disk of `capacity` sectors.
    pub fn in_range(&self, capacity: u64) -> bool {
        self.sector
            .checked_add(self.data_len / SECTOR_SIZE)
            .is_some_and(|end| end <= capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn d(addr: u64, len: u32, write_only: bool) -> Desc {
        Desc {
            addr,
            len,
            write_only,
        }
    }

    fn header(kind: u32, sector: u64) -> impl FnOnce(u64) -> Option<[u8; 16]> {
        move |_| {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            Some(h)
        }
    }

    #[test]
    fn well_formed_requests() {
        // `parse` borrows the descriptors, so each list lives in a local.
        let c = [d(0, 16, false), d(0x100, 512, true), d(0x400, 1, true)];
        let r = parse(&c, header(0, 7)).unwrap();
        assert_eq!(
            (r.kind, r.sector, r.data_len, r.status),
            (Kind::In, 7, 512, 0x400)
        );
        let c = [
            d(0, 16, false),
            d(0x100, 1024, false),
            d(0x600, 512, false),
            d(0x900, 1, true),
        ];
        let r = parse(&c, header(1, 2)).unwrap();
        assert_eq!((r.kind, r.data.len(), r.data_len), (Kind::Out, 2, 1536));
        assert!(r.in_range(5) && !r.in_range(4));
        let c = [d(0, 16, false), d(0x900, 1, true)];
        assert_eq!(parse(&c, header(4, 0)).unwrap().kind, Kind::Flush);
        assert_eq!(
            parse(&c, header(99, 0)).unwrap().kind,
            Kind::Unsupported(99)
        );
        let c = [d(0, 16, false), d(0x100, 20, true), d(0x900, 1, true)];
        assert_eq!(parse(&c, header(8, 0)).unwrap().kind, Kind::GetId);
        // Zero-length data buffers move nothing, whatever their direction.
        let c = [
            d(0, 16, false),
            d(0x100, 0, false),
            d(0x200, 512, true),
            d(0x900, 1, true),
        ];
        assert_eq!(parse(&c, header(0, 0)).unwrap().data_len, 512);
    }

    #[test]
    fn malformed_chains_are_refused() {
        assert_eq!(parse(&[], header(0, 0)), Err(ParseError::Empty));
        assert_eq!(
            parse(&[d(0, 8, false), d(1, 1, true)], header(0, 0)),
            Err(ParseError::BadHeader)
        );
        assert_eq!(
            parse(&[d(0, 16, true), d(1, 1, true)], header(0, 0)),
            Err(ParseError::BadHeader)
        );
        assert_eq!(
            parse(&[d(0, 16, false)], header(0, 0)),
            Err(ParseError::NoStatus)
        );
        assert_eq!(
            parse(&[d(0, 16, false), d(1, 1, false)], header(0, 0)),
            Err(ParseError::NoStatus)
        );
        assert_eq!(
            parse(&[d(0, 16, false), d(1, 1, true)], |_| None),
            Err(ParseError::UnreadableHeader)
        );
        // A read whose buffer the device may not write.
        let e = parse(
            &[d(0, 16, false), d(0x100, 512, false), d(9, 1, true)],
            header(0, 0),
        )
        .map(|_| ());
        assert_eq!(e, Err(ParseError::WrongDirection { status: 9 }));
        // Not whole sectors.
        let e = parse(
            &[d(0, 16, false), d(0x100, 100, true), d(9, 1, true)],
            header(0, 0),
        )
        .map(|_| ());
        assert_eq!(e, Err(ParseError::BadLength { status: 9 }));
        // Sector arithmetic that would overflow is out of range, not a panic.
        let c = [d(0, 16, false), d(0x100, 512, true), d(9, 1, true)];
        let r = parse(&c, header(0, u64::MAX)).unwrap();
        assert!(!r.in_range(u64::MAX));
    }
}
