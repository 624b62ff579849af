//! ACLINT in the SiFive CLINT layout: MSWI (msip words at +0), MTIMER
//! (mtimecmp at +0x4000, mtime at +0xBFF8). mtime is the virtual clock; writes
//! kick the target hart so WFI sleepers re-evaluate their deadline.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use devices::BusDevice;

use crate::cpus::{Shared, MIP_MSIP};

pub struct Aclint {
    pub sh: Arc<Shared>,
}

const MSIP_END: u64 = 0x4000;
const MTIMECMP: u64 = 0x4000;
const MTIME: u64 = 0xbff8;

impl Aclint {
    /// The 64-bit register containing `offset`, as (register base, value).
    fn reg(&self, offset: u64) -> Option<(u64, u64)> {
        let n = self.sh.harts.len() as u64;
        if offset < MSIP_END {
            let h = offset / 4;
            let base = h * 4;
            return (h < n).then(|| {
                let v = self.sh.harts[h as usize].ext.load(Ordering::SeqCst) & MIP_MSIP != 0;
                (base, v as u64)
            });
        }
        if (MTIME..MTIME + 8).contains(&offset) {
            return Some((MTIME, self.sh.clock.mtime()));
        }
        if (MTIMECMP..MTIME).contains(&offset) {
            let h = (offset - MTIMECMP) / 8;
            return (h < n).then(|| {
                (
                    MTIMECMP + h * 8,
                    self.sh.harts[h as usize].mtimecmp.load(Ordering::SeqCst),
                )
            });
        }
        None
    }
}

impl BusDevice for Aclint {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some((base, v)) = self.reg(offset) {
            let shift = offset - base;
            let bytes = v.to_le_bytes();
            for (i, d) in data.iter_mut().enumerate() {
                if let Some(b) = bytes.get((shift as usize) + i) {
                    *d = *b;
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some((base, old)) = self.reg(offset) else {
            return;
        };
        let shift = (offset - base) as usize;
        let mut bytes = old.to_le_bytes();
        for (i, d) in data.iter().enumerate() {
            if let Some(b) = bytes.get_mut(shift + i) {
                *b = *d;
            }
        }
        let v = u64::from_le_bytes(bytes);
        let sh = &self.sh;
        if base < MSIP_END {
            let hs = &sh.harts[(base / 4) as usize];
            if v & 1 != 0 {
                hs.ext.fetch_or(MIP_MSIP, Ordering::SeqCst);
            } else {
                hs.ext.fetch_and(!MIP_MSIP, Ordering::SeqCst);
            }
            hs.kick();
        } else if base == MTIME {
            sh.clock.set_mtime(v);
            sh.harts.iter().for_each(|h| h.kick());
        } else {
            let hs = &sh.harts[((base - MTIMECMP) / 8) as usize];
            hs.mtimecmp.store(v, Ordering::SeqCst);
            hs.kick();
        }
    }
}
