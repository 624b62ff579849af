//! overlayfs mounts of image layers (read-only lowers, a private upper).

use crate::{Error, Result};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Mounts `lowers` (bottom first) with `upper`/`work` at `target`. With no
/// lower layer (a `scratch` image) `empty` stands in as the single lower.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    empty: &Path,
) -> Result<()> {
    mount_overlay_opts(lowers, upper, work, target, empty, false)
}

/// `mount_overlay`, optionally `volatile`: the overlay then skips syncing
/// the upper filesystem (on every fsync and at unmount, which otherwise
/// syncs the whole host filesystem). Only for throwaway upper dirs, which a
/// host crash may leave inconsistent. Falls back to a normal mount on
/// kernels without the option (< 5.10).
pub fn mount_overlay_opts(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    empty: &Path,
    volatile: bool,
) -> Result<()> {
    // overlayfs lists the top-most lower first.
    let mut lower: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    if lower.is_empty() {
        lower.push(empty.display().to_string());
    }
    for l in &lower {
        if l.contains(':') || l.contains(',') {
            return Err(Error::Invalid(format!(
                "layer path {l:?} cannot be used in an overlay mount"
            )));
        }
    }
    let mut opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if volatile {
        opts.push_str(",volatile");
    }
    if opts.len() >= 4000 {
        return Err(Error::Invalid(format!(
            "too many layers ({}) for one overlay mount",
            lower.len()
        )));
    }
    let src = CString::new("overlay").unwrap();
    let fstype = CString::new("overlay").unwrap();
    let tgt = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid("mount target has a NUL byte".into()))?;
    let data =
        CString::new(opts).map_err(|_| Error::Invalid("mount options have a NUL byte".into()))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if volatile && e.raw_os_error() == Some(libc::EINVAL) {
            return mount_overlay_opts(lowers, upper, work, target, empty, false);
        }
        return Err(Error::Io {
            context: format!("mounting overlay at {}", target.display()),
            source: e,
        });
    }
    Ok(())
}

/// Lazily unmounts `target`; not mounted is fine.
pub fn unmount(target: &Path) -> Result<()> {
    let tgt = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid("mount target has a NUL byte".into()))?;
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(Error::Io {
                context: format!("unmounting {}", target.display()),
                source: e,
            });
        }
    }
    Ok(())
}

/// Whether `p` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    let s = p.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(s.as_str())))
        .unwrap_or(false)
}
