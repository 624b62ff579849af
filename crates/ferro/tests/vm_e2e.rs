//! ferrod with the real VMM and the default RISC-V guest, through the CLI:
//! define, start, the console shows a shell, machine-id comes from the
//! UUID, clean shutdown, linked clone boots with another machine-id,
//! undefine. (Suspend/resume and snapshots join once `ferro run`'s riscv64
//! control socket implements them.)

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
