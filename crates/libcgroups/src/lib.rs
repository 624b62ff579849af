//! libcgroups: Linux control groups for Ferrovisor's OCI runtime.
//!
//! Owns the host side of cgroups: detecting the layout (v1, hybrid, v2),
//! creating a container's cgroup in every hierarchy, applying the OCI
//! `linux.resources` limits, moving processes in, reading stats and removing
//! the cgroup again. It speaks only to the cgroupfs files (no systemd), and
//! on v2 to bpf(2) for device rules (see [`devices`]).
//!
//! Dependencies: `oci-spec` for the resource types (the same types the runtime
//! parses config.json into, so no conversion layer), `serde` for stats JSON.

pub mod devices;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};
use serde::Serialize;
use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroup filesystems are mounted on every distribution we know.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// `statfs` f_type of a cgroup2 filesystem.
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `statfs` f_type of a tmpfs (the v1/hybrid /sys/fs/cgroup).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroups: {0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cgroup layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only v1 hierarchies.
    V1,
    /// v1 controllers plus an (empty-of-controllers) v2 hierarchy at
    /// /sys/fs/cgroup/unified. Controllers are used through v1.
    Hybrid,
    /// The unified hierarchy only.
    V2,
}

/// The filesystem magic (`statfs` f_type) of `path`, if it can be statted.
pub fn fs_magic(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct we own; c is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        (libc::statfs(c.as_ptr(), &mut st) == 0).then_some(st.f_type as i64)
    }
}

/// The layout implied by the filesystem magics of the cgroup root and of
/// `<root>/unified` (None: not there).
pub fn mode_from_magic(root: Option<i64>, unified: Option<i64>) -> Mode {
    if root == Some(CGROUP2_SUPER_MAGIC) {
        Mode::V2
    } else if unified == Some(CGROUP2_SUPER_MAGIC) {
        Mode::Hybrid
    } else {
        Mode::V1
    }
}

/// Detects the layout of cgroup filesystems mounted under `root`.
pub fn detect_at(root: &Path) -> Mode {
    let r = fs_magic(root);
    if r == Some(CGROUP2_SUPER_MAGIC) {
        return Mode::V2;
    }
    mode_from_magic(r, fs_magic(&root.join("unified")))
}

/// Detects the host's cgroup layout.
pub fn detect() -> Mode {
    detect_at(Path::new(CGROUP_ROOT))
}

/// One mounted v1 hierarchy.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    /// The hierarchy path mounted there (not "/" inside a cgroup namespace).
    pub root: PathBuf,
    /// Controllers (and `name=` options) bound to this hierarchy.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    pub fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }
}

/// Lists the v1 hierarchies from /proc/self/mountinfo (one per superblock).
pub fn v1_hierarchies() -> Result<Vec<Hierarchy>> {
    let p = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(p).map_err(|e| io_err(p, e))?;
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut post_f = post.split(' ');
        if post_f.next() != Some("cgroup") {
            continue;
        }
        let super_opts = post_f.nth(1).unwrap_or("");
        let pre_f: Vec<&str> = pre.split(' ').collect();
        if pre_f.len() < 5 {
            continue;
        }
        let controllers: Vec<String> = super_opts
            .split(',')
            .filter(|o| {
                !matches!(*o, "rw" | "ro" | "xattr" | "clone_children" | "noprefix")
                    && !o.starts_with("release_agent=")
            })
            .map(str::to_string)
            .collect();
        if out.iter().any(|h| h.controllers == controllers) {
            continue;
        }
        out.push(Hierarchy {
            mountpoint: PathBuf::from(unescape(pre_f[4])),
            root: PathBuf::from(unescape(pre_f[3])),
            controllers,
        });
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t")
}

