//! `Image`: one opened raw or qcow2 file plus its backing chain, and the
//! image-level operations qemu-img needs (create, info, check, snapshots,
//! resize, commit, rebase, convert).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::qcow2::{self, header, Qcow2};
use crate::raw::Raw;
use crate::{
    BlockBackend, CheckReport, CommitOptions, Compat, CompressionType, ConvertOptions,
    CreateOptions, Error, Extent, Format, ImageInfo, OpenOptions, Preallocation, Progress,
    Qcow2Info, RebaseOptions, Repair, ResizeOptions, Result, SnapshotInfo,
};

/// One piece of a request mapped to the host file: `len` bytes at `host`
/// from `buf` bytes into the caller's buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seg {
    pub host: u64,
    pub buf: usize,
    pub len: usize,
}

/// How `SharedImage` may run a request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Plan {
    /// The segments can be transferred without the lock.
    InPlace,
    /// A fresh cluster was allocated for guest cluster `gc`: write the
    /// segments, then `publish`.
    Fresh { gc: u64, host: u64, bitmap: u64 },
    /// Needs metadata work: run the whole request under the lock.
    Locked,
}

pub(crate) fn push_seg(segs: &mut Vec<Seg>, host: u64, buf: usize, len: usize) {
    if let Some(l) = segs.last_mut() {
        if l.host + l.len as u64 == host && l.buf + l.len == buf {
            l.len += len;
            return;
        }
    }
    segs.push(Seg { host, buf, len });
}

/// Longest backing chain we follow (a loop is caught earlier).
const MAX_CHAIN: usize = 64;

/// One opened image and (owned by it) its backing chain.
pub struct Image {
    pub(crate) kind: Kind,
    /// The path as given (for info's "filename").
    given: PathBuf,
}

pub(crate) enum Kind {
    Raw(Raw),
    Qcow2(Box<Qcow2>),
}

pub(crate) fn check_range(size: u64, off: u64, len: u64) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::InvalidArgument(format!(
            "request at offset {off} length {len} is beyond the end of the image ({size} bytes)"
        ))),
    }
}

/// Resolves a backing file name against the folder of the image naming it
/// (qemu's path_combine).
pub(crate) fn resolve_backing(image: &Path, backing: &str) -> PathBuf {
    let b = Path::new(backing);
    if b.is_absolute() {
        return b.to_path_buf();
    }
    match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(b),
        _ => b.to_path_buf(),
    }
}

