//! Images made by qemu-img (convert from raw files written here, snapshot,
//! create -b, rebase -u) read back byte for byte: our read of the whole disk
//! equals `qemu-img convert -O raw` of the same image, for every feature the
//! issue lists. Our own `check` must also find them clean and agree with
//! `qemu-img check --output=json` on the cluster counts.

mod common;
use std::path::Path;

use block::{BlockBackend, Image, OpenOptions, Repair};
use common::*;
use rand::{Rng, SeedableRng};

/// A raw file where each 64 KiB piece is zero, a repeated byte or random.
fn make_raw(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; size];
    for chunk in v.chunks_mut(64 << 10) {
        match rng.gen_range(0..3) {
            0 => {}
            1 => chunk.fill(rng.gen_range(1..=255)),
            _ => rng.fill(chunk),
        }
    }
    std::fs::write(path, &v).unwrap();
    v
}

fn qemu_raw(dir: &Path, img: &Path) -> Vec<u8> {
    let out = dir.join("qemu-out.raw");
    qemu_img_ok(&["convert", "-O", "raw", p(img), p(&out)]);
    std::fs::read(out).unwrap()
}

fn ours(img: &Path) -> Vec<u8> {
    let mut i = Image::open(
        img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    read_all(&mut i)
}

/// Our check is clean and agrees with qemu-img's counts.
fn check_agrees(img: &Path) {
    let mut i = Image::open(
        img,
        &OpenOptions {
            read_only: true,
            no_backing: true,
            ..Default::default()
        },
    )
    .unwrap();
    let r = i.check(Repair::None).unwrap();
    assert_eq!(
        (r.corruptions, r.leaks),
        (0, 0),
        "{}: {:?}",
        img.display(),
        r.messages
    );
    let q = qemu_img_ok(&["check", "--output=json", p(img)]);
    assert_eq!(
        json_u64(&q, "image-end-offset"),
        Some(r.image_end_offset),
        "{q}"
    );
    assert_eq!(
        json_u64(&q, "total-clusters"),
        Some(r.total_clusters),
        "{q}"
    );
    if let Some(a) = json_u64(&q, "allocated-clusters") {
        assert_eq!(a, r.allocated_clusters, "{q}");
    }
    if let Some(c) = json_u64(&q, "compressed-clusters") {
        assert_eq!(c, r.compressed_clusters, "{q}");
    }
}

fn converted(opts: &str, compress: bool, size: usize, seed: u64) {
    let dir = tempdir();
    let raw = dir.path().join("src.raw");
    let data = make_raw(&raw, size, seed);
    let img = dir.path().join("img.qcow2");
    let mut args = vec!["convert", "-O", "qcow2", "-o", opts];
    if compress {
        args.push("-c");
    }
    args.push(p(&raw));
    args.push(p(&img));
    qemu_img_ok(&args);
    let got = ours(&img);
    assert!(got == data, "{opts}: our read differs from the raw source");
    assert!(
        got == qemu_raw(dir.path(), &img),
        "{opts}: differs from qemu's convert"
    );
    check_agrees(&img);
}

#[test]
fn cluster_512() {
    converted("cluster_size=512", false, 2 << 20, 1);
}

#[test]
fn cluster_64k() {
    converted("cluster_size=65536", false, 8 << 20, 2);
}

#[test]
fn cluster_2m() {
    converted("cluster_size=2M", false, 16 << 20, 3);
}

#[test]
fn compat_v2() {
    converted("compat=0.10", false, 8 << 20, 4);
}

#[test]
fn refcount_bits_1() {
    converted("refcount_bits=1", false, 8 << 20, 5);
}

#[test]
fn refcount_bits_64() {
    converted("refcount_bits=64,cluster_size=4096", false, 4 << 20, 6);
}

#[test]
fn zlib_compressed() {
    converted("compression_type=zlib", true, 8 << 20, 7);
}

#[test]
fn zstd_compressed() {
    converted("compression_type=zstd", true, 8 << 20, 8);
}

#[test]
fn zlib_compressed_512() {
    converted("cluster_size=512", true, 1 << 20, 9);
}

#[test]
fn extended_l2() {
    converted("extended_l2=on,cluster_size=128k", false, 8 << 20, 10);
}

#[test]
fn lazy_refcounts() {
    converted("lazy_refcounts=on", false, 8 << 20, 11);
}

#[test]
fn preallocated_metadata() {
    let dir = tempdir();
    let img = dir.path().join("p.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        p(&img),
        "4M",
    ]);
    let raw = dir.path().join("src.raw");
    let data = make_raw(&raw, 4 << 20, 12);
    qemu_img_ok(&["convert", "-n", "-O", "qcow2", p(&raw), p(&img)]);
    assert!(ours(&img) == data);
    check_agrees(&img);
}

