//! Descriptor chains, validated. A device never walks guest descriptors
//! itself: [`pop`] takes the next chain off a `virtio_queue::Queue`, walks it
//! once with virtio-queue's iterator (which follows `next`/indirect links and
//! bounds each walk by the table size) and checks what that iterator cannot
//! report: a walk that stopped early (loop, too long, index out of range,
//! unreadable or nested indirect table), buffers outside guest RAM, readable
//! after writable. What survives is a list of in-RAM segments that
//! [`ChainReader`]/[`ChainWriter`] access as two byte streams through
//! vm-memory's volatile accessors.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::Mem;

/// Longest chain accepted, counting indirect descriptors (Linux never goes
/// near this; it bounds the per-chain segment list).
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// A guest-memory buffer, checked to lie entirely in RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why the driver's queue can no longer be trusted.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("chain at head {head} loops, is longer than its table, or links to a descriptor index out of range")]
    Truncated { head: u16 },
    #[error("chain at head {head} is empty (head index out of range or bad indirect table)")]
    Empty { head: u16 },
    #[error("chain at head {head} has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooLong { head: u16 },
    #[error("chain at head {head}: buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { head: u16, addr: u64, len: u32 },
    #[error("chain at head {head}: device-readable descriptor after a device-writable one")]
    ReadAfterWrite { head: u16 },
    #[error("available index jumped from {next} to {avail} (queue size {size})")]
    AvailJump { next: u16, avail: u16, size: u16 },
    #[error("chain at head {head}: {why}")]
    Malformed { head: u16, why: String },
    #[error("host backend failed: {0}")]
    Backend(String),
    #[error("guest memory access failed at {0:#x}")]
    Memory(u64),
    #[error("queue: {0}")]
    Queue(#[from] virtio_queue::Error),
}

/// One validated chain: device-readable segments, then device-writable ones.
#[derive(Debug, Clone)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<Segment>,
    pub writable: Vec<Segment>,
}

impl Chain {
    /// Walks and validates a chain.
    pub fn validate(dc: DescriptorChain<&Mem>) -> Result<Chain, QueueError> {
        let head = dc.head_index();
        let mem = dc.memory();
        let mut chain = Chain {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
        };
        let mut count = 0usize;
        let mut last_had_next = false;
        for d in dc.clone() {
            count += 1;
            if count > MAX_CHAIN_DESCRIPTORS {
                return Err(QueueError::TooLong { head });
            }
            let seg = Segment {
                addr: d.addr(),
                len: d.len(),
            };
            if seg.len > 0 && !GuestMemoryBackend::check_range(mem, seg.addr, seg.len as usize) {
                return Err(QueueError::OutOfRange {
                    head,
                    addr: seg.addr.0,
                    len: seg.len,
                });
            }
            if d.is_write_only() {
                if seg.len > 0 {
                    chain.writable.push(seg);
                }
            } else {
                if !chain.writable.is_empty() {
                    return Err(QueueError::ReadAfterWrite { head });
                }
                if seg.len > 0 {
                    chain.readable.push(seg);
                }
            }
            last_had_next = d.has_next();
        }
        // virtio-queue ends the walk silently on every error; a last
        // descriptor that still says "next" means the walk was cut short.
        if count == 0 {
            return Err(QueueError::Empty { head });
        }
        if last_had_next {
            return Err(QueueError::Truncated { head });
        }
        Ok(chain)
    }

    pub fn read_len(&self) -> u64 {
        self.readable.iter().map(|s| s.len as u64).sum()
    }

    pub fn write_len(&self) -> u64 {
        self.writable.iter().map(|s| s.len as u64).sum()
    }

    pub fn reader<'a>(&'a self, mem: &'a Mem) -> ChainReader<'a> {
        ChainReader::new(mem, &self.readable)
    }

    pub fn writer<'a>(&'a self, mem: &'a Mem) -> ChainWriter<'a> {
        ChainWriter::new(mem, &self.writable)
    }
}

/// Next available chain, or `None` when the driver has offered nothing new.
pub fn pop(queue: &mut Queue, mem: &Mem) -> Result<Option<Chain>, QueueError> {
    let next = queue.next_avail();
    let avail = queue.avail_idx(mem, Ordering::Acquire)?;
    if (avail - Wrapping(next)).0 > queue.size() {
        return Err(QueueError::AvailJump {
            next,
            avail: avail.0,
            size: queue.size(),
        });
    }
    let mut iter = queue.iter(mem)?;
    match iter.next() {
        Some(dc) => Chain::validate(dc).map(Some),
        None => Ok(None),
    }
}

/// Pops chains until `want` device-writable bytes are gathered (for
/// mergeable rx buffers). On shortage, puts them all back and returns `None`.
pub fn pop_writable(
    queue: &mut Queue,
    mem: &Mem,
    want: u64,
    max_chains: usize,
) -> Result<Option<Vec<Chain>>, QueueError> {
    let start = queue.next_avail();
    let mut chains = Vec::new();
    let mut got = 0u64;
    while got < want && chains.len() < max_chains {
        match pop(queue, mem)? {
            Some(c) => {
                got += c.write_len();
                chains.push(c);
            }
            None => break,
        }
    }
    if got < want {
        queue.set_next_avail(start);
        return Ok(None);
    }
    Ok(Some(chains))
}

