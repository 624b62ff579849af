//! Device rules on the unified hierarchy, enforced by the kernel through the
//! BPF_CGROUP_DEVICE program libcgroups attaches (needs root). On hybrid
//! hosts the program still works on /sys/fs/cgroup/unified: the kernel runs
//! cgroup2 device programs whatever the v1 devices controller says.

use libcgroups::devices::{self, Insn};
use libcgroups::{detect, Manager, Mode};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

fn dev(
    allow: bool,
    ty: LinuxDeviceType,
    ma: Option<i64>,
    mi: Option<i64>,
    acc: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(Some(ty));
    r.set_major(ma);
    r.set_minor(mi);
    r.set_access(Some(acc.to_string()));
    r
}

fn deny_all() -> LinuxDeviceCgroup {
    dev(false, LinuxDeviceType::A, None, None, "rwm")
}

fn resources(rules: Vec<LinuxDeviceCgroup>) -> LinuxResources {
    let mut r = LinuxResources::default();
    r.set_devices(Some(rules));
    r
}

/// (code, dst, src, off, imm) for compact expectations.
fn raw(p: &[Insn]) -> Vec<(u8, u8, u8, i16, i32)> {
    p.iter()
        .map(|i| (i.code, i.regs & 0xf, i.regs >> 4, i.off, i.imm))
        .collect()
}

const PROLOGUE: [(u8, u8, u8, i16, i32); 6] = [
    (0x61, 2, 1, 0, 0),      // r2 = ctx->access_type
    (0x54, 2, 0, 0, 0xffff), // r2 &= 0xffff: device type
    (0x61, 3, 1, 0, 0),      // r3 = ctx->access_type
    (0x74, 3, 0, 0, 16),     // r3 >>= 16: requested access
    (0x61, 4, 1, 4, 0),      // r4 = major
    (0x61, 5, 1, 8, 0),      // r5 = minor
];
const ALLOW_EXIT: [(u8, u8, u8, i16, i32); 2] = [(0xb7, 0, 0, 0, 1), (0x95, 0, 0, 0, 0)];

#[test]
fn empty_rule_list_allows_everything() {
    let p = raw(&devices::program(&[]).unwrap());
    let mut want = PROLOGUE.to_vec();
    for bit in [1, 2, 4] {
        want.extend([(0x45, 3, 0, 1, bit), (0x05, 0, 0, 0, 0)]);
    }
    want.extend(ALLOW_EXIT);
    assert_eq!(p, want);
}

#[test]
fn deny_all_then_allow_one_device() {
    let rules = [
        deny_all(),
        dev(true, LinuxDeviceType::C, Some(1), Some(3), "rw"),
    ];
    let p = raw(&devices::program(&rules).unwrap());
    let mut want = PROLOGUE.to_vec();
    // mknod: only the deny-all rule mentions it.
    want.extend([
        (0x45, 3, 0, 1, 1),
        (0x05, 0, 0, 2, 0),
        (0xb7, 0, 0, 0, 0),
        (0x95, 0, 0, 0, 0),
    ]);
    // read and write: c 1:3 allows (jump to the next bit), else deny-all.
    for bit in [2, 4] {
        want.extend([
            (0x45, 3, 0, 1, bit),
            (0x05, 0, 0, 6, 0),
            (0x55, 2, 0, 3, 2), // type != char: next rule
            (0x55, 4, 0, 2, 1), // major != 1
            (0x55, 5, 0, 1, 3), // minor != 3
            (0x05, 0, 0, 2, 0), // allowed: next access bit
            (0xb7, 0, 0, 0, 0),
            (0x95, 0, 0, 0, 0),
        ]);
    }
    want.extend(ALLOW_EXIT);
    assert_eq!(p, want);
}

#[test]
fn wildcards_skip_checks_and_later_deny_wins() {
    // allow every char device, then deny block major 8 writes: the deny is
    // checked first (newest rule first), wildcards emit no comparison.
    let rules = [
        dev(true, LinuxDeviceType::C, Some(-1), None, "w"),
        dev(false, LinuxDeviceType::B, Some(8), None, "w"),
    ];
    let p = raw(&devices::program(&rules).unwrap());
    let mut want = PROLOGUE.to_vec();
    for bit in [1, 2] {
        want.extend([(0x45, 3, 0, 1, bit), (0x05, 0, 0, 0, 0)]);
    }
    want.extend([
        (0x45, 3, 0, 1, 4),
        (0x05, 0, 0, 6, 0),
        (0x55, 2, 0, 3, 1), // type != block
        (0x55, 4, 0, 2, 8), // major != 8
        (0xb7, 0, 0, 0, 0),
        (0x95, 0, 0, 0, 0),
        (0x55, 2, 0, 1, 2), // type != char
        (0x05, 0, 0, 0, 0),
    ]);
    want.extend(ALLOW_EXIT);
    assert_eq!(p, want);
}

