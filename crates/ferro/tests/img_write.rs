//! Images written by `ferro img` (create, convert, snapshot, resize, commit,
//! rebase) pass `qemu-img check` with exit 0 and equal their references
//! under `qemu-img compare`.

mod img_util;

use img_util::*;

const MIB: u64 = 1 << 20;

/// `ferro img create` prints qemu-img's "Formatting" line and makes an image
/// qemu-img sees with the same settings as one qemu-img creates.
#[test]
fn create_matches_qemu_img() {
    let d = tmp();
    let cases: &[&[&str]] = &[
        &["-f", "qcow2"],
        &["-f", "qcow2", "-o", "cluster_size=512"],
        &["-f", "qcow2", "-o", "cluster_size=2M,lazy_refcounts=on"],
        &["-f", "qcow2", "-o", "compat=0.10"],
        &["-f", "qcow2", "-o", "refcount_bits=1"],
        &[
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=64,compression_type=zstd",
        ],
        &["-f", "qcow2", "-o", "extended_l2=on,cluster_size=128k"],
        &["-f", "qcow2", "-o", "preallocation=metadata"],
        &["-f", "qcow2", "-o", "preallocation=full,cluster_size=4k"],
        &["-f", "raw"],
        &["-f", "raw", "-o", "preallocation=full"],
        &[],
    ];
    for (i, c) in cases.iter().enumerate() {
        let fi = p(d.path(), &format!("f{i}.img"));
        let qi = p(d.path(), &format!("q{i}.img"));
        let mut fa: Vec<&str> = vec!["create"];
        fa.extend_from_slice(c);
        let mut qa = fa.clone();
        fa.extend([fi.as_str(), "20M"]);
        qa.extend([qi.as_str(), "20M"]);
        let fo = ok(ferro(&fa));
        let qo = ok(qemu_img(&qa));
        assert_eq!(
            stdout(&fo).replace(&fi, "X"),
            stdout(&qo).replace(&qi, "X"),
            "Formatting line for {c:?}"
        );
        let fj = json(&ok(qemu_img(&["info", "--output=json", &fi])));
        let qj = json(&ok(qemu_img(&["info", "--output=json", &qi])));
        for k in ["virtual-size", "format", "cluster-size", "format-specific"] {
            assert_eq!(fj.get(k), qj.get(k), "{c:?}: {k}");
        }
        if fj["format"] == "qcow2" {
            assert_qemu_clean(&fi);
        }
        assert_qemu_identical(&fi, &qi);
    }
}

#[test]
fn create_with_backing() {
    let d = tmp();
    let base = p(d.path(), "base.qcow2");
    ok(qemu_img(&["create", "-f", "qcow2", &base, "32M"]));
    ok(qemu_io(&["-c", "write -P 0x12 0 1M", &base]));
    let top = p(d.path(), "top.qcow2");
    let o = ok(ferro(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &top,
    ]));
    assert!(
        stdout(&o).contains("size=33554432 backing_file=base.qcow2 backing_fmt=qcow2"),
        "{}",
        stdout(&o)
    );
    let j = json(&ok(qemu_img(&["info", "--output=json", &top])));
    assert_eq!(j["backing-filename"], "base.qcow2");
    assert_eq!(j["backing-filename-format"], "qcow2");
    assert_eq!(j["virtual-size"], 32 * MIB);
    assert_qemu_clean(&top);
    assert_qemu_identical(&top, &base);
    // -u: the backing need not exist, but the size is then required.
    let u = p(d.path(), "u.qcow2");
    ok(ferro(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "nonexist.qcow2",
        "-F",
        "qcow2",
        &u,
        "1M",
    ]));
    assert_eq!(
        json(&ok(qemu_img(&["info", "--output=json", "-U", &u])))["backing-filename"],
        "nonexist.qcow2"
    );
}

