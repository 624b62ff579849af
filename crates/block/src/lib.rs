//! Disk images: raw and qcow2 behind one [`BlockBackend`] trait, with backing
//! chains, snapshots and QEMU-compatible on-disk metadata ordering.
//!
//! The crate owns the image formats and the image-level operations that
//! `qemu-img` exposes (create, info, check, snapshot, resize, commit, rebase,
//! convert). `crates/imgtool` only parses flags and prints.
//!
//! Dependencies: `flate2` and `zstd` (qcow2's two compression types).

use std::path::{Path, PathBuf};

mod direct;
pub mod fuzzing;
mod image;
pub mod qcow2;
pub mod raw;
mod shared;

pub use image::{commit, convert, create, info_chain, probe, rebase, Image};
pub use shared::SharedImage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    /// The name qemu-img uses (`raw`, `qcow2`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            _ => Err(Error::Unsupported(format!("Unknown file format '{s}'"))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The image's metadata is inconsistent or hostile.
    #[error("{0}")]
    Corrupt(String),
    /// A valid image or request using something this engine does not do.
    #[error("{0}")]
    Unsupported(String),
    #[error("image is read-only")]
    ReadOnly,
    /// A bad request from the caller (unaligned compressed write, bad option…).
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Allocation state of a byte range, as `qemu-img map` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    /// Reads come from allocated data somewhere in the chain.
    pub data: bool,
    /// Reads return zeroes.
    pub zero: bool,
    /// Allocated (data or zero flag) in some image of the chain; `false`
    /// means nothing in the chain has it (qemu-img map's "present").
    pub present: bool,
    /// Depth in the backing chain where the data lives (0 = this image); for
    /// ranges absent from the whole chain, the chain's length - 1 (as qemu-img
    /// map reports).
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
    /// Makes every completed write durable (metadata included).
    fn flush(&mut self) -> Result<()>;
    /// Drops the range; afterwards it reads as zeroes, except on a qcow2 v2
    /// image with a backing file, where it may read the backing's data (v2
    /// has no zero flag; qemu behaves the same).
    fn discard(&mut self, offset: u64, len: u64) -> Result<()>;
    /// Afterwards the range reads as zeroes (never exposes backing data).
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()>;
    /// Extents covering `[offset, offset + len)`, in order, adjacent extents
    /// with equal state merged.
    fn block_status(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>>;
    /// Internal snapshots of this (open) image, in table order; empty for
    /// formats without them. VM snapshots use these four while the image is
    /// in use by a paused virtio-blk device.
    fn snapshots(&self) -> Vec<SnapshotInfo> {
        Vec::new()
    }
    /// Whether [`BlockBackend::snapshot_create`] can work (qcow2, writable).
    fn can_snapshot(&self) -> bool {
        false
    }
    /// `qemu-img snapshot -c NAME` on the open image.
    fn snapshot_create(&mut self, _name: &str) -> Result<()> {
        Err(Error::Unsupported(
            "internal snapshots need a qcow2 image".into(),
        ))
    }
    /// `qemu-img snapshot -a NAME_OR_ID` on the open image.
    fn snapshot_apply(&mut self, _name_or_id: &str) -> Result<()> {
        Err(Error::Unsupported(
            "internal snapshots need a qcow2 image".into(),
        ))
    }
    /// `qemu-img snapshot -d NAME_OR_ID` on the open image.
    fn snapshot_delete(&mut self, _name_or_id: &str) -> Result<()> {
        Err(Error::Unsupported(
            "internal snapshots need a qcow2 image".into(),
        ))
    }
}

#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Probe when `None`.
    pub format: Option<Format>,
    pub read_only: bool,
    /// Do not open the backing chain (qemu's BDRV_O_NO_BACKING, used by
    /// `info`, `check`, `snapshot`, `rebase -u`); unallocated ranges read as
    /// zeroes.
    pub no_backing: bool,
    /// Opened for `check`: a dirty image is not repaired automatically and a
    /// corrupt image may be opened writable (for `check -r`).
    pub check: bool,
    /// Open the image files with O_DIRECT (qemu's `cache=none`, used by
    /// `ferro img bench -t none`); the engine keeps its I/O buffers aligned.
    pub direct: bool,
    /// L2 cache size in bytes; `None` = enough for the whole image up to
    /// 32 MiB (always covers at least 8 GiB with 64 KiB clusters).
    pub l2_cache_size: Option<u64>,
}

/// Opens an image and its whole backing chain.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn BlockBackend>> {
    Ok(Box::new(Image::open(path, opts)?))
}

/// qcow2 `compat` (header version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// "0.10": version 2.
    V2,
    /// "1.1": version 3.
    #[default]
    V3,
}

