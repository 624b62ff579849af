//! The qcow2 header (cluster 0): fixed fields, header extensions (backing
//! format, feature name table, unknown ones preserved) and the backing file
//! name. Parsing validates everything later code relies on.

use crate::{Error, Result};

pub const MAGIC: u32 = 0x5146_49fb;
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Offsets of fields we rewrite in place.
pub const OFF_SIZE: u64 = 24;
pub const OFF_L1: u64 = 36; // l1_size (4) + l1_table_offset (8)
pub const OFF_REFTABLE: u64 = 48; // offset (8) + clusters (4)
pub const OFF_SNAPSHOTS: u64 = 60; // nb_snapshots (4) + snapshots_offset (8)
pub const OFF_INCOMPAT: u64 = 72;
pub const OFF_AUTOCLEAR: u64 = 88;

/// Largest L1 table qemu accepts (32 MiB), and refcount table (8 MiB).
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub backing_file: Option<String>,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    /// 0 zlib, 1 zstd.
    pub compression_type: u8,
    pub backing_format: Option<String>,
    /// Extensions we do not interpret, kept verbatim (type, data).
    pub unknown_ext: Vec<(u32, Vec<u8>)>,
    /// Feature names from the image's table: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
    /// Bitmaps extension: (directory offset, directory size, count). The
    /// extension itself is kept verbatim in `unknown_ext`.
    pub bitmaps: Option<(u64, u64, u32)>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}
fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }

    /// Parses cluster 0. `file_len` bounds every table the header names.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header> {
        let c = |m: String| Error::Corrupt(m);
        if buf.len() < 72 {
            return Err(c("qcow2 header is truncated".into()));
        }
        if be32(buf, 0) != MAGIC {
            return Err(c("not a qcow2 image (bad magic)".into()));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!(
                "Unsupported qcow2 version {version}"
            )));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(c(format!(
                "Unsupported cluster size: 2^{cluster_bits} (must be 512 B to 2 MiB)"
            )));
        }
        let cs = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file: None,
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: 72,
            compression_type: 0,
            backing_format: None,
            unknown_ext: Vec::new(),
            feature_names: Vec::new(),
            bitmaps: None,
        };
        let crypt = be32(buf, 32);
        if version == 3 {
            if buf.len() < 104 {
                return Err(c("qcow2 v3 header is truncated".into()));
            }
            h.incompatible = be64(buf, 72);
            h.compatible = be64(buf, 80);
            h.autoclear = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < 104 || !h.header_length.is_multiple_of(8) {
                return Err(c(format!("Invalid header length {}", h.header_length)));
            }
            if h.header_length as u64 > cs || h.header_length as usize > buf.len() {
                return Err(c("qcow2 header exceeds cluster size".into()));
            }
            if h.header_length > 104 {
                h.compression_type = buf[104];
            }
        }
        if h.refcount_order > 6 {
            return Err(c(format!("Invalid refcount order {}", h.refcount_order)));
        }
        // Header extensions follow the header, up to the end of cluster 0.
        let ext_end_limit = (cs as usize).min(buf.len());
        let mut off = h.header_length as usize;
        let mut has_data_file = false;
        loop {
            if off + 8 > ext_end_limit {
                break; // no room for a terminator: treat as end (qemu does)
            }
            let ty = be32(buf, off);
            let len = be32(buf, off + 4) as usize;
            off += 8;
            if ty == EXT_END {
                break;
            }
            if len > ext_end_limit - off {
                return Err(c("Invalid header extension length (past cluster 0)".into()));
            }
            let data = &buf[off..off + len];
            match ty {
                EXT_BACKING_FORMAT => {
                    h.backing_format = Some(String::from_utf8_lossy(data).into_owned());
                }
                EXT_FEATURE_TABLE => {
                    for e in data.chunks_exact(48) {
                        let name = &e[2..48];
                        let end = name.iter().position(|&b| b == 0).unwrap_or(46);
                        h.feature_names.push((
                            e[0],
                            e[1],
                            String::from_utf8_lossy(&name[..end]).into_owned(),
                        ));
                    }
                }
                EXT_CRYPTO => {
                    return Err(Error::Unsupported("encrypted qcow2 images".into()));
                }
                EXT_DATA_FILE => has_data_file = true,
                EXT_BITMAPS => {
                    // Not maintained: kept verbatim, and the autoclear bit is
                    // cleared on a writable open (the spec's rule for writers
                    // that do not update bitmaps). `check` still counts their
                    // clusters while that bit is set.
                    if data.len() >= 24 {
                        h.bitmaps = Some((be64(data, 16), be64(data, 8), be32(data, 0)));
                    }
                    h.unknown_ext.push((ty, data.to_vec()));
                }
                _ => h.unknown_ext.push((ty, data.to_vec())),
            }
            off += (len + 7) & !7;
        }
        let _ = has_data_file;
        if crypt != 0 {
            return Err(Error::Unsupported(format!(
                "encrypted qcow2 images (crypt method {crypt})"
            )));
        }
        let unknown = h.incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let mut names = Vec::new();
            for bit in 0..64 {
                if unknown & (1 << bit) == 0 {
                    continue;
                }
                let name = h
                    .feature_names
                    .iter()
                    .find(|(t, b, _)| *t == 0 && *b as u32 == bit)
                    .map(|(_, _, n)| n.clone())
                    .unwrap_or_else(|| format!("Unknown incompatible feature: {:x}", 1u64 << bit));
                names.push(name);
            }
            return Err(Error::Unsupported(format!(
                "Unsupported qcow2 feature(s): {}",
                names.join(", ")
            )));
        }
        if h.incompatible & INCOMPAT_COMPRESSION != 0 {
            if h.header_length <= 104 || h.compression_type == 0 {
                return Err(c(
                    "Compression type bit set without a compression type".into()
                ));
            }
        } else if h.compression_type != 0 {
            return Err(c(
                "Compression type field set without the incompatible bit".into()
            ));
        }
        if h.compression_type > 1 {
            return Err(Error::Unsupported(format!(
                "Unknown compression type {}",
                h.compression_type
            )));
        }
        if h.extended_l2() && cluster_bits < 14 {
            return Err(c(
                "Extended L2 entries need clusters of at least 16 KiB".into()
            ));
        }
        // Backing file name.
        let bfo = be64(buf, 8);
        let bfs = be32(buf, 16) as u64;
        if bfo != 0 {
            if bfs > 1023 {
                return Err(c("Backing file name too long".into()));
            }
            if bfo
                .checked_add(bfs)
                .is_none_or(|e| e > cs || e as usize > buf.len())
            {
                return Err(c("Backing file name lies outside the header cluster".into()));
            }
            let name = &buf[bfo as usize..(bfo + bfs) as usize];
            h.backing_file = Some(String::from_utf8_lossy(name).into_owned());
        }
        // Table placement sanity: aligned and inside the file.
        let check_table = |what: &str, off: u64, len: u64| -> Result<()> {
            if !off.is_multiple_of(cs) {
                return Err(c(format!("{what} offset {off:#x} is not cluster aligned")));
            }
            if off == 0 && len > 0 {
                return Err(c(format!("{what} overlaps the qcow2 header")));
            }
            if off.checked_add(len).is_none_or(|e| e > file_len) {
                return Err(c(format!(
                    "{what} at {off:#x} (+{len} bytes) lies past the end of the file"
                )));
            }
            Ok(())
        };
        let rt_bytes = h.refcount_table_clusters as u64 * cs;
        if rt_bytes > MAX_REFTABLE_BYTES.max(cs) {
            return Err(c(format!(
                "Reference count table too large ({} clusters)",
                h.refcount_table_clusters
            )));
        }
        if h.refcount_table_clusters == 0 {
            return Err(c("Image has no reference count table".into()));
        }
        check_table("Reference count table", h.refcount_table_offset, rt_bytes)?;
        let l1_bytes = h.l1_size as u64 * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(c(format!(
                "Active L1 table too large ({} entries)",
                h.l1_size
            )));
        }
        check_table("Active L1 table", h.l1_table_offset, l1_bytes)?;
        // The L1 must be large enough for the virtual size.
        let l2_entries = cs / if h.extended_l2() { 16 } else { 8 };
        let need = h.size.div_ceil(cs).div_ceil(l2_entries);
        if (h.l1_size as u64) < need {
            return Err(c(format!(
                "L1 table ({} entries) too small for the image size {}",
                h.l1_size, h.size
            )));
        }
        if h.nb_snapshots > 65536 {
            return Err(c(format!("Too many snapshots ({})", h.nb_snapshots)));
        }
        if h.nb_snapshots > 0 {
            check_table(
                "Snapshot table",
                h.snapshots_offset,
                40 * h.nb_snapshots as u64,
            )?;
        }
        let overlap =
            |a: u64, al: u64, b: u64, bl: u64| al > 0 && bl > 0 && a < b + bl && b < a + al;
        if overlap(
            h.l1_table_offset,
            l1_bytes,
            h.refcount_table_offset,
            rt_bytes,
        ) {
            return Err(c("Active L1 table overlaps the refcount table".into()));
        }
        Ok(h)
    }

    /// Serialises cluster 0 (header, extensions, backing name). Fails when it
    /// does not fit in one cluster.
    pub fn serialize(&self, with_feature_table: bool) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = vec![0u8; if self.version == 2 { 72 } else { 112 }];
        let hl = b.len() as u32;
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.version.to_be_bytes());
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version == 3 {
            b[72..80].copy_from_slice(&self.incompatible.to_be_bytes());
            b[80..88].copy_from_slice(&self.compatible.to_be_bytes());
            b[88..96].copy_from_slice(&self.autoclear.to_be_bytes());
            b[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
            b[100..104].copy_from_slice(&hl.to_be_bytes());
            b[104] = self.compression_type;
        }
        let push_ext = |b: &mut Vec<u8>, ty: u32, data: &[u8]| {
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            b.resize(b.len().next_multiple_of(8), 0);
        };
        if let Some(f) = &self.backing_format {
            push_ext(&mut b, EXT_BACKING_FORMAT, f.as_bytes());
        }
        if self.version == 3 && with_feature_table {
            let feats: [(u8, u8, &str); 8] = [
                (0, 0, "dirty bit"),
                (0, 1, "corrupt bit"),
                (0, 2, "external data file"),
                (0, 3, "compression type"),
                (0, 4, "extended L2 entries"),
                (1, 0, "lazy refcounts"),
                (2, 0, "bitmaps"),
                (2, 1, "raw external data"),
            ];
            let mut t = Vec::with_capacity(48 * feats.len());
            for (ty, bit, name) in feats {
                let mut e = [0u8; 48];
                e[0] = ty;
                e[1] = bit;
                e[2..2 + name.len()].copy_from_slice(name.as_bytes());
                t.extend_from_slice(&e);
            }
            push_ext(&mut b, EXT_FEATURE_TABLE, &t);
        }
        for (ty, data) in &self.unknown_ext {
            push_ext(&mut b, *ty, data);
        }
        if self.version == 3 || !self.unknown_ext.is_empty() || self.backing_format.is_some() {
            push_ext(&mut b, EXT_END, &[]);
        }
        if let Some(name) = &self.backing_file {
            let off = b.len() as u64;
            b.extend_from_slice(name.as_bytes());
            b[8..16].copy_from_slice(&off.to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        }
        if b.len() > cs {
            return Err(Error::Unsupported(
                "qcow2 header (with extensions and backing name) does not fit in one cluster"
                    .into(),
            ));
        }
        Ok(b)
    }

    /// Cluster 0 with the feature table when it fits (qemu drops it for tiny
    /// clusters too).
    pub fn serialize_best(&self) -> Result<Vec<u8>> {
        self.serialize(true).or_else(|_| self.serialize(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            backing_file: Some("base.qcow2".into()),
            cluster_bits: 16,
            size: 1 << 30,
            l1_size: 4,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible: INCOMPAT_EXTL2,
            compatible: COMPAT_LAZY_REFCOUNTS,
            autoclear: 0,
            refcount_order: 4,
            header_length: 112,
            compression_type: 0,
            backing_format: Some("qcow2".into()),
            unknown_ext: vec![(0xdead_beef, b"keep me".to_vec())],
            feature_names: Vec::new(),
            bitmaps: None,
        }
    }

    #[test]
    fn serialize_parse_round_trip() {
        let h = sample();
        let mut b = h.serialize(true).unwrap();
        b.resize(1 << 16, 0);
        let p = Header::parse(&b, 4 << 16).unwrap();
        assert_eq!(p.backing_file, h.backing_file);
        assert_eq!(p.backing_format, h.backing_format);
        assert_eq!(p.size, h.size);
        assert_eq!(p.incompatible, h.incompatible);
        assert_eq!(p.compatible, h.compatible);
        assert_eq!(p.unknown_ext, h.unknown_ext);
        assert!(p
            .feature_names
            .iter()
            .any(|(t, b, n)| *t == 0 && *b == 4 && n == "extended L2 entries"));
    }

    #[test]
    fn too_big_for_small_clusters_drops_feature_table() {
        let mut h = sample();
        h.cluster_bits = 9;
        h.incompatible = 0;
        h.l1_size = 1 << 15;
        assert!(h.serialize(true).is_err());
        assert!(h.serialize_best().unwrap().len() <= 512);
    }

    #[test]
    fn extension_running_past_cluster_zero_is_refused() {
        let h = sample();
        let mut b = h.serialize(true).unwrap();
        b.resize(1 << 16, 0);
        // First extension's length field.
        b[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        let e = Header::parse(&b, 4 << 16).unwrap_err();
        assert!(e.to_string().contains("extension"), "{e}");
    }
}
