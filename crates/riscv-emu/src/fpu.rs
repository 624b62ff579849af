//! IEEE-754 binary32/binary64 arithmetic with RISC-V semantics, in software:
//! every rounding mode (incl. RMM), exact accrued flags (tininess detected after
//! rounding), canonical NaNs and single-rounded FMA. Values are carried as raw
//! bits; the significand math runs on u128 with a sticky bit.
//!
//! Written here rather than taken from a crate: the soft-float crates available
//! either don't build on current Rust or need CMake.

pub const NX: u32 = 1;
pub const UF: u32 = 2;
pub const OF: u32 = 4;
pub const DZ: u32 = 8;
pub const NV: u32 = 16;

/// Rounding modes, encoded as in `frm`.
pub const RNE: u32 = 0;
pub const RTZ: u32 = 1;
pub const RDN: u32 = 2;
pub const RUP: u32 = 3;
pub const RMM: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fmt {
    /// Significand bits excluding the hidden bit.
    pub man: u32,
    pub exp: u32,
}

pub const F32: Fmt = Fmt { man: 23, exp: 8 };
pub const F64: Fmt = Fmt { man: 52, exp: 11 };

impl Fmt {
    fn bias(self) -> i32 {
        (1 << (self.exp - 1)) - 1
    }
    fn emax_field(self) -> u64 {
        (1 << self.exp) - 1
    }
    pub fn canonical_nan(self) -> u64 {
        (self.emax_field() << self.man) | (1 << (self.man - 1))
    }
    fn sign_bit(self) -> u64 {
        1 << (self.man + self.exp)
    }
    fn inf(self, sign: bool) -> u64 {
        (self.emax_field() << self.man) | if sign { self.sign_bit() } else { 0 }
    }
    fn zero(self, sign: bool) -> u64 {
        if sign {
            self.sign_bit()
        } else {
            0
        }
    }
    fn max_finite(self, sign: bool) -> u64 {
        ((self.emax_field() << self.man) - 1) | if sign { self.sign_bit() } else { 0 }
    }
}

/// Unpacked operand.
#[derive(Clone, Copy, Debug)]
enum Val {
    Zero(bool),
    Inf(bool),
    Nan {
        signaling: bool,
    },
    /// sign, significand (with hidden bit), exponent: value = sig * 2^exp.
    Fin(bool, u128, i32),
}

fn unpack(f: Fmt, x: u64) -> Val {
    let sign = x & f.sign_bit() != 0;
    let e = (x >> f.man) & f.emax_field();
    let m = x & ((1u64 << f.man) - 1);
    let bias = f.bias();
    if e == f.emax_field() {
        if m == 0 {
            Val::Inf(sign)
        } else {
            Val::Nan {
                signaling: m & (1 << (f.man - 1)) == 0,
            }
        }
    } else if e == 0 {
        if m == 0 {
            Val::Zero(sign)
        } else {
            Val::Fin(sign, m as u128, 1 - bias - f.man as i32)
        }
    } else {
        Val::Fin(
            sign,
            (m | (1u64 << f.man)) as u128,
            e as i32 - bias - f.man as i32,
        )
    }
}

pub fn is_nan(f: Fmt, x: u64) -> bool {
    matches!(unpack(f, x), Val::Nan { .. })
}
pub fn is_snan(f: Fmt, x: u64) -> bool {
    matches!(unpack(f, x), Val::Nan { signaling: true })
}

/// Shift right, OR-ing any lost bits into bit 0.
fn shr_jam(x: u128, s: u32) -> u128 {
    if s == 0 {
        x
    } else if s >= 128 {
        (x != 0) as u128
    } else {
        (x >> s) | ((x & ((1u128 << s) - 1)) != 0) as u128
    }
}

