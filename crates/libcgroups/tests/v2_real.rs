//! libcgroups against the real kernel (needs root). The unified (v2)
//! hierarchy is used where the host mounts it (/sys/fs/cgroup on v2 hosts,
//! /sys/fs/cgroup/unified on hybrid ones), else a cgroup2 mount of our own:
//! creating, joining (cgroup.procs, and a child joining itself), freezing
//! (cgroup.freeze / cgroup.events), killing (cgroup.kill) and removing a
//! cgroup all work without controllers. Layout detection is checked on
//! real tmpfs/cgroup2 mounts. Resource files: see v2_fake.rs.

use libcgroups::{detect, detect_at, mode_from_magic, Manager, Mode};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests need root (cgroups, mounts)");
}

fn mount(src: &str, target: &Path, fstype: &str) {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (s, t, f) = (c(src), c(target.to_str().unwrap()), c(fstype));
    // SAFETY: valid C strings; no data argument.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    assert_eq!(
        r,
        0,
        "mount {fstype} on {}: {}",
        target.display(),
        std::io::Error::last_os_error()
    );
}

/// Unmounts (lazily) what a test mounted, also when it fails.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The unified hierarchy's mount point (ours when the host has none).
fn unified(keep: &tempfile::TempDir, mounts: &mut Mounts) -> PathBuf {
    match detect() {
        Mode::V2 => PathBuf::from("/sys/fs/cgroup"),
        Mode::Hybrid => PathBuf::from("/sys/fs/cgroup/unified"),
        Mode::V1 => {
            let p = keep.path().join("cgroup2");
            std::fs::create_dir(&p).unwrap();
            mount("cgroup2", &p, "cgroup2");
            mounts.0.push(p.clone());
            p
        }
    }
}

/// A v2 manager that delegates controllers only on v2 hosts: on hybrid
/// ones the unified root's controllers belong to the host's setup.
fn v2_manager(root: &Path, path: &Path) -> Manager {
    Manager::v2(root, path)
        .unwrap()
        .delegating(detect() == Mode::V2)
}

fn test_path(what: &str) -> PathBuf {
    PathBuf::from(format!("/ferro-test-{what}-{}", std::process::id()))
}

fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The process's cgroup in the unified hierarchy ("0::" line).
fn v2_cgroup_of(pid: u32) -> String {
    let t = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    t.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no 0:: line in /proc/{pid}/cgroup: {t}"))
        .to_string()
}

/// Kills and reaps `child` if a test fails half-way.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn unified_create_join_freeze_kill_remove() {
    require_root();
    let keep = tempfile::tempdir().unwrap();
    let mut mounts = Mounts(Vec::new());
    let root = unified(&keep, &mut mounts);
    let path = test_path("life");
    let m = v2_manager(&root, &path);
    m.create().unwrap();
    let dir = root.join(path.strip_prefix("/").unwrap());
    assert!(
        dir.join("cgroup.procs").exists(),
        "{} is not a cgroup",
        dir.display()
    );

    let mut child = Reap(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = child.0.id();
    m.add_task(pid as i32).unwrap();
    assert_eq!(v2_cgroup_of(pid), path.to_str().unwrap());
    assert_eq!(m.pids().unwrap(), vec![pid as i32]);

    m.freeze(true).unwrap();
    poll("cgroup.events frozen 1", || m.is_frozen());
    m.freeze(false).unwrap();
    poll("cgroup.events frozen 0", || !m.is_frozen());

    m.kill(libc::SIGKILL).unwrap();
    let st = child.0.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    let events = dir.join("cgroup.events");
    poll("cgroup.events populated 0", || {
        std::fs::read_to_string(&events)
            .unwrap()
            .contains("populated 0")
    });
    m.destroy().unwrap();
    assert!(!dir.exists());
}

