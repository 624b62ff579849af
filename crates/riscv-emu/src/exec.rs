//! The interpreter: executes one decoded instruction (integer, M, A, F/D,
//! system). Control-flow and system ops are always last in their block, so
//! they may change the mode, the TLB context or the pc freely.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use crate::decode::{Insn, Op};
use crate::fpu::{self, F32, F64};
use crate::hart::Hart;
use crate::tlb::{LOAD, STORE};
use crate::trap::*;

const BOX32: u64 = 0xffff_ffff_0000_0000;
/// Zihintpause `pause` (a FENCE W,0 hint).
const PAUSE: u32 = 0x0100_000f;

impl Hart {
    #[inline(always)]
    /// Executes `i` at `pc`; returns the next pc. Ops that leave the block
    /// early (taken branches) set `self.pc` and return `Exc::TAKEN`; on a real
    /// exception the caller sets `self.pc = pc` before trapping.
    pub fn exec(&mut self, i: &Insn, pc: u64) -> Result<u64, Exc> {
        use Op::*;
        let rd = i.rd as usize;
        let rs1 = i.rs1 as usize;
        let rs2 = i.rs2 as usize;
        let imm = i.imm as i64 as u64;
        let a = self.x[rs1];
        let b = self.x[rs2];
        let next = pc.wrapping_add(i.len as u64);
        macro_rules! w {
            ($v:expr) => {{
                let v = $v;
                self.x[rd] = v;
                next
            }};
        }
        macro_rules! ww {
            ($v:expr) => {{
                let v = $v;
                self.x[rd] = v as i32 as i64 as u64;
                next
            }};
        }
        macro_rules! br {
            ($c:expr) => {{
                if $c {
                    self.pc = pc.wrapping_add(imm);
                    return Err(Exc::TAKEN);
                }
                next
            }};
        }
        let npc = match i.op {
            Addi => w!(a.wrapping_add(imm)),
            Add => w!(a.wrapping_add(b)),
            Lui => w!(imm),
            Auipc => w!(pc.wrapping_add(imm)),
            Jal => {
                self.x[rd] = next;
                pc.wrapping_add(imm)
            }
            Jalr => {
                let t = a.wrapping_add(imm) & !1;
                self.x[rd] = next;
                t
            }
            Beq => br!(a == b),
            Bne => br!(a != b),
            Blt => br!((a as i64) < (b as i64)),
            Bge => br!((a as i64) >= (b as i64)),
            Bltu => br!(a < b),
            Bgeu => br!(a >= b),
            Lb => w!(self.ld8(a.wrapping_add(imm))? as i8 as i64 as u64),
            Lh => w!(self.ld16(a.wrapping_add(imm))? as i16 as i64 as u64),
            Lw => w!(self.ld32(a.wrapping_add(imm))? as i32 as i64 as u64),
            Ld => w!(self.ld64(a.wrapping_add(imm))?),
            Lbu => w!(self.ld8(a.wrapping_add(imm))?),
            Lhu => w!(self.ld16(a.wrapping_add(imm))?),
            Lwu => w!(self.ld32(a.wrapping_add(imm))?),
            Sb => {
                self.st8(a.wrapping_add(imm), b)?;
                next
            }
            Sh => {
                self.st16(a.wrapping_add(imm), b)?;
                next
            }
            Sw => {
                self.st32(a.wrapping_add(imm), b)?;
                next
            }
            Sd => {
                self.st64(a.wrapping_add(imm), b)?;
                next
            }
            Slti => w!(((a as i64) < (imm as i64)) as u64),
            Sltiu => w!((a < imm) as u64),
            Xori => w!(a ^ imm),
            Ori => w!(a | imm),
            Andi => w!(a & imm),
            Slli => w!(a << (imm & 63)),
            Srli => w!(a >> (imm & 63)),
            Srai => w!(((a as i64) >> (imm & 63)) as u64),
            Sub => w!(a.wrapping_sub(b)),
            Sll => w!(a << (b & 63)),
            Slt => w!(((a as i64) < (b as i64)) as u64),
            Sltu => w!((a < b) as u64),
            Xor => w!(a ^ b),
            Srl => w!(a >> (b & 63)),
            Sra => w!(((a as i64) >> (b & 63)) as u64),
            Or => w!(a | b),
            And => w!(a & b),
            Addiw => ww!(a.wrapping_add(imm) as i32),
            Slliw => ww!((a as u32) << (imm & 31)),
            Srliw => ww!((a as u32) >> (imm & 31)),
            Sraiw => ww!((a as i32) >> (imm & 31)),
            Addw => ww!(a.wrapping_add(b) as i32),
            Subw => ww!(a.wrapping_sub(b) as i32),
            Sllw => ww!((a as u32) << (b & 31)),
            Srlw => ww!((a as u32) >> (b & 31)),
            Sraw => ww!((a as i32) >> (b & 31)),
            Mul => w!(a.wrapping_mul(b)),
            Mulh => w!(((a as i64 as i128 * b as i64 as i128) >> 64) as u64),
            Mulhsu => w!(((a as i64 as i128 * b as i128) >> 64) as u64),
            Mulhu => w!(((a as u128 * b as u128) >> 64) as u64),
            Div => w!(if b == 0 {
                u64::MAX
            } else {
                (a as i64).wrapping_div(b as i64) as u64
            }),
            Divu => w!(a.checked_div(b).unwrap_or(u64::MAX)),
            Rem => w!(if b == 0 {
                a
            } else {
                (a as i64).wrapping_rem(b as i64) as u64
            }),
            Remu => w!(if b == 0 { a } else { a % b }),
            Mulw => ww!((a as i32).wrapping_mul(b as i32)),
            Divw => ww!(if b as i32 == 0 {
                -1
            } else {
                (a as i32).wrapping_div(b as i32)
            }),
            Divuw => ww!((a as u32).checked_div(b as u32).unwrap_or(u32::MAX)),
            Remw => ww!(if b as i32 == 0 {
                a as i32
            } else {
                (a as i32).wrapping_rem(b as i32)
            }),
            Remuw => ww!(if b as u32 == 0 {
                a as u32
            } else {
                a as u32 % b as u32
            }),
            Fence => {
                std::sync::atomic::fence(Ordering::SeqCst);
                if i.raw == PAUSE {
                    // A spin-wait hint (Linux cpu_relax): let a descheduled
                    // hart (perhaps the lock holder) run when harts outnumber
                    // host CPUs.
                    std::thread::yield_now();
                }
                next
            }
            FenceI => {
                self.flush_icache = true;
                self.check = true;
                next
            }
            Ecall => {
                return Err(Exc {
                    cause: CAUSE_ECALL_U + self.mode as u64,
                    tval: 0,
                })
            }
            Ebreak => {
                return Err(Exc {
                    cause: CAUSE_BREAKPOINT,
                    tval: pc,
                })
            }
            Mret => {
                if self.mode != 3 {
                    return Err(Exc::illegal(i.raw));
                }
                self.mret();
                self.pc
            }
            Sret => {
                if self.mode == 0 || (self.mode == 1 && self.mstatus & MSTATUS_TSR != 0) {
                    return Err(Exc::illegal(i.raw));
                }
                self.sret();
                self.pc
            }
            Wfi => {
                if self.mode == 0 || (self.mode == 1 && self.mstatus & MSTATUS_TW != 0) {
                    return Err(Exc::illegal(i.raw));
                }
                self.wfi = true;
                self.check = true;
                next
            }
            SfenceVma => {
                if self.mode == 0 || (self.mode == 1 && self.mstatus & MSTATUS_TVM != 0) {
                    return Err(Exc::illegal(i.raw));
                }
                if rs1 != 0 {
                    self.chain = self.chain.wrapping_add(1);
                    self.tlb.flush_page(a);
                } else {
                    self.flush_tlb();
                }
                next
            }
            Csr => {
                self.csr_insn(i.raw)?;
                next
            }
            Amo => {
                self.amo(i.raw)?;
                next
            }
            Flw | Fld | Fsw | Fsd => {
                if !self.fs_enabled() {
                    return Err(Exc::illegal(i.raw));
                }
                let va = a.wrapping_add(imm);
                match i.op {
                    Flw => {
                        let v = self.ld32(va)?;
                        self.f[rd] = BOX32 | v;
                        self.set_fs_dirty();
                    }
                    Fld => {
                        self.f[rd] = self.ld64(va)?;
                        self.set_fs_dirty();
                    }
                    Fsw => self.st32(va, self.f[rs2])?,
                    _ => self.st64(va, self.f[rs2])?,
                }
                next
            }
            Fp => {
                self.fp_op(i.raw)?;
                next
            }
            Fma => {
                self.fma_op(i.raw)?;
                next
            }
            Illegal => return Err(Exc::illegal(i.raw)),
        };
        Ok(npc)
    }

