//! Software TLB: per hart, direct mapped, one table per (translation context,
//! access kind). RAM entries store `host - vaddr` so a hit is one add; MMIO
//! pages get a tagged entry (never taken by the fast path) that only skips the
//! page walk.

pub const TLB_BITS: u32 = 8;
pub const TLB_SIZE: usize = 1 << TLB_BITS;
pub const FETCH: usize = 0;
pub const LOAD: usize = 1;
pub const STORE: usize = 2;
/// Contexts: 0 = M mode (untranslated; PMP only through locked entries),
/// 1 = S, 2 = S with SUM, 3 = U, 4 = S/U with satp Bare (untranslated, PMP
/// applies).
pub const CONTEXTS: usize = 5;
pub const TABLES: usize = 16;
const _: () = assert!(CONTEXTS * 3 <= TABLES);
/// Tag bit marking an MMIO entry (its `addend` maps vaddr to paddr instead).
pub const MMIO_TAG: u64 = 1 << 63;
pub const INVALID: u64 = u64::MAX;

#[derive(Clone, Copy)]
pub struct TlbEntry {
    /// Virtual page number (| MMIO_TAG for MMIO pages), or INVALID.
    pub tag: u64,
    /// RAM: host address - vaddr. MMIO: paddr - vaddr.
    pub addend: u64,
}

pub struct Tlb {
    /// Indexed by `ctx * 3 + kind`; 16 tables so a masked index needs no bounds check.
    pub t: [[TlbEntry; TLB_SIZE]; TABLES],
    /// OR'd into every tag (bits 52..61): a flush is one increment, and the
    /// tables are only wiped when it wraps.
    pub epoch: u64,
    /// Some entry came from a superpage: a per-page flush is then not enough.
    pub has_super: bool,
}

const EPOCH_ONE: u64 = 1 << 52;
const EPOCH_END: u64 = 1 << 62;

impl Tlb {
    pub fn new() -> Box<Self> {
        Box::new(Tlb {
            t: [[TlbEntry {
                tag: INVALID,
                addend: 0,
            }; TLB_SIZE]; TABLES],
            epoch: 0,
            has_super: false,
        })
    }
    pub fn flush(&mut self) {
        self.has_super = false;
        self.epoch += EPOCH_ONE;
        if self.epoch == EPOCH_END {
            self.epoch = 0;
            for table in self.t.iter_mut() {
                for e in table.iter_mut() {
                    e.tag = INVALID;
                }
            }
        }
    }
    /// Drops every entry for the page of `va` (sfence.vma with an address).
    pub fn flush_page(&mut self, va: u64) {
        if self.has_super {
            return self.flush();
        }
        let i = Self::index(va);
        for table in self.t.iter_mut() {
            table[i].tag = INVALID;
        }
    }
    #[inline(always)]
    pub fn index(va: u64) -> usize {
        ((va >> 12) as usize) & (TLB_SIZE - 1)
    }
}
