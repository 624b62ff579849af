//! Where live metadata sits (qemu's overlap checks, "cached" mode): the
//! header, active L1, refcount table, snapshot table, inactive L1 tables,
//! bitmap directory, and the active L2 tables and refcount blocks they
//! name. Opening refuses fixed tables that overlap each other or the
//! header; loading refuses an L2 table or refcount block that lands on
//! other metadata; allocation skips clusters listed here; and a write that
//! would still land on metadata of another kind is refused and the image
//! marked corrupt (like qemu) instead of being carried out.

use std::collections::BTreeMap;

/// Kinds of metadata, named as qemu names them in its overlap messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meta {
    Header,
    ActiveL1,
    ActiveL2,
    RefcountTable,
    RefcountBlock,
    SnapshotTable,
    InactiveL1,
    BitmapDirectory,
}

impl Meta {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Meta::Header => "qcow2 header",
            Meta::ActiveL1 => "active L1 table",
            Meta::ActiveL2 => "active L2 table",
            Meta::RefcountTable => "refcount table",
            Meta::RefcountBlock => "refcount block",
            Meta::SnapshotTable => "snapshot table",
            Meta::InactiveL1 => "inactive L1 table",
            Meta::BitmapDirectory => "bitmap directory",
        }
    }
}

/// Disjoint cluster ranges `[start, end)` keyed by start, with their kind.
/// Sized by the metadata actually present (each insertion that would
/// overlap is refused), never by a size field.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overlaps {
    bits: u32,
    map: BTreeMap<u64, (u64, Meta)>,
}

impl Overlaps {
    pub(crate) fn new(cluster_bits: u32) -> Self {
        Overlaps {
            bits: cluster_bits,
            map: BTreeMap::new(),
        }
    }

    fn clusters(&self, off: u64, len: u64) -> (u64, u64) {
        let first = off >> self.bits;
        let end = off.saturating_add(len).saturating_add((1 << self.bits) - 1) >> self.bits;
        (first, end)
    }

    /// First entry overlapping byte range `[off, off+len)` whose kind is not
    /// `allowed`: (its byte offset, kind).
    pub(crate) fn find(&self, off: u64, len: u64, allowed: Option<Meta>) -> Option<(u64, Meta)> {
        if len == 0 {
            return None;
        }
        let (first, end) = self.clusters(off, len);
        for (&s, &(e, k)) in self.map.range(..end).rev() {
            if e <= first {
                break;
            }
            if Some(k) != allowed {
                return Some((s << self.bits, k));
            }
        }
        None
    }

    /// True when cluster `c` holds listed metadata.
    #[inline]
    pub(crate) fn covers(&self, c: u64) -> bool {
        self.map
            .range(..=c)
            .next_back()
            .is_some_and(|(_, &(e, _))| e > c)
    }

    /// Adds a range; on overlap adds nothing and returns what it overlaps.
    pub(crate) fn insert(&mut self, off: u64, len: u64, kind: Meta) -> Option<(u64, Meta)> {
        if len == 0 {
            return None;
        }
        if let Some(hit) = self.find(off, len, None) {
            return Some(hit);
        }
        let (first, end) = self.clusters(off, len);
        self.map.insert(first, (end, kind));
        None
    }

    /// Removes the range of `kind` starting at `off`, if that is what is
    /// listed there.
    pub(crate) fn remove(&mut self, off: u64, kind: Meta) {
        let first = off >> self.bits;
        if self.map.get(&first).is_some_and(|&(_, k)| k == kind) {
            self.map.remove(&first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_overlaps_of_other_kinds_only() {
        let mut o = Overlaps::new(16);
        assert!(o.insert(0, 65536, Meta::Header).is_none());
        assert!(o.insert(3 << 16, 8, Meta::ActiveL1).is_none());
        assert!(o.insert(5 << 16, 2 << 16, Meta::RefcountTable).is_none());
        assert_eq!(
            o.insert(6 << 16, 1, Meta::ActiveL2),
            Some((5 << 16, Meta::RefcountTable))
        );
        assert!(o.insert(9 << 16, 65536, Meta::ActiveL2).is_none());
        assert_eq!(o.find(100, 4096, None), Some((0, Meta::Header)));
        assert_eq!(o.find(1 << 16, 2 << 16, None), None);
        assert_eq!(
            o.find((2 << 16) + 512, 3 << 16, None),
            Some((5 << 16, Meta::RefcountTable))
        );
        assert_eq!(o.find(9 << 16, 65536, Some(Meta::ActiveL2)), None);
        assert!(o.covers(6) && !o.covers(7) && o.covers(9) && !o.covers(10));
        o.remove(9 << 16, Meta::RefcountBlock);
        assert!(o.covers(9));
        o.remove(9 << 16, Meta::ActiveL2);
        assert!(!o.covers(9));
    }
}