/// Rounds `sig * 2^exp` (sig != 0; bit 0 may be a sticky bit, which then must
/// lie below the rounding position) to format `f`.
fn round_pack(f: Fmt, sign: bool, sig: u128, exp: i32, rm: u32, flags: &mut u32) -> u64 {
    debug_assert!(sig != 0);
    let p = f.man as i32 + 1;
    let m = 127 - sig.leading_zeros() as i32; // msb index
    let e = exp + m; // unbiased exponent of the leading bit
    let emin = 1 - f.bias();
    let emax = f.bias();
    // Rounds `sig` dropping `s` low bits; returns (quotient, inexact).
    let round = |s: i32| -> (u128, bool) {
        if s <= 0 {
            return (sig << (-s) as u32, false);
        }
        let s = s as u32;
        let (q, rem_nonzero, cmp) = if s >= 129 {
            (0u128, true, std::cmp::Ordering::Less)
        } else if s == 128 {
            let half = 1u128 << 127;
            (0, true, sig.cmp(&half))
        } else {
            let q = sig >> s;
            let rem = sig & ((1u128 << s) - 1);
            let half = 1u128 << (s - 1);
            (q, rem != 0, rem.cmp(&half))
        };
        if !rem_nonzero {
            return (q, false);
        }
        let up = match rm {
            RNE => {
                cmp == std::cmp::Ordering::Greater
                    || (cmp == std::cmp::Ordering::Equal && q & 1 == 1)
            }
            RTZ => false,
            RDN => sign,
            RUP => !sign,
            _ => cmp != std::cmp::Ordering::Less, // RMM
        };
        (q + up as u128, true)
    };
    if e >= emin {
        let (mut q, inexact) = round(m - (p - 1));
        let mut e = e;
        if q >> p != 0 {
            q >>= 1;
            e += 1;
        }
        if e > emax {
            *flags |= OF | NX;
            let to_inf = match rm {
                RNE | RMM => true,
                RTZ => false,
                RDN => sign,
                _ => !sign,
            };
            return if to_inf {
                f.inf(sign)
            } else {
                f.max_finite(sign)
            };
        }
        if inexact {
            *flags |= NX;
        }
        let biased = (e + f.bias()) as u64;
        return f.zero(sign) | (biased << f.man) | ((q as u64) & ((1u64 << f.man) - 1));
    }
    // Subnormal range: keep bits down to 2^(emin - man).
    let s = (emin - f.man as i32) - exp;
    let (q, inexact) = round(s);
    if inexact {
        *flags |= NX;
        // Tininess after rounding: would rounding to full precision with an
        // unbounded exponent have reached 2^emin?
        let tiny = if e == emin - 1 {
            let (qn, _) = round(m - (p - 1));
            qn >> p == 0
        } else {
            true
        };
        if tiny {
            *flags |= UF;
        }
    }
    // q < 2^man is subnormal; q == 2^man carries into the smallest normal.
    f.zero(sign) | q as u64
}

fn nan_result(f: Fmt, flags: &mut u32, ops: &[Val]) -> u64 {
    if ops
        .iter()
        .any(|v| matches!(v, Val::Nan { signaling: true }))
    {
        *flags |= NV;
    }
    f.canonical_nan()
}

/// Exact sum of two finite non-zero values, as (sign, sig, exp) or None for an
/// exact zero.
fn add_fin(a: (bool, u128, i32), b: (bool, u128, i32)) -> Option<(bool, u128, i32)> {
    // Normalise both to msb at bit 125 (2 bits of headroom).
    let norm = |(s, m, e): (bool, u128, i32)| {
        let lz = m.leading_zeros() as i32 - 2;
        (s, m << lz, e - lz)
    };
    let (mut a, mut b) = (norm(a), norm(b));
    if b.2 > a.2 {
        std::mem::swap(&mut a, &mut b);
    }
    let d = (a.2 - b.2) as u32;
    let bm = shr_jam(b.1, d);
    if a.0 == b.0 {
        Some((a.0, a.1 + bm, a.2))
    } else if a.1 >= bm {
        let r = a.1 - bm;
        (r != 0).then_some((a.0, r, a.2))
    } else {
        Some((b.0, bm - a.1, a.2))
    }
}

pub fn add(f: Fmt, a: u64, b: u64, rm: u32, fl: &mut u32) -> u64 {
    let (va, vb) = (unpack(f, a), unpack(f, b));
    match (va, vb) {
        (Val::Nan { .. }, _) | (_, Val::Nan { .. }) => nan_result(f, fl, &[va, vb]),
        (Val::Inf(sa), Val::Inf(sb)) => {
            if sa != sb {
                *fl |= NV;
                f.canonical_nan()
            } else {
                f.inf(sa)
            }
        }
        (Val::Inf(s), _) | (_, Val::Inf(s)) => f.inf(s),
        (Val::Zero(sa), Val::Zero(sb)) => {
            if sa == sb {
                f.zero(sa)
            } else {
                f.zero(rm == RDN)
            }
        }
        (Val::Zero(_), _) => b,
        (_, Val::Zero(_)) => a,
        (Val::Fin(sa, ma, ea), Val::Fin(sb, mb, eb)) => match add_fin((sa, ma, ea), (sb, mb, eb)) {
            Some((s, m, e)) => round_pack(f, s, m, e, rm, fl),
            None => f.zero(rm == RDN),
        },
    }
}

