//! One hart: architectural state, the decoded-block cache and the run loop.
//! Interrupts, timers and exit requests are looked at between blocks only,
//! when the instruction budget runs out or another thread flagged attention.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::cpus::{Shared, PAGE_CODE};
use crate::decode::{decode16, decode32, insn_len, Insn, Op};
use crate::tlb::Tlb;
use crate::trap::Exc;
use crate::{Mode, SystemBus};

/// Instructions between looks at the clock (timer interrupts).
const BUDGET: i64 = 4096;
/// Longest decoded block.
const MAX_BLOCK: usize = 64;
const CACHE_BITS: u32 = 16;

struct NullBus;
impl SystemBus for NullBus {
    fn load(&self, _: usize, _: u64, _: u8) -> Option<u64> {
        None
    }
    fn store(&self, _: usize, _: u64, _: u8, _: u64) -> bool {
        false
    }
}

// SAFETY: the raw `page_flags` pointer targets atomics inside the Arc<Shared>
// the hart owns a reference to; moving the hart to its thread is fine.
unsafe impl Send for Hart {}

pub struct Hart {
    pub id: usize,
    /// x0..x31, plus x32: the sink that decoded writes to x0 land in. Sized 256 so
    /// that u8 register indices need no bounds check.
    pub x: [u64; 256],
    pub f: [u64; 32],
    pub pc: u64,
    /// 0 = U, 1 = S, 3 = M.
    pub mode: u8,
    pub mstatus: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    /// Hart-local mip bits: SSIP, STIP (when not Sstc-driven), software SEIP.
    pub mip_local: u64,
    pub mtvec: u64,
    pub stvec: u64,
    pub mepc: u64,
    pub sepc: u64,
    pub mcause: u64,
    pub scause: u64,
    pub mtval: u64,
    pub stval: u64,
    pub mscratch: u64,
    pub sscratch: u64,
    pub satp: u64,
    pub mcounteren: u64,
    pub scounteren: u64,
    pub menvcfg: u64,
    pub senvcfg: u64,
    pub mcountinhibit: u64,
    pub stimecmp: u64,
    pub fflags: u32,
    pub frm: u32,
    pub pmpcfg: [u64; 8],
    pub pmpaddr: [u64; 64],
    /// The active PMP rules compiled from pmpcfg/pmpaddr (module `pmp`).
    pub pmp: Vec<crate::pmp::PmpRule>,
    /// Some rule is locked (M-mode accesses must be checked too).
    pub pmp_locked: bool,
    /// Retired instructions (also `cycle`).
    pub instret: u64,
    /// LR reservation: host address, loaded value, size.
    pub reservation: Option<(u64, u64, u8)>,
    pub tlb: Box<Tlb>,
    /// TLB table indices for fetch, load, store in the current context.
    pub tf: usize,
    pub tl: usize,
    pub ts: usize,
    pub sh: Arc<Shared>,
    /// Copies of `sh`'s RAM facts for the store fast path.
    pub ram_host: u64,
    pub ram_pages: usize,
    pub page_flags: *const std::sync::atomic::AtomicU8,
    pub bus: Arc<dyn SystemBus>,
    pub budget: i64,
    /// Re-check interrupts at the next block end.
    pub check: bool,
    pub wfi: bool,
    pub flush_icache: bool,
    /// Block-chaining tag: bumped whenever instruction translation may change
    /// (TLB flush, mode or context switch); links made under another tag are dead.
    pub chain: u32,
    /// Counters for `RISCV_EMU_STATS=1` diagnostics.
    pub stats: [u64; 8],
}