/// Resource usage of one cgroup, shaped like runc's `events --stats` data.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CpuStats {
    /// Total CPU time, nanoseconds.
    pub usage_total: u64,
    pub usage_user: u64,
    pub usage_kernel: u64,
    pub throttled_periods: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MemoryStats {
    pub usage: u64,
    pub max_usage: u64,
    /// u64::MAX when unlimited.
    pub limit: u64,
    pub failcnt: u64,
    /// Processes the kernel OOM killer killed in this cgroup.
    pub oom_kill: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PidsStats {
    pub current: u64,
    /// 0 when unlimited.
    pub limit: u64,
}

/// A container's cgroup, across all hierarchies.
#[derive(Debug, Clone)]
pub struct Manager {
    mode: Mode,
    /// Path inside each hierarchy, absolute ("/ferro/ctr").
    path: PathBuf,
    /// v1: (controllers, directory) per hierarchy. v2: one entry.
    dirs: Vec<(Vec<String>, PathBuf)>,
    /// Where the unified (v2) hierarchy is mounted: the cgroup root on v2,
    /// `<root>/unified` on hybrid hosts, none on pure v1.
    v2_mount: Option<PathBuf>,
    /// This cgroup's directory in the unified hierarchy. On hybrid hosts it
    /// holds no controllers, but runc joins it too (`0::/<path>` in
    /// /proc/PID/cgroup), and cgroup.kill works there.
    unified: Option<PathBuf>,
    /// v2: enable the root's controllers down to this cgroup on create.
    delegate: bool,
}

/// Turns the spec's `cgroupsPath` into an absolute path inside the
/// hierarchies: absolute paths are kept, relative ones hang off the root, and
/// none means `/ferro/<id>`.
pub fn cgroup_path(spec: Option<&Path>, id: &str) -> Result<PathBuf> {
    let p = match spec {
        None => PathBuf::from("/ferro").join(id),
        Some(p) if p.as_os_str().is_empty() => PathBuf::from("/ferro").join(id),
        Some(p) => {
            let s = p.to_string_lossy();
            if s.contains(':') && !s.starts_with('/') {
                return Err(Error::Msg(format!(
                    "cgroupsPath {s:?} is a systemd slice:prefix:name path; only cgroupfs paths are supported (do not pass --systemd-cgroup)"
                )));
            }
            PathBuf::from("/").join(p)
        }
    };
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::Msg(format!(
            "cgroupsPath {} must not contain '..'",
            p.display()
        )));
    }
    Ok(p)
}

/// `path` relative to a hierarchy's root, refusing `..`.
fn rel_path(path: &Path) -> Result<&Path> {
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::Msg(format!(
            "cgroup path {} must not contain '..'",
            path.display()
        )));
    }
    Ok(path.strip_prefix("/").unwrap_or(path))
}