pub fn sub(f: Fmt, a: u64, b: u64, rm: u32, fl: &mut u32) -> u64 {
    let nb = if is_nan(f, b) { b } else { b ^ f.sign_bit() };
    add(f, a, nb, rm, fl)
}

fn sign_of(v: Val) -> bool {
    match v {
        Val::Zero(s) | Val::Inf(s) | Val::Fin(s, ..) => s,
        Val::Nan { .. } => false,
    }
}

pub fn mul(f: Fmt, a: u64, b: u64, rm: u32, fl: &mut u32) -> u64 {
    let (va, vb) = (unpack(f, a), unpack(f, b));
    let s = sign_of(va) != sign_of(vb);
    match (va, vb) {
        (Val::Nan { .. }, _) | (_, Val::Nan { .. }) => nan_result(f, fl, &[va, vb]),
        (Val::Inf(_), Val::Zero(_)) | (Val::Zero(_), Val::Inf(_)) => {
            *fl |= NV;
            f.canonical_nan()
        }
        (Val::Inf(_), _) | (_, Val::Inf(_)) => f.inf(s),
        (Val::Zero(_), _) | (_, Val::Zero(_)) => f.zero(s),
        (Val::Fin(_, ma, ea), Val::Fin(_, mb, eb)) => round_pack(f, s, ma * mb, ea + eb, rm, fl),
    }
}

pub fn div(f: Fmt, a: u64, b: u64, rm: u32, fl: &mut u32) -> u64 {
    let (va, vb) = (unpack(f, a), unpack(f, b));
    match (va, vb) {
        (Val::Nan { .. }, _) | (_, Val::Nan { .. }) => nan_result(f, fl, &[va, vb]),
        (Val::Inf(_), Val::Inf(_)) | (Val::Zero(_), Val::Zero(_)) => {
            *fl |= NV;
            f.canonical_nan()
        }
        (Val::Inf(sa), Val::Zero(sb) | Val::Fin(sb, ..)) => f.inf(sa != sb),
        (Val::Zero(sa) | Val::Fin(sa, ..), Val::Inf(sb)) => f.zero(sa != sb),
        (Val::Zero(sa), Val::Fin(sb, ..)) => f.zero(sa != sb),
        (Val::Fin(sa, ..), Val::Zero(sb)) => {
            *fl |= DZ;
            f.inf(sa != sb)
        }
        (Val::Fin(sa, ma, ea), Val::Fin(sb, mb, eb)) => {
            // Normalise: ma to msb 62, mb to msb 52 -> quotient has >= 64 bits.
            let la = ma.leading_zeros() as i32 - (127 - 62 - 64);
            let ma2 = ma << la;
            let lb = mb.leading_zeros() as i32 - (127 - 52);
            let mb2 = mb << lb;
            let q = ma2 / mb2;
            let r = ma2 % mb2;
            let q = q << 1 | (r != 0) as u128;
            round_pack(f, sa != sb, q, ea - la - (eb - lb) - 1, rm, fl)
        }
    }
}

fn isqrt(n: u128) -> u128 {
    if n == 0 {
        return 0;
    }
    // Start above the root, then Newton descends to the floor.
    let est = (n as f64).sqrt() as u128;
    let mut x = est + (est >> 40) + 2;
    loop {
        let y = (x + n / x) / 2;
        if y >= x {
            break;
        }
        x = y;
    }
    while x * x > n {
        x -= 1;
    }
    while (x + 1) * (x + 1) <= n {
        x += 1;
    }
    x
}

pub fn sqrt(f: Fmt, a: u64, rm: u32, fl: &mut u32) -> u64 {
    match unpack(f, a) {
        v @ Val::Nan { .. } => nan_result(f, fl, &[v]),
        Val::Zero(s) => f.zero(s),
        Val::Inf(false) => a,
        Val::Inf(true) | Val::Fin(true, ..) => {
            *fl |= NV;
            f.canonical_nan()
        }
        Val::Fin(false, m, e) => {
            // Normalise to msb 124 or 125 so the exponent is even.
            let lz = m.leading_zeros() as i32 - 3;
            let (mut m, mut e) = (m << lz, e - lz);
            if e & 1 != 0 {
                m <<= 1;
                e -= 1;
            }
            let r = isqrt(m);
            let sticky = (r * r != m) as u128;
            round_pack(f, false, r << 1 | sticky, e / 2 - 1, rm, fl)
        }
    }
}

