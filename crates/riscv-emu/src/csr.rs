//! Control and status registers: privilege and read-only checks, WARL
//! legalisation, counter gating (mcounteren/scounteren), Sstc, the PMP
//! registers (enforced by module `pmp`), and an illegal-instruction trap for
//! every CSR not listed here (OpenSBI probes by trapping).

use crate::cpus::*;
use crate::hart::Hart;
use crate::trap::*;

/// misa: RV64 with A C D F I M S U.
pub const MISA: u64 = (2 << 62)
    | (1 << 0)
    | (1 << 2)
    | (1 << 3)
    | (1 << 5)
    | (1 << 8)
    | (1 << 12)
    | (1 << 18)
    | (1 << 20);

const MSTATUS_WMASK: u64 = MSTATUS_SIE
    | MSTATUS_MIE
    | MSTATUS_SPIE
    | MSTATUS_MPIE
    | MSTATUS_SPP
    | MSTATUS_MPP
    | MSTATUS_FS
    | MSTATUS_MPRV
    | MSTATUS_SUM
    | MSTATUS_MXR
    | MSTATUS_TVM
    | MSTATUS_TW
    | MSTATUS_TSR;
const SSTATUS_WMASK: u64 =
    MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_FS | MSTATUS_SUM | MSTATUS_MXR;
/// Readable through sstatus: also UXL and SD.
const SSTATUS_RMASK: u64 = SSTATUS_WMASK | (3 << 32) | (1 << 63);
const MIE_MASK: u64 = MIP_SSIP | MIP_MSIP | MIP_STIP | MIP_MTIP | MIP_SEIP | MIP_MEIP;
const S_INTS: u64 = MIP_SSIP | MIP_STIP | MIP_SEIP;
/// Delegable exceptions: 0-9, 12, 13, 15 (not ecall-from-M).
const MEDELEG_MASK: u64 = 0xb3ff;

impl Hart {
    pub fn mstatus_read(&self) -> u64 {
        let mut s = self.mstatus | (2 << 32) | (2 << 34);
        if s & MSTATUS_FS == MSTATUS_FS {
            s |= 1 << 63;
        }
        s
    }

    fn mstatus_write(&mut self, v: u64, mask: u64) {
        let old = self.mstatus;
        let mut new = (old & !mask) | (v & mask);
        if (new >> 11) & 3 == 2 {
            new = (new & !MSTATUS_MPP) | (old & MSTATUS_MPP);
        }
        self.mstatus = new;
        if (old ^ new) & MSTATUS_MXR != 0 {
            self.flush_tlb();
        }
        self.update_ctx();
    }

    pub fn fs_enabled(&self) -> bool {
        self.mstatus & MSTATUS_FS != 0
    }

    pub fn set_fs_dirty(&mut self) {
        self.mstatus |= MSTATUS_FS;
    }

    /// Counter CSR visible at the current privilege?
    fn counter_ok(&self, bit: u64) -> bool {
        (self.mode == 3 || self.mcounteren & (1 << bit) != 0)
            && (self.mode >= 1 || self.scounteren & (1 << bit) != 0)
    }

    /// CSR read; None means illegal instruction.
    pub fn csr_read(&mut self, csr: u32) -> Option<u64> {
        let v = match csr {
            0x001..=0x003 => {
                if !self.fs_enabled() {
                    return None;
                }
                match csr {
                    1 => self.fflags as u64,
                    2 => self.frm as u64,
                    _ => (self.frm << 5 | self.fflags) as u64,
                }
            }
            0xc00..=0xc1f => {
                let bit = (csr - 0xc00) as u64;
                if !self.counter_ok(bit) {
                    return None;
                }
                match bit {
                    0 | 2 => self.instret.wrapping_sub(1),
                    1 => self.sh.clock.mtime(),
                    _ => 0,
                }
            }
            0x100 => self.mstatus_read() & SSTATUS_RMASK,
            0x104 => self.mie & self.mideleg,
            0x105 => self.stvec,
            0x106 => self.scounteren,
            0x10a => self.senvcfg,
            0x140 => self.sscratch,
            0x141 => self.sepc,
            0x142 => self.scause,
            0x143 => self.stval,
            0x144 => self.read_mip() & self.mideleg,
            0x14d => {
                if !self.stimecmp_ok() {
                    return None;
                }
                self.stimecmp
            }
            0x180 => {
                if self.mode == 1 && self.mstatus & MSTATUS_TVM != 0 {
                    return None;
                }
                self.satp
            }
            0xf11..=0xf13 | 0xf15 => 0,
            0xf14 => self.id as u64,
            0x300 => self.mstatus_read(),
            0x301 => MISA,
            0x302 => self.medeleg,
            0x303 => self.mideleg,
            0x304 => self.mie,
            0x305 => self.mtvec,
            0x306 => self.mcounteren,
            0x30a => self.menvcfg,
            0x320 => self.mcountinhibit,
            0x323..=0x33f => 0,
            0x340 => self.mscratch,
            0x341 => self.mepc,
            0x342 => self.mcause,
            0x343 => self.mtval,
            0x344 => self.read_mip(),
            0x3a0..=0x3af => {
                let n = csr - 0x3a0;
                if n & 1 != 0 {
                    return None;
                }
                self.pmpcfg[(n / 2) as usize]
            }
            0x3b0..=0x3ef => self.pmpaddr[(csr - 0x3b0) as usize],
            0xb00 | 0xb02 => self.instret.wrapping_sub(1),
            0xb03..=0xb1f => 0,
            _ => return None,
        };
        Some(v)
    }

    fn stimecmp_ok(&self) -> bool {
        self.mode == 3 || (self.stce() && self.mcounteren & 2 != 0)
    }

