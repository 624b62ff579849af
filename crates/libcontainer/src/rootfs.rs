//! The container's root filesystem, built inside its new mount namespace:
//! root propagation, the spec's mounts (bind, proc, sysfs, tmpfs, devpts,
//! mqueue, cgroup), /dev nodes and symlinks, pivot_root, and afterwards
//! sysctls, read-only and masked paths and a read-only root.
//! Every destination is resolved with `secure_join`, so symlinks in the
//! image cannot redirect a mount outside the rootfs.

use crate::sys::{self, secure_join};
use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};
use std::path::{Path, PathBuf};

/// Parsed mount options: flags for mount(2), propagation changes applied
/// afterwards, and the leftover filesystem data string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MountOpts {
    pub flags: libc::c_ulong,
    pub propagation: Vec<libc::c_ulong>,
    pub data: String,
}

pub fn propagation_flag(s: &str) -> Option<libc::c_ulong> {
    Some(match s {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

pub fn parse_options(opts: &[String]) -> MountOpts {
    let mut o = MountOpts::default();
    let mut data = Vec::new();
    for opt in opts {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "defaults" => (0, 0),
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "silent" => (libc::MS_SILENT, 0),
            "loud" => (0, libc::MS_SILENT),
            // Accepted and ignored, as runc's recursive/idmap extensions we
            // do not implement would otherwise end up as fs data.
            "tmpcopyup" | "rro" | "rrw" | "rnosuid" | "rnodev" | "rnoexec" | "idmap" | "ridmap" => {
                (0, 0)
            }
            p => {
                if let Some(f) = propagation_flag(p) {
                    o.propagation.push(f);
                } else {
                    data.push(p.to_string());
                }
                (0, 0)
            }
        };
        o.flags = (o.flags & !clear) | set;
    }
    o.data = data.join(",");
    o
}

/// What the init needs to know about the host while building the rootfs.
pub struct Ctx<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub new_cgroupns: bool,
    pub in_userns: bool,
    pub cgroup: Option<&'a libcgroups::Manager>,
}

/// Before the spec's mounts: propagation of `/` and rootfs as a mount point.
pub fn prepare_root(ctx: &Ctx) -> Result<()> {
    let linux = ctx.spec.linux().as_ref();
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
        .unwrap_or(libc::MS_SLAVE | libc::MS_REC);
    sys::mount(None, Path::new("/"), None, prop, None).context("setting / propagation")?;
    if prop & libc::MS_SHARED != 0 {
        make_parent_private(ctx.rootfs)?;
    }
    sys::mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        Some("bind"),
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .with_context(|| format!("bind-mounting rootfs {}", ctx.rootfs.display()))?;
    Ok(())
}

/// pivot_root refuses a new root whose parent mount is shared.
fn make_parent_private(rootfs: &Path) -> Result<()> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut best = PathBuf::from("/");
    for l in mi.lines() {
        if let Some(mp) = l.split(' ').nth(4) {
            let mp = Path::new(mp);
            if rootfs.starts_with(mp) && mp.as_os_str().len() > best.as_os_str().len() {
                best = mp.to_path_buf();
            }
        }
    }
    sys::mount(None, &best, None, libc::MS_PRIVATE, None)
        .context("making rootfs parent mount private")
}

/// Performs every mount of config.json, then /dev nodes and symlinks.
pub fn mount_all(ctx: &Ctx) -> Result<()> {
    for m in ctx.spec.mounts().iter().flatten() {
        mount_one(ctx, m).with_context(|| format!("mount {}", m.destination().display()))?;
    }
    setup_dev(ctx)?;
    Ok(())
}

fn mount_one(ctx: &Ctx, m: &Mount) -> Result<()> {
    let typ = m.typ().as_deref().unwrap_or("none");
    let o = parse_options(m.options().as_deref().unwrap_or_default());
    let dest = secure_join(ctx.rootfs, m.destination())?;
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(ctx, &dest, &o);
    }
    if o.flags & libc::MS_BIND != 0 || typ == "bind" {
        let src = m.source().as_ref().context("bind mount without a source")?;
        let src = if src.is_absolute() {
            src.clone()
        } else {
            ctx.bundle.join(src)
        };
        let md =
            std::fs::metadata(&src).with_context(|| format!("bind source {}", src.display()))?;
        make_target(&dest, md.is_dir())?;
        sys::mount(
            Some(&src),
            &dest,
            Some("bind"),
            o.flags & (libc::MS_BIND | libc::MS_REC),
            None,
        )?;
        let extra = o.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        if extra != 0 {
            remount(&dest, extra | libc::MS_BIND)?;
        }
    } else {
        make_target(&dest, true)?;
        let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let r = sys::mount(Some(&src), &dest, Some(typ), o.flags, Some(&o.data));
        match r {
            Ok(()) => {}
            // A sysfs bound to the host netns cannot be mounted in a user
            // namespace: fall back to binding the host's, as runc does.
            Err(e) if typ == "sysfs" && e.raw_os_error() == Some(libc::EPERM) => {
                sys::mount(
                    Some(Path::new("/sys")),
                    &dest,
                    Some("bind"),
                    libc::MS_BIND | libc::MS_REC,
                    None,
                )?;
                remount(&dest, (o.flags & !libc::MS_REMOUNT) | libc::MS_BIND)?;
            }
            Err(e) => return Err(e).with_context(|| format!("mounting {typ}")),
        }
    }
    for p in &o.propagation {
        sys::mount(None, &dest, None, *p, None).context("setting mount propagation")?;
    }
    Ok(())
}

