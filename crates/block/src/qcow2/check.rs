//! `qemu-img check` for qcow2: recount every reference (header, L1/L2
//! tables, data, snapshots, refcount structures), compare with the stored
//! refcounts, verify COPIED flags, and optionally repair. Also used to
//! rebuild refcounts when a dirty (lazy refcounts) image is opened.

use super::{pread, Qcow2, COMPRESSED, COPIED, L1E_OFFSET_MASK, L2E_OFFSET_MASK};
use crate::{CheckReport, Error, Repair, Result};

/// References beyond the file are tracked up to this many clusters past it.
const MAX_PAST_EOF: u64 = 1 << 20;

struct Scan {
    refs: Vec<u32>,
    report: CheckReport,
}

impl Scan {
    fn inc(&mut self, cs_bits: u32, limit: u64, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = off >> cs_bits;
        let last = (off + len - 1) >> cs_bits;
        for c in first..=last {
            if c >= limit {
                self.report.corruptions += 1;
                self.report.messages.push(format!(
                    "ERROR: cluster {c} is far past the end of the image file"
                ));
                return;
            }
            if c as usize >= self.refs.len() {
                self.refs.resize(c as usize + 1, 0);
            }
            self.refs[c as usize] = self.refs[c as usize].saturating_add(1);
        }
    }
}

impl Qcow2 {
    fn scan(&mut self) -> Result<Scan> {
        let bits = self.cluster_bits;
        let cs = self.cs;
        let file_len = self
            .file
            .metadata()
            .map_err(|e| super::io_err(&self.path, e))?
            .len();
        let file_clusters = file_len.div_ceil(cs).max(self.end_cluster);
        let limit = file_clusters + MAX_PAST_EOF;
        let mut s = Scan {
            refs: vec![0; file_clusters as usize],
            report: CheckReport::default(),
        };
        s.report.total_clusters = self.h.size.div_ceil(cs);
        s.inc(bits, limit, 0, cs);
        s.inc(
            bits,
            limit,
            self.h.l1_table_offset,
            self.l1.len() as u64 * 8,
        );
        let l1 = self.l1.clone();
        self.scan_tree(&mut s, &l1, true, limit)?;
        if self.h.nb_snapshots > 0 {
            s.inc(
                bits,
                limit,
                self.h.snapshots_offset,
                self.snapshot_table_len(),
            );
        }
        for sn in self.snapshots.clone() {
            s.inc(bits, limit, sn.l1_table_offset, sn.l1_size as u64 * 8);
            let sl1 = self.read_l1(sn.l1_table_offset, sn.l1_size)?;
            self.scan_tree(&mut s, &sl1, false, limit)?;
        }
        // Persistent dirty bitmaps, while their autoclear bit says valid.
        if let (Some((dir_off, dir_size, nb)), true) = (self.h.bitmaps, self.h.autoclear & 1 != 0) {
            self.scan_bitmaps(&mut s, dir_off, dir_size, nb, file_len, limit)?;
        }
        s.inc(
            bits,
            limit,
            self.h.refcount_table_offset,
            self.h.refcount_table_clusters as u64 * cs,
        );
        for (i, &e) in self.reftable.clone().iter().enumerate() {
            let off = e & L1E_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(cs) {
                s.report.corruptions += 1;
                s.report
                    .messages
                    .push(format!("ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"));
                continue;
            }
            if off >= file_len {
                s.report.corruptions += 1;
                s.report
                    .messages
                    .push(format!("ERROR refcount block {i} is outside image"));
                continue;
            }
            s.inc(bits, limit, off, cs);
        }
        Ok(s)
    }

