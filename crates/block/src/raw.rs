//! Raw images: the file is the disk. Holes are found with SEEK_DATA /
//! SEEK_HOLE; discards punch holes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::qcow2::{io_err, pread, push_extent, pwrite};
use crate::{BlockBackend, Error, Extent, Preallocation, Result};

/// An open raw file.
pub struct Raw {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    direct: Option<crate::direct::DirectIo>,
    pub(crate) unsafe_cache: bool,
}

impl Raw {
    pub(crate) fn open(path: &Path, read_only: bool, direct: bool) -> Result<Raw> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let size = file.metadata().map_err(|e| io_err(path, e))?.len();
        Ok(Raw {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
            unsafe_cache: false,
            direct: if direct {
                crate::direct::DirectIo::open(path, !read_only)
            } else {
                None
            },
        })
    }

    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn resize(&mut self, new: u64, prealloc: Preallocation) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let old = self.size;
        self.file.set_len(new).map_err(|e| io_err(&self.path, e))?;
        self.size = new;
        if new > old {
            preallocate(&self.file, &self.path, old, new - old, prealloc)?;
        }
        Ok(())
    }

    fn punch(&mut self, offset: u64, len: u64) -> Result<()> {
        // SAFETY: fallocate on our own open fd with in-range arguments.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        // No hole punching here: write zeroes.
        let z = vec![0u8; (len as usize).min(1 << 20)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(z.len() as u64) as usize;
            pwrite(&self.file, &self.path, &z[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Allocates (falloc) or writes zeroes to (full) `[off, off+len)`.
pub(crate) fn preallocate(
    file: &File,
    path: &Path,
    off: u64,
    len: u64,
    mode: Preallocation,
) -> Result<()> {
    match mode {
        Preallocation::Off | Preallocation::Metadata => Ok(()),
        Preallocation::Falloc => {
            // SAFETY: posix_fallocate on our own fd.
            let r = unsafe {
                libc::posix_fallocate(file.as_raw_fd(), off as libc::off_t, len as libc::off_t)
            };
            if r != 0 {
                return Err(io_err(path, std::io::Error::from_raw_os_error(r)));
            }
            Ok(())
        }
        Preallocation::Full => {
            let z = vec![0u8; (len as usize).min(1 << 20)];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(z.len() as u64) as usize;
                file.write_all_at(&z[..n], off + done)
                    .map_err(|e| io_err(path, e))?;
                done += n as u64;
            }
            Ok(())
        }
    }
}

impl BlockBackend for Raw {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::image::check_range(self.size, offset, buf.len() as u64)?;
        if let Some(r) = self.direct.as_mut().and_then(|d| d.read(buf, offset)) {
            return r.map_err(|e| io_err(&self.path, e));
        }
        pread(&self.file, &self.path, buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        crate::image::check_range(self.size, offset, buf.len() as u64)?;
        if let Some(r) = self.direct.as_mut().and_then(|d| d.write(buf, offset)) {
            return r.map_err(|e| io_err(&self.path, e));
        }
        pwrite(&self.file, &self.path, buf, offset)
    }
    fn flush(&mut self) -> Result<()> {
        if self.read_only || self.unsafe_cache {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| io_err(&self.path, e))
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        crate::image::check_range(self.size, offset, len)?;
        self.punch(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.discard(offset, len)
    }
    fn block_status(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        crate::image::check_range(self.size, offset, len)?;
        let mut out = Vec::new();
        for (o, l, data) in host_runs(&self.file, offset, len) {
            push_extent(
                &mut out,
                Extent {
                    offset: o,
                    length: l,
                    data,
                    zero: !data,
                    present: true,
                    depth: 0,
                    host_offset: Some(o),
                },
            );
        }
        Ok(out)
    }
}

/// Splits `[offset, offset+len)` of a host file into data and hole runs
/// (SEEK_DATA/SEEK_HOLE; everything is data where unsupported).
pub(crate) fn host_runs(file: &File, offset: u64, len: u64) -> Vec<(u64, u64, bool)> {
    let seek = |off: u64, whence: libc::c_int| -> std::result::Result<u64, i32> {
        // SAFETY: lseek on a descriptor we own; the result is checked.
        let r = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, whence) };
        if r >= 0 {
            Ok(r as u64)
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    };
    let end = offset + len;
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let data_at = match seek(pos, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) => {
                // ENXIO: only a hole (or EOF) from here on.
                out.push((pos, end - pos, e != libc::ENXIO));
                break;
            }
        };
        if data_at > pos {
            let h = data_at.min(end);
            out.push((pos, h - pos, false));
            pos = h;
            continue;
        }
        let hole = seek(pos, libc::SEEK_HOLE)
            .unwrap_or(end)
            .clamp(pos + 1, end);
        out.push((pos, hole - pos, true));
        pos = hole;
    }
    out
}

/// Creates a raw image of `size` bytes.
pub(crate) fn create(path: &Path, size: u64, prealloc: Preallocation) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    file.set_len(size).map_err(|e| io_err(path, e))?;
    preallocate(&file, path, 0, size, prealloc)?;
    let _ = file.read_at(&mut [0u8; 0], 0);
    Ok(())
}
