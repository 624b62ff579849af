//! Instruction decoding: 32-bit and compressed (RV64C) encodings into one
//! compact [`Insn`] with pre-extracted fields, decoded once per block.
//!
//! Conventions: integer destination registers are remapped 0 → 32 (a scratch
//! slot), so the executor writes `x[rd]` without testing for x0. Ops whose
//! rarer semantics need the original bits (CSR, FP arithmetic, AMO) keep them in
//! `raw` and read fields from there.

/// Operation kinds. Compressed encodings expand to the same ops (`len` = 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Illegal,
    Lui,
    Auipc,
    Jal,
    Jalr,
    Beq,
    Bne,
    Blt,
    Bge,
    Bltu,
    Bgeu,
    Lb,
    Lh,
    Lw,
    Ld,
    Lbu,
    Lhu,
    Lwu,
    Sb,
    Sh,
    Sw,
    Sd,
    Addi,
    Slti,
    Sltiu,
    Xori,
    Ori,
    Andi,
    Slli,
    Srli,
    Srai,
    Add,
    Sub,
    Sll,
    Slt,
    Sltu,
    Xor,
    Srl,
    Sra,
    Or,
    And,
    Addiw,
    Slliw,
    Srliw,
    Sraiw,
    Addw,
    Subw,
    Sllw,
    Srlw,
    Sraw,
    Mul,
    Mulh,
    Mulhsu,
    Mulhu,
    Div,
    Divu,
    Rem,
    Remu,
    Mulw,
    Divw,
    Divuw,
    Remw,
    Remuw,
    Fence,
    FenceI,
    Ecall,
    Ebreak,
    Mret,
    Sret,
    Wfi,
    SfenceVma,
    /// CSR access; `imm` = CSR number, funct3 and fields from `raw`.
    Csr,
    /// LR/SC/AMO; width and funct5 from `raw`.
    Amo,
    Flw,
    Fld,
    Fsw,
    Fsd,
    /// OP-FP major opcode; everything from `raw`.
    Fp,
    /// FMADD/FMSUB/FNMSUB/FNMADD; everything from `raw`.
    Fma,
}

/// One decoded instruction (16 bytes).
#[derive(Debug, Clone, Copy)]
pub struct Insn {
    pub op: Op,
    pub rd: u8,
    pub rs1: u8,
    pub rs2: u8,
    /// Instruction length in bytes: 2 or 4.
    pub len: u8,
    pub imm: i32,
    /// The instruction bits (16-bit parcel for compressed), for mtval and
    /// the ops decoded at execution time.
    pub raw: u32,
}

impl Insn {
    fn new(op: Op, rd: u32, rs1: u32, rs2: u32, imm: i32, raw: u32, len: u8) -> Self {
        let rd = if rd == 0 && writes_x(op) {
            32
        } else {
            rd as u8
        };
        Insn {
            op,
            rd,
            rs1: rs1 as u8,
            rs2: rs2 as u8,
            len,
            imm,
            raw,
        }
    }
    pub fn illegal(raw: u32, len: u8) -> Self {
        Insn {
            op: Op::Illegal,
            rd: 0,
            rs1: 0,
            rs2: 0,
            len,
            imm: 0,
            raw,
        }
    }
    /// Jump or system op: ends a decoded block. Conditional branches don't:
    /// a taken branch leaves the block early, a not-taken one falls through.
    pub fn ends_block(&self) -> bool {
        use Op::*;
        matches!(
            self.op,
            Illegal | Jal | Jalr | FenceI | Ecall | Ebreak | Mret | Sret | Wfi | SfenceVma | Csr
        )
    }
}

/// Ops whose `rd` is an integer register written through `x[rd]` directly.
fn writes_x(op: Op) -> bool {
    use Op::*;
    !matches!(
        op,
        Illegal
            | Beq
            | Bne
            | Blt
            | Bge
            | Bltu
            | Bgeu
            | Sb
            | Sh
            | Sw
            | Sd
            | Fence
            | FenceI
            | Ecall
            | Ebreak
            | Mret
            | Sret
            | Wfi
            | SfenceVma
            | Csr
            | Amo
            | Flw
            | Fld
            | Fsw
            | Fsd
            | Fp
            | Fma
    )
}

/// Length in bytes of the instruction whose first parcel is `lo16`; 0 for
/// encodings longer than 32 bits (illegal here).
pub fn insn_len(lo16: u16) -> u8 {
    if lo16 & 3 != 3 {
        2
    } else if lo16 & 0x1c != 0x1c {
        4
    } else {
        0
    }
}

#[inline]
fn bits(x: u32, hi: u32, lo: u32) -> u32 {
    (x >> lo) & ((1u32 << (hi - lo + 1)) - 1)
}

