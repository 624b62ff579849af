//! Integration tests: the same busybox bundles under runc and under
//! `ferro-oci`, compared (state JSON, exit codes, namespaces, hostname,
//! mounts, cgroup limits, seccomp, masked/readonly paths), plus limits
//! (OOM, pids), hooks, the console socket and bad input.
//! Needs root, runc and busybox-static (`scripts/deps test` installs them).

use serde_json::{json, Value};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const FERRO: &str = env!("CARGO_BIN_EXE_ferro-oci");

fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("busybox (busybox-static) is not installed: run scripts/deps test");
}

fn require_runc() {
    assert!(
        Command::new("runc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "runc is not installed: run scripts/deps test"
    );
}

/// A bundle with a busybox rootfs and runc's default config (terminal off).
struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    fn new(args: &[&str]) -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        for d in ["proc", "sys", "dev", "etc", "tmp", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
        let list = Command::new(busybox()).arg("--list").output().unwrap();
        for app in String::from_utf8_lossy(&list.stdout).lines() {
            if app != "busybox" {
                let _ = symlink("busybox", rootfs.join("bin").join(app));
            }
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let out = Command::new(FERRO)
            .args(["spec", "-b"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let b = Bundle { dir };
        b.edit(|c| {
            c["process"]["terminal"] = json!(false);
            c["process"]["args"] = json!(args);
        });
        b
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let p = self.path().join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut c);
        std::fs::write(&p, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    }
}

static N: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One runtime (runc or ferro) with its own state root.
struct Rt {
    bin: &'static str,
    root: tempfile::TempDir,
}

impl Rt {
    fn ferro() -> Rt {
        Rt {
            bin: FERRO,
            root: tempfile::tempdir().unwrap(),
        }
    }
    fn runc() -> Rt {
        require_runc();
        Rt {
            bin: "runc",
            root: tempfile::tempdir().unwrap(),
        }
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.arg("--root").arg(self.root.path()).args(args);
        c.stdin(Stdio::null());
        c
    }
    /// Commands that leave a container running (create, run -d): its stdio
    /// must not be our pipe, or we would wait for the container to exit.
    fn bg(&self, args: &[&str]) {
        let log = self.root.path().join(format!("{}.stderr", unique("bg")));
        let st = self
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "{} {args:?}: {}",
            self.bin,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let _ = std::fs::remove_file(log);
    }
    fn out(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            self.bin,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    /// `run` in the foreground: (exit code, stdout, stderr).
    fn run(&self, b: &Bundle) -> (i32, String, String) {
        let id = unique("t");
        let o = self.out(&["run", "-b", b.path().to_str().unwrap(), &id]);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

/// Runs the bundle under both runtimes; returns (runc, ferro) results.
fn both(b: &Bundle) -> ((i32, String, String), (i32, String, String)) {
    (Rt::runc().run(b), Rt::ferro().run(b))
}

#[test]
fn state_json_and_lifecycle_match_runc() {
    let b = Bundle::new(&["sleep", "30"]);
    let mut shapes = Vec::new();
    for rt in [Rt::runc(), Rt::ferro()] {
        let id = unique("life");
        let pidf = b.path().join(format!("{id}.pid"));
        rt.bg(&[
            "create",
            "--bundle",
            b.path().to_str().unwrap(),
            "--pid-file",
            pidf.to_str().unwrap(),
            &id,
        ]);
        let st: Value = serde_json::from_str(&rt.ok(&["state", &id])).unwrap();
        assert_eq!(st["status"], "created", "{}", rt.bin);
        let pid: i64 = std::fs::read_to_string(&pidf)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(st["pid"].as_i64(), Some(pid));
        assert_eq!(st["id"], id.as_str());
        assert_eq!(st["bundle"], b.path().to_str().unwrap());
        let keys: Vec<String> = st.as_object().unwrap().keys().cloned().collect();
        rt.ok(&["start", &id]);
        let st: Value = serde_json::from_str(&rt.ok(&["state", &id])).unwrap();
        assert_eq!(st["status"], "running", "{}", rt.bin);
        // A running container cannot be deleted without --force.
        assert!(!rt.out(&["delete", &id]).status.success());
        rt.ok(&["kill", &id, "KILL"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st: Value = serde_json::from_str(&rt.ok(&["state", &id])).unwrap();
            if st["status"] == "stopped" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: container did not stop",
                rt.bin
            );
            std::thread::yield_now();
        }
        rt.ok(&["delete", &id]);
        assert!(
            !rt.out(&["state", &id]).status.success(),
            "state after delete"
        );
        shapes.push(keys);
    }
    let mut r = shapes[0].clone();
    let mut f = shapes[1].clone();
    r.sort();
    f.sort();
    assert_eq!(r, f, "state JSON keys differ (runc vs ferro)");
}

#[test]
fn exit_codes_match_runc() {
    for (args, want) in [
        (vec!["sh", "-c", "exit 7"], 7),
        (vec!["true"], 0),
        (vec!["false"], 1),
    ] {
        let b = Bundle::new(&args);
        let (r, f) = both(&b);
        assert_eq!(r.0, want, "runc {args:?}: {}", r.2);
        assert_eq!(f.0, want, "ferro {args:?}: {}", f.2);
    }
    // Killed by a signal from outside: 128+9 from the foreground `run`.
    let b = Bundle::new(&["sleep", "30"]);
    for rt in [Rt::runc(), Rt::ferro()] {
        let id = unique("sig");
        let mut child = rt
            .cmd(&["run", "-b", b.path().to_str().unwrap(), &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = rt.out(&["state", &id]);
            if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("\"running\"") {
                break;
            }
            assert!(Instant::now() < deadline, "{}: never running", rt.bin);
            std::thread::yield_now();
        }
        rt.ok(&["kill", &id, "KILL"]);
        assert_eq!(child.wait().unwrap().code(), Some(137), "{}", rt.bin);
    }
    // A missing program: both fail before start with an error naming it.
    let b = Bundle::new(&["/no/such/prog"]);
    let (r, f) = both(&b);
    assert_ne!(r.0, 0);
    assert_ne!(f.0, 0);
    assert!(f.2.contains("/no/such/prog"), "{}", f.2);
}

/// Which namespaces differ from the host's, plus the hostname.
const NS_SCRIPT: &str = "hostname; for n in cgroup ipc mnt net pid user uts; do echo $n $(readlink /proc/self/ns/$n); done";

fn ns_view(out: &str) -> Vec<String> {
    let mut v = Vec::new();
    for l in out.lines() {
        match l
            .split_once(' ')
            .filter(|(n, _)| ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"].contains(n))
        {
            Some((n, link)) => {
                let host = std::fs::read_link(format!("/proc/self/ns/{n}")).unwrap();
                v.push(format!(
                    "{n}:{}",
                    if Path::new(link) == host {
                        "host"
                    } else {
                        "new"
                    }
                ));
            }
            None => v.push(format!("hostname:{l}")),
        }
    }
    v
}

#[test]
fn namespaces_and_hostname_match_runc() {
    let b = Bundle::new(&["sh", "-c", NS_SCRIPT]);
    b.edit(|c| c["hostname"] = json!("box1"));
    let (r, f) = both(&b);
    assert_eq!(r.0, 0, "{}", r.2);
    assert_eq!(f.0, 0, "{}", f.2);
    assert_eq!(ns_view(&r.1), ns_view(&f.1));
    assert!(ns_view(&f.1).contains(&"hostname:box1".to_string()));
    assert!(ns_view(&f.1).contains(&"pid:new".to_string()));
    // Now with cgroup and user namespaces as well.
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(json!({"type": "cgroup"}));
        ns.push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["process"]["args"] = json!([
            "sh",
            "-c",
            format!("{NS_SCRIPT}; id -u; cat /proc/self/uid_map")
        ]);
    });
    let (r, f) = both(&b);
    assert_eq!(f.0, 0, "ferro: {}", f.2);
    assert_eq!(r.0, 0, "runc: {}", r.2);
    assert_eq!(ns_view(&r.1), ns_view(&f.1));
    assert!(f.1.contains("100000"), "{}", f.1);
}

/// Mount points and filesystem types from mountinfo.
fn mounts(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let fs = post.split(' ').next()?;
            let ro = pre.split(' ').nth(5)?.split(',').next()?;
            Some(format!("{mp} {fs} {ro}"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn mounts_and_paths_match_runc() {
    let b = Bundle::new(&["cat", "/proc/self/mountinfo"]);
    let (r, f) = both(&b);
    assert_eq!(r.0, 0, "{}", r.2);
    assert_eq!(f.0, 0, "{}", f.2);
    assert_eq!(
        mounts(&r.1),
        mounts(&f.1),
        "mountinfo (mount point, fs type, ro/rw)"
    );
    // Masked and read-only paths, read-only root, /dev contents.
    let script = "wc -c < /proc/kcore; ls /proc/acpi | wc -l; echo 1 > /proc/sys/vm/drop_caches && echo sys-writable; \
                  touch /newfile && echo root-writable; touch /dev/shm/x && echo shm-ok; ls /dev; ls -l /dev/ptmx";
    let b = Bundle::new(&["sh", "-c", script]);
    let (r, f) = both(&b);
    assert_eq!(f.1, r.1, "ferro stderr: {}", f.2);
    assert!(
        f.1.starts_with("0\n") && !f.1.contains("writable") && f.1.contains("shm-ok"),
        "{}",
        f.1
    );
}

#[test]
fn cgroup_limits_visible_inside_match_runc() {
    let script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max \
                  /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us \
                  /sys/fs/cgroup/cpuset/cpuset.cpus";
    let v2 = libcgroups::detect() == libcgroups::Mode::V2;
    let script = if v2 {
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max"
    } else {
        script
    };
    let b = Bundle::new(&["sh", "-c", script]);
    b.edit(|c| {
        c["linux"]["resources"]["memory"] = json!({"limit": 67108864});
        c["linux"]["resources"]["pids"] = json!({"limit": 42});
        c["linux"]["resources"]["cpu"] =
            json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"});
        if v2 {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "cgroup"}));
        }
    });
    let (r, f) = both(&b);
    assert_eq!(f.0, 0, "ferro: {}", f.2);
    assert_eq!(r.0, 0, "runc: {}", r.2);
    assert_eq!(r.1, f.1);
    assert!(f.1.contains("67108864") && f.1.contains("42"), "{}", f.1);
}

#[test]
fn memory_limit_oom_kills_a_hog() {
    let b = Bundle::new(&[
        "sh",
        "-c",
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    b.edit(|c| c["linux"]["resources"]["memory"] = json!({"limit": 16777216, "swap": 16777216}));
    let rt = Rt::ferro();
    let id = unique("oom");
    let o = rt.out(&["run", "--keep", "-b", b.path().to_str().unwrap(), &id]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stdout.contains("survived"), "the hog was not stopped");
    assert!(
        stderr.contains("OOM-killed"),
        "run did not report the OOM kill: {stderr}"
    );
    let ev: Value = serde_json::from_str(&rt.ok(&["events", "--stats", &id])).unwrap();
    assert!(
        ev["data"]["memory"]["oom_kill"].as_u64().unwrap() >= 1,
        "{ev}"
    );
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], 16777216);
    rt.ok(&["delete", &id]);
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let script = "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; \
                  cat /sys/fs/cgroup/pids/pids.current 2>/dev/null || cat /sys/fs/cgroup/pids.current";
    let b = Bundle::new(&["sh", "-c", script]);
    b.edit(|c| c["linux"]["resources"]["pids"] = json!({"limit": 10}));
    let (code, out, err) = Rt::ferro().run(&b);
    assert!(
        err.contains("fork"),
        "no fork failure reported (code {code}): {err}"
    );
    if let Ok(n) = out.trim().parse::<u32>() {
        assert!(n <= 10, "pids.current {n} above the limit");
    }
}

#[test]
fn seccomp_denies_a_syscall_like_runc() {
    let b = Bundle::new(&["sh", "-c", "mkdir /tmp/x; echo mkdir=$?; echo alive"]);
    b.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let (r, f) = both(&b);
    assert_eq!(r.1, f.1, "ferro stderr {}", f.2);
    assert!(f.1.contains("mkdir=1") && f.1.contains("alive"), "{}", f.1);
    assert!(f.2.contains("Operation not permitted"), "{}", f.2);
    assert!(!b.path().join("rootfs/tmp/x").exists());
}

#[test]
fn capabilities_rlimits_user_and_env() {
    let b = Bundle::new(&["sh", "-c", "grep -E '^Cap(Eff|Bnd)|^NoNewPrivs' /proc/self/status; ulimit -n; id; pwd; echo $FOO; umask"]);
    b.edit(|c| {
        c["process"]["user"] =
            json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 7], "umask": 23});
        c["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
        c["process"]["cwd"] = json!("/tmp");
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
    });
    let (r, f) = both(&b);
    assert_eq!(f.0, 0, "{}", f.2);
    assert_eq!(r.1, f.1);
    assert!(
        f.1.contains("uid=1000 gid=1000 groups=5,7")
            && f.1.contains("\n256\n")
            && f.1.contains("/tmp\nbar\n0027"),
        "{}",
        f.1
    );
}

#[test]
fn hooks_run_with_state_on_stdin() {
    let b = Bundle::new(&["true"]);
    let out = b.path().join("hooks");
    std::fs::create_dir(&out).unwrap();
    let hook = |name: &str, dir: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {dir}/{name}.json")]});
    let o = out.to_str().unwrap().to_string();
    b.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["hooks"] = json!({
            "prestart": [hook("prestart", &o)],
            "createRuntime": [hook("createRuntime", &o)],
            "createContainer": [hook("createContainer", &o)],
            // Runs inside the container, after pivot_root.
            "startContainer": [hook("startContainer", "/tmp")],
            "poststart": [hook("poststart", &o)],
            "poststop": [hook("poststop", &o)],
        });
    });
    let rt = Rt::ferro();
    let id = unique("hooks");
    let bp = b.path().to_str().unwrap();
    rt.bg(&["create", "-b", bp, &id]);
    for h in ["prestart", "createRuntime", "createContainer"] {
        let st: Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{h}.json"))).unwrap()).unwrap();
        assert_eq!(st["id"], id.as_str(), "{h}");
        assert!(st["pid"].as_i64().unwrap() > 1, "{h}: {st}");
    }
    assert!(!out.join("poststart.json").exists());
    rt.ok(&["start", &id]);
    assert!(out.join("poststart.json").exists());
    let started = b.path().join("rootfs/tmp/startContainer.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !started.exists() {
        assert!(Instant::now() < deadline, "startContainer hook did not run");
        std::thread::yield_now();
    }
    rt.ok(&["delete", "--force", &id]);
    let st: Value =
        serde_json::from_slice(&std::fs::read(out.join("poststop.json")).unwrap()).unwrap();
    assert_eq!(st["status"], "stopped");
    // A failing createRuntime hook fails create and leaves nothing behind.
    b.edit(|c| c["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]}));
    let id = unique("hookfail");
    let o = rt.out(&["create", "-b", bp, &id]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("createRuntime hook"));
    assert!(!rt.root.path().join(&id).exists());
}

#[test]
fn console_socket_receives_a_pty_master() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let b = Bundle::new(&["sh", "-c", "tty; echo hello-tty"]);
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let sock = b.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let rt = Rt::ferro();
    let id = unique("tty");
    // Without a console socket, a terminal is refused with a clear error.
    let o = rt.out(&["create", "-b", b.path().to_str().unwrap(), &id]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("console-socket"));
    let mut child = rt
        .cmd(&[
            "create",
            "-b",
            b.path().to_str().unwrap(),
            "--console-socket",
            sock.to_str().unwrap(),
            &id,
        ])
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let (fd, name) = libcontainer::sys::recv_fd(std::os::fd::AsRawFd::as_raw_fd(&conn)).unwrap();
    assert!(!name.is_empty());
    // SAFETY: recv_fd handed us a fresh fd we now own.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    assert!(child.wait().unwrap().success());
    rt.ok(&["start", &id]);
    let mut buf = Vec::new();
    let mut f = std::fs::File::from(master);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&buf).contains("hello-tty") {
        assert!(
            Instant::now() < deadline,
            "no output on the pty: {:?}",
            String::from_utf8_lossy(&buf)
        );
        let mut chunk = [0u8; 256];
        match std::io::Read::read(&mut f, &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("/dev/pts/0") && text.contains("hello-tty"),
        "{text}"
    );
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_joins_the_container() {
    let b = Bundle::new(&["sleep", "30"]);
    b.edit(|c| c["hostname"] = json!("exec-box"));
    let rt = Rt::ferro();
    let id = unique("exec");
    rt.bg(&["run", "-d", "-b", b.path().to_str().unwrap(), &id]);
    let out = rt.ok(&[
        "exec",
        "-e",
        "X=1",
        "--cwd",
        "/tmp",
        &id,
        "sh",
        "-c",
        "hostname; echo $X; pwd; cat /proc/1/cmdline",
    ]);
    assert_eq!(out, "exec-box\n1\n/tmp\nsleep\x0030\x00");
    let code = rt.out(&["exec", &id, "sh", "-c", "exit 5"]).status.code();
    assert_eq!(code, Some(5));
    let proc_json = b.path().join("p.json");
    std::fs::write(
        &proc_json,
        r#"{"cwd": "/", "args": ["sh", "-c", "echo from-json"], "user": {"uid": 0, "gid": 0}}"#,
    )
    .unwrap();
    assert_eq!(
        rt.ok(&["exec", "--process", proc_json.to_str().unwrap(), &id]),
        "from-json\n"
    );
    let ps: Vec<i64> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap();
    assert_eq!(ps.len(), 1);
    rt.ok(&["delete", "-f", &id]);
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing() {
    let rt = Rt::ferro();
    let b = Bundle::new(&["true"]);
    std::fs::write(
        b.path().join("config.json"),
        b"{\"ociVersion\": \"1.0.2\", \"process\": ",
    )
    .unwrap();
    let id = unique("bad");
    let o = rt.out(&["run", "-b", b.path().to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("config.json"), "{err}");
    assert!(!rt.root.path().join(&id).exists());

    let b = Bundle::new(&["true"]);
    std::fs::remove_dir_all(b.path().join("rootfs")).unwrap();
    let o = rt.out(&["create", "-b", b.path().to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rootfs"), "{err}");
    assert!(!rt.root.path().join(&id).exists());
    if libcgroups::detect() != libcgroups::Mode::V2 {
        assert!(!Path::new("/sys/fs/cgroup/pids/ferro").join(&id).exists());
    }

    let b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "relative/path", "type": "tmpfs", "source": "tmpfs"}))
    });
    let o = rt.out(&["create", "-b", b.path().to_str().unwrap(), &id]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be absolute"));
    for bad_id in ["../escape", "a/b", ""] {
        let o = rt.out(&["create", "-b", b.path().to_str().unwrap(), bad_id]);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("invalid container id"),
            "{bad_id}"
        );
    }
    assert_eq!(
        std::fs::read_dir(rt.root.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    // A symlink in the image pointing at the host is resolved inside the rootfs.
    let b = Bundle::new(&["true"]);
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), b.path().join("rootfs/escape")).unwrap();
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/escape/sub", "type": "tmpfs", "source": "tmpfs"}));
    });
    let (code, _, err) = rt.run(&b);
    assert_eq!(code, 0, "{err}");
    assert!(
        !outside.path().join("sub").exists(),
        "a mount followed a symlink out of the rootfs"
    );
    // A foreground run whose init fails before exec: its queued error
    // reaches stderr and nothing is left behind.
    let b = Bundle::new(&["/bin/nosuch"]);
    let id = unique("noexec");
    let o = rt.out(&["run", "-b", b.path().to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/bin/nosuch") && err.contains("no such file"),
        "{err}"
    );
    assert!(!rt.root.path().join(&id).exists());
    let cg = match libcgroups::detect() {
        libcgroups::Mode::V2 => "/sys/fs/cgroup/ferro",
        _ => "/sys/fs/cgroup/pids/ferro",
    };
    assert!(!Path::new(cg).join(&id).exists(), "cgroup left behind");
}

#[test]
fn features_and_spec_output() {
    let rt = Rt::ferro();
    let f: Value = serde_json::from_str(&rt.ok(&["features"])).unwrap();
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
    assert!(f["linux"]["namespaces"].as_array().unwrap().len() >= 7);
    let d = tempfile::tempdir().unwrap();
    rt.ok(&["spec", "-b", d.path().to_str().unwrap()]);
    let ours: Value =
        serde_json::from_slice(&std::fs::read(d.path().join("config.json")).unwrap()).unwrap();
    let r = tempfile::tempdir().unwrap();
    let o = Command::new("runc")
        .arg("spec")
        .current_dir(r.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    let theirs: Value =
        serde_json::from_slice(&std::fs::read(r.path().join("config.json")).unwrap()).unwrap();
    // Capability sets are sets: compare them sorted.
    let norm = |mut v: Value| {
        if let Some(caps) = v["process"]["capabilities"].as_object_mut() {
            for set in caps.values_mut() {
                set.as_array_mut().unwrap().sort_by_key(|x| x.to_string());
            }
        }
        v
    };
    let (ours, theirs) = (norm(ours), norm(theirs));
    for k in ["process", "mounts", "root"] {
        assert_eq!(ours[k], theirs[k], "{k}");
    }
    assert_eq!(ours["linux"]["maskedPaths"], theirs["linux"]["maskedPaths"]);
    // Refuses to overwrite.
    assert!(!rt
        .out(&["spec", "-b", d.path().to_str().unwrap()])
        .status
        .success());
}

#[test]
fn foreground_terminal_is_proxied_like_runc() {
    let b = Bundle::new(&["sh", "-c", "tty; echo on-pty; exit 4"]);
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let (code, out, err) = Rt::ferro().run(&b);
    assert_eq!(code, 4, "{err}");
    assert!(
        out.contains("/dev/pts/0") && out.contains("on-pty"),
        "{out}"
    );
}

/// The hierarchies of /proc/PID/cgroup ("N:controllers") and the paths.
fn cgroup_lines(text: &str) -> (Vec<String>, Vec<String>) {
    text.lines()
        .filter_map(|l| l.rsplit_once(':'))
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unzip()
}

fn state_pid(rt: &Rt, id: &str) -> i64 {
    let st: Value = serde_json::from_str(&rt.ok(&["state", id])).unwrap();
    st["pid"].as_i64().unwrap()
}

/// The init and exec'd processes join their cgroups themselves (v1 `tasks`,
/// clone3 into the unified one): they must end up in the same hierarchies
/// as runc's init, in ferro's cgroup in each.
#[test]
fn cgroup_membership_matches_runc() {
    let b = Bundle::new(&["sleep", "30"]);
    let (runc, ferro) = (Rt::runc(), Rt::ferro());
    let (rid, fid) = (unique("cgr"), unique("cgf"));
    runc.bg(&["run", "-d", "-b", b.path().to_str().unwrap(), &rid]);
    ferro.bg(&["run", "-d", "-b", b.path().to_str().unwrap(), &fid]);
    let read = |pid: i64| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let runc_cg = read(state_pid(&runc, &rid));
    let ferro_cg = read(state_pid(&ferro, &fid));
    runc.ok(&["delete", "-f", &rid]);
    let (runc_h, _) = cgroup_lines(&runc_cg);
    let (ferro_h, ferro_p) = cgroup_lines(&ferro_cg);
    assert_eq!(ferro_h, runc_h, "runc:\n{runc_cg}\nferro:\n{ferro_cg}");
    let want = format!("/ferro/{fid}");
    assert!(ferro_p.iter().all(|p| *p == want), "{ferro_cg}");
    let exec_cg = ferro.ok(&["exec", &fid, "cat", "/proc/self/cgroup"]);
    assert_eq!(exec_cg, ferro_cg, "exec'd process vs init");
    ferro.ok(&["delete", "-f", &fid]);
    if libcgroups::detect() != libcgroups::Mode::V1 {
        let unified = match libcgroups::detect() {
            libcgroups::Mode::V2 => PathBuf::from("/sys/fs/cgroup"),
            _ => PathBuf::from("/sys/fs/cgroup/unified"),
        };
        assert!(
            !unified.join("ferro").join(&fid).exists(),
            "unified cgroup left"
        );
    }
}

/// clone3(CLONE_INTO_CGROUP): the child is born in the unified cgroup.
#[test]
fn clone_into_places_the_child_in_the_unified_cgroup() {
    let mode = libcgroups::detect();
    assert_ne!(
        mode,
        libcgroups::Mode::V1,
        "this host mounts no cgroup2 hierarchy"
    );
    let path = PathBuf::from(format!("/ferro-test-clone3-{}", std::process::id()));
    let m = libcgroups::Manager::new(&path).unwrap();
    m.create().unwrap();
    let join = m.open_join().unwrap();
    let (pid, placed) = libcontainer::sys::clone_into(0, join.cgroup_fd()).unwrap();
    if pid == 0 {
        // SAFETY: the forked child of a multi-threaded test only pauses.
        unsafe {
            loop {
                libc::pause();
            }
        }
    }
    drop(join);
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // SAFETY: signalling our own child (it may not be in the cgroup).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let code = libcontainer::sys::wait_exit(pid).unwrap();
    m.destroy().unwrap();
    assert!(placed, "clone3(CLONE_INTO_CGROUP) failed on this kernel");
    assert!(
        cg.lines().any(|l| l == format!("0::{}", path.display())),
        "{cg}"
    );
    assert_eq!(code, 128 + libc::SIGKILL);
}
