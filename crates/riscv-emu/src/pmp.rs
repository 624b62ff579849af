//! Physical memory protection. The pmpcfg/pmpaddr CSRs (64 entries,
//! 4-byte granularity) are compiled into a short list of active rules on
//! every write, and checked when a TLB entry is filled, never on the hot
//! path: a page whose whole 4 KiB share one verdict gets a TLB entry as
//! before (a write to a PMP CSR flushes the TLB); a page split by a rule
//! boundary gets none, so each access to it is checked exactly.
//! S and U accesses need a matching rule that grants them; M accesses are
//! restricted only by locked rules. Page-table walks are checked as S-mode
//! reads. Instruction fetch is checked where a block is entered (blocks
//! never leave their page), so a rule boundary inside a page is honoured
//! for data accesses only.

use crate::hart::Hart;
use crate::tlb::{FETCH, LOAD};

const R: u8 = 1;
const W: u8 = 2;
const X: u8 = 4;
const LOCK: u8 = 0x80;

/// One active entry: bytes [lo, hi) with its R/W/X bits.
#[derive(Clone, Copy, Debug)]
pub struct PmpRule {
    lo: u64,
    hi: u64,
    perm: u8,
    locked: bool,
}

/// A page's verdict for one access kind and privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageVerdict {
    Allow,
    Deny,
    /// A rule boundary splits the page: check each access.
    Split,
}

fn need(kind: usize) -> u8 {
    match kind {
        FETCH => X,
        LOAD => R,
        _ => W,
    }
}

/// Compiles the CSRs into rules, in priority (index) order.
pub fn compile(cfg: &[u64; 8], addr: &[u64; 64]) -> Vec<PmpRule> {
    let mut rules = Vec::new();
    for i in 0..64 {
        let c = ((cfg[i / 8] >> (8 * (i % 8))) & 0xff) as u8;
        let a = addr[i];
        let (lo, hi) = match (c >> 3) & 3 {
            0 => continue,
            // TOR: [pmpaddr[i-1], pmpaddr[i]) in 4-byte units.
            1 => (if i == 0 { 0 } else { addr[i - 1] << 2 }, a << 2),
            2 => (a << 2, (a << 2) + 4),
            _ => {
                // NAPOT: t trailing ones encode a 2^(t+3)-byte region.
                // (pmpaddr holds 54 bits, so t <= 54 and the size fits.)
                let size = 1u64 << (a.trailing_ones().min(54) + 3);
                let lo = (a << 2) & !(size - 1);
                (lo, lo.saturating_add(size))
            }
        };
        // An empty TOR range matches nothing.
        if lo < hi {
            rules.push(PmpRule {
                lo,
                hi,
                perm: c & (R | W | X),
                locked: c & LOCK != 0,
            });
        }
    }
    rules
}

impl Hart {
    /// Recompiles the rules after a PMP CSR write and drops every
    /// translation made under the old ones.
    pub fn pmp_changed(&mut self) {
        self.pmp = compile(&self.pmpcfg, &self.pmpaddr);
        self.pmp_locked = self.pmp.iter().any(|r| r.locked);
        self.flush_tlb();
    }

    /// May [pa, pa+len) be accessed for `kind` (M mode when `machine`)?
    pub fn pmp_ok(&self, pa: u64, len: u64, kind: usize, machine: bool) -> bool {
        let end = pa.saturating_add(len);
        for r in &self.pmp {
            if pa < r.hi && end > r.lo {
                // The lowest-numbered rule matching any byte decides; it
                // must cover every byte.
                if pa < r.lo || end > r.hi {
                    return false;
                }
                return (machine && !r.locked) || r.perm & need(kind) != 0;
            }
        }
        machine
    }

    /// The verdict for the whole 4 KiB page at `page`.
    pub fn pmp_page(&self, page: u64, kind: usize, machine: bool) -> PageVerdict {
        let end = page + 0x1000;
        for r in &self.pmp {
            if page < r.hi && end > r.lo {
                if page < r.lo || end > r.hi {
                    return PageVerdict::Split;
                }
                return if (machine && !r.locked) || r.perm & need(kind) != 0 {
                    PageVerdict::Allow
                } else {
                    PageVerdict::Deny
                };
            }
        }
        if machine {
            PageVerdict::Allow
        } else {
            PageVerdict::Deny
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn napot_tor_na4_ranges() {
        let mut cfg = [0u64; 8];
        let mut addr = [0u64; 64];
        // 0: NAPOT 4 KiB at 0x8000_0000, R only.
        addr[0] = (0x8000_0000 >> 2) | 0x1ff;
        // 1: TOR [0x8000_0000, 0x9000_0000) RW, locked.
        addr[1] = 0x9000_0000 >> 2;
        // 2: NA4 at 0x1000, X.
        addr[2] = 0x1000 >> 2;
        // 3: NAPOT everything, RWX.
        addr[3] = (1 << 54) - 1;
        cfg[0] = 0x19 | (0x8b << 8) | (0x14 << 16) | (0x1f << 24);
        let r = compile(&cfg, &addr);
        let got: Vec<(u64, u64, u8, bool)> =
            r.iter().map(|r| (r.lo, r.hi, r.perm, r.locked)).collect();
        assert_eq!(
            got,
            vec![
                (0x8000_0000, 0x8000_1000, 1, false),
                // TOR takes pmpaddr[0] as is, NAPOT low bits included.
                (0x8000_07fc, 0x9000_0000, 3, true),
                (0x1000, 0x1004, 4, false),
                (0, 1 << 57, 7, false),
            ]
        );
    }
}
