//! Disk images: raw and qcow2 behind one [`BlockBackend`] trait, with backing
//! chains, snapshots and QEMU-compatible on-disk metadata ordering.
//!
//! Dependencies: `flate2` and `zstd` (qcow2's two compression types).

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("image is read-only")]
    ReadOnly,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Allocation state of a byte range, as `qemu-img map` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub data: bool,
    pub zero: bool,
    /// Depth in the backing chain where the data lives (0 = this image).
    pub depth: u32,
    /// Host offset in the file at `depth`, when it is a plain mapping.
    pub host_offset: Option<u64>,
}

/// One open image (and its backing chain). Offsets are guest bytes.
pub trait BlockBackend: Send {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()>;
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()>;
    fn flush(&mut self) -> Result<()>;
    fn discard(&mut self, offset: u64, len: u64) -> Result<()>;
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()>;
    /// Extents covering `[offset, offset + len)`, in order.
    fn block_status(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>>;
}

#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Probe when `None`.
    pub format: Option<Format>,
    pub read_only: bool,
}

/// Opens an image and its whole backing chain.
pub fn open(_path: &Path, _opts: &OpenOptions) -> Result<Box<dyn BlockBackend>> {
    todo!()
}