impl Hart {
    pub fn new(id: usize, sh: Arc<Shared>) -> Self {
        let mut h = Hart {
            id,
            x: [0; 256],
            f: [0; 32],
            pc: 0,
            mode: 3,
            mstatus: 0,
            medeleg: 0,
            mideleg: 0,
            mie: 0,
            mip_local: 0,
            mtvec: 0,
            stvec: 0,
            mepc: 0,
            sepc: 0,
            mcause: 0,
            scause: 0,
            mtval: 0,
            stval: 0,
            mscratch: 0,
            sscratch: 0,
            satp: 0,
            mcounteren: 0,
            scounteren: 0,
            menvcfg: 0,
            senvcfg: 0,
            mcountinhibit: 0,
            stimecmp: u64::MAX,
            fflags: 0,
            frm: 0,
            pmpcfg: [0; 8],
            pmpaddr: [0; 64],
            pmp: Vec::new(),
            pmp_locked: false,
            instret: 0,
            reservation: None,
            tlb: Tlb::new(),
            tf: 0,
            tl: 1,
            ts: 2,
            ram_host: sh.ram_host,
            ram_pages: sh.page_flags.len(),
            page_flags: sh.page_flags.as_ptr(),
            sh,
            bus: Arc::new(NullBus),
            budget: 0,
            check: true,
            wfi: false,
            flush_icache: true,
            stats: [0; 8],
            chain: 0,
        };
        h.update_ctx();
        h
    }

    /// Power-on state (keeps identity, RAM mapping and retired-instruction count).
    pub fn reset(&mut self) {
        let n = Hart::new(self.id, self.sh.clone());
        let instret = self.instret;
        *self = n;
        self.instret = instret;
    }

    pub fn set_boot(&mut self, pc: u64, regs: &[(usize, u64)], mode: Mode) {
        self.pc = pc;
        for &(r, v) in regs {
            if (1..32).contains(&r) {
                self.x[r] = v;
            }
        }
        self.mode = mode as u8;
        if mode != Mode::Machine {
            // No firmware runs before an S/U start: grant all memory, as it would.
            self.pmpaddr[0] = (1 << 54) - 1;
            self.pmpcfg[0] = 0x1f;
            self.pmp_changed();
        }
        self.update_ctx();
    }

    /// Runs until the machine is asked to stop.
    pub fn run(&mut self, cache: &mut BlockCache, bus: Arc<dyn SystemBus>) {
        self.bus = bus;
        self.check = true;
        let sh = self.sh.clone();
        let hs = &sh.harts[self.id];
        let mut prev = EMPTY;
        let mut prev_clears = cache.clears;
        loop {
            if self.budget <= 0 || self.check || hs.attention.load(Ordering::Relaxed) {
                if sh.exit_flag.load(Ordering::Relaxed) {
                    break;
                }
                if self.flush_icache {
                    self.stats[1] += 1;
                    cache.flush();
                    self.flush_icache = false;
                }
                if !self.service() {
                    break;
                }
            }
            let pc = self.pc;
            let mut at = EMPTY;
            if prev != EMPTY && prev_clears == cache.clears {
                at = cache.follow(&sh, prev, pc, self.chain);
                self.stats[5] += (at != EMPTY) as u64;
            }
            if at == EMPTY {
                let pa = match self.fetch_pa(pc) {
                    Ok(pa) => pa,
                    Err(e) => {
                        self.trap(e);
                        prev = EMPTY;
                        continue;
                    }
                };
                at = cache.lookup(&sh, pa);
                self.stats[6] += 1;
                if at == EMPTY {
                    self.stats[0] += 1;
                    at = cache.build(self, pa);
                    if at == EMPTY {
                        self.exec_straddling(pa);
                        prev = EMPTY;
                        continue;
                    }
                } else if prev != EMPTY && prev_clears == cache.clears {
                    cache.link(prev, pc, at, self.chain);
                }
            }
            self.exec_block(cache.insns(at));
            prev = at;
            prev_clears = cache.clears;
        }
        if std::env::var_os("RISCV_EMU_STATS").is_some() {
            eprintln!(
                "hart {}: blocks built {}, icache flushes {}, code-page invalidations {}, tlb flushes {}, traps {}, chained {}, looked up {}, arena clears {}",
                self.id, self.stats[0], self.stats[1], self.stats[2], self.stats[3], self.stats[4], self.stats[5], self.stats[6], cache.clears
            );
        }
    }

