//! End to end, VM state on the riscv64 emulator (one booted default guest
//! for every check): pause/resume over the control socket, snapshots
//! (state file + internal qcow2 snapshot, revert drops a file written in
//! tmpfs and a write to the disk), `save`, then `ferro run --restore` in a
//! new process that still has the guest's files and a live shell; `-S`;
//! corrupt state files are refused with the reason.

mod run_common;
use run_common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The guest's serial console over `--console-socket`.
struct ConsoleClient {
    stream: UnixStream,
    rx: mpsc::Receiver<Vec<u8>>,
    output: String,
}

impl ConsoleClient {
    fn connect(path: &Path, deadline: Instant) -> ConsoleClient {
        let stream = connect(path, deadline);
        let mut r = stream.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        ConsoleClient {
            stream,
            rx,
            output: String::new(),
        }
    }

    fn wait_for(&mut self, needle: &str, deadline: Instant) -> bool {
        while !self.output.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.output.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => return false,
            }
        }
        true
    }

    /// Runs a shell command; returns its output (between unique markers).
    fn sh(&mut self, cmd: &str, deadline: Instant) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let start = self.output.len();
        // `@@B` / `@@E` split so that the echoed command line never matches.
        self.stream
            .write_all(format!("echo @@\"B{n}\"@@; {cmd}; echo @@\"E{n}:$?\"@@\n").as_bytes())
            .unwrap();
        let end = format!("@@E{n}:");
        assert!(
            self.wait_for_from(start, &end, deadline),
            "command {cmd:?} did not finish; console:\n{}",
            self.output
        );
        let out = &self.output[start..];
        let b = out.find(&format!("@@B{n}@@")).expect("begin marker") + format!("@@B{n}@@").len();
        let e = out.find(&end).unwrap();
        let status = &out[e + end.len()..];
        assert!(status.starts_with("0@@"), "{cmd:?} failed: {}", &out[b..e]);
        out[b..e].trim().to_string()
    }

    /// Waits for `needle` followed (later) by `@@`: the whole end marker.
    fn wait_for_from(&mut self, start: usize, needle: &str, deadline: Instant) -> bool {
        let done = |o: &str| {
            o.find(needle)
                .is_some_and(|i| o[i + needle.len()..].contains("@@"))
        };
        while !done(&self.output[start..]) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.output.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => return false,
            }
        }
        true
    }
}

fn connect(path: &Path, deadline: Instant) -> UnixStream {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "{}: {e}", path.display());
                std::thread::sleep(Duration::from_millis(20)); // polling for the socket
            }
        }
    }
}

/// The control socket (docs/CONTROL.md).
struct Ctl {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Ctl {
    fn connect(path: &Path, deadline: Instant) -> Ctl {
        let w = connect(path, deadline);
        let r = BufReader::new(w.try_clone().unwrap());
        Ctl { w, r }
    }

    fn call(&mut self, req: serde_json::Value) -> serde_json::Value {
        let mut line = req.to_string();
        line.push('\n');
        self.w.write_all(line.as_bytes()).unwrap();
        let mut resp = String::new();
        self.r.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{resp:?}: {e}"))
    }

