//! Creating qcow2 images (qemu-img create's layout: header, refcount table,
//! refcount blocks, L1 table), preallocation, and shrinking/emptying.

use std::path::Path;

use super::header::{
    Header, COMPAT_LAZY_REFCOUNTS, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2, MAX_L1_BYTES,
};
use super::refcount::rc_set;
use super::{io_err, pwrite, Qcow2, COMPRESSED, COPIED, L1E_OFFSET_MASK, L2E_OFFSET_MASK};
use crate::{Compat, CompressionType, Error, Preallocation, Result};

pub(crate) struct Params {
    pub size: u64,
    pub cluster_size: u64,
    pub compat: Compat,
    pub refcount_bits: u32,
    pub compression: CompressionType,
    pub extended_l2: bool,
    pub lazy_refcounts: bool,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

pub(crate) fn create(path: &Path, p: &Params) -> Result<()> {
    let cs = p.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(Error::InvalidArgument(format!(
            "Cluster size must be a power of two between 512 and 2048k (got {cs})"
        )));
    }
    let cluster_bits = cs.trailing_zeros();
    if ![1, 2, 4, 8, 16, 32, 64].contains(&p.refcount_bits) {
        return Err(Error::InvalidArgument(
            "Refcount width must be a power of two and may not exceed 64 bits".into(),
        ));
    }
    let v2 = p.compat == Compat::V2;
    if v2 && p.refcount_bits != 16 {
        return Err(Error::InvalidArgument(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)".into(),
        ));
    }
    if v2 && (p.extended_l2 || p.lazy_refcounts || p.compression != CompressionType::Zlib) {
        return Err(Error::InvalidArgument(
            "Extended L2 entries, lazy refcounts and zstd compression require compat=1.1 or greater"
                .into(),
        ));
    }
    if p.extended_l2 && cs < 16384 {
        return Err(Error::InvalidArgument(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
                .into(),
        ));
    }
    let l2_entries = cs / if p.extended_l2 { 16 } else { 8 };
    let l1_size = p.size.div_ceil(cs).div_ceil(l2_entries);
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(Error::InvalidArgument(format!(
            "Image size {} is too large for cluster size {cs}",
            p.size
        )));
    }
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let rb_entries = cs * 8 / p.refcount_bits as u64;
    let (mut t, mut b) = (1u64, 1u64);
    loop {
        let total = 1 + t + b + l1_clusters;
        let nb = total.div_ceil(rb_entries);
        let nt = (nb * 8).div_ceil(cs).max(1);
        if nb == b && nt == t {
            break;
        }
        b = nb;
        t = nt;
    }
    let total = 1 + t + b + l1_clusters;
    let rt_off = cs;
    let rb_off = rt_off + t * cs;
    let l1_off = rb_off + b * cs;
    let mut incompat = 0;
    if p.extended_l2 {
        incompat |= INCOMPAT_EXTL2;
    }
    if p.compression == CompressionType::Zstd {
        incompat |= INCOMPAT_COMPRESSION;
    }
    let h = Header {
        version: if v2 { 2 } else { 3 },
        backing_file: p.backing_file.clone(),
        cluster_bits,
        size: p.size,
        l1_size: l1_size as u32,
        l1_table_offset: if l1_size > 0 { l1_off } else { 0 },
        refcount_table_offset: rt_off,
        refcount_table_clusters: t as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible: incompat,
        compatible: if p.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear: 0,
        refcount_order: p.refcount_bits.trailing_zeros(),
        header_length: if v2 { 72 } else { 112 },
        compression_type: if p.compression == CompressionType::Zstd {
            1
        } else {
            0
        },
        backing_format: p.backing_format.clone(),
        unknown_ext: Vec::new(),
        feature_names: Vec::new(),
        bitmaps: None,
    };
    let head = h.serialize_best()?;
    let mut img = vec![0u8; (total * cs) as usize];
    img[..head.len()].copy_from_slice(&head);
    for i in 0..b {
        let off = (rt_off + i * 8) as usize;
        img[off..off + 8].copy_from_slice(&(rb_off + i * cs).to_be_bytes());
    }
    for c in 0..total {
        let blk = c / rb_entries;
        let start = (rb_off + blk * cs) as usize;
        rc_set(
            &mut img[start..start + cs as usize],
            (c % rb_entries) as usize,
            p.refcount_bits,
            1,
        );
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    pwrite(&file, path, &img, 0)?;
    file.sync_all().map_err(|e| io_err(path, e))?;
    Ok(())
}

