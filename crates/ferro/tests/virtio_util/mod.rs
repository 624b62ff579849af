//! Builds the bare-metal virtio driver (baremetal.c) for the e2e tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Compiles baremetal.c with `-DTEST_<name>` into an ELF at 0x80000000.
pub fn build_baremetal(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/virtio_util/baremetal.c");
    let elf = dir.path().join(format!("{name}.elf"));
    let out = std::process::Command::new("riscv64-linux-gnu-gcc")
        .args([
            "-O2",
            "-ffreestanding",
            "-fno-builtin",
            "-fno-stack-protector",
            "-fno-pie",
            "-no-pie",
            "-nostdlib",
            "-nostartfiles",
            "-static",
            "-march=rv64gc",
            "-mabi=lp64d",
            "-mcmodel=medany",
            "-Wl,--no-relax",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(concat!(
            "-Wl,-T,",
            env!("CARGO_MANIFEST_DIR"),
            "/tests/virtio_util/baremetal.ld"
        ))
        .arg(format!("-DTEST_{}", name.to_uppercase()))
        .arg("-o")
        .arg(&elf)
        .arg(src)
        .output()
        .expect("riscv64-linux-gnu-gcc is required (scripts/deps installs gcc-riscv64-linux-gnu)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    elf
}

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::run_common::{ferro, guest, Running, BOOT_DEADLINE};

/// Boots `ferro run ARGS` (the default guest unless ARGS say otherwise) and
/// waits for the shell prompt.
pub fn boot(args: &[String]) -> Running {
    boot_cmd(ferro(), args)
}

/// Like [`boot`], with a prepared command (e.g. `ip netns exec NS ferro`).
pub fn boot_cmd(mut cmd: Command, args: &[String]) -> Running {
    let _ = guest(); // fail loudly if the cache is missing
    cmd.arg("run").args(args).env("FERRO_LOG", "warn");
    let mut r = Running::spawn(cmd, Stdio::piped());
    let deadline = Instant::now() + BOOT_DEADLINE;
    assert!(
        r.wait_for(guest::PROMPT, deadline),
        "no shell prompt; output:\n{}",
        r.output
    );
    r
}

/// Runs a shell command in the guest and returns what it printed; fails the
/// test if it exits non-zero or does not finish within `timeout`.
pub fn sh(r: &mut Running, cmd: &str, timeout: Duration) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let start = r.output.len();
    // The terminal echoes `$?` literally, so only real output matches.
    r.send(&format!("{cmd}; echo \"@@E{n}:$?@@\"\n"));
    let deadline = Instant::now() + timeout;
    let ok = format!("@@E{n}:0@@");
    let any = format!("@@E{n}:");
    loop {
        if r.wait_for(&ok, Instant::now() + Duration::from_secs(1)) {
            break;
        }
        let tail = &r.output[start..];
        if let Some(p) = tail.rfind(&any) {
            let next = tail[p + any.len()..].chars().next();
            if next.is_some_and(|c| c.is_ascii_digit()) {
                panic!("guest command {cmd:?} failed:\n{tail}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "guest command {cmd:?} timed out:\n{}",
            &r.output[start..]
        );
    }
    let tail = &r.output[start..];
    let body = tail.split(&ok).next().unwrap_or("");
    // Output starts after the last echo of the command line (the tty may
    // echo it once before the shell redraws it).
    let echo = format!("@@E{n}:$?@@");
    let after = body.rfind(&echo).map_or(body, |p| &body[p + echo.len()..]);
    after.split_once('\n').map_or("", |x| x.1).to_string()
}

/// `poweroff` and expect a clean exit 0.
pub fn poweroff(mut r: Running) -> String {
    r.send("poweroff\n");
    let (code, out) = r.finish(Instant::now() + Duration::from_secs(300));
    assert_eq!(code, 0, "{out}");
    out
}

/// Host-side sha256 of `path` (or of its first `len` bytes).
pub fn sha256_file(path: &std::path::Path, len: Option<u64>) -> String {
    let out = match len {
        None => Command::new("sha256sum").arg(path).output().unwrap(),
        Some(n) => Command::new("sh")
            .arg("-c")
            .arg(format!("head -c {n} '{}' | sha256sum", path.display()))
            .output()
            .unwrap(),
    };
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The first 64-hex-digit word in `s`.
pub fn find_sha(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .unwrap_or_else(|| panic!("no sha256 in {s:?}"))
        .to_string()
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
