//! End to end with Debian's kernel on the emulator: virtio-net on a TAP in a
//! network namespace this test creates (root needed). The guest sets its
//! address, pings the host side and sends 32 MiB over TCP; both ends agree
//! on the sha256. `--net bridge=` creates a TAP in the bridge and it is gone
//! after ferro exits.

mod run_common;
mod virtio_util;
use virtio_util::*;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_secs(300);
const BLOB: usize = 32 << 20;

struct Netns(String);

impl Netns {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ferro-e2e{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        Self(name)
    }
    fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(&self.0).args(args))
    }
    fn ferro(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, env!("CARGO_BIN_EXE_ferro")]);
        c
    }
    /// A TCP listener inside the namespace (bound from a thread that entered it).
    fn listen(&self, addr: &'static str) -> std::net::TcpListener {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid netns fd; only this thread moves.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            std::net::TcpListener::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn ping_and_32_mib_over_tcp_through_a_tap() {
    let ns = Netns::new();
    ns.ip(&["tuntap", "add", "dev", "ftap0", "mode", "tap"]);
    ns.ip(&["addr", "add", "10.0.2.2/24", "dev", "ftap0"]);
    ns.ip(&["link", "set", "ftap0", "up"]);
    let listener = ns.listen("10.0.2.2:5555");
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; BLOB];
        s.read_exact(&mut buf).unwrap();
        drop(s);
        let mut child = Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        let out = child.wait_with_output().unwrap();
        find_sha(&String::from_utf8_lossy(&out.stdout))
    });

    let mut r = boot_cmd(
        ns.ferro(),
        &["--net".into(), "tap=ftap0,mac=52:54:00:ab:cd:ef".into()],
    );
    let mac = sh(&mut r, "cat /sys/class/net/eth0/address", T);
    assert!(mac.contains("52:54:00:ab:cd:ef"), "{mac}");
    sh(
        &mut r,
        "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0",
        T,
    );
    let ping = sh(&mut r, "ping -c 3 -W 10 10.0.2.2", T);
    assert!(ping.contains("3 packets received"), "{ping}");
    let out = sh(
        &mut r,
        "dd if=/dev/urandom of=/tmp/blob bs=1M count=32 2>/dev/null && sha256sum /tmp/blob && \
         nc 10.0.2.2 5555 < /tmp/blob",
        T,
    );
    let guest_sum = find_sha(&out);
    assert_eq!(receiver.join().unwrap(), guest_sum);
    poweroff(r);
}

#[test]
fn bridge_mode_adds_a_tap_to_the_bridge_and_removes_it() {
    let ns = Netns::new();
    ns.ip(&["link", "add", "fbr0", "type", "bridge"]);
    ns.ip(&["addr", "add", "10.0.3.2/24", "dev", "fbr0"]);
    ns.ip(&["link", "set", "fbr0", "up"]);
    let mut r = boot_cmd(ns.ferro(), &["--net".into(), "bridge=fbr0".into()]);
    let ports = ns.ip(&["-o", "link", "show", "master", "fbr0"]);
    assert!(
        ports.contains("ferro"),
        "no ferro TAP in the bridge: {ports}"
    );
    sh(
        &mut r,
        "ip link set eth0 up && ip addr add 10.0.3.15/24 dev eth0",
        T,
    );
    let ping = sh(&mut r, "ping -c 2 -W 10 10.0.3.2", T);
    assert!(ping.contains("2 packets received"), "{ping}");
    poweroff(r);
    let links = ns.ip(&["-o", "link", "show"]);
    assert!(!links.contains("ferro"), "TAP left behind: {links}");
}