/// Enables the resource controllers the v2 root offers in every
/// `cgroup.subtree_control` from the root down to `dir`'s parent (v2 only
/// lets a cgroup use controllers its parent delegates). Controllers already
/// enabled are not written again: each write walks the subtree.
fn enable_v2_controllers(mount: &Path, dir: &Path) -> Result<()> {
    let avail = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    let want: Vec<&str> = avail
        .split_whitespace()
        .filter(|c| matches!(*c, "cpu" | "cpuset" | "memory" | "pids" | "io" | "hugetlb"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    let mut cur = mount.to_path_buf();
    for comp in rel.components() {
        let ctl = cur.join("cgroup.subtree_control");
        let on = fs::read_to_string(&ctl).unwrap_or_default();
        let on: Vec<&str> = on
            .split_whitespace()
            .map(|c| c.trim_start_matches('+'))
            .collect();
        let missing: Vec<String> = want
            .iter()
            .filter(|c| !on.contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() && fs::write(&ctl, missing.join(" ")).is_err() {
            // One refused controller fails the whole write; the rest are
            // still wanted, so go one by one (best effort, as runc).
            for c in &missing {
                let _ = fs::write(&ctl, c);
            }
        }
        cur.push(comp);
    }
    Ok(())
}

/// Handles, opened by the runtime before it clones the container's init
/// (or an exec'd process), with which that process joins the cgroup itself.
///
/// Moving a whole process (`cgroup.procs`) takes the cgroup threadgroup
/// lock for writing, whose first writer waits for an RCU grace period
/// (5-20 ms). A single-threaded process that writes `0` to a v1 `tasks`
/// file moves only itself, which the kernel does without that lock; on the
/// unified hierarchy `clone3(CLONE_INTO_CGROUP)` places the child at birth.
/// The files are opened here, by the runtime, because cgroup v1 checks the
/// opener's credentials (the child may already be in a user namespace).
#[derive(Debug)]
pub struct Join {
    tasks: Vec<(PathBuf, std::os::fd::OwnedFd)>,
    unified_dir: Option<std::os::fd::OwnedFd>,
    unified_procs: Option<(PathBuf, std::os::fd::OwnedFd)>,
}

impl Join {
    /// The unified cgroup's directory fd, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn cgroup_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.unified_dir.as_ref().map(|f| f.as_raw_fd())
    }

    /// Run in the new, single-threaded child: joins every v1 hierarchy
    /// through `tasks`, and the unified one through `cgroup.procs` unless
    /// `placed_v2` (clone3 already put it there). Allocates nothing unless
    /// it fails.
    pub fn join_self(&self, placed_v2: bool) -> Result<()> {
        let procs = self.unified_procs.iter().filter(|_| !placed_v2);
        for (path, fd) in self.tasks.iter().chain(procs) {
            use std::os::fd::AsRawFd;
            // SAFETY: writing one byte from a static buffer to an fd we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io_err(path, io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

fn open_fd(path: &Path, flags: libc::c_int) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Msg(format!("{} contains a NUL byte", path.display())))?;
    // SAFETY: c is NUL-terminated; the returned fd is ours to own.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io_err(path, io::Error::last_os_error()));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

impl Manager {
    /// Describes (does not create) the cgroup at `path` on this host.
    pub fn new(path: &Path) -> Result<Self> {
        let root = Path::new(CGROUP_ROOT);
        match detect_at(root) {
            Mode::V2 => Self::v2(root, path),
            mode => {
                let rel = rel_path(path)?;
                let dirs: Vec<_> = v1_hierarchies()?
                    .into_iter()
                    .map(|h| (h.controllers.clone(), h.mountpoint.join(rel)))
                    .collect();
                if dirs.is_empty() {
                    return Err(Error::Msg("no cgroup hierarchy is mounted".into()));
                }
                let v2_mount = (mode == Mode::Hybrid).then(|| root.join("unified"));
                Ok(Manager {
                    mode,
                    path: path.to_path_buf(),
                    dirs,
                    unified: v2_mount.as_ref().map(|m| m.join(rel)),
                    v2_mount,
                    delegate: false,
                })
            }
        }
    }

    /// A cgroup-v2-only manager for the unified hierarchy mounted at
    /// `mount` (the host's /sys/fs/cgroup on v2 hosts; any cgroup2 mount,
    /// or a directory laid out like one in tests).
    pub fn v2(mount: &Path, path: &Path) -> Result<Self> {
        let dir = mount.join(rel_path(path)?);
        Ok(Manager {
            mode: Mode::V2,
            path: path.to_path_buf(),
            dirs: vec![(Vec::new(), dir.clone())],
            v2_mount: Some(mount.to_path_buf()),
            unified: Some(dir),
            delegate: true,
        })
    }

    /// Whether `create` enables the v2 root's controllers in every
    /// cgroup.subtree_control down to this cgroup (on by default for v2).
    /// Off for a unified hierarchy whose controllers the host uses through
    /// v1 (hybrid), where enabling them would change the host's tree.
    pub fn delegating(mut self, on: bool) -> Self {
        self.delegate = on;
        self
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Host directory of the hierarchy holding `controller` (v2: the one dir).
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        match self.mode {
            Mode::V2 => Some(&self.dirs[0].1),
            _ => self
                .dirs
                .iter()
                .find(|(c, _)| c.iter().any(|x| x == controller))
                .map(|(_, d)| d.as_path()),
        }
    }

    /// All (controllers, host directory) pairs.
    pub fn dirs(&self) -> &[(Vec<String>, PathBuf)] {
        &self.dirs
    }

    /// This cgroup's directory in the unified hierarchy (v2 and hybrid).
    pub fn unified_dir(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// The v1 hierarchies' directories (none on v2).
    fn v1_dirs(&self) -> impl Iterator<Item = &Path> {
        let v1 = self.mode != Mode::V2;
        self.dirs
            .iter()
            .filter(move |_| v1)
            .map(|(_, d)| d.as_path())
    }

    /// Every directory of this cgroup: the v1 ones, then the unified one.
    fn all_dirs(&self) -> impl Iterator<Item = &Path> {
        self.v1_dirs().chain(self.unified.as_deref())
    }

    /// Creates the cgroup directories (and parents) in every hierarchy.
    pub fn create(&self) -> Result<()> {
        for (ctrls, dir) in &self.dirs {
            if self.mode != Mode::V2 && ctrls.iter().any(|c| c == "cpuset") {
                create_cpuset(dir)?;
            } else {
                fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            }
        }
        if let (Some(mount), Some(dir)) = (&self.v2_mount, &self.unified) {
            if self.mode == Mode::V2 {
                if self.delegate {
                    enable_v2_controllers(mount, dir)?;
                }
            } else {
                // Hybrid: controllers are used through v1; like runc, only
                // join the unified hierarchy, delegating nothing there.
                fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            }
        }
        Ok(())
    }

    /// Moves `pid` (a whole process) into the cgroup in every hierarchy.
    /// Each write takes the cgroup threadgroup lock, whose first writer
    /// waits for an RCU grace period; writing all hierarchies at once lets
    /// them share one grace period instead of queueing. A process can avoid
    /// the lock altogether by joining itself: see [`Manager::open_join`].
    pub fn add_task(&self, pid: i32) -> Result<()> {
        let p = pid.to_string();
        let dirs: Vec<&Path> = self.all_dirs().collect();
        if dirs.len() == 1 {
            return write(dirs[0], "cgroup.procs", &p);
        }
        std::thread::scope(|s| {
            // Spawning fails after setns into another pid namespace (exec):
            // then that hierarchy is written inline.
            let hs: Vec<_> = dirs
                .iter()
                .map(|dir| {
                    std::thread::Builder::new()
                        .spawn_scoped(s, || write(dir, "cgroup.procs", &p))
                        .map_err(|_| write(dir, "cgroup.procs", &p))
                })
                .collect();
            hs.into_iter()
                .map(|h| match h {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| Err(Error::Msg("cgroup writer panicked".into()))),
                    Err(r) => r,
                })
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(())
    }

    /// Opens the handles a new process uses to join this (created) cgroup
    /// itself; see [`Join`].
    pub fn open_join(&self) -> Result<Join> {
        let tasks = self
            .v1_dirs()
            .map(|d| {
                let p = d.join("tasks");
                open_fd(&p, libc::O_WRONLY).map(|fd| (p, fd))
            })
            .collect::<Result<Vec<_>>>()?;
        let (unified_dir, unified_procs) = match &self.unified {
            Some(d) => {
                let p = d.join("cgroup.procs");
                (
                    Some(open_fd(d, libc::O_RDONLY | libc::O_DIRECTORY)?),
                    Some((p.clone(), open_fd(&p, libc::O_WRONLY)?)),
                )
            }
            None => (None, None),
        };
        Ok(Join {
            tasks,
            unified_dir,
            unified_procs,
        })
    }

    /// Sends `sig` to every process in the cgroup. SIGKILL goes through
    /// the unified hierarchy's `cgroup.kill` when there is one (atomic:
    /// processes forking meanwhile cannot escape); otherwise each listed
    /// process is signalled.
    pub fn kill(&self, sig: libc::c_int) -> Result<()> {
        if sig == libc::SIGKILL {
            if let Some(d) = &self.unified {
                match write(d, "cgroup.kill", "1") {
                    Ok(()) if self.mode == Mode::V2 => return Ok(()),
                    // Hybrid: also signal what the v1 hierarchies list.
                    Ok(()) => {}
                    // Kernels before 5.14 have no cgroup.kill.
                    Err(_) if !d.join("cgroup.kill").exists() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for p in self.pids()? {
            // SAFETY: kill(2) with integer arguments.
            unsafe { libc::kill(p, sig) };
        }
        Ok(())
    }

    /// Processes in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let dir = self
            .dir("pids")
            .or_else(|| self.dir("memory"))
            .or(self.unified.as_deref())
            .unwrap_or(&self.dirs[0].1);
        let p = dir.join("cgroup.procs");
        match fs::read_to_string(&p) {
            Ok(t) => Ok(t.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&p, e)),
        }
    }

    /// Applies `linux.resources`.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        match self.mode {
            Mode::V2 => self.apply_v2(r),
            _ => self.apply_v1(r),
        }
    }

    fn need(&self, c: &str) -> Result<&Path> {
        self.dir(c).ok_or_else(|| {
            Error::Msg(format!(
                "config.json sets {c} limits but no {c} cgroup controller is mounted"
            ))
        })
    }

    fn apply_v1(&self, r: &LinuxResources) -> Result<()> {
        if let Some(m) = r.memory() {
            let d = self.need("memory")?;
            if let Some(l) = m.limit() {
                let lim = v1_limit(l);
                match m.swap() {
                    Some(s) => {
                        let sw = v1_limit(s);
                        // memsw must stay >= limit at each step; order by direction.
                        if write(d, "memory.limit_in_bytes", &lim).is_err() {
                            write(d, "memory.memsw.limit_in_bytes", &sw)?;
                            write(d, "memory.limit_in_bytes", &lim)?;
                        } else if d.join("memory.memsw.limit_in_bytes").exists() {
                            write(d, "memory.memsw.limit_in_bytes", &sw)?;
                        }
                    }
                    None => write(d, "memory.limit_in_bytes", &lim)?,
                }
            } else if let Some(s) = m.swap() {
                write(d, "memory.memsw.limit_in_bytes", &v1_limit(s))?;
            }
            if let Some(v) = m.reservation() {
                write(d, "memory.soft_limit_in_bytes", &v1_limit(v))?;
            }
            if let Some(v) = m.swappiness() {
                if v > 100 {
                    return Err(Error::Msg(format!("memory swappiness {v} is above 100")));
                }
                write(d, "memory.swappiness", &v.to_string())?;
            }
            if m.disable_oom_killer() == Some(true) {
                write(d, "memory.oom_control", "1")?;
            }
        }
        if let Some(c) = r.cpu() {
            if c.shares().is_some() || c.quota().is_some() || c.period().is_some() {
                let d = self.need("cpu")?;
                if let Some(v) = c.shares() {
                    write(d, "cpu.shares", &v.to_string())?;
                }
                if let Some(v) = c.period() {
                    write(d, "cpu.cfs_period_us", &v.to_string())?;
                }
                if let Some(v) = c.quota() {
                    write(d, "cpu.cfs_quota_us", &v.to_string())?;
                }
            }
            if c.realtime_period().is_some() || c.realtime_runtime().is_some() {
                let d = self.need("cpu")?;
                if let Some(v) = c.realtime_period() {
                    write(d, "cpu.rt_period_us", &v.to_string())?;
                }
                if let Some(v) = c.realtime_runtime() {
                    write(d, "cpu.rt_runtime_us", &v.to_string())?;
                }
            }
            if let Some(v) = c.cpus() {
                write(self.need("cpuset")?, "cpuset.cpus", v)?;
            }
            if let Some(v) = c.mems() {
                write(self.need("cpuset")?, "cpuset.mems", v)?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            write(self.need("pids")?, "pids.max", &v)?;
        }
        if let Some(b) = r.block_io() {
            let d = self.need("blkio")?;
            if let Some(w) = b.weight() {
                write(d, "blkio.weight", &w.to_string())?;
            }
            if let Some(w) = b.leaf_weight() {
                write(d, "blkio.leaf_weight", &w.to_string())?;
            }
            for wd in b.weight_device().iter().flatten() {
                if let Some(w) = wd.weight() {
                    write(
                        d,
                        "blkio.weight_device",
                        &format!("{}:{} {w}", wd.major(), wd.minor()),
                    )?;
                }
            }
            let thr = [
                (
                    "blkio.throttle.read_bps_device",
                    b.throttle_read_bps_device(),
                ),
                (
                    "blkio.throttle.write_bps_device",
                    b.throttle_write_bps_device(),
                ),
                (
                    "blkio.throttle.read_iops_device",
                    b.throttle_read_iops_device(),
                ),
                (
                    "blkio.throttle.write_iops_device",
                    b.throttle_write_iops_device(),
                ),
            ];
            for (file, list) in thr {
                for t in list.iter().flatten() {
                    write(
                        d,
                        file,
                        &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
                    )?;
                }
            }
        }
        for h in r.hugepage_limits().iter().flatten() {
            write(
                self.need("hugetlb")?,
                &format!("hugetlb.{}.limit_in_bytes", h.page_size()),
                &h.limit().to_string(),
            )?;
        }
        if let Some(devs) = r.devices() {
            if let Some(d) = self.dir("devices") {
                apply_v1_devices(d, devs)?;
            }
        }
        if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(Error::Msg(
                "linux.resources.unified needs a cgroup v2 host".into(),
            ));
        }
        Ok(())
    }

    /// The cgroup v2 files, written with runc's (1.1) conversions.
    fn apply_v2(&self, r: &LinuxResources) -> Result<()> {
        let d = &self.dirs[0].1;
        if let Some(m) = r.memory() {
            let (limit, swap) = (m.limit().unwrap_or(0), m.swap().unwrap_or(0));
            if let Some(sw) = v2_swap(swap, limit)? {
                write(d, "memory.swap.max", &sw)?;
            }
            if let Some(v) = v2_num(limit) {
                write(d, "memory.max", &v)?;
            }
            if let Some(v) = v2_num(m.reservation().unwrap_or(0)) {
                write(d, "memory.low", &v)?;
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(w) = c.shares().and_then(shares_to_weight) {
                write(d, "cpu.weight", &w.to_string())?;
            }
            let (quota, period) = (c.quota().unwrap_or(0), c.period().unwrap_or(0));
            if quota != 0 || period != 0 {
                // No period: the kernel keeps the cgroup's (runc does the same).
                let mut v = if quota > 0 {
                    quota.to_string()
                } else {
                    "max".to_string()
                };
                if period != 0 {
                    v = format!("{v} {period}");
                }
                write(d, "cpu.max", &v)?;
            }
            if c.realtime_period().is_some() || c.realtime_runtime().is_some() {
                return Err(Error::Msg(
                    "cpu realtime period/runtime need the cgroup v1 cpu controller".into(),
                ));
            }
            if let Some(v) = c.cpus() {
                write(d, "cpuset.cpus", v)?;
            }
            if let Some(v) = c.mems() {
                write(d, "cpuset.mems", v)?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            write(d, "pids.max", &v)?;
        }
        if let Some(b) = r.block_io() {
            if let Some(w) = b.weight().filter(|w| *w != 0) {
                // The BFQ scheduler takes the v1 value as is; otherwise
                // io.weight with runc's 10..1000 -> 1..10000 mapping.
                if d.join("io.bfq.weight").exists() {
                    write(d, "io.bfq.weight", &w.to_string())?;
                } else {
                    write(d, "io.weight", &blkio_to_io_weight(w).to_string())?;
                }
            }
            for wd in b.weight_device().iter().flatten() {
                if let Some(w) = wd.weight() {
                    write(
                        d,
                        "io.bfq.weight",
                        &format!("{}:{} {w}", wd.major(), wd.minor()),
                    )?;
                }
            }
            let thr = [
                ("rbps", b.throttle_read_bps_device()),
                ("wbps", b.throttle_write_bps_device()),
                ("riops", b.throttle_read_iops_device()),
                ("wiops", b.throttle_write_iops_device()),
            ];
            for (key, list) in thr {
                for t in list.iter().flatten() {
                    write(
                        d,
                        "io.max",
                        &format!("{}:{} {key}={}", t.major(), t.minor(), t.rate()),
                    )?;
                }
            }
        }
        for h in r.hugepage_limits().iter().flatten() {
            write(
                d,
                &format!("hugetlb.{}.max", h.page_size()),
                &h.limit().to_string(),
            )?;
        }
        if let Some(devs) = r.devices() {
            // No devices controller on v2: an eBPF program enforces them.
            if fs_magic(d) != Some(CGROUP2_SUPER_MAGIC) {
                devices::program(devs)?;
                return Err(Error::Msg(format!(
                    "device rules need a cgroup2 directory; {} is not on one",
                    d.display()
                )));
            }
            devices::apply(d, devs)?;
        }
        if let Some(u) = r.unified() {
            for (k, v) in u {
                if k.contains('/') || k.starts_with('.') {
                    return Err(Error::Msg(format!(
                        "unified key {k:?} is not a cgroup file name"
                    )));
                }
                write(d, k, v)?;
            }
        }
        Ok(())
    }

    /// Reads the cgroup's usage counters.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        match self.mode {
            Mode::V2 => {
                let d = &self.dirs[0].1;
                let cpu = read_kv(&d.join("cpu.stat"));
                s.cpu.usage_total = kv(&cpu, "usage_usec") * 1000;
                s.cpu.usage_user = kv(&cpu, "user_usec") * 1000;
                s.cpu.usage_kernel = kv(&cpu, "system_usec") * 1000;
                s.cpu.throttled_periods = kv(&cpu, "nr_throttled");
                s.memory.usage = read_u64(&d.join("memory.current"));
                s.memory.max_usage = read_u64(&d.join("memory.peak"));
                s.memory.limit = read_max(&d.join("memory.max"));
                let ev = read_kv(&d.join("memory.events"));
                s.memory.failcnt = kv(&ev, "max");
                s.memory.oom_kill = kv(&ev, "oom_kill");
                s.pids.current = read_u64(&d.join("pids.current"));
                s.pids.limit = read_limit0(&d.join("pids.max"));
            }
            _ => {
                if let Some(d) = self.dir("cpuacct") {
                    s.cpu.usage_total = read_u64(&d.join("cpuacct.usage"));
                    let st = read_kv(&d.join("cpuacct.stat"));
                    // USER_HZ ticks to ns.
                    s.cpu.usage_user = kv(&st, "user") * 10_000_000;
                    s.cpu.usage_kernel = kv(&st, "system") * 10_000_000;
                }
                if let Some(d) = self.dir("cpu") {
                    s.cpu.throttled_periods = kv(&read_kv(&d.join("cpu.stat")), "nr_throttled");
                }
                if let Some(d) = self.dir("memory") {
                    s.memory.usage = read_u64(&d.join("memory.usage_in_bytes"));
                    s.memory.max_usage = read_u64(&d.join("memory.max_usage_in_bytes"));
                    s.memory.limit = read_u64(&d.join("memory.limit_in_bytes"));
                    s.memory.failcnt = read_u64(&d.join("memory.failcnt"));
                    s.memory.oom_kill = kv(&read_kv(&d.join("memory.oom_control")), "oom_kill");
                }
                if let Some(d) = self.dir("pids") {
                    s.pids.current = read_u64(&d.join("pids.current"));
                    s.pids.limit = read_limit0(&d.join("pids.max"));
                }
            }
        }
        Ok(s)
    }

    /// How many processes the kernel OOM killer killed in this cgroup
    /// (one file, cheaper than [`Manager::stats`]).
    pub fn oom_kills(&self) -> u64 {
        match (self.mode, self.dir("memory")) {
            (Mode::V2, Some(d)) => kv(&read_kv(&d.join("memory.events")), "oom_kill"),
            (_, Some(d)) => kv(&read_kv(&d.join("memory.oom_control")), "oom_kill"),
            (_, None) => 0,
        }
    }

    /// Freezes (`true`) or thaws every process in the cgroup.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        match self.mode {
            Mode::V2 => write(
                &self.dirs[0].1,
                "cgroup.freeze",
                if frozen { "1" } else { "0" },
            ),
            _ => {
                let d = self.need("freezer")?;
                write(d, "freezer.state", if frozen { "FROZEN" } else { "THAWED" })
            }
        }
    }

    /// True when the freezer says the cgroup is frozen.
    pub fn is_frozen(&self) -> bool {
        match self.mode {
            Mode::V2 => kv(&read_kv(&self.dirs[0].1.join("cgroup.events")), "frozen") == 1,
            _ => self
                .dir("freezer")
                .and_then(|d| fs::read_to_string(d.join("freezer.state")).ok())
                .is_some_and(|s| s.trim() == "FROZEN"),
        }
    }

    /// Removes the cgroup directories, waiting (bounded) for exiting tasks.
    pub fn destroy(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in self.all_dirs() {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(io_err(dir, e)),
                }
            }
        }
        Ok(())
    }
}

/// mkdir -p for cpuset, copying cpus/mems down: a v1 cpuset cgroup with
/// empty cpuset.cpus refuses tasks.
fn create_cpuset(dir: &Path) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_cpuset(parent)?;
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(dir, e)),
        }
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let cur = fs::read_to_string(dir.join(f)).unwrap_or_default();
            if cur.trim().is_empty() {
                let pv = fs::read_to_string(parent.join(f)).unwrap_or_default();
                write(dir, f, pv.trim())?;
            }
        }
    }
    Ok(())
}