impl Image {
    /// Opens `path` and, unless `opts.no_backing`, its backing chain.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Image> {
        let mut seen = Vec::new();
        Self::open_chain(path, opts, &mut seen)
    }

    fn open_chain(path: &Path, opts: &OpenOptions, seen: &mut Vec<PathBuf>) -> Result<Image> {
        let canon = std::fs::canonicalize(path).map_err(|e| qcow2::io_err(path, e))?;
        if seen.contains(&canon) {
            return Err(Error::Corrupt(format!(
                "backing chain loop: {} is its own backing file (through {} images)",
                path.display(),
                seen.len()
            )));
        }
        if seen.len() >= MAX_CHAIN {
            return Err(Error::Unsupported(format!(
                "backing chain deeper than {MAX_CHAIN} images"
            )));
        }
        seen.push(canon);
        let format = match opts.format {
            Some(f) => f,
            None => probe(path)?,
        };
        let kind = match format {
            Format::Raw => Kind::Raw(Raw::open(path, opts.read_only, opts.direct)?),
            Format::Qcow2 => {
                let mut q = Qcow2::open_file(path, opts.read_only, opts.l2_cache_size, opts.check)?;
                if opts.direct {
                    q.direct = crate::direct::DirectIo::open(path, !q.read_only);
                }
                if let (Some(name), false) = (q.h.backing_file.clone(), opts.no_backing) {
                    let bpath = resolve_backing(path, &name);
                    let bfmt = match q.h.backing_format.as_deref() {
                        Some("raw") => Some(Format::Raw),
                        Some("qcow2") => Some(Format::Qcow2),
                        Some(other) => {
                            return Err(Error::Unsupported(format!(
                                "{}: backing file format '{other}' is not supported",
                                path.display()
                            )))
                        }
                        None => None,
                    };
                    let bopts = OpenOptions {
                        format: bfmt,
                        read_only: true,
                        no_backing: false,
                        check: false,
                        direct: opts.direct,
                        l2_cache_size: opts.l2_cache_size,
                    };
                    let b = Self::open_chain(&bpath, &bopts, seen).map_err(|e| match e {
                        Error::Io { path: p, source } => Error::Io {
                            path: format!("Could not open backing file {p}"),
                            source,
                        },
                        e => e,
                    })?;
                    q.backing = Some(Box::new(b));
                }
                Kind::Qcow2(Box::new(q))
            }
        };
        Ok(Image {
            kind,
            given: path.to_path_buf(),
        })
    }

    pub fn format(&self) -> Format {
        match self.kind {
            Kind::Raw(_) => Format::Raw,
            Kind::Qcow2(_) => Format::Qcow2,
        }
    }

    /// The path this image was opened from.
    pub fn path(&self) -> &Path {
        &self.given
    }

    /// qcow2 cluster size; `None` for raw.
    pub fn cluster_size(&self) -> Option<u64> {
        match &self.kind {
            Kind::Raw(_) => None,
            Kind::Qcow2(q) => Some(q.cs),
        }
    }

    /// The opened backing image, if any.
    pub fn backing(&self) -> Option<&Image> {
        match &self.kind {
            Kind::Raw(_) => None,
            Kind::Qcow2(q) => q.backing.as_deref(),
        }
    }

    fn qcow2_mut(&mut self, what: &str) -> Result<&mut Qcow2> {
        match &mut self.kind {
            Kind::Qcow2(q) => Ok(q),
            Kind::Raw(_) => Err(Error::Unsupported(format!(
                "This image format does not support {what}"
            ))),
        }
    }

    /// `qemu-img info` data for this image only (see [`info_chain`]).
    pub fn info(&self) -> Result<ImageInfo> {
        let (fpath, virtual_size) = match &self.kind {
            Kind::Raw(r) => (r.path(), r.size()),
            Kind::Qcow2(q) => (q.path.as_path(), q.h.size),
        };
        let meta = std::fs::metadata(fpath).map_err(|e| qcow2::io_err(fpath, e))?;
        let mut info = ImageInfo {
            filename: self.given.display().to_string(),
            format: self.format(),
            virtual_size,
            actual_size: meta.blocks() * 512,
            file_length: meta.len(),
            cluster_size: None,
            dirty_flag: false,
            backing_filename: None,
            full_backing_filename: None,
            backing_format: None,
            snapshots: Vec::new(),
            qcow2: None,
        };
        if let Kind::Qcow2(q) = &self.kind {
            info.cluster_size = Some(q.cs);
            info.dirty_flag = q.h.incompatible & header::INCOMPAT_DIRTY != 0;
            info.backing_filename = q.h.backing_file.clone();
            info.full_backing_filename =
                q.h.backing_file
                    .as_ref()
                    .map(|b| resolve_backing(&self.given, b).display().to_string());
            info.backing_format = q.h.backing_format.clone();
            info.snapshots = q.snapshots.iter().map(|s| s.info()).collect();
            info.qcow2 = Some(Qcow2Info {
                compat: if q.h.version == 2 {
                    Compat::V2
                } else {
                    Compat::V3
                },
                compression_type: q.compression,
                lazy_refcounts: q.lazy_refcounts(),
                refcount_bits: q.refcount_bits,
                corrupt: q.h.incompatible & header::INCOMPAT_CORRUPT != 0,
                extended_l2: q.extl2,
            });
        }
        Ok(info)
    }

    /// `qemu-img check`. Raw images return `Error::Unsupported`.
    pub fn check(&mut self, repair: Repair) -> Result<CheckReport> {
        let q = self.qcow2_mut("checks")?;
        q.check(repair)
    }

    /// Internal snapshots, in table order (empty for raw).
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        match &self.kind {
            Kind::Raw(_) => Vec::new(),
            Kind::Qcow2(q) => q.snapshots.iter().map(|s| s.info()).collect(),
        }
    }

    /// `qemu-img snapshot -c NAME`.
    pub fn snapshot_create(&mut self, name: &str) -> Result<()> {
        self.qcow2_mut("internal snapshots")?.snapshot_create(name)
    }

    /// `qemu-img snapshot -a`: `name_or_id` matches an id first, then a name.
    pub fn snapshot_apply(&mut self, name_or_id: &str) -> Result<()> {
        self.qcow2_mut("internal snapshots")?
            .snapshot_apply(name_or_id)
    }

    /// `qemu-img snapshot -d`.
    pub fn snapshot_delete(&mut self, name_or_id: &str) -> Result<()> {
        self.qcow2_mut("internal snapshots")?
            .snapshot_delete(name_or_id)
    }

    /// `qemu-img resize`.
    pub fn resize(&mut self, new_size: u64, opts: &ResizeOptions) -> Result<()> {
        let old = self.size();
        if new_size < old && !opts.shrink {
            return Err(Error::InvalidArgument(
                "Use the --shrink option to perform a shrink operation.".into(),
            ));
        }
        match &mut self.kind {
            Kind::Raw(r) => r.resize(new_size, opts.preallocation),
            Kind::Qcow2(q) => {
                if q.read_only {
                    return Err(Error::ReadOnly);
                }
                if !new_size.is_multiple_of(512) {
                    return Err(Error::InvalidArgument(
                        "The new size must be a multiple of 512".into(),
                    ));
                }
                if new_size < old {
                    if !q.snapshots.is_empty() {
                        return Err(Error::Unsupported(
                            "Can't shrink an image which has snapshots".into(),
                        ));
                    }
                    // Zero the tail of a partly kept cluster, drop the rest.
                    let keep = new_size.div_ceil(q.cs);
                    let tail_end = (keep * q.cs).min(old);
                    if new_size < tail_end {
                        q.discard_range(new_size, tail_end - new_size, true)?;
                    }
                    q.unmap_from(keep)?;
                    q.set_size(new_size)
                } else if new_size > old {
                    let needed = new_size.div_ceil(q.cs).div_ceil(q.l2_entries);
                    if needed > q.l1.len() as u64 {
                        q.resize_l1(needed as u32)?;
                    }
                    // Data past the old end must read as zero, not as
                    // stale backing data or an old cluster tail.
                    let tail_end = old.div_ceil(q.cs) * q.cs;
                    q.set_size(new_size)?;
                    if tail_end > old {
                        q.discard_range(old, tail_end.min(new_size) - old, true)?;
                    }
                    if q.backing.is_some() && tail_end < new_size {
                        q.discard_range(tail_end, new_size - tail_end, true)?;
                    }
                    q.preallocate(old, new_size, opts.preallocation)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Writes one compressed cluster: `offset` cluster-aligned, `buf` one
    /// cluster long (shorter only for the image's last, partial cluster).
    /// Falls back to a normal write when compression does not save space.
    /// qcow2 only.
    pub fn write_compressed(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let size = self.size();
        check_range(size, offset, buf.len() as u64)?;
        let q = self.qcow2_mut("compression")?;
        q.write_compressed(buf, offset)
    }

    /// What [`qcow2::compress_cluster`] needs to compress clusters for
    /// this image on other threads: (compression type, cluster size).
    pub fn compression(&self) -> Option<(CompressionType, u64)> {
        match &self.kind {
            Kind::Qcow2(q) => Some((q.compression, q.cs)),
            Kind::Raw(_) => None,
        }
    }

    /// Like [`Image::write_compressed`], with the cluster already compressed
    /// by [`qcow2::compress_cluster`] (`None`: store it uncompressed).
    pub fn write_precompressed(
        &mut self,
        buf: &[u8],
        packed: Option<&[u8]>,
        offset: u64,
    ) -> Result<()> {
        let size = self.size();
        check_range(size, offset, buf.len() as u64)?;
        let q = self.qcow2_mut("compression")?;
        q.write_packed(buf, packed, offset)
    }

    pub(crate) fn data_path(&self) -> &Path {
        match &self.kind {
            Kind::Raw(r) => r.path(),
            Kind::Qcow2(q) => &q.path,
        }
    }

    pub(crate) fn is_direct(&self) -> bool {
        match &self.kind {
            Kind::Raw(r) => r.is_direct(),
            Kind::Qcow2(q) => q.direct.is_some(),
        }
    }

    pub(crate) fn plan(
        &mut self,
        off: u64,
        buf: &[u8],
        segs: &mut Vec<Seg>,
        write: bool,
    ) -> Result<Plan> {
        segs.clear();
        match &mut self.kind {
            Kind::Raw(r) => {
                if write && r.read_only() {
                    return Err(Error::ReadOnly);
                }
                if !buf.is_empty() {
                    segs.push(Seg {
                        host: off,
                        buf: 0,
                        len: buf.len(),
                    });
                }
                Ok(Plan::InPlace)
            }
            Kind::Qcow2(q) => q.plan(off, buf.len(), segs, write),
        }
    }

    pub(crate) fn publish(&mut self, gc: u64, host: u64, bitmap: u64) -> Result<()> {
        match &mut self.kind {
            Kind::Qcow2(q) => q.publish(gc, host, bitmap),
            Kind::Raw(_) => Ok(()),
        }
    }

    pub(crate) fn unpublish(&mut self, host: u64) -> Result<()> {
        match &mut self.kind {
            Kind::Qcow2(q) => q.free_clusters(host, 1),
            Kind::Raw(_) => Ok(()),
        }
    }

    /// qemu's `cache=unsafe` (qemu-img convert's default for its target):
    /// `flush` still writes cached metadata in order but never fsyncs, so
    /// a crash of the process is safe and a host crash may lose data.
    pub fn set_unsafe_cache(&mut self, on: bool) {
        match &mut self.kind {
            Kind::Raw(r) => r.unsafe_cache = on,
            Kind::Qcow2(q) => q.unsafe_cache = on,
        }
    }

    /// This image's own allocation (not its backing's) for a range:
    /// `(offset, length, allocated)` runs.
    pub(crate) fn own_allocation(&mut self, off: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        match &mut self.kind {
            Kind::Raw(_) => Ok(vec![(off, len, true)]),
            Kind::Qcow2(q) => Ok(q
                .own_status(off, len)?
                .into_iter()
                .map(|(o, l, m)| (o, l, m != qcow2::Map::Unalloc))
                .collect()),
        }
    }

    fn backend(&mut self) -> &mut dyn BlockBackend {
        match &mut self.kind {
            Kind::Raw(r) => r,
            Kind::Qcow2(q) => q.as_mut(),
        }
    }

    fn backend_ref(&self) -> &dyn BlockBackend {
        match &self.kind {
            Kind::Raw(r) => r,
            Kind::Qcow2(q) => q.as_ref(),
        }
    }
}

impl BlockBackend for Image {
    fn size(&self) -> u64 {
        self.backend_ref().size()
    }
    fn read_only(&self) -> bool {
        self.backend_ref().read_only()
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.backend().read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.backend().write_at(buf, offset)
    }
    fn flush(&mut self) -> Result<()> {
        self.backend().flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.backend().discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.backend().write_zeroes(offset, len)
    }
    fn block_status(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.backend().block_status(offset, len)
    }
    fn snapshots(&self) -> Vec<SnapshotInfo> {
        Image::snapshots(self)
    }
    fn can_snapshot(&self) -> bool {
        self.format() == Format::Qcow2 && !BlockBackend::read_only(self)
    }
    fn snapshot_create(&mut self, name: &str) -> Result<()> {
        Image::snapshot_create(self, name)
    }
    fn snapshot_apply(&mut self, name_or_id: &str) -> Result<()> {
        Image::snapshot_apply(self, name_or_id)
    }
    fn snapshot_delete(&mut self, name_or_id: &str) -> Result<()> {
        Image::snapshot_delete(self, name_or_id)
    }
}

/// Guesses the format from the file's first bytes (qcow2 magic, else raw).
pub fn probe(path: &Path) -> Result<Format> {
    let f = std::fs::File::open(path).map_err(|e| qcow2::io_err(path, e))?;
    let mut m = [0u8; 4];
    qcow2::pread(&f, path, &mut m, 0)?;
    Ok(if u32::from_be_bytes(m) == header::MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// `qemu-img create`.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    let format = opts.format.unwrap_or(Format::Raw);
    let mut size = opts.size;
    let mut backing_format = opts.backing_format;
    if let Some(b) = &opts.backing_file {
        if format == Format::Raw {
            return Err(Error::InvalidArgument(
                "'raw' does not support backing files".into(),
            ));
        }
        let bpath = resolve_backing(path, b);
        if backing_format.is_none() || size.is_none() {
            let bo = OpenOptions {
                format: backing_format,
                read_only: true,
                ..Default::default()
            };
            let img = Image::open(&bpath, &bo)?;
            if size.is_none() {
                size = Some(img.size());
            }
            backing_format = Some(img.format());
        }
    }
    // qemu-img rounds sizes up to whole 512-byte sectors.
    let size = size
        .ok_or_else(|| Error::InvalidArgument("Image size must be specified".into()))?
        .next_multiple_of(512);
    match format {
        Format::Raw => crate::raw::create(path, size, opts.preallocation),
        Format::Qcow2 => {
            let p = qcow2::create::Params {
                size,
                cluster_size: opts.cluster_size.unwrap_or(65536),
                compat: opts.compat.unwrap_or_default(),
                refcount_bits: opts.refcount_bits.unwrap_or(16),
                compression: opts.compression_type.unwrap_or_default(),
                extended_l2: opts.extended_l2,
                lazy_refcounts: opts.lazy_refcounts,
                backing_file: opts.backing_file.clone(),
                backing_format: backing_format.map(|f| f.name().to_string()),
            };
            qcow2::create::create(path, &p)?;
            if opts.preallocation != Preallocation::Off {
                let o = OpenOptions {
                    format: Some(Format::Qcow2),
                    no_backing: true,
                    ..Default::default()
                };
                let mut img = Image::open(path, &o)?;
                let q = img.qcow2_mut("preallocation")?;
                q.preallocate(0, size, opts.preallocation)?;
                q.close()?;
            }
            Ok(())
        }
    }
}

/// `qemu-img info --backing-chain`: the image, then each backing image.
/// Images whose backing file is missing still report (the chain stops).
pub fn info_chain(path: &Path, opts: &OpenOptions) -> Result<Vec<ImageInfo>> {
    let mut out = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut cur = path.to_path_buf();
    let mut fmt = opts.format;
    loop {
        let canon = std::fs::canonicalize(&cur).map_err(|e| qcow2::io_err(&cur, e))?;
        if seen.contains(&canon) {
            return Err(Error::Corrupt(format!(
                "backing chain loop at {}",
                cur.display()
            )));
        }
        seen.push(canon);
        let o = OpenOptions {
            format: fmt,
            read_only: true,
            no_backing: true,
            check: false,
            direct: opts.direct,
            l2_cache_size: opts.l2_cache_size,
        };
        let img = Image::open(&cur, &o)?;
        let info = img.info()?;
        let next = info.full_backing_filename.clone();
        fmt = info.backing_format.as_deref().and_then(|f| f.parse().ok());
        out.push(info);
        match next {
            Some(n) if Path::new(&n).exists() && out.len() < MAX_CHAIN => cur = PathBuf::from(n),
            _ => break,
        }
    }
    Ok(out)
}

fn chain_depth_of(img: &Image, target: &Path) -> Option<u32> {
    let t = std::fs::canonicalize(target).ok()?;
    let mut d = 0;
    let mut cur = Some(img);
    while let Some(i) = cur {
        if std::fs::canonicalize(i.path()).ok()? == t {
            return Some(d);
        }
        d += 1;
        cur = i.backing();
    }
    None
}

const COPY_CHUNK: u64 = 2 << 20;

/// `qemu-img commit FILENAME`.
pub fn commit(path: &Path, opts: &CommitOptions, mut progress: Progress) -> Result<()> {
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let mut top = Image::open(path, &ro)?;
    let immediate = top
        .backing()
        .map(|b| b.path().to_path_buf())
        .ok_or_else(|| Error::InvalidArgument("Image does not have a backing file".into()))?;
    let base_path = opts.base.clone().unwrap_or_else(|| immediate.clone());
    let depth = chain_depth_of(&top, &base_path).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "'{}' is not in the backing chain of '{}'",
            base_path.display(),
            path.display()
        ))
    })?;
    if depth == 0 {
        return Err(Error::InvalidArgument(
            "Cannot commit an image into itself".into(),
        ));
    }
    let base_fmt = {
        let mut cur = top.backing();
        let mut d = 1;
        while d < depth {
            cur = cur.and_then(|c| c.backing());
            d += 1;
        }
        cur.map(|c| c.format())
    };
    let mut base = Image::open(
        &base_path,
        &OpenOptions {
            format: base_fmt,
            ..Default::default()
        },
    )?;
    let size = top.size();
    if base.size() < size {
        base.resize(size, &ResizeOptions::default())?;
    }
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    let mut pos = 0;
    while pos < size {
        let n = COPY_CHUNK.min(size - pos);
        for x in top.block_status(pos, n)? {
            if x.depth >= depth || !x.present {
                continue;
            }
            if x.zero {
                base.write_zeroes(x.offset, x.length)?;
            } else {
                let b = &mut buf[..x.length as usize];
                top.read_at(b, x.offset)?;
                base.write_at(b, x.offset)?;
            }
        }
        pos += n;
        if let Some(p) = progress.as_mut() {
            p(pos, size);
        }
    }
    base.flush()?;
    drop(base);
    drop(top);
    if !opts.drop && depth == 1 {
        let mut t = Image::open(
            path,
            &OpenOptions {
                no_backing: true,
                ..Default::default()
            },
        )?;
        if let Kind::Qcow2(q) = &mut t.kind {
            q.unmap_from(0)?;
        }
        t.flush()?;
    }
    Ok(())
}

