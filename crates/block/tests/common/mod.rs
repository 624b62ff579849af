//! Shared helpers for the block crate's integration tests: running
//! qemu-img (a hard requirement: missing means failure, never a skip; the
//! runners come from `crates/ferro/tests/img_util/qemu.rs`, shared with the
//! `ferro img` tests) and a seeded random workload checked against an
//! in-memory reference.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use block::{BlockBackend, Image, OpenOptions};
use rand::{Rng, SeedableRng};

// qemu-img/qemu-io runners, shared with the `ferro img` tests.
#[path = "../../../ferro/tests/img_util/qemu.rs"]
mod qemu;
pub use qemu::*;

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `qemu-img check` must exit 0 (no corruption, no leaks).
#[track_caller]
pub fn assert_qemu_check_clean(path: &Path) {
    assert_qemu_clean(p(path));
}

/// `qemu-img compare` of an image against raw bytes.
#[track_caller]
pub fn assert_qemu_equal(dir: &Path, img: &Path, reference: &[u8]) {
    let raw = dir.join("reference.raw");
    std::fs::write(&raw, reference).unwrap();
    assert_qemu_compare(&["-f", "raw", p(&raw), p(img)]);
}

pub fn read_all(img: &mut dyn BlockBackend) -> Vec<u8> {
    let mut v = vec![0u8; img.size() as usize];
    img.read_at(&mut v, 0).unwrap();
    v
}

pub fn open_rw(path: &Path) -> Image {
    Image::open(path, &OpenOptions::default()).unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("BLOCK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Random data with some compressible and some zero pieces.
pub fn fill(rng: &mut rand::rngs::StdRng, buf: &mut [u8]) {
    match rng.gen_range(0..4) {
        0 => buf.fill(0),
        1 => {
            let b = rng.gen::<u8>();
            buf.fill(b)
        }
        _ => rng.fill(buf),
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub ops: usize,
    pub max_len: u64,
    pub snapshots: bool,
    pub compressed: bool,
    pub align: u64,
}

/// Applies a seeded random write/discard/zero/(snapshot) workload to the
/// image at `path`, mirrored in `reference`. Reopens the image now and
/// then. Returns the reference.
pub fn run_workload(path: &Path, seed: u64, w: Workload, reference: Vec<u8>) -> Vec<u8> {
    run_workload_with(path, seed, w, reference, &OpenOptions::default())
}

/// `run_workload` with explicit open options (e.g. tiny caches).
pub fn run_workload_with(
    path: &Path,
    seed: u64,
    w: Workload,
    mut reference: Vec<u8>,
    opts: &OpenOptions,
) -> Vec<u8> {
    eprintln!("workload on {} with seed {seed} ({w:?})", path.display());
    let open_rw = |p: &Path| Image::open(p, opts).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut img = open_rw(path);
    let size = img.size();
    let cs = img.cluster_size().unwrap_or(65536);
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    let mut buf = vec![0u8; w.max_len as usize];
    for i in 0..w.ops {
        let align = w.align.max(1);
        let off = rng.gen_range(0..size / align) * align;
        let len = (rng.gen_range(1..=w.max_len / align) * align).min(size - off);
        match rng.gen_range(0..100) {
            0..=59 => {
                let b = &mut buf[..len as usize];
                fill(&mut rng, b);
                img.write_at(b, off).unwrap();
                reference[off as usize..(off + len) as usize].copy_from_slice(b);
            }
            60..=69 => {
                img.discard(off, len).unwrap();
                // Discard reads zero on these images (no v2 + backing here).
                reference[off as usize..(off + len) as usize].fill(0);
            }
            70..=79 => {
                img.write_zeroes(off, len).unwrap();
                reference[off as usize..(off + len) as usize].fill(0);
            }
            80..=84 if w.compressed => {
                let c = rng.gen_range(0..size.div_ceil(cs)) * cs;
                let n = cs.min(size - c) as usize;
                let b = &mut buf[..n.min(w.max_len as usize)];
                if b.len() == n {
                    fill(&mut rng, b);
                    img.write_compressed(b, c).unwrap();
                    reference[c as usize..c as usize + n].copy_from_slice(b);
                }
            }
            85..=89 if w.snapshots => {
                let name = format!("s{i}");
                img.snapshot_create(&name).unwrap();
                snaps.push((name, reference.clone()));
            }
            90..=92 if w.snapshots && !snaps.is_empty() => {
                let k = rng.gen_range(0..snaps.len());
                img.snapshot_apply(&snaps[k].0).unwrap();
                reference = snaps[k].1.clone();
            }
            93..=94 if w.snapshots && !snaps.is_empty() => {
                let k = rng.gen_range(0..snaps.len());
                let (name, _) = snaps.remove(k);
                img.snapshot_delete(&name).unwrap();
            }
            95 => {
                img.flush().unwrap();
                drop(img);
                img = open_rw(path);
            }
            _ => {
                let mut r = vec![0u8; len as usize];
                img.read_at(&mut r, off).unwrap();
                assert!(
                    r == reference[off as usize..(off + len) as usize],
                    "seed {seed}: read at {off}+{len} differs from the reference (op {i})"
                );
            }
        }
    }
    let all = read_all(&mut img);
    assert!(
        all == reference,
        "seed {seed}: final contents differ from the reference"
    );
    img.flush().unwrap();
    drop(img);
    reference
}

pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