    /// CSR write (after the read succeeded); None means illegal instruction.
    pub fn csr_write(&mut self, csr: u32, v: u64) -> Option<()> {
        match csr {
            0x001 => {
                self.fflags = (v & 0x1f) as u32;
                self.set_fs_dirty();
            }
            0x002 => {
                self.frm = (v & 7) as u32;
                self.set_fs_dirty();
            }
            0x003 => {
                self.fflags = (v & 0x1f) as u32;
                self.frm = ((v >> 5) & 7) as u32;
                self.set_fs_dirty();
            }
            0x100 => self.mstatus_write(v, SSTATUS_WMASK),
            0x104 => self.mie = (self.mie & !self.mideleg) | (v & self.mideleg & MIE_MASK),
            0x105 => self.stvec = legal_tvec(v, self.stvec),
            0x106 => self.scounteren = v & 0xffff_ffff,
            0x10a => {}
            0x140 => self.sscratch = v,
            0x141 => self.sepc = v & !1,
            0x142 => self.scause = v,
            0x143 => self.stval = v,
            0x144 => {
                let m = self.mideleg & MIP_SSIP;
                self.mip_local = (self.mip_local & !m) | (v & m);
            }
            0x14d => self.stimecmp = v,
            0x180 => {
                let mode = v >> 60;
                if mode == 0 || mode == 8 || mode == 9 {
                    // ASIDLEN = 0: the ASID field reads as zero.
                    self.satp = v & (0xf << 60 | ((1 << 44) - 1));
                    self.flush_tlb();
                    self.update_ctx();
                }
            }
            0x300 => self.mstatus_write(v, MSTATUS_WMASK),
            0x301 => {}
            0x302 => self.medeleg = v & MEDELEG_MASK,
            0x303 => self.mideleg = v & S_INTS,
            0x304 => self.mie = v & MIE_MASK,
            0x305 => self.mtvec = legal_tvec(v, self.mtvec),
            0x306 => self.mcounteren = v & 0xffff_ffff,
            0x30a => self.menvcfg = v & (1 << 63),
            0x320 => self.mcountinhibit = v & 0xffff_fffd,
            0x323..=0x33f => {}
            0x340 => self.mscratch = v,
            0x341 => self.mepc = v & !1,
            0x342 => self.mcause = v,
            0x343 => self.mtval = v,
            0x344 => {
                let mut m = MIP_SSIP | MIP_SEIP;
                if !self.stce() {
                    m |= MIP_STIP;
                }
                self.mip_local = (self.mip_local & !m) | (v & m);
            }
            0x3a0..=0x3af => {
                let i = ((csr - 0x3a0) / 2) as usize;
                // Locked entries keep their value; W without R is reserved (→ 0).
                let mut out = 0u64;
                for b in 0..8 {
                    let old = (self.pmpcfg[i] >> (8 * b)) & 0xff;
                    let mut new = (v >> (8 * b)) & 0xff & 0x9f;
                    if old & 0x80 != 0 {
                        new = old;
                    } else if new & 3 == 2 {
                        new &= !3;
                    }
                    out |= new << (8 * b);
                }
                self.pmpcfg[i] = out;
                self.pmp_changed();
            }
            0x3b0..=0x3ef => {
                let i = (csr - 0x3b0) as usize;
                let cfg = |j: usize| (self.pmpcfg[j / 8] >> (8 * (j % 8))) & 0xff;
                // Locked entries keep their address, and so does the base of
                // a locked TOR entry above.
                let next_locked_tor = i < 63 && cfg(i + 1) & 0x98 == 0x88;
                if cfg(i) & 0x80 == 0 && !next_locked_tor {
                    self.pmpaddr[i] = v & ((1 << 54) - 1);
                    self.pmp_changed();
                }
            }
            0xb00 | 0xb02 => self.instret = v.wrapping_add(1),
            0xb03..=0xb1f => {}
            0xc00..=0xc1f => return None,
            _ => return None,
        }
        Some(())
    }

    /// Executes a Zicsr instruction.
    pub fn csr_insn(&mut self, raw: u32) -> Result<(), Exc> {
        let f3 = (raw >> 12) & 7;
        let rd = ((raw >> 7) & 31) as usize;
        let rs1 = ((raw >> 15) & 31) as usize;
        let csr = raw >> 20;
        let src = if f3 >= 5 { rs1 as u64 } else { self.x[rs1] };
        let write = f3 & 3 == 1 || rs1 != 0;
        let ill = Exc::illegal(raw);
        if (csr >> 8) & 3 > self.mode as u32 {
            return Err(ill);
        }
        if write && csr >> 10 == 3 {
            return Err(ill);
        }
        let old = self.csr_read(csr).ok_or(ill)?;
        if write {
            // Read-modify-write of mip sees only the software SEIP bit, not the
            // PLIC's line (else `csrs mip, SSIP` would latch SEIP forever).
            let base = if csr == 0x344 {
                (old & !MIP_SEIP) | (self.mip_local & MIP_SEIP)
            } else {
                old
            };
            let new = match f3 & 3 {
                1 => src,
                2 => base | src,
                _ => base & !src,
            };
            self.csr_write(csr, new).ok_or(ill)?;
        }
        if rd != 0 {
            self.x[rd] = old;
        }
        // Writes that can make an interrupt takeable: look at block end.
        if write
            && matches!(
                csr,
                0x100 | 0x104 | 0x144 | 0x14d | 0x300 | 0x303 | 0x304 | 0x30a | 0x344
            )
        {
            self.check = true;
        }
        Ok(())
    }
}

fn legal_tvec(v: u64, old: u64) -> u64 {
    match v & 3 {
        0 | 1 => v,
        _ => (v & !3) | (old & 3),
    }
}