/// raw → qcow2 with each feature ferro writes, and back.
#[test]
fn convert_writes_valid_images() {
    let d = tmp();
    let raw = p(d.path(), "src.raw");
    make_raw(&raw, 16 * MIB, 1234);
    let cases: &[(&str, bool)] = &[
        ("", false),
        ("cluster_size=512", false),
        ("cluster_size=2M", false),
        ("compat=0.10", false),
        ("refcount_bits=1", false),
        ("refcount_bits=64", false),
        ("extended_l2=on", false),
        ("lazy_refcounts=on", false),
        ("compression_type=zlib", true),
        ("compression_type=zstd", true),
        ("compression_type=zstd,cluster_size=4k", true),
    ];
    for (i, (o, c)) in cases.iter().enumerate() {
        let img = p(d.path(), &format!("c{i}.qcow2"));
        let mut args = vec!["convert", "-O", "qcow2"];
        if *c {
            args.push("-c");
        }
        if !o.is_empty() {
            args.extend(["-o", o]);
        }
        args.extend([raw.as_str(), img.as_str()]);
        ok(ferro(&args));
        assert_qemu_clean(&img);
        assert_qemu_identical(&raw, &img);
        if *c {
            let (_, text) = qemu_check(&img);
            assert!(
                !text.contains(" 0.00% compressed"),
                "{o}: nothing was compressed:\n{text}"
            );
        }
        // qcow2 → raw → equal to the source.
        let back = p(d.path(), &format!("c{i}.raw"));
        ok(ferro(&["convert", "-O", "raw", &img, &back]));
        assert_eq!(
            std::fs::read(&back).unwrap(),
            std::fs::read(&raw).unwrap(),
            "{o}: round trip"
        );
        // qcow2 → qcow2 (the engine on both sides).
        let again = p(d.path(), &format!("c{i}b.qcow2"));
        ok(ferro(&[
            "convert", "-f", "qcow2", "-O", "qcow2", &img, &again,
        ]));
        assert_qemu_clean(&again);
        assert_qemu_identical(&raw, &again);
    }
}

/// `convert -B`: the new image holds only what the source's top holds.
#[test]
fn convert_with_backing() {
    let d = tmp();
    let base = p(d.path(), "base.qcow2");
    let raw = p(d.path(), "src.raw");
    make_raw(&raw, 8 * MIB, 5);
    ok(qemu_img(&["convert", "-O", "qcow2", &raw, &base]));
    let top = p(d.path(), "top.qcow2");
    ok(qemu_img(&[
        "create", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
    ]));
    ok(qemu_io(&["-c", "write -P 0x9 1M 1M", &top]));
    let out = p(d.path(), "out.qcow2");
    ok(ferro(&[
        "convert", "-O", "qcow2", "-B", &base, "-F", "qcow2", &top, &out,
    ]));
    assert_qemu_clean(&out);
    assert_qemu_identical(&top, &out);
    let j = json(&ok(qemu_img(&["info", "--output=json", &out])));
    assert_eq!(j["backing-filename"].as_str(), Some(base.as_str()));
    let (_, text) = qemu_check(&out);
    assert!(
        text.contains("16/128 = 12.50% allocated"),
        "only the top's 1 MiB should be copied:\n{text}"
    );
}

#[test]
fn snapshots_written_by_ferro() {
    let d = tmp();
    let raw = p(d.path(), "src.raw");
    make_raw(&raw, 16 * MIB, 77);
    let img = p(d.path(), "s.qcow2");
    ok(qemu_img(&["convert", "-O", "qcow2", &raw, &img]));
    ok(ferro(&["snapshot", "-c", "one", &img]));
    assert_qemu_clean(&img);
    ok(qemu_io(&["-c", "write -P 0xee 0 3M", &img]));
    let after = raw_by_qemu(&img, d.path());
    ok(ferro(&["snapshot", "-c", "two", &img]));
    ok(ferro(&["snapshot", "-c", "three", &img]));
    assert_qemu_clean(&img);
    let list = stdout(&ok(qemu_img(&["snapshot", "-l", &img])));
    for n in ["one", "two", "three"] {
        assert!(list.contains(n), "{list}");
    }
    assert_eq!(stdout(&ok(ferro(&["snapshot", "-l", &img]))), list);
    ok(ferro(&["snapshot", "-d", "three", &img]));
    assert_qemu_clean(&img);
    assert!(!stdout(&ok(qemu_img(&["snapshot", "-l", &img]))).contains("three"));
    ok(ferro(&["snapshot", "-a", "one", &img]));
    assert_qemu_clean(&img);
    assert_qemu_identical(&img, &raw);
    ok(ferro(&["snapshot", "-a", "two", &img]));
    assert_qemu_clean(&img);
    assert_same("after apply two", &raw_by_qemu(&img, d.path()), &after);
    ok(ferro(&["snapshot", "-d", "one", &img]));
    ok(ferro(&["snapshot", "-d", "two", &img]));
    assert_qemu_clean(&img);
    let (_, text) = qemu_check(&img);
    assert!(!text.contains("leaked"), "{text}");
}

