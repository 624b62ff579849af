//! Internal snapshots: the snapshot table, and create/apply/delete. Each
//! operation raises refcounts before anything new points at the clusters
//! and lowers them only after the old pointers are gone from disk, then
//! recomputes the active tree's COPIED flags.

use super::header::{MAX_L1_BYTES, OFF_L1, OFF_SIZE, OFF_SNAPSHOTS};
use super::{be64_at, pread, pwrite, Qcow2, COMPRESSED, COPIED, L1E_OFFSET_MASK, L2E_OFFSET_MASK};
use crate::{Error, Result, SnapshotInfo};

/// Largest extra-data area we accept (qemu's limit).
const MAX_EXTRA: u32 = 1024;

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    pub disk_size: Option<u64>,
    pub icount: Option<u64>,
    /// Extra data past the fields we know, preserved.
    pub extra_rest: Vec<u8>,
}

impl Snapshot {
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            vm_state_size: self.vm_state_size,
            date_sec: self.date_sec as u64,
            date_nsec: self.date_nsec,
            vm_clock_nsec: self.vm_clock_nsec,
            icount: self.icount,
            disk_size: self.disk_size,
        }
    }

    fn serialize(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let mut extra = Vec::new();
        extra.extend_from_slice(&self.vm_state_size.to_be_bytes());
        extra.extend_from_slice(&self.disk_size.unwrap_or(0).to_be_bytes());
        extra.extend_from_slice(&self.icount.unwrap_or(u64::MAX).to_be_bytes());
        extra.extend_from_slice(&self.extra_rest);
        out.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&self.l1_size.to_be_bytes());
        out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.date_sec.to_be_bytes());
        out.extend_from_slice(&self.date_nsec.to_be_bytes());
        out.extend_from_slice(&self.vm_clock_nsec.to_be_bytes());
        out.extend_from_slice(&(self.vm_state_size.min(u32::MAX as u64) as u32).to_be_bytes());
        out.extend_from_slice(&(extra.len() as u32).to_be_bytes());
        out.extend_from_slice(&extra);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(self.name.as_bytes());
        let len = out.len() - start;
        out.resize(start + len.next_multiple_of(8), 0);
    }
}

/// Reads the snapshot table named by the header, validating every entry.
/// Also returns the table's length on disk (entries may carry less extra
/// data than we would write back).
pub(crate) fn read_table(q: &Qcow2) -> Result<(Vec<Snapshot>, u64)> {
    let n = q.h.nb_snapshots;
    let mut out = Vec::new();
    if n == 0 {
        return Ok((out, 0));
    }
    let file_len = q
        .file
        .metadata()
        .map_err(|e| super::io_err(&q.path, e))?
        .len();
    let mut off = q.h.snapshots_offset;
    let bad = |m: String| Error::Corrupt(format!("snapshot table: {m}"));
    for i in 0..n {
        if off + 40 > file_len {
            return Err(bad(format!("entry {i} lies past the end of the file")));
        }
        let mut hd = [0u8; 40];
        pread(&q.file, &q.path, &mut hd, off)?;
        let l1_table_offset = be64_at(&hd, 0);
        let l1_size = u32::from_be_bytes(hd[8..12].try_into().unwrap());
        let id_len = u16::from_be_bytes(hd[12..14].try_into().unwrap()) as u64;
        let name_len = u16::from_be_bytes(hd[14..16].try_into().unwrap()) as u64;
        let date_sec = u32::from_be_bytes(hd[16..20].try_into().unwrap());
        let date_nsec = u32::from_be_bytes(hd[20..24].try_into().unwrap());
        let vm_clock_nsec = be64_at(&hd, 24);
        let vm_state32 = u32::from_be_bytes(hd[32..36].try_into().unwrap());
        let extra_len = u32::from_be_bytes(hd[36..40].try_into().unwrap());
        if extra_len > MAX_EXTRA {
            return Err(bad(format!(
                "entry {i} has too much extra data ({extra_len})"
            )));
        }
        let total = 40 + extra_len as u64 + id_len + name_len;
        if off + total > file_len {
            return Err(bad(format!("entry {i} lies past the end of the file")));
        }
        let mut rest = vec![0u8; total as usize - 40];
        pread(&q.file, &q.path, &mut rest, off + 40)?;
        let extra = &rest[..extra_len as usize];
        let mut vm_state_size = vm_state32 as u64;
        let mut disk_size = None;
        let mut icount = None;
        let mut extra_rest = Vec::new();
        if extra.len() >= 8 {
            vm_state_size = be64_at(extra, 0);
        }
        if extra.len() >= 16 {
            disk_size = Some(be64_at(extra, 8));
        }
        if extra.len() >= 24 {
            let v = be64_at(extra, 16);
            icount = (v != u64::MAX).then_some(v);
        }
        if extra.len() > 24 {
            extra_rest = extra[24..].to_vec();
        }
        let e = extra_len as usize;
        let id = String::from_utf8_lossy(&rest[e..e + id_len as usize]).into_owned();
        let name = String::from_utf8_lossy(&rest[e + id_len as usize..]).into_owned();
        if !l1_table_offset.is_multiple_of(q.cs) {
            return Err(bad(format!(
                "snapshot {id}: L1 table is not cluster aligned"
            )));
        }
        if l1_size as u64 * 8 > MAX_L1_BYTES {
            return Err(bad(format!("snapshot {id}: L1 table too large")));
        }
        if l1_table_offset + l1_size as u64 * 8 > file_len {
            return Err(bad(format!(
                "snapshot {id}: L1 table lies past the end of the file"
            )));
        }
        out.push(Snapshot {
            l1_table_offset,
            l1_size,
            id,
            name,
            date_sec,
            date_nsec,
            vm_clock_nsec,
            vm_state_size,
            disk_size,
            icount,
            extra_rest,
        });
        off += total.next_multiple_of(8);
    }
    Ok((out, off - q.h.snapshots_offset))
}

