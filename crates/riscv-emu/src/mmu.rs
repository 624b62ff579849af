//! Address translation (Bare, Sv39, Sv48) with hardware A/D updates by CAS on
//! the PTE, and every guest memory access: TLB fast paths into host RAM,
//! page-crossing and misaligned accesses, MMIO through the system bus, and the
//! store hook that invalidates decoded code and intercepts HTIF.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cpus::{PAGE_CODE, PAGE_HTIF, PAGE_RESV, RESV_GRANULE};
use crate::hart::Hart;
use crate::pmp::PageVerdict;
use crate::tlb::*;
use crate::trap::*;

const PTE_V: u64 = 1;
const PTE_R: u64 = 2;
const PTE_W: u64 = 4;
const PTE_X: u64 = 8;
const PTE_U: u64 = 16;
const PTE_A: u64 = 64;
const PTE_D: u64 = 128;

fn page_fault(kind: usize, va: u64) -> Exc {
    Exc {
        cause: [CAUSE_FETCH_PAGE, CAUSE_LOAD_PAGE, CAUSE_STORE_PAGE][kind],
        tval: va,
    }
}

pub fn access_fault(kind: usize, va: u64) -> Exc {
    Exc {
        cause: [CAUSE_FETCH_ACCESS, CAUSE_LOAD_ACCESS, CAUSE_STORE_ACCESS][kind],
        tval: va,
    }
}

macro_rules! fast_load {
    ($name:ident, $t:ty) => {
        #[inline(always)]
        pub fn $name(&mut self, va: u64) -> Result<u64, Exc> {
            const N: u64 = std::mem::size_of::<$t>() as u64;
            let e = self.tlb.t[self.tl & (TABLES - 1)][Tlb::index(va)];
            if e.tag == (va >> 12) | self.tlb.epoch && (va & 0xfff) <= 0x1000 - N {
                let host = va.wrapping_add(e.addend);
                // SAFETY: a RAM TLB entry maps the whole page into the guest RAM
                // mapping, and the access does not cross the page end.
                Ok(unsafe { (host as *const $t).read_unaligned() } as u64)
            } else {
                self.load_slow(va, N)
            }
        }
    };
}

macro_rules! fast_store {
    ($name:ident, $t:ty) => {
        #[inline(always)]
        pub fn $name(&mut self, va: u64, v: u64) -> Result<(), Exc> {
            const N: u64 = std::mem::size_of::<$t>() as u64;
            let e = self.tlb.t[self.ts & (TABLES - 1)][Tlb::index(va)];
            if e.tag == (va >> 12) | self.tlb.epoch && (va & 0xfff) <= 0x1000 - N {
                let host = va.wrapping_add(e.addend);
                // SAFETY: as for loads; store entries are only filled for
                // writable, dirty RAM pages.
                unsafe { (host as *mut $t).write_unaligned(v as $t) };
                self.store_hook(host, N);
                Ok(())
            } else {
                self.store_slow(va, N, v)
            }
        }
    };
}

impl Hart {
    /// Recomputes the TLB contexts after a change of mode, mstatus or satp.
    pub fn update_ctx(&mut self) {
        self.chain = self.chain.wrapping_add(1);
        let translate = self.satp >> 60 != 0;
        let ctx = |p: u8, sum: bool| -> usize {
            if p == 3 {
                0
            } else if !translate {
                4
            } else if p == 1 {
                1 + sum as usize
            } else {
                3
            }
        };
        let sum = self.mstatus & MSTATUS_SUM != 0;
        let fctx = ctx(self.mode, false);
        let dmode = if self.mode == 3 && self.mstatus & MSTATUS_MPRV != 0 {
            ((self.mstatus >> 11) & 3) as u8
        } else {
            self.mode
        };
        let dctx = ctx(dmode, sum);
        self.tf = fctx * 3 + FETCH;
        self.tl = dctx * 3 + LOAD;
        self.ts = dctx * 3 + STORE;
    }

    fn ctx_of(&self, kind: usize) -> usize {
        match kind {
            FETCH => self.tf / 3,
            LOAD => self.tl / 3,
            _ => self.ts / 3,
        }
    }