/// (a * b) + c with one rounding. `neg_prod` negates a*b, `neg_c` negates c.
pub fn fma(
    f: Fmt,
    a: u64,
    b: u64,
    c: u64,
    neg_prod: bool,
    neg_c: bool,
    rm: u32,
    fl: &mut u32,
) -> u64 {
    let (va, vb, vc) = (unpack(f, a), unpack(f, b), unpack(f, c));
    let inf_zero = matches!(
        (va, vb),
        (Val::Inf(_), Val::Zero(_)) | (Val::Zero(_), Val::Inf(_))
    );
    if inf_zero {
        // Invalid even when c is a quiet NaN.
        *fl |= NV;
        if let Val::Nan { signaling: true } = vc {
            *fl |= NV;
        }
        return f.canonical_nan();
    }
    if matches!(va, Val::Nan { .. })
        || matches!(vb, Val::Nan { .. })
        || matches!(vc, Val::Nan { .. })
    {
        return nan_result(f, fl, &[va, vb, vc]);
    }
    let ps = sign_of(va) ^ sign_of(vb) ^ neg_prod;
    let cs = sign_of(vc) ^ neg_c;
    let prod_inf = matches!(va, Val::Inf(_)) || matches!(vb, Val::Inf(_));
    if prod_inf {
        if let Val::Inf(_) = vc {
            if cs != ps {
                *fl |= NV;
                return f.canonical_nan();
            }
        }
        return f.inf(ps);
    }
    if let Val::Inf(_) = vc {
        return f.inf(cs);
    }
    let prod_zero = matches!(va, Val::Zero(_)) || matches!(vb, Val::Zero(_));
    let prod = match (va, vb) {
        (Val::Fin(_, ma, ea), Val::Fin(_, mb, eb)) => Some((ps, ma * mb, ea + eb)),
        _ => None,
    };
    match (prod_zero, prod, vc) {
        (true, _, Val::Zero(_)) => {
            if ps == cs {
                f.zero(ps)
            } else {
                f.zero(rm == RDN)
            }
        }
        (true, _, Val::Fin(_, m, e)) => round_pack(f, cs, m, e, rm, fl),
        (false, Some((s, m, e)), Val::Zero(_)) => round_pack(f, s, m, e, rm, fl),
        (false, Some(p), Val::Fin(_, m, e)) => match add_fin(p, (cs, m, e)) {
            Some((s, m, e)) => round_pack(f, s, m, e, rm, fl),
            None => f.zero(rm == RDN),
        },
        _ => f.canonical_nan(),
    }
}

/// Float-to-float conversion.
pub fn convert(from: Fmt, to: Fmt, a: u64, rm: u32, fl: &mut u32) -> u64 {
    match unpack(from, a) {
        v @ Val::Nan { .. } => nan_result(to, fl, &[v]),
        Val::Zero(s) => to.zero(s),
        Val::Inf(s) => to.inf(s),
        Val::Fin(s, m, e) => round_pack(to, s, m, e, rm, fl),
    }
}

/// Float to integer (`bits` 32 or 64, `signed`); result sign-extended to 64
/// bits as RISC-V writes it.
pub fn to_int(f: Fmt, a: u64, bits: u32, signed: bool, rm: u32, fl: &mut u32) -> u64 {
    let (min, max): (i128, i128) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    let sat = |v: i128| -> u64 {
        if bits == 32 {
            v as i32 as i64 as u64
        } else {
            v as u64
        }
    };
    let (sign, m, e) = match unpack(f, a) {
        Val::Nan { .. } => {
            *fl |= NV;
            return sat(max);
        }
        Val::Inf(s) => {
            *fl |= NV;
            return sat(if s { min } else { max });
        }
        Val::Zero(_) => return 0,
        Val::Fin(s, m, e) => (s, m, e),
    };
    // Magnitude rounded to an integer.
    let (mag, inexact) = if e >= 0 {
        if e > 64 {
            *fl |= NV;
            return sat(if sign { min } else { max });
        }
        (m << e as u32, false)
    } else {
        let s = (-e) as u32;
        let (q, rem, half) = if s >= 127 {
            (0u128, m, u128::MAX)
        } else {
            (m >> s, m & ((1u128 << s) - 1), 1u128 << (s - 1))
        };
        let up = rem != 0
            && match rm {
                RNE => rem > half || (rem == half && q & 1 == 1),
                RTZ => false,
                RDN => sign,
                RUP => !sign,
                _ => rem >= half,
            };
        (q + up as u128, rem != 0)
    };
    let v: i128 = if sign { -(mag as i128) } else { mag as i128 };
    if v < min || v > max {
        *fl |= NV;
        return sat(if sign { min } else { max });
    }
    if inexact {
        *fl |= NX;
    }
    sat(v)
}

