//! Crash consistency: a child process runs a seeded write/discard/flush
//! workload on an image and is killed with SIGKILL at a random moment,
//! 60 times over several image kinds. After each kill, `qemu-img check`
//! must report no corruption (leaks are allowed), and every byte written
//! before the last completed flush must read back (bytes touched by later,
//! possibly in-flight operations are not checked).

mod common;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use block::{create, BlockBackend, CreateOptions, Format, Image, OpenOptions};
use common::*;
use rand::{Rng, SeedableRng};

const SIZE: u64 = 32 << 20;

#[derive(Clone, Copy)]
enum Op {
    Write { off: u64, len: u64, seed: u64 },
    Zero { off: u64, len: u64 },
    Discard { off: u64, len: u64 },
    Snapshot,
    DeleteSnapshot,
    Flush,
}

fn ops(seed: u64) -> impl Iterator<Item = Op> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::iter::from_fn(move || {
        let off = rng.gen_range(0..SIZE / 512) * 512;
        let len = (rng.gen_range(1..=512u64) * 512).min(SIZE - off);
        Some(match rng.gen_range(0..40) {
            0..=27 => Op::Write {
                off,
                len,
                seed: rng.gen(),
            },
            28..=30 => Op::Zero { off, len },
            31..=32 => Op::Discard { off, len },
            33 => Op::Snapshot,
            34 => Op::DeleteSnapshot,
            _ => Op::Flush,
        })
    })
}

fn data(seed: u64, len: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len as usize];
    rng.fill(&mut v[..]);
    v
}

/// The child: runs until killed, logging "op N" before each operation and
/// "flushed N" after each completed flush (N = index of the flush op).
#[test]
#[ignore = "helper process spawned by crash_kill9_keeps_images_consistent"]
fn crash_child() {
    let img = std::env::var("CRASH_IMAGE").expect("run by the crash test");
    let seed: u64 = std::env::var("CRASH_SEED").unwrap().parse().unwrap();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(std::env::var("CRASH_LOG").unwrap())
        .unwrap();
    let mut i = Image::open(Path::new(&img), &OpenOptions::default()).unwrap();
    for (n, op) in ops(seed).enumerate() {
        // One write(2) per line, so a kill cannot tear it.
        log.write_all(format!("op {n}\n").as_bytes()).unwrap();
        match op {
            Op::Write { off, len, seed } => i.write_at(&data(seed, len), off).unwrap(),
            Op::Zero { off, len } => i.write_zeroes(off, len).unwrap(),
            Op::Discard { off, len } => i.discard(off, len).unwrap(),
            Op::Snapshot => i.snapshot_create(&format!("s{n}")).unwrap(),
            Op::DeleteSnapshot => {
                if let Some(s) = i.snapshots().first() {
                    i.snapshot_delete(&s.id.clone()).unwrap();
                }
            }
            Op::Flush => {
                i.flush().unwrap();
                log.write_all(format!("flushed {n}\n").as_bytes()).unwrap();
            }
        }
    }
}

