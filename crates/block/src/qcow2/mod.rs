//! qcow2 (v2 and v3): the open image state, guest reads and writes through
//! the L1/L2 mapping, and the write ordering QEMU uses.
//!
//! Ordering (what makes `kill -9` safe): data and COW are written before the
//! L2 entry that points at them; refcount blocks are written (and synced)
//! before any L2 table that may reference newly counted clusters; a new L2
//! table is written before the L1 entry pointing at it; when a cluster is
//! dropped, the L2/L1 change is written before its refcount is decremented.
//! The caches are write-back; `flush` writes refcount blocks, syncs, writes
//! L2 tables, syncs.
//!
//! Submodules: `header` (cluster 0), `cache` (table cache), `refcount`
//! (refcounts and allocation), `snapshot`, `compress`, `check` (check,
//! repair, rebuild), `create`.

pub mod cache;
pub mod check;
pub mod compress;
pub mod create;
pub mod header;
pub(crate) mod overlap;
pub mod refcount;
pub mod snapshot;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::image::Image;
use crate::{BlockBackend, CompressionType, Error, Extent, Result};
use cache::TableCache;
use header::Header;
use overlap::{Meta, Overlaps};

pub(crate) const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub(crate) const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub(crate) const COPIED: u64 = 1 << 63;
pub(crate) const COMPRESSED: u64 = 1 << 62;
pub(crate) const ZERO: u64 = 1;
const ALL_ALLOC: u64 = 0xffff_ffff;
const ALL_ZERO: u64 = 0xffff_ffff << 32;

/// The state of one guest cluster (or subcluster) in this layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Map {
    Unalloc,
    /// Reads zero; `host` is a preallocated cluster still counted.
    Zero,
    Data(u64),
    /// (host byte offset, bytes of the sector-rounded range)
    Compressed(u64, u64),
}

/// An open qcow2 file (its backing chain is owned here too).
pub struct Qcow2 {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) h: Header,
    pub(crate) read_only: bool,
    pub(crate) cs: u64,
    pub(crate) cluster_bits: u32,
    pub(crate) l2_entries: u64,
    pub(crate) extl2: bool,
    pub(crate) sc_bits: u32,
    pub(crate) refcount_bits: u32,
    pub(crate) rb_entries: u64,
    pub(crate) l1: Vec<u64>,
    pub(crate) reftable: Vec<u64>,
    pub(crate) l2_cache: TableCache,
    pub(crate) rc_cache: TableCache,
    pub(crate) backing: Option<Box<Image>>,
    /// Next cluster index to try when allocating.
    pub(crate) free_hint: u64,
    /// qemu's metadata-preallocation guess, made once per open: only then
    /// does block status look for holes in the host file.
    pub(crate) meta_prealloc: Option<bool>,
    /// First cluster index past everything allocated or in the file.
    pub(crate) end_cluster: u64,
    /// Host clusters at or past this byte offset were never written: they
    /// read as zeroes, so a fresh allocation there needs no zero-fill.
    pub(crate) fresh_from: u64,
    pub(crate) compression: CompressionType,
    /// Byte offset of free space in a partly used compressed-data cluster.
    pub(crate) compress_cursor: u64,
    pub(crate) snapshots: Vec<snapshot::Snapshot>,
    pub(crate) scratch: Vec<u8>,
    /// Last decompressed cluster (its L2 entry) for sequential reads.
    pub(crate) zcache: Option<(u64, Vec<u8>)>,
    /// Header dirty bit set by us (lazy refcounts) and not yet cleared.
    pub(crate) marked_dirty: bool,
    /// A refcount block was written on eviction without a sync since.
    pub(crate) rc_unsynced: bool,
    /// During repair: the computed references, so allocation avoids
    /// clusters in use whose refcount is (wrongly) zero.
    pub(crate) repair_refs: Option<Vec<u32>>,
    /// O_DIRECT descriptor for aligned data I/O (`OpenOptions::direct`).
    pub(crate) direct: Option<crate::direct::DirectIo>,
    /// qemu's cache=unsafe: never fsync (ordering of writes is kept).
    pub(crate) unsafe_cache: bool,
    /// With O_DIRECT, the file is grown ahead of allocation (see
    /// `grow_file`) so parallel direct writes to fresh clusters do not each
    /// extend it;
    /// trimmed back on close. Current file length when grown, else 0.
    pub(crate) grown_to: u64,
    /// Where live metadata sits (overlap checks, see `overlap`).
    pub(crate) overlaps: Overlaps,
    /// Opened for `check`: tables that overlap are reported by the check
    /// rather than refused when loaded.
    pub(crate) check_mode: bool,
    /// Length of the snapshot table on disk.
    pub(crate) snapshot_table_bytes: u64,
}

pub(crate) fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// Reads `buf` at `off`; bytes past the end of the file read as zeroes.
pub(crate) fn pread(file: &File, path: &Path, buf: &mut [u8], off: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path, e)),
        }
    }
    Ok(())
}

pub(crate) fn pwrite(file: &File, path: &Path, buf: &[u8], off: u64) -> Result<()> {
    file.write_all_at(buf, off).map_err(|e| io_err(path, e))
}