    /// A command that must succeed; returns its result.
    fn ok(&mut self, req: serde_json::Value) -> serde_json::Value {
        let r = self.call(req.clone());
        assert_eq!(r["ok"], true, "{req} -> {r}");
        r.get("result").cloned().unwrap_or(serde_json::Value::Null)
    }
}

fn qemu_img(args: &[&str]) -> String {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn spawn(args: &[String]) -> Running {
    let _ = guest(); // fail loudly if the cache is missing
    let mut cmd = ferro();
    cmd.arg("run").args(args).env("FERRO_LOG", "warn");
    Running::spawn(cmd, Stdio::null())
}

#[test]
fn pause_snapshots_save_and_restore() {
    let d = tempdir();
    let p = |n: &str| path_str(&d.path().join(n));
    let disk = p("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &disk, "16M"]);
    let deadline = Instant::now() + BOOT_DEADLINE;
    let common = |ctl: &str, con: &str| -> Vec<String> {
        vec![
            "--disk".into(),
            format!("{disk},format=qcow2"),
            "--control".into(),
            ctl.into(),
            "--console-socket".into(),
            con.into(),
            "--snapshot-dir".into(),
            p("snaps"),
        ]
    };
    let vm1 = spawn(&common(&p("ctl1"), &p("con1")));
    let mut con = ConsoleClient::connect(Path::new(&p("con1")), deadline);
    let mut ctl = Ctl::connect(Path::new(&p("ctl1")), deadline);
    assert!(con.wait_for(guest::PROMPT, deadline), "{}", con.output);

    // Pause: the guest's clock and counters stand still, then go on.
    con.sh("echo before > /tmp/kept", deadline);
    ctl.ok(serde_json::json!({"cmd":"pause"}));
    assert_eq!(
        ctl.ok(serde_json::json!({"cmd":"status"}))["state"],
        "paused"
    );
    let e = ctl.call(serde_json::json!({"cmd":"pause","id":7}));
    assert_eq!(e["id"], 7);
    ctl.ok(serde_json::json!({"cmd":"resume"}));
    assert_eq!(
        ctl.ok(serde_json::json!({"cmd":"status"}))["state"],
        "running"
    );
    assert_eq!(con.sh("cat /tmp/kept", deadline), "before");

    // Snapshot, change RAM (tmpfs) and the disk, revert: both come back.
    let t = Instant::now();
    let s = ctl.ok(serde_json::json!({"cmd":"snapshot-create","name":"s1"}));
    eprintln!("snapshot-create: {:?}, {s}", t.elapsed());
    assert_eq!(s["name"], "s1");
    assert_eq!(s["disks"][0], disk.as_str());
    assert_eq!(
        ctl.ok(serde_json::json!({"cmd":"status"}))["state"],
        "running"
    );
    let e = ctl.call(serde_json::json!({"cmd":"snapshot-create","name":"s1"}));
    assert!(
        e["error"].as_str().unwrap().contains("already exists"),
        "{e}"
    );
    con.sh(
        "echo after > /tmp/gone; printf DISKMARK > /dev/vda; sync",
        deadline,
    );
    assert_eq!(con.sh("head -c 8 /dev/vda", deadline), "DISKMARK");
    let t = Instant::now();
    ctl.ok(serde_json::json!({"cmd":"snapshot-revert","name":"s1"}));
    eprintln!("snapshot-revert: {:?}", t.elapsed());
    assert_eq!(
        con.sh(
            "ls /tmp/gone 2>/dev/null; echo n=$(ls /tmp | grep -c gone)",
            deadline
        ),
        "n=0"
    );
    assert_eq!(con.sh("cat /tmp/kept", deadline), "before");
    // Read the disk bypassing the (reverted) page cache too (the kernel
    // logs the drop on the console, so that is a command of its own).
    con.sh("echo 3 > /proc/sys/vm/drop_caches", deadline);
    assert_eq!(
        con.sh("head -c 8 /dev/vda | od -An -c | tr -d ' \\n'", deadline),
        "\\0\\0\\0\\0\\0\\0\\0\\0"
    );
    let list = ctl.ok(serde_json::json!({"cmd":"snapshot-list"}));
    assert_eq!(list[0]["name"], "s1", "{list}");
    assert!(list[0]["vm_state_size"].as_u64().unwrap() > 4096);
    assert!(list[0]["date_sec"].as_u64().unwrap() > 1_600_000_000);
    let e = ctl.call(serde_json::json!({"cmd":"snapshot-revert","name":"nope"}));
    assert!(
        e["error"].as_str().unwrap().contains("does not exist"),
        "{e}"
    );
    let e = ctl.call(serde_json::json!({"cmd":"snapshot-create","name":"../x"}));
    assert!(
        e["error"].as_str().unwrap().contains("snapshot name"),
        "{e}"
    );
    ctl.ok(serde_json::json!({"cmd":"snapshot-create","name":"s2"}));
    ctl.ok(serde_json::json!({"cmd":"snapshot-delete","name":"s2"}));
    assert_eq!(
        ctl.ok(serde_json::json!({"cmd":"snapshot-list"}))
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // save needs a paused VM; then the VMM goes away.
    con.sh("echo saved > /tmp/marker", deadline);
    let state = p("vm.state");
    let e = ctl.call(serde_json::json!({"cmd":"save","path":state}));
    assert!(e["error"].as_str().unwrap().contains("paused"), "{e}");
    ctl.ok(serde_json::json!({"cmd":"pause"}));
    let t = Instant::now();
    ctl.ok(serde_json::json!({"cmd":"save","path":state}));
    let save_time = t.elapsed();
    ctl.ok(serde_json::json!({"cmd":"quit"}));
    let (code, out) = vm1.finish(deadline);
    assert_eq!(code, 0, "{out}");
    let size = std::fs::metadata(&state).unwrap().len();
    eprintln!("save: {save_time:?}, state file {size} bytes");

    // The disk carries the internal snapshot, and qemu-img finds it clean.
    let l = qemu_img(&["snapshot", "-l", &disk]);
    assert!(l.contains("s1") && !l.contains("s2"), "{l}");
    qemu_img(&["check", &disk]);

    // Corrupt or truncated state files are refused, naming the problem.
    let data = std::fs::read(&state).unwrap();
    let bad = p("bad.state");
    for (mutate, why) in [
        (
            Box::new(|v: &mut Vec<u8>| v.truncate(v.len() / 2)) as Box<dyn Fn(&mut Vec<u8>)>,
            "truncated",
        ),
        (
            Box::new(|v: &mut Vec<u8>| {
                let n = v.len();
                v[n - 100] ^= 1
            }),
            "checksum",
        ),
        (Box::new(|v: &mut Vec<u8>| v[8] = 9), "version 9"),
    ] {
        let mut v = data.clone();
        mutate(&mut v);
        std::fs::write(&bad, &v).unwrap();
        let (code, out) = spawn(&["--restore".into(), bad.clone()]).finish(deadline);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(why), "{why}: {out}");
    }

    // A new VMM from the file, started paused (-S), then resumed.
    let t = Instant::now();
    let mut args = common(&p("ctl2"), &p("con2"));
    args.extend(["--restore".into(), state.clone(), "-S".into()]);
    let vm2 = spawn(&args);
    let mut ctl = Ctl::connect(Path::new(&p("ctl2")), deadline);
    assert_eq!(
        ctl.ok(serde_json::json!({"cmd":"status"}))["state"],
        "paused"
    );
    let mut con = ConsoleClient::connect(Path::new(&p("con2")), deadline);
    ctl.ok(serde_json::json!({"cmd":"resume"}));
    assert_eq!(con.sh("cat /tmp/marker", deadline), "saved");
    eprintln!("restore to a shell command answered: {:?}", t.elapsed());
    assert_eq!(con.sh("cat /tmp/kept", deadline), "before");
    assert_eq!(con.sh("echo live-$((6*7))", deadline), "live-42");
    // The snapshot taken before the save still reverts in the new process.
    ctl.ok(serde_json::json!({"cmd":"snapshot-revert","name":"s1"}));
    assert_eq!(
        con.sh("echo n=$(ls /tmp | grep -c marker)", deadline),
        "n=0"
    );
    ctl.ok(serde_json::json!({"cmd":"quit"}));
    let (code, out) = vm2.finish(deadline);
    assert_eq!(code, 0, "{out}");
    qemu_img(&["check", &disk]);
}
