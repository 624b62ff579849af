//! Host-side unpacking of a bzImage's compressed payload (the ELF vmlinux
//! that the kernel's own decompressor would produce in the guest).
//!
//! The boot header's `payload_offset`/`payload_length` (protocol 2.08+)
//! locate the payload; the kernel build appends the uncompressed size as
//! its last 4 bytes. gzip, xz (with the x86 BCJ filter the kernel uses)
//! and zstd are decoded; other compressors are reported as unsupported so
//! the caller can fall back to the in-guest decompressor.

use std::io::Read;

use super::boot::{inspect, Error, KernelKind};

/// What [`unpack`] made of a kernel image.
#[derive(Debug, PartialEq, Eq)]
pub enum Unpacked {
    /// The payload, decompressed: an ELF vmlinux.
    Elf { data: Vec<u8>, format: &'static str },
    /// Not a bzImage (an ELF already): nothing to do.
    NotBzImage,
    /// A bzImage whose payload this host cannot decode (the reason).
    Unsupported(String),
}

/// The largest vmlinux accepted (the size field is guest-image input).
const MAX_VMLINUX: u64 = 1 << 30;

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Decompresses the payload of bzImage `k`, allowing at most `limit`
/// bytes of output (e.g. the guest RAM size).
pub fn unpack(label: &str, k: &[u8], limit: u64) -> Result<Unpacked, Error> {
    let KernelKind::BzImage { version, .. } = inspect(label, k)? else {
        return Ok(Unpacked::NotBzImage);
    };
    let bad = |why: String| Error::Load {
        label: label.into(),
        why,
    };
    if version < 0x0208 {
        return Ok(Unpacked::Unsupported(
            "boot protocol older than 2.08 has no payload fields".into(),
        ));
    }
    let setup = (match k[0x1f1] {
        0 => 4,
        n => n as usize,
    } + 1)
        * 512;
    let (off, len) = (le32(k, 0x248) as usize, le32(k, 0x24c) as usize);
    if len == 0 {
        return Ok(Unpacked::Unsupported(
            "the boot header names no payload".into(),
        ));
    }
    let start = setup.checked_add(off);
    let end = start.and_then(|s| s.checked_add(len));
    let payload = match (start, end) {
        (Some(s), Some(e)) if e <= k.len() && len > 4 => &k[s..e],
        _ => {
            return Err(bad(format!(
                "payload {off:#x}+{len:#x} lies outside the {}-byte image",
                k.len()
            )))
        }
    };
    let size = le32(payload, payload.len() - 4) as u64;
    let cap = limit.min(MAX_VMLINUX);
    if size > cap {
        return Err(bad(format!(
            "payload unpacks to {size} bytes, more than the {cap} allowed (raise --memory)"
        )));
    }
    // The 4-byte size trailer is not part of the xz/zstd stream; gzip's own
    // trailer ends in the same size, so it keeps all bytes.
    let body = &payload[..payload.len() - 4];
    let (format, reader): (&'static str, Box<dyn Read + '_>) = match payload {
        [0x1f, 0x8b, ..] => ("gzip", Box::new(flate2::read::GzDecoder::new(payload))),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => ("xz", Box::new(xz2::read::XzDecoder::new(body))),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => (
            "zstd",
            Box::new(
                zstd::stream::read::Decoder::with_buffer(body)
                    .map_err(|e| bad(format!("zstd payload: {e}")))?,
            ),
        ),
        [b'B', b'Z', b'h', ..] => return Ok(Unpacked::Unsupported("bzip2 payload".into())),
        [0x5d, 0, 0, ..] => return Ok(Unpacked::Unsupported("lzma payload".into())),
        [0x89, b'L', b'Z', ..] => return Ok(Unpacked::Unsupported("lzo payload".into())),
        [0x02, 0x21, 0x4c, 0x18, ..] => return Ok(Unpacked::Unsupported("lz4 payload".into())),
        _ => {
            return Ok(Unpacked::Unsupported(
                "payload in an unknown compression format".into(),
            ))
        }
    };
    let mut data = Vec::new();
    reader
        .take(size + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("{format} payload: {e}")))?;
    if data.len() as u64 != size {
        return Err(bad(format!(
            "{format} payload unpacked to {} bytes, the image says {size}",
            data.len()
        )));
    }
    if !data.starts_with(b"\x7fELF") {
        return Err(bad(format!("{format} payload is not an ELF vmlinux")));
    }
    Ok(Unpacked::Elf { data, format })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal bzImage header around `payload` (plus the size trailer).
    fn bzimage(payload: &[u8], size: u32) -> Vec<u8> {
        let mut k = vec![0u8; 5 * 512];
        k[0x1f1] = 4;
        k[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        k[0x211] = 1;
        k[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
        let mut p = payload.to_vec();
        p.extend(size.to_le_bytes());
        k[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        k[0x24c..0x250].copy_from_slice(&(p.len() as u32).to_le_bytes());
        k.extend([0u8; 16]);
        k.extend(&p);
        let syssize = (k.len() - 5 * 512).div_ceil(16) as u32;
        k.resize(5 * 512 + syssize as usize * 16, 0);
        k[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        k
    }

    fn elf() -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[18] = 62;
        e.extend((0..5000u32).flat_map(|i| (i % 251).to_le_bytes()));
        e
    }

    #[test]
    fn xz_and_zstd_payloads_unpack() {
        let e = elf();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&e).unwrap();
        let k = bzimage(&xz.finish().unwrap(), e.len() as u32);
        match unpack("k", &k, 1 << 30).unwrap() {
            Unpacked::Elf { data, format } => assert_eq!((data, format), (e.clone(), "xz")),
            o => panic!("{o:?}"),
        }
        let z = zstd::encode_all(&e[..], 3).unwrap();
        let k = bzimage(&z, e.len() as u32);
        assert!(matches!(
            unpack("k", &k, 1 << 30).unwrap(),
            Unpacked::Elf { format: "zstd", .. }
        ));
    }

    #[test]
    fn lying_sizes_and_unknown_formats_are_refused() {
        let e = elf();
        let z = zstd::encode_all(&e[..], 3).unwrap();
        // Says smaller than it is: the output stops at the bound and fails.
        let k = bzimage(&z, 100);
        let err = unpack("k", &k, 1 << 30).unwrap_err().to_string();
        assert!(err.contains("the image says 100"), "{err}");
        // Larger than the limit: refused before decoding.
        let k = bzimage(&z, e.len() as u32);
        let err = unpack("k", &k, 1000).unwrap_err().to_string();
        assert!(err.contains("raise --memory"), "{err}");
        let k = bzimage(b"BZh91AY&SY", 10);
        assert!(matches!(
            unpack("k", &k, 1 << 30).unwrap(),
            Unpacked::Unsupported(_)
        ));
        assert_eq!(unpack("k", &e[..64], 1).unwrap(), Unpacked::NotBzImage);
    }
}
