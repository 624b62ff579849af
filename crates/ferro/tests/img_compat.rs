//! Images made by qemu-img, one per feature, read back by
//! `ferro img convert -O raw` byte for byte as `qemu-img convert -O raw`
//! reads them; `ferro img info --output=json` agrees with qemu-img's on
//! virtual-size, format, cluster-size, backing-filename and snapshots.

mod img_util;

use img_util::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Converts a seeded raw file into a qcow2 with `opts` (and `-c` when
/// `compress`), then checks ferro's reading and info against qemu-img's.
fn qcow2_from_raw(opts: &str, compress: bool, size: u64) {
    let d = tmp();
    let raw = p(d.path(), "src.raw");
    let data = make_raw(&raw, size, 0xC0FFEE ^ size);
    let img = p(d.path(), "img.qcow2");
    let mut args = vec!["convert", "-O", "qcow2"];
    if compress {
        args.push("-c");
    }
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([raw.as_str(), img.as_str()]);
    ok(qemu_img(&args));
    let ferro_view = raw_by_ferro(&img, d.path());
    assert_same(
        &format!("{opts} compress={compress}: ferro vs source"),
        &ferro_view,
        &data,
    );
    let qemu_view = raw_by_qemu(&img, d.path());
    assert_same(
        &format!("{opts}: ferro vs qemu-img"),
        &ferro_view,
        &qemu_view,
    );
    info_agrees(&img);
}

/// `ferro img info --output=json` vs qemu-img's on the fields users script.
fn info_agrees(img: &str) {
    let f = json(&ok(ferro(&["info", "--output=json", img])));
    let q = json(&ok(qemu_img(&["info", "--output=json", img])));
    for key in [
        "virtual-size",
        "format",
        "cluster-size",
        "backing-filename",
        "backing-filename-format",
        "filename",
    ] {
        assert_eq!(f.get(key), q.get(key), "info {img}: {key}");
    }
    let strip = |v: Option<&Value>| -> Vec<Value> {
        v.and_then(Value::as_array)
            .map(|a| a.to_vec())
            .unwrap_or_default()
    };
    assert_eq!(
        strip(f.get("snapshots")),
        strip(q.get("snapshots")),
        "info {img}: snapshots"
    );
    assert_eq!(
        f.get("format-specific"),
        q.get("format-specific"),
        "info {img}: format-specific"
    );
    // The human format too (disk size may differ by allocation timing? no:
    // same file, same st_blocks).
    let fh = stdout(&ok(ferro(&["info", img])));
    let qh = stdout(&ok(qemu_img(&["info", img])));
    assert_eq!(fh, qh, "human info {img}");
    // And the allocation map, as scripts see it.
    let fm = stdout(&ok(ferro(&["map", "--output=json", img])));
    let qm = stdout(&ok(qemu_img(&["map", "--output=json", img])));
    assert_eq!(fm, qm, "map --output=json {img}");
}

#[test]
fn cluster_size_512() {
    qcow2_from_raw("cluster_size=512", false, 4 * MIB);
}

#[test]
fn cluster_size_64k() {
    qcow2_from_raw("cluster_size=65536", false, 16 * MIB);
}

#[test]
fn cluster_size_2m() {
    qcow2_from_raw("cluster_size=2M", false, 32 * MIB);
}

#[test]
fn compat_v2() {
    qcow2_from_raw("compat=0.10", false, 16 * MIB);
}

#[test]
fn refcount_bits_1() {
    qcow2_from_raw("refcount_bits=1", false, 16 * MIB);
}

#[test]
fn refcount_bits_64() {
    qcow2_from_raw("refcount_bits=64", false, 16 * MIB);
}

#[test]
fn compressed_zlib() {
    qcow2_from_raw("compression_type=zlib", true, 16 * MIB);
}

#[test]
fn compressed_zstd() {
    qcow2_from_raw("compression_type=zstd", true, 16 * MIB);
}

#[test]
fn compressed_zlib_small_clusters() {
    qcow2_from_raw("compression_type=zlib,cluster_size=4096", true, 4 * MIB);
}

#[test]
fn extended_l2_converted() {
    qcow2_from_raw("extended_l2=on", false, 16 * MIB);
}

/// Subclusters allocated piecemeal (and zeroed) by qemu-io, over a backing
/// file so unallocated subclusters must show the backing's data.
#[test]
fn extended_l2_subclusters_over_backing() {
    let d = tmp();
    let base = p(d.path(), "base.qcow2");
    let raw = p(d.path(), "base.raw");
    make_raw(&raw, 8 * MIB, 7);
    ok(qemu_img(&["convert", "-O", "qcow2", &raw, &base]));
    let img = p(d.path(), "top.qcow2");
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &img,
    ]));
    ok(qemu_io(&[
        "-c",
        "write -P 0x11 4k 2k",
        "-c",
        "write -P 0x22 70k 6k",
        "-c",
        "write -z 200k 8k",
        "-c",
        "write -P 0x33 1M 64k",
        "-c",
        "write -z 2M 128k",
        "-c",
        "discard 1M 4k",
        "-c",
        "write -P 0x44 3M 1k",
        &img,
    ]));
    let fv = raw_by_ferro(&img, d.path());
    let qv = raw_by_qemu(&img, d.path());
    assert_same("extended_l2 subclusters", &fv, &qv);
    info_agrees(&img);
}

#[test]
fn lazy_refcounts_clean() {
    qcow2_from_raw("lazy_refcounts=on", false, 16 * MIB);
}