/// Integer to float; `x` is the register value, interpreted per `bits`/`signed`.
pub fn from_int(f: Fmt, x: u64, bits: u32, signed: bool, rm: u32, fl: &mut u32) -> u64 {
    let (sign, mag): (bool, u128) = match (bits, signed) {
        (32, true) => {
            let v = x as i32 as i64;
            (v < 0, v.unsigned_abs() as u128)
        }
        (32, false) => (false, x as u32 as u128),
        (_, true) => {
            let v = x as i64;
            (v < 0, v.unsigned_abs() as u128)
        }
        _ => (false, x as u128),
    };
    if mag == 0 {
        return 0;
    }
    round_pack(f, sign, mag, 0, rm, fl)
}

/// fmin/fmax (IEEE 754-2019 minimumNumber/maximumNumber, -0 < +0).
pub fn min_max(f: Fmt, a: u64, b: u64, max: bool, fl: &mut u32) -> u64 {
    let (an, bn) = (is_nan(f, a), is_nan(f, b));
    if is_snan(f, a) || is_snan(f, b) {
        *fl |= NV;
    }
    match (an, bn) {
        (true, true) => return f.canonical_nan(),
        (true, false) => return b,
        (false, true) => return a,
        _ => {}
    }
    let a_lt_b = lt_total(f, a, b);
    if a_lt_b != max {
        a
    } else {
        b
    }
}

/// Ordering on non-NaN values where -0 < +0.
fn lt_total(f: Fmt, a: u64, b: u64) -> bool {
    let sa = a & f.sign_bit() != 0;
    let sb = b & f.sign_bit() != 0;
    let ma = a & !f.sign_bit();
    let mb = b & !f.sign_bit();
    match (sa, sb) {
        (true, false) => true,
        (false, true) => false,
        (false, false) => ma < mb,
        (true, true) => ma > mb,
    }
}

/// feq (quiet), flt/fle (signalling).
pub fn compare(f: Fmt, a: u64, b: u64, op: u32, fl: &mut u32) -> u64 {
    let (an, bn) = (is_nan(f, a), is_nan(f, b));
    if an || bn {
        if op != 2 || is_snan(f, a) || is_snan(f, b) {
            *fl |= NV;
        }
        return 0;
    }
    let both_zero = (a | b) & !f.sign_bit() == 0;
    let eq = a == b || both_zero;
    let lt = !both_zero && lt_total(f, a, b);
    (match op {
        0 => lt || eq, // fle
        1 => lt,       // flt
        _ => eq,       // feq
    }) as u64
}