#[test]
fn internal_snapshots() {
    let dir = tempdir();
    let raw1 = dir.path().join("one.raw");
    let raw2 = dir.path().join("two.raw");
    let d1 = make_raw(&raw1, 8 << 20, 13);
    let d2 = make_raw(&raw2, 8 << 20, 14);
    let img = dir.path().join("s.qcow2");
    qemu_img_ok(&["convert", "-O", "qcow2", p(&raw1), p(&img)]);
    qemu_img_ok(&["snapshot", "-c", "first", p(&img)]);
    qemu_img_ok(&["convert", "-n", "-O", "qcow2", p(&raw2), p(&img)]);
    qemu_img_ok(&["snapshot", "-c", "second", p(&img)]);
    let got = ours(&img);
    assert!(got == d2, "active layer after the second write");
    check_agrees(&img);
    let mut i = open_rw(&img);
    let names: Vec<String> = i.snapshots().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["first", "second"]);
    i.snapshot_apply("first").unwrap();
    assert!(read_all(&mut i) == d1, "snapshot 'first' applied");
    drop(i);
    assert_qemu_check_clean(&img);
    assert!(
        qemu_raw(dir.path(), &img) == d1,
        "qemu reads what we applied"
    );
    let mut i = open_rw(&img);
    i.snapshot_delete("second").unwrap();
    i.snapshot_apply("1").unwrap(); // by id
    assert!(read_all(&mut i) == d1);
    drop(i);
    assert_qemu_check_clean(&img);
    let l = qemu_img_ok(&["snapshot", "-l", p(&img)]);
    assert!(l.contains("first") && !l.contains("second"), "{l}");
}

/// Writes `overlay` into `img` (which has a backing file) without hiding
/// the backing where `overlay` is zero.
fn write_overlay(img: &Path, raw: &Path) {
    qemu_img_ok(&[
        "convert",
        "-n",
        "--target-is-zero",
        "-O",
        "qcow2",
        p(raw),
        p(img),
    ]);
}

fn merge(base: &[u8], top: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for (i, c) in top.chunks(64 << 10).enumerate() {
        if c.iter().any(|&b| b != 0) {
            v[i * (64 << 10)..i * (64 << 10) + c.len()].copy_from_slice(c);
        }
    }
    v
}

fn chain(base_fmt: &str, top_opts: &str) {
    let dir = tempdir();
    let sub = dir.path().join("imgs");
    std::fs::create_dir(&sub).unwrap();
    let size = 8 << 20;
    let d0 = make_raw(&sub.join("d0.raw"), size, 20);
    let d1 = make_raw(&sub.join("d1.raw"), size, 21);
    let d2 = make_raw(&sub.join("d2.raw"), size, 22);
    let base = sub.join(format!("base.{base_fmt}"));
    qemu_img_ok(&["convert", "-O", base_fmt, p(&sub.join("d0.raw")), p(&base)]);
    // Relative backing names, resolved against the overlay's folder.
    let mid = sub.join("mid.qcow2");
    let bname = format!("base.{base_fmt}");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        &bname,
        "-F",
        base_fmt,
        p(&mid),
    ]);
    write_overlay(&mid, &sub.join("d1.raw"));
    let top = sub.join("top.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        top_opts,
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        p(&top),
    ]);
    write_overlay(&top, &sub.join("d2.raw"));
    let want = merge(&merge(&d0, &d1), &d2);
    // Open from another working directory: paths must resolve from the image.
    let got = ours(&top);
    assert!(got == want, "3-level chain ({base_fmt} base, {top_opts})");
    assert!(got == qemu_raw(dir.path(), &top));
    let mut i = Image::open(&top, &OpenOptions::default()).unwrap();
    let ext = i.block_status(0, size as u64).unwrap();
    assert!(
        ext.iter().any(|e| e.depth == 2),
        "some data comes from the base"
    );
    assert!(ext.iter().any(|e| e.depth == 0 && e.data));
}

#[test]
fn backing_chain_qcow2() {
    chain("qcow2", "cluster_size=65536");
}

#[test]
fn backing_chain_raw_base() {
    chain("raw", "cluster_size=65536");
}

#[test]
fn backing_chain_extended_l2_top() {
    chain("qcow2", "extended_l2=on,cluster_size=256k");
}

#[test]
fn backing_chain_v2_top() {
    chain("qcow2", "compat=0.10,cluster_size=4096");
}

#[test]
fn persistent_bitmaps_are_counted_then_dropped_safely() {
    let dir = tempdir();
    let img = dir.path().join("bm.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", p(&img), "16M"]);
    qemu_img_ok(&["bitmap", "--add", p(&img), "b0"]);
    let raw = dir.path().join("d.raw");
    let data = make_raw(&raw, 16 << 20, 30);
    qemu_img_ok(&["convert", "-n", "-O", "qcow2", p(&raw), p(&img)]);
    assert!(qemu_img_ok(&["info", p(&img)]).contains("bitmaps"));
    // Our check counts the bitmap's clusters as qemu does.
    check_agrees(&img);
    assert!(ours(&img) == data);
    // A writable open clears the bitmaps' autoclear bit (we do not update
    // them); qemu then ignores the bitmaps: at worst leaked clusters.
    let mut i = open_rw(&img);
    i.write_at(&[1u8; 4096], 0).unwrap();
    drop(i);
    let code = qemu_img(&["check", p(&img)]).status.code();
    assert!(code == Some(0) || code == Some(3), "{code:?}");
    let mut want = data.clone();
    want[..4096].fill(1);
    assert_qemu_equal(dir.path(), &img, &want);
}