/// qemu-io's `abort` leaves a lazy-refcounts image dirty, as a crash does.
#[test]
fn lazy_refcounts_dirty() {
    let d = tmp();
    let img = p(d.path(), "lazy.qcow2");
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        &img,
        "16M",
    ]));
    let _ = qemu_io(&[
        "-c",
        "write -P 0x5a 0 1M",
        "-c",
        "write -P 0x6b 5M 300k",
        "-c",
        "flush",
        "-c",
        "abort",
        &img,
    ]);
    let q = json(&qemu_img(&["info", "--output=json", "-U", &img]));
    assert_eq!(
        q["dirty-flag"],
        Value::Bool(true),
        "qemu-io abort should leave the image dirty"
    );
    let fi = json(&ok(ferro(&["info", "--output=json", &img])));
    assert_eq!(fi["dirty-flag"], Value::Bool(true));
    let fv = raw_by_ferro(&img, d.path());
    let qv = raw_by_qemu(&img, d.path());
    assert_same("dirty lazy-refcount image", &fv, &qv);
    let fm = stdout(&ok(ferro(&["map", "--output=json", &img])));
    let qm = stdout(&qemu_img(&["map", "--output=json", "-U", &img]));
    assert_eq!(fm, qm, "map of the dirty image");
    assert!(fv[..MIB as usize].iter().all(|&b| b == 0x5a));
}

#[test]
fn internal_snapshots() {
    let d = tmp();
    let raw = p(d.path(), "src.raw");
    make_raw(&raw, 16 * MIB, 99);
    let img = p(d.path(), "snap.qcow2");
    ok(qemu_img(&["convert", "-O", "qcow2", &raw, &img]));
    ok(qemu_img(&["snapshot", "-c", "first", &img]));
    ok(qemu_io(&[
        "-c",
        "write -P 0x77 0 2M",
        "-c",
        "write -z 8M 1M",
        &img,
    ]));
    ok(qemu_img(&["snapshot", "-c", "second", &img]));
    ok(qemu_io(&[
        "-c",
        "write -P 0x88 1M 2M",
        "-c",
        "discard 12M 1M",
        &img,
    ]));
    let fv = raw_by_ferro(&img, d.path());
    let qv = raw_by_qemu(&img, d.path());
    assert_same("snapshot image, current state", &fv, &qv);
    info_agrees(&img);
    let fl = stdout(&ok(ferro(&["snapshot", "-l", &img])));
    let ql = stdout(&ok(qemu_img(&["snapshot", "-l", &img])));
    assert_eq!(fl, ql, "snapshot -l");
    // Each snapshot's content, read by qemu-img -l.
    for s in ["first", "second"] {
        let out_q = p(d.path(), &format!("{s}.q.raw"));
        ok(qemu_img(&[
            "convert",
            "-l",
            &format!("snapshot.name={s}"),
            "-O",
            "raw",
            &img,
            &out_q,
        ]));
        let copy = p(d.path(), &format!("{s}.qcow2"));
        std::fs::copy(&img, &copy).unwrap();
        ok(ferro(&["snapshot", "-a", s, &copy]));
        let fv = raw_by_ferro(&copy, d.path());
        assert_same(
            &format!("snapshot {s}"),
            &fv,
            &std::fs::read(&out_q).unwrap(),
        );
        assert_qemu_clean(&copy);
    }
}

/// base (qcow2) <- mid (qcow2) <- top (qcow2), relative backing names, writes
/// overlapping across the layers, zero clusters hiding backing data.
#[test]
fn backing_chain_three_levels() {
    let d = tmp();
    let raw = p(d.path(), "src.raw");
    make_raw(&raw, 16 * MIB, 3);
    let base = p(d.path(), "base.qcow2");
    ok(qemu_img(&["convert", "-O", "qcow2", &raw, &base]));
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mid = p(&sub, "mid.qcow2");
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "../base.qcow2",
        "-F",
        "qcow2",
        &mid,
    ]));
    ok(qemu_io(&[
        "-c",
        "write -P 0x21 1M 3M",
        "-c",
        "write -z 6M 1M",
        &mid,
    ]));
    let top = p(&sub, "top.qcow2");
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        &top,
    ]));
    ok(qemu_io(&[
        "-c",
        "write -P 0x31 2M 100k",
        "-c",
        "write -z 3M 64k",
        "-c",
        "discard 6M 4k",
        &top,
    ]));
    let fv = raw_by_ferro(&top, d.path());
    let qv = raw_by_qemu(&top, d.path());
    assert_same("3-level chain", &fv, &qv);
    info_agrees(&top);
    let fc = stdout(&ok(ferro(&["info", "--backing-chain", &top])));
    let qc = stdout(&ok(qemu_img(&["info", "--backing-chain", &top])));
    assert_eq!(fc, qc, "info --backing-chain");
    let fm = stdout(&ok(ferro(&["map", "--output=json", &top])));
    let qm = stdout(&ok(qemu_img(&["map", "--output=json", &top])));
    assert_eq!(fm, qm, "map --output=json");
}

/// A raw base under qcow2 overlays, and an overlay larger than its backing.
#[test]
fn backing_chain_raw_base_and_larger_overlay() {
    let d = tmp();
    let base = p(d.path(), "base.raw");
    make_raw(&base, 4 * MIB, 11);
    let mid = p(d.path(), "mid.qcow2");
    ok(qemu_img(&[
        "create", "-f", "qcow2", "-b", &base, "-F", "raw", &mid,
    ]));
    ok(qemu_io(&["-c", "write -P 0x42 512k 64k", &mid]));
    let top = p(d.path(), "top.qcow2");
    ok(qemu_img(&[
        "create", "-f", "qcow2", "-b", &mid, "-F", "qcow2", &top, "8M",
    ]));
    ok(qemu_io(&["-c", "write -P 0x43 6M 64k", &top]));
    let fv = raw_by_ferro(&top, d.path());
    let qv = raw_by_qemu(&top, d.path());
    assert_same("raw base chain", &fv, &qv);
    info_agrees(&top);
}
