//! Unpacks one layer tarball into its own directory, safely.
//!
//! Every entry path is normalised inside the layer directory: `..`
//! components are refused, and no entry may be written through a symlink or
//! hardlink to a file outside (each parent is checked with lstat, nothing is
//! ever followed). Symlinks themselves are stored as-is: they are only ever
//! resolved inside the container's root. Whiteouts become overlayfs
//! whiteouts: `.wh.NAME` → a 0:0 character device, `.wh..wh..opq` → the
//! `trusted.overlay.opaque` xattr on the directory.

use crate::{Error, IoContext, Result};
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

fn unsafe_entry(path: &Path, reason: &str) -> Error {
    Error::UnsafeEntry {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Turns a tar entry name into a relative path with only normal components.
pub fn sanitize(raw: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err(unsafe_entry(raw, "path contains '..'")),
            Component::Prefix(_) => return Err(unsafe_entry(raw, "path has a prefix")),
        }
    }
    Ok(out)
}

/// Makes sure every parent of `rel` under `root` is a real directory (creating
/// missing ones), never a symlink.
fn ensure_parents(root: &Path, rel: &Path) -> Result<()> {
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_entry(
                        rel,
                        &format!(
                            "parent {:?} is a symlink; refusing to write through it",
                            cur.strip_prefix(root).unwrap_or(&cur)
                        ),
                    ))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(unsafe_entry(
                        rel,
                        &format!(
                            "parent {:?} is not a directory",
                            cur.strip_prefix(root).unwrap_or(&cur)
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&cur)
                        .ctx(|| format!("creating {}", cur.display()))?;
                }
                Err(e) => {
                    return Err(Error::Io {
                        context: format!("lstat {}", cur.display()),
                        source: e,
                    })
                }
            }
        }
    }
    Ok(())
}

/// Removes whatever is at `p` (never following a symlink).
fn remove_existing(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).ctx(|| format!("removing {}", p.display())),
        Ok(_) => fs::remove_file(p).ctx(|| format!("removing {}", p.display())),
        Err(_) => Ok(()),
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

pub fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path; mknod does not retain it.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cpath(p);
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated strings and a live buffer of value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = cpath(p);
    let n = CString::new(name).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: valid strings; buf is writable for buf.len() bytes.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    Some(buf[..r as usize].to_vec())
}

fn lchown(p: &Path, uid: u64, gid: u64) {
    let c = cpath(p);
    // SAFETY: valid NUL-terminated path. Failure (not root) is tolerated.
    unsafe {
        libc::lchown(c.as_ptr(), uid as libc::uid_t, gid as libc::gid_t);
    }
}

fn set_mtime(p: &Path, secs: u64) {
    let c = cpath(p);
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: valid path and a two-element timespec array as utimensat requires.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
    }
}

/// Statistics of one unpack.
#[derive(Debug, Default)]
pub struct UnpackStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
}

/// Unpacks an uncompressed tar stream into `dest` (an existing directory
/// owned by the caller, ideally empty and private).
pub fn unpack<R: Read>(reader: R, dest: &Path) -> Result<UnpackStats> {
    let mut ar = tar::Archive::new(reader);
    let mut stats = UnpackStats::default();
    let mut dir_mtimes = Vec::new();
    for entry in ar.entries().ctx(|| "reading layer tar".into())? {
        let mut entry = entry.ctx(|| "reading layer tar entry".into())?;
        let raw = entry
            .path()
            .ctx(|| "reading entry name".into())?
            .into_owned();
        let rel = sanitize(&raw)?;
        if rel.as_os_str().is_empty() {
            continue; // the layer root itself
        }
        stats.entries += 1;
        ensure_parents(dest, &rel)?;
        let target = dest.join(&rel);
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == OPAQUE_MARKER {
            let dir = target.parent().unwrap_or(dest);
            set_xattr(dir, OPAQUE_XATTR, b"y")
                .ctx(|| format!("marking {} opaque", dir.display()))?;
            stats.opaque_dirs += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(unsafe_entry(&raw, "malformed whiteout name"));
            }
            let wpath = target.with_file_name(hidden);
            remove_existing(&wpath)?;
            mknod(&wpath, libc::S_IFCHR, 0)
                .ctx(|| format!("creating whiteout {}", wpath.display()))?;
            stats.whiteouts += 1;
            continue;
        }
        let h = entry.header().clone();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let uid = h.uid().unwrap_or(0);
        let gid = h.gid().unwrap_or(0);
        let mtime = h.mtime().unwrap_or(0);
        let et = h.entry_type();
        use tar::EntryType as T;
        match et {
            T::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        remove_existing(&target)?;
                        fs::create_dir(&target).ctx(|| format!("creating {}", target.display()))?;
                    }
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .ctx(|| format!("chmod {}", target.display()))?;
                lchown(&target, uid, gid);
                dir_mtimes.push((target, mtime));
                continue;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                remove_existing(&target)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .ctx(|| format!("creating {}", target.display()))?;
                io::copy(&mut entry, &mut f).ctx(|| format!("writing {}", rel.display()))?;
                drop(f);
                lchown(&target, uid, gid);
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .ctx(|| format!("chmod {}", target.display()))?;
            }
            T::Symlink => {
                let link = entry
                    .link_name()
                    .ctx(|| "reading symlink target".into())?
                    .ok_or_else(|| unsafe_entry(&raw, "symlink without a target"))?
                    .into_owned();
                remove_existing(&target)?;
                symlink(&link, &target).ctx(|| format!("symlink {}", target.display()))?;
                lchown(&target, uid, gid);
            }
            T::Link => {
                let link = entry
                    .link_name()
                    .ctx(|| "reading hardlink target".into())?
                    .ok_or_else(|| unsafe_entry(&raw, "hardlink without a target"))?
                    .into_owned();
                let lrel = sanitize(&link).map_err(|_| {
                    unsafe_entry(&raw, &format!("hardlink target {link:?} escapes the layer"))
                })?;
                ensure_parents(dest, &lrel).map_err(|_| {
                    unsafe_entry(
                        &raw,
                        &format!("hardlink target {link:?} goes through a symlink"),
                    )
                })?;
                let src = dest.join(&lrel);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() || m.file_type().is_symlink() => {}
                    _ => {
                        return Err(unsafe_entry(
                            &raw,
                            &format!("hardlink target {link:?} is not a file in this layer"),
                        ))
                    }
                }
                remove_existing(&target)?;
                fs::hard_link(&src, &target)
                    .ctx(|| format!("hardlink {} -> {}", target.display(), src.display()))?;
                continue;
            }
            T::Char | T::Block | T::Fifo => {
                let kind = match et {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                remove_existing(&target)?;
                mknod(&target, kind | mode, libc::makedev(major, minor))
                    .ctx(|| format!("mknod {}", target.display()))?;
                lchown(&target, uid, gid);
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            other => {
                return Err(unsafe_entry(
                    &raw,
                    &format!("unsupported tar entry type {other:?}"),
                ))
            }
        }
        set_mtime(&target, mtime);
    }
    // Directory times last: writing children changed them.
    for (d, t) in dir_mtimes.into_iter().rev() {
        set_mtime(&d, t);
    }
    Ok(stats)
}