#[test]
fn invalid_rules_give_clear_errors() {
    let err = |r: LinuxDeviceCgroup| devices::program(&[deny_all(), r]).unwrap_err().to_string();
    let e = err(dev(true, LinuxDeviceType::P, Some(1), Some(3), "rwm"));
    assert!(e.contains("device rule 1") && e.contains("\"p\""), "{e}");
    let e = err(dev(true, LinuxDeviceType::C, Some(1), Some(3), "rwx"));
    assert!(e.contains("access 'x'"), "{e}");
    let e = err(dev(true, LinuxDeviceType::C, Some(-7), Some(3), "r"));
    assert!(e.contains("major -7"), "{e}");
    // A bad type letter is refused already when config.json is parsed.
    let bad: Result<LinuxDeviceCgroup, _> =
        serde_json::from_str(r#"{"allow": true, "type": "x", "access": "rwm"}"#);
    assert!(bad.is_err());
}

/// The unified hierarchy's mount point, or None on a pure v1 host.
fn unified_mount() -> Option<PathBuf> {
    match detect() {
        Mode::V2 => Some(PathBuf::from("/sys/fs/cgroup")),
        Mode::Hybrid => Some(PathBuf::from("/sys/fs/cgroup/unified")),
        Mode::V1 => None,
    }
}

/// Removes the test cgroup also when an assertion fails.
struct Cleanup(Manager);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.0.kill(libc::SIGKILL);
        let _ = self.0.destroy();
    }
}

/// Forks a child that joins the cgroup at `dir`, opens each device
/// read-write and reports the errno of every
/// open (0: opened).
fn open_in_cgroup(dir: &Path, devs: &[&str]) -> Vec<i32> {
    open_with(dir, devs, libc::O_RDWR)
}

fn open_with(dir: &Path, devs: &[&str], flags: libc::c_int) -> Vec<i32> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .unwrap();
    let paths: Vec<CString> = devs.iter().map(|d| CString::new(*d).unwrap()).collect();
    let mut p = [0; 2];
    // SAFETY: p has room for two fds.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: the child only calls async-signal-safe functions on memory
    // prepared before the fork, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: as above (child side).
        unsafe {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(2);
            }
            for c in &paths {
                let fd = libc::open(c.as_ptr(), flags);
                let e: i32 = if fd < 0 { *libc::__errno_location() } else { 0 };
                libc::write(p[1], (&e as *const i32).cast(), 4);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(p[1]) };
    let mut st = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "child status {st:#x}"
    );
    let mut out = vec![0i32; devs.len()];
    // SAFETY: out has room for devs.len() i32s.
    let n = unsafe { libc::read(p[0], out.as_mut_ptr().cast(), 4 * devs.len()) };
    // SAFETY: closing our read end.
    unsafe { libc::close(p[0]) };
    assert_eq!(n as usize, 4 * devs.len());
    out
}

#[test]
fn kernel_enforces_the_rules_and_updates_replace_them() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let mount = unified_mount().expect("this test needs a cgroup2 (unified) hierarchy");
    let path = PathBuf::from(format!("/ferro-devtest-{}", std::process::id()));
    let m = Manager::v2(&mount, &path).unwrap().delegating(false);
    m.create().unwrap();
    let guard = Cleanup(m.clone());
    let dir = m.unified_dir().unwrap().to_path_buf();

    let null_only = vec![
        deny_all(),
        dev(true, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
    ];
    m.apply(&resources(null_only)).unwrap();
    assert_eq!(devices::attached_count(&dir).unwrap(), 1);
    assert_eq!(
        open_in_cgroup(&dir, &["/dev/null", "/dev/zero"]),
        [0, libc::EPERM]
    );

    let both = vec![
        deny_all(),
        dev(true, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
        dev(true, LinuxDeviceType::C, Some(1), Some(5), "r"),
        dev(true, LinuxDeviceType::C, Some(1), Some(5), "w"),
    ];
    m.apply(&resources(both)).unwrap();
    // The update replaced the first program (which would still refuse
    // /dev/zero) instead of adding to it.
    assert_eq!(devices::attached_count(&dir).unwrap(), 1);
    assert_eq!(open_in_cgroup(&dir, &["/dev/null", "/dev/zero"]), [0, 0]);

    // A later partial deny takes only that access away.
    let no_write = vec![
        deny_all(),
        dev(true, LinuxDeviceType::C, Some(1), None, "rwm"),
        dev(false, LinuxDeviceType::C, Some(1), Some(5), "w"),
    ];
    m.apply(&resources(no_write)).unwrap();
    assert_eq!(
        open_in_cgroup(&dir, &["/dev/null", "/dev/zero"]),
        [0, libc::EPERM]
    );
    assert_eq!(
        open_with(&dir, &["/dev/null", "/dev/zero"], libc::O_RDONLY),
        [0, 0]
    );
    drop(guard);
    assert!(!dir.exists());
}

#[test]
fn the_runtimes_default_rule_list_passes_the_verifier() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "loading BPF programs needs root");
    let c = |ma, mi| dev(true, LinuxDeviceType::C, ma, mi, "rwm");
    let rules = vec![
        deny_all(),
        dev(true, LinuxDeviceType::C, None, None, "m"),
        dev(true, LinuxDeviceType::B, None, None, "m"),
        c(Some(1), Some(3)),
        c(Some(1), Some(5)),
        c(Some(1), Some(7)),
        c(Some(1), Some(8)),
        c(Some(1), Some(9)),
        c(Some(5), Some(0)),
        c(Some(136), None),
        c(Some(5), Some(2)),
        dev(true, LinuxDeviceType::U, Some(10), Some(200), "rwm"),
        dev(false, LinuxDeviceType::A, None, None, "rwm"),
        dev(true, LinuxDeviceType::A, None, None, "r"),
    ];
    devices::load(&devices::program(&rules).unwrap()).unwrap();
}
