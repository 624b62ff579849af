//! Image-level operations checked against qemu-img: create (options,
//! preallocation, backing), info, resize, commit, rebase, convert, and
//! discard/zero semantics over backing files.

mod common;
use std::path::Path;

use block::{
    commit, convert, create, info_chain, rebase, BlockBackend, CommitOptions, Compat,
    ConvertOptions, CreateOptions, Format, Image, OpenOptions, Preallocation, RebaseOptions,
    ResizeOptions,
};
use common::*;
use rand::{Rng, SeedableRng};

fn qcow2(path: &Path, size: u64, more: CreateOptions) {
    create(
        path,
        &CreateOptions {
            format: Some(Format::Qcow2),
            size: Some(size),
            ..more
        },
    )
    .unwrap();
}

fn random(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("\"{key}\":");
    let at = json.find(&k)? + k.len();
    let rest = json[at..].trim_start();
    let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"'))
}

#[test]
fn info_matches_qemu() {
    let dir = tempdir();
    let base = dir.path().join("base.qcow2");
    qcow2(
        &base,
        64 << 20,
        CreateOptions {
            cluster_size: Some(4096),
            ..Default::default()
        },
    );
    let top = dir.path().join("top.qcow2");
    qcow2(
        &top,
        64 << 20,
        CreateOptions {
            backing_file: Some("base.qcow2".into()),
            backing_format: Some(Format::Qcow2),
            extended_l2: true,
            compression_type: Some(block::CompressionType::Zstd),
            lazy_refcounts: true,
            ..Default::default()
        },
    );
    let mut i = open_rw(&top);
    i.write_at(&[1u8; 4096], 0).unwrap();
    i.snapshot_create("snap one").unwrap();
    drop(i);
    let chain = info_chain(&top, &OpenOptions::default()).unwrap();
    assert_eq!(chain.len(), 2);
    // Parse properly: qemu-img 10 nests the protocol layer's info (with
    // its own "virtual-size") under "children" ahead of the top-level keys.
    let q: serde_json::Value =
        serde_json::from_str(&qemu_img_ok(&["info", "--output=json", p(&top)])).unwrap();
    let ours = &chain[0];
    assert_eq!(q["virtual-size"].as_u64(), Some(ours.virtual_size));
    assert_eq!(q["cluster-size"].as_u64(), ours.cluster_size);
    assert_eq!(q["format"], "qcow2");
    assert_eq!(
        q["backing-filename"].as_str(),
        ours.backing_filename.as_deref()
    );
    assert_eq!(
        q["full-backing-filename"].as_str(),
        ours.full_backing_filename.as_deref()
    );
    assert_eq!(q["backing-filename-format"], "qcow2");
    let spec = &q["format-specific"]["data"];
    assert_eq!(spec["compression-type"], "zstd");
    assert_eq!(spec["extended-l2"], true);
    assert_eq!(spec["lazy-refcounts"], true);
    let snap = &q["snapshots"][0];
    assert_eq!(snap["name"], "snap one");
    assert_eq!(ours.snapshots[0].name, "snap one");
    assert_eq!(snap["id"].as_str(), Some(ours.snapshots[0].id.as_str()));
    assert_eq!(snap["date-sec"].as_u64(), Some(ours.snapshots[0].date_sec));
    assert_eq!(q["actual-size"].as_u64(), Some(ours.actual_size));
    assert_eq!(chain[1].cluster_size, Some(4096));
    let q2 = qemu_img_ok(&["info", "--output=json", p(&base)]);
    assert_eq!(json_field(&q2, "cluster-size").unwrap(), "4096");
}