/// Remounts a bind mount with `flags`, keeping flags the kernel locks in
/// user namespaces (nosuid, nodev, noexec, atime) when it insists.
fn remount(dest: &Path, flags: libc::c_ulong) -> Result<()> {
    let f = flags | libc::MS_REMOUNT;
    match sys::mount(None, dest, None, f, None) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let c = sys::cstr(dest)?;
            // SAFETY: statvfs fills the zeroed struct; c is a valid C string.
            let locked = unsafe {
                let mut st: libc::statvfs = std::mem::zeroed();
                if libc::statvfs(c.as_ptr(), &mut st) != 0 {
                    return Err(e.into());
                }
                st.f_flag
            };
            let keep = locked
                & (libc::ST_NOSUID
                    | libc::ST_NODEV
                    | libc::ST_NOEXEC
                    | libc::ST_NOATIME
                    | libc::ST_NODIRATIME
                    | libc::ST_RELATIME);
            sys::mount(None, dest, None, f | keep as libc::c_ulong, None).context("remounting")
        }
        Err(e) => Err(e).context("remounting"),
    }
}

fn make_target(dest: &Path, dir: bool) -> Result<()> {
    if dir {
        std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    } else if std::fs::symlink_metadata(dest).is_err() {
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    }
    Ok(())
}

fn mount_cgroup(ctx: &Ctx, dest: &Path, o: &MountOpts) -> Result<()> {
    let flags = o.flags | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let ro = flags & libc::MS_RDONLY != 0;
    make_target(dest, true)?;
    let mgr = ctx.cgroup;
    if libcgroups::detect() == libcgroups::Mode::V2 {
        if ctx.new_cgroupns {
            sys::mount(
                Some(Path::new("cgroup2")),
                dest,
                Some("cgroup2"),
                flags,
                None,
            )?;
        } else if let Some(m) = mgr {
            let host = m.dir("").context("cgroup v2 dir")?;
            sys::mount(
                Some(host),
                dest,
                Some("bind"),
                libc::MS_BIND | libc::MS_REC,
                None,
            )?;
            if ro {
                remount(
                    dest,
                    libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                )?;
            }
        }
        return Ok(());
    }
    // v1/hybrid: a tmpfs with one directory per hierarchy.
    sys::mount(
        Some(Path::new("tmpfs")),
        dest,
        Some("tmpfs"),
        flags & !libc::MS_RDONLY,
        Some("mode=755"),
    )?;
    let hier = libcgroups::v1_hierarchies()?;
    for h in &hier {
        let name = h.controllers.join(",");
        let sub = dest.join(name.strip_prefix("name=").unwrap_or(&name));
        std::fs::create_dir_all(&sub)?;
        if ctx.new_cgroupns {
            sys::mount(
                Some(Path::new("cgroup")),
                &sub,
                Some("cgroup"),
                flags,
                Some(&name),
            )
            .with_context(|| format!("mounting cgroup {name}"))?;
        } else {
            let Some(m) = mgr else { continue };
            let Some((_, host)) = m.dirs().iter().find(|(c, _)| *c == h.controllers) else {
                continue;
            };
            sys::mount(
                Some(host),
                &sub,
                Some("bind"),
                libc::MS_BIND | libc::MS_REC,
                None,
            )
            .with_context(|| format!("binding cgroup {}", host.display()))?;
            remount(&sub, (flags & !libc::MS_REMOUNT) | libc::MS_BIND)?;
        }
        // Co-mounted controllers get per-controller symlinks (cpu -> cpu,cpuacct).
        if h.controllers.len() > 1 {
            for c in &h.controllers {
                let _ = std::os::unix::fs::symlink(&name, dest.join(c));
            }
        }
    }
    // Like runc, the tmpfs itself stays writable (root-only, 0755); the
    // hierarchies under it carry the read-only flag.
    let _ = ro;
    Ok(())
}

