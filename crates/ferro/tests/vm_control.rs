//! End to end: `ferro run` in managed mode (docs/CONTROL.md) on the default
//! riscv64 guest. One booted guest serves the control protocol, console
//! socket, serial log, identity and powerdown checks; a second one checks
//! that SIGTERM flushes a qcow2 disk; `quit` is checked before any boot.

mod run_common;
use run_common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const UUID: &str = "0f3c2a6e-5b1d-4e8f-9a7c-1d2e3f405162";

fn connect(path: &Path, deadline: Instant) -> UnixStream {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::yield_now();
            }
            Err(e) => panic!("cannot connect to {}: {e}", path.display()),
        }
    }
}

/// A control-socket client.
struct Ctl {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Ctl {
    fn new(path: &Path, deadline: Instant) -> Ctl {
        let s = connect(path, deadline);
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Ctl {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }
    fn raw(&mut self, line: &str) -> Value {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
        let mut l = String::new();
        self.r.read_line(&mut l).expect("a response line");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"))
    }
}

/// A console-socket client collecting guest output.
struct Con {
    s: UnixStream,
    out: String,
}

impl Con {
    fn new(path: &Path, deadline: Instant) -> Con {
        let s = connect(path, deadline);
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Con {
            s,
            out: String::new(),
        }
    }
    fn wait_for(&mut self, needle: &str, deadline: Instant) -> bool {
        let mut buf = [0u8; 4096];
        while !self.out.contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            match self.s.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.out.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("console read: {e}"),
            }
        }
        true
    }
    /// Runs a shell command; returns its output (between two markers).
    fn sh(&mut self, cmd: &str, deadline: Instant) -> String {
        self.out.clear();
        // Markers are split so the echoed command line does not match.
        self.s
            .write_all(format!("echo \"<<\"'BEGIN'; {cmd}; echo \"<<\"'END'\n").as_bytes())
            .unwrap();
        assert!(
            self.wait_for("<<END", deadline),
            "no output for {cmd:?}:\n{}",
            self.out
        );
        let start = self.out.find("<<BEGIN").expect("begin marker") + "<<BEGIN".len();
        let end = self.out.rfind("<<END").unwrap();
        self.out[start..end]
            .replace('\r', "")
            .trim_start_matches('\n')
            .to_string()
    }
}

fn status_file(p: &Path) -> Value {
    let t =
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("status file {}: {e}", p.display()));
    serde_json::from_str(&t).unwrap()
}

fn managed(dir: &Path, extra: &[&str]) -> Running {
    let _ = guest(); // fail loudly if the cache is missing
    let mut cmd = ferro();
    cmd.arg("run")
        .arg("--control")
        .arg(dir.join("ctl"))
        .arg("--console-socket")
        .arg(dir.join("con"))
        .arg("--status-file")
        .arg(dir.join("status.json"))
        .args(extra);
    Running::spawn(cmd, Stdio::null())
}

