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
