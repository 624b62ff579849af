//! Refcounts: reading/updating entries of any width (1..64 bits), cluster
//! allocation, freeing, and growing the refcount table. New refcount blocks
//! are written before the table entry that points at them; a grown table is
//! written (with its own refcounts) before the header switches to it.

use super::overlap::Meta;
use super::{pread, pwrite, Qcow2, L1E_OFFSET_MASK};
use crate::{Error, Result};

/// Host offsets must stay below 2^56 (L2 entry layout).
const MAX_HOST: u64 = 1 << 56;

#[inline]
pub(crate) fn rc_get(data: &[u8], idx: usize, bits: u32) -> u64 {
    match bits {
        64 => u64::from_be_bytes(data[idx * 8..idx * 8 + 8].try_into().unwrap()),
        32 => u32::from_be_bytes(data[idx * 4..idx * 4 + 4].try_into().unwrap()) as u64,
        16 => u16::from_be_bytes(data[idx * 2..idx * 2 + 2].try_into().unwrap()) as u64,
        8 => data[idx] as u64,
        b => {
            let per = 8 / b as usize;
            let shift = (idx % per) as u32 * b;
            ((data[idx / per] >> shift) & ((1u8 << b) - 1)) as u64
        }
    }
}

#[inline]
pub(crate) fn rc_set(data: &mut [u8], idx: usize, bits: u32, v: u64) {
    match bits {
        64 => data[idx * 8..idx * 8 + 8].copy_from_slice(&v.to_be_bytes()),
        32 => data[idx * 4..idx * 4 + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        16 => data[idx * 2..idx * 2 + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        8 => data[idx] = v as u8,
        b => {
            let per = 8 / b as usize;
            let shift = (idx % per) as u32 * b;
            let mask = ((1u8 << b) - 1) << shift;
            let byte = &mut data[idx / per];
            *byte = (*byte & !mask) | (((v as u8) << shift) & mask);
        }
    }
}

impl Qcow2 {
    pub(crate) fn max_refcount(&self) -> u64 {
        if self.refcount_bits == 64 {
            u64::MAX
        } else {
            (1u64 << self.refcount_bits) - 1
        }
    }

    /// Cache slot of the refcount block at `off`.
    pub(crate) fn rb_slot(&mut self, off: u64) -> Result<usize> {
        if let Some(i) = self.rc_cache.lookup(off) {
            return Ok(i);
        }
        if !off.is_multiple_of(self.cs) || off == 0 {
            return Err(Error::Corrupt(format!(
                "refcount block offset {off:#x} is invalid"
            )));
        }
        self.check_table_load("refcount block", off, Meta::RefcountBlock)?;
        let (i, dirty) = self.rc_cache.victim();
        if dirty {
            let victim = self.rc_cache.get(i).offset;
            self.guard_write(victim, self.cs, Some(Meta::RefcountBlock))?;
            let s = self.rc_cache.get(i);
            pwrite(&self.file, &self.path, &s.data, s.offset)?;
            self.rc_cache.mark_clean(i);
            // Not synced yet: the next L2 write syncs first.
            self.rc_unsynced = true;
        }
        let slot = self.rc_cache.get_mut(i);
        if let Err(e) = pread(&self.file, &self.path, &mut slot.data, off) {
            slot.offset = u64::MAX;
            return Err(e);
        }
        self.rc_cache.install(i, off);
        Ok(i)
    }

    pub(crate) fn get_refcount(&mut self, cluster: u64) -> Result<u64> {
        let b = cluster / self.rb_entries;
        let Some(&rb) = self.reftable.get(b as usize) else {
            return Ok(0);
        };
        let rb = rb & L1E_OFFSET_MASK;
        if rb == 0 {
            return Ok(0);
        }
        let s = self.rb_slot(rb)?;
        Ok(rc_get(
            &self.rc_cache.get(s).data,
            (cluster % self.rb_entries) as usize,
            self.refcount_bits,
        ))
    }

    /// Sets a refcount in the cache, creating its refcount block if needed.
    pub(crate) fn set_refcount(&mut self, cluster: u64, v: u64) -> Result<()> {
        let b = cluster / self.rb_entries;
        self.ensure_refblock(b, cluster..cluster + 1)?;
        let rb = self.reftable[b as usize] & L1E_OFFSET_MASK;
        let s = self.rb_slot(rb)?;
        let bits = self.refcount_bits;
        rc_set(
            &mut self.rc_cache.get_mut(s).data,
            (cluster % self.rb_entries) as usize,
            bits,
            v,
        );
        self.rc_cache.mark_dirty(s);
        Ok(())
    }

    pub(crate) fn update_refcount(&mut self, cluster: u64, delta: i64) -> Result<u64> {
        let old = self.get_refcount(cluster)?;
        let new = if delta >= 0 {
            old.checked_add(delta as u64)
                .filter(|&v| v <= self.max_refcount())
                .ok_or_else(|| {
                    Error::Unsupported(format!(
                        "refcount of cluster {cluster} would exceed {} ({}-bit refcounts)",
                        self.max_refcount(),
                        self.refcount_bits
                    ))
                })?
        } else {
            old.checked_sub(delta.unsigned_abs()).ok_or_else(|| {
                Error::Corrupt(format!(
                    "refcount of cluster {cluster} would drop below zero"
                ))
            })?
        };
        self.set_refcount(cluster, new)?;
        if new == 0 {
            if self.compress_cursor != 0 && self.compress_cursor >> self.cluster_bits == cluster {
                self.compress_cursor = 0;
            }
            if cluster < self.free_hint {
                self.free_hint = cluster;
            }
            // A freed cluster may hold data (written in place): not fresh.
            let o = cluster << self.cluster_bits;
            if o + self.cs > self.fresh_from {
                self.fresh_from = o + self.cs;
            }
        }
        Ok(new)
    }

    /// True when `c` holds live metadata: never handed out, even when its
    /// refcount (wrongly) says free.
    fn is_fixed_metadata(&self, c: u64) -> bool {
        c == 0 || self.overlaps.covers(c)
    }

    /// First cluster index >= `from` starting `n` free clusters.
    fn find_free(&mut self, from: u64, n: u64) -> Result<u64> {
        let limit = MAX_HOST >> self.cluster_bits;
        let mut start = from.max(1);
        let mut c = start;
        while c < start + n {
            if c >= limit {
                return Err(Error::Unsupported(
                    "image is full (host offsets exhausted)".into(),
                ));
            }
            let b = c / self.rb_entries;
            let rb = self
                .reftable
                .get(b as usize)
                .map(|e| e & L1E_OFFSET_MASK)
                .unwrap_or(0);
            let in_repair = self
                .repair_refs
                .as_ref()
                .is_some_and(|r| r.get(c as usize).is_some_and(|&x| x > 0));
            if rb == 0 {
                // Nothing counted in this whole block: free unless in use.
                if in_repair || self.is_fixed_metadata(c) {
                    c += 1;
                    start = c;
                } else {
                    c += 1;
                }
                continue;
            }
            let in_repair = self
                .repair_refs
                .as_ref()
                .is_some_and(|r| r.get(c as usize).is_some_and(|&x| x > 0));
            if in_repair || self.get_refcount(c)? != 0 || self.is_fixed_metadata(c) {
                c += 1;
                start = c;
            } else {
                c += 1;
            }
        }
        Ok(start)
    }

    /// Allocates `n` contiguous clusters (refcount 1); returns the byte offset.
    pub(crate) fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        loop {
            let start = self.find_free(self.free_hint, n)?;
            let first_b = start / self.rb_entries;
            let last_b = (start + n - 1) / self.rb_entries;
            for b in first_b..=last_b {
                self.ensure_refblock(b, start..start + n)?;
            }
            // Creating refcount blocks may have used clusters of the range.
            let mut ok = true;
            for c in start..start + n {
                if self.get_refcount(c)? != 0 {
                    ok = false;
                    break;
                }
            }
            if !ok {
                continue;
            }
            for c in start..start + n {
                self.set_refcount(c, 1)?;
            }
            if n == 1 || start == self.free_hint {
                self.free_hint = start + n;
            }
            if start + n > self.end_cluster {
                self.end_cluster = start + n;
            }
            // Everything allocated lies below `fresh_from` (callers test
            // freshness against the value from before the allocation).
            let end = (start + n) << self.cluster_bits;
            if end > self.fresh_from {
                self.fresh_from = end;
            }
            return Ok(start << self.cluster_bits);
        }
    }

    /// Drops one reference from each of `n` clusters at byte offset `off`.
    pub(crate) fn free_clusters(&mut self, off: u64, n: u64) -> Result<()> {
        let first = off >> self.cluster_bits;
        for c in first..first + n {
            let left = self.update_refcount(c, -1)?;
            if left == 0 {
                let o = c << self.cluster_bits;
                self.l2_cache.invalidate(o);
                self.rc_cache.invalidate(o);
            }
        }
        Ok(())
    }

    /// Space for `len` bytes of compressed data: shares the current partly
    /// used cluster when it fits (one more reference), else new clusters.
    pub(crate) fn alloc_bytes(&mut self, len: u64) -> Result<u64> {
        let cs = self.cs;
        let cur = self.compress_cursor;
        if cur != 0 && (cur & (cs - 1)) + len <= cs {
            let c = cur >> self.cluster_bits;
            let rc = self.get_refcount(c)?;
            if rc > 0 && rc < self.max_refcount() {
                self.update_refcount(c, 1)?;
                let next = cur + len;
                self.compress_cursor = if next & (cs - 1) == 0 { 0 } else { next };
                return Ok(cur);
            }
        }
        // Continue across the cluster boundary when the next clusters are
        // free (qemu packs compressed data the same way).
        if cur != 0 {
            let c = cur >> self.cluster_bits;
            let rc = self.get_refcount(c)?;
            let extra = ((cur & (cs - 1)) + len).div_ceil(cs) - 1;
            if extra > 0 && rc > 0 && rc < self.max_refcount() && self.free_hint == c + 1 {
                let next = self.alloc_clusters(extra)?;
                if next == (c + 1) << self.cluster_bits {
                    self.update_refcount(c, 1)?;
                    let end = cur + len;
                    self.compress_cursor = if end & (cs - 1) == 0 { 0 } else { end };
                    return Ok(cur);
                }
                // Not contiguous after all: use the new clusters if enough.
                if extra * cs >= len {
                    let end = next + len;
                    self.compress_cursor = if end & (cs - 1) == 0 { 0 } else { end };
                    return Ok(next);
                }
                self.free_clusters(next, extra)?;
            }
        }
        let n = len.div_ceil(cs);
        let host = self.alloc_clusters(n)?;
        let next = host + len;
        self.compress_cursor = if next & (cs - 1) == 0 { 0 } else { next };
        Ok(host)
    }

    /// Makes sure refcount block `b` exists; a new one is placed outside
    /// `avoid` (clusters about to be handed out).
    pub(crate) fn ensure_refblock(&mut self, b: u64, avoid: std::ops::Range<u64>) -> Result<()> {
        self.ensure_refblock_depth(b, avoid, 0)
    }

    fn ensure_refblock_depth(
        &mut self,
        b: u64,
        avoid: std::ops::Range<u64>,
        depth: u32,
    ) -> Result<()> {
        if depth > 8 {
            return Err(Error::Corrupt(
                "refcount block allocation does not converge".into(),
            ));
        }
        if (b as usize) < self.reftable.len() && self.reftable[b as usize] & L1E_OFFSET_MASK != 0 {
            return Ok(());
        }
        if b as usize >= self.reftable.len() {
            self.grow_reftable(b + 1)?;
            if self.reftable[b as usize] & L1E_OFFSET_MASK != 0 {
                return Ok(());
            }
        }
        // Place the new block past the avoided range.
        let loc = self.find_free(avoid.end.max(self.free_hint), 1)?;
        if let Some(r) = self.repair_refs.as_mut() {
            if let Some(x) = r.get_mut(loc as usize) {
                *x += 1;
            }
        }
        let lb = loc / self.rb_entries;
        let mut block = vec![0u8; self.cs as usize];
        if lb == b {
            // It describes itself.
            rc_set(
                &mut block,
                (loc % self.rb_entries) as usize,
                self.refcount_bits,
                1,
            );
        } else {
            self.ensure_refblock_depth(lb, avoid.start..loc + 1, depth + 1)?;
            self.set_refcount(loc, 1)?;
            // Its refcount must be on disk before the table points at it.
            self.write_refblocks()?;
        }
        let off = loc << self.cluster_bits;
        self.guard_write(off, self.cs, None)?;
        pwrite(&self.file, &self.path, &block, off)?;
        self.note_written(off, self.cs);
        if !self.lazy_refcounts() {
            self.sync()?;
        }
        pwrite(
            &self.file,
            &self.path,
            &off.to_be_bytes(),
            self.h.refcount_table_offset + b * 8,
        )?;
        self.reftable[b as usize] = off;
        self.overlaps.insert(off, self.cs, Meta::RefcountBlock);
        if loc + 1 > self.end_cluster {
            self.end_cluster = loc + 1;
        }
        Ok(())
    }

    /// Replaces the refcount table by a larger one holding at least
    /// `min_entries` entries, placed past the end of everything.
    pub(crate) fn grow_reftable(&mut self, min_entries: u64) -> Result<()> {
        let cs = self.cs;
        let per_cluster = cs / 8;
        let old_len = self.reftable.len() as u64;
        let want = min_entries.max(old_len + old_len / 2).max(old_len + 1);
        let mut start = self.end_cluster.max(self.free_hint).max(1);
        let mut entries = want;
        let (mut t, mut r);
        'place: loop {
            // Fixpoint: table clusters T at `start`, new blocks R right after.
            loop {
                t = entries.div_ceil(per_cluster);
                let area_end = start + t;
                // blocks needed for [start, area_end + r)
                r = 0;
                loop {
                    let end = area_end + r;
                    let mut need = 0;
                    for blk in start / self.rb_entries..=(end - 1) / self.rb_entries {
                        let have = (blk as usize) < self.reftable.len()
                            && self.reftable[blk as usize] & L1E_OFFSET_MASK != 0;
                        if !have {
                            need += 1;
                        }
                    }
                    if need == r {
                        break;
                    }
                    r = need;
                }
                let last_blk = (start + t + r - 1) / self.rb_entries;
                if last_blk < entries {
                    break;
                }
                entries = last_blk + 1;
            }
            // The area must be free in the existing blocks too.
            let area = start..start + t + r;
            for c in area {
                if self.get_refcount(c)? != 0 || self.overlaps.covers(c) {
                    start = c + 1;
                    continue 'place;
                }
            }
            break;
        }
        if t * cs > super::header::MAX_REFTABLE_BYTES.max(cs) * 4 {
            return Err(Error::Unsupported(
                "refcount table would grow too large".into(),
            ));
        }
        let entries_total = t * per_cluster;
        let mut table = self.reftable.clone();
        table.resize(entries_total as usize, 0);
        // Assign new refcount blocks.
        let mut next = start + t;
        let mut new_blocks: Vec<(u64, u64)> = Vec::new(); // (block idx, cluster)
        for blk in start / self.rb_entries..=(start + t + r - 1) / self.rb_entries {
            if table[blk as usize] & L1E_OFFSET_MASK == 0 {
                table[blk as usize] = next << self.cluster_bits;
                new_blocks.push((blk, next));
                next += 1;
            }
        }
        debug_assert_eq!(next, start + t + r);
        // Counts for the new area [start, start+t+r): in new blocks directly,
        // in existing blocks through the cache.
        let mut bufs: Vec<Vec<u8>> = new_blocks.iter().map(|_| vec![0u8; cs as usize]).collect();
        for c in start..start + t + r {
            let blk = c / self.rb_entries;
            if let Some(k) = new_blocks.iter().position(|(b, _)| *b == blk) {
                rc_set(
                    &mut bufs[k],
                    (c % self.rb_entries) as usize,
                    self.refcount_bits,
                    1,
                );
            } else {
                self.set_refcount(c, 1)?;
            }
        }
        let toff = start << self.cluster_bits;
        self.guard_write(toff, (t + r) * cs, None)?;
        for (k, (_, c)) in new_blocks.iter().enumerate() {
            pwrite(&self.file, &self.path, &bufs[k], c << self.cluster_bits)?;
        }
        let mut raw = vec![0u8; (t * cs) as usize];
        for (i, e) in table.iter().enumerate() {
            raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        pwrite(&self.file, &self.path, &raw, toff)?;
        self.note_written(toff, (t + r) * cs);
        self.write_refblocks()?;
        self.sync()?;
        // Switch the header to the new table (one 12-byte write).
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&toff.to_be_bytes());
        hdr[8..].copy_from_slice(&(t as u32).to_be_bytes());
        pwrite(&self.file, &self.path, &hdr, super::header::OFF_REFTABLE)?;
        self.sync()?;
        let old_off = self.h.refcount_table_offset;
        let old_clusters = self.h.refcount_table_clusters as u64;
        self.h.refcount_table_offset = toff;
        self.h.refcount_table_clusters = t as u32;
        self.reftable = table;
        self.rebuild_overlaps();
        if start + t + r > self.end_cluster {
            self.end_cluster = start + t + r;
        }
        if self.free_hint >= start && self.free_hint < start + t + r {
            self.free_hint = start + t + r;
        }
        self.free_clusters(old_off, old_clusters)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{rc_get, rc_set};

    #[test]
    fn every_width_round_trips_without_touching_neighbours() {
        for bits in [1u32, 2, 4, 8, 16, 32, 64] {
            let entries = 512 * 8 / bits as usize;
            let mut block = vec![0u8; 512];
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            for i in 0..entries {
                rc_set(&mut block, i, bits, (i as u64 * 7919) & max);
            }
            for i in 0..entries {
                assert_eq!(
                    rc_get(&block, i, bits),
                    (i as u64 * 7919) & max,
                    "{bits}-bit entry {i}"
                );
            }
            rc_set(&mut block, 3, bits, max);
            assert_eq!(rc_get(&block, 3, bits), max);
            assert_eq!(rc_get(&block, 2, bits), (2 * 7919) & max);
            assert_eq!(rc_get(&block, 4, bits), (4 * 7919) & max);
        }
    }

    #[test]
    fn sub_byte_entries_start_at_the_least_significant_bit() {
        // qcow2: "bit 0 means the least significant bit".
        let mut b = vec![0u8; 1];
        rc_set(&mut b, 0, 1, 1);
        assert_eq!(b[0], 0b0000_0001);
        rc_set(&mut b, 1, 2, 3);
        assert_eq!(b[0], 0b0000_1101);
    }
}