/// Re-enables driver notifications such that the *next* buffer the driver
/// adds triggers one, even if some (too few) are already available: with
/// EVENT_IDX, virtio-queue sets avail_event to our position, which the
/// driver has already passed; we set it to the driver's current index.
pub fn arm_for_more(queue: &mut Queue, mem: &Mem) -> Result<(), QueueError> {
    queue.enable_notification(mem)?;
    if queue.event_idx_enabled() {
        let avail = queue.avail_idx(mem, Ordering::Acquire)?;
        let at = queue
            .used_ring()
            .checked_add(4 + 8 * u64::from(queue.size()))
            .ok_or(QueueError::Memory(queue.used_ring()))?;
        mem.store(avail.0.to_le(), GuestAddress(at), Ordering::Release)
            .map_err(|_| QueueError::Memory(at))?;
        std::sync::atomic::fence(Ordering::SeqCst);
    }
    Ok(())
}

struct Cursor<'a> {
    mem: &'a Mem,
    segs: &'a [Segment],
    idx: usize,
    off: u32,
    done: u64,
    total: u64,
}

impl<'a> Cursor<'a> {
    fn new(mem: &'a Mem, segs: &'a [Segment]) -> Self {
        Self {
            mem,
            segs,
            idx: 0,
            off: 0,
            done: 0,
            total: segs.iter().map(|s| s.len as u64).sum(),
        }
    }

    /// Visits up to `n` bytes of guest memory as (address, length) pieces.
    fn advance(
        &mut self,
        n: usize,
        mut f: impl FnMut(GuestAddress, usize) -> Result<(), QueueError>,
    ) -> Result<usize, QueueError> {
        let mut n = n.min(usize::try_from(self.total - self.done).unwrap_or(usize::MAX));
        let mut moved = 0;
        while n > 0 && self.idx < self.segs.len() {
            let seg = self.segs[self.idx];
            let take = ((seg.len - self.off) as usize).min(n);
            f(GuestAddress(seg.addr.0 + self.off as u64), take)?;
            self.off += take as u32;
            if self.off == seg.len {
                self.idx += 1;
                self.off = 0;
            }
            n -= take;
            moved += take;
        }
        self.done += moved as u64;
        Ok(moved)
    }
}

/// The device-readable bytes of a chain, front to back.
pub struct ChainReader<'a>(Cursor<'a>);

impl<'a> ChainReader<'a> {
    pub fn new(mem: &'a Mem, segs: &'a [Segment]) -> Self {
        Self(Cursor::new(mem, segs))
    }

    pub fn remaining(&self) -> u64 {
        self.0.total - self.0.done
    }

    /// Reads as much as fits in `buf`; returns the count.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, QueueError> {
        let mem = self.0.mem;
        let mut pos = 0;
        self.0.advance(buf.len(), |addr, len| {
            mem.read_slice(&mut buf[pos..pos + len], addr)
                .map_err(|_| QueueError::Memory(addr.0))?;
            pos += len;
            Ok(())
        })
    }

    /// Reads exactly `buf.len()` bytes, or returns false (nothing guaranteed).
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<bool, QueueError> {
        Ok(self.read(buf)? == buf.len())
    }

    pub fn read_obj<T: ByteValued + Default>(&mut self) -> Result<Option<T>, QueueError> {
        let mut v = T::default();
        Ok(self.read_exact(v.as_mut_slice())?.then_some(v))
    }

    pub fn skip(&mut self, n: usize) -> Result<usize, QueueError> {
        self.0.advance(n, |_, _| Ok(()))
    }
}

/// The device-writable bytes of a chain, front to back.
pub struct ChainWriter<'a>(Cursor<'a>);

impl<'a> ChainWriter<'a> {
    pub fn new(mem: &'a Mem, segs: &'a [Segment]) -> Self {
        Self(Cursor::new(mem, segs))
    }

    pub fn remaining(&self) -> u64 {
        self.0.total - self.0.done
    }

    pub fn written(&self) -> u64 {
        self.0.done
    }

    /// Writes as much of `buf` as fits; returns the count.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, QueueError> {
        let mem = self.0.mem;
        let mut pos = 0;
        self.0.advance(buf.len(), |addr, len| {
            mem.write_slice(&buf[pos..pos + len], addr)
                .map_err(|_| QueueError::Memory(addr.0))?;
            pos += len;
            Ok(())
        })
    }

    pub fn skip(&mut self, n: usize) -> Result<usize, QueueError> {
        self.0.advance(n, |_, _| Ok(()))
    }

    /// Splits off the last `n` bytes (e.g. a virtio-blk status byte) as a
    /// separate writer; `self` keeps the rest. `None` if there are fewer.
    pub fn split_tail(&mut self, n: u64) -> Option<ChainWriter<'a>> {
        let remaining = self.remaining();
        if remaining < n {
            return None;
        }
        let mut tail = ChainWriter(Cursor {
            mem: self.0.mem,
            segs: self.0.segs,
            idx: self.0.idx,
            off: self.0.off,
            done: self.0.done,
            total: self.0.total,
        });
        let keep = remaining - n;
        // Moving the tail cursor only walks segment lengths.
        tail.skip(keep as usize).ok()?;
        tail.0.total = tail.0.done + n;
        self.0.total -= n;
        Some(tail)
    }
}