fn apply_v1_devices(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    for r in rules {
        let ty = match r.typ() {
            // Unbuffered character devices are character devices; the
            // kernel never checks FIFOs. Neither may widen into an "a" rule.
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => "c",
            Some(LinuxDeviceType::B) => "b",
            Some(LinuxDeviceType::P) => continue,
            Some(LinuxDeviceType::A) | None => "a",
        };
        let num = |n: Option<i64>| n.map_or("*".to_string(), |v| v.to_string());
        let rule = if ty == "a" && r.major().is_none() && r.minor().is_none() {
            "a".to_string()
        } else {
            format!(
                "{ty} {}:{} {}",
                num(r.major()),
                num(r.minor()),
                r.access().as_deref().unwrap_or("rwm")
            )
        };
        let file = if r.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write(dir, file, &rule)?;
    }
    Ok(())
}

fn v1_limit(v: i64) -> String {
    if v < 0 {
        "-1".into()
    } else {
        v.to_string()
    }
}

/// runc's numToStr: 0 is unset, -1 (any negative) unlimited.
fn v2_num(v: i64) -> Option<String> {
    match v {
        0 => None,
        v if v < 0 => Some("max".into()),
        v => Some(v.to_string()),
    }
}

/// memory.swap.max from the OCI memory+swap total and memory limit, as
/// runc's ConvertMemorySwapToCgroupV2Value (v2 counts swap alone).
pub fn v2_swap(swap: i64, limit: i64) -> Result<Option<String>> {
    if limit == -1 && swap == 0 {
        // Unlimited memory and no swap given: unlimited swap too (v1 parity).
        return Ok(Some("max".into()));
    }
    if swap == -1 {
        return Ok(Some("max".into()));
    }
    if swap == 0 {
        return Ok(None);
    }
    if limit == 0 || limit == -1 {
        return Err(Error::Msg(
            "memory.swap needs a memory.limit on cgroup v2".into(),
        ));
    }
    if limit < 0 || swap < 0 {
        return Err(Error::Msg(format!(
            "invalid memory limit {limit} / swap {swap}"
        )));
    }
    if swap < limit {
        return Err(Error::Msg(format!(
            "memory.swap {swap} (memory+swap) is below memory.limit {limit}"
        )));
    }
    Ok(Some((swap - limit).to_string()))
}