    /// Block-end work: interrupts, timers, WFI sleep. False when the machine stops.
    fn service(&mut self) -> bool {
        let sh = self.sh.clone();
        let hs = &sh.harts[self.id];
        self.budget = BUDGET;
        self.check = false;
        hs.attention.store(false, Ordering::Relaxed);
        hs.debug_pc
            .store(self.pc | self.mode as u64, Ordering::Relaxed);
        hs.debug_cause.store(
            (self.scause << 8) ^ (self.mcause & 0xff) ^ (self.read_mip() << 32),
            Ordering::Relaxed,
        );
        loop {
            if sh.pause_req.load(Ordering::Relaxed) {
                self.park();
                if sh.exit_flag.load(Ordering::Relaxed) {
                    return false;
                }
            }
            let mip = self.read_mip();
            if self.wfi {
                if mip & self.mie != 0 {
                    self.wfi = false;
                } else {
                    self.sleep();
                    if sh.exit_flag.load(Ordering::Relaxed) {
                        return false;
                    }
                    continue;
                }
            }
            if let Some(cause) = self.pending_interrupt(mip) {
                self.take_interrupt(cause);
            }
            return true;
        }
    }

    /// WFI: block until kicked or the next enabled timer deadline.
    fn sleep(&mut self) {
        let sh = self.sh.clone();
        let hs = &sh.harts[self.id];
        let mut deadline = u64::MAX;
        if self.mie & crate::cpus::MIP_MTIP != 0 {
            deadline = deadline.min(hs.mtimecmp.load(Ordering::Relaxed));
        }
        if self.mie & crate::cpus::MIP_STIP != 0 && self.stce() {
            deadline = deadline.min(self.stimecmp);
        }
        let g = hs.lock.lock().unwrap_or_else(|p| p.into_inner());
        if hs.attention.swap(false, Ordering::SeqCst) || sh.exit_flag.load(Ordering::SeqCst) {
            return;
        }
        let timeout = sh.clock.until(deadline).min(Duration::from_millis(500));
        if timeout.is_zero() {
            return;
        }
        let _ = hs.cv.wait_timeout(g, timeout);
    }

    #[inline(always)]
    fn exec_block(&mut self, insns: &[Insn]) {
        let n = insns.len();
        self.instret = self.instret.wrapping_add(n as u64);
        self.budget -= n as i64;
        let mut pc = self.pc;
        for (i, insn) in insns.iter().enumerate() {
            match self.exec(insn, pc) {
                Ok(next) => pc = next,
                Err(e) => {
                    if e == Exc::TAKEN {
                        self.instret = self.instret.wrapping_sub((n - i - 1) as u64);
                        return;
                    }
                    self.instret = self.instret.wrapping_sub((n - i) as u64);
                    self.pc = pc;
                    self.trap(e);
                    return;
                }
            }
        }
        self.pc = pc;
    }

    /// A 32-bit instruction whose second half is on the next page.
    #[cold]
    fn exec_straddling(&mut self, pa: u64) {
        let lo = match self.sh.ram_host_addr(pa, 2) {
            // SAFETY: the range was checked to lie in guest RAM.
            Some(h) => (unsafe { (h as *const u16).read_unaligned() }) as u32,
            None => return self.trap(Exc::fetch_access(self.pc)),
        };
        let pc2 = self.pc.wrapping_add(2);
        let hi = match self.fetch_pa(pc2) {
            Ok(pa2) => match self.sh.ram_host_addr(pa2, 2) {
                // SAFETY: the range was checked to lie in guest RAM.
                Some(h) => (unsafe { (h as *const u16).read_unaligned() }) as u32,
                None => return self.trap(Exc::fetch_access(pc2)),
            },
            Err(e) => return self.trap(e),
        };
        let insn = decode32(lo | hi << 16);
        self.exec_block(&[insn]);
    }
}

/// Block header in front of its instructions in the arena (3 cells).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Hdr {
    pa: u64,
    version: u32,
    gen: u16,
    len: u16,
    /// Two most recent successors: guest pc, arena index, chain tag.
    link_pc: [u64; 2],
    link_at: [u32; 2],
    link_tag: [u32; 2],
}

/// One arena cell: an instruction, or a third of a header (plain data).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
union Cell {
    insn: Insn,
    words: [u64; 2],
}