    /// Translates `va` for a `len`-byte access of `kind` in the current
    /// context, checks PMP and fills the TLB (unless PMP rules split the page).
    pub fn translate(&mut self, va: u64, kind: usize, len: u64) -> Result<u64, Exc> {
        let ctx = self.ctx_of(kind);
        let table = ctx * 3 + kind;
        let idx = Tlb::index(va);
        let e = self.tlb.t[table][idx];
        if e.tag == (va >> 12) | MMIO_TAG | self.tlb.epoch {
            return Ok(va.wrapping_add(e.addend));
        }
        let pa = if ctx == 0 || ctx == 4 {
            va
        } else {
            self.walk(va, kind, ctx)?
        };
        let vpage = va & !0xfff;
        let ppage = pa & !0xfff;
        let machine = ctx == 0;
        if !machine || self.pmp_locked {
            match self.pmp_page(ppage, kind, machine) {
                PageVerdict::Allow => {}
                PageVerdict::Deny => return Err(access_fault(kind, va)),
                PageVerdict::Split => {
                    // No TLB entry: every access to this page comes back here.
                    return if self.pmp_ok(pa, len, kind, machine) {
                        Ok(pa)
                    } else {
                        Err(access_fault(kind, va))
                    };
                }
            }
        }
        let entry = match self.sh.ram_host_addr(ppage, 0x1000) {
            Some(host) => TlbEntry {
                tag: (va >> 12) | self.tlb.epoch,
                addend: host.wrapping_sub(vpage),
            },
            None => TlbEntry {
                tag: (va >> 12) | MMIO_TAG | self.tlb.epoch,
                addend: ppage.wrapping_sub(vpage),
            },
        };
        self.tlb.t[table][idx] = entry;
        Ok(pa)
    }

    fn walk(&mut self, va: u64, kind: usize, ctx: usize) -> Result<u64, Exc> {
        let levels: u32 = if self.satp >> 60 == 9 { 4 } else { 3 };
        let vabits = 12 + 9 * levels;
        if ((va as i64) << (64 - vabits) >> (64 - vabits)) as u64 != va {
            return Err(page_fault(kind, va));
        }
        let user = ctx == 3;
        let sum = ctx == 2;
        let mxr = self.mstatus & MSTATUS_MXR != 0;
        'retry: loop {
            let mut table = (self.satp & ((1 << 44) - 1)) << 12;
            let mut i = levels;
            while i > 0 {
                i -= 1;
                let vpn = (va >> (12 + 9 * i)) & 0x1ff;
                let pte_pa = table + vpn * 8;
                // The walk's reads are S-mode reads as far as PMP goes.
                if !self.pmp_ok(pte_pa, 8, LOAD, false) {
                    return Err(access_fault(kind, va));
                }
                let host = match self.sh.ram_host_addr(pte_pa, 8) {
                    Some(h) => h,
                    None => return Err(access_fault(kind, va)),
                };
                // SAFETY: PTE address checked to lie in guest RAM and is 8-aligned
                // (table is page aligned); RAM base is page aligned.
                let pte_ref = unsafe { AtomicU64::from_ptr(host as *mut u64) };
                let pte = pte_ref.load(Ordering::Acquire);
                if pte & PTE_V == 0 || (pte & PTE_R == 0 && pte & PTE_W != 0) || pte >> 54 != 0 {
                    return Err(page_fault(kind, va));
                }
                let ppn = (pte >> 10) & ((1 << 44) - 1);
                if pte & (PTE_R | PTE_X) == 0 {
                    if pte & (PTE_A | PTE_D | PTE_U) != 0 {
                        return Err(page_fault(kind, va));
                    }
                    table = ppn << 12;
                    continue;
                }
                // Leaf.
                if i > 0 && ppn & ((1 << (9 * i)) - 1) != 0 {
                    return Err(page_fault(kind, va));
                }
                let ok = match kind {
                    FETCH => pte & PTE_X != 0 && (pte & PTE_U != 0) == user,
                    _ => {
                        let perm = if kind == LOAD {
                            pte & PTE_R != 0 || (mxr && pte & PTE_X != 0)
                        } else {
                            pte & PTE_W != 0
                        };
                        perm && if user {
                            pte & PTE_U != 0
                        } else {
                            pte & PTE_U == 0 || sum
                        }
                    }
                };
                if !ok {
                    return Err(page_fault(kind, va));
                }
                let need = PTE_A | if kind == STORE { PTE_D } else { 0 };
                if pte & need != need
                    && pte_ref
                        .compare_exchange(pte, pte | need, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                {
                    continue 'retry;
                }
                if i > 0 {
                    self.tlb.has_super = true;
                }
                let off_bits = 12 + 9 * i;
                let pa =
                    ((ppn << 12) & !((1u64 << off_bits) - 1)) | (va & ((1u64 << off_bits) - 1));
                return Ok(pa);
            }
            return Err(page_fault(kind, va));
        }
    }

