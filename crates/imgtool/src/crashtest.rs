//! The crash test's workload (`ferro img __crash-writer IMAGE SEED LOG`),
//! not a qemu-img command. It writes pseudo-random data at pseudo-random
//! offsets, flushing now and then; after each flush returns it appends the
//! number of writes the flush covered to LOG (fsync'd) and prints
//! "flushed N" on stdout. The test kills it with SIGKILL at some point and
//! replays the same sequence (it is a pure function of SEED) to know what
//! must be on disk: every write before the last logged flush, except bytes
//! that a later write (possibly in flight at the kill) also covers.

use std::io::Write;
use std::path::Path;

use block::{BlockBackend, Format, Image, OpenOptions};

use crate::{block_text, CmdResult, Ctx, Fail};

/// splitmix64: small, deterministic, no dependency.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// One write of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub seq: u64,
    pub offset: u64,
    pub len: u64,
    /// Seed of the data bytes.
    pub data_seed: u64,
    /// Flush right after this write.
    pub flush_after: bool,
}

/// The workload's `n`-th… ops, for an image of `size` bytes.
pub struct Workload {
    rng: Rng,
    size: u64,
    seq: u64,
}

impl Workload {
    pub fn new(seed: u64, size: u64) -> Workload {
        Workload {
            rng: Rng(seed),
            size,
            seq: 0,
        }
    }
}

impl Iterator for Workload {
    type Item = Op;
    fn next(&mut self) -> Option<Op> {
        let sectors = self.size / 512;
        let max = if self.rng.below(4) == 0 { 512 } else { 16 };
        let len_sectors = 1 + self.rng.below(max);
        let len_sectors = len_sectors.min(sectors);
        let offset = self.rng.below(sectors - len_sectors + 1) * 512;
        let op = Op {
            seq: self.seq,
            offset,
            len: len_sectors * 512,
            data_seed: self.rng.next_u64(),
            flush_after: self.rng.below(6) == 0,
        };
        self.seq += 1;
        Some(op)
    }
}

/// The bytes of `op` (a pure function of its seed).
pub fn op_data(op: &Op) -> Vec<u8> {
    let mut r = Rng(op.data_seed);
    let mut v = Vec::with_capacity(op.len as usize + 8);
    while (v.len() as u64) < op.len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(op.len as usize);
    v
}

pub(crate) fn writer(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let [image, seed, log] = args else {
        return Err(Fail::Usage("usage: __crash-writer IMAGE SEED LOG".into()));
    };
    let seed: u64 = seed.parse().map_err(|_| Fail::msg("bad seed"))?;
    let mut img = Image::open(
        Path::new(image),
        &OpenOptions {
            format: Some(Format::Qcow2),
            ..Default::default()
        },
    )
    .map_err(|e| Fail::msg(crate::open_error(image, &e)))?;
    let mut logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Fail::msg(format!("{log}: {e}")))?;
    let size = img.size();
    let e = |e: block::Error| Fail::msg(block_text(&e));
    for op in Workload::new(seed, size) {
        img.write_at(&op_data(&op), op.offset).map_err(e)?;
        if op.flush_after {
            img.flush().map_err(e)?;
            let done = op.seq + 1;
            // One write(2), so a kill cannot leave half a number.
            logf.write_all(format!("{done}\n").as_bytes())
                .map_err(|er| Fail::msg(er.to_string()))?;
            logf.sync_all().map_err(|er| Fail::msg(er.to_string()))?;
            let _ = writeln!(ctx.out, "flushed {done}");
            let _ = ctx.out.flush();
        }
    }
    Ok(0)
}

/// What the image must contain after a crash: for each byte, `Some(v)` when
/// it is known, `None` when a write that may have been in flight covers it.
/// `flushed` is the last count in the log; the writer cannot have gone past
/// the next flush point, since it logs each flush before writing on.
pub fn expected_image(seed: u64, size: u64, flushed: u64) -> Vec<Option<u8>> {
    let mut img = vec![Some(0u8); size as usize];
    let mut wl = Workload::new(seed, size);
    for op in wl.by_ref().take(flushed as usize) {
        let d = op_data(&op);
        for (i, b) in d.into_iter().enumerate() {
            img[op.offset as usize + i] = Some(b);
        }
    }
    for op in wl {
        for b in &mut img[op.offset as usize..(op.offset + op.len) as usize] {
            *b = None;
        }
        if op.flush_after {
            break;
        }
    }
    img
}