/// `qemu-img rebase FILENAME`.
pub fn rebase(path: &Path, opts: &RebaseOptions, mut progress: Progress) -> Result<()> {
    let new_fmt = match (&opts.backing, opts.backing_format) {
        (Some(b), None) if !opts.unsafe_mode => Some(probe(&resolve_backing(path, b))?),
        (_, f) => f,
    };
    if !opts.unsafe_mode {
        let mut top = Image::open(path, &OpenOptions::default())?;
        let mut newb = match &opts.backing {
            Some(b) => Some(Image::open(
                &resolve_backing(path, b),
                &OpenOptions {
                    format: new_fmt,
                    read_only: true,
                    ..Default::default()
                },
            )?),
            None => None,
        };
        let size = top.size();
        let step = top.cluster_size().unwrap_or(65536).max(65536);
        let mut a = vec![0u8; step as usize];
        let mut b = vec![0u8; step as usize];
        let mut pos = 0;
        while pos < size {
            let n = (COPY_CHUNK).min(size - pos);
            for (o, l, allocated) in top.own_allocation(pos, n)? {
                if allocated {
                    continue;
                }
                let mut p = o;
                while p < o + l {
                    let m = step.min(o + l - p) as usize;
                    top.read_at(&mut a[..m], p)?;
                    match &mut newb {
                        Some(nb) => {
                            let bs = nb.size();
                            let k = if p < bs {
                                ((bs - p) as usize).min(m)
                            } else {
                                0
                            };
                            if k > 0 {
                                nb.read_at(&mut b[..k], p)?;
                            }
                            b[k..m].fill(0);
                        }
                        None => b[..m].fill(0),
                    }
                    if a[..m] != b[..m] {
                        top.write_at(&a[..m], p)?;
                    }
                    p += m as u64;
                }
            }
            pos += n;
            if let Some(pr) = progress.as_mut() {
                pr(pos, size);
            }
        }
        top.flush()?;
    }
    let mut top = Image::open(
        path,
        &OpenOptions {
            no_backing: true,
            ..Default::default()
        },
    )?;
    let q = top.qcow2_mut("backing files")?;
    q.set_backing(opts.backing.clone(), new_fmt.map(|f| f.name().to_string()))
}