    /// Physical address of an instruction fetch; must be RAM.
    #[inline(always)]
    pub fn fetch_pa(&mut self, pc: u64) -> Result<u64, Exc> {
        let e = self.tlb.t[self.tf & (TABLES - 1)][Tlb::index(pc)];
        let host = if e.tag == (pc >> 12) | self.tlb.epoch {
            pc.wrapping_add(e.addend)
        } else {
            let pa = self.translate(pc, FETCH, 2)?;
            match self.sh.ram_host_addr(pa, 2) {
                Some(h) => h,
                None => return Err(Exc::fetch_access(pc)),
            }
        };
        Ok(host - self.sh.ram_host + self.sh.ram_base)
    }

    fast_load!(ld8, u8);
    fast_load!(ld16, u16);
    fast_load!(ld32, u32);
    fast_load!(ld64, u64);
    fast_store!(st8, u8);
    fast_store!(st16, u16);
    fast_store!(st32, u32);
    fast_store!(st64, u64);

    #[cold]
    #[inline(never)]
    pub fn load_slow(&mut self, va: u64, n: u64) -> Result<u64, Exc> {
        if (va & 0xfff) + n > 0x1000 {
            let mut v = 0;
            for i in 0..n {
                v |= self.load_slow(va.wrapping_add(i), 1)? << (8 * i);
            }
            return Ok(v);
        }
        let pa = self.translate(va, LOAD, n)?;
        if let Some(h) = self.sh.ram_host_addr(pa, n) {
            // SAFETY: [pa, pa+n) is in guest RAM.
            return Ok(unsafe { read_host(h, n) });
        }
        self.bus_load(pa, n, va)
    }

    fn bus_load(&mut self, pa: u64, n: u64, va: u64) -> Result<u64, Exc> {
        if pa % n == 0 {
            return self
                .bus
                .load(self.id, pa, n as u8)
                .map(|v| if n == 8 { v } else { v & ((1 << (8 * n)) - 1) })
                .ok_or(access_fault(LOAD, va));
        }
        let mut v = 0;
        for i in 0..n {
            let b = self
                .bus
                .load(self.id, pa + i, 1)
                .ok_or(access_fault(LOAD, va))?;
            v |= (b & 0xff) << (8 * i);
        }
        Ok(v)
    }

    #[cold]
    #[inline(never)]
    pub fn store_slow(&mut self, va: u64, n: u64, v: u64) -> Result<(), Exc> {
        if (va & 0xfff) + n > 0x1000 {
            // Translate every byte first so a fault leaves memory untouched.
            for i in 0..n {
                self.translate(va.wrapping_add(i), STORE, 1)?;
            }
            for i in 0..n {
                self.store_slow(va.wrapping_add(i), 1, v >> (8 * i))?;
            }
            return Ok(());
        }
        let pa = self.translate(va, STORE, n)?;
        if let Some(h) = self.sh.ram_host_addr(pa, n) {
            // SAFETY: [pa, pa+n) is in guest RAM.
            unsafe { write_host(h, n, v) };
            self.store_hook(h, n);
            return Ok(());
        }
        let ok = if pa % n == 0 {
            self.bus.store(self.id, pa, n as u8, v)
        } else {
            (0..n).all(|i| self.bus.store(self.id, pa + i, 1, (v >> (8 * i)) & 0xff))
        };
        if ok {
            Ok(())
        } else {
            Err(access_fault(STORE, va))
        }
    }

    /// After any RAM store of `n` bytes at `host` (within one page):
    /// invalidate decoded code on the page, serve HTIF, break other harts'
    /// LR reservations. One relaxed flag load when the page is unflagged.
    #[inline(always)]
    pub fn store_hook(&mut self, host: u64, n: u64) {
        let page = (host.wrapping_sub(self.ram_host) >> 12) as usize;
        if page < self.ram_pages {
            // SAFETY: page_flags points at the Shared's flag array of ram_pages
            // entries, kept alive by self.sh; index checked just above.
            let f = unsafe { &*self.page_flags.add(page) };
            if f.load(Ordering::Relaxed) != 0 {
                self.store_hook_slow(page, host, n);
            }
        }
    }

    #[cold]
    fn store_hook_slow(&mut self, page: usize, host: u64, n: u64) {
        let sh = self.sh.clone();
        let flags = sh.page_flags[page].load(Ordering::SeqCst);
        if flags & PAGE_CODE != 0 {
            sh.page_flags[page].fetch_and(!PAGE_CODE, Ordering::SeqCst);
            sh.page_version[page].fetch_add(1, Ordering::SeqCst);
            self.stats[2] += 1;
        }
        if flags & PAGE_RESV != 0 {
            self.break_reservations(page, host, n);
        }
        if flags & PAGE_HTIF != 0 {
            let pa = host - sh.ram_host + sh.ram_base;
            self.htif_store(pa);
        }
    }

