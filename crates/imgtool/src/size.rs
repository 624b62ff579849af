//! Size arguments as qemu-img reads them (`qemu_strtosz` with bytes as the
//! default unit): `10G`, `512M`, `1.5k`, `0x10000`, `100b`, plain bytes.
//! Suffixes are powers of 1024 and case-insensitive; a fraction needs a
//! suffix; negative numbers and trailing garbage are refused.

/// Why a size failed to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Not a size at all.
    Invalid,
    /// A size, but it does not fit in 64 bits.
    Range,
}

/// Parses a size in bytes.
pub fn strtosz(s: &str) -> Result<u64, SizeError> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    if t.starts_with('-') {
        return Err(SizeError::Invalid);
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let (int, frac, rest, hex) =
        if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            let n = h.bytes().take_while(|b| b.is_ascii_hexdigit()).count();
            if n == 0 {
                return Err(SizeError::Invalid);
            }
            let v = u64::from_str_radix(&h[..n], 16).map_err(|_| SizeError::Range)?;
            (v as u128, 0f64, &h[n..], true)
        } else {
            let n = t.bytes().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 {
                return Err(SizeError::Invalid);
            }
            let v: u128 = t[..n].parse::<u128>().map_err(|_| SizeError::Range)?;
            let mut rest = &t[n..];
            let mut frac = 0f64;
            if let Some(r) = rest.strip_prefix('.') {
                let m = r.bytes().take_while(|b| b.is_ascii_digit()).count();
                if m == 0 {
                    return Err(SizeError::Invalid);
                }
                frac = format!("0.{}", &r[..m])
                    .parse::<f64>()
                    .map_err(|_| SizeError::Invalid)?;
                rest = &r[m..];
                if frac == 0.0 {
                    // "1.0k" is fine; only a real fraction needs a suffix check below.
                    frac = f64::MIN_POSITIVE;
                }
            }
            (v, frac, rest, false)
        };
    let mut chars = rest.chars();
    let (mul, rest): (u128, &str) = match chars.next() {
        None => (1, ""),
        Some(c) => {
            let m = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                'E' => 1 << 60,
                _ => return Err(SizeError::Invalid),
            };
            // "0x1e" and "0x1b" would be ambiguous with hex digits.
            if hex && matches!(c.to_ascii_uppercase(), 'B' | 'E') {
                return Err(SizeError::Invalid);
            }
            (m, chars.as_str())
        }
    };
    if !rest.is_empty() {
        return Err(SizeError::Invalid);
    }
    if frac != 0.0 && mul == 1 {
        return Err(SizeError::Invalid);
    }
    let whole = int.checked_mul(mul).ok_or(SizeError::Range)?;
    let frac_part = if frac > f64::MIN_POSITIVE {
        (frac * mul as f64) as u128
    } else {
        0
    };
    let total = whole + frac_part;
    u64::try_from(total).map_err(|_| SizeError::Range)
}

/// qemu-img's `cvtnum_full`: a size within `[min, max]`, or its error text.
pub fn cvtnum_full(name: &str, s: &str, min: i64, max: i64) -> Result<i64, String> {
    match strtosz(s) {
        Err(SizeError::Invalid) => Err(format!("Invalid {name} specified: '{s}'.")),
        Ok(v) if v <= max as u64 && v as i64 >= min => Ok(v as i64),
        _ => Err(format!(
            "Invalid {name} specified. Must be between {min} and {max}."
        )),
    }
}

/// `cvtnum` with qemu-img's default bounds (0 to `i64::MAX`).
pub fn cvtnum(name: &str, s: &str) -> Result<i64, String> {
    cvtnum_full(name, s, 0, i64::MAX)
}

/// The error text a `-o key=value` size option gets (QemuOpts).
pub fn opt_size_error(key: &str) -> String {
    format!(
        "Parameter '{key}' expects a non-negative number below 2^64\n\
         Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
         and exabytes, respectively."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_qemu() {
        assert_eq!(strtosz("10G"), Ok(10 << 30));
        assert_eq!(strtosz("512M"), Ok(512 << 20));
        assert_eq!(strtosz("1T"), Ok(1 << 40));
        assert_eq!(strtosz("64k"), Ok(65536));
        assert_eq!(strtosz("64K"), Ok(65536));
        assert_eq!(strtosz("100"), Ok(100));
        assert_eq!(strtosz("100b"), Ok(100));
        assert_eq!(strtosz(" 100"), Ok(100));
        assert_eq!(strtosz("1.5k"), Ok(1536));
        assert_eq!(strtosz("1.0k"), Ok(1024));
        assert_eq!(strtosz("0x10000"), Ok(65536));
        assert_eq!(strtosz("0x1M"), Ok(1 << 20));
        assert_eq!(strtosz("1.5"), Err(SizeError::Invalid));
        assert_eq!(strtosz("12Q"), Err(SizeError::Invalid));
        assert_eq!(strtosz("-5"), Err(SizeError::Invalid));
        assert_eq!(strtosz("abc"), Err(SizeError::Invalid));
        assert_eq!(strtosz(""), Err(SizeError::Invalid));
        assert_eq!(strtosz("1GG"), Err(SizeError::Invalid));
        assert_eq!(strtosz("16E"), Err(SizeError::Range));
        assert_eq!(strtosz("99999999999999999999999"), Err(SizeError::Range));
    }

    #[test]
    fn cvtnum_messages() {
        assert_eq!(cvtnum("image size", "1M"), Ok(1 << 20));
        assert_eq!(
            cvtnum("image size", "12Q").unwrap_err(),
            "Invalid image size specified: '12Q'."
        );
        assert_eq!(
            cvtnum("image size", "9E").unwrap_err(),
            "Invalid image size specified. Must be between 0 and 9223372036854775807."
        );
    }
}