/// Wraps `r` in the decompressor its first bytes call for (gzip, zstd or none).
pub fn decompress<'a, R: Read + 'a>(r: R) -> Result<Box<dyn Read + 'a>> {
    let mut br = io::BufReader::new(r);
    let head = io::BufRead::fill_buf(&mut br)
        .ctx(|| "reading layer header".into())?
        .to_vec();
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(br)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(
            zstd::stream::read::Decoder::with_buffer(br).ctx(|| "starting zstd".into())?,
        ))
    } else {
        Ok(Box::new(br))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..", so write the raw name for hostile tests.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(kind);
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let layer = t.path().join("layer");
        let outside = t.path().join("outside");
        fs::create_dir(&layer).unwrap();
        fs::create_dir(&outside).unwrap();
        (t, layer, outside)
    }

    #[test]
    fn dotdot_is_refused() {
        let (_t, layer, outside) = setup();
        let data = tar_of(|b| file(b, "../outside/pwned", b"x"));
        let e = unpack(&data[..], &layer).unwrap_err();
        assert!(e.to_string().contains("'..'"), "{e}");
        assert!(!outside.join("pwned").exists());
    }

    #[test]
    fn writing_through_escaping_symlinks_is_refused() {
        for target in ["/", "../outside", "../../../../../../"] {
            let (_t, layer, outside) = setup();
            let tgt = if target == "../outside" {
                outside.display().to_string()
            } else {
                target.to_string()
            };
            let data = tar_of(|b| {
                link(b, tar::EntryType::Symlink, "evil", &tgt);
                file(b, "evil/pwned", b"x");
            });
            let e = unpack(&data[..], &layer).unwrap_err();
            assert!(e.to_string().contains("symlink"), "{e}");
            assert!(!outside.join("pwned").exists());
            assert!(!Path::new("/pwned").exists());
        }
    }

    #[test]
    fn escaping_hardlink_is_refused() {
        let (_t, layer, _outside) = setup();
        let data = tar_of(|b| link(b, tar::EntryType::Link, "h", "../../etc/passwd"));
        let e = unpack(&data[..], &layer).unwrap_err();
        assert!(e.to_string().contains("escapes"), "{e}");
        let data = tar_of(|b| link(b, tar::EntryType::Link, "h", "/etc/passwd"));
        let e = unpack(&data[..], &layer).unwrap_err();
        assert!(e.to_string().contains("not a file in this layer"), "{e}");
        assert!(!layer.join("h").exists());
    }

    #[test]
    fn absolute_paths_land_inside() {
        let (_t, layer, _o) = setup();
        let data = tar_of(|b| {
            file(b, "/etc/hostname", b"box");
            link(b, tar::EntryType::Symlink, "bin/sh", "/bin/busybox");
            link(b, tar::EntryType::Link, "etc/hn2", "/etc/hostname");
        });
        unpack(&data[..], &layer).unwrap();
        assert_eq!(fs::read(layer.join("etc/hostname")).unwrap(), b"box");
        assert_eq!(
            fs::read_link(layer.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(fs::read(layer.join("etc/hn2")).unwrap(), b"box");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        use std::os::unix::fs::FileTypeExt;
        let (_t, layer, _o) = setup();
        let data = tar_of(|b| {
            file(b, "etc/.wh.gone", b"");
            file(b, "var/.wh..wh..opq", b"");
            file(b, "var/new", b"n");
        });
        // mknod of a whiteout and trusted.* xattrs need root (the suite runs as root).
        unpack(&data[..], &layer).unwrap();
        let m = fs::symlink_metadata(layer.join("etc/gone")).unwrap();
        assert!(m.file_type().is_char_device());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(m.rdev(), 0);
        assert_eq!(
            get_xattr(&layer.join("var"), OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert!(!layer.join("var/.wh..wh..opq").exists());
    }
}