pub fn classify(f: Fmt, a: u64) -> u64 {
    let sign = a & f.sign_bit() != 0;
    let e = (a >> f.man) & f.emax_field();
    let bit = match unpack(f, a) {
        Val::Inf(_) => {
            if sign {
                0
            } else {
                7
            }
        }
        Val::Zero(_) => {
            if sign {
                3
            } else {
                4
            }
        }
        Val::Nan { signaling } => {
            if signaling {
                8
            } else {
                9
            }
        }
        Val::Fin(..) => match (sign, e == 0) {
            (true, false) => 1,
            (true, true) => 2,
            (false, true) => 5,
            (false, false) => 6,
        },
    };
    1 << bit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f64op(op: fn(Fmt, u64, u64, u32, &mut u32) -> u64, a: f64, b: f64) -> (f64, u32) {
        let mut fl = 0;
        let r = op(F64, a.to_bits(), b.to_bits(), RNE, &mut fl);
        (f64::from_bits(r), fl)
    }

    /// Cross-checks RNE results against the host FPU on pseudo-random operands.
    #[test]
    fn matches_host_in_rne() {
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for i in 0..200_000 {
            let (mut a, mut b) = (next(), next());
            if i % 3 == 0 {
                // Nearby exponents exercise cancellation.
                b = (b & 0x800f_ffff_ffff_ffff) | (a & 0x7ff0_0000_0000_0000);
            }
            if i % 7 == 0 {
                a &= 0x800f_ffff_ffff_ffff; // subnormals
            }
            let (fa, fb) = (f64::from_bits(a), f64::from_bits(b));
            for (op, host) in [
                (add as fn(Fmt, u64, u64, u32, &mut u32) -> u64, fa + fb),
                (sub, fa - fb),
                (mul, fa * fb),
                (div, fa / fb),
            ] {
                let (r, _) = f64op(op, fa, fb);
                if host.is_nan() {
                    assert_eq!(r.to_bits(), F64.canonical_nan());
                } else {
                    assert_eq!(r.to_bits(), host.to_bits(), "{fa:e} {fb:e}");
                }
            }
            let mut fl = 0;
            let c = next();
            let r = fma(F64, a, b, c, false, false, RNE, &mut fl);
            let host = fa.mul_add(fb, f64::from_bits(c));
            if !host.is_nan() {
                assert_eq!(
                    r,
                    host.to_bits(),
                    "fma {fa:e} {fb:e} {:e}",
                    f64::from_bits(c)
                );
            }
            let r = sqrt(F64, a & !(1 << 63), RNE, &mut fl);
            let h = f64::from_bits(a & !(1 << 63)).sqrt();
            if !h.is_nan() {
                assert_eq!(r, h.to_bits());
            }
            // f32 via host f32
            let (x, y) = (f32::from_bits(a as u32), f32::from_bits(b as u32));
            let r = mul(F32, x.to_bits() as u64, y.to_bits() as u64, RNE, &mut fl);
            let h = x * y;
            if !h.is_nan() {
                assert_eq!(r as u32, h.to_bits());
            }
            let r = convert(F64, F32, a, RNE, &mut fl);
            let h = fa as f32;
            if !h.is_nan() {
                assert_eq!(r as u32, h.to_bits());
            }
        }
    }

    #[test]
    fn flags_and_modes() {
        let mut fl = 0;
        // 1/3 inexact
        div(F64, 1f64.to_bits(), 3f64.to_bits(), RNE, &mut fl);
        assert_eq!(fl, NX);
        // overflow
        fl = 0;
        let r = mul(F64, f64::MAX.to_bits(), 2f64.to_bits(), RTZ, &mut fl);
        assert_eq!((r, fl), (f64::MAX.to_bits(), OF | NX));
        // underflow: min normal * 0.5 is exact subnormal (no UF), *0.75 inexact tiny
        fl = 0;
        mul(
            F64,
            f64::MIN_POSITIVE.to_bits(),
            0.5f64.to_bits(),
            RNE,
            &mut fl,
        );
        assert_eq!(fl, 0);
        let tiny = f64::from_bits(1);
        mul(F64, tiny.to_bits(), 0.5f64.to_bits(), RNE, &mut fl);
        assert_eq!(fl, UF | NX);
        // RMM: 2.5 -> 3, RNE: 2.5 -> 2
        fl = 0;
        assert_eq!(to_int(F64, 2.5f64.to_bits(), 32, true, RMM, &mut fl), 3);
        assert_eq!(to_int(F64, 2.5f64.to_bits(), 32, true, RNE, &mut fl), 2);
        assert_eq!(
            to_int(F64, (-2.5f64).to_bits(), 64, true, RDN, &mut fl),
            (-3i64) as u64
        );
        fl = 0;
        assert_eq!(
            to_int(F64, f64::NAN.to_bits(), 32, true, RNE, &mut fl),
            0x7fff_ffff
        );
        assert_eq!(fl, NV);
        assert_eq!(to_int(F64, (-1.0f64).to_bits(), 32, false, RNE, &mut fl), 0);
        assert_eq!(
            to_int(F64, 4e9f64.to_bits(), 32, false, RNE, &mut fl),
            4_000_000_000u32 as i32 as i64 as u64
        );
        fl = 0;
        div(F32, 1f32.to_bits() as u64, 0, RNE, &mut fl);
        assert_eq!(fl, DZ);
    }
}
