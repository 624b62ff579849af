//! virtio-blk request framing and execution. A request is a 16-byte header
//! (type, ioprio, sector) at the front of the device-readable bytes, a
//! payload (readable for writes/discards, writable for reads/GET_ID) and one
//! status byte at the very end of the device-writable bytes. The framing is
//! taken from byte streams, not descriptor boundaries (any layout is legal).
//!
//! A chain that cannot carry a header or a status byte is a driver bug and
//! puts the device in needs-reset; everything else (out-of-range sector,
//! odd length, read-only, backend error, unknown type) is answered with a
//! status code, as a real disk would.

use block::BlockBackend;

use super::consts::*;
use super::device::{Settings, MAX_DISCARD_SECTORS};
use super::feat;
use crate::chain::{Chain, ChainReader, ChainWriter, QueueError};
use crate::Mem;

/// Bounce buffer between guest memory and the backend: data moves in
/// chunks of this size, so a request never allocates in proportion to
/// what the guest claims.
const CHUNK: usize = 256 * 1024;

pub(crate) struct Bounce(Vec<u8>);

impl Bounce {
    pub fn new() -> Self {
        Self(vec![0u8; CHUNK])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl RequestKind {
    fn from_type(t: u32) -> Self {
        match t {
            T_IN => Self::In,
            T_OUT => Self::Out,
            T_FLUSH => Self::Flush,
            T_GET_ID => Self::GetId,
            T_DISCARD => Self::Discard,
            T_WRITE_ZEROES => Self::WriteZeroes,
            t => Self::Unsupported(t),
        }
    }
}

/// The framing of one request: kind, sector, and the positioned streams.
pub struct Parsed<'a> {
    pub kind: RequestKind,
    pub sector: u64,
    pub payload: ChainReader<'a>,
    pub data: ChainWriter<'a>,
    pub status: ChainWriter<'a>,
}

/// Splits a validated chain into header, payloads and status byte.
pub fn parse_request<'a>(mem: &'a Mem, chain: &'a Chain) -> Result<Parsed<'a>, QueueError> {
    let mut r = chain.reader(mem);
    let mut hdr = [0u8; 16];
    if !r.read_exact(&mut hdr)? {
        return Err(QueueError::Malformed {
            head: chain.head,
            why: "virtio-blk header shorter than 16 bytes".into(),
        });
    }
    let mut w = chain.writer(mem);
    let status = w.split_tail(1).ok_or_else(|| QueueError::Malformed {
        head: chain.head,
        why: "virtio-blk request has no device-writable status byte".into(),
    })?;
    let t = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
    Ok(Parsed {
        kind: RequestKind::from_type(t),
        sector,
        payload: r,
        data: w,
        status,
    })
}

/// Executes one request; returns the used length (bytes written to the guest).
pub(crate) fn execute(
    backend: &mut dyn BlockBackend,
    s: &Settings,
    bounce: &mut Bounce,
    mem: &Mem,
    chain: &Chain,
) -> Result<u32, QueueError> {
    let mut p = parse_request(mem, chain)?;
    let status = match p.kind {
        RequestKind::In => read(backend, s, bounce, p.sector, &mut p.data)?,
        RequestKind::Out => write(backend, s, bounce, p.sector, &mut p.payload)?,
        RequestKind::Flush => io_status(backend.flush(), "flush"),
        RequestKind::GetId => {
            p.data.write(&s.serial)?;
            S_OK
        }
        RequestKind::Discard | RequestKind::WriteZeroes => {
            let bit = if p.kind == RequestKind::Discard {
                feat::DISCARD
            } else {
                feat::WRITE_ZEROES
            };
            if s.acked & bit == 0 || s.read_only {
                S_UNSUPP
            } else {
                discard_or_zero(backend, s, p.kind, &mut p.payload)?
            }
        }
        RequestKind::Unsupported(_) => S_UNSUPP,
    };
    p.status.write(&[status])?;
    // data + status; a chain's writable part is < 4 GiB (virtio-queue ends
    // longer walks), so this cannot truncate.
    Ok((p.data.written() + 1).min(u32::MAX as u64) as u32)
}

fn io_status<T>(r: block::Result<T>, what: &str) -> u8 {
    match r {
        Ok(_) => S_OK,
        Err(e) => {
            tracing::warn!("virtio-blk: {what} failed: {e}");
            S_IOERR
        }
    }
}

/// Byte offset of `[sector, sector + len)` if it is sector-aligned and on the disk.
fn range(s: &Settings, sector: u64, len: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR) {
        return None;
    }
    let end = sector.checked_add(len / SECTOR)?;
    (end <= s.capacity_sectors).then(|| sector * SECTOR)
}

fn read(
    backend: &mut dyn BlockBackend,
    s: &Settings,
    bounce: &mut Bounce,
    sector: u64,
    w: &mut ChainWriter<'_>,
) -> Result<u8, QueueError> {
    let len = w.remaining();
    let Some(mut off) = range(s, sector, len) else {
        return Ok(S_IOERR);
    };
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(CHUNK);
        let buf = &mut bounce.0[..n];
        if let Err(e) = backend.read_at(buf, off) {
            tracing::warn!("virtio-blk: read of {n} bytes at {off} failed: {e}");
            return Ok(S_IOERR);
        }
        w.write(buf)?;
        off += n as u64;
        left -= n as u64;
    }
    Ok(S_OK)
}

fn write(
    backend: &mut dyn BlockBackend,
    s: &Settings,
    bounce: &mut Bounce,
    sector: u64,
    r: &mut ChainReader<'_>,
) -> Result<u8, QueueError> {
    if s.read_only {
        return Ok(S_IOERR);
    }
    let len = r.remaining();
    let Some(mut off) = range(s, sector, len) else {
        return Ok(S_IOERR);
    };
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(CHUNK);
        let buf = &mut bounce.0[..n];
        r.read(buf)?;
        if let Err(e) = backend.write_at(buf, off) {
            tracing::warn!("virtio-blk: write of {n} bytes at {off} failed: {e}");
            return Ok(S_IOERR);
        }
        off += n as u64;
        left -= n as u64;
    }
    Ok(S_OK)
}

const UNMAP: u32 = 1;

fn discard_or_zero(
    backend: &mut dyn BlockBackend,
    s: &Settings,
    kind: RequestKind,
    r: &mut ChainReader<'_>,
) -> Result<u8, QueueError> {
    if r.remaining() == 0 || !r.remaining().is_multiple_of(16) {
        return Ok(S_IOERR);
    }
    while r.remaining() > 0 {
        let mut seg = [0u8; 16];
        r.read_exact(&mut seg)?;
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let num = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        // Discard has no flags; write-zeroes knows only "unmap" (a hint).
        let allowed = if kind == RequestKind::Discard {
            0
        } else {
            UNMAP
        };
        if flags & !allowed != 0 {
            return Ok(S_UNSUPP);
        }
        if num > MAX_DISCARD_SECTORS {
            return Ok(S_IOERR);
        }
        let len = num as u64 * SECTOR;
        let Some(off) = range(s, sector, len) else {
            return Ok(S_IOERR);
        };
        let res = if kind == RequestKind::Discard {
            backend.discard(off, len)
        } else {
            backend.write_zeroes(off, len)
        };
        let st = io_status(res, "discard/write-zeroes");
        if st != S_OK {
            return Ok(st);
        }
    }
    Ok(S_OK)
}