fn one_crash(dir: &Path, opts: &CreateOptions, seed: u64, kill_after: Duration) {
    let img = dir.join("crash.qcow2");
    let log = dir.join("crash.log");
    let _ = std::fs::remove_file(&img);
    create(
        &img,
        &CreateOptions {
            format: Some(Format::Qcow2),
            size: Some(SIZE),
            ..opts.clone()
        },
    )
    .unwrap();
    std::fs::write(&log, b"").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CRASH_IMAGE", &img)
        .env("CRASH_SEED", seed.to_string())
        .env("CRASH_LOG", &log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it get going (the log shows its first operation), then wait the
    // chosen time and kill it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "crash child never started"
        );
        if let Some(st) = child.try_wait().unwrap() {
            panic!("crash child exited early: {st}");
        }
        std::thread::yield_now();
    }
    std::thread::sleep(kill_after);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let mut last_op: i64 = -1;
    let mut flushed: i64 = -1;
    // Only whole lines count (belt and braces with the single writes).
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for l in complete.lines() {
        if let Some(n) = l.strip_prefix("op ") {
            last_op = n.parse().unwrap();
        } else if let Some(n) = l.strip_prefix("flushed ") {
            flushed = n.parse().unwrap();
        }
    }
    eprintln!("seed {seed}: killed after op {last_op}, last flush at op {flushed}");
    // qemu-img check: 0 clean or 3 leaks only. One exception: killed in the
    // middle of a snapshot operation, an active cluster may have refcount 1
    // with its COPIED flag still clear (refcount and flag live in different
    // clusters; qemu has the same window). That only costs a needless copy
    // on write, and check -r all fixes it; anything else fails.
    let o = qemu_img(&["check", p(&img)]);
    let code = o.status.code();
    let in_snapshot_op = matches!(
        ops(seed).nth(last_op.max(0) as usize),
        Some(Op::Snapshot | Op::DeleteSnapshot)
    );
    let report =
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    let harmless = |l: &str| {
        l.starts_with("ERROR OFLAG_COPIED") && l.ends_with("refcount=1") && {
            let hex = l
                .split('=')
                .nth(if l.contains("l1_index") { 2 } else { 1 })
                .unwrap_or("");
            let v = u64::from_str_radix(hex.split_whitespace().next().unwrap_or(""), 16)
                .unwrap_or(1 << 63);
            v & (1 << 63) == 0
        }
    };
    let only_flags = code == Some(2)
        && in_snapshot_op
        && report
            .lines()
            .filter(|l| l.starts_with("ERROR"))
            .all(harmless);
    if only_flags {
        eprintln!("seed {seed}: killed inside a snapshot operation; only stale COPIED flags");
        assert_eq!(
            qemu_img(&["check", "-r", "all", p(&img)]).status.code(),
            Some(0)
        );
    }
    assert!(
        code == Some(0) || code == Some(3) || only_flags,
        "seed {seed}: qemu-img check after kill -9 exited {code:?}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Expected contents up to the last completed flush; later ops blur.
    let mut want = vec![0u8; SIZE as usize];
    let mut known = vec![true; SIZE as usize];
    for (n, op) in ops(seed).enumerate().take((last_op + 1) as usize) {
        let (off, len) = match op {
            Op::Write { off, len, .. } | Op::Zero { off, len } | Op::Discard { off, len } => {
                (off as usize, len as usize)
            }
            _ => continue,
        };
        if n as i64 <= flushed {
            match op {
                Op::Write { seed, .. } => {
                    want[off..off + len].copy_from_slice(&data(seed, len as u64))
                }
                _ => want[off..off + len].fill(0),
            }
        } else {
            known[off..off + len].fill(false);
        }
    }
    let mut i = Image::open(&img, &OpenOptions::default()).unwrap();
    let got = read_all(&mut i);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        if known[k] && g != w {
            panic!("seed {seed}: flushed byte at {k} lost (ops {last_op}, flushed {flushed})");
        }
    }
    // The crashed image stays usable.
    i.write_at(&[1u8; 4096], 0).unwrap();
    drop(i);
    let code = qemu_img(&["check", p(&img)]).status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "seed {seed}: after reuse: {code:?}"
    );
}

#[test]
fn crash_kill9_keeps_images_consistent() {
    let dir = tempdir();
    let base_seed = seed_from_env(1000);
    eprintln!("crash test base seed {base_seed}");
    // (All kinds here can share clusters, so snapshots work.)
    let kinds = [
        CreateOptions::default(),
        CreateOptions {
            cluster_size: Some(4096),
            ..Default::default()
        },
        CreateOptions {
            extended_l2: true,
            ..Default::default()
        },
        CreateOptions {
            lazy_refcounts: true,
            ..Default::default()
        },
        CreateOptions {
            cluster_size: Some(512),
            refcount_bits: Some(64),
            ..Default::default()
        },
        CreateOptions {
            compat: Some(block::Compat::V2),
            ..Default::default()
        },
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(base_seed);
    for round in 0..60u64 {
        let opts = &kinds[round as usize % kinds.len()];
        let ms = rng.gen_range(1..150);
        one_crash(
            dir.path(),
            opts,
            base_seed + round,
            Duration::from_millis(ms),
        );
    }
}
