//! The body of the `virtio_queue` fuzz target (fuzz/fuzz_targets/), kept here
//! so a unit test can run it over a corpus on stable Rust. The input is a
//! small guest: a few control bytes, then the contents of guest RAM holding
//! descriptor tables, rings and requests. It drives the same code a device
//! worker runs (chain validation, virtio-blk request parsing and execution
//! on an in-memory disk, virtio-net tx parsing and mergeable rx delivery),
//! synchronously, so failures reproduce exactly.

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::block::device::Settings;
use crate::block::request::{execute, Bounce};
use crate::chain::{self, QueueError};
use crate::net::{parse_tx_frame, MAX_FRAME};
use crate::Mem;

const RAM: usize = 64 * 1024;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const MAX_STEPS: usize = 64;

/// An in-memory disk for fuzzing and tests.
pub struct MemDisk {
    pub data: Vec<u8>,
    pub read_only: bool,
}

impl block::BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> block::Result<()> {
        let o = usize::try_from(offset).map_err(|_| block::Error::Corrupt("offset".into()))?;
        let src = o
            .checked_add(buf.len())
            .and_then(|e| self.data.get(o..e))
            .ok_or_else(|| block::Error::Corrupt(format!("read past end at {offset}")))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> block::Result<()> {
        if self.read_only {
            return Err(block::Error::ReadOnly);
        }
        let o = usize::try_from(offset).map_err(|_| block::Error::Corrupt("offset".into()))?;
        let dst = o
            .checked_add(buf.len())
            .and_then(|e| self.data.get_mut(o..e))
            .ok_or_else(|| block::Error::Corrupt(format!("write past end at {offset}")))?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> block::Result<()> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> block::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> block::Result<()> {
        let o = usize::try_from(offset).map_err(|_| block::Error::Corrupt("offset".into()))?;
        let l = usize::try_from(len).map_err(|_| block::Error::Corrupt("len".into()))?;
        o.checked_add(l)
            .and_then(|e| self.data.get_mut(o..e))
            .ok_or_else(|| block::Error::Corrupt("zero past end".into()))?
            .fill(0);
        Ok(())
    }
    fn block_status(&mut self, offset: u64, len: u64) -> block::Result<Vec<block::Extent>> {
        Ok(vec![block::Extent {
            offset,
            length: len,
            data: true,
            zero: false,
            present: true,
            depth: 0,
            host_offset: Some(offset),
        }])
    }
}

/// What one fuzz run did (for the corpus test's sanity checks).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub served: usize,
    pub error: Option<String>,
}

/// Runs one input. Never panics on any input (that is the property fuzzed).
pub fn fuzz_virtio_queue(data: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    if data.len() < 4 {
        return out;
    }
    let (ctl, image) = data.split_at(4);
    let mem = Mem::from_ranges(&[(GuestAddress(0), RAM)]).expect("fuzz RAM");
    let n = image.len().min(RAM);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("in range");

    let size = 1u16 << (ctl[1] % 9); // 1..=256
    let Ok(mut q) = Queue::new(256) else {
        return out;
    };
    if q.try_set_size(size).is_err()
        || q.try_set_desc_table_address(GuestAddress(DESC)).is_err()
        || q.try_set_avail_ring_address(GuestAddress(AVAIL)).is_err()
        || q.try_set_used_ring_address(GuestAddress(USED)).is_err()
    {
        return out;
    }
    q.set_event_idx(ctl[2] & 1 != 0);
    q.set_ready(true);
    q.set_next_avail(u16::from(ctl[3]));
    if !q.is_valid(&mem) {
        return out;
    }
    let r = match ctl[0] % 4 {
        0 | 1 => run_block(&mut q, &mem, ctl[0] % 4 == 1, &mut out),
        2 => run_net_tx(&mut q, &mem, &mut out),
        _ => run_net_rx(&mut q, &mem, ctl[2], &mut out),
    };
    if let Err(e) = r {
        out.error = Some(e.to_string());
    }
    // What a worker does after serving: may touch the used ring again.
    let _ = q.needs_notification(&mem);
    let _ = mem.load::<u16>(GuestAddress(USED + 2), Ordering::Acquire);
    out
}

fn run_block(
    q: &mut Queue,
    mem: &Mem,
    read_only: bool,
    out: &mut Outcome,
) -> Result<(), QueueError> {
    let mut disk = MemDisk {
        data: vec![0x5a; 16 * 1024],
        read_only,
    };
    let settings = Settings {
        read_only,
        serial: *b"fuzz-serial-00000000",
        capacity_sectors: 32,
        acked: u64::MAX,
    };
    let mut bounce = Bounce::new();
    for _ in 0..MAX_STEPS {
        let Some(c) = chain::pop(q, mem)? else { break };
        let len = execute(&mut disk, &settings, &mut bounce, mem, &c)?;
        q.add_used(mem, c.head, len)?;
        out.served += 1;
    }
    Ok(())
}