#[inline]
fn sext(x: u32, width: u32) -> i32 {
    let s = 32 - width;
    ((x << s) as i32) >> s
}

/// Decodes a 32-bit instruction.
pub fn decode32(r: u32) -> Insn {
    use Op::*;
    let opcode = r & 0x7f;
    let rd = bits(r, 11, 7);
    let rs1 = bits(r, 19, 15);
    let rs2 = bits(r, 24, 20);
    let f3 = bits(r, 14, 12);
    let f7 = bits(r, 31, 25);
    let imm_i = (r as i32) >> 20;
    let imm_s = ((r as i32) >> 25 << 5) | rd as i32;
    let imm_b = sext(
        (bits(r, 31, 31) << 12)
            | (bits(r, 7, 7) << 11)
            | (bits(r, 30, 25) << 5)
            | (bits(r, 11, 8) << 1),
        13,
    );
    let imm_u = (r & 0xffff_f000) as i32;
    let imm_j = sext(
        (bits(r, 31, 31) << 20)
            | (bits(r, 19, 12) << 12)
            | (bits(r, 20, 20) << 11)
            | (bits(r, 30, 21) << 1),
        21,
    );
    let mk = |op, imm| Insn::new(op, rd, rs1, rs2, imm, r, 4);
    let ill = Insn::illegal(r, 4);
    match opcode {
        0x37 => mk(Lui, imm_u),
        0x17 => mk(Auipc, imm_u),
        0x6f => mk(Jal, imm_j),
        0x67 if f3 == 0 => mk(Jalr, imm_i),
        0x63 => match f3 {
            0 => mk(Beq, imm_b),
            1 => mk(Bne, imm_b),
            4 => mk(Blt, imm_b),
            5 => mk(Bge, imm_b),
            6 => mk(Bltu, imm_b),
            7 => mk(Bgeu, imm_b),
            _ => ill,
        },
        0x03 => match f3 {
            0 => mk(Lb, imm_i),
            1 => mk(Lh, imm_i),
            2 => mk(Lw, imm_i),
            3 => mk(Ld, imm_i),
            4 => mk(Lbu, imm_i),
            5 => mk(Lhu, imm_i),
            6 => mk(Lwu, imm_i),
            _ => ill,
        },
        0x23 => match f3 {
            0 => mk(Sb, imm_s),
            1 => mk(Sh, imm_s),
            2 => mk(Sw, imm_s),
            3 => mk(Sd, imm_s),
            _ => ill,
        },
        0x13 => {
            let sh = bits(r, 31, 26);
            match f3 {
                0 => mk(Addi, imm_i),
                2 => mk(Slti, imm_i),
                3 => mk(Sltiu, imm_i),
                4 => mk(Xori, imm_i),
                6 => mk(Ori, imm_i),
                7 => mk(Andi, imm_i),
                1 if sh == 0 => mk(Slli, bits(r, 25, 20) as i32),
                5 if sh == 0 => mk(Srli, bits(r, 25, 20) as i32),
                5 if sh == 0x10 => mk(Srai, bits(r, 25, 20) as i32),
                _ => ill,
            }
        }
        0x1b => match (f3, f7) {
            (0, _) => mk(Addiw, imm_i),
            (1, 0) => mk(Slliw, rs2 as i32),
            (5, 0) => mk(Srliw, rs2 as i32),
            (5, 0x20) => mk(Sraiw, rs2 as i32),
            _ => ill,
        },
        0x33 => match (f7, f3) {
            (0, 0) => mk(Add, 0),
            (0x20, 0) => mk(Sub, 0),
            (0, 1) => mk(Sll, 0),
            (0, 2) => mk(Slt, 0),
            (0, 3) => mk(Sltu, 0),
            (0, 4) => mk(Xor, 0),
            (0, 5) => mk(Srl, 0),
            (0x20, 5) => mk(Sra, 0),
            (0, 6) => mk(Or, 0),
            (0, 7) => mk(And, 0),
            (1, 0) => mk(Mul, 0),
            (1, 1) => mk(Mulh, 0),
            (1, 2) => mk(Mulhsu, 0),
            (1, 3) => mk(Mulhu, 0),
            (1, 4) => mk(Div, 0),
            (1, 5) => mk(Divu, 0),
            (1, 6) => mk(Rem, 0),
            (1, 7) => mk(Remu, 0),
            _ => ill,
        },
        0x3b => match (f7, f3) {
            (0, 0) => mk(Addw, 0),
            (0x20, 0) => mk(Subw, 0),
            (0, 1) => mk(Sllw, 0),
            (0, 5) => mk(Srlw, 0),
            (0x20, 5) => mk(Sraw, 0),
            (1, 0) => mk(Mulw, 0),
            (1, 4) => mk(Divw, 0),
            (1, 5) => mk(Divuw, 0),
            (1, 6) => mk(Remw, 0),
            (1, 7) => mk(Remuw, 0),
            _ => ill,
        },
        0x0f => match f3 {
            0 => mk(Fence, 0),
            1 => mk(FenceI, 0),
            _ => ill,
        },
        0x73 => match f3 {
            0 => match r {
                0x0000_0073 => mk(Ecall, 0),
                0x0010_0073 => mk(Ebreak, 0),
                0x1020_0073 => mk(Sret, 0),
                0x3020_0073 => mk(Mret, 0),
                0x1050_0073 => mk(Wfi, 0),
                _ if f7 == 0x09 && rd == 0 => mk(SfenceVma, 0),
                _ => ill,
            },
            4 => ill,
            _ => mk(Csr, bits(r, 31, 20) as i32),
        },
        0x2f if f3 == 2 || f3 == 3 => {
            let f5 = bits(r, 31, 27);
            match f5 {
                0x02 if rs2 == 0 => mk(Amo, 0),
                0x02 => ill,
                0x03 | 0x01 | 0x00 | 0x04 | 0x0c | 0x08 | 0x10 | 0x14 | 0x18 | 0x1c => mk(Amo, 0),
                _ => ill,
            }
        }
        0x07 => match f3 {
            2 => mk(Flw, imm_i),
            3 => mk(Fld, imm_i),
            _ => ill,
        },
        0x27 => match f3 {
            2 => mk(Fsw, imm_s),
            3 => mk(Fsd, imm_s),
            _ => ill,
        },
        0x53 => mk(Fp, 0),
        0x43 | 0x47 | 0x4b | 0x4f => mk(Fma, 0),
        _ => ill,
    }
}