const HDR_CELLS: usize = std::mem::size_of::<Hdr>() / std::mem::size_of::<Cell>();
const _: () = assert!(std::mem::size_of::<Cell>() == std::mem::size_of::<Insn>());
const _: () = assert!(std::mem::size_of::<Hdr>() == HDR_CELLS * std::mem::size_of::<Cell>());

pub const EMPTY: u32 = u32::MAX;
/// Arena capacity in cells (32 MiB, touched as used); when full, everything is dropped.
const ARENA_CELLS: usize = 1 << 21;

/// Decoded blocks keyed by physical address. A direct-mapped slot table points
/// into an arena where each block is a header followed by its instructions, so
/// a lookup touches one cache line more than the slot, and a chained successor
/// (the header's links) none. Blocks are invalidated by the page's version
/// moving (a store hit a page holding decoded code) and re-validated against
/// memory after fence.i (generation bump).
pub struct BlockCache {
    slots: Vec<u32>,
    arena: Vec<Cell>,
    gen: u16,
    /// Times the arena was emptied (arena indices from before are dead).
    pub clears: u32,
}

impl Default for BlockCache {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockCache {
    pub fn new() -> Self {
        BlockCache {
            slots: vec![EMPTY; 1 << CACHE_BITS],
            arena: Vec::with_capacity(ARENA_CELLS),
            gen: 1,
            clears: 0,
        }
    }

    /// fence.i: blocks must be re-checked against memory before reuse.
    pub fn flush(&mut self) {
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.arena.clear();
        self.gen = 1;
        self.clears = self.clears.wrapping_add(1);
    }

    #[inline(always)]
    fn slot(pa: u64) -> usize {
        ((pa >> 1) as usize ^ (pa >> 15) as usize) & ((1 << CACHE_BITS) - 1)
    }

    #[inline(always)]
    fn hdr(&self, at: usize) -> &Hdr {
        let cells = &self.arena[at..at + HDR_CELLS];
        // SAFETY: `at` indexes a header written by `build` over HDR_CELLS cells
        // (bounds checked just above); Hdr and Cell share the 16-byte alignment.
        unsafe { &*(cells.as_ptr() as *const Hdr) }
    }

    #[inline(always)]
    fn hdr_mut(&mut self, at: usize) -> &mut Hdr {
        let cells = &mut self.arena[at..at + HDR_CELLS];
        // SAFETY: as for `hdr`.
        unsafe { &mut *(cells.as_mut_ptr() as *mut Hdr) }
    }

    #[inline(always)]
    pub fn insns(&self, at: u32) -> &[Insn] {
        let at = at as usize;
        let len = self.hdr(at).len as usize;
        let cells = &self.arena[at + HDR_CELLS..at + HDR_CELLS + len];
        // SAFETY: cells after a header are written as `insn` by `build`; Cell is
        // repr(C) with Insn at offset 0 and the same size, so the slice casts.
        unsafe { std::slice::from_raw_parts(cells.as_ptr() as *const Insn, len) }
    }

    /// Still valid: page not written since decoding, and (after fence.i)
    /// bytes unchanged.
    #[inline(always)]
    fn valid(&mut self, sh: &Shared, at: usize) -> bool {
        let h = *self.hdr(at);
        let Some(page) = sh.ram_page(h.pa) else {
            return false;
        };
        if sh.page_version[page].load(Ordering::Relaxed) != h.version {
            return false;
        }
        if h.gen != self.gen {
            // After fence.i: keep the block if its bytes are unchanged (memory
            // written behind our back, e.g. by DMA, is caught here).
            if !matches_memory(sh, h.pa, self.insns(at as u32)) {
                return false;
            }
            self.hdr_mut(at).gen = self.gen;
        }
        true
    }

    #[inline(always)]
    fn lookup(&mut self, sh: &Shared, pa: u64) -> u32 {
        let at = self.slots[Self::slot(pa)];
        if at == EMPTY || self.hdr(at as usize).pa != pa || !self.valid(sh, at as usize) {
            return EMPTY;
        }
        at
    }