fn is_zero(b: &[u8]) -> bool {
    let chunks = b.chunks_exact(64);
    let rest = chunks.remainder();
    chunks
        .into_iter()
        .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
        && rest.iter().all(|&x| x == 0)
}

/// Copies `src` (whole chain, guest view) into `dst`, which must be at least
/// as large: skips ranges `block_status` reports as zero, and zero blocks
/// inside data (qemu-img's default `-S 4k`), when `opts.target_is_zero`;
/// writes compressed clusters when `opts.compress`.
///
/// A two-stage pipeline: one thread maps and reads the source and finds
/// zero blocks while this thread writes the previous chunk (allocating
/// target clusters in guest order, data before L2). Writes stay on this one
/// thread: buffered writes to one file serialize on its inode lock, so
/// more writer threads only add lock spinning and wake-ups, and a few
/// recycled buffers stay in the CPU cache where a deep queue would not.
/// With `-c`, clusters are compressed on [`CONVERT_REQUESTS`] worker
/// threads and stored in guest order (packed like qemu's).
/// Like qemu-img convert (whose target cache mode defaults to `unsafe`), it
/// switches `dst` to [`Image::set_unsafe_cache`]: the final flush writes all
/// metadata in order but does not fsync.
pub fn convert(
    src: &mut dyn BlockBackend,
    dst: &mut Image,
    opts: &ConvertOptions,
    mut progress: Progress,
) -> Result<()> {
    dst.set_unsafe_cache(true);
    let size = src.size();
    if dst.size() < size {
        return Err(Error::InvalidArgument(format!(
            "target image ({} bytes) is smaller than the source ({size} bytes)",
            dst.size()
        )));
    }
    let (ctype, cs) = if opts.compress {
        dst.compression().ok_or_else(|| {
            Error::Unsupported("Compression is not supported for the target format".into())
        })?
    } else {
        (CompressionType::Zlib, dst.cluster_size().unwrap_or(0))
    };
    let chunk = if opts.compress {
        cs.max(COPY_CHUNK)
    } else {
        COPY_CHUNK
    };
    // Zero blocks inside data are skipped at this granularity: 4 KiB, or
    // whole clusters of a qcow2 target (its allocation unit).
    let sparse = cs.max(SPARSE_BLOCK);
    let tz = opts.target_is_zero;
    let compress = opts.compress;
    let workers = if compress { CONVERT_REQUESTS } else { 0 };
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<(u64, Item)>(2 + workers);
    // Source items for this thread (out of order with -c).
    let (msg_tx, msg_rx) = std::sync::mpsc::channel::<(u64, Item)>();
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..CONVERT_BUFFERS + 2 * workers {
        let _ = free_tx.send(vec![0u8; chunk as usize]);
    }
    std::thread::scope(|scope| -> Result<()> {
        // Owned here so that an early error return hangs up on the others.
        let msg_rx = msg_rx;
        let free_tx = free_tx;
        // Shared by the compressors; dropped when the last one stops,
        // which unblocks whoever feeds them.
        let work_rx = std::sync::Arc::new(std::sync::Mutex::new(work_rx));
        for _ in 0..workers {
            let msg_tx = msg_tx.clone();
            let work_rx = work_rx.clone();
            scope.spawn(move || loop {
                let next = work_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((seq, mut item)) = next else { return };
                if let Item::Data { buf, n, work, .. } = &mut item {
                    let mut packed = Vec::new();
                    for c in buf[..*n].chunks(cs as usize) {
                        packed.push(if tz && is_zero(c) {
                            Packed::Skip
                        } else {
                            match qcow2::compress_cluster(ctype, cs, c) {
                                Ok(Some(z)) => Packed::Zipped(z),
                                Ok(None) => Packed::Plain,
                                Err(e) => {
                                    let _ = msg_tx.send((seq, Item::Err(e)));
                                    return;
                                }
                            }
                        });
                    }
                    *work = Work::Packed(packed);
                }
                if msg_tx.send((seq, item)).is_err() {
                    return;
                }
            });
        }
        drop(work_rx);
        // Data goes to the compressors with -c, else straight here.
        let out_tx = if compress { None } else { Some(msg_tx.clone()) };
        drop(msg_tx);
        scope.spawn(move || {
            let mut seq = 0u64;
            let mut send = |item: Item| -> bool {
                let r = match &out_tx {
                    Some(t) => t.send((seq, item)).is_ok(),
                    None => work_tx.send((seq, item)).is_ok(),
                };
                seq += 1;
                r
            };
            let mut read_all = |send: &mut dyn FnMut(Item) -> bool| -> Result<()> {
                let mut pos = 0u64;
                const SPAN: u64 = 1 << 30;
                while pos < size {
                    let span = SPAN.min(size - pos);
                    for x in src.block_status(pos, span)? {
                        if x.zero {
                            if !send(Item::Zero(x.offset, x.length)) {
                                return Ok(());
                            }
                            continue;
                        }
                        let mut p = x.offset;
                        let end = x.offset + x.length;
                        while p < end {
                            let Ok(mut buf) = free_rx.recv() else {
                                return Ok(());
                            };
                            let (start, n) = if compress {
                                // Whole target clusters (the last may be partial).
                                let cstart = p / cs * cs;
                                let cend = (cstart + cs).min(size);
                                if p != cstart || cend > end {
                                    // Extent boundary inside a cluster: the cluster.
                                    (cstart, cend - cstart)
                                } else {
                                    let mut n = (end - p).min(chunk);
                                    if p + n != size {
                                        n = n / cs * cs;
                                    }
                                    (p, n)
                                }
                            } else {
                                (p, (end - p).min(chunk))
                            };
                            src.read_at(&mut buf[..n as usize], start)?;
                            let work = if compress {
                                Work::Packed(Vec::new())
                            } else if tz {
                                Work::Runs(nonzero_runs(&buf[..n as usize], start, sparse))
                            } else {
                                Work::Runs(vec![(0, n as usize)])
                            };
                            let item = Item::Data {
                                off: start,
                                buf,
                                n: n as usize,
                                work,
                            };
                            if !send(item) {
                                return Ok(());
                            }
                            p = start + n;
                        }
                    }
                    pos += span;
                }
                Ok(())
            };
            let end = match read_all(&mut send) {
                Ok(()) => Item::End,
                Err(e) => Item::Err(e),
            };
            send(end);
        });
        // Items in sequence order (the compressors finish out of order).
        let mut pending = std::collections::BTreeMap::new();
        let mut next = 0u64;
        loop {
            let item = match pending.remove(&next) {
                Some(item) => item,
                None => {
                    let (seq, item) = msg_rx.recv().map_err(|_| {
                        Error::InvalidArgument(
                            "convert: a worker thread stopped unexpectedly".into(),
                        )
                    })?;
                    pending.insert(seq, item);
                    continue;
                }
            };
            next += 1;
            match item {
                Item::End => break,
                Item::Err(e) => return Err(e),
                Item::Zero(off, len) => {
                    if !tz {
                        dst.write_zeroes(off, len)?;
                    }
                    if let Some(pr) = progress.as_mut() {
                        pr(off + len, size);
                    }
                }
                Item::Data { off, buf, n, work } => {
                    match work {
                        Work::Packed(packed) => {
                            let b = &buf[..n];
                            for ((k, c), z) in b.chunks(cs as usize).enumerate().zip(packed) {
                                let at = off + k as u64 * cs;
                                match z {
                                    Packed::Skip => {}
                                    Packed::Plain => dst.write_precompressed(c, None, at)?,
                                    Packed::Zipped(z) => {
                                        dst.write_precompressed(c, Some(&z), at)?
                                    }
                                }
                            }
                        }
                        // Each run is one write: fresh qcow2 clusters are
                        // allocated contiguously for it (one pwrite per L2
                        // table it spans), then mapped.
                        Work::Runs(runs) => {
                            for (s, l) in runs {
                                dst.write_at(&buf[s..s + l], off + s as u64)?;
                            }
                        }
                    }
                    let _ = free_tx.send(buf);
                    if let Some(pr) = progress.as_mut() {
                        pr(off + n as u64, size);
                    }
                }
            }
        }
        Ok(())
    })?;
    if let Some(pr) = progress.as_mut() {
        pr(size, size);
    }
    dst.flush()
}