/// Decodes a 16-bit compressed instruction (RV64C).
pub fn decode16(c: u32) -> Insn {
    use Op::*;
    let ill = Insn::illegal(c, 2);
    let mk = |op, rd: u32, rs1: u32, rs2: u32, imm: i32| Insn::new(op, rd, rs1, rs2, imm, c, 2);
    let f3 = bits(c, 15, 13);
    let rdp = bits(c, 4, 2) + 8; // rd' / rs2'
    let rs1p = bits(c, 9, 7) + 8;
    let rd = bits(c, 11, 7);
    let rs2 = bits(c, 6, 2);
    let imm6 = sext((bits(c, 12, 12) << 5) | bits(c, 6, 2), 6);
    match (c & 3, f3) {
        (0, 0) => {
            let imm = (bits(c, 12, 11) << 4)
                | (bits(c, 10, 7) << 6)
                | (bits(c, 6, 6) << 2)
                | (bits(c, 5, 5) << 3);
            if imm == 0 {
                ill
            } else {
                mk(Addi, rdp, 2, 0, imm as i32)
            }
        }
        (0, 1) => mk(
            Fld,
            rdp,
            rs1p,
            0,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6)) as i32,
        ),
        (0, 2) => mk(
            Lw,
            rdp,
            rs1p,
            0,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 6) << 2) | (bits(c, 5, 5) << 6)) as i32,
        ),
        (0, 3) => mk(
            Ld,
            rdp,
            rs1p,
            0,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6)) as i32,
        ),
        (0, 5) => mk(
            Fsd,
            0,
            rs1p,
            rdp,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6)) as i32,
        ),
        (0, 6) => mk(
            Sw,
            0,
            rs1p,
            rdp,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 6) << 2) | (bits(c, 5, 5) << 6)) as i32,
        ),
        (0, 7) => mk(
            Sd,
            0,
            rs1p,
            rdp,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6)) as i32,
        ),
        (1, 0) => mk(Addi, rd, rd, 0, imm6),
        (1, 1) => {
            if rd == 0 {
                ill
            } else {
                mk(Addiw, rd, rd, 0, imm6)
            }
        }
        (1, 2) => mk(Addi, rd, 0, 0, imm6),
        (1, 3) => {
            if rd == 2 {
                let imm = sext(
                    (bits(c, 12, 12) << 9)
                        | (bits(c, 6, 6) << 4)
                        | (bits(c, 5, 5) << 6)
                        | (bits(c, 4, 3) << 7)
                        | (bits(c, 2, 2) << 5),
                    10,
                );
                if imm == 0 {
                    ill
                } else {
                    mk(Addi, 2, 2, 0, imm)
                }
            } else if imm6 == 0 {
                ill
            } else {
                mk(Lui, rd, 0, 0, imm6 << 12)
            }
        }
        (1, 4) => {
            let sh = ((bits(c, 12, 12) << 5) | bits(c, 6, 2)) as i32;
            match bits(c, 11, 10) {
                0 => mk(Srli, rs1p, rs1p, 0, sh),
                1 => mk(Srai, rs1p, rs1p, 0, sh),
                2 => mk(Andi, rs1p, rs1p, 0, imm6),
                _ => {
                    let op = match (bits(c, 12, 12), bits(c, 6, 5)) {
                        (0, 0) => Sub,
                        (0, 1) => Xor,
                        (0, 2) => Or,
                        (0, 3) => And,
                        (1, 0) => Subw,
                        (1, 1) => Addw,
                        _ => return ill,
                    };
                    mk(op, rs1p, rs1p, rdp, 0)
                }
            }
        }
        (1, 5) => {
            let imm = sext(
                (bits(c, 12, 12) << 11)
                    | (bits(c, 11, 11) << 4)
                    | (bits(c, 10, 9) << 8)
                    | (bits(c, 8, 8) << 10)
                    | (bits(c, 7, 7) << 6)
                    | (bits(c, 6, 6) << 7)
                    | (bits(c, 5, 3) << 1)
                    | (bits(c, 2, 2) << 5),
                12,
            );
            mk(Jal, 0, 0, 0, imm)
        }
        (1, 6) | (1, 7) => {
            let imm = sext(
                (bits(c, 12, 12) << 8)
                    | (bits(c, 11, 10) << 3)
                    | (bits(c, 6, 5) << 6)
                    | (bits(c, 4, 3) << 1)
                    | (bits(c, 2, 2) << 5),
                9,
            );
            mk(if f3 == 6 { Beq } else { Bne }, 0, rs1p, 0, imm)
        }
        (2, 0) => mk(
            Slli,
            rd,
            rd,
            0,
            ((bits(c, 12, 12) << 5) | bits(c, 6, 2)) as i32,
        ),
        (2, 1) => mk(
            Fld,
            rd,
            2,
            0,
            ((bits(c, 12, 12) << 5) | (bits(c, 6, 5) << 3) | (bits(c, 4, 2) << 6)) as i32,
        ),
        (2, 2) => {
            if rd == 0 {
                ill
            } else {
                mk(
                    Lw,
                    rd,
                    2,
                    0,
                    ((bits(c, 12, 12) << 5) | (bits(c, 6, 4) << 2) | (bits(c, 3, 2) << 6)) as i32,
                )
            }
        }
        (2, 3) => {
            if rd == 0 {
                ill
            } else {
                mk(
                    Ld,
                    rd,
                    2,
                    0,
                    ((bits(c, 12, 12) << 5) | (bits(c, 6, 5) << 3) | (bits(c, 4, 2) << 6)) as i32,
                )
            }
        }
        (2, 4) => {
            let b12 = bits(c, 12, 12);
            match (b12, rd, rs2) {
                (0, 0, 0) => ill,
                (0, _, 0) => mk(Jalr, 0, rd, 0, 0),
                (0, _, _) => mk(Add, rd, 0, rs2, 0),
                (_, 0, 0) => mk(Ebreak, 0, 0, 0, 0),
                (_, _, 0) => mk(Jalr, 1, rd, 0, 0),
                _ => mk(Add, rd, rd, rs2, 0),
            }
        }
        (2, 5) => mk(
            Fsd,
            0,
            2,
            rs2,
            ((bits(c, 12, 10) << 3) | (bits(c, 9, 7) << 6)) as i32,
        ),
        (2, 6) => mk(
            Sw,
            0,
            2,
            rs2,
            ((bits(c, 12, 9) << 2) | (bits(c, 8, 7) << 6)) as i32,
        ),
        (2, 7) => mk(
            Sd,
            0,
            2,
            rs2,
            ((bits(c, 12, 10) << 3) | (bits(c, 9, 7) << 6)) as i32,
        ),
        _ => ill,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic_forms() {
        // addi a0, a0, -1
        let i = decode32(0xfff5_0513);
        assert_eq!((i.op, i.rd, i.rs1, i.imm), (Op::Addi, 10, 10, -1));
        // add x0, x1, x2: rd remapped to scratch
        assert_eq!(decode32(0x0020_8033).rd, 32);
        // c.addi4spn with zero immediate and the all-zero parcel are illegal
        assert_eq!(decode16(0).op, Op::Illegal);
        // c.li a0, -1
        let i = decode16(0x557d);
        assert_eq!((i.op, i.rd, i.rs1, i.imm, i.len), (Op::Addi, 10, 0, -1, 2));
        // c.j -2 (0xbffd)
        let i = decode16(0xbffd);
        assert_eq!((i.op, i.imm), (Op::Jal, -2));
        assert_eq!(insn_len(0x0013), 4);
        assert_eq!(insn_len(0x001f), 0);
    }
}
