//! O_DIRECT data I/O (`OpenOptions::direct`, qemu's cache=none): a second
//! file descriptor used for block-aligned data requests, through an aligned
//! bounce buffer when the caller's buffer is not aligned. Metadata and
//! unaligned requests keep using the normal descriptor (Linux keeps the
//! page cache coherent with direct I/O on the same file).

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const ALIGN: usize = 4096;

pub(crate) struct DirectIo {
    file: File,
    bounce: Vec<u8>,
}

impl DirectIo {
    /// `None` when the filesystem refuses O_DIRECT (tmpfs on old kernels).
    pub(crate) fn open(path: &Path, write: bool) -> Option<DirectIo> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        Some(DirectIo {
            file,
            bounce: Vec::new(),
        })
    }

    fn applicable(off: u64, len: usize) -> bool {
        len > 0 && off.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN)
    }

    /// An aligned scratch area of `len` bytes (start index into `bounce`).
    fn bounce(&mut self, len: usize) -> usize {
        if self.bounce.len() < len + ALIGN {
            self.bounce = vec![0u8; len + ALIGN];
        }
        self.bounce.as_ptr().align_offset(ALIGN)
    }

    /// Reads with O_DIRECT; `None` when the request is not block aligned.
    pub(crate) fn read(&mut self, buf: &mut [u8], off: u64) -> Option<std::io::Result<()>> {
        if !Self::applicable(off, buf.len()) {
            return None;
        }
        if buf.as_ptr().align_offset(ALIGN) == 0 {
            return Some(read_full(&self.file, buf, off));
        }
        let s = self.bounce(buf.len());
        let n = buf.len();
        let r = read_full(&self.file, &mut self.bounce[s..s + n], off);
        if r.is_ok() {
            buf.copy_from_slice(&self.bounce[s..s + n]);
        }
        Some(r)
    }

    /// Writes with O_DIRECT; `None` when the request is not block aligned.
    pub(crate) fn write(&mut self, buf: &[u8], off: u64) -> Option<std::io::Result<()>> {
        if !Self::applicable(off, buf.len()) {
            return None;
        }
        if buf.as_ptr().align_offset(ALIGN) == 0 {
            return Some(self.file.write_all_at(buf, off));
        }
        let s = self.bounce(buf.len());
        let n = buf.len();
        self.bounce[s..s + n].copy_from_slice(buf);
        Some(self.file.write_all_at(&self.bounce[s..s + n], off))
    }
}

fn read_full(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