/// Compressor threads of `convert -c` (qemu-img convert's default `-m 8`).
pub const CONVERT_REQUESTS: usize = 8;

/// Chunk buffers of a plain `convert`: one being read, one being written,
/// two ready (slack for scheduling delays). More only rotate more memory
/// through the CPU cache: the copies into and out of them then miss it.
const CONVERT_BUFFERS: usize = 4;

/// qemu-img convert's default minimum sparse block (`-S 4k`).
const SPARSE_BLOCK: u64 = 4096;

enum Item {
    End,
    Zero(u64, u64),
    Data {
        off: u64,
        buf: Vec<u8>,
        n: usize,
        work: Work,
    },
    Err(Error),
}

/// What to write of a data chunk.
enum Work {
    /// Byte ranges (start, len) of the buffer that are not zero.
    Runs(Vec<(usize, usize)>),
    /// Per target cluster, filled in by a compressor.
    Packed(Vec<Packed>),
}

enum Packed {
    Skip,
    Plain,
    Zipped(Vec<u8>),
}

/// Ranges of `buf` (guest offset `off`) to write when zero blocks may be
/// skipped: blocks are `gran`-aligned in guest offsets.
fn nonzero_runs(buf: &[u8], off: u64, gran: u64) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut s = 0usize;
    while s < buf.len() {
        let e = (((off + s as u64) / gran + 1) * gran - off).min(buf.len() as u64) as usize;
        if !is_zero(&buf[s..e]) {
            match runs.last_mut() {
                Some((rs, rl)) if *rs + *rl == s => *rl += e - s,
                _ => runs.push((s, e - s)),
            }
        }
        s = e;
    }
    runs
}
