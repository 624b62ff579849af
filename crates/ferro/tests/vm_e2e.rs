//! ferrod with the real VMM and the default RISC-V guest, through the CLI:
//! define, start, the console shows a shell, machine-id comes from the
//! UUID, suspend/resume, snapshot create / write a file / revert (the file
//! is gone) / list, clean shutdown, linked clone boots with another
//! machine-id, undefine. One boot per VM.

mod vm_util;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_util::Daemon;

/// Sends `cmd` on the console and returns the output until `want` shows.
fn console_until(sock: &str, cmd: &str, want: &str, timeout: Duration) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut last_send = Instant::now() - Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        if last_send.elapsed() > Duration::from_secs(5) {
            s.write_all(cmd.as_bytes()).unwrap();
            last_send = Instant::now();
        }
        if let Ok(n) = s.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {want:?} on the console: {text}"
        );
    }
}

/// Runs `cmd` once in the guest shell; returns its output (between markers
/// split by quotes so the echoed command line never matches).
fn sh(sock: &str, cmd: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.write_all(format!("echo @@\"B{n}\"@@; {cmd}; echo @@\"E{n}:$?\"@@\n").as_bytes())
        .unwrap();
    let (b, e) = (format!("@@B{n}@@"), format!("@@E{n}:"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(k) = s.read(&mut buf) {
            out.extend_from_slice(&buf[..k]);
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        if let (Some(i), Some(j)) = (text.find(&b), text.find(&e)) {
            if text[j + e.len()..].contains("@@") {
                assert!(
                    text[j + e.len()..].starts_with("0@@"),
                    "{cmd:?} failed: {text}"
                );
                return text[i + b.len()..j].trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "{cmd:?} did not finish: {text}");
    }
}

/// The `State:` line of `ferro vm info`.
fn cli_state(d: &Daemon, name: &str) -> String {
    let out = d.ok(&["info", name]);
    out.lines()
        .find_map(|l| l.strip_prefix("State:"))
        .unwrap_or_else(|| panic!("no State: in {out}"))
        .trim()
        .to_string()
}

fn machine_id(d: &Daemon, name: &str) -> String {
    let sock = d.info(name)["console_socket"].as_str().unwrap().to_string();
    let uuid = d.info(name)["uuid"].as_str().unwrap().replace('-', "");
    // The shell is up when the command's answer (the UUID) comes back.
    let text = console_until(
        &sock,
        "cat /etc/machine-id\n",
        &uuid,
        Duration::from_secs(300),
    );
    assert!(text.contains('#'), "no shell prompt: {text}");
    uuid
}

#[test]
fn default_guest_lifecycle_through_the_cli() {
    let d = Daemon::with(None, &["--shutdown-timeout", "120"]);
    d.define_toml("guest", "memory = \"256M\"\n");
    let t0 = Instant::now();
    d.ok(&["start", "guest"]);
    eprintln!("start→running: {:?}", t0.elapsed());
    assert_eq!(d.info("guest")["state"], "running");
    let id1 = machine_id(&d, "guest");
    eprintln!("start→shell: {:?}", t0.elapsed());
    let con = d.info("guest")["console_socket"]
        .as_str()
        .unwrap()
        .to_string();

    let out = d.ok(&["suspend", "guest"]);
    assert!(out.contains("suspended"), "{out}");
    assert_eq!(cli_state(&d, "guest"), "paused");
    d.ok(&["resume", "guest"]);
    assert_eq!(cli_state(&d, "guest"), "running");
    assert_eq!(sh(&con, "echo alive"), "alive");

    // Snapshot, write a file, revert: the file is gone.
    let t = Instant::now();
    let out = d.ok(&["snapshot", "create", "guest", "before"]);
    assert!(out.contains("before"), "{out}");
    eprintln!("snapshot create: {:?}", t.elapsed());
    // The state lands in the VM's own snapshots dir (--snapshot-dir).
    let uuid = d.info("guest")["uuid"].as_str().unwrap().to_string();
    let state = d
        .state
        .join("vms")
        .join(&uuid)
        .join("snapshots/before.vmstate");
    assert!(state.is_file(), "no {}", state.display());
    sh(&con, "echo written > /tmp/e2e-file");
    assert_eq!(sh(&con, "cat /tmp/e2e-file"), "written");
    let t = Instant::now();
    d.ok(&["snapshot", "revert", "guest", "before"]);
    eprintln!("snapshot revert: {:?}", t.elapsed());
    assert_eq!(cli_state(&d, "guest"), "running");
    assert_eq!(
        sh(&con, "test -e /tmp/e2e-file && echo present || echo absent"),
        "absent"
    );
    let list = d.ok(&["snapshot", "list", "guest"]);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some("before")),
        "{list}"
    );

    let out = d.ok(&["shutdown", "guest"]);
    assert!(out.contains("is shut down"), "{out}");
    let i = d.info("guest");
    assert_eq!(
        (i["state"].as_str(), i["reason"].as_str()),
        (Some("shutoff"), Some("shutdown"))
    );

    d.ok(&["clone", "guest", "twin", "--linked"]);
    d.ok(&["start", "twin"]);
    let id2 = machine_id(&d, "twin");
    assert_ne!(id1, id2);
    d.ok(&["destroy", "twin"]);
    assert_eq!(d.info("twin")["reason"], "destroyed");
    d.ok(&["undefine", "twin"]);
    d.ok(&["undefine", "guest"]);
    assert!(!d.ok(&["list", "--all"]).contains("guest"));
    assert!(d.vmms().is_empty());
}
