//! The body of the `image_open` fuzz target, shared with the unit tests that
//! replay a small hostile corpus through it.

use std::io::Write;

use crate::{BlockBackend, Image, OpenOptions};

/// Writes `data` to a temporary file, opens it as an image (probing the
/// format, without its backing chain so a hostile header cannot make us read
/// arbitrary host files), then maps and reads it a bit, then writes a little
/// through a writable open. Errors are fine;
/// panics, hangs and huge allocations are the bugs this hunts.
pub fn open_and_read(data: &[u8]) {
    let Ok(mut f) = tempfile_in_tmp() else { return };
    if f.1.write_all(data).is_err() {
        return;
    }
    let opts = OpenOptions {
        read_only: true,
        no_backing: true,
        ..Default::default()
    };
    if let Ok(mut img) = Image::open(&f.0, &opts) {
        exercise(&mut img);
    }
    // Writable too: writes must never land on metadata (overlap checks).
    let rw = OpenOptions {
        read_only: false,
        ..opts
    };
    if let Ok(mut img) = Image::open(&f.0, &rw) {
        img.set_unsafe_cache(true);
        let size = img.size();
        let buf = vec![0x5au8; 4096];
        for off in [0, size / 2] {
            if off + 4096 <= size {
                let _ = img.write_at(&buf, off);
            }
        }
        let _ = img.flush();
    }
    let _ = std::fs::remove_file(&f.0);
    let _ = &mut f;
}

fn exercise(img: &mut Image) {
    let _ = img.info();
    let size = img.size();
    let probe = size.min(8 << 20);
    if let Ok(extents) = img.block_status(0, probe) {
        for e in extents.iter().take(64) {
            let len = e.length.min(64 << 10) as usize;
            let mut buf = vec![0u8; len];
            let _ = img.read_at(&mut buf, e.offset);
        }
    }
    let mut buf = vec![0u8; 4096];
    for off in [0, size / 2, size.saturating_sub(4096)] {
        if off + 4096 <= size {
            let _ = img.read_at(&mut buf, off);
        }
    }
    let _ = img.check(crate::Repair::None);
}

fn tempfile_in_tmp() -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "ferro-fuzz-{}-{}.img",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::File::create(&path)?;
    Ok((path, f))
}

#[cfg(test)]
mod tests {
    /// The fuzz body over a tiny hand-made corpus (the bigger hostile corpus
    /// lives in tests/hostile.rs).
    #[test]
    fn small_corpus() {
        let mut hdr = vec![0u8; 4096];
        hdr[..4].copy_from_slice(b"QFI\xfb");
        hdr[4..8].copy_from_slice(&3u32.to_be_bytes());
        hdr[20..24].copy_from_slice(&16u32.to_be_bytes());
        hdr[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
        let mut v2 = hdr.clone();
        v2[4..8].copy_from_slice(&2u32.to_be_bytes());
        for case in [
            &b""[..],
            b"QFI\xfb",
            b"QFI\xfb\0\0\0\x03",
            &hdr,
            &v2,
            &[0xffu8; 512],
        ] {
            super::open_and_read(case);
        }
    }
}