#[inline]
pub(crate) fn be64_at(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

impl Qcow2 {
    /// Opens the file itself (the caller attaches the backing chain).
    pub(crate) fn open_file(
        path: &Path,
        read_only: bool,
        l2_cache_bytes: Option<u64>,
        check_mode: bool,
    ) -> Result<Qcow2> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let mut head = vec![0u8; 4096.min(file_len as usize).max(72)];
        pread(&file, path, &mut head, 0)?;
        if file_len < 72 {
            return Err(Error::Corrupt(format!(
                "{}: qcow2 header is truncated",
                path.display()
            )));
        }
        // The header cluster may be up to 2 MiB; extensions live in it.
        let cb = u32::from_be_bytes(head[20..24].try_into().unwrap());
        if (9..=21).contains(&cb) && (1u64 << cb) > head.len() as u64 {
            let n = (1usize << cb).min(file_len as usize);
            head = vec![0u8; n.max(72)];
            pread(&file, path, &mut head, 0)?;
        }
        let h = Header::parse(&head, file_len).map_err(|e| prefix_err(path, e))?;
        let cs = h.cluster_size();
        let extl2 = h.extended_l2();
        let refcount_bits = 1u32 << h.refcount_order;
        let corrupt = h.incompatible & header::INCOMPAT_CORRUPT != 0;
        let read_only = read_only || (corrupt && !check_mode);
        let mut l1 = vec![0u64; h.l1_size as usize];
        {
            let mut raw = vec![0u8; h.l1_size as usize * 8];
            pread(&file, path, &mut raw, h.l1_table_offset)?;
            for (i, e) in l1.iter_mut().enumerate() {
                *e = be64_at(&raw, i * 8);
            }
        }
        let rt_len = (h.refcount_table_clusters as u64 * cs / 8) as usize;
        let mut reftable = vec![0u64; rt_len];
        {
            let mut raw = vec![0u8; rt_len * 8];
            pread(&file, path, &mut raw, h.refcount_table_offset)?;
            for (i, e) in reftable.iter_mut().enumerate() {
                *e = be64_at(&raw, i * 8);
            }
        }
        let l2_entries = cs / if extl2 { 16 } else { 8 };
        // Default: enough L2 cache for the whole disk, capped at 32 MiB
        // (qemu's default cap), and never below 8 GiB of coverage.
        let per_table_cover = l2_entries * cs;
        let want_tables = h.size.div_ceil(per_table_cover);
        let cap_tables = match l2_cache_bytes {
            Some(b) => (b / cs).max(4),
            None => want_tables
                .min((32 << 20) / cs)
                .max((8u64 << 30).div_ceil(per_table_cover).min((32 << 20) / cs))
                .max(4),
        };
        let rb_entries = cs * 8 / refcount_bits as u64;
        // Refcount blocks: 1/4 of an explicit L2 cache (qemu's ratio), else
        // up to 4 MiB.
        let rc_tables = match l2_cache_bytes {
            Some(b) => (b / cs / 4).max(4),
            None => ((4u64 << 20) / cs).clamp(16, 1024),
        };
        let compression = if h.compression_type == 1 {
            CompressionType::Zstd
        } else {
            CompressionType::Zlib
        };
        let end_cluster = file_len.div_ceil(cs);
        let mut q = Qcow2 {
            file,
            path: path.to_path_buf(),
            read_only,
            cs,
            cluster_bits: h.cluster_bits,
            l2_entries,
            extl2,
            sc_bits: if extl2 {
                h.cluster_bits - 5
            } else {
                h.cluster_bits
            },
            refcount_bits,
            rb_entries,
            l1,
            reftable,
            l2_cache: TableCache::new(cap_tables as usize, cs as usize),
            rc_cache: TableCache::new(rc_tables as usize, cs as usize),
            backing: None,
            free_hint: 0,
            meta_prealloc: None,
            end_cluster,
            fresh_from: end_cluster * cs,
            compression,
            compress_cursor: 0,
            snapshots: Vec::new(),
            scratch: Vec::new(),
            zcache: None,
            marked_dirty: false,
            rc_unsynced: false,
            repair_refs: None,
            direct: None,
            unsafe_cache: false,
            grown_to: 0,
            overlaps: Overlaps::new(h.cluster_bits),
            check_mode,
            snapshot_table_bytes: 0,
            h,
        };
        (q.snapshots, q.snapshot_table_bytes) =
            snapshot::read_table(&q).map_err(|e| prefix_err(path, e))?;
        q.build_overlaps(true).map_err(|e| prefix_err(path, e))?;
        if !q.read_only {
            // Unknown autoclear bits (bitmaps) must be cleared before writing.
            if q.h.autoclear != 0 && q.h.version == 3 {
                q.h.autoclear = 0;
                pwrite(&q.file, &q.path, &0u64.to_be_bytes(), header::OFF_AUTOCLEAR)?;
                q.sync()?;
                q.rebuild_overlaps();
            }
            if q.h.incompatible & header::INCOMPAT_DIRTY != 0 && !check_mode {
                // Refcounts may be stale: rebuild them before any allocation.
                q.repair(crate::Repair::All)?;
                q.set_incompat(q.h.incompatible & !header::INCOMPAT_DIRTY)?;
            }
        }
        Ok(q)
    }

    pub(crate) fn sync(&self) -> Result<()> {
        if self.unsafe_cache {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| io_err(&self.path, e))
    }

    pub(crate) fn set_incompat(&mut self, bits: u64) -> Result<()> {
        self.h.incompatible = bits;
        pwrite(
            &self.file,
            &self.path,
            &bits.to_be_bytes(),
            header::OFF_INCOMPAT,
        )?;
        self.sync()
    }

    pub(crate) fn lazy_refcounts(&self) -> bool {
        self.h.compatible & header::COMPAT_LAZY_REFCOUNTS != 0
    }

    /// Before the first metadata change of a lazy-refcounts image: set the
    /// dirty bit (refcounts are rebuilt if we die before clearing it).
    fn mark_dirty_if_lazy(&mut self) -> Result<()> {
        if self.lazy_refcounts() && !self.marked_dirty && self.h.version == 3 {
            self.set_incompat(self.h.incompatible | header::INCOMPAT_DIRTY)?;
            self.marked_dirty = true;
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }

    // ---- metadata overlap protection ----

    /// Lists every live metadata structure. `strict` (at open): the fixed
    /// tables must not overlap each other or the header, else an error
    /// names both. L2 tables and refcount blocks are checked when loaded.
    pub(crate) fn build_overlaps(&mut self, strict: bool) -> Result<()> {
        let mut o = Overlaps::new(self.cluster_bits);
        let add = |o: &mut Overlaps, what: &str, off: u64, len: u64, kind: Meta| match o
            .insert(off, len, kind)
        {
            Some((at, k)) if strict => Err(Error::Corrupt(format!(
                "{what} at {off:#x} overlaps the {} at {at:#x}",
                k.name()
            ))),
            _ => Ok(()),
        };
        add(&mut o, "qcow2 header", 0, self.cs, Meta::Header)?;
        add(
            &mut o,
            "Active L1 table",
            self.h.l1_table_offset,
            self.h.l1_size as u64 * 8,
            Meta::ActiveL1,
        )?;
        add(
            &mut o,
            "Refcount table",
            self.h.refcount_table_offset,
            self.h.refcount_table_clusters as u64 * self.cs,
            Meta::RefcountTable,
        )?;
        if self.h.nb_snapshots > 0 {
            add(
                &mut o,
                "Snapshot table",
                self.h.snapshots_offset,
                self.snapshot_table_bytes,
                Meta::SnapshotTable,
            )?;
        }
        for sn in &self.snapshots {
            add(
                &mut o,
                &format!("L1 table of snapshot {}", sn.id),
                sn.l1_table_offset,
                sn.l1_size as u64 * 8,
                Meta::InactiveL1,
            )?;
        }
        // The bitmap directory is live while its autoclear bit is set.
        if let (Some((off, len, _)), true) = (self.h.bitmaps, self.h.autoclear & 1 != 0) {
            if off.is_multiple_of(self.cs) && len <= 64 << 20 {
                add(&mut o, "Bitmap directory", off, len, Meta::BitmapDirectory)?;
            }
        }
        for &e in &self.reftable {
            let off = e & L1E_OFFSET_MASK;
            if off != 0 && off.is_multiple_of(self.cs) {
                o.insert(off, self.cs, Meta::RefcountBlock);
            }
        }
        for &e in &self.l1 {
            let off = e & L1E_OFFSET_MASK;
            if off != 0 && off.is_multiple_of(self.cs) {
                o.insert(off, self.cs, Meta::ActiveL2);
            }
        }
        self.overlaps = o;
        Ok(())
    }

    /// After tables moved or changed wholesale (snapshots, resize, a new
    /// refcount table): list them again.
    pub(crate) fn rebuild_overlaps(&mut self) {
        let _ = self.build_overlaps(false);
    }

    /// A table about to be loaded from `off` must not sit on metadata of
    /// another kind (a hostile L1 or refcount table entry).
    fn check_table_load(&self, what: &str, off: u64, kind: Meta) -> Result<()> {
        if self.check_mode {
            return Ok(());
        }
        match self.overlaps.find(off, self.cs, Some(kind)) {
            Some((at, k)) => Err(Error::Corrupt(format!(
                "{}: {what} at {off:#x} overlaps the {} at {at:#x}",
                self.path.display(),
                k.name()
            ))),
            None => Ok(()),
        }
    }

    /// qemu's pre-write overlap check: a write to `[off, off+len)` that
    /// would land on live metadata (other than `allowed`, the kind being
    /// written) is refused and the image marked corrupt.
    #[inline]
    pub(crate) fn guard_write(&mut self, off: u64, len: u64, allowed: Option<Meta>) -> Result<()> {
        match self.overlaps.find(off, len, allowed) {
            None => Ok(()),
            Some((at, kind)) => Err(self.signal_corruption(&format!(
                "Preventing invalid write on metadata (overlaps with {} at {at:#x})",
                kind.name()
            ))),
        }
    }

    /// Sets the corrupt bit (v3) and stops writing; the cached metadata is
    /// dropped, not flushed (like qemu, which takes the image offline).
    fn signal_corruption(&mut self, msg: &str) -> Error {
        tracing::error!("{}: marking image as corrupt: {msg}", self.path.display());
        if !self.read_only && self.h.version >= 3 {
            let _ = self.set_incompat(self.h.incompatible | header::INCOMPAT_CORRUPT);
        }
        self.read_only = true;
        self.marked_dirty = false;
        Error::Corrupt(format!(
            "{}: {msg}; image marked as corrupt",
            self.path.display()
        ))
    }

    // ---- geometry ----

    #[inline]
    pub(crate) fn l1_index(&self, gc: u64) -> usize {
        (gc / self.l2_entries) as usize
    }
    #[inline]
    pub(crate) fn l2_index(&self, gc: u64) -> usize {
        (gc % self.l2_entries) as usize
    }

    pub(crate) fn decode_compressed(&self, e: u64) -> (u64, u64) {
        let shift = 62 - (self.cluster_bits - 8);
        let mask = (1u64 << (self.cluster_bits - 8)) - 1;
        let off = e & ((1u64 << shift) - 1);
        let nsect = ((e >> shift) & mask) + 1;
        (off, nsect * 512 - (off & 511))
    }

    /// Host clusters a compressed descriptor touches, as qemu counts them.
    pub(crate) fn compressed_clusters(&self, e: u64) -> std::ops::Range<u64> {
        let shift = 62 - (self.cluster_bits - 8);
        let mask = (1u64 << (self.cluster_bits - 8)) - 1;
        let off = e & ((1u64 << shift) - 1) & !511;
        let nsect = ((e >> shift) & mask) + 1;
        let first = off >> self.cluster_bits;
        let last = (off + nsect * 512 - 1) >> self.cluster_bits;
        first..last + 1
    }

    /// State of subcluster `sc` (0..32, or 0 without extended L2) given an
    /// L2 entry and its bitmap.
    #[inline]
    pub(crate) fn map_of(&self, e: u64, bm: u64, sc: u32) -> Map {
        if e & COMPRESSED != 0 {
            let (off, len) = self.decode_compressed(e);
            return Map::Compressed(off, len);
        }
        let host = e & L2E_OFFSET_MASK;
        if self.extl2 {
            if bm & (1 << sc) != 0 {
                return Map::Data(host + ((sc as u64) << self.sc_bits));
            }
            if bm & (1 << (sc + 32)) != 0 {
                return Map::Zero;
            }
            return Map::Unalloc;
        }
        if self.h.version >= 3 && e & ZERO != 0 {
            return Map::Zero;
        }
        if host != 0 {
            Map::Data(host)
        } else {
            Map::Unalloc
        }
    }

    // ---- L2 tables ----

    /// Slot of the L2 table at `off` in the cache, loading it if needed.
    pub(crate) fn l2_slot(&mut self, off: u64) -> Result<usize> {
        if let Some(i) = self.l2_cache.lookup(off) {
            return Ok(i);
        }
        if !off.is_multiple_of(self.cs) {
            return Err(Error::Corrupt(format!(
                "L2 table offset {off:#x} is not cluster aligned"
            )));
        }
        self.check_table_load("L2 table", off, Meta::ActiveL2)?;
        let (i, dirty) = self.l2_cache.victim();
        if dirty {
            self.write_l2_slot(i)?;
        }
        let slot = self.l2_cache.get_mut(i);
        if let Err(e) = pread(&self.file, &self.path, &mut slot.data, off) {
            slot.offset = u64::MAX;
            return Err(e);
        }
        self.l2_cache.install(i, off);
        Ok(i)
    }

    #[inline]
    pub(crate) fn l2_get(&self, slot: usize, idx: usize) -> (u64, u64) {
        let d = &self.l2_cache.get(slot).data;
        if self.extl2 {
            (be64_at(d, idx * 16), be64_at(d, idx * 16 + 8))
        } else {
            (be64_at(d, idx * 8), 0)
        }
    }

    pub(crate) fn l2_set(&mut self, slot: usize, idx: usize, e: u64, bm: u64) {
        let ext = self.extl2;
        let d = &mut self.l2_cache.get_mut(slot).data;
        if ext {
            d[idx * 16..idx * 16 + 8].copy_from_slice(&e.to_be_bytes());
            d[idx * 16 + 8..idx * 16 + 16].copy_from_slice(&bm.to_be_bytes());
        } else {
            d[idx * 8..idx * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.l2_cache.mark_dirty(slot);
    }

    /// Writes one dirty L2 table; dirty refcount blocks go first (they may
    /// count clusters this table references).
    pub(crate) fn write_l2_slot(&mut self, i: usize) -> Result<()> {
        if !self.l2_cache.get(i).is_dirty() {
            return Ok(());
        }
        self.write_refblocks()?;
        let off = self.l2_cache.get(i).offset;
        self.guard_write(off, self.cs, Some(Meta::ActiveL2))?;
        let slot = self.l2_cache.get(i);
        pwrite(&self.file, &self.path, &slot.data, slot.offset)?;
        self.l2_cache.mark_clean(i);
        Ok(())
    }

    /// Writes the dirty refcount blocks, then syncs so they are durable
    /// before anything that depends on them.
    pub(crate) fn write_refblocks(&mut self) -> Result<()> {
        if !self.rc_cache.any_dirty() && !self.rc_unsynced {
            return Ok(());
        }
        for i in self.rc_cache.dirty_slots() {
            let off = self.rc_cache.get(i).offset;
            self.guard_write(off, self.cs, Some(Meta::RefcountBlock))?;
            let s = self.rc_cache.get(i);
            pwrite(&self.file, &self.path, &s.data, s.offset)?;
            self.rc_cache.mark_clean(i);
        }
        if !self.lazy_refcounts() {
            self.sync()?;
        }
        self.rc_unsynced = false;
        Ok(())
    }

    /// Writes all dirty metadata in dependency order.
    pub(crate) fn flush_metadata(&mut self) -> Result<()> {
        self.write_refblocks()?;
        for i in self.l2_cache.dirty_slots() {
            self.write_l2_slot(i)?;
        }
        Ok(())
    }

    /// Writes L1 entry `idx` (the table it points at must already be on disk).
    pub(crate) fn set_l1(&mut self, idx: usize, val: u64) -> Result<()> {
        pwrite(
            &self.file,
            &self.path,
            &val.to_be_bytes(),
            self.h.l1_table_offset + idx as u64 * 8,
        )?;
        let old = self.l1[idx] & L1E_OFFSET_MASK;
        let new = val & L1E_OFFSET_MASK;
        if old != new {
            if old != 0 {
                self.overlaps.remove(old, Meta::ActiveL2);
            }
            if new != 0 {
                self.overlaps.insert(new, self.cs, Meta::ActiveL2);
            }
        }
        self.l1[idx] = val;
        Ok(())
    }

    /// L2 slot for guest cluster `gc` if its table exists (read path).
    #[inline]
    fn l2_for_read(&mut self, gc: u64) -> Result<Option<usize>> {
        let l1i = self.l1_index(gc);
        let e = match self.l1.get(l1i) {
            Some(&e) => e,
            None => return Ok(None),
        };
        let off = e & L1E_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        Ok(Some(self.l2_slot(off)?))
    }

    /// L2 slot for `gc` that may be modified: allocates a table, or copies a
    /// shared one (COW), updating the L1 entry.
    pub(crate) fn l2_for_write(&mut self, gc: u64) -> Result<usize> {
        let l1i = self.l1_index(gc);
        if l1i >= self.l1.len() {
            return Err(Error::Corrupt("guest offset beyond the L1 table".into()));
        }
        let e = self.l1[l1i];
        let old = e & L1E_OFFSET_MASK;
        if old != 0 && e & COPIED != 0 {
            return self.l2_slot(old);
        }
        self.mark_dirty_if_lazy()?;
        let mut content = vec![0u8; self.cs as usize];
        if old != 0 {
            let s = self.l2_slot(old)?;
            content.copy_from_slice(&self.l2_cache.get(s).data);
        }
        let new = self.alloc_clusters(1)?;
        // Refcounts first, then the table, then the L1 entry.
        self.write_refblocks()?;
        self.guard_write(new, self.cs, None)?;
        pwrite(&self.file, &self.path, &content, new)?;
        self.note_written(new, self.cs);
        if !self.lazy_refcounts() {
            self.sync()?;
        }
        self.set_l1(l1i, new | COPIED)?;
        let (i, dirty) = self.l2_cache.victim();
        if dirty {
            self.write_l2_slot(i)?;
        }
        self.l2_cache.get_mut(i).data.copy_from_slice(&content);
        self.l2_cache.install(i, new);
        if old != 0 {
            self.free_clusters(old, 1)?;
        }
        Ok(i)
    }

    /// Guest data read (O_DIRECT when enabled and aligned).
    #[inline]
    fn data_pread(&mut self, buf: &mut [u8], off: u64) -> Result<()> {
        if let Some(d) = self.direct.as_mut() {
            if let Some(r) = d.read(buf, off) {
                return r.map_err(|e| io_err(&self.path, e));
            }
        }
        pread(&self.file, &self.path, buf, off)
    }

    /// Guest data write (O_DIRECT when enabled and aligned).
    #[inline]
    fn data_pwrite(&mut self, buf: &[u8], off: u64) -> Result<()> {
        self.guard_write(off, buf.len() as u64, None)?;
        if let Some(d) = self.direct.as_mut() {
            if let Some(r) = d.write(buf, off) {
                return r.map_err(|e| io_err(&self.path, e));
            }
        }
        pwrite(&self.file, &self.path, buf, off)
    }

    /// Records that `[off, off+len)` now holds written data.
    pub(crate) fn note_written(&mut self, off: u64, len: u64) {
        let end = off + len;
        if end > self.fresh_from {
            self.fresh_from = end;
        }
        let endc = end.div_ceil(self.cs);
        if endc > self.end_cluster {
            self.end_cluster = endc;
        }
    }

    // ---- reads ----

    /// Reads guest bytes; `off + buf.len()` must be within the image.
    pub(crate) fn read(&mut self, buf: &mut [u8], off: u64) -> Result<()> {
        let mut done = 0usize;
        // Coalesced pending plain read: (host, buf start, len).
        let mut run: Option<(u64, usize, usize)> = None;
        let sc_size = 1u64 << self.sc_bits;
        while done < buf.len() {
            let pos = off + done as u64;
            let gc = pos >> self.cluster_bits;
            let in_c = pos & (self.cs - 1);
            let (e, bm) = match self.l2_for_read(gc)? {
                Some(s) => self.l2_get(s, self.l2_index(gc)),
                None => (0, 0),
            };
            // Length of the piece with one state.
            let sc = (in_c >> self.sc_bits) as u32;
            let mut m = self.map_of(e, bm, sc);
            let mut piece_end = if self.extl2 && !matches!(m, Map::Compressed(..)) {
                // extend over subclusters with the same kind of state
                let mut s = sc + 1;
                while s < 32 {
                    let m2 = self.map_of(e, bm, s);
                    let same = match (m, m2) {
                        (Map::Data(a), Map::Data(b)) => b == a + ((s - sc) as u64) * sc_size,
                        (a, b) => a == b,
                    };
                    if !same {
                        break;
                    }
                    s += 1;
                }
                (s as u64) << self.sc_bits
            } else {
                self.cs
            };
            piece_end = piece_end.min(in_c + (buf.len() - done) as u64);
            let n = (piece_end - in_c) as usize;
            if let Map::Data(h) = m {
                let host = if self.extl2 {
                    h + (in_c & (sc_size - 1))
                } else {
                    h + in_c
                };
                if host >> 56 != 0 {
                    return Err(Error::Corrupt(format!(
                        "data cluster offset {h:#x} is invalid"
                    )));
                }
                match &mut run {
                    Some((rh, rb, rl)) if *rh + *rl as u64 == host && *rb + *rl == done => {
                        *rl += n;
                    }
                    _ => {
                        if let Some((rh, rb, rl)) = run.take() {
                            self.data_pread(&mut buf[rb..rb + rl], rh)?;
                        }
                        run = Some((host, done, n));
                    }
                }
                done += n;
                continue;
            }
            if let Some((rh, rb, rl)) = run.take() {
                self.data_pread(&mut buf[rb..rb + rl], rh)?;
            }
            let dst = &mut buf[done..done + n];
            match &mut m {
                Map::Zero => dst.fill(0),
                Map::Unalloc => self.read_backing(dst, pos)?,
                Map::Compressed(..) => {
                    self.read_compressed(e, dst, in_c as usize)?;
                }
                Map::Data(_) => unreachable!(),
            }
            done += n;
        }
        if let Some((rh, rb, rl)) = run.take() {
            self.data_pread(&mut buf[rb..rb + rl], rh)?;
        }
        Ok(())
    }

    /// Reads unallocated guest bytes: from the backing image within its
    /// size, zeroes past it.
    pub(crate) fn read_backing(&mut self, dst: &mut [u8], pos: u64) -> Result<()> {
        match &mut self.backing {
            Some(b) => {
                let bsize = b.size();
                if pos >= bsize {
                    dst.fill(0);
                } else {
                    let n = ((bsize - pos) as usize).min(dst.len());
                    b.read_at(&mut dst[..n], pos)?;
                    dst[n..].fill(0);
                }
            }
            None => dst.fill(0),
        }
        Ok(())
    }

    fn read_compressed(&mut self, e: u64, dst: &mut [u8], in_c: usize) -> Result<()> {
        let hit = matches!(&self.zcache, Some((k, _)) if *k == e);
        if !hit {
            let (off, len) = self.decode_compressed(e);
            let len = (len as usize).min(2 * self.cs as usize);
            let mut src = vec![0u8; len];
            pread(&self.file, &self.path, &mut src, off)?;
            let mut out = match self.zcache.take() {
                Some((_, v)) => v,
                None => vec![0u8; self.cs as usize],
            };
            compress::decompress(self.compression, &src, &mut out)?;
            self.zcache = Some((e, out));
        }
        let data = &self.zcache.as_ref().unwrap().1;
        dst.copy_from_slice(&data[in_c..in_c + dst.len()]);
        Ok(())
    }

    /// True when unallocated reads of guest cluster `gc` can only see zeroes.
    fn below_is_zero(&self, gc: u64) -> bool {
        match &self.backing {
            None => true,
            Some(b) => b.size() <= gc << self.cluster_bits,
        }
    }

    // ---- writes ----

    pub(crate) fn write(&mut self, buf: &[u8], off: u64) -> Result<()> {
        self.check_writable()?;
        self.zcache = None;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let gc = pos >> self.cluster_bits;
            // One L2 table's worth at most per step.
            let table_end = (gc / self.l2_entries + 1) * self.l2_entries * self.cs;
            let n = ((table_end - pos) as usize).min(buf.len() - done);
            self.write_slice(&buf[done..done + n], pos)?;
            done += n;
        }
        Ok(())
    }

    /// Writes within one L2 table.
    fn write_slice(&mut self, buf: &[u8], off: u64) -> Result<()> {
        // Fast path: every cluster already allocated, exclusively ours.
        if let Some(slot) = self.l2_for_read(off >> self.cluster_bits)? {
            let mut done = 0usize;
            let mut run: Option<(u64, usize, usize)> = None;
            let mut all = true;
            while done < buf.len() {
                let pos = off + done as u64;
                let gc = pos >> self.cluster_bits;
                let in_c = pos & (self.cs - 1);
                let n = ((self.cs - in_c) as usize).min(buf.len() - done);
                let (e, bm) = self.l2_get(slot, self.l2_index(gc));
                if !self.in_place_ok(e, bm, in_c, n as u64) {
                    all = false;
                    break;
                }
                let host = (e & L2E_OFFSET_MASK) + in_c;
                match &mut run {
                    Some((rh, rb, rl)) if *rh + *rl as u64 == host => *rl += n,
                    _ => {
                        if let Some((rh, rb, rl)) = run.take() {
                            self.data_pwrite(&buf[rb..rb + rl], rh)?;
                        }
                        run = Some((host, done, n));
                    }
                }
                done += n;
            }
            if all {
                if let Some((rh, rb, rl)) = run.take() {
                    self.data_pwrite(&buf[rb..rb + rl], rh)?;
                }
                return Ok(());
            }
        }
        // Slow path: cluster by cluster, allocating as needed. (Clusters
        // already handled in-place above are simply rewritten.)
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let gc = pos >> self.cluster_bits;
            let in_c = pos & (self.cs - 1);
            if (self.free_hint << self.cluster_bits) >= self.fresh_from {
                let n = self.write_fresh_run(gc, in_c, &buf[done..])?;
                if n > 0 {
                    done += n;
                    continue;
                }
            }
            let n = ((self.cs - in_c) as usize).min(buf.len() - done);
            self.write_cluster(gc, in_c, &buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Sequential-write fast path: clusters starting at `gc` that read as
    /// zero and own no host cluster get one contiguous fresh allocation and
    /// a single data write (nothing to copy: fresh space reads as zero).
    /// Returns the bytes written (0 when the first cluster does not qualify).
    fn write_fresh_run(&mut self, gc: u64, in_c: u64, buf: &[u8]) -> Result<usize> {
        let slot = self.l2_for_write(gc)?;
        let table_end = (gc / self.l2_entries + 1) * self.l2_entries;
        let mut k = 0u64;
        let mut bytes = 0usize;
        while gc + k < table_end && bytes < buf.len() {
            let (e, bm) = self.l2_get(slot, self.l2_index(gc + k));
            if !self.fresh_ok(e, bm, gc + k) {
                break;
            }
            let start = if k == 0 { in_c } else { 0 };
            bytes += ((self.cs - start) as usize).min(buf.len() - bytes);
            k += 1;
        }
        if k == 0 {
            return Ok(0);
        }
        self.mark_dirty_if_lazy()?;
        let host = self.alloc_clusters(k)?;
        self.data_pwrite(&buf[..bytes], host + in_c)?;
        self.note_written(host + in_c, bytes as u64);
        self.map_run(slot, gc, k, host, in_c, bytes as u64);
        Ok(bytes)
    }

    /// A cluster whose entry is `e`/`bm` can take a fresh allocation
    /// without copying anything: it reads as zero and owns no host cluster.
    #[inline]
    fn fresh_ok(&self, e: u64, bm: u64, gc: u64) -> bool {
        e & (COMPRESSED | L2E_OFFSET_MASK) == 0
            && if self.extl2 {
                bm == ALL_ZERO || (bm == 0 && self.below_is_zero(gc))
            } else {
                e & ZERO != 0 && self.h.version >= 3 || self.below_is_zero(gc)
            }
    }

    /// Points the `k` entries from `gc` (table in `slot`) at the contiguous
    /// host clusters from `host`, whose bytes `[in_c, in_c + bytes)` (from
    /// the first cluster's start) now hold the data.
    fn map_run(&mut self, slot: usize, gc: u64, k: u64, host: u64, in_c: u64, bytes: u64) {
        let end = in_c + bytes; // relative to the first cluster
        for j in 0..k {
            let idx = self.l2_index(gc + j);
            let (_, old_bm) = self.l2_get(slot, idx);
            let bm = if self.extl2 {
                let cstart = j * self.cs;
                let s = in_c.max(cstart) - cstart;
                let e = end.min(cstart + self.cs) - cstart;
                let s0 = s >> self.sc_bits;
                let s1 = (e - 1) >> self.sc_bits;
                let touched = ((1u64 << (s1 - s0 + 1)) - 1) << s0;
                let zero = (old_bm >> 32) & !touched & 0xffff_ffff;
                touched | (zero << 32)
            } else {
                0
            };
            self.l2_set(slot, idx, (host + j * self.cs) | COPIED, bm);
        }
    }

    #[inline]
    fn in_place_ok(&self, e: u64, bm: u64, in_c: u64, n: u64) -> bool {
        if e & COPIED == 0 || e & COMPRESSED != 0 || e & L2E_OFFSET_MASK == 0 {
            return false;
        }
        if self.extl2 {
            let s0 = in_c >> self.sc_bits;
            let s1 = (in_c + n - 1) >> self.sc_bits;
            let mask = ((1u64 << (s1 - s0 + 1)) - 1) << s0;
            bm & mask == mask
        } else {
            self.h.version < 3 || e & ZERO == 0
        }
    }

    /// Writes `data` at `in_c` inside guest cluster `gc`, allocating/COWing.
    fn write_cluster(&mut self, gc: u64, in_c: u64, data: &[u8]) -> Result<()> {
        let slot = self.l2_for_write(gc)?;
        let idx = self.l2_index(gc);
        let (e, bm) = self.l2_get(slot, idx);
        if self.in_place_ok(e, bm, in_c, data.len() as u64) {
            let host = (e & L2E_OFFSET_MASK) + in_c;
            return self.data_pwrite(data, host);
        }
        self.mark_dirty_if_lazy()?;
        let cs = self.cs;
        let old_host = if e & COMPRESSED != 0 {
            0
        } else {
            e & L2E_OFFSET_MASK
        };
        let reuse = self.extl2 && e & COPIED != 0 && e & COMPRESSED == 0 && old_host != 0;
        let fresh_before = self.fresh_from;
        let host = if reuse {
            old_host
        } else {
            self.alloc_clusters(1)?
        };
        let fresh = !reuse && host >= fresh_before;
        let gpos = gc << self.cluster_bits;
        let mut scratch = std::mem::take(&mut self.scratch);
        let (new_e, new_bm);
        let res = (|| -> Result<(u64, u64)> {
            if !self.extl2 {
                let old_reads_zero = match self.map_of(e, bm, 0) {
                    Map::Zero => true,
                    Map::Unalloc => self.below_is_zero(gc),
                    _ => false,
                };
                if fresh && old_reads_zero {
                    self.data_pwrite(data, host + in_c)?;
                    self.note_written(host + in_c, data.len() as u64);
                } else {
                    scratch.resize(cs as usize, 0);
                    if old_reads_zero {
                        scratch.fill(0);
                    } else {
                        self.read_cluster_as(e, bm, gpos, &mut scratch)?;
                    }
                    scratch[in_c as usize..in_c as usize + data.len()].copy_from_slice(data);
                    self.guard_write(host, cs, None)?;
                    pwrite(&self.file, &self.path, &scratch, host)?;
                    self.note_written(host, cs);
                }
                Ok((host | COPIED, 0))
            } else if e & COMPRESSED != 0 || (old_host != 0 && !reuse && bm & ALL_ALLOC != 0) {
                // Copy the whole cluster out of a compressed or shared one.
                scratch.resize(cs as usize, 0);
                self.read_cluster_as(e, bm, gpos, &mut scratch)?;
                scratch[in_c as usize..in_c as usize + data.len()].copy_from_slice(data);
                self.guard_write(host, cs, None)?;
                pwrite(&self.file, &self.path, &scratch, host)?;
                self.note_written(host, cs);
                let s0 = in_c >> self.sc_bits;
                let s1 = (in_c + data.len() as u64 - 1) >> self.sc_bits;
                let touched = ((1u64 << (s1 - s0 + 1)) - 1) << s0;
                if e & COMPRESSED != 0 {
                    Ok((host | COPIED, ALL_ALLOC))
                } else {
                    let alloc = (bm & ALL_ALLOC) | touched;
                    let zero = (bm >> 32) & !touched & 0xffff_ffff;
                    // keep unallocated subclusters unallocated
                    Ok((host | COPIED, alloc | (zero << 32)))
                }
            } else {
                // Subcluster granularity: write the touched subclusters,
                // filling partial edges with what they read as now.
                let scs = 1u64 << self.sc_bits;
                let s0 = in_c >> self.sc_bits;
                let s1 = (in_c + data.len() as u64 - 1) >> self.sc_bits;
                let start = s0 * scs;
                let end = (s1 + 1) * scs;
                let len = (end - start) as usize;
                scratch.resize(len, 0);
                let head = (in_c - start) as usize;
                let tail_start = head + data.len();
                if head > 0 {
                    self.read_cluster_range(e, bm, gpos, start, &mut scratch[..scs as usize])?;
                }
                if tail_start < len {
                    let ts = len - scs as usize;
                    let (a, b) = scratch.split_at_mut(ts);
                    let _ = a;
                    self.read_cluster_range(e, bm, gpos, start + ts as u64, b)?;
                }
                scratch[head..tail_start].copy_from_slice(data);
                self.guard_write(host + start, len as u64, None)?;
                pwrite(&self.file, &self.path, &scratch[..len], host + start)?;
                self.note_written(host + start, len as u64);
                let touched = ((1u64 << (s1 - s0 + 1)) - 1) << s0;
                let alloc = if reuse { bm & ALL_ALLOC } else { 0 } | touched;
                let zero = (bm >> 32) & !touched & 0xffff_ffff;
                let _ = fresh;
                Ok((host | COPIED, alloc | (zero << 32)))
            }
        })();
        self.scratch = scratch;
        (new_e, new_bm) = res?;
        self.l2_set(slot, idx, new_e, new_bm);
        if !reuse {
            self.free_entry(slot, e)?;
        }
        Ok(())
    }

    /// After an L2 entry that used `old_e` was replaced in slot `slot`:
    /// write the table, then drop the old host clusters' references.
    fn free_entry(&mut self, slot: usize, old_e: u64) -> Result<()> {
        if old_e & COMPRESSED != 0 {
            self.write_l2_slot(slot)?;
            let r = self.compressed_clusters(old_e);
            self.free_clusters(r.start << self.cluster_bits, r.end - r.start)?;
        } else if old_e & L2E_OFFSET_MASK != 0 {
            self.write_l2_slot(slot)?;
            self.free_clusters(old_e & L2E_OFFSET_MASK, 1)?;
        }
        Ok(())
    }

    /// Reads what guest cluster (at `gpos`) with entry `e`/`bm` reads as.
    fn read_cluster_as(&mut self, e: u64, bm: u64, gpos: u64, out: &mut [u8]) -> Result<()> {
        self.read_cluster_range(e, bm, gpos, 0, out)
    }

    /// Reads `[start, start+out.len())` of a guest cluster as it reads with
    /// entry `e`/`bm` (which may differ from the table's current one).
    fn read_cluster_range(
        &mut self,
        e: u64,
        bm: u64,
        gpos: u64,
        start: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let mut done = 0usize;
        let scs = 1u64 << self.sc_bits;
        while done < out.len() {
            let in_c = start + done as u64;
            let sc = (in_c >> self.sc_bits) as u32;
            let n = if self.extl2 && e & COMPRESSED == 0 {
                ((scs - (in_c & (scs - 1))) as usize).min(out.len() - done)
            } else {
                out.len() - done
            };
            let dst = &mut out[done..done + n];
            match self.map_of(e, bm, if self.extl2 { sc } else { 0 }) {
                Map::Zero => dst.fill(0),
                Map::Unalloc => {
                    let gp = gpos + in_c;
                    let size = self.h.size;
                    if gp >= size {
                        dst.fill(0)
                    } else {
                        let m = ((size - gp) as usize).min(dst.len());
                        self.read_backing(&mut dst[..m], gp)?;
                        dst[m..].fill(0);
                    }
                }
                Map::Data(h) => {
                    let host = if self.extl2 {
                        h + (in_c & (scs - 1))
                    } else {
                        h + in_c
                    };
                    pread(&self.file, &self.path, dst, host)?;
                }
                Map::Compressed(..) => self.read_compressed(e, dst, in_c as usize)?,
            }
            done += n;
        }
        Ok(())
    }

    /// `SharedImage` planning: maps a request to host segments when it can
    /// run without the lock (see `shared.rs`), else `Plan::Locked`.
    pub(crate) fn plan(
        &mut self,
        off: u64,
        len: usize,
        segs: &mut Vec<crate::image::Seg>,
        write: bool,
    ) -> Result<crate::image::Plan> {
        use crate::image::{push_seg, Plan};
        if write {
            self.check_writable()?;
        }
        let mut done = 0usize;
        while done < len {
            let pos = off + done as u64;
            let gc = pos >> self.cluster_bits;
            let in_c = pos & (self.cs - 1);
            let n = ((self.cs - in_c) as usize).min(len - done);
            let (e, bm) = match self.l2_for_read(gc)? {
                Some(s) => self.l2_get(s, self.l2_index(gc)),
                None => (0, 0),
            };
            let ok = if write {
                self.in_place_ok(e, bm, in_c, n as u64)
            } else if e & COMPRESSED != 0 || e & L2E_OFFSET_MASK == 0 {
                false
            } else if self.extl2 {
                let s0 = in_c >> self.sc_bits;
                let s1 = (in_c + n as u64 - 1) >> self.sc_bits;
                let mask = ((1u64 << (s1 - s0 + 1)) - 1) << s0;
                bm & mask == mask
            } else {
                matches!(self.map_of(e, bm, 0), Map::Data(_))
            };
            if !ok {
                if write && done == 0 && n == len {
                    return self.plan_fresh(gc, in_c, n, e, bm, segs);
                }
                return Ok(Plan::Locked);
            }
            if write {
                self.guard_write((e & L2E_OFFSET_MASK) + in_c, n as u64, None)?;
            }
            push_seg(segs, (e & L2E_OFFSET_MASK) + in_c, done, n);
            done += n;
        }
        Ok(Plan::InPlace)
    }

    fn plan_fresh(
        &mut self,
        gc: u64,
        in_c: u64,
        n: usize,
        e: u64,
        bm: u64,
        segs: &mut Vec<crate::image::Seg>,
    ) -> Result<crate::image::Plan> {
        use crate::image::Plan;
        let reads_zero = e & (COMPRESSED | L2E_OFFSET_MASK) == 0
            && if self.extl2 {
                bm == ALL_ZERO || (bm == 0 && self.below_is_zero(gc))
            } else {
                (e & ZERO != 0 && self.h.version >= 3) || self.below_is_zero(gc)
            };
        if !reads_zero || (self.free_hint << self.cluster_bits) < self.fresh_from {
            return Ok(Plan::Locked);
        }
        self.mark_dirty_if_lazy()?;
        self.zcache = None;
        self.l2_for_write(gc)?;
        let host = self.alloc_clusters(1)?;
        self.guard_write(host, self.cs, None)?;
        if self.direct.is_some() && host + self.cs > self.grown_to {
            let len = self
                .file
                .metadata()
                .map_err(|e| io_err(&self.path, e))?
                .len();
            if host + self.cs > len {
                let to = (host + self.cs + (32 << 20)).next_multiple_of(self.cs);
                self.grow_file(len, to)?;
                self.grown_to = to;
            } else {
                self.grown_to = len;
            }
        }
        let bitmap = if self.extl2 {
            let s0 = in_c >> self.sc_bits;
            let s1 = (in_c + n as u64 - 1) >> self.sc_bits;
            let touched = ((1u64 << (s1 - s0 + 1)) - 1) << s0;
            touched | (((bm >> 32) & !touched & 0xffff_ffff) << 32)
        } else {
            0
        };
        self.note_written(host + in_c, n as u64);
        segs.push(crate::image::Seg {
            host: host + in_c,
            buf: 0,
            len: n,
        });
        Ok(Plan::Fresh { gc, host, bitmap })
    }

    /// Extends the file from `len` to `to` ahead of O_DIRECT writes:
    /// preallocated (unwritten extents, which read as zeroes) where the
    /// filesystem can, else sparse. Direct writes into preallocated blocks
    /// are overwrites, which ext4 runs in parallel under a shared inode
    /// lock; writes into holes or past the end take it exclusively, one at
    /// a time.
    fn grow_file(&mut self, len: u64, to: u64) -> Result<()> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: fallocate on our own open descriptor, in-range arguments.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                0,
                len as libc::off_t,
                (to - len) as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        self.file.set_len(to).map_err(|e| io_err(&self.path, e))
    }

    /// Maps a fresh cluster whose data is now written (data before L2).
    pub(crate) fn publish(&mut self, gc: u64, host: u64, bitmap: u64) -> Result<()> {
        let slot = self.l2_for_write(gc)?;
        self.l2_set(slot, self.l2_index(gc), host | COPIED, bitmap);
        Ok(())
    }

    /// Writes one guest cluster compressed (see `Image::write_compressed`).
    pub(crate) fn write_compressed(&mut self, buf: &[u8], off: u64) -> Result<()> {
        self.check_compressed_args(buf, off)?;
        let packed = compress_cluster(self.compression, self.cs, buf)?;
        self.write_packed(buf, packed.as_deref(), off)
    }

    fn check_compressed_args(&self, buf: &[u8], off: u64) -> Result<()> {
        self.check_writable()?;
        let cs = self.cs;
        // One whole cluster, or the start of the last one (which may be
        // partial, and longer than a source of an unaligned size).
        let len = buf.len() as u64;
        let last = off + cs >= self.h.size && off + len <= self.h.size;
        if !off.is_multiple_of(cs) || len == 0 || (len != cs && !last) {
            return Err(Error::InvalidArgument(
                "compressed writes must cover exactly one cluster".into(),
            ));
        }
        Ok(())
    }

    /// Stores one guest cluster already compressed by [`compress_cluster`]
    /// (`packed`), or plainly when it did not compress (`None`).
    pub(crate) fn write_packed(
        &mut self,
        buf: &[u8],
        packed: Option<&[u8]>,
        off: u64,
    ) -> Result<()> {
        self.check_compressed_args(buf, off)?;
        self.zcache = None;
        let Some(packed) = packed else {
            return self.write(buf, off);
        };
        if packed.len() as u64 >= self.cs {
            return Err(Error::InvalidArgument(
                "compressed cluster is not smaller than a cluster".into(),
            ));
        }
        self.mark_dirty_if_lazy()?;
        let gc = off >> self.cluster_bits;
        let slot = self.l2_for_write(gc)?;
        let host = self.alloc_bytes(packed.len() as u64)?;
        self.guard_write(host, packed.len() as u64, None)?;
        pwrite(&self.file, &self.path, packed, host)?;
        self.note_written(host, packed.len() as u64);
        let nsect = ((host & 511) + packed.len() as u64).div_ceil(512);
        let shift = 62 - (self.cluster_bits - 8);
        let e = COMPRESSED | ((nsect - 1) << shift) | host;
        // The table may have been evicted while allocating: look it up again.
        let slot = {
            let l2off = self.l1[self.l1_index(gc)] & L1E_OFFSET_MASK;
            let _ = slot;
            self.l2_slot(l2off)?
        };
        let idx = self.l2_index(gc);
        let (old, _) = self.l2_get(slot, idx);
        self.l2_set(slot, idx, e, 0);
        self.free_entry(slot, old)
    }

    /// Points the header at a new backing file (None removes it).
    pub(crate) fn set_backing(&mut self, name: Option<String>, fmt: Option<String>) -> Result<()> {
        self.check_writable()?;
        self.flush()?;
        let mut h = self.h.clone();
        h.backing_format = if name.is_some() { fmt } else { None };
        h.backing_file = name;
        let buf = h.serialize_best()?;
        pwrite(&self.file, &self.path, &buf, 0)?;
        self.sync()?;
        self.h = h;
        Ok(())
    }

    // ---- discard / zeroes ----

    /// `zero`: the range must read as zeroes afterwards (write_zeroes);
    /// otherwise a discard (may expose backing data on v2).
    pub(crate) fn discard_range(&mut self, off: u64, len: u64, zero: bool) -> Result<()> {
        self.check_writable()?;
        self.zcache = None;
        let end = off + len;
        let size = self.h.size;
        let mut pos = off;
        while pos < end {
            let gc = pos >> self.cluster_bits;
            let cstart = gc << self.cluster_bits;
            let cend = (cstart + self.cs).min(size);
            if pos != cstart || end < cend {
                // Partial cluster: write real zeroes.
                let n = cend.min(end) - pos;
                self.write_zero_bytes(pos, n)?;
                pos += n;
                continue;
            }
            // Run of whole clusters within one L2 table.
            let table_end = (gc / self.l2_entries + 1) * self.l2_entries;
            let mut last = gc + 1; // exclusive
            while last < table_end {
                let s = last << self.cluster_bits;
                let e = (s + self.cs).min(size);
                if s >= size || e > end {
                    break;
                }
                last += 1;
            }
            self.discard_clusters(gc, last, zero)?;
            pos = (last << self.cluster_bits).min(end);
        }
        Ok(())
    }

    fn write_zero_bytes(&mut self, pos: u64, len: u64) -> Result<()> {
        let z = vec![0u8; len as usize];
        self.write(&z, pos)
    }

    /// Whole guest clusters `[first, end)` within one L2 table.
    fn discard_clusters(&mut self, first: u64, end: u64, zero: bool) -> Result<()> {
        let v3 = self.h.version >= 3;
        // What each cluster becomes; None = write real zeroes instead.
        let target = |q: &Self, gc: u64| -> Option<(u64, u64)> {
            if q.below_is_zero(gc) {
                Some((0, 0))
            } else if v3 {
                if q.extl2 {
                    Some((0, ALL_ZERO))
                } else {
                    Some((ZERO, 0))
                }
            } else if zero {
                None
            } else {
                Some((0, 0))
            }
        };
        // Skip the whole run when nothing changes (no table, reads right).
        let l1i = self.l1_index(first);
        let have_table = self.l1.get(l1i).is_some_and(|e| e & L1E_OFFSET_MASK != 0);
        if !have_table && self.below_is_zero(first) && self.below_is_zero(end - 1) {
            return Ok(());
        }
        let mut need_table = have_table;
        if !have_table {
            for gc in first..end {
                if target(self, gc) != Some((0, 0)) {
                    need_table = true;
                    break;
                }
            }
        }
        if !need_table {
            return Ok(());
        }
        self.mark_dirty_if_lazy()?;
        let slot = self.l2_for_write(first)?;
        let mut frees: Vec<u64> = Vec::new();
        let mut changed = false;
        let mut real_zero: Vec<u64> = Vec::new();
        for gc in first..end {
            let idx = self.l2_index(gc);
            let (e, bm) = self.l2_get(slot, idx);
            match target(self, gc) {
                None => real_zero.push(gc),
                Some((ne, nbm)) => {
                    if (e, bm) != (ne, nbm) {
                        self.l2_set(slot, idx, ne, nbm);
                        changed = true;
                        if e != 0 {
                            frees.push(e);
                        }
                    }
                }
            }
        }
        if changed {
            self.write_l2_slot(slot)?;
            for e in frees {
                if e & COMPRESSED != 0 {
                    let r = self.compressed_clusters(e);
                    self.free_clusters(r.start << self.cluster_bits, r.end - r.start)?;
                } else if e & L2E_OFFSET_MASK != 0 {
                    self.free_clusters(e & L2E_OFFSET_MASK, 1)?;
                }
            }
        }
        for gc in real_zero {
            let start = gc << self.cluster_bits;
            let len = self.cs.min(self.h.size - start);
            self.write_zero_bytes(start, len)?;
        }
        Ok(())
    }

    // ---- block status ----

    /// This layer's state for `[off, off+len)`, merged into runs:
    /// (offset, length, state) where Data carries the host offset of the
    /// run's first byte.
    pub(crate) fn own_status(&mut self, off: u64, len: u64) -> Result<Vec<(u64, u64, Map)>> {
        Ok(self
            .own_runs(off, len)?
            .into_iter()
            .map(|(o, l, m, _)| (o, l, m))
            .collect())
    }

    /// Like `own_status`, plus the host offset of a Zero/Unalloc run whose
    /// cluster still owns a host cluster (qemu's ZERO_ALLOC and
    /// UNALLOCATED_ALLOC, which it maps with an offset).
    fn own_runs(&mut self, off: u64, len: u64) -> Result<Vec<Run>> {
        let mut out: Vec<Run> = Vec::new();
        let end = off + len;
        let mut pos = off;
        let scs = 1u64 << self.sc_bits;
        while pos < end {
            let gc = pos >> self.cluster_bits;
            let in_c = pos & (self.cs - 1);
            let slot = self.l2_for_read(gc)?;
            let Some(slot) = slot else {
                // Whole L2 table absent.
                let tend = ((gc / self.l2_entries + 1) * self.l2_entries) << self.cluster_bits;
                let n = tend.min(end) - pos;
                push_run(&mut out, pos, n, Map::Unalloc, None);
                pos += n;
                continue;
            };
            let (e, bm) = self.l2_get(slot, self.l2_index(gc));
            let host = e & L2E_OFFSET_MASK;
            let (m, n) = if self.extl2 && e & COMPRESSED == 0 {
                let sc = (in_c >> self.sc_bits) as u32;
                let m = self.map_of(e, bm, sc);
                let n = scs - (in_c & (scs - 1));
                (
                    match m {
                        Map::Data(h) => Map::Data(h + (in_c & (scs - 1))),
                        m => m,
                    },
                    n,
                )
            } else {
                let m = self.map_of(e, bm, 0);
                (
                    match m {
                        Map::Data(h) => Map::Data(h + in_c),
                        m => m,
                    },
                    self.cs - in_c,
                )
            };
            let ah = match m {
                Map::Zero | Map::Unalloc if e & COMPRESSED == 0 && host != 0 => Some(host + in_c),
                _ => None,
            };
            let n = n.min(end - pos);
            push_run(&mut out, pos, n, m, ah);
            pos += n;
        }
        Ok(out)
    }

    /// qemu's qcow2_detect_metadata_preallocation: far more clusters counted
    /// in use than the host file really allocates.
    fn metadata_preallocated(&mut self) -> Result<bool> {
        if let Some(v) = self.meta_prealloc {
            return Ok(v);
        }
        use std::os::unix::fs::MetadataExt;
        let md = self.file.metadata().map_err(|e| io_err(&self.path, e))?;
        let real_clusters = md.blocks() * 512 / self.cs;
        let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
        let end = md.len().div_ceil(self.cs);
        let mut count = 0u64;
        let mut i = 0;
        while i < end && count < threshold {
            if self.get_refcount(i)? != 0 {
                count += 1;
            }
            i += 1;
        }
        let v = count >= threshold;
        self.meta_prealloc = Some(v);
        Ok(v)
    }

    pub(crate) fn block_status(&mut self, off: u64, len: u64) -> Result<Vec<Extent>> {
        let own = self.own_runs(off, len)?;
        let mut out: Vec<Extent> = Vec::new();
        for (o, l, m, ah) in own {
            match m {
                Map::Data(h) if !self.metadata_preallocated()? => push_extent(
                    &mut out,
                    Extent {
                        offset: o,
                        length: l,
                        data: true,
                        zero: false,
                        present: true,
                        depth: 0,
                        host_offset: Some(h),
                    },
                ),
                Map::Data(h) => {
                    // Like qemu with metadata preallocation (BDRV_BLOCK_RECURSE):
                    // host-file holes inside data read as zero.
                    for (ho, hl, is_data) in crate::raw::host_runs(&self.file, h, l) {
                        push_extent(
                            &mut out,
                            Extent {
                                offset: o + (ho - h),
                                length: hl,
                                data: true,
                                zero: !is_data,
                                present: true,
                                depth: 0,
                                host_offset: Some(ho),
                            },
                        );
                    }
                }
                Map::Compressed(..) => push_extent(
                    &mut out,
                    Extent {
                        offset: o,
                        length: l,
                        data: true,
                        zero: false,
                        present: true,
                        depth: 0,
                        host_offset: None,
                    },
                ),
                Map::Zero => push_extent(
                    &mut out,
                    Extent {
                        offset: o,
                        length: l,
                        data: false,
                        zero: true,
                        present: true,
                        depth: 0,
                        host_offset: ah,
                    },
                ),
                Map::Unalloc => match &mut self.backing {
                    None => push_extent(
                        &mut out,
                        Extent {
                            offset: o,
                            length: l,
                            data: false,
                            zero: true,
                            present: false,
                            depth: 0,
                            host_offset: ah,
                        },
                    ),
                    Some(b) => {
                        let bsize = b.size();
                        let depth_absent = 1 + chain_depth(b);
                        let inside = if o < bsize { (bsize - o).min(l) } else { 0 };
                        if inside > 0 {
                            for mut x in b.block_status(o, inside)? {
                                x.depth += 1;
                                push_extent(&mut out, x);
                            }
                        }
                        if inside < l {
                            push_extent(
                                &mut out,
                                Extent {
                                    offset: o + inside,
                                    length: l - inside,
                                    data: false,
                                    zero: true,
                                    present: false,
                                    depth: depth_absent,
                                    host_offset: ah.map(|h| h + inside),
                                },
                            );
                        }
                    }
                },
            }
        }
        Ok(out)
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush_metadata()?;
        self.sync()
    }

    /// Flushes and, for lazy refcounts, clears the dirty bit (clean close).
    pub(crate) fn close(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush()?;
        if self.grown_to > 0 {
            // Give back the sparse tail grown ahead of allocation.
            let end = self.end_cluster * self.cs;
            let len = self
                .file
                .metadata()
                .map_err(|e| io_err(&self.path, e))?
                .len();
            if len > end && self.grown_to == len {
                self.file.set_len(end).map_err(|e| io_err(&self.path, e))?;
            }
            self.grown_to = 0;
        }
        if self.marked_dirty {
            self.set_incompat(self.h.incompatible & !header::INCOMPAT_DIRTY)?;
            self.marked_dirty = false;
        }
        Ok(())
    }
}

/// Compresses one guest cluster (`buf`, a short last cluster is padded
/// with zeroes) for [`Qcow2::write_packed`]; `None` when it does not
/// shrink. Pure: runs on any thread.
pub fn compress_cluster(ty: CompressionType, cs: u64, buf: &[u8]) -> Result<Option<Vec<u8>>> {
    if buf.len() as u64 == cs {
        return compress::compress(ty, buf, cs as usize);
    }
    let mut full = buf.to_vec();
    full.resize(cs as usize, 0);
    compress::compress(ty, &full, cs as usize)
}

fn chain_depth(img: &Image) -> u32 {
    match img.backing() {
        Some(b) => 1 + chain_depth(b),
        None => 0,
    }
}

/// (offset, length, state, host offset of an allocated Zero/Unalloc run)
type Run = (u64, u64, Map, Option<u64>);

fn push_run(out: &mut Vec<Run>, off: u64, len: u64, m: Map, ah: Option<u64>) {
    if let Some(last) = out.last_mut() {
        let host_ok = match (last.3, ah) {
            (Some(a), Some(b)) => a + last.1 == b,
            (None, None) => true,
            _ => false,
        };
        let joinable = host_ok
            && match (last.2, m) {
                (Map::Data(a), Map::Data(b)) => a + last.1 == b,
                (Map::Compressed(..), _) | (_, Map::Compressed(..)) => false,
                (a, b) => a == b,
            };
        if joinable && last.0 + last.1 == off {
            last.1 += len;
            return;
        }
    }
    out.push((off, len, m, ah));
}

pub(crate) fn push_extent(out: &mut Vec<Extent>, x: Extent) {
    if x.length == 0 {
        return;
    }
    if let Some(l) = out.last_mut() {
        let host_ok = match (l.host_offset, x.host_offset) {
            (Some(a), Some(b)) => a + l.length == b,
            (None, None) => true,
            _ => false,
        };
        if l.offset + l.length == x.offset
            && l.data == x.data
            && l.zero == x.zero
            && l.present == x.present
            && l.depth == x.depth
            && host_ok
        {
            l.length += x.length;
            return;
        }
    }
    out.push(x);
}

fn prefix_err(path: &Path, e: Error) -> Error {
    match e {
        Error::Corrupt(m) => Error::Corrupt(format!("{}: {m}", path.display())),
        Error::Unsupported(m) => Error::Unsupported(format!("{}: {m}", path.display())),
        e => e,
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!("{}: closing qcow2 image: {e}", self.path.display());
        }
    }
}

impl BlockBackend for Qcow2 {
    fn size(&self) -> u64 {
        self.h.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::image::check_range(self.h.size, offset, buf.len() as u64)?;
        self.read(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        crate::image::check_range(self.h.size, offset, buf.len() as u64)?;
        self.write(buf, offset)
    }
    fn flush(&mut self) -> Result<()> {
        Qcow2::flush(self)
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        crate::image::check_range(self.h.size, offset, len)?;
        self.discard_range(offset, len, false)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        crate::image::check_range(self.h.size, offset, len)?;
        self.discard_range(offset, len, true)
    }
    fn block_status(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        crate::image::check_range(self.h.size, offset, len)?;
        Qcow2::block_status(self, offset, len)
    }
}