impl Compat {
    /// `"0.10"` or `"1.1"`, as qemu-img prints.
    pub fn name(self) -> &'static str {
        match self {
            Compat::V2 => "0.10",
            Compat::V3 => "1.1",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionType {
    #[default]
    Zlib,
    Zstd,
}

impl CompressionType {
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    #[default]
    Off,
    Metadata,
    Falloc,
    Full,
}

/// `qemu-img create` options. `None`s take qemu-img's defaults.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub format: Option<Format>,
    /// Virtual size in bytes; `None` takes the backing file's size.
    pub size: Option<u64>,
    /// qcow2: power of two in 512..=2 MiB; default 64 KiB.
    pub cluster_size: Option<u64>,
    pub compat: Option<Compat>,
    /// qcow2: 1, 2, 4, 8, 16, 32 or 64; default 16 (v2 requires 16).
    pub refcount_bits: Option<u32>,
    pub compression_type: Option<CompressionType>,
    pub extended_l2: bool,
    pub lazy_refcounts: bool,
    pub preallocation: Preallocation,
    /// Stored verbatim in the header (relative paths are relative to the new
    /// image's folder).
    pub backing_file: Option<String>,
    /// Probed from the backing file when `None`.
    pub backing_format: Option<Format>,
}

/// One internal snapshot, as `qemu-img snapshot -l` / `info` show it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub vm_state_size: u64,
    pub date_sec: u64,
    pub date_nsec: u32,
    /// Guest clock in nanoseconds (qemu-img splits it into sec/nsec).
    pub vm_clock_nsec: u64,
    /// `None` when the entry has no icount field (qemu prints none then).
    pub icount: Option<u64>,
    /// Virtual disk size when the snapshot was taken (v3 extra data).
    pub disk_size: Option<u64>,
}

/// qcow2-specific `info` data (qemu's "format-specific").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Info {
    pub compat: Compat,
    pub compression_type: CompressionType,
    pub lazy_refcounts: bool,
    pub refcount_bits: u32,
    pub corrupt: bool,
    pub extended_l2: bool,
}

/// What `qemu-img info` shows for one image of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The path as given to open (or the backing filename as resolved).
    pub filename: String,
    pub format: Format,
    pub virtual_size: u64,
    /// Bytes allocated on the host (st_blocks * 512).
    pub actual_size: u64,
    /// The host file's length (the protocol layer's virtual size).
    pub file_length: u64,
    /// qcow2 only.
    pub cluster_size: Option<u64>,
    pub dirty_flag: bool,
    /// As stored in the header.
    pub backing_filename: Option<String>,
    /// Resolved against the image's folder.
    pub full_backing_filename: Option<String>,
    /// As stored in the header's backing-format extension.
    pub backing_format: Option<String>,
    pub snapshots: Vec<SnapshotInfo>,
    pub qcow2: Option<Qcow2Info>,
}

/// `qemu-img check -r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repair {
    #[default]
    None,
    Leaks,
    All,
}

/// `qemu-img check` results. After a repair, `corruptions`/`leaks` count what
/// remains and the `*_fixed` fields what was repaired (qemu-img then re-runs
/// check with `Repair::None` to print "Double checking the fixed image").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckReport {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    /// Offset just past the last cluster in use.
    pub image_end_offset: u64,
    /// Guest clusters (virtual size / cluster size, rounded up).
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
    /// qemu-img's per-problem lines ("Leaked cluster 5 refcount=1
    /// reference=0", "ERROR cluster 3 refcount=1 reference=2", …) in order.
    pub messages: Vec<String>,
}

impl CheckReport {
    /// qemu-img check's exit code: 0 clean, 2 corruptions, 3 leaks only,
    /// 1 check errors.
    pub fn exit_code(&self) -> i32 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }
}

/// `qemu-img resize`.
#[derive(Debug, Clone, Default)]
pub struct ResizeOptions {
    /// Allow shrinking (qemu-img's `--shrink`).
    pub shrink: bool,
    pub preallocation: Preallocation,
}

/// `qemu-img commit`.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// Commit into this image of the chain instead of the immediate backing.
    pub base: Option<PathBuf>,
    /// `-d`: do not empty the committed image afterwards. (It is never
    /// emptied when `base` is not the immediate backing.)
    pub drop: bool,
}

/// `qemu-img rebase`.
#[derive(Debug, Clone, Default)]
pub struct RebaseOptions {
    /// New backing file as stored in the header; `None` (`-b ""`) removes it.
    pub backing: Option<String>,
    pub backing_format: Option<Format>,
    /// `-u`: only rewrite the header, copy nothing.
    pub unsafe_mode: bool,
}

/// `qemu-img convert` knobs for [`convert`].
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// `-c`: write compressed clusters (qcow2 target only).
    pub compress: bool,
    /// The target is known to read as zeroes (freshly created): zero ranges
    /// of the source are skipped instead of written.
    pub target_is_zero: bool,
}

/// Progress callback: `(done, total)` in bytes.
pub type Progress<'a> = Option<&'a mut dyn FnMut(u64, u64)>;