    fn scan_bitmaps(
        &mut self,
        s: &mut Scan,
        dir_off: u64,
        dir_size: u64,
        nb: u32,
        file_len: u64,
        limit: u64,
    ) -> Result<()> {
        let bits = self.cluster_bits;
        if dir_size > (16 << 20) || dir_off.checked_add(dir_size).is_none_or(|e| e > file_len) {
            s.report.corruptions += 1;
            s.report
                .messages
                .push("ERROR bitmap directory lies outside the image".to_string());
            return Ok(());
        }
        s.inc(bits, limit, dir_off, dir_size);
        let mut dir = vec![0u8; dir_size as usize];
        pread(&self.file, &self.path, &mut dir, dir_off)?;
        let mut p = 0usize;
        for _ in 0..nb {
            if p + 24 > dir.len() {
                break;
            }
            let table_off = super::be64_at(&dir, p);
            let table_size = u32::from_be_bytes(dir[p + 8..p + 12].try_into().unwrap()) as u64;
            let name_size = u16::from_be_bytes(dir[p + 18..p + 20].try_into().unwrap()) as usize;
            let extra = u32::from_be_bytes(dir[p + 20..p + 24].try_into().unwrap()) as usize;
            p += (24 + extra + name_size).next_multiple_of(8);
            if table_size * 8 > (64 << 20) || table_off + table_size * 8 > file_len {
                s.report.corruptions += 1;
                s.report.messages.push(format!(
                    "ERROR bitmap table at {table_off:#x} lies outside the image"
                ));
                continue;
            }
            s.inc(bits, limit, table_off, table_size * 8);
            let mut t = vec![0u8; (table_size * 8) as usize];
            pread(&self.file, &self.path, &mut t, table_off)?;
            for k in 0..table_size as usize {
                let off = super::be64_at(&t, k * 8) & L2E_OFFSET_MASK;
                if off != 0 {
                    s.inc(bits, limit, off, self.cs);
                }
            }
        }
        Ok(())
    }