    #[inline(never)]
    fn amo(&mut self, raw: u32) -> Result<(), Exc> {
        let rd = ((raw >> 7) & 31) as usize;
        let rs1 = ((raw >> 15) & 31) as usize;
        let rs2 = ((raw >> 20) & 31) as usize;
        let f5 = raw >> 27;
        let wide = (raw >> 12) & 7 == 3;
        let n = if wide { 8 } else { 4 };
        let va = self.x[rs1];
        let src = self.x[rs2];
        let result;
        if f5 == 0x02 {
            // LR
            let h = self.amo_host(va, n, LOAD)?;
            self.reserve(h);
            // SAFETY: amo_host returned an aligned address inside guest RAM.
            let v = unsafe {
                if wide {
                    AtomicU64::from_ptr(h as *mut u64).load(Ordering::SeqCst)
                } else {
                    AtomicU32::from_ptr(h as *mut u32).load(Ordering::SeqCst) as u64
                }
            };
            self.reservation = Some((h, v, n as u8));
            result = if wide {
                v
            } else {
                v as u32 as i32 as i64 as u64
            };
        } else if f5 == 0x03 {
            // SC: succeeds only if no other hart stored to the granule since
            // the LR (they reset it: store_hook) and, for stores racing with
            // this one, the word still holds the value LR read.
            let h = self.amo_host(va, n, STORE)?;
            let live = self.take_reservation(h);
            let ok = match self.reservation.take() {
                Some((rh, rv, rn)) if live && rh == h && rn as u64 == n => {
                    // SAFETY: as for LR.
                    unsafe {
                        if wide {
                            AtomicU64::from_ptr(h as *mut u64)
                                .compare_exchange(rv, src, Ordering::SeqCst, Ordering::SeqCst)
                                .is_ok()
                        } else {
                            AtomicU32::from_ptr(h as *mut u32)
                                .compare_exchange(
                                    rv as u32,
                                    src as u32,
                                    Ordering::SeqCst,
                                    Ordering::SeqCst,
                                )
                                .is_ok()
                        }
                    }
                }
                _ => false,
            };
            if ok {
                self.store_hook(h, n);
            }
            result = (!ok) as u64;
        } else {
            let h = self.amo_host(va, n, STORE)?;
            let o = Ordering::SeqCst;
            // SAFETY: amo_host returned an aligned address inside guest RAM.
            let old = unsafe {
                if wide {
                    let p = AtomicU64::from_ptr(h as *mut u64);
                    let s = AtomicI64::from_ptr(h as *mut i64);
                    match f5 {
                        0x01 => p.swap(src, o),
                        0x00 => p.fetch_add(src, o),
                        0x04 => p.fetch_xor(src, o),
                        0x0c => p.fetch_and(src, o),
                        0x08 => p.fetch_or(src, o),
                        0x10 => s.fetch_min(src as i64, o) as u64,
                        0x14 => s.fetch_max(src as i64, o) as u64,
                        0x18 => p.fetch_min(src, o),
                        _ => p.fetch_max(src, o),
                    }
                } else {
                    let p = AtomicU32::from_ptr(h as *mut u32);
                    let s = AtomicI32::from_ptr(h as *mut i32);
                    let v = src as u32;
                    (match f5 {
                        0x01 => p.swap(v, o),
                        0x00 => p.fetch_add(v, o),
                        0x04 => p.fetch_xor(v, o),
                        0x0c => p.fetch_and(v, o),
                        0x08 => p.fetch_or(v, o),
                        0x10 => s.fetch_min(v as i32, o) as u32,
                        0x14 => s.fetch_max(v as i32, o) as u32,
                        0x18 => p.fetch_min(v, o),
                        _ => p.fetch_max(v, o),
                    }) as i32 as i64 as u64
                }
            };
            self.store_hook(h, n);
            result = old;
        }
        if rd != 0 {
            self.x[rd] = result;
        }
        Ok(())
    }