impl Qcow2 {
    /// Bytes the snapshot table occupies on disk.
    pub(crate) fn snapshot_table_len(&self) -> u64 {
        self.snapshot_table_bytes
    }

    pub(crate) fn read_l1(&self, off: u64, n: u32) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; n as usize * 8];
        pread(&self.file, &self.path, &mut raw, off)?;
        Ok((0..n as usize).map(|i| be64_at(&raw, i * 8)).collect())
    }

    /// Writes `self.snapshots` to a new table, switches the header to it,
    /// then frees the old one.
    fn write_snapshot_table(&mut self) -> Result<()> {
        let old_off = self.h.snapshots_offset;
        let old_len = if self.h.nb_snapshots > 0 {
            self.snapshot_table_bytes
        } else {
            0
        };
        let mut buf = Vec::new();
        for s in &self.snapshots {
            s.serialize(&mut buf);
        }
        let new_len = buf.len() as u64;
        let mut new_off = 0;
        if !buf.is_empty() {
            let n = (buf.len() as u64).div_ceil(self.cs);
            new_off = self.alloc_clusters(n)?;
            buf.resize((n * self.cs) as usize, 0);
            self.guard_write(new_off, n * self.cs, None)?;
            pwrite(&self.file, &self.path, &buf, new_off)?;
            self.note_written(new_off, n * self.cs);
        }
        self.flush_metadata()?;
        self.sync()?;
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&(self.snapshots.len() as u32).to_be_bytes());
        hdr[4..].copy_from_slice(&new_off.to_be_bytes());
        pwrite(&self.file, &self.path, &hdr, OFF_SNAPSHOTS)?;
        self.sync()?;
        self.h.nb_snapshots = self.snapshots.len() as u32;
        self.h.snapshots_offset = new_off;
        self.snapshot_table_bytes = new_len;
        self.rebuild_overlaps();
        if old_len > 0 {
            self.free_clusters(old_off, old_len.div_ceil(self.cs))?;
        }
        Ok(())
    }

    /// Adds `addend` to the refcount of every cluster reachable from `l1`
    /// (L2 tables and data). With `active`, also recomputes COPIED flags in
    /// the L2 tables and returns the L1 entries with fixed flags.
    pub(crate) fn update_tree_refcounts(
        &mut self,
        l1: &[u64],
        addend: i64,
        active: bool,
    ) -> Result<Vec<u64>> {
        let mut new_l1 = l1.to_vec();
        for (i, &l1e) in l1.iter().enumerate() {
            let l2off = l1e & L1E_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            let slot = self.l2_slot(l2off)?;
            for idx in 0..self.l2_entries as usize {
                let (e, bm) = self.l2_get(slot, idx);
                if e & COMPRESSED != 0 {
                    if addend != 0 {
                        let r = self.compressed_clusters(e);
                        for c in r {
                            self.update_refcount(c, addend)?;
                        }
                    }
                    continue;
                }
                let host = e & L2E_OFFSET_MASK;
                if host == 0 {
                    continue;
                }
                let c = host >> self.cluster_bits;
                let rc = if addend != 0 {
                    self.update_refcount(c, addend)?
                } else {
                    self.get_refcount(c)?
                };
                if active {
                    let ne = if rc == 1 { e | COPIED } else { e & !COPIED };
                    if ne != e {
                        // the slot may have been evicted by refcount work? no:
                        // refcount blocks live in their own cache.
                        self.l2_set(slot, idx, ne, bm);
                    }
                }
            }
            let c = l2off >> self.cluster_bits;
            let rc = if addend != 0 {
                self.update_refcount(c, addend)?
            } else {
                self.get_refcount(c)?
            };
            if rc == 0 {
                self.l2_cache.invalidate(l2off);
            }
            if active {
                new_l1[i] = if rc == 1 { l1e | COPIED } else { l1e & !COPIED };
            }
        }
        Ok(new_l1)
    }

    /// Clears COPIED in every L2 entry of the tables `l1` points to, and
    /// writes those tables (refcounts are untouched).
    fn clear_copied(&mut self, l1: &[u64]) -> Result<()> {
        for &l1e in l1 {
            let l2off = l1e & L1E_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            let slot = self.l2_slot(l2off)?;
            for idx in 0..self.l2_entries as usize {
                let (e, bm) = self.l2_get(slot, idx);
                if e & COPIED != 0 {
                    self.l2_set(slot, idx, e & !COPIED, bm);
                }
            }
            self.write_l2_slot(slot)?;
        }
        self.sync()
    }

    /// Writes the whole active L1 table from memory.
    pub(crate) fn write_l1(&mut self) -> Result<()> {
        let mut raw = vec![0u8; self.l1.len() * 8];
        for (i, e) in self.l1.iter().enumerate() {
            raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        pwrite(&self.file, &self.path, &raw, self.h.l1_table_offset)?;
        // The active L2 tables may have changed wholesale.
        self.rebuild_overlaps();
        Ok(())
    }

    /// Replaces the active L1 table by a new one of `n` entries (contents
    /// from `self.l1`, truncated or zero-extended).
    pub(crate) fn resize_l1(&mut self, n: u32) -> Result<()> {
        if n as u64 * 8 > MAX_L1_BYTES {
            return Err(Error::Unsupported("L1 table would exceed 32 MiB".into()));
        }
        let old_off = self.h.l1_table_offset;
        let old_clusters = (self.l1.len() as u64 * 8).div_ceil(self.cs);
        let clusters = (n as u64 * 8).div_ceil(self.cs).max(1);
        let new_off = self.alloc_clusters(clusters)?;
        let mut l1 = self.l1.clone();
        l1.resize(n as usize, 0);
        let mut raw = vec![0u8; (clusters * self.cs) as usize];
        for (i, e) in l1.iter().enumerate() {
            raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.flush_metadata()?;
        self.guard_write(new_off, clusters * self.cs, None)?;
        pwrite(&self.file, &self.path, &raw, new_off)?;
        self.note_written(new_off, clusters * self.cs);
        self.sync()?;
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&n.to_be_bytes());
        hdr[4..].copy_from_slice(&new_off.to_be_bytes());
        pwrite(&self.file, &self.path, &hdr, OFF_L1)?;
        self.sync()?;
        self.h.l1_size = n;
        self.h.l1_table_offset = new_off;
        self.l1 = l1;
        self.rebuild_overlaps();
        if old_clusters > 0 && old_off != 0 {
            self.free_clusters(old_off, old_clusters)?;
        }
        Ok(())
    }

    pub(crate) fn set_size(&mut self, size: u64) -> Result<()> {
        pwrite(&self.file, &self.path, &size.to_be_bytes(), OFF_SIZE)?;
        self.sync()?;
        self.h.size = size;
        Ok(())
    }

    pub(crate) fn find_snapshot(&self, name_or_id: &str) -> Option<usize> {
        self.snapshots
            .iter()
            .position(|s| s.id == name_or_id)
            .or_else(|| self.snapshots.iter().position(|s| s.name == name_or_id))
    }

    pub(crate) fn snapshot_create(&mut self, name: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        // A name already in use is not an error: qemu-img 7.2 adds a second
        // snapshot with the same name (a new id); -a/-d then pick the first.
        if name.len() > u16::MAX as usize {
            return Err(Error::InvalidArgument("snapshot name too long".into()));
        }
        self.zcache = None;
        self.flush_metadata()?;
        // Unique id: one more than the largest numeric id.
        let id = self
            .snapshots
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        // Clear the active tree's COPIED flags first, then raise refcounts:
        // a crash in between leaves refcount 1 with the flag clear (only an
        // extra copy on write), never a shared cluster marked COPIED. qemu
        // has the same window, as two clusters cannot change atomically.
        let old_l1 = self.l1.clone();
        self.clear_copied(&old_l1)?;
        self.l1 = old_l1.iter().map(|e| e & !COPIED).collect();
        self.write_l1()?;
        self.sync()?;
        let cur = self.l1.clone();
        self.update_tree_refcounts(&cur, 1, false)?;
        self.flush_metadata()?;
        self.sync()?;
        // Copy the L1 table.
        let n = self.l1.len() as u64;
        let l1_off = if n > 0 {
            let clusters = (n * 8).div_ceil(self.cs);
            let off = self.alloc_clusters(clusters)?;
            let mut raw = vec![0u8; (clusters * self.cs) as usize];
            for (i, e) in self.l1.iter().enumerate() {
                raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            self.guard_write(off, clusters * self.cs, None)?;
            pwrite(&self.file, &self.path, &raw, off)?;
            self.note_written(off, clusters * self.cs);
            off
        } else {
            0
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.snapshots.push(Snapshot {
            l1_table_offset: l1_off,
            l1_size: n as u32,
            id: id.to_string(),
            name: name.to_string(),
            date_sec: now.as_secs() as u32,
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: Some(self.h.size),
            icount: Some(0),
            extra_rest: Vec::new(),
        });
        if let Err(e) = self.write_snapshot_table() {
            self.snapshots.pop();
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn snapshot_apply(&mut self, name_or_id: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let i = self.find_snapshot(name_or_id).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "Could not apply snapshot '{name_or_id}': snapshot not found"
            ))
        })?;
        self.zcache = None;
        let sn = self.snapshots[i].clone();
        self.flush_metadata()?;
        let sn_l1 = self.read_l1(sn.l1_table_offset, sn.l1_size)?;
        if sn.l1_size as usize > self.l1.len() {
            self.resize_l1(sn.l1_size)?;
        }
        // Raise the snapshot tree's refcounts first, and clear the (stale)
        // COPIED flags of its tables before they become active.
        self.update_tree_refcounts(&sn_l1, 1, false)?;
        self.flush_metadata()?;
        self.sync()?;
        self.clear_copied(&sn_l1)?;
        let old_l1 = self.l1.clone();
        let mut l1 = sn_l1.clone();
        l1.resize(self.l1.len(), 0);
        // Flags are recomputed below; until then, COPIED must be clear.
        for e in l1.iter_mut() {
            *e &= !COPIED;
        }
        self.l1 = l1;
        self.write_l1()?;
        self.sync()?;
        // Drop the old tree's references, then recompute flags.
        self.update_tree_refcounts(&old_l1, -1, false)?;
        let cur = self.l1.clone();
        let fixed = self.update_tree_refcounts(&cur, 0, true)?;
        self.flush_metadata()?;
        self.sync()?;
        self.l1 = fixed;
        self.write_l1()?;
        if let Some(sz) = sn.disk_size {
            if sz != self.h.size {
                let needed = sz.div_ceil(self.cs).div_ceil(self.l2_entries);
                if needed > self.l1.len() as u64 {
                    self.resize_l1(needed as u32)?;
                }
                self.set_size(sz)?;
            }
        }
        self.sync()
    }

    pub(crate) fn snapshot_delete(&mut self, name_or_id: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let i = self.find_snapshot(name_or_id).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "Could not delete snapshot '{name_or_id}': snapshot not found"
            ))
        })?;
        self.zcache = None;
        self.flush_metadata()?;
        let sn = self.snapshots.remove(i);
        if let Err(e) = self.write_snapshot_table() {
            self.snapshots.insert(i, sn);
            return Err(e);
        }
        let sn_l1 = self.read_l1(sn.l1_table_offset, sn.l1_size)?;
        self.update_tree_refcounts(&sn_l1, -1, false)?;
        if sn.l1_size > 0 {
            self.free_clusters(
                sn.l1_table_offset,
                (sn.l1_size as u64 * 8).div_ceil(self.cs),
            )?;
        }
        let cur = self.l1.clone();
        let fixed = self.update_tree_refcounts(&cur, 0, true)?;
        self.flush_metadata()?;
        self.sync()?;
        if fixed != self.l1 {
            self.l1 = fixed;
            self.write_l1()?;
        }
        self.sync()
    }
}
