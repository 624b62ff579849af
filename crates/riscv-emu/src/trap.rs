//! Exceptions and interrupts: trap entry with medeleg/mideleg delegation,
//! interrupt selection by priority, mip composition, mret/sret.

use std::sync::atomic::Ordering;

use crate::cpus::*;
use crate::hart::Hart;

pub const MSTATUS_SIE: u64 = 1 << 1;
pub const MSTATUS_MIE: u64 = 1 << 3;
pub const MSTATUS_SPIE: u64 = 1 << 5;
pub const MSTATUS_MPIE: u64 = 1 << 7;
pub const MSTATUS_SPP: u64 = 1 << 8;
pub const MSTATUS_MPP: u64 = 3 << 11;
pub const MSTATUS_FS: u64 = 3 << 13;
pub const MSTATUS_MPRV: u64 = 1 << 17;
pub const MSTATUS_SUM: u64 = 1 << 18;
pub const MSTATUS_MXR: u64 = 1 << 19;
pub const MSTATUS_TVM: u64 = 1 << 20;
pub const MSTATUS_TW: u64 = 1 << 21;
pub const MSTATUS_TSR: u64 = 1 << 22;

pub const CAUSE_FETCH_ACCESS: u64 = 1;
pub const CAUSE_ILLEGAL: u64 = 2;
pub const CAUSE_BREAKPOINT: u64 = 3;
pub const CAUSE_LOAD_MISALIGNED: u64 = 4;
pub const CAUSE_LOAD_ACCESS: u64 = 5;
pub const CAUSE_STORE_MISALIGNED: u64 = 6;
pub const CAUSE_STORE_ACCESS: u64 = 7;
pub const CAUSE_ECALL_U: u64 = 8;
pub const CAUSE_FETCH_PAGE: u64 = 12;
pub const CAUSE_LOAD_PAGE: u64 = 13;
pub const CAUSE_STORE_PAGE: u64 = 15;

const INTERRUPT: u64 = 1 << 63;

/// A synchronous exception: cause and the value for xtval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exc {
    pub cause: u64,
    pub tval: u64,
}

impl Exc {
    /// Not an exception: a taken branch leaving its block (after retiring).
    pub const TAKEN: Exc = Exc {
        cause: u64::MAX,
        tval: 0,
    };
    pub fn illegal(raw: u32) -> Self {
        Exc {
            cause: CAUSE_ILLEGAL,
            tval: raw as u64,
        }
    }
    pub fn fetch_access(va: u64) -> Self {
        Exc {
            cause: CAUSE_FETCH_ACCESS,
            tval: va,
        }
    }
}

impl Hart {
    pub fn trap(&mut self, e: Exc) {
        self.enter_trap(e.cause, e.tval);
    }

    pub fn take_interrupt(&mut self, code: u64) {
        self.wfi = false;
        self.enter_trap(INTERRUPT | code, 0);
    }

    fn enter_trap(&mut self, cause: u64, tval: u64) {
        self.stats[4] += 1;
        let interrupt = cause & INTERRUPT != 0;
        let code = cause & !INTERRUPT;
        let deleg = if interrupt {
            self.mideleg
        } else {
            self.medeleg
        };
        let to_s = self.mode <= 1 && code < 64 && deleg & (1 << code) != 0;
        let pc = self.pc;
        if to_s {
            self.scause = cause;
            self.sepc = pc;
            self.stval = tval;
            let mut s = self.mstatus & !(MSTATUS_SPP | MSTATUS_SPIE | MSTATUS_SIE);
            if self.mstatus & MSTATUS_SIE != 0 {
                s |= MSTATUS_SPIE;
            }
            if self.mode == 1 {
                s |= MSTATUS_SPP;
            }
            self.mstatus = s;
            self.mode = 1;
            self.pc = vector(self.stvec, interrupt, code);
        } else {
            self.mcause = cause;
            self.mepc = pc;
            self.mtval = tval;
            let mut s = self.mstatus & !(MSTATUS_MPP | MSTATUS_MPIE | MSTATUS_MIE);
            if self.mstatus & MSTATUS_MIE != 0 {
                s |= MSTATUS_MPIE;
            }
            s |= (self.mode as u64) << 11;
            self.mstatus = s;
            self.mode = 3;
            self.pc = vector(self.mtvec, interrupt, code);
        }
        self.update_ctx();
        self.check = true;
    }

    pub fn mret(&mut self) {
        let mpp = ((self.mstatus >> 11) & 3) as u8;
        let mut s = self.mstatus & !(MSTATUS_MIE | MSTATUS_MPP);
        if s & MSTATUS_MPIE != 0 {
            s |= MSTATUS_MIE;
        }
        s |= MSTATUS_MPIE;
        if mpp != 3 {
            s &= !MSTATUS_MPRV;
        }
        self.mstatus = s;
        self.mode = mpp;
        self.pc = self.mepc;
        self.update_ctx();
        self.check = true;
    }

    pub fn sret(&mut self) {
        let spp = ((self.mstatus >> 8) & 1) as u8;
        let mut s = self.mstatus & !(MSTATUS_SIE | MSTATUS_SPP | MSTATUS_MPRV);
        if s & MSTATUS_SPIE != 0 {
            s |= MSTATUS_SIE;
        }
        s |= MSTATUS_SPIE;
        self.mstatus = s;
        self.mode = spp;
        self.pc = self.sepc;
        self.update_ctx();
        self.check = true;
    }

    pub fn stce(&self) -> bool {
        self.menvcfg >> 63 != 0
    }

    /// The full mip: hart-local bits, external lines, and both timers.
    pub fn read_mip(&self) -> u64 {
        let hs = &self.sh.harts[self.id];
        let mut mip = self.mip_local | hs.ext.load(Ordering::Relaxed);
        let now = self.sh.clock.mtime();
        if now >= hs.mtimecmp.load(Ordering::Relaxed) {
            mip |= MIP_MTIP;
        }
        if self.stce() {
            mip &= !MIP_STIP;
            if now >= self.stimecmp {
                mip |= MIP_STIP;
            }
        }
        mip
    }

    /// Highest-priority interrupt that is pending, enabled and takeable now.
    pub fn pending_interrupt(&self, mip: u64) -> Option<u64> {
        let pend = mip & self.mie;
        if pend == 0 {
            return None;
        }
        const ORDER: [u64; 6] = [11, 3, 7, 9, 1, 5];
        let m_en = self.mode < 3 || self.mstatus & MSTATUS_MIE != 0;
        let m = pend & !self.mideleg;
        if m_en && m != 0 {
            return ORDER.iter().copied().find(|&c| m & (1 << c) != 0);
        }
        let s_en = self.mode < 1 || (self.mode == 1 && self.mstatus & MSTATUS_SIE != 0);
        let s = pend & self.mideleg;
        if s_en && s != 0 {
            return ORDER.iter().copied().find(|&c| s & (1 << c) != 0);
        }
        None
    }
}

fn vector(tvec: u64, interrupt: bool, code: u64) -> u64 {
    let base = tvec & !3;
    if interrupt && tvec & 3 == 1 {
        base.wrapping_add(4 * code)
    } else {
        base
    }
}
