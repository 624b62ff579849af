//! Fuzz entry points (fuzz/fuzz_targets/riscv_decode.rs); the unit test below
//! runs the same body over a seeded corpus on stable.

use crate::decode::{decode16, decode32, insn_len};
use crate::fpu;

/// Decodes every 16/32-bit window of `data` and feeds 8-byte operand triples
/// through every FP operation in every rounding mode. Must never panic.
pub fn decode_and_fp(data: &[u8]) {
    for w in data.windows(4) {
        let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let i = match insn_len(word as u16) {
            2 => decode16(word & 0xffff),
            _ => decode32(word),
        };
        let _ = (i.ends_block(), i.len);
    }
    for c in data.chunks_exact(25) {
        let a = u64::from_le_bytes(c[0..8].try_into().unwrap_or([0; 8]));
        let b = u64::from_le_bytes(c[8..16].try_into().unwrap_or([0; 8]));
        let d = u64::from_le_bytes(c[16..24].try_into().unwrap_or([0; 8]));
        let rm = (c[24] % 5) as u32;
        for f in [fpu::F32, fpu::F64] {
            let mut fl = 0;
            fpu::add(f, a, b, rm, &mut fl);
            fpu::sub(f, a, b, rm, &mut fl);
            fpu::mul(f, a, b, rm, &mut fl);
            fpu::div(f, a, b, rm, &mut fl);
            fpu::sqrt(f, a, rm, &mut fl);
            fpu::fma(f, a, b, d, c[24] & 1 != 0, c[24] & 2 != 0, rm, &mut fl);
            fpu::min_max(f, a, b, c[24] & 4 != 0, &mut fl);
            fpu::compare(f, a, b, (c[24] % 3) as u32, &mut fl);
            fpu::classify(f, a);
            for bits in [32, 64] {
                fpu::to_int(f, a, bits, c[24] & 8 != 0, rm, &mut fl);
                fpu::from_int(f, b, bits, c[24] & 8 != 0, rm, &mut fl);
            }
        }
        fpu::convert(fpu::F64, fpu::F32, a, rm, &mut 0);
        fpu::convert(fpu::F32, fpu::F64, a & 0xffff_ffff, rm, &mut 0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn corpus_never_panics() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for len in [0usize, 3, 25, 100, 4096] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                })
                .collect();
            super::decode_and_fp(&data);
        }
        // Special values: zeros, infinities, NaNs, subnormals, extremes.
        let specials: [u64; 8] = [
            0,
            1 << 63,
            0x7ff0 << 48,
            0x7ff8 << 48,
            0x7ff0_0000_0000_0001,
            1,
            u64::MAX,
            0x7f80_0001,
        ];
        let mut data = Vec::new();
        for a in specials {
            for b in specials {
                data.extend_from_slice(&a.to_le_bytes());
                data.extend_from_slice(&b.to_le_bytes());
                data.extend_from_slice(&specials[(a % 8) as usize].to_le_bytes());
                data.push((a ^ b) as u8);
            }
        }
        super::decode_and_fp(&data);
    }
}