    /// Resets other harts' reservations on the granules [host, host+n)
    /// touches; clears the page's PAGE_RESV once no reservation is left on it.
    fn break_reservations(&self, page: usize, host: u64, n: u64) {
        let sh = &self.sh;
        let first = host & !(RESV_GRANULE - 1);
        let last = (host + n - 1) & !(RESV_GRANULE - 1);
        let on_page = |r: u64| r != 0 && (r.wrapping_sub(self.ram_host) >> 12) as usize == page;
        let mut left = false;
        for (i, hs) in sh.harts.iter().enumerate() {
            let r = hs.resv.load(Ordering::SeqCst);
            if i != self.id && (r == first || r == last) {
                let _ = hs
                    .resv
                    .compare_exchange(r, 0, Ordering::SeqCst, Ordering::SeqCst);
            } else if on_page(r) {
                left = true;
            }
        }
        if !left {
            // An LR publishes its reservation before setting the flag, so
            // after clearing, a second look finds any that raced with us.
            sh.page_flags[page].fetch_and(!PAGE_RESV, Ordering::SeqCst);
            if sh
                .harts
                .iter()
                .any(|hs| on_page(hs.resv.load(Ordering::SeqCst)))
            {
                sh.page_flags[page].fetch_or(PAGE_RESV, Ordering::SeqCst);
            }
        }
    }

    /// LR: reserve the granule at `host` (before the value is loaded).
    pub fn reserve(&mut self, host: u64) {
        let sh = &self.sh;
        sh.harts[self.id]
            .resv
            .store(host & !(RESV_GRANULE - 1), Ordering::SeqCst);
        let page = (host.wrapping_sub(self.ram_host) >> 12) as usize;
        if let Some(f) = sh.page_flags.get(page) {
            if f.load(Ordering::Relaxed) & PAGE_RESV == 0 {
                f.fetch_or(PAGE_RESV, Ordering::SeqCst);
            }
        }
    }

    /// SC: consumes the reservation; true if it was still on `host`'s granule.
    pub fn take_reservation(&mut self, host: u64) -> bool {
        let g = host & !(RESV_GRANULE - 1);
        self.sh.harts[self.id].resv.swap(0, Ordering::SeqCst) == g
    }

    /// Host address for an atomic access (`kind` LOAD for LR, else STORE);
    /// the address must be aligned and in RAM.
    pub fn amo_host(&mut self, va: u64, n: u64, kind: usize) -> Result<u64, Exc> {
        if va % n != 0 {
            return Err(Exc {
                cause: if kind == LOAD {
                    CAUSE_LOAD_MISALIGNED
                } else {
                    CAUSE_STORE_MISALIGNED
                },
                tval: va,
            });
        }
        let table = if kind == LOAD { self.tl } else { self.ts };
        let e = self.tlb.t[table][Tlb::index(va)];
        if e.tag == (va >> 12) | self.tlb.epoch {
            return Ok(va.wrapping_add(e.addend));
        }
        let pa = self.translate(va, kind, n)?;
        self.sh.ram_host_addr(pa, n).ok_or(access_fault(kind, va))
    }

    pub fn flush_tlb(&mut self) {
        self.stats[3] += 1;
        self.chain = self.chain.wrapping_add(1);
        self.tlb.flush();
    }

    /// Physical 8-byte read from RAM (HTIF words); None outside RAM.
    pub fn phys_read64(&self, pa: u64) -> Option<u64> {
        let h = self.sh.ram_host_addr(pa, 8)?;
        // SAFETY: checked to lie in guest RAM.
        Some(unsafe { read_host(h, 8) })
    }

    pub fn phys_write64(&self, pa: u64, v: u64) {
        if let Some(h) = self.sh.ram_host_addr(pa, 8) {
            // SAFETY: checked to lie in guest RAM.
            unsafe { write_host(h, 8, v) };
        }
    }
}

/// # Safety
/// `[h, h+n)` must lie in the guest RAM mapping.
unsafe fn read_host(h: u64, n: u64) -> u64 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        match n {
            1 => *(h as *const u8) as u64,
            2 => (h as *const u16).read_unaligned() as u64,
            4 => (h as *const u32).read_unaligned() as u64,
            _ => (h as *const u64).read_unaligned(),
        }
    }
}

/// # Safety
/// `[h, h+n)` must lie in the guest RAM mapping.
unsafe fn write_host(h: u64, n: u64, v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        match n {
            1 => *(h as *mut u8) = v as u8,
            2 => (h as *mut u16).write_unaligned(v as u16),
            4 => (h as *mut u32).write_unaligned(v as u32),
            _ => (h as *mut u64).write_unaligned(v),
        }
    }
}