#[test]
fn create_variants_pass_qemu_check() {
    let dir = tempdir();
    let cases: Vec<(&str, CreateOptions)> = vec![
        (
            "meta",
            CreateOptions {
                preallocation: Preallocation::Metadata,
                ..Default::default()
            },
        ),
        (
            "falloc",
            CreateOptions {
                preallocation: Preallocation::Falloc,
                ..Default::default()
            },
        ),
        (
            "full",
            CreateOptions {
                preallocation: Preallocation::Full,
                cluster_size: Some(4096),
                ..Default::default()
            },
        ),
        (
            "v2",
            CreateOptions {
                compat: Some(Compat::V2),
                ..Default::default()
            },
        ),
        (
            "c512-rc64",
            CreateOptions {
                cluster_size: Some(512),
                refcount_bits: Some(64),
                ..Default::default()
            },
        ),
        (
            "extl2-meta",
            CreateOptions {
                extended_l2: true,
                preallocation: Preallocation::Metadata,
                ..Default::default()
            },
        ),
    ];
    for (name, o) in cases {
        let path = dir.path().join(format!("{name}.qcow2"));
        qcow2(&path, 24 << 20, o);
        assert_qemu_check_clean(&path);
        let mut i = open_rw(&path);
        assert!(
            read_all(&mut i).iter().all(|&b| b == 0),
            "{name} reads zero"
        );
        let d = random(1, 100_000);
        i.write_at(&d, 12345).unwrap();
        drop(i);
        assert_qemu_check_clean(&path);
        let mut want = vec![0u8; 24 << 20];
        want[12345..12345 + d.len()].copy_from_slice(&d);
        assert_qemu_equal(dir.path(), &path, &want);
    }
    // Raw with preallocation.
    let r = dir.path().join("r.raw");
    create(
        &r,
        &CreateOptions {
            format: Some(Format::Raw),
            size: Some(1 << 20),
            preallocation: Preallocation::Full,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(std::fs::metadata(&r).unwrap().len(), 1 << 20);
}

#[test]
fn resize_grow_and_shrink() {
    let dir = tempdir();
    let path = dir.path().join("r.qcow2");
    qcow2(
        &path,
        10 << 20,
        CreateOptions {
            cluster_size: Some(4096),
            ..Default::default()
        },
    );
    let d = random(2, 10 << 20);
    let mut i = open_rw(&path);
    i.write_at(&d, 0).unwrap();
    // Grow far enough to need a bigger L1 table.
    i.resize(3 << 30, &ResizeOptions::default()).unwrap();
    assert_eq!(i.size(), 3 << 30);
    let mut b = vec![0u8; 10 << 20];
    i.read_at(&mut b, 0).unwrap();
    assert!(b == d);
    i.write_at(&[9u8; 4096], (3 << 30) - 4096).unwrap();
    drop(i);
    assert_qemu_check_clean(&path);
    assert!(qemu_img_ok(&["info", p(&path)]).contains("3 GiB"));
    let mut i = open_rw(&path);
    assert!(
        i.resize(5 << 20, &ResizeOptions::default()).is_err(),
        "shrink needs --shrink"
    );
    i.resize(
        (5 << 20) + 1536,
        &ResizeOptions {
            shrink: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut b = vec![0u8; (5 << 20) + 1536];
    i.read_at(&mut b, 0).unwrap();
    let first = b.iter().zip(&d).position(|(a, b)| a != b);
    assert_eq!(first, None, "after shrink (ours)");
    drop(i);
    assert_qemu_check_clean(&path);
    let mut want = d[..(5 << 20) + 1536].to_vec();
    assert_qemu_equal(dir.path(), &path, &want);
    // Growing again shows zeroes past the old end, not stale data.
    let mut i = open_rw(&path);
    i.resize(6 << 20, &ResizeOptions::default()).unwrap();
    drop(i);
    want.resize(6 << 20, 0);
    assert_qemu_equal(dir.path(), &path, &want);
    assert_qemu_check_clean(&path);
    // Raw.
    assert!(
        open_rw(&path)
            .resize((6 << 20) + 1, &ResizeOptions::default())
            .is_err(),
        "qcow2 sizes are multiples of 512"
    );
    let r = dir.path().join("r.raw");
    create(
        &r,
        &CreateOptions {
            format: Some(Format::Raw),
            size: Some(1 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    let mut i = Image::open(
        &r,
        &OpenOptions {
            format: Some(Format::Raw),
            ..Default::default()
        },
    )
    .unwrap();
    i.resize(2 << 20, &ResizeOptions::default()).unwrap();
    assert_eq!(std::fs::metadata(&r).unwrap().len(), 2 << 20);
}

fn chain3(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let base = dir.join("base.qcow2");
    let mid = dir.join("mid.qcow2");
    let top = dir.join("top.qcow2");
    let size = 4 << 20;
    qcow2(&base, size, CreateOptions::default());
    let b = |n: &str| CreateOptions {
        backing_file: Some(n.into()),
        backing_format: Some(Format::Qcow2),
        ..Default::default()
    };
    qcow2(&mid, size, b("base.qcow2"));
    qcow2(&top, size, b("mid.qcow2"));
    let mut want = vec![0u8; size as usize];
    for (k, path) in [&base, &mid, &top].iter().enumerate() {
        let mut i = open_rw(path);
        for j in 0..6u64 {
            let off = (j * 3 + k as u64) * 200_000;
            let d = random(k as u64 * 10 + j, 100_000);
            i.write_at(&d, off).unwrap();
            want[off as usize..off as usize + d.len()].copy_from_slice(&d);
        }
    }
    (top, want)
}

#[test]
fn commit_into_backing() {
    let dir = tempdir();
    let (top, want) = chain3(dir.path());
    commit(&top, &CommitOptions::default(), None).unwrap();
    let mid = dir.path().join("mid.qcow2");
    assert_qemu_check_clean(&top);
    assert_qemu_check_clean(&mid);
    assert_qemu_equal(dir.path(), &top, &want);
    assert_qemu_equal(dir.path(), &mid, &want);
    // The top was emptied.
    let map = qemu_img_ok(&["map", "--output=json", p(&top)]);
    assert!(!map.contains("\"depth\": 0, \"present\": true"), "{map}");
}

#[test]
fn commit_into_deeper_base() {
    let dir = tempdir();
    let (top, want) = chain3(dir.path());
    let base = dir.path().join("base.qcow2");
    commit(
        &top,
        &CommitOptions {
            base: Some(base.clone()),
            drop: false,
        },
        None,
    )
    .unwrap();
    assert_qemu_check_clean(&base);
    assert_qemu_equal(dir.path(), &base, &want);
    assert_qemu_equal(dir.path(), &top, &want);
}

#[test]
fn rebase_safe_and_unsafe() {
    let dir = tempdir();
    let (top, want) = chain3(dir.path());
    // Safe rebase onto the base: the mid layer's data is copied into top.
    rebase(
        &top,
        &RebaseOptions {
            backing: Some("base.qcow2".into()),
            backing_format: Some(Format::Qcow2),
            unsafe_mode: false,
        },
        None,
    )
    .unwrap();
    assert_qemu_check_clean(&top);
    assert_qemu_equal(dir.path(), &top, &want);
    let q = qemu_img_ok(&["info", "--output=json", p(&top)]);
    assert_eq!(json_field(&q, "backing-filename").unwrap(), "base.qcow2");
    // Safe rebase onto nothing: standalone image.
    rebase(
        &top,
        &RebaseOptions {
            backing: None,
            backing_format: None,
            unsafe_mode: false,
        },
        None,
    )
    .unwrap();
    assert_qemu_equal(dir.path(), &top, &want);
    assert!(!qemu_img_ok(&["info", p(&top)]).contains("backing file"));
    // Unsafe: header only.
    rebase(
        &top,
        &RebaseOptions {
            backing: Some("mid.qcow2".into()),
            backing_format: Some(Format::Qcow2),
            unsafe_mode: true,
        },
        None,
    )
    .unwrap();
    assert!(qemu_img_ok(&["info", p(&top)]).contains("mid.qcow2"));
    assert_qemu_check_clean(&top);
}

#[test]
fn convert_plain_and_compressed() {
    let dir = tempdir();
    let (top, want) = chain3(dir.path());
    for (name, compress, opts) in [
        ("plain.qcow2", false, CreateOptions::default()),
        ("z.qcow2", true, CreateOptions::default()),
        (
            "zstd.qcow2",
            true,
            CreateOptions {
                compression_type: Some(block::CompressionType::Zstd),
                ..Default::default()
            },
        ),
        (
            "c512.qcow2",
            true,
            CreateOptions {
                cluster_size: Some(512),
                ..Default::default()
            },
        ),
        (
            "out.raw",
            false,
            CreateOptions {
                format: Some(Format::Raw),
                ..Default::default()
            },
        ),
    ] {
        let out = dir.path().join(name);
        let fmt = opts.format.unwrap_or(Format::Qcow2);
        create(
            &out,
            &CreateOptions {
                format: Some(fmt),
                size: Some(want.len() as u64),
                ..opts
            },
        )
        .unwrap();
        let mut src = Image::open(
            &top,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut dst = Image::open(
            &out,
            &OpenOptions {
                format: Some(fmt),
                ..Default::default()
            },
        )
        .unwrap();
        let mut calls = 0;
        let mut cb = |_d: u64, _t: u64| calls += 1;
        convert(
            &mut src,
            &mut dst,
            &ConvertOptions {
                compress,
                target_is_zero: true,
            },
            Some(&mut cb),
        )
        .unwrap();
        drop(dst);
        assert!(calls > 0, "progress reported");
        assert_qemu_equal(dir.path(), &out, &want);
        if fmt == Format::Qcow2 {
            assert_qemu_check_clean(&out);
            if compress {
                let c = qemu_img_ok(&["check", "--output=json", p(&out)]);
                assert!(
                    json_field(&c, "compressed-clusters")
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        > 0,
                    "{c}"
                );
            }
        }
    }
}

#[test]
fn discard_and_zero_over_backing() {
    let dir = tempdir();
    let base = dir.path().join("b.qcow2");
    qcow2(&base, 1 << 20, CreateOptions::default());
    let mut b = open_rw(&base);
    b.write_at(&vec![0xaa; 1 << 20], 0).unwrap();
    drop(b);
    for compat in [Compat::V3, Compat::V2] {
        let top = dir.path().join("t.qcow2");
        qcow2(
            &top,
            1 << 20,
            CreateOptions {
                compat: Some(compat),
                backing_file: Some("b.qcow2".into()),
                backing_format: Some(Format::Qcow2),
                ..Default::default()
            },
        );
        let mut t = open_rw(&top);
        t.write_at(&vec![0x11; 200_000], 0).unwrap();
        t.write_zeroes(65536, 65536 + 1000).unwrap();
        t.discard(0, 65536).unwrap();
        let all = read_all(&mut t);
        drop(t);
        let mut want = vec![0xaa; 1 << 20];
        want[..200_000].fill(0x11);
        want[65536..65536 * 2 + 1000].fill(0);
        // v2 has no zero flag: its discard exposes the backing data.
        want[..65536].fill(if compat == Compat::V3 { 0 } else { 0xaa });
        assert!(all == want, "{compat:?}");
        assert_qemu_check_clean(&top);
        assert_qemu_equal(dir.path(), &top, &want);
        std::fs::remove_file(&top).unwrap();
    }
}

#[test]
fn block_status_matches_qemu_map() {
    let dir = tempdir();
    let (top, _) = chain3(dir.path());
    let mut i = Image::open(
        &top,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let ours = i.block_status(0, i.size()).unwrap();
    let map = qemu_img_ok(&["map", "--output=json", p(&top)]);
    let lines: Vec<&str> = map.lines().collect();
    assert_eq!(lines.len(), ours.len(), "{map}\n{ours:#?}");
    for (l, e) in lines.iter().zip(&ours) {
        assert_eq!(json_field(l, "start").unwrap(), e.offset.to_string(), "{l}");
        assert_eq!(
            json_field(l, "length").unwrap(),
            e.length.to_string(),
            "{l}"
        );
        assert_eq!(json_field(l, "depth").unwrap(), e.depth.to_string(), "{l}");
        assert_eq!(json_field(l, "data").unwrap(), e.data.to_string(), "{l}");
        assert_eq!(json_field(l, "zero").unwrap(), e.zero.to_string(), "{l}");
        assert_eq!(
            json_field(l, "present").unwrap(),
            e.present.to_string(),
            "{l}"
        );
    }
}

#[test]
fn snapshot_across_resize() {
    let dir = tempdir();
    let path = dir.path().join("sr.qcow2");
    qcow2(
        &path,
        4 << 20,
        CreateOptions {
            cluster_size: Some(4096),
            ..Default::default()
        },
    );
    let d = random(7, 4 << 20);
    let mut i = open_rw(&path);
    i.write_at(&d, 0).unwrap();
    i.snapshot_create("small").unwrap();
    // Growing past what the L1 covers (4 KiB clusters: 2 MiB per L2 table).
    i.resize(64 << 20, &ResizeOptions::default()).unwrap();
    i.write_at(&[3u8; 8192], 60 << 20).unwrap();
    i.snapshot_create("big").unwrap();
    i.snapshot_apply("small").unwrap();
    assert_eq!(i.size(), 4 << 20, "applying restores the snapshot's size");
    assert!(read_all(&mut i) == d);
    drop(i);
    assert_qemu_check_clean(&path);
    assert_qemu_equal(dir.path(), &path, &d);
    let mut i = open_rw(&path);
    i.snapshot_apply("big").unwrap();
    assert_eq!(i.size(), 64 << 20);
    let mut b = vec![0u8; 8192];
    i.read_at(&mut b, 60 << 20).unwrap();
    assert!(b.iter().all(|&x| x == 3));
    i.snapshot_delete("small").unwrap();
    drop(i);
    assert_qemu_check_clean(&path);
    let mut want = d.clone();
    want.resize(64 << 20, 0);
    want[60 << 20..(60 << 20) + 8192].fill(3);
    assert_qemu_equal(dir.path(), &path, &want);
}

#[test]
fn convert_write_error_is_returned_not_hung() {
    let dir = tempdir();
    let (top, want) = chain3(dir.path());
    let out = dir.path().join("ro.qcow2");
    qcow2(&out, want.len() as u64, CreateOptions::default());
    let mut src = Image::open(
        &top,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut dst = Image::open(
        &out,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let e = convert(&mut src, &mut dst, &ConvertOptions::default(), None).unwrap_err();
    assert!(matches!(e, block::Error::ReadOnly), "{e}");
}

/// A raw source whose data has zero 4 KiB blocks inside, holes with
/// boundaries inside target clusters, and a short last cluster: `convert`
/// (parallel staged writes, `-S 4k`-style zero skipping) gives the same
/// guest data, a clean image, and leaves exactly the all-zero clusters
/// unallocated (raw target: all-zero 4 KiB blocks are holes).
#[test]
fn convert_skips_zero_blocks_and_keeps_partial_clusters_right() {
    let dir = tempdir();
    let size = (9 << 20) + 3 * 4096;
    let mut want = random(41, size);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..300 {
        let blk = rng.gen_range(0..size / 4096);
        want[blk * 4096..(blk + 1) * 4096].fill(0);
    }
    // Whole zero runs of various lengths, some cluster aligned.
    for (at, len) in [(0x10000, 0x10000), (0x23000, 0x31000), (3 << 20, 1 << 20)] {
        want[at..at + len].fill(0);
    }
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &want).unwrap();
    // Real holes in the source too (block_status reports them).
    {
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        for (at, len) in [(0x23000i64, 0x31000i64), (3 << 20, 1 << 20)] {
            // SAFETY: fallocate on an open fd with valid flags and range.
            let r = unsafe {
                libc::fallocate(
                    std::os::unix::io::AsRawFd::as_raw_fd(&f),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    at,
                    len,
                )
            };
            assert_eq!(r, 0, "punch hole");
        }
    }
    for (name, opts) in [
        ("c64k.qcow2", CreateOptions::default()),
        (
            "c512.qcow2",
            CreateOptions {
                cluster_size: Some(512),
                ..Default::default()
            },
        ),
        (
            "extl2.qcow2",
            CreateOptions {
                cluster_size: Some(32768),
                extended_l2: true,
                ..Default::default()
            },
        ),
        (
            "out.raw",
            CreateOptions {
                format: Some(Format::Raw),
                ..Default::default()
            },
        ),
    ] {
        let out = dir.path().join(name);
        let fmt = opts.format.unwrap_or(Format::Qcow2);
        create(
            &out,
            &CreateOptions {
                format: Some(fmt),
                size: Some(size as u64),
                ..opts.clone()
            },
        )
        .unwrap();
        let mut src = Image::open(
            &raw,
            &OpenOptions {
                format: Some(Format::Raw),
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut dst = Image::open(
            &out,
            &OpenOptions {
                format: Some(fmt),
                ..Default::default()
            },
        )
        .unwrap();
        let cs = dst.cluster_size().unwrap_or(4096) as usize;
        convert(
            &mut src,
            &mut dst,
            &ConvertOptions {
                compress: false,
                target_is_zero: true,
            },
            None,
        )
        .unwrap();
        drop(dst);
        assert_qemu_equal(dir.path(), &out, &want);
        // Granularity of skipping: target clusters, at least 4 KiB.
        let g = cs.max(4096);
        let nonzero = want.chunks(g).filter(|c| c.iter().any(|&b| b != 0)).count();
        if fmt == Format::Qcow2 {
            assert_qemu_check_clean(&out);
            let j = qemu_img_ok(&["check", "--output=json", p(&out)]);
            let alloc: usize = json_field(&j, "allocated-clusters")
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(alloc, nonzero * (g / cs), "{name}: allocated clusters");
        } else {
            use std::os::unix::fs::MetadataExt;
            let blocks = std::fs::metadata(&out).unwrap().blocks() as usize * 512 / 4096;
            assert_eq!(blocks, nonzero, "{name}: 4 KiB blocks written");
        }
    }
}

/// `convert -c` from a source whose size is not a multiple of the cluster
/// (or sector) size: the short last cluster is stored too.
#[test]
fn convert_compressed_with_an_unaligned_source_size() {
    let dir = tempdir();
    let size = (1 << 20) + 1000;
    let want: Vec<u8> = (0..size).map(|i| b"ferrovisor "[i % 11]).collect();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &want).unwrap();
    let out = dir.path().join("c.qcow2");
    qcow2(&out, size as u64, CreateOptions::default());
    let mut src = Image::open(
        &raw,
        &OpenOptions {
            format: Some(Format::Raw),
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut dst = open_rw(&out);
    convert(
        &mut src,
        &mut dst,
        &ConvertOptions {
            compress: true,
            target_is_zero: true,
        },
        None,
    )
    .unwrap();
    drop(dst);
    assert_qemu_check_clean(&out);
    assert_qemu_equal(dir.path(), &out, &want);
}