    fn scan_tree(&mut self, s: &mut Scan, l1: &[u64], active: bool, limit: u64) -> Result<()> {
        let bits = self.cluster_bits;
        let cs = self.cs;
        let mut table = vec![0u8; cs as usize];
        let mut prev_host: u64 = 0;
        for (i, &l1e) in l1.iter().enumerate() {
            let off = l1e & L1E_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(cs) {
                s.report.corruptions += 1;
                s.report.messages.push(format!(
                    "ERROR l2_offset={off:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                continue;
            }
            s.inc(bits, limit, off, cs);
            // Read through the cache when present (it may be newer).
            if let Some(slot) = self.l2_cache.lookup(off) {
                table.copy_from_slice(&self.l2_cache.get(slot).data);
            } else {
                pread(&self.file, &self.path, &mut table, off)?;
            }
            let esz = if self.extl2 { 16 } else { 8 };
            for idx in 0..self.l2_entries as usize {
                let e = super::be64_at(&table, idx * esz);
                let bm = if self.extl2 {
                    super::be64_at(&table, idx * esz + 8)
                } else {
                    0
                };
                if e & COMPRESSED != 0 {
                    let r = self.compressed_clusters(e);
                    s.inc(bits, limit, r.start << bits, (r.end - r.start) << bits);
                    if active {
                        s.report.allocated_clusters += 1;
                        s.report.compressed_clusters += 1;
                    }
                    if self.extl2 && bm != 0 {
                        s.report.corruptions += 1;
                        s.report.messages.push(format!(
                            "ERROR compressed cluster {} has a subcluster bitmap (l1 index {i})",
                            idx
                        ));
                    }
                    continue;
                }
                if self.extl2 && (bm & (bm >> 32) & 0xffff_ffff) != 0 {
                    s.report.corruptions += 1;
                    s.report.messages.push(format!(
                        "ERROR Invalid subcluster allocation bitmap l2_entry={e:x} bitmap={bm:x}"
                    ));
                }
                let host = e & L2E_OFFSET_MASK;
                if host == 0 {
                    if self.extl2 && bm & 0xffff_ffff != 0 {
                        s.report.corruptions += 1;
                        s.report.messages.push(format!(
                            "ERROR Subclusters allocated without a host cluster l2_entry={e:x}"
                        ));
                    }
                    continue;
                }
                if !host.is_multiple_of(cs) {
                    s.report.corruptions += 1;
                    s.report.messages.push(format!(
                        "ERROR offset={host:x}: Cluster is not properly aligned; L2 entry corrupted."
                    ));
                    continue;
                }
                s.inc(bits, limit, host, cs);
                if active {
                    s.report.allocated_clusters += 1;
                    if prev_host != 0 && prev_host + cs != host {
                        s.report.fragmented_clusters += 1;
                    }
                    prev_host = host;
                }
            }
        }
        Ok(())
    }

    /// Verifies (and with `fix`, repairs) COPIED flags of the active tree.
    fn copied_pass(&mut self, fix: bool, report: &mut CheckReport) -> Result<u64> {
        let mut bad = 0u64;
        let mut l1 = self.l1.clone();
        let mut l1_changed = false;
        for (i, l1e) in l1.iter_mut().enumerate() {
            let off = *l1e & L1E_OFFSET_MASK;
            if off == 0 || !off.is_multiple_of(self.cs) {
                continue;
            }
            let rc = self.get_refcount(off >> self.cluster_bits)?;
            let want = rc == 1;
            if want != (*l1e & COPIED != 0) {
                bad += 1;
                report.messages.push(format!(
                    "{} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={:x} refcount={rc}",
                    if fix { "Repairing" } else { "ERROR" },
                    *l1e
                ));
                if fix {
                    *l1e = if want { *l1e | COPIED } else { *l1e & !COPIED };
                    l1_changed = true;
                }
            }
            if self
                .overlaps
                .find(off, self.cs, Some(super::overlap::Meta::ActiveL2))
                .is_some()
            {
                // Sits on other metadata: the scan reports it; never
                // rewrite it here.
                continue;
            }
            let slot = self.l2_slot(off)?;
            for idx in 0..self.l2_entries as usize {
                let (e, bm) = self.l2_get(slot, idx);
                if e & COMPRESSED != 0 {
                    if e & COPIED != 0 {
                        bad += 1;
                        report.messages.push(format!(
                            "{} OFLAG_COPIED data cluster: l2_entry={e:x} (compressed)",
                            if fix { "Repairing" } else { "ERROR" }
                        ));
                        if fix {
                            self.l2_set(slot, idx, e & !COPIED, bm);
                        }
                    }
                    continue;
                }
                let host = e & L2E_OFFSET_MASK;
                if host == 0 || !host.is_multiple_of(self.cs) {
                    continue;
                }
                let rc = self.get_refcount(host >> self.cluster_bits)?;
                let want = rc == 1;
                if want != (e & COPIED != 0) {
                    bad += 1;
                    report.messages.push(format!(
                        "{} OFLAG_COPIED data cluster: l2_entry={e:x} refcount={rc}",
                        if fix { "Repairing" } else { "ERROR" }
                    ));
                    if fix {
                        let ne = if want { e | COPIED } else { e & !COPIED };
                        self.l2_set(slot, idx, ne, bm);
                    }
                }
            }
        }
        if fix {
            self.flush_metadata()?;
            if l1_changed {
                self.l1 = l1;
                self.write_l1()?;
            }
            self.sync()?;
        }
        Ok(bad)
    }

    /// One full check pass without repair. Also returns how many of the
    /// messages come from the scan and refcount comparison (before the
    /// OFLAG_COPIED pass).
    fn check_once(&mut self) -> Result<(CheckReport, Vec<u32>, usize)> {
        let mut s = self.scan()?;
        let mut highest: u64 = 0;
        let n = s.refs.len() as u64;
        for c in 0..n {
            let rc = self.get_refcount(c)?;
            let r = s.refs[c as usize] as u64;
            if rc > 0 || r > 0 {
                highest = c + 1;
            }
            if rc > r {
                s.report.leaks += 1;
                s.report
                    .messages
                    .push(format!("Leaked cluster {c} refcount={rc} reference={r}"));
            } else if rc < r {
                s.report.corruptions += 1;
                s.report
                    .messages
                    .push(format!("ERROR cluster {c} refcount={rc} reference={r}"));
            }
        }
        // Refcounts for clusters past everything referenced.
        let rb_entries = self.rb_entries;
        for (b, &e) in self.reftable.clone().iter().enumerate() {
            let off = e & L1E_OFFSET_MASK;
            let first = b as u64 * rb_entries;
            if off == 0 || !off.is_multiple_of(self.cs) || first + rb_entries <= n {
                continue;
            }
            for c in first.max(n)..first + rb_entries {
                let rc = self.get_refcount(c)?;
                if rc > 0 {
                    highest = c + 1;
                    s.report.leaks += 1;
                    s.report
                        .messages
                        .push(format!("Leaked cluster {c} refcount={rc} reference=0"));
                }
            }
        }
        let mut report = s.report;
        let n_cmp = report.messages.len();
        report.corruptions += self.copied_pass(false, &mut report)?;
        report.image_end_offset = highest * self.cs;
        Ok((report, s.refs, n_cmp))
    }

    pub(crate) fn check(&mut self, repair: Repair) -> Result<CheckReport> {
        if !self.read_only {
            self.flush_metadata()?;
        }
        let (before, _, n_cmp) = self.check_once()?;
        let wants = match repair {
            Repair::None => false,
            Repair::Leaks => before.leaks > 0,
            Repair::All => before.leaks > 0 || before.corruptions > 0,
        };
        if !wants {
            if repair == Repair::All
                && !self.read_only
                && before.corruptions == 0
                && self.h.incompatible & super::header::INCOMPAT_CORRUPT != 0
            {
                self.set_incompat(self.h.incompatible & !super::header::INCOMPAT_CORRUPT)?;
            }
            return Ok(before);
        }
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        // Like qemu, the repairing run first reports what it found (its
        // comparison pass without fixing), then what it repairs.
        let mut messages: Vec<String> = before.messages[..n_cmp].to_vec();
        messages.append(&mut self.repair(repair)?);
        let (mut after, _, _) = self.check_once()?;
        after.leaks_fixed = before.leaks.saturating_sub(after.leaks);
        after.corruptions_fixed = before.corruptions.saturating_sub(after.corruptions);
        messages.append(&mut after.messages);
        after.messages = messages;
        if repair == Repair::All
            && after.corruptions == 0
            && self.h.incompatible & super::header::INCOMPAT_CORRUPT != 0
        {
            self.set_incompat(self.h.incompatible & !super::header::INCOMPAT_CORRUPT)?;
        }
        Ok(after)
    }

    /// Sets refcounts to the computed references (leaks only, or all) and,
    /// for `All`, fixes COPIED flags. Returns qemu-style repair messages.
    pub(crate) fn repair(&mut self, repair: Repair) -> Result<Vec<String>> {
        let mut msgs = Vec::new();
        for round in 0..4 {
            let (rep, refs, _) = self.check_once()?;
            let todo = match repair {
                Repair::None => false,
                Repair::Leaks => rep.leaks > 0,
                Repair::All => rep.leaks > 0 || rep.corruptions > 0,
            };
            if !todo {
                break;
            }
            self.repair_refs = Some(refs.clone());
            let res = (|| -> Result<()> {
                let n = refs.len() as u64;
                for c in 0..n {
                    let rc = self.get_refcount(c)?;
                    let r = self
                        .repair_refs
                        .as_ref()
                        .map(|v| v[c as usize] as u64)
                        .unwrap_or(0);
                    let fix = (rc > r) || (rc < r && repair == Repair::All);
                    if rc != r && fix {
                        if round == 0 {
                            msgs.push(format!("Repairing cluster {c} refcount={rc} reference={r}"));
                        }
                        self.set_refcount(c, r)?;
                    }
                }
                // Counted clusters past everything referenced.
                for (b, &e) in self.reftable.clone().iter().enumerate() {
                    let off = e & L1E_OFFSET_MASK;
                    let first = b as u64 * self.rb_entries;
                    if off == 0 || !off.is_multiple_of(self.cs) || first + self.rb_entries <= n {
                        continue;
                    }
                    for c in first.max(n)..first + self.rb_entries {
                        if self.get_refcount(c)? > 0
                            && self
                                .repair_refs
                                .as_ref()
                                .is_some_and(|v| (c as usize) >= v.len())
                        {
                            // Not a block we just created: refs beyond n are 0.
                            let is_rb = self
                                .reftable
                                .iter()
                                .any(|&x| x & L1E_OFFSET_MASK == c << self.cluster_bits);
                            let in_rt = {
                                let o = c << self.cluster_bits;
                                o >= self.h.refcount_table_offset
                                    && o < self.h.refcount_table_offset
                                        + self.h.refcount_table_clusters as u64 * self.cs
                            };
                            if !is_rb && !in_rt {
                                self.set_refcount(c, 0)?;
                            }
                        }
                    }
                }
                self.flush_metadata()?;
                self.sync()
            })();
            self.repair_refs = None;
            res?;
        }
        if repair == Repair::All {
            let mut r = CheckReport::default();
            self.copied_pass(true, &mut r)?;
            msgs.append(&mut r.messages);
        }
        self.free_hint = 0;
        Ok(msgs)
    }
}
