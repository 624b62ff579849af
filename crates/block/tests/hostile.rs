//! Hostile and damaged images: clear errors, never a panic, hang or huge
//! allocation. Also replays every image here (plus seeded random mutations
//! of valid images) through the `image_open` fuzz target's body.

mod common;
use std::path::{Path, PathBuf};

use block::{create, BlockBackend, CreateOptions, Error, Format, Image, OpenOptions, Repair};
use common::*;
use rand::{Rng, SeedableRng};

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}
fn get64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

/// A small valid qcow2 (64 KiB clusters, 4 MiB) with data in its first
/// clusters, as bytes.
fn valid_image(dir: &Path, opts: CreateOptions) -> Vec<u8> {
    let path = dir.join("valid.qcow2");
    create(
        &path,
        &CreateOptions {
            format: Some(Format::Qcow2),
            size: Some(4 << 20),
            ..opts
        },
    )
    .unwrap();
    let mut i = open_rw(&path);
    let data: Vec<u8> = (0..200_000u32).map(|x| (x % 251) as u8).collect();
    i.write_at(&data, 0).unwrap();
    i.flush().unwrap();
    drop(i);
    std::fs::read(&path).unwrap()
}

fn write_img(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn open_ro(p: &Path) -> block::Result<Image> {
    Image::open(
        p,
        &OpenOptions {
            format: Some(Format::Qcow2),
            read_only: true,
            ..Default::default()
        },
    )
}

fn expect_open_err(bytes: &[u8], needle: &str) {
    let dir = tempdir();
    let p = write_img(dir.path(), "bad.qcow2", bytes);
    match open_ro(&p) {
        Ok(_) => panic!("hostile image opened (expected an error mentioning {needle:?})"),
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains(needle), "error {m:?} should mention {needle:?}");
        }
    }
    block::fuzzing::open_and_read(bytes);
}

#[test]
fn truncated_files() {
    let dir = tempdir();
    let v = valid_image(dir.path(), CreateOptions::default());
    for len in [
        0usize,
        3,
        4,
        20,
        71,
        72,
        100,
        103,
        4096,
        65536,
        65536 * 2 + 7,
    ] {
        let cut = &v[..len.min(v.len())];
        let p = write_img(dir.path(), "t.qcow2", cut);
        // Probing a file shorter than the magic gives raw; force qcow2.
        let r = open_ro(&p);
        if len < 65536 * 3 {
            assert!(r.is_err(), "truncated to {len} bytes must not open");
        }
        block::fuzzing::open_and_read(cut);
    }
}

#[test]
fn tables_past_eof() {
    let dir = tempdir();
    let mut v = valid_image(dir.path(), CreateOptions::default());
    put64(&mut v, 40, 1 << 40);
    expect_open_err(&v, "past the end of the file");
    let mut v = valid_image(dir.path(), CreateOptions::default());
    put64(&mut v, 48, 1 << 40);
    expect_open_err(&v, "past the end of the file");
}

#[test]
fn absurd_table_sizes() {
    let dir = tempdir();
    let mut v = valid_image(dir.path(), CreateOptions::default());
    put32(&mut v, 36, u32::MAX);
    expect_open_err(&v, "L1 table too large");
    let mut v = valid_image(dir.path(), CreateOptions::default());
    put32(&mut v, 56, u32::MAX);
    expect_open_err(&v, "too large");
    let mut v = valid_image(dir.path(), CreateOptions::default());
    put64(&mut v, 24, 1 << 60); // virtual size the L1 cannot map
    expect_open_err(&v, "too small");
    let mut v = valid_image(dir.path(), CreateOptions::default());
    put32(&mut v, 20, 31); // 2 GiB clusters
    expect_open_err(&v, "cluster size");
    let mut v = valid_image(dir.path(), CreateOptions::default());
    put32(&mut v, 60, 10_000_000); // snapshots
    expect_open_err(&v, "snapshot");
}

#[test]
fn overlapping_tables() {
    let dir = tempdir();
    let mut v = valid_image(dir.path(), CreateOptions::default());
    put64(&mut v, 48, 0); // refcount table on the header
    expect_open_err(&v, "overlaps the qcow2 header");
    let mut v = valid_image(dir.path(), CreateOptions::default());
    let rt = get64(&v, 48);
    put64(&mut v, 40, rt); // L1 on the refcount table
    expect_open_err(&v, "overlaps the refcount table");
}