/// The devices every container gets (as runc): null, zero, full, random,
/// urandom, tty.
pub fn default_devices() -> Vec<(&'static str, i64, i64)> {
    vec![
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

fn setup_dev(ctx: &Ctx) -> Result<()> {
    let dev = secure_join(ctx.rootfs, Path::new("/dev"))?;
    std::fs::create_dir_all(&dev)?;
    let mut devs: Vec<(PathBuf, LinuxDeviceType, i64, i64, u32, u32, u32)> = default_devices()
        .into_iter()
        .map(|(p, ma, mi)| (PathBuf::from(p), LinuxDeviceType::C, ma, mi, 0o666, 0, 0))
        .collect();
    for d in ctx
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        devs.retain(|x| x.0 != *d.path());
        devs.push(spec_dev(d));
    }
    for (path, ty, major, minor, mode, uid, gid) in devs {
        let dest = secure_join(ctx.rootfs, &path)?;
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p)?;
        }
        let kind = match ty {
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            _ => libc::S_IFCHR,
        };
        if ctx.in_userns {
            // mknod is not allowed in a user namespace: bind the host node.
            make_target(&dest, false)?;
            sys::mount(Some(&path), &dest, Some("bind"), libc::MS_BIND, None)
                .with_context(|| format!("binding device {}", path.display()))?;
            continue;
        }
        let _ = std::fs::remove_file(&dest);
        let c = sys::cstr(&dest)?;
        // SAFETY: c is a valid C string; makedev packs plain integers.
        let r = unsafe {
            libc::mknod(
                c.as_ptr(),
                kind | (mode & 0o7777),
                libc::makedev(major as u32, minor as u32),
            )
        };
        if r != 0 {
            bail!(
                "mknod {}: {}",
                dest.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: as above; mknod's mode is filtered by the umask, so set it.
        unsafe {
            libc::chmod(c.as_ptr(), mode & 0o7777);
            libc::chown(c.as_ptr(), uid, gid);
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }
    if Path::new("/proc/kcore").exists() {
        let _ = std::os::unix::fs::symlink("/proc/kcore", dev.join("core"));
    }
    if dev.join("pts/ptmx").exists() {
        let _ = std::fs::remove_file(dev.join("ptmx"));
        std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx")).context("symlinking /dev/ptmx")?;
    }
    Ok(())
}

fn spec_dev(d: &LinuxDevice) -> (PathBuf, LinuxDeviceType, i64, i64, u32, u32, u32) {
    (
        d.path().clone(),
        d.typ(),
        d.major(),
        d.minor(),
        d.file_mode().unwrap_or(0o666),
        d.uid().unwrap_or(0),
        d.gid().unwrap_or(0),
    )
}

/// pivot_root into `rootfs` and detach the old root (pivot to "." trick:
/// no directory for the old root is needed inside the image).
pub fn pivot(rootfs: &Path) -> Result<()> {
    let old = sys::open(Path::new("/"), libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
    let new = sys::open(rootfs, libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
    // SAFETY: fchdir on fds we just opened.
    if unsafe { libc::fchdir(new) } != 0 {
        bail!("chdir to rootfs: {}", std::io::Error::last_os_error());
    }
    sys::pivot_root(Path::new("."), Path::new(".")).context("pivot_root")?;
    // SAFETY: as above.
    if unsafe { libc::fchdir(old) } != 0 {
        bail!("chdir to old root: {}", std::io::Error::last_os_error());
    }
    // Keep the unmount from propagating back to the host.
    sys::mount(
        None,
        Path::new("."),
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )
    .context("old root rslave")?;
    sys::umount2(Path::new("."), libc::MNT_DETACH).context("detaching old root")?;
    std::env::set_current_dir("/").context("chdir /")?;
    sys::close(old);
    sys::close(new);
    Ok(())
}

/// After pivot_root: sysctls, readonly and masked paths, read-only root.
pub fn finalize(spec: &Spec) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    if let Some(prop) = linux
        .rootfs_propagation()
        .as_deref()
        .and_then(propagation_flag)
    {
        sys::mount(None, Path::new("/"), None, prop, None).context("rootfs propagation")?;
    }
    for (k, v) in linux.sysctl().iter().flatten() {
        if k.contains("..") || k.starts_with('.') || k.contains('/') {
            bail!("sysctl key {k:?} is malformed");
        }
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&p, v).with_context(|| format!("sysctl {k}={v}"))?;
    }
    for p in linux.readonly_paths().iter().flatten() {
        let path = Path::new(p);
        match sys::mount(
            Some(path),
            path,
            Some("bind"),
            libc::MS_BIND | libc::MS_REC,
            None,
        ) {
            Ok(()) => remount(path, libc::MS_BIND | libc::MS_RDONLY | libc::MS_REC)
                .with_context(|| format!("readonly path {p}"))?,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("readonly path {p}")),
        }
    }
    for p in linux.masked_paths().iter().flatten() {
        let path = Path::new(p);
        let Ok(md) = std::fs::metadata(path) else {
            continue;
        };
        let r = if md.is_dir() {
            sys::mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                libc::MS_RDONLY,
                None,
            )
        } else {
            sys::mount(
                Some(Path::new("/dev/null")),
                path,
                Some("bind"),
                libc::MS_BIND,
                None,
            )
        };
        r.with_context(|| format!("masking {p}"))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount(Path::new("/"), libc::MS_BIND | libc::MS_RDONLY).context("read-only root")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_options(&[
            "nosuid".into(),
            "strictatime".into(),
            "mode=755".into(),
            "size=65536k".into(),
            "rslave".into(),
            "ro".into(),
            "rw".into(),
        ]);
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert_eq!(o.propagation, vec![libc::MS_SLAVE | libc::MS_REC]);
    }
}
