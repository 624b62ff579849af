//! `Image`: one opened raw or qcow2 file plus its backing chain, and the
//! image-level operations qemu-img needs (create, info, check, snapshots,
//! resize, commit, rebase, convert).

use std::path::Path;

use crate::qcow2::Qcow2;
use crate::raw::Raw;
use crate::{
    BlockBackend, CheckReport, CommitOptions, ConvertOptions, CreateOptions, Extent, Format,
    ImageInfo, OpenOptions, Progress, RebaseOptions, Repair, ResizeOptions, Result, SnapshotInfo,
};

/// One opened image and (owned by it) its backing chain.
pub struct Image {
    pub(crate) kind: Kind,
}

#[allow(dead_code)] // constructed once `open` lands
pub(crate) enum Kind {
    Raw(Raw),
    Qcow2(Box<Qcow2>),
}

impl Image {
    /// Opens `path` and, unless `opts.no_backing`, its backing chain.
    pub fn open(_path: &Path, _opts: &OpenOptions) -> Result<Image> {
        todo!()
    }

    pub fn format(&self) -> Format {
        match self.kind {
            Kind::Raw(_) => Format::Raw,
            Kind::Qcow2(_) => Format::Qcow2,
        }
    }

    /// The path this image was opened from.
    pub fn path(&self) -> &Path {
        todo!()
    }

    /// qcow2 cluster size; `None` for raw.
    pub fn cluster_size(&self) -> Option<u64> {
        todo!()
    }

    /// The opened backing image, if any.
    pub fn backing(&self) -> Option<&Image> {
        todo!()
    }

    /// `qemu-img info` data for this image only (see [`info_chain`]).
    pub fn info(&self) -> Result<ImageInfo> {
        todo!()
    }

    /// `qemu-img check`. Raw images return `Error::Unsupported`.
    pub fn check(&mut self, _repair: Repair) -> Result<CheckReport> {
        todo!()
    }

    /// Internal snapshots, in table order (empty for raw).
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        todo!()
    }

    /// `qemu-img snapshot -c NAME`.
    pub fn snapshot_create(&mut self, _name: &str) -> Result<()> {
        todo!()
    }

    /// `qemu-img snapshot -a`: `name_or_id` matches an id first, then a name.
    pub fn snapshot_apply(&mut self, _name_or_id: &str) -> Result<()> {
        todo!()
    }

    /// `qemu-img snapshot -d`.
    pub fn snapshot_delete(&mut self, _name_or_id: &str) -> Result<()> {
        todo!()
    }

    /// `qemu-img resize`.
    pub fn resize(&mut self, _new_size: u64, _opts: &ResizeOptions) -> Result<()> {
        todo!()
    }

    /// Writes one compressed cluster: `offset` cluster-aligned, `buf` one
    /// cluster long (shorter only for the image's last, partial cluster).
    /// Falls back to a normal write when compression does not save space.
    /// qcow2 only.
    pub fn write_compressed(&mut self, _buf: &[u8], _offset: u64) -> Result<()> {
        todo!()
    }
}

impl BlockBackend for Image {
    fn size(&self) -> u64 {
        todo!()
    }
    fn read_only(&self) -> bool {
        todo!()
    }
    fn read_at(&mut self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        todo!()
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<()> {
        todo!()
    }
    fn flush(&mut self) -> Result<()> {
        todo!()
    }
    fn discard(&mut self, _offset: u64, _len: u64) -> Result<()> {
        todo!()
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<()> {
        todo!()
    }
    fn block_status(&mut self, _offset: u64, _len: u64) -> Result<Vec<Extent>> {
        todo!()
    }
}

/// Guesses the format from the file's first bytes (qcow2 magic, else raw).
pub fn probe(_path: &Path) -> Result<Format> {
    todo!()
}

/// `qemu-img create`.
pub fn create(_path: &Path, _opts: &CreateOptions) -> Result<()> {
    todo!()
}

/// `qemu-img info --backing-chain`: the image, then each backing image.
/// Images whose backing file is missing still report (the chain stops).
pub fn info_chain(_path: &Path, _opts: &OpenOptions) -> Result<Vec<ImageInfo>> {
    todo!()
}

/// `qemu-img commit FILENAME`.
pub fn commit(_path: &Path, _opts: &CommitOptions, _progress: Progress) -> Result<()> {
    todo!()
}

/// `qemu-img rebase FILENAME`.
pub fn rebase(_path: &Path, _opts: &RebaseOptions, _progress: Progress) -> Result<()> {
    todo!()
}

/// Copies `src` (whole chain, guest view) into `dst`, which must be at least
/// as large: skips ranges `block_status` reports as zero when
/// `opts.target_is_zero`, writes compressed clusters when `opts.compress`.
/// Flushes `dst` at the end.
pub fn convert(
    _src: &mut dyn BlockBackend,
    _dst: &mut Image,
    _opts: &ConvertOptions,
    _progress: Progress,
) -> Result<()> {
    todo!()
}