#[test]
fn l2_table_past_eof_or_unaligned() {
    let dir = tempdir();
    let mut v = valid_image(dir.path(), CreateOptions::default());
    let l1 = get64(&v, 40) as usize;
    put64(&mut v, l1, (1 << 63) | (1 << 40));
    let p = write_img(dir.path(), "l2eof.qcow2", &v);
    let mut i = open_ro(&p).unwrap();
    let mut buf = vec![0u8; 4096];
    // Past EOF reads as zeroes (like qemu's file layer); no panic.
    i.read_at(&mut buf, 0).unwrap();
    let r = i.check(Repair::None).unwrap();
    assert!(r.corruptions > 0, "check reports the dangling L2 table");
    let mut v2 = v.clone();
    put64(&mut v2, l1, (1 << 63) | 0x30200);
    let p = write_img(dir.path(), "l2unal.qcow2", &v2);
    let mut i = open_ro(&p).unwrap();
    let e = i.read_at(&mut buf, 0).unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    assert!(e.to_string().contains("not cluster aligned"), "{e}");
    block::fuzzing::open_and_read(&v);
    block::fuzzing::open_and_read(&v2);
}

#[test]
fn compressed_garbage() {
    let dir = tempdir();
    let raw = dir.path().join("r.raw");
    std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
    let img = dir.path().join("c.qcow2");
    qemu_img_ok(&["convert", "-c", "-O", "qcow2", p(&raw), p(&img)]);
    let mut v = std::fs::read(&img).unwrap();
    // Find the first compressed L2 entry and scribble over its data.
    let l1 = get64(&v, 40) as usize;
    let l2 = (get64(&v, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let e = get64(&v, l2);
    assert!(e & (1 << 62) != 0, "qemu wrote a compressed cluster");
    let off = (e & ((1 << 54) - 1)) as usize;
    for b in &mut v[off..off + 16] {
        *b = 0xff;
    }
    let p2 = write_img(dir.path(), "cbad.qcow2", &v);
    let mut i = open_ro(&p2).unwrap();
    let mut buf = vec![0u8; 65536];
    let err = i.read_at(&mut buf, 0).unwrap_err();
    assert!(err.to_string().contains("does not inflate"), "{err}");
    block::fuzzing::open_and_read(&v);
}

#[test]
fn backing_loops() {
    let dir = tempdir();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    let mk = |path: &Path, backing: &str| {
        create(
            path,
            &CreateOptions {
                format: Some(Format::Qcow2),
                size: Some(1 << 20),
                backing_file: Some(backing.into()),
                backing_format: Some(Format::Qcow2),
                ..Default::default()
            },
        )
    };
    // Self loop: create needs the backing to exist to read its size, so
    // give a size and point at itself.
    mk(&a, "a.qcow2").unwrap_or_else(|_| {
        create(
            &a,
            &CreateOptions {
                format: Some(Format::Qcow2),
                size: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap();
        let mut i = Image::open(
            &a,
            &OpenOptions {
                no_backing: true,
                ..Default::default()
            },
        )
        .unwrap();
        drop(i.flush());
    });
    qemu_img_ok(&["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", p(&a)]);
    let e = Image::open(&a, &OpenOptions::default())
        .err()
        .expect("self loop refused");
    assert!(e.to_string().contains("loop"), "{e}");
    // Two-image loop.
    create(
        &b,
        &CreateOptions {
            format: Some(Format::Qcow2),
            size: Some(1 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    qemu_img_ok(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", p(&a)]);
    qemu_img_ok(&["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", p(&b)]);
    let e = Image::open(&a, &OpenOptions::default())
        .err()
        .expect("loop refused");
    assert!(e.to_string().contains("loop"), "{e}");
    let e = block::info_chain(&a, &OpenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("loop"), "{e}");
    // Without the chain it opens.
    Image::open(
        &a,
        &OpenOptions {
            no_backing: true,
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn unknown_incompatible_feature_is_named() {
    let dir = tempdir();
    let v = valid_image(dir.path(), CreateOptions::default());
    // Bit 5 with the image's feature table naming it.
    let mut named = v.clone();
    put64(&mut named, 72, 1 << 5);
    // Append an entry to the feature name table: rewrite its first entry.
    let ft = find_ext(&named, 0x6803_f857).expect("feature table");
    named[ft] = 0;
    named[ft + 1] = 5;
    named[ft + 2..ft + 48].fill(0);
    named[ft + 2..ft + 2 + 13].copy_from_slice(b"shiny feature");
    expect_open_err(&named, "shiny feature");
    // Bit 40 with no name.
    let mut anon = v.clone();
    put64(&mut anon, 72, 1 << 40);
    expect_open_err(&anon, "Unknown incompatible feature: 10000000000");
    // qemu agrees it cannot open it.
    let p = write_img(dir.path(), "f.qcow2", &named);
    let o = qemu_img(&["info", p.to_str().unwrap()]);
    assert!(!o.status.success());
}

fn find_ext(img: &[u8], ty: u32) -> Option<usize> {
    let mut off = u32::from_be_bytes(img[100..104].try_into().unwrap()) as usize;
    loop {
        let t = u32::from_be_bytes(img[off..off + 4].try_into().unwrap());
        let len = u32::from_be_bytes(img[off + 4..off + 8].try_into().unwrap()) as usize;
        if t == ty {
            return Some(off + 8);
        }
        if t == 0 {
            return None;
        }
        off += 8 + len.next_multiple_of(8);
    }
}

#[test]
fn unknown_header_extension_is_skipped_and_kept() {
    let dir = tempdir();
    let mut v = valid_image(dir.path(), CreateOptions::default());
    // Insert an unknown extension before the end marker: overwrite the
    // end-of-extensions with ours followed by a new end.
    let mut off = 112usize;
    loop {
        let t = u32::from_be_bytes(v[off..off + 4].try_into().unwrap());
        let len = u32::from_be_bytes(v[off + 4..off + 8].try_into().unwrap()) as usize;
        if t == 0 {
            break;
        }
        off += 8 + len.next_multiple_of(8);
    }
    put32(&mut v, off, 0x1234_5678);
    put32(&mut v, off + 4, 5);
    v[off + 8..off + 13].copy_from_slice(b"hello");
    v[off + 16..off + 24].fill(0);
    let p = write_img(dir.path(), "ext.qcow2", &v);
    let mut i = open_rw(&p);
    let mut buf = vec![0u8; 1000];
    i.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf[251], 0);
    assert_eq!(buf[252], 1);
    // A header rewrite (rebase -u) keeps it.
    drop(i);
    block::rebase(
        &p,
        &block::RebaseOptions {
            backing: None,
            backing_format: None,
            unsafe_mode: true,
        },
        None,
    )
    .unwrap();
    let v2 = std::fs::read(&p).unwrap();
    assert!(
        find_ext(&v2, 0x1234_5678).is_some(),
        "unknown extension preserved"
    );
    assert_qemu_check_clean(&p);
}

#[test]
fn corrupt_bit_opens_read_only() {
    let dir = tempdir();
    let mut v = valid_image(dir.path(), CreateOptions::default());
    put64(&mut v, 72, 1 << 1);
    let p = write_img(dir.path(), "corrupt.qcow2", &v);
    let mut i = open_rw(&p);
    assert!(i.read_only());
    let mut buf = vec![0u8; 512];
    i.read_at(&mut buf, 0).unwrap();
    assert!(matches!(i.write_at(&buf, 0), Err(Error::ReadOnly)));
    assert!(i.info().unwrap().qcow2.unwrap().corrupt);
    drop(i);
    // check -r all on a check-mode open clears it.
    let mut i = Image::open(
        &p,
        &OpenOptions {
            check: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!i.read_only());
    let r = i.check(Repair::All).unwrap();
    assert_eq!(r.corruptions, 0);
    drop(i);
    assert!(
        !open_rw(&p).read_only(),
        "corrupt bit cleared by the repair"
    );
}

#[test]
fn dirty_image_refcounts_rebuilt_on_open() {
    let dir = tempdir();
    let mut v = valid_image(
        dir.path(),
        CreateOptions {
            lazy_refcounts: true,
            ..Default::default()
        },
    );
    // Dirty, and the refcount block wiped (as after a crash with lazy refcounts).
    put64(&mut v, 72, 1);
    let rt = get64(&v, 48) as usize;
    let rb = get64(&v, rt) as usize;
    for b in &mut v[rb + 2..rb + 65536] {
        *b = 0;
    }
    let p = write_img(dir.path(), "dirty.qcow2", &v);
    // qemu's check sees the damage.
    let o = qemu_img(&["check", p.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    let mut i = open_rw(&p);
    let mut buf = vec![0u8; 200_000];
    i.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf[300], (300 % 251) as u8);
    i.write_at(&buf[..4096], 1 << 20).unwrap();
    drop(i);
    assert_qemu_check_clean(&p);
    // Top-level key: the nested protocol-layer child has its own dirty-flag.
    let info: serde_json::Value = serde_json::from_str(&qemu_img_ok(&[
        "info",
        "--output=json",
        p.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(info["dirty-flag"], false, "{info}");
}

#[test]
fn autoclear_bits_cleared_on_writable_open() {
    let dir = tempdir();
    let mut v = valid_image(dir.path(), CreateOptions::default());
    put64(&mut v, 88, 1 << 7);
    let p = write_img(dir.path(), "ac.qcow2", &v);
    drop(open_rw(&p));
    let v2 = std::fs::read(&p).unwrap();
    assert_eq!(get64(&v2, 88), 0);
    assert_qemu_check_clean(&p);
}

/// The fuzz target over seeded random corruptions of valid images.
#[test]
fn fuzz_body_over_mutations() {
    let dir = tempdir();
    let seed = seed_from_env(99);
    eprintln!("mutation seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let bases = [
        valid_image(dir.path(), CreateOptions::default()),
        valid_image(
            dir.path(),
            CreateOptions {
                cluster_size: Some(512),
                refcount_bits: Some(1),
                ..Default::default()
            },
        ),
        valid_image(
            dir.path(),
            CreateOptions {
                extended_l2: true,
                cluster_size: Some(16384),
                ..Default::default()
            },
        ),
    ];
    let rounds: usize = std::env::var("BLOCK_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    for round in 0..rounds {
        let base = &bases[round % bases.len()];
        let mut v = base.clone();
        let n = rng.gen_range(1..8);
        for _ in 0..n {
            // Mostly metadata: header, then the first tables.
            let limit = if rng.gen_bool(0.5) {
                512
            } else {
                v.len().min(5 * 65536)
            };
            let at = rng.gen_range(0..limit.min(v.len()));
            match rng.gen_range(0..3) {
                0 => v[at] ^= 1 << rng.gen_range(0..8),
                1 => v[at] = rng.gen(),
                _ => {
                    let k = rng.gen_range(0..8).min(v.len() - at);
                    for b in &mut v[at..at + k] {
                        *b = 0xff;
                    }
                }
            }
        }
        if rng.gen_bool(0.1) {
            let cut = rng.gen_range(0..v.len());
            v.truncate(cut);
        }
        block::fuzzing::open_and_read(&v);
    }
    // A few raw and empty inputs.
    block::fuzzing::open_and_read(&[]);
    block::fuzzing::open_and_read(b"QFI");
    block::fuzzing::open_and_read(&[0u8; 4096]);
}

/// A valid image with one internal snapshot, as bytes.
fn image_with_snapshot(dir: &Path) -> Vec<u8> {
    let v = valid_image(dir, CreateOptions::default());
    let p = write_img(dir, "snap.qcow2", &v);
    let mut i = open_rw(&p);
    i.snapshot_create("s1").unwrap();
    drop(i);
    std::fs::read(&p).unwrap()
}

#[test]
fn fixed_tables_overlapping_each_other_are_named() {
    let dir = tempdir();
    let v = image_with_snapshot(dir.path());
    let l1 = get64(&v, 40);
    let rt = get64(&v, 48);
    let st = get64(&v, 64) as usize;
    assert!(st > 0 && u32::from_be_bytes(v[60..64].try_into().unwrap()) == 1);
    // Snapshot table on the active L1 table.
    let mut b = v.clone();
    put64(&mut b, 64, l1);
    expect_open_err(&b, "Snapshot table at");
    expect_open_err(&b, "overlaps the active L1 table");
    // The snapshot's own L1 table on the refcount table, and on the header.
    let mut b = v.clone();
    put64(&mut b, st, rt);
    expect_open_err(&b, "L1 table of snapshot 1");
    expect_open_err(&b, "overlaps the refcount table");
    // The refcount table on the snapshot table (the later table named
    // first).
    let mut b = v.clone();
    put64(&mut b, 48, st as u64);
    expect_open_err(
        &b,
        &format!("Snapshot table at {st:#x} overlaps the refcount table"),
    );
    // The active L1 table on the snapshot's L1 table.
    let mut b = v.clone();
    put64(&mut b, 40, get64(&v, st));
    expect_open_err(&b, "L1 table of snapshot 1 at");
    expect_open_err(&b, "overlaps the active L1 table");
    // Unmodified, it opens.
    let p = write_img(dir.path(), "ok.qcow2", &v);
    open_ro(&p).unwrap();
}

#[test]
fn bitmap_directory_overlapping_a_table_is_named() {
    let dir = tempdir();
    let img = dir.path().join("bm.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", p(&img), "4M"]);
    qemu_img_ok(&["bitmap", "--add", p(&img), "b0"]);
    let mut v = std::fs::read(&img).unwrap();
    let ext = find_ext(&v, 0x2385_2875).expect("qemu-img wrote a bitmaps extension");
    let l1 = get64(&v, 40);
    put64(&mut v, ext + 16, l1);
    expect_open_err(&v, "Bitmap directory at");
    expect_open_err(&v, "overlaps the active L1 table");
}

#[test]
fn l2_table_or_refcount_block_on_metadata_is_refused_when_loaded() {
    let dir = tempdir();
    let v = valid_image(dir.path(), CreateOptions::default());
    let l1 = get64(&v, 40);
    let rt = get64(&v, 48);
    let mut buf = vec![0u8; 4096];
    // The first L2 table on the refcount table.
    let mut b = v.clone();
    put64(&mut b, l1 as usize, (1 << 63) | rt);
    let path = write_img(dir.path(), "l2rt.qcow2", &b);
    let mut i = open_ro(&path).unwrap();
    let e = i.read_at(&mut buf, 0).unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    let m = e.to_string();
    assert!(
        m.contains(&format!("L2 table at {rt:#x} overlaps the refcount table")),
        "{m}"
    );
    block::fuzzing::open_and_read(&b);
    // The first refcount block on the active L1 table: the first
    // allocation loads it and stops.
    let mut b = v.clone();
    put64(&mut b, rt as usize, l1);
    let path = write_img(dir.path(), "rbl1.qcow2", &b);
    let mut i = open_rw(&path);
    let e = i.write_at(&buf, 3 << 20).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains(&format!(
            "refcount block at {l1:#x} overlaps the active L1 table"
        )),
        "{m}"
    );
    drop(i);
    assert_eq!(
        std::fs::read(&path).unwrap()[l1 as usize..l1 as usize + 8],
        b[l1 as usize..l1 as usize + 8],
        "the L1 table is untouched"
    );
    block::fuzzing::open_and_read(&b);
}

/// An image whose first data cluster is mapped (COPIED, so written in
/// place) onto the active L1 table.
fn data_on_l1(dir: &Path) -> (Vec<u8>, u64) {
    let mut v = valid_image(dir, CreateOptions::default());
    let l1 = get64(&v, 40);
    let l2 = (get64(&v, l1 as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    put64(&mut v, l2, (1 << 63) | l1);
    (v, l1)
}

fn assert_marked_corrupt(e: &Error, what: &str) {
    let m = e.to_string();
    assert!(matches!(e, Error::Corrupt(_)), "{m}");
    assert!(
        m.contains(&format!(
            "Preventing invalid write on metadata (overlaps with {what}"
        )) && m.contains("image marked as corrupt"),
        "{m}"
    );
}

#[test]
fn data_write_over_metadata_is_refused_and_marks_the_image_corrupt() {
    let dir = tempdir();
    let (v, l1) = data_on_l1(dir.path());
    let path = write_img(dir.path(), "d.qcow2", &v);
    let mut i = open_rw(&path);
    let mut buf = vec![0u8; 4096];
    i.read_at(&mut buf, 0).unwrap(); // reading is harmless
    let e = i.write_at(&[0xaa; 4096], 0).unwrap_err();
    assert_marked_corrupt(&e, "active L1 table");
    // Nothing more is written.
    assert!(matches!(i.write_at(&buf, 1 << 20), Err(Error::ReadOnly)));
    drop(i);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(
        after[l1 as usize..l1 as usize + 4096],
        v[l1 as usize..l1 as usize + 4096],
        "the L1 table is untouched"
    );
    assert_eq!(get64(&after, 72) & 2, 2, "corrupt bit set");
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img_ok(&["info", "--output=json", p(&path)])).unwrap();
    assert_eq!(info["format-specific"]["data"]["corrupt"], true, "{info}");
    // Reopened, it is read-only (the corrupt bit is honoured).
    assert!(open_rw(&path).read_only());
}

#[test]
fn shared_image_write_over_metadata_is_refused() {
    let dir = tempdir();
    let (v, l1) = data_on_l1(dir.path());
    let path = write_img(dir.path(), "s.qcow2", &v);
    let s = block::SharedImage::new(open_rw(&path)).unwrap();
    let e = s.write_at(&[0x55; 4096], 0).unwrap_err();
    assert_marked_corrupt(&e, "active L1 table");
    drop(s);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(
        after[l1 as usize..l1 as usize + 4096],
        v[l1 as usize..l1 as usize + 4096]
    );
    assert_eq!(get64(&after, 72) & 2, 2, "corrupt bit set");
}

#[test]
fn metadata_with_a_zero_refcount_is_never_allocated() {
    let dir = tempdir();
    let v = valid_image(dir.path(), CreateOptions::default());
    let data: Vec<u8> = (0..200_000u32).map(|x| (x % 251) as u8).collect();
    // Drop the refcount of the (only) L2 table to 0: a plain allocator
    // would hand that cluster out again and overwrite the table.
    let l1 = get64(&v, 40);
    let l2 = get64(&v, l1 as usize) & 0x00ff_ffff_ffff_fe00;
    let rt = get64(&v, 48);
    let rb = get64(&v, rt as usize) as usize;
    let mut b = v.clone();
    let idx = (l2 >> 16) as usize;
    b[rb + idx * 2..rb + idx * 2 + 2].fill(0);
    let path = write_img(dir.path(), "z.qcow2", &b);
    let mut i = open_rw(&path);
    let more: Vec<u8> = (0..(1u32 << 20)).map(|x| (x % 241) as u8).collect();
    i.write_at(&more, 2 << 20).unwrap();
    i.flush().unwrap();
    drop(i);
    let mut i = open_ro(&path).unwrap();
    let mut got = vec![0u8; data.len()];
    i.read_at(&mut got, 0).unwrap();
    assert!(got == data, "data behind the L2 table survived");
    let mut got = vec![0u8; more.len()];
    i.read_at(&mut got, 2 << 20).unwrap();
    assert!(got == more);
}

/// Structure-aware mutations for the fuzz body: a table pointer moved onto
/// another table (header fields, L1 entries, refcount table entries, L2
/// entries), so the overlap checks are exercised, not just the parser.
#[test]
fn fuzz_body_over_overlapping_pointers() {
    let dir = tempdir();
    let seed = seed_from_env(7);
    eprintln!("overlap seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let base = image_with_snapshot(dir.path());
    let l1 = get64(&base, 40) as usize;
    let rt = get64(&base, 48) as usize;
    let st = get64(&base, 64) as usize;
    let l2 = (get64(&base, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let targets = [
        0u64,
        l1 as u64,
        rt as u64,
        st as u64,
        get64(&base, st),
        l2 as u64,
    ];
    let slots = [
        (40, 0u64),
        (48, 0),
        (64, 0),
        (st, 0),
        (l1, 1 << 63),
        (rt, 0),
        (l2, 1 << 63),
    ];
    for _ in 0..60 {
        let mut v = base.clone();
        for _ in 0..rng.gen_range(1..3) {
            let (at, flags) = slots[rng.gen_range(0..slots.len())];
            let t = targets[rng.gen_range(0..targets.len())];
            put64(&mut v, at, flags | t);
        }
        block::fuzzing::open_and_read(&v);
    }
}
