//! Turns a directory of changes (an overlayfs upper dir, or a plain tree)
//! into a layer tarball: overlay whiteouts (0:0 char devices) become
//! `.wh.NAME` entries and opaque directories get `.wh..wh..opq`.

use crate::unpack::{get_xattr, OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX};
use crate::{IoContext, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Writes `dir` as an uncompressed tar into `out`, entries sorted by name so
/// the same tree gives the same bytes.
pub fn tar_dir<W: Write>(dir: &Path, out: W) -> Result<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    walk(dir, Path::new(""), &mut b)?;
    b.into_inner().ctx(|| "finishing layer tar".into())
}

fn header_for(meta: &fs::Metadata) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid() as u64);
    h.set_gid(meta.gid() as u64);
    h.set_mtime(meta.mtime().max(0) as u64);
    h
}

fn walk<W: Write>(root: &Path, rel: &Path, b: &mut tar::Builder<W>) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let r = rel.join(&n);
        let meta = fs::symlink_metadata(&p).ctx(|| format!("lstat {}", p.display()))?;
        let ft = meta.file_type();
        let mut h = header_for(&meta);
        if ft.is_char_device() && meta.rdev() == 0 {
            let wh = rel.join(format!("{WHITEOUT_PREFIX}{}", n.to_string_lossy()));
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o600);
            h.set_size(0);
            b.append_data(&mut h, &wh, &[][..])
                .ctx(|| format!("adding whiteout {}", wh.display()))?;
        } else if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &r, &[][..])
                .ctx(|| format!("adding {}", r.display()))?;
            if get_xattr(&p, OPAQUE_XATTR).as_deref() == Some(b"y") {
                let mut oh = tar::Header::new_ustar();
                oh.set_entry_type(tar::EntryType::Regular);
                oh.set_mode(0o600);
                oh.set_size(0);
                b.append_data(&mut oh, r.join(OPAQUE_MARKER), &[][..])
                    .ctx(|| "adding opaque marker".into())?;
            }
            walk(root, &r, b)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&p).ctx(|| format!("readlink {}", p.display()))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &r, &target)
                .ctx(|| format!("adding symlink {}", r.display()))?;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = fs::File::open(&p).ctx(|| format!("opening {}", p.display()))?;
            b.append_data(&mut h, &r, f)
                .ctx(|| format!("adding {}", r.display()))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            h.set_size(0);
            let dev = meta.rdev();
            let _ = h.set_device_major(libc::major(dev));
            let _ = h.set_device_minor(libc::minor(dev));
            b.append_data(&mut h, &r, &[][..])
                .ctx(|| format!("adding {}", r.display()))?;
        }
        // Sockets are not part of images.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_round_trip_through_tar() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/f"), b"hi").unwrap();
        crate::unpack::mknod(&src.join("gone"), libc::S_IFCHR, 0).unwrap();
        crate::unpack::set_xattr(&src.join("d"), OPAQUE_XATTR, b"y").unwrap();
        let tarball = tar_dir(&src, Vec::new()).unwrap();
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&tarball[..]);
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert!(names.contains(&".wh.gone".to_string()), "{names:?}");
        assert!(names.contains(&"d/.wh..wh..opq".to_string()), "{names:?}");
        let dst = t.path().join("dst");
        fs::create_dir(&dst).unwrap();
        crate::unpack::unpack(&tarball[..], &dst).unwrap();
        assert!(fs::symlink_metadata(dst.join("gone"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert_eq!(
            get_xattr(&dst.join("d"), OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(fs::read(dst.join("d/f")).unwrap(), b"hi");
    }
}
