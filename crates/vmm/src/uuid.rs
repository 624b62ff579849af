//! Machine UUIDs for `--uuid` (QEMU's `-uuid`): parsing (canonical
//! 8-4-4-4-12 hex form, normalised to lower case) and random version-4
//! UUIDs from getrandom, the default. Twenty lines do not justify a crate.

use anyhow::{bail, Result};

/// Parses a canonical UUID, returning it in lower case.
pub fn parse(s: &str) -> Result<String> {
    let ok = s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if !ok {
        bail!("--uuid {s:?}: expected the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits)");
    }
    Ok(s.to_ascii_lowercase())
}

/// A random (version 4, RFC 4122 variant) UUID.
pub fn random() -> String {
    let mut b = [0u8; 16];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: writes at most `len - got` bytes into the live buffer `b`.
        let r = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if r <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // No entropy source at all: fall back on time and pid, still unique enough.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            b = (t ^ ((std::process::id() as u128) << 64)).to_le_bytes();
            break;
        }
        got += r as usize;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_random() {
        assert_eq!(
            parse("A0B1C2D3-0000-4000-8000-00000000000F").unwrap(),
            "a0b1c2d3-0000-4000-8000-00000000000f"
        );
        for bad in [
            "",
            "a0b1c2d3000040008000000000000000",
            "a0b1c2d3-0000-4000-8000-00000000000g",
            "a0b1c2d3-0000-4000-8000-00000000000ff",
            "a0b1c2d3_0000-4000-8000-00000000000f",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let (a, b) = (random(), random());
        assert_ne!(a, b);
        assert_eq!(parse(&a).unwrap(), a);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }
}