fn run_net_tx(q: &mut Queue, mem: &Mem, out: &mut Outcome) -> Result<(), QueueError> {
    let mut buf = vec![0u8; MAX_FRAME];
    for _ in 0..MAX_STEPS {
        let Some(c) = chain::pop(q, mem)? else { break };
        let _ = parse_tx_frame(&mut c.reader(mem), &mut buf)?;
        q.add_used(mem, c.head, 0)?;
        out.served += 1;
    }
    Ok(())
}

fn run_net_rx(q: &mut Queue, mem: &Mem, seed: u8, out: &mut Outcome) -> Result<(), QueueError> {
    let frame: Vec<u8> = (0..1500u32 + seed as u32 * 200).map(|i| i as u8).collect();
    for _ in 0..MAX_STEPS {
        let Some(chains) = chain::pop_writable(q, mem, frame.len() as u64, q.size() as usize)?
        else {
            chain::arm_for_more(q, mem)?;
            break;
        };
        let mut off = 0;
        for c in &chains {
            let n = c.writer(mem).write(&frame[off..])?;
            off += n;
            q.add_used(mem, c.head, n as u32)?;
        }
        out.served += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(img: &mut [u8], i: usize, addr: u64, len: u32, flags: u16, next: u16) {
        let o = DESC as usize + 16 * i;
        img[o..o + 8].copy_from_slice(&addr.to_le_bytes());
        img[o + 8..o + 12].copy_from_slice(&len.to_le_bytes());
        img[o + 12..o + 14].copy_from_slice(&flags.to_le_bytes());
        img[o + 14..o + 16].copy_from_slice(&next.to_le_bytes());
    }

    fn avail(img: &mut [u8], heads: &[u16]) {
        let a = AVAIL as usize;
        img[a + 2..a + 4].copy_from_slice(&(heads.len() as u16).to_le_bytes());
        for (i, h) in heads.iter().enumerate() {
            img[a + 4 + 2 * i..a + 6 + 2 * i].copy_from_slice(&h.to_le_bytes());
        }
    }

    fn input(ctl: [u8; 4], img: &[u8]) -> Vec<u8> {
        let mut v = ctl.to_vec();
        v.extend_from_slice(img);
        v
    }

    #[test]
    fn well_formed_block_read_is_served() {
        let mut img = vec![0u8; 0x8000];
        img[0x4000..0x4010].copy_from_slice(&[0; 16]); // T_IN, sector 0
        desc(&mut img, 0, 0x4000, 16, 1, 1);
        desc(&mut img, 1, 0x5000, 512, 3, 2);
        desc(&mut img, 2, 0x6000, 1, 2, 0);
        avail(&mut img, &[0]);
        let o = fuzz_virtio_queue(&input([0, 4, 0, 0], &img));
        assert_eq!(
            o,
            Outcome {
                served: 1,
                error: None
            }
        );
    }

    #[test]
    fn looping_chain_is_an_error_not_a_hang() {
        let mut img = vec![0u8; 0x8000];
        desc(&mut img, 0, 0x4000, 16, 1, 1);
        desc(&mut img, 1, 0x4000, 16, 1, 0);
        avail(&mut img, &[0]);
        for sel in 0..4 {
            let o = fuzz_virtio_queue(&input([sel, 4, 0, 0], &img));
            assert_eq!(o.served, 0);
            assert!(o.error.unwrap().contains("loops"));
        }
    }

    /// Runs the fuzz body over a corpus: hand-made seeds with random bytes
    /// flipped, and plain random images (xorshift, fixed seed).
    #[test]
    fn corpus_never_panics() {
        let mut seeds = Vec::new();
        let mut img = vec![0u8; 0x8000];
        desc(&mut img, 0, 0x4000, 16, 1, 1);
        desc(&mut img, 1, 0x5000, 512, 3, 2);
        desc(&mut img, 2, 0x6000, 1, 2, 0);
        avail(&mut img, &[0, 0, 0]);
        for sel in 0..4 {
            seeds.push(input([sel, 4, sel, 0], &img));
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut served = 0;
        for i in 0..3000 {
            let mut v = seeds[i % seeds.len()].clone();
            if i % 3 == 0 {
                let len = 4 + (rnd() % 0x3000) as usize;
                v = (0..len).map(|_| rnd() as u8).collect();
            } else {
                for _ in 0..(1 + rnd() % 8) {
                    let p = (rnd() as usize) % 0x2100.min(v.len());
                    v[p] = rnd() as u8;
                }
            }
            served += fuzz_virtio_queue(&v).served;
        }
        assert!(served > 0, "the corpus must exercise the serving paths");
    }
}