#[test]
fn resize_qcow2_and_raw() {
    let d = tmp();
    let raw = p(d.path(), "src.raw");
    make_raw(&raw, 16 * MIB, 8);
    let img = p(d.path(), "r.qcow2");
    ok(qemu_img(&["convert", "-O", "qcow2", &raw, &img]));
    let o = ok(ferro(&["resize", &img, "+1G"]));
    assert_eq!(stdout(&o), "Image resized.\n");
    assert_qemu_clean(&img);
    let j = json(&ok(qemu_img(&["info", "--output=json", &img])));
    assert_eq!(j["virtual-size"], 16 * MIB + (1 << 30));
    // Compare with the source: the grown part must read as zeroes.
    assert_qemu_identical(&raw, &img);
    let o = ferro(&["resize", &img, "8M"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("Use the --shrink option to perform a shrink operation."));
    ok(ferro(&["resize", "--shrink", &img, "8M"]));
    assert_qemu_clean(&img);
    let mut want = std::fs::read(&raw).unwrap();
    want.truncate(8 * MIB as usize);
    assert_same("shrunk", &raw_by_qemu(&img, d.path()), &want);
    ok(ferro(&["resize", "--shrink", &img, "--", "-4M"]));
    assert_eq!(
        json(&ok(qemu_img(&["info", "--output=json", &img])))["virtual-size"],
        4 * MIB
    );
    assert_qemu_clean(&img);
    // raw
    let r2 = p(d.path(), "r2.raw");
    std::fs::copy(&raw, &r2).unwrap();
    ok(ferro(&["resize", "-f", "raw", &r2, "20M"]));
    assert_eq!(std::fs::metadata(&r2).unwrap().len(), 20 * MIB);
    assert_qemu_identical(&raw, &r2);
}

fn chain(d: &std::path::Path) -> (String, String, String) {
    let raw = p(d, "src.raw");
    make_raw(&raw, 16 * MIB, 21);
    let base = p(d, "base.qcow2");
    ok(qemu_img(&["convert", "-O", "qcow2", &raw, &base]));
    let mid = p(d, "mid.qcow2");
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &mid,
    ]));
    ok(qemu_io(&[
        "-c",
        "write -P 0x51 1M 2M",
        "-c",
        "write -z 5M 1M",
        &mid,
    ]));
    let top = p(d, "top.qcow2");
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        &top,
    ]));
    ok(qemu_io(&[
        "-c",
        "write -P 0x61 2M 2M",
        "-c",
        "write -z 9M 64k",
        "-c",
        "discard 1M 64k",
        &top,
    ]));
    (base, mid, top)
}

#[test]
fn commit_like_qemu_img() {
    let d = tmp();
    let (_base, mid, top) = chain(d.path());
    let view = raw_by_qemu(&top, d.path());
    // Reference: qemu-img commit on a copy of the chain.
    let rd = tmp();
    for f in ["base.qcow2", "mid.qcow2", "top.qcow2"] {
        std::fs::copy(d.path().join(f), rd.path().join(f)).unwrap();
    }
    ok(qemu_img(&["commit", &p(rd.path(), "top.qcow2")]));
    let o = ok(ferro(&["commit", &top]));
    assert_eq!(stdout(&o), "Image committed.\n");
    assert_qemu_clean(&top);
    assert_qemu_clean(&mid);
    assert_same(
        "chain view after commit",
        &raw_by_qemu(&top, d.path()),
        &view,
    );
    assert_qemu_identical(&mid, &p(rd.path(), "mid.qcow2"));
    // The top was emptied, as qemu-img does without -d.
    let m = stdout(&ok(qemu_img(&["map", "--output=json", &top])));
    assert!(
        !m.contains("\"depth\": 0"),
        "top should be empty after commit:\n{m}"
    );
    // commit -b base from the top: everything lands in base.
    let d2 = tmp();
    let (base2, _mid2, top2) = chain(d2.path());
    let view2 = raw_by_qemu(&top2, d2.path());
    ok(ferro(&["commit", "-b", &base2, &top2]));
    assert_qemu_clean(&base2);
    assert_same(
        "base after commit -b",
        &raw_by_qemu(&base2, d2.path()),
        &view2,
    );
}

#[test]
fn rebase_safe_and_unsafe() {
    let d = tmp();
    let (base, _mid, top) = chain(d.path());
    let view = raw_by_qemu(&top, d.path());
    ok(ferro(&["rebase", "-b", "base.qcow2", "-F", "qcow2", &top]));
    assert_qemu_clean(&top);
    let j = json(&ok(qemu_img(&["info", "--output=json", &top])));
    assert_eq!(j["backing-filename"], "base.qcow2");
    assert_same(
        "view after safe rebase",
        &raw_by_qemu(&top, d.path()),
        &view,
    );
    // Safe rebase onto nothing: the image becomes standalone.
    ok(ferro(&["rebase", "-b", "", &top]));
    assert_qemu_clean(&top);
    assert!(json(&ok(qemu_img(&["info", "--output=json", &top])))
        .get("backing-filename")
        .is_none());
    assert_same("view after flatten", &raw_by_qemu(&top, d.path()), &view);
    // Unsafe: only the header changes.
    ok(ferro(&[
        "rebase",
        "-u",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &top,
    ]));
    assert_qemu_clean(&top);
    assert_eq!(
        json(&ok(qemu_img(&["info", "--output=json", &top])))["backing-filename"],
        "base.qcow2"
    );
    let _ = base;
}
