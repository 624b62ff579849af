//! Shared helpers for the `ferro img` integration tests: run ferro and
//! qemu-img (which must be installed: `scripts/deps test` does it; the
//! qemu helpers live in `qemu.rs`, shared with the block crate's tests),
//! make deterministic test data, read images back as raw bytes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod qemu;
pub use qemu::*;

pub fn ferro_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferro")
}

/// `ferro img ARGS…`.
pub fn ferro(args: &[&str]) -> Output {
    Command::new(ferro_bin())
        .arg("img")
        .args(args)
        .output()
        .expect("run ferro")
}

/// Panics with both streams unless the command exited 0.
#[track_caller]
pub fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferro-img-test")
        .tempdir()
        .expect("tempdir")
}

pub fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// splitmix64.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A raw file of `size` bytes: per 64 KiB block, zero, fully random,
/// compressible, or a few random 4 KiB pieces (so converted images have holes, full clusters
/// and partial ones).
pub fn make_raw(path: &str, size: u64, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut data = vec![0u8; size as usize];
    for blk in data.chunks_mut(65536) {
        match r.below(5) {
            0 => {}
            1 => r.fill(blk),
            // Compressible: a few random bytes repeated with variations.
            2 => {
                let mut seed = [0u8; 64];
                r.fill(&mut seed);
                for (i, b) in blk.iter_mut().enumerate() {
                    *b = seed[i % 64] ^ ((i / 4096) as u8);
                }
            }
            _ => {
                for _ in 0..1 + r.below(4) {
                    let n = blk.len() / 4096;
                    if n == 0 {
                        continue;
                    }
                    let i = r.below(n as u64) as usize * 4096;
                    let end = (i + 4096).min(blk.len());
                    r.fill(&mut blk[i..end]);
                }
            }
        }
    }
    std::fs::write(path, &data).expect("write raw");
    data
}

/// The guest view of an image, read by qemu-img.
pub fn raw_by_qemu(img: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("qemu-view-{}.raw", unique()));
    let out_s = out.to_string_lossy().into_owned();
    ok(qemu_img(&["convert", "-O", "raw", img, &out_s]));
    let v = std::fs::read(&out).expect("read");
    let _ = std::fs::remove_file(&out);
    v
}

/// The guest view of an image, read by `ferro img convert -O raw`.
pub fn raw_by_ferro(img: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("ferro-view-{}.raw", unique()));
    let out_s = out.to_string_lossy().into_owned();
    ok(ferro(&["convert", "-O", "raw", img, &out_s]));
    let v = std::fs::read(&out).expect("read");
    let _ = std::fs::remove_file(&out);
    v
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Asserts two byte buffers are equal, naming the first differing offset.
#[track_caller]
pub fn assert_same(what: &str, a: &[u8], b: &[u8]) {
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!(
            "{what}: first difference at byte {i} ({:#x} vs {:#x})",
            a[i], b[i]
        );
    }
}

/// Asserts `qemu-img compare` says identical.
#[track_caller]
pub fn assert_qemu_identical(a: &str, b: &str) {
    assert_qemu_compare(&[a, b]);
}

pub fn path_buf(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// A command's stdout parsed as JSON.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", stdout(o)))
}