    /// The block `prev` linked to for `pc` under chain tag `tag`, if still valid.
    #[inline(always)]
    fn follow(&mut self, sh: &Shared, prev: u32, pc: u64, tag: u32) -> u32 {
        let h = self.hdr(prev as usize);
        for k in 0..2 {
            if h.link_pc[k] == pc && h.link_tag[k] == tag {
                let t = h.link_at[k];
                return if self.valid(sh, t as usize) { t } else { EMPTY };
            }
        }
        EMPTY
    }

    fn link(&mut self, prev: u32, pc: u64, at: u32, tag: u32) {
        let h = self.hdr_mut(prev as usize);
        if h.link_pc[0] != pc {
            h.link_pc[1] = h.link_pc[0];
            h.link_at[1] = h.link_at[0];
            h.link_tag[1] = h.link_tag[0];
        }
        h.link_pc[0] = pc;
        h.link_at[0] = at;
        h.link_tag[0] = tag;
    }

    /// Decodes the block at `pa` (in RAM, checked by fetch). EMPTY when the first
    /// instruction straddles the page end.
    fn build(&mut self, hart: &Hart, pa: u64) -> u32 {
        let sh = &hart.sh;
        let Some(page) = sh.ram_page(pa) else {
            return EMPTY;
        };
        // Mark the page as code before reading it, so a racing store bumps the version.
        sh.page_flags[page].fetch_or(PAGE_CODE, Ordering::SeqCst);
        let version = sh.page_version[page].load(Ordering::SeqCst);
        let page_end = (pa | 0xfff) + 1;
        let ram_end = sh.ram_base + sh.ram_size;
        let end = page_end.min(ram_end);
        if self.arena.len() + MAX_BLOCK + HDR_CELLS > ARENA_CELLS {
            self.clear();
        }
        let at = self.arena.len();
        for _ in 0..HDR_CELLS {
            self.arena.push(Cell { words: [0; 2] });
        }
        *self.hdr_mut(at) = Hdr {
            pa,
            version,
            gen: self.gen,
            len: 0,
            link_pc: [u64::MAX; 2],
            link_at: [EMPTY; 2],
            link_tag: [0; 2],
        };
        let mut n = 0;
        let mut a = pa;
        while n < MAX_BLOCK && a + 2 <= end {
            let host = sh.ram_host + (a - sh.ram_base);
            // SAFETY: [a, a+2) lies in guest RAM (a + 2 <= end <= RAM end).
            let lo = unsafe { (host as *const u16).read_unaligned() };
            let insn = match insn_len(lo) {
                2 => decode16(lo as u32),
                4 => {
                    if a + 4 > end {
                        break;
                    }
                    // SAFETY: [a, a+4) lies in guest RAM, checked just above.
                    let w = unsafe { (host as *const u32).read_unaligned() };
                    decode32(w)
                }
                _ => Insn::illegal(lo as u32, 2),
            };
            self.arena.push(Cell { insn });
            n += 1;
            // A direct jump within the page continues the block at its target
            // (the Jal op itself sets pc and the link register).
            if insn.op == Op::Jal {
                let t = a.wrapping_add(insn.imm as i64 as u64);
                if t >> 12 == pa >> 12 && t < end {
                    a = t;
                    continue;
                }
                break;
            }
            a += insn.len as u64;
            if insn.ends_block() {
                break;
            }
        }
        if n == 0 {
            self.arena.truncate(at);
            return EMPTY;
        }
        self.hdr_mut(at).len = n as u16;
        self.slots[Self::slot(pa)] = at as u32;
        at as u32
    }
}

fn matches_memory(sh: &Shared, pa: u64, insns: &[Insn]) -> bool {
    let mut a = pa;
    insns.iter().all(|i| {
        let host = sh.ram_host + (a - sh.ram_base);
        // SAFETY: the block was decoded from these RAM bytes, all in one page
        // (jumps followed by `build` stay inside it).
        let bits = unsafe {
            if i.len == 4 {
                (host as *const u32).read_unaligned()
            } else {
                (host as *const u16).read_unaligned() as u32
            }
        };
        a = if i.op == Op::Jal {
            a.wrapping_add(i.imm as i64 as u64)
        } else {
            a + i.len as u64
        };
        bits == i.raw
    })
}