#[test]
fn quit_before_boot_and_protocol_errors() {
    let dir = tempdir();
    let r = managed(dir.path(), &["--name", "early"]);
    let deadline = Instant::now() + BOOT_DEADLINE;
    let mut c = Ctl::new(&dir.path().join("ctl"), deadline);
    let mode = std::fs::metadata(dir.path().join("ctl")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // Errors keep the connection; ids are echoed.
    let e = c.raw("{not json");
    assert_eq!(e["ok"], false);
    assert!(e["error"].as_str().unwrap().contains("malformed"), "{e}");
    let e = c.raw(r#"{"cmd":"frobnicate","id":5}"#);
    assert_eq!(
        e,
        json!({"ok":false,"error":"unknown command \"frobnicate\"","id":5})
    );
    let e = c.raw(r#"{"cmd":"snapshot-create"}"#);
    assert!(e["error"].as_str().unwrap().contains("\"name\""), "{e}");
    let s = c.raw(r#"{"cmd":"status","id":"s"}"#);
    assert_eq!(s["id"], "s");
    assert_eq!(s["result"]["name"], "early");
    assert_eq!(s["result"]["state"], "running");
    // A second client at the same time.
    let mut c2 = Ctl::new(&dir.path().join("ctl"), deadline);
    assert_eq!(c2.raw(r#"{"cmd":"status"}"#)["ok"], true);
    assert_eq!(c.raw(r#"{"cmd":"quit","id":1}"#), json!({"ok":true,"id":1}));
    let (code, out) = r.finish(deadline);
    assert_eq!(code, 0, "{out}");
    let st = status_file(&dir.path().join("status.json"));
    assert_eq!(st["exit_code"], 0);
    assert_eq!(st["reason"], "quit", "{st}");
    assert!(
        st["message"].as_str().unwrap().contains("quit command"),
        "{st}"
    );
    assert!(
        !dir.path().join("ctl").exists(),
        "control socket left behind"
    );
}

#[test]
fn console_identity_and_powerdown() {
    let dir = tempdir();
    let log = dir.path().join("serial.log");
    let r = managed(
        dir.path(),
        &[
            "--name",
            "vm1",
            "--uuid",
            UUID,
            "--serial-log",
            log.to_str().unwrap(),
            "--cpus",
            "2",
        ],
    );
    let deadline = Instant::now() + BOOT_DEADLINE;
    let mut ctl = Ctl::new(&dir.path().join("ctl"), deadline);
    let s = ctl.raw(r#"{"cmd":"status"}"#)["result"].clone();
    assert_eq!(s["uuid"], UUID);
    assert_eq!(s["name"], "vm1");
    assert_eq!(s["arch"], "riscv64");
    assert_eq!(s["cpus"], 2);
    assert_eq!(s["memory_bytes"], 512u64 << 20);
    assert_eq!(s["pid"], r.child.id());

    let mut con = Con::new(&dir.path().join("con"), deadline);
    assert!(
        con.wait_for(guest::PROMPT, deadline),
        "no prompt on the console socket:\n{}",
        con.out
    );
    // One client at a time.
    let mut busy = UnixStream::connect(dir.path().join("con")).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut b = String::new();
    busy.read_to_string(&mut b).unwrap();
    assert_eq!(b, "ferro: console busy\n");

    assert_eq!(con.sh("echo hi", deadline).trim(), "hi");
    // The UUID in the device tree, and the machine-id init wrote from it.
    let sn = con.sh("cat /proc/device-tree/serial-number", deadline);
    assert_eq!(sn.trim_end_matches(['\0', '\n']), UUID, "{sn:?}");
    let mid = con.sh("cat /etc/machine-id", deadline);
    assert_eq!(mid.trim(), UUID.replace('-', ""));
    con.sh("echo logged-$((40+2))", deadline);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("OpenSBI"), "serial log lacks the boot");
    assert!(logged.contains("logged-42"), "serial log lacks the shell");

    let p = ctl.raw(r#"{"cmd":"powerdown","id":"p"}"#);
    assert_eq!(p, json!({"ok":true,"id":"p","result":{"delivered":true}}));
    let (code, out) = r.finish(Instant::now() + Duration::from_secs(300));
    assert_eq!(code, 0, "{out}");
    let st = status_file(&dir.path().join("status.json"));
    assert_eq!(st["reason"], "poweroff", "{st}");
    assert!(con.wait_for("Power down", deadline) || logged_power_down(&log));
}

fn logged_power_down(log: &Path) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("Power down")
}

#[test]
fn sigterm_flushes_qcow2() {
    let dir = tempdir();
    let disk = dir.path().join("d.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .expect("qemu-img is required (scripts/deps test installs it)");
    assert!(st.success());
    let r = managed(
        dir.path(),
        &["--disk", &format!("{},format=qcow2", disk.display())],
    );
    let deadline = Instant::now() + BOOT_DEADLINE;
    let mut con = Con::new(&dir.path().join("con"), deadline);
    assert!(con.wait_for(guest::PROMPT, deadline), "{}", con.out);
    // O_DIRECT writes reach the device without a flush request: the new
    // clusters' metadata is only in ferro's caches when SIGTERM comes.
    let out = con.sh(
        "printf 'ferro-sigterm-%04d\\n' $(seq 1 512) > /tmp/p && \
         dd if=/tmp/p of=/dev/vda bs=4096 seek=1000 oflag=direct 2>&1 | tail -1",
        deadline,
    );
    assert!(!out.contains("invalid") && !out.contains("can't"), "{out}");
    let pid = r.child.id() as i32;
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let (code, out) = r.finish(Instant::now() + Duration::from_secs(120));
    assert_eq!(code, 0, "{out}");
    let st = status_file(&dir.path().join("status.json"));
    assert_eq!(st["reason"], "quit", "{st}");
    assert!(st["message"].as_str().unwrap().contains("SIGTERM"), "{st}");
    let check = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let raw = dir.path().join("d.raw");
    let conv = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&disk)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(conv.success());
    let data = std::fs::read(&raw).unwrap();
    let want: String = (1..=512)
        .map(|i| format!("ferro-sigterm-{i:04}\n"))
        .collect();
    let at = &data[1000 * 4096..][..want.len()];
    assert!(
        at == want.as_bytes(),
        "the data written before SIGTERM is missing"
    );
}

#[test]
fn host_errors_and_bad_flags() {
    let dir = tempdir();
    let st = dir.path().join("status.json");
    let out = ferro()
        .args(["run", "--disk", "/nonexistent/x.qcow2", "--status-file"])
        .arg(&st)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s = status_file(&st);
    assert_eq!(s["exit_code"], 1);
    assert_eq!(s["reason"], "error");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/x.qcow2"),
        "{s}"
    );
    let out = ferro()
        .args(["run", "--uuid", "not-a-uuid"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--uuid"));
    // A regular file where the control socket should go is not clobbered.
    let f = dir.path().join("ctl");
    std::fs::write(&f, b"keep").unwrap();
    let out = ferro()
        .args(["run", "--control"])
        .arg(&f)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&f).unwrap(), b"keep");
}