/// cpu.weight from v1 cpu.shares, runc 1.1's linear map of 2..262144 onto
/// 1..10000 (0: unset). Out-of-range shares are clamped like the v1 kernel
/// clamps them.
pub fn shares_to_weight(shares: u64) -> Option<u64> {
    (shares != 0).then(|| 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142)
}

/// io.weight from v1 blkio.weight (10..1000 onto 1..10000), as runc.
pub fn blkio_to_io_weight(w: u16) -> u64 {
    1 + (u64::from(w.clamp(10, 1000)) - 10) * 9999 / 990
}

/// Writes one cgroup control file.
pub fn write(dir: &Path, file: &str, val: &str) -> Result<()> {
    let p = dir.join(file);
    fs::write(&p, val).map_err(|e| Error::Msg(format!("writing {val:?} to {}: {e}", p.display())))
}

fn read_u64(p: &Path) -> u64 {
    fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn read_limit0(p: &Path) -> u64 {
    read_u64(p)
}

/// A v2 limit file: "max" is u64::MAX.
fn read_max(p: &Path) -> u64 {
    match fs::read_to_string(p) {
        Ok(s) if s.trim() == "max" => u64::MAX,
        Ok(s) => s.trim().parse().unwrap_or(0),
        Err(_) => 0,
    }
}

fn read_kv(p: &Path) -> Vec<(String, u64)> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn kv(v: &[(String, u64)], k: &str) -> u64 {
    v.iter().find(|(x, _)| x == k).map_or(0, |(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(cgroup_path(None, "a").unwrap(), PathBuf::from("/ferro/a"));
        assert_eq!(
            cgroup_path(Some(Path::new("x/y")), "a").unwrap(),
            PathBuf::from("/x/y")
        );
        assert!(cgroup_path(Some(Path::new("/x/../../etc")), "a").is_err());
        assert!(cgroup_path(Some(Path::new("system.slice:docker:a")), "a").is_err());
    }

    #[test]
    fn v1_device_rules_never_widen_to_all() {
        use oci_spec::runtime::LinuxDeviceCgroupBuilder;
        let d = tempfile::tempdir().unwrap();
        let rule = |t| {
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(t)
                .major(1i64)
                .minor(3i64)
                .access("rw")
                .build()
                .unwrap()
        };
        apply_v1_devices(d.path(), &[rule(LinuxDeviceType::U)]).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("devices.allow")).unwrap(),
            "c 1:3 rw"
        );
        fs::remove_file(d.path().join("devices.allow")).unwrap();
        apply_v1_devices(d.path(), &[rule(LinuxDeviceType::P)]).unwrap();
        assert!(
            !d.path().join("devices.allow").exists(),
            "FIFO rule written"
        );
    }

    #[test]
    fn detects_host_layout() {
        // Every supported host has at least one hierarchy mounted.
        let m = detect();
        if m != Mode::V2 {
            assert!(!v1_hierarchies().unwrap().is_empty());
        }
    }
}