/// A forked (single-threaded) child joins with the handles opened before
/// the fork, as the container init does: on the unified hierarchy through
/// cgroup.procs, on the host's v1 hierarchies through `tasks`.
#[test]
fn a_child_joins_itself_with_handles_opened_by_the_parent() {
    require_root();
    let keep = tempfile::tempdir().unwrap();
    let mut mounts = Mounts(Vec::new());
    let root = unified(&keep, &mut mounts);
    let mut managers = vec![v2_manager(&root, &test_path("selfv2"))];
    if detect() != Mode::V2 {
        // The host's full layout: every v1 hierarchy (plus unified on hybrid).
        managers.push(Manager::new(&test_path("selfhost")).unwrap());
    }
    for m in &managers {
        m.create().unwrap();
        let join = m.open_join().unwrap();
        // SAFETY: the child only calls write/pause/_exit (async-signal-safe);
        // join_self allocates nothing on success.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = join.join_self(false).is_ok();
            // SAFETY: plain syscalls in the forked child.
            unsafe {
                if !ok {
                    libc::_exit(3);
                }
                loop {
                    libc::pause();
                }
            }
        }
        drop(join);
        let want = m.path().to_str().unwrap().to_string();
        let cgroup_file = format!("/proc/{pid}/cgroup");
        let expect_lines = if m.mode() == Mode::V2 {
            1
        } else {
            m.dirs().len() + usize::from(m.unified_dir().is_some())
        };
        let in_it = || {
            let lines = std::fs::read_to_string(&cgroup_file).unwrap_or_default();
            lines
                .lines()
                .filter(|l| l.ends_with(&format!(":{want}")))
                .count()
        };
        let mut st = 0;
        poll("the child to join every hierarchy", || {
            // SAFETY: polling our own child.
            let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
            assert_eq!(r, 0, "child exited ({st:#x}): join_self failed");
            in_it() == expect_lines
        });
        m.kill(libc::SIGKILL).unwrap();
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(libc::WIFSIGNALED(st), "{st:#x}");
        m.destroy().unwrap();
    }
}

#[test]
fn layout_detection_reads_statfs_magic_of_real_mounts() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let mut mounts = Mounts(Vec::new());
    let (v2, hybrid, v1) = (
        t.path().join("v2"),
        t.path().join("hy"),
        t.path().join("v1"),
    );
    for d in [&v2, &hybrid, &v1] {
        std::fs::create_dir(d).unwrap();
    }
    mount("cgroup2", &v2, "cgroup2");
    mounts.0.push(v2.clone());
    mount("tmpfs", &hybrid, "tmpfs");
    mounts.0.push(hybrid.clone());
    std::fs::create_dir(hybrid.join("unified")).unwrap();
    mount("cgroup2", &hybrid.join("unified"), "cgroup2");
    mounts.0.push(hybrid.join("unified"));
    mount("tmpfs", &v1, "tmpfs");
    mounts.0.push(v1.clone());
    // A plain directory called unified is not a v2 hierarchy.
    std::fs::create_dir(v1.join("unified")).unwrap();

    assert_eq!(detect_at(&v2), Mode::V2);
    assert_eq!(detect_at(&hybrid), Mode::Hybrid);
    assert_eq!(detect_at(&v1), Mode::V1);
    assert_eq!(detect_at(&t.path().join("missing")), Mode::V1);
}

#[test]
fn host_layout_matches_mountinfo() {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let fstype = |mp: &str| {
        mi.lines().rev().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (pre.split(' ').nth(4)? == mp).then(|| post.split(' ').next().unwrap().to_string())
        })
    };
    let want = match (
        fstype("/sys/fs/cgroup").as_deref(),
        fstype("/sys/fs/cgroup/unified").as_deref(),
    ) {
        (Some("cgroup2"), _) => Mode::V2,
        (_, Some("cgroup2")) => Mode::Hybrid,
        _ => Mode::V1,
    };
    assert_eq!(detect(), want, "mountinfo:\n{mi}");
    if want != Mode::V2 {
        assert!(!libcgroups::v1_hierarchies().unwrap().is_empty());
    }
}

#[test]
fn mode_follows_the_magic_numbers() {
    use libcgroups::{CGROUP2_SUPER_MAGIC as CG2, TMPFS_MAGIC as TMP};
    assert_eq!(mode_from_magic(Some(CG2), None), Mode::V2);
    assert_eq!(mode_from_magic(Some(TMP), Some(CG2)), Mode::Hybrid);
    assert_eq!(mode_from_magic(Some(TMP), Some(TMP)), Mode::V1);
    assert_eq!(mode_from_magic(Some(TMP), None), Mode::V1);
    assert_eq!(mode_from_magic(None, None), Mode::V1);
}