    /// Effective rounding mode; None (illegal) for reserved encodings.
    fn rm(&self, raw: u32) -> Option<u32> {
        let rm = (raw >> 12) & 7;
        let rm = if rm == 7 { self.frm } else { rm };
        (rm <= 4).then_some(rm)
    }

    fn get_f(&self, r: usize, dbl: bool) -> u64 {
        let v = self.f[r];
        if dbl {
            v
        } else if v & BOX32 == BOX32 {
            v & 0xffff_ffff
        } else {
            F32.canonical_nan()
        }
    }

    fn set_f(&mut self, r: usize, v: u64, dbl: bool) {
        self.f[r] = if dbl { v } else { BOX32 | (v & 0xffff_ffff) };
        self.set_fs_dirty();
    }

    fn set_xr(&mut self, r: usize, v: u64) {
        if r != 0 {
            self.x[r] = v;
        }
    }

    fn accrue(&mut self, fl: u32) {
        if fl != 0 {
            self.fflags |= fl;
            self.set_fs_dirty();
        }
    }

    #[inline(never)]
    fn fp_op(&mut self, raw: u32) -> Result<(), Exc> {
        let ill = Exc::illegal(raw);
        if !self.fs_enabled() {
            return Err(ill);
        }
        let rd = ((raw >> 7) & 31) as usize;
        let rs1 = ((raw >> 15) & 31) as usize;
        let rs2 = ((raw >> 20) & 31) as usize;
        let f3 = (raw >> 12) & 7;
        let funct5 = raw >> 27;
        let dbl = match (raw >> 25) & 3 {
            0 => false,
            1 => true,
            _ => return Err(ill),
        };
        let fmt = if dbl { F64 } else { F32 };
        let mut fl = 0u32;
        let a = self.get_f(rs1, dbl);
        let b = self.get_f(rs2, dbl);
        match funct5 {
            0x00..=0x03 => {
                let rm = self.rm(raw).ok_or(ill)?;
                let r = match funct5 {
                    0 => fpu::add(fmt, a, b, rm, &mut fl),
                    1 => fpu::sub(fmt, a, b, rm, &mut fl),
                    2 => fpu::mul(fmt, a, b, rm, &mut fl),
                    _ => fpu::div(fmt, a, b, rm, &mut fl),
                };
                self.set_f(rd, r, dbl);
            }
            0x0b => {
                if rs2 != 0 {
                    return Err(ill);
                }
                let rm = self.rm(raw).ok_or(ill)?;
                let r = fpu::sqrt(fmt, a, rm, &mut fl);
                self.set_f(rd, r, dbl);
            }
            0x04 => {
                let sign = if dbl { 1u64 << 63 } else { 1 << 31 };
                let s = match f3 {
                    0 => b & sign,
                    1 => !b & sign,
                    2 => (a ^ b) & sign,
                    _ => return Err(ill),
                };
                self.set_f(rd, (a & !sign) | s, dbl);
            }
            0x05 => {
                if f3 > 1 {
                    return Err(ill);
                }
                let r = fpu::min_max(fmt, a, b, f3 == 1, &mut fl);
                self.set_f(rd, r, dbl);
            }
            0x08 => {
                let rm = self.rm(raw).ok_or(ill)?;
                match (dbl, rs2) {
                    (false, 1) => {
                        let src = self.get_f(rs1, true);
                        let r = fpu::convert(F64, F32, src, rm, &mut fl);
                        self.set_f(rd, r, false);
                    }
                    (true, 0) => {
                        let src = self.get_f(rs1, false);
                        let r = fpu::convert(F32, F64, src, rm, &mut fl);
                        self.set_f(rd, r, true);
                    }
                    _ => return Err(ill),
                }
            }
            0x14 => {
                if f3 > 2 {
                    return Err(ill);
                }
                let r = fpu::compare(fmt, a, b, f3, &mut fl);
                self.set_xr(rd, r);
            }
            0x18 => {
                if rs2 > 3 {
                    return Err(ill);
                }
                let rm = self.rm(raw).ok_or(ill)?;
                let bits = if rs2 < 2 { 32 } else { 64 };
                let r = fpu::to_int(fmt, a, bits, rs2 & 1 == 0, rm, &mut fl);
                self.set_xr(rd, r);
            }
            0x1a => {
                if rs2 > 3 {
                    return Err(ill);
                }
                let rm = self.rm(raw).ok_or(ill)?;
                let bits = if rs2 < 2 { 32 } else { 64 };
                let r = fpu::from_int(fmt, self.x[rs1], bits, rs2 & 1 == 0, rm, &mut fl);
                self.set_f(rd, r, dbl);
            }
            0x1c if rs2 == 0 && f3 == 0 => {
                let v = self.f[rs1];
                let r = if dbl {
                    v
                } else {
                    v as u32 as i32 as i64 as u64
                };
                self.set_xr(rd, r);
            }
            0x1c if rs2 == 0 && f3 == 1 => {
                let r = fpu::classify(fmt, a);
                self.set_xr(rd, r);
            }
            0x1e if rs2 == 0 && f3 == 0 => {
                let v = self.x[rs1];
                self.set_f(rd, v, dbl);
            }
            _ => return Err(ill),
        }
        self.accrue(fl);
        Ok(())
    }

    #[inline(never)]
    fn fma_op(&mut self, raw: u32) -> Result<(), Exc> {
        let ill = Exc::illegal(raw);
        if !self.fs_enabled() {
            return Err(ill);
        }
        let dbl = match (raw >> 25) & 3 {
            0 => false,
            1 => true,
            _ => return Err(ill),
        };
        let rm = self.rm(raw).ok_or(ill)?;
        let fmt = if dbl { F64 } else { F32 };
        let rd = ((raw >> 7) & 31) as usize;
        let a = self.get_f(((raw >> 15) & 31) as usize, dbl);
        let b = self.get_f(((raw >> 20) & 31) as usize, dbl);
        let c = self.get_f((raw >> 27) as usize, dbl);
        let (neg_prod, neg_c) = match raw & 0x7f {
            0x43 => (false, false),
            0x47 => (false, true),
            0x4b => (true, false),
            _ => (true, true),
        };
        let mut fl = 0;
        let r = fpu::fma(fmt, a, b, c, neg_prod, neg_c, rm, &mut fl);
        self.set_f(rd, r, dbl);
        self.accrue(fl);
        Ok(())
    }
}
