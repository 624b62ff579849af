//! Compressed clusters: raw deflate (zlib type, window 2^12 like qemu) and
//! zstd. Decompression must fill exactly one cluster and never allocates
//! more than the cluster buffer, whatever the input claims.

use crate::{CompressionType, Error, Result};

/// Inflates `src` into all of `out`. Trailing garbage after the cluster is
/// filled is ignored (the descriptor rounds to sectors).
pub fn decompress(ty: CompressionType, src: &[u8], out: &mut [u8]) -> Result<()> {
    let bad = |why: &str| Error::Corrupt(format!("compressed cluster does not inflate: {why}"));
    match ty {
        CompressionType::Zlib => {
            let mut d = flate2::Decompress::new(false);
            let mut filled = 0usize;
            let mut used = 0usize;
            // Bounded: each round either makes progress or stops.
            for _ in 0..64 {
                let before_in = d.total_in();
                let before_out = d.total_out();
                let st = d
                    .decompress(
                        &src[used..],
                        &mut out[filled..],
                        flate2::FlushDecompress::Finish,
                    )
                    .map_err(|e| bad(&e.to_string()))?;
                used += (d.total_in() - before_in) as usize;
                filled += (d.total_out() - before_out) as usize;
                if filled == out.len() {
                    return Ok(());
                }
                if st == flate2::Status::StreamEnd {
                    return Err(bad("stream ends before the cluster is full"));
                }
                if d.total_in() == before_in && d.total_out() == before_out {
                    break;
                }
            }
            Err(bad("truncated data"))
        }
        CompressionType::Zstd => {
            let mut d = zstd::stream::raw::Decoder::new().map_err(|e| bad(&e.to_string()))?;
            use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
            let mut inb = InBuffer::around(src);
            let mut outb = OutBuffer::around(out);
            for _ in 0..1024 {
                let before = (inb.pos(), outb.pos());
                let hint = d
                    .run(&mut inb, &mut outb)
                    .map_err(|e| bad(&e.to_string()))?;
                if outb.pos() == outb.capacity() {
                    return Ok(());
                }
                if hint == 0 {
                    return Err(bad("stream ends before the cluster is full"));
                }
                if (inb.pos(), outb.pos()) == before {
                    break;
                }
            }
            Err(bad("truncated data"))
        }
    }
}

/// Compresses one cluster; `None` when the result would not be smaller
/// than `max_len` (the caller then writes it uncompressed).
pub fn compress(ty: CompressionType, src: &[u8], max_len: usize) -> Result<Option<Vec<u8>>> {
    match ty {
        CompressionType::Zlib => {
            let mut c =
                flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12);
            let mut out = vec![0u8; max_len];
            let st = c
                .compress(src, &mut out, flate2::FlushCompress::Finish)
                .map_err(|e| Error::Corrupt(format!("deflate failed: {e}")))?;
            if st != flate2::Status::StreamEnd {
                return Ok(None);
            }
            out.truncate(c.total_out() as usize);
            Ok(Some(out))
        }
        CompressionType::Zstd => {
            let out = zstd::bulk::compress(src, 0)
                .map_err(|e| Error::Corrupt(format!("zstd compression failed: {e}")))?;
            Ok((out.len() < max_len).then_some(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_types() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 100) as u8).collect();
        for ty in [CompressionType::Zlib, CompressionType::Zstd] {
            let c = compress(ty, &data, data.len())
                .unwrap()
                .expect("compressible");
            assert!(c.len() < data.len() / 4);
            let mut out = vec![0u8; data.len()];
            // Trailing sector padding must be ignored.
            let mut padded = c.clone();
            padded.resize(c.len().next_multiple_of(512), 0xee);
            decompress(ty, &padded, &mut out).unwrap();
            assert_eq!(out, data);
        }
    }

    #[test]
    fn incompressible_data_is_refused() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert!(compress(CompressionType::Zlib, &data, 4096)
            .unwrap()
            .is_none());
    }

    #[test]
    fn garbage_and_short_streams_are_errors() {
        let mut out = vec![0u8; 4096];
        for ty in [CompressionType::Zlib, CompressionType::Zstd] {
            assert!(decompress(ty, &[0xff; 64], &mut out).is_err());
            assert!(decompress(ty, &[], &mut out).is_err());
            let c = compress(ty, &[1u8; 1024], 1024).unwrap().unwrap();
            // Inflates to 1 KiB only: the 4 KiB cluster is not filled.
            assert!(decompress(ty, &c, &mut out).is_err());
        }
    }
}