impl Qcow2 {
    /// Allocates every unallocated guest cluster in `[from, to)` (bytes):
    /// qemu's preallocation=metadata|falloc|full.
    pub(crate) fn preallocate(&mut self, from: u64, to: u64, mode: Preallocation) -> Result<()> {
        if mode == Preallocation::Off || from >= to {
            return Ok(());
        }
        let first = from >> self.cluster_bits;
        let last = to.div_ceil(self.cs);
        let mut gc = first;
        while gc < last {
            let table_end = ((gc / self.l2_entries) + 1) * self.l2_entries;
            let end = table_end.min(last);
            let slot = self.l2_for_write(gc)?;
            // Count the run of unallocated clusters and allocate it at once.
            let mut g = gc;
            while g < end {
                let (e, _) = self.l2_get(slot, self.l2_index(g));
                if e & (L2E_OFFSET_MASK | COMPRESSED) != 0 {
                    g += 1;
                    continue;
                }
                let mut n = 1;
                while g + n < end {
                    let (e2, _) = self.l2_get(slot, self.l2_index(g + n));
                    if e2 & (L2E_OFFSET_MASK | COMPRESSED) != 0 {
                        break;
                    }
                    n += 1;
                }
                let host = self.alloc_clusters(n)?;
                crate::raw::preallocate(&self.file, &self.path, host, n * self.cs, mode)?;
                for k in 0..n {
                    let idx = self.l2_index(g + k);
                    let bm = if self.extl2 { 0xffff_ffff } else { 0 };
                    self.l2_set(slot, idx, (host + k * self.cs) | COPIED, bm);
                }
                g += n;
            }
            gc = end;
        }
        self.flush_metadata()?;
        // The file covers every allocated cluster (qemu truncates it so).
        let need = self.end_cluster * self.cs;
        let len = self
            .file
            .metadata()
            .map_err(|e| io_err(&self.path, e))?
            .len();
        if len < need {
            self.file.set_len(need).map_err(|e| io_err(&self.path, e))?;
        }
        self.sync()
    }

    /// Unallocates every guest cluster from `from_cluster` on (shrink,
    /// commit's emptying). Tables entirely past it are dropped from L1.
    pub(crate) fn unmap_from(&mut self, from_cluster: u64) -> Result<()> {
        self.zcache = None;
        for l1i in 0..self.l1.len() {
            let l1e = self.l1[l1i];
            let off = l1e & L1E_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let base = l1i as u64 * self.l2_entries;
            if base + self.l2_entries <= from_cluster {
                continue;
            }
            let start = from_cluster.max(base);
            let slot = self.l2_for_write(base)?;
            let mut frees = Vec::new();
            for gc in start..base + self.l2_entries {
                let idx = self.l2_index(gc);
                let (e, bm) = self.l2_get(slot, idx);
                if e != 0 || bm != 0 {
                    self.l2_set(slot, idx, 0, 0);
                    frees.push(e);
                }
            }
            self.write_l2_slot(slot)?;
            for e in frees {
                if e & COMPRESSED != 0 {
                    let r = self.compressed_clusters(e);
                    self.free_clusters(r.start << self.cluster_bits, r.end - r.start)?;
                } else if e & L2E_OFFSET_MASK != 0 {
                    self.free_clusters(e & L2E_OFFSET_MASK, 1)?;
                }
            }
            if start == base {
                // Whole table unused: drop it from L1, then free it.
                let t = self.l1[l1i] & L1E_OFFSET_MASK;
                self.flush_metadata()?;
                self.set_l1(l1i, 0)?;
                self.sync()?;
                self.free_clusters(t, 1)?;
            }
        }
        self.flush_metadata()?;
        self.sync()
    }
}
