//! `ferro img` command-line behaviour against qemu-img's: error messages
//! (with "qemu-img" read as "ferro img"), exit codes, and the human output
//! of info/check/map/compare/snapshot/bench, run side by side in one folder.

mod img_util;

use std::process::{Command, Output};

use img_util::*;

fn in_dir(dir: &std::path::Path, bin: &str, pre: &[&str], args: &[&str]) -> Output {
    Command::new(bin)
        .current_dir(dir)
        .args(pre)
        .args(args)
        .output()
        .expect("run")
}

/// Runs the same command with ferro and qemu-img in `dir`; returns
/// (ferro, qemu) outputs with qemu's program name replaced by ours.
fn both(dir: &std::path::Path, args: &[&str]) -> ((i32, String, String), (i32, String, String)) {
    let f = in_dir(dir, ferro_bin(), &["img"], args);
    let q = in_dir(dir, "qemu-img", &[], args);
    let norm = |s: String| s.replace("qemu-img", "ferro img");
    (
        (code(&f), stdout(&f), stderr(&f)),
        (code(&q), norm(stdout(&q)), norm(stderr(&q))),
    )
}

/// Same exit code, stdout and stderr as qemu-img.
#[track_caller]
fn same(dir: &std::path::Path, args: &[&str]) {
    let (f, q) = both(dir, args);
    assert_eq!(f, q, "ferro img {args:?} differs from qemu-img");
}

/// Same exit code and stdout; stderr only has to mention `needle`.
#[track_caller]
fn same_code(dir: &std::path::Path, args: &[&str], needle: &str) {
    let (f, q) = both(dir, args);
    assert_eq!(f.0, q.0, "exit code of {args:?}: ferro stderr {}", f.2);
    assert!(
        f.2.contains(needle),
        "{args:?}: ferro stderr lacks {needle:?}: {}",
        f.2
    );
}

#[test]
fn usage_errors() {
    let d = tmp();
    let dir = d.path();
    same(dir, &[]);
    same(dir, &["frobnicate"]);
    same(dir, &["info"]);
    same(dir, &["info", "-z", "x"]);
    same(dir, &["create", "-f"]);
    same(dir, &["create", "-f", "qcow2", "x.qcow2", "1M", "2M"]);
    same(dir, &["check", "-r", "foo", "x"]);
    same(dir, &["compare", "a"]);
    same(dir, &["snapshot", "-l", "-c", "x", "a"]);
    same(dir, &["rebase", "a"]);
}

#[test]
fn create_errors() {
    let d = tmp();
    let dir = d.path();
    for args in [
        &["create", "-f", "qcow2", "x.qcow2", "12Q"][..],
        &["create", "-f", "qcow2", "x.qcow2", "9E"],
        &["create", "-f", "qcow2", "x.qcow2", "1.5"],
        &["create", "-f", "foo", "x.qcow2", "1M"],
        &["create", "-f", "qcow2", "-o", "bogus=1", "x.qcow2", "1M"],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=abc",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=maybe",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=x",
            "x.qcow2",
            "1M",
        ],
        &["create", "-f", "qcow2", "-o", "", "x.qcow2", "1M"],
        &["create", "-f", "qcow2", "-o", "size=5M", "x.qcow2", "1M"],
        &["create", "-f", "qcow2", "x.qcow2"],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=1000",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4M",
            "x.qcow2",
            "1M",
        ],
        &["create", "-f", "qcow2", "-o", "compat=2", "x.qcow2", "1M"],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,refcount_bits=64",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,lazy_refcounts=on",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,compression_type=zstd",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=4k",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compression_type=lzo",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=3",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "preallocation=foo",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "nonexist.qcow2",
            "-F",
            "qcow2",
            "x.qcow2",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "nonexist.qcow2",
            "x.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "raw",
            "-b",
            "nonexist.qcow2",
            "-F",
            "qcow2",
            "x.raw",
            "1M",
        ],
    ] {
        same(dir, args);
    }
    same_code(
        dir,
        &["create", "-f", "qcow2", "/nonexistent-dir/x.qcow2", "1M"],
        "No such file or directory",
    );
}

#[test]
fn open_errors() {
    let d = tmp();
    let dir = d.path();
    same(dir, &["info", "nonexist.img"]);
    same(dir, &["check", "nonexist.img"]);
    same(dir, &["map", "nonexist.img"]);
    same(dir, &["compare", "nonexist.img", "other.img"]);
    same(dir, &["convert", "-O", "raw", "nonexist.img", "out.raw"]);
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        &p(dir, "a.qcow2"),
        "1M",
    ]));
    same(dir, &["info", "-f", "foo", "a.qcow2"]);
    same(dir, &["info", "--output=xml", "a.qcow2"]);
    same(dir, &["convert", "-O", "foo", "a.qcow2", "out"]);
    same(dir, &["convert", "-O", "raw", "-c", "a.qcow2", "out"]);
    same(
        dir,
        &["convert", "-O", "qcow2", "-o", "bogus=1", "a.qcow2", "out"],
    );
    same(
        dir,
        &["convert", "-O", "qcow2", "-B", "a.qcow2", "a.qcow2", "out"],
    );
    same(dir, &["resize", "a.qcow2", "abc"]);
    same(dir, &["resize", "a.qcow2", "512k"]);
    same(dir, &["resize", "a.qcow2", "--", "-2M"]);
    same(dir, &["snapshot", "-a", "nope", "a.qcow2"]);
    same(dir, &["snapshot", "-d", "nope", "a.qcow2"]);
    same(dir, &["commit", "a.qcow2"]);
    same(dir, &["bench", "-c", "10", "--flush-interval=1", "a.qcow2"]);
    same(
        dir,
        &["bench", "-c", "10", "-w", "--flush-interval=1", "a.qcow2"],
    );
}

#[test]
fn check_exit_codes_and_output() {
    let d = tmp();
    let dir = d.path();
    let raw = p(dir, "r.raw");
    make_raw(&raw, 4 << 20, 1);
    ok(qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        &raw,
        &p(dir, "a.qcow2"),
    ]));
    same(dir, &["check", "a.qcow2"]);
    same(dir, &["check", "--output=json", "a.qcow2"]);
    same(dir, &["check", "-f", "raw", "r.raw"]);
    // Leaks: two clusters past the end with a refcount of 1 (exit 3), then
    // repaired with -r leaks (exit 0).
    let leaky = p(dir, "leak.qcow2");
    std::fs::copy(p(dir, "a.qcow2"), &leaky).unwrap();
    add_leaks(&leaky, 2);
    let copy = |name: &str| {
        let t = p(dir, name);
        std::fs::copy(&leaky, &t).unwrap();
        name.to_string()
    };
    let (l1, l2, l3) = (copy("l1.qcow2"), copy("l2.qcow2"), copy("l3.qcow2"));
    same(dir, &["check", &l1]);
    same(dir, &["check", "--output=json", &l1]);
    let (f, _) = both(dir, &["check", &l1]);
    assert_eq!(f.0, 3);
    // Repairs change the file: each tool gets its own copy, same name.
    let qd = tmp();
    for f in [&l2, &l3] {
        std::fs::copy(p(dir, f), p(qd.path(), f)).unwrap();
    }
    let split = |args: &[&str]| {
        let f = in_dir(dir, ferro_bin(), &["img"], args);
        let q = in_dir(qd.path(), "qemu-img", &[], args);
        assert_eq!(
            (code(&f), stdout(&f), stderr(&f)),
            (
                code(&q),
                stdout(&q),
                stderr(&q).replace("qemu-img", "ferro img")
            ),
            "{args:?}"
        );
    };
    split(&["check", "-r", "leaks", &l2]);
    split(&["check", "-r", "all", "--output=json", &l3]);
    assert_qemu_clean(&p(dir, &l2));
    assert_qemu_clean(&p(dir, &l3));
    // Corruption: an in-use cluster's refcount set to 0 (exit 2).
    let bad = p(dir, "bad.qcow2");
    std::fs::copy(p(dir, "a.qcow2"), &bad).unwrap();
    set_refcount(&bad, 1, 0);
    same(dir, &["check", "bad.qcow2"]);
    let (f, _) = both(dir, &["check", "bad.qcow2"]);
    assert_eq!(f.0, 2);
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// Sets the 16-bit refcount of host cluster `idx` (first refcount block).
fn set_refcount(path: &str, idx: u64, val: u16) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut h = [0u8; 104];
    f.read_exact(&mut h).unwrap();
    let rt = be64(&h, 48);
    f.seek(SeekFrom::Start(rt)).unwrap();
    let mut e = [0u8; 8];
    f.read_exact(&mut e).unwrap();
    let rb = u64::from_be_bytes(e);
    f.seek(SeekFrom::Start(rb + 2 * idx)).unwrap();
    f.write_all(&val.to_be_bytes()).unwrap();
}

/// Appends `n` clusters with a refcount of 1 and no user: leaks.
fn add_leaks(path: &str, n: u64) {
    let len = std::fs::metadata(path).unwrap().len();
    let cs = 65536;
    let first = len.div_ceil(cs);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len((first + n) * cs).unwrap();
    drop(f);
    for i in 0..n {
        set_refcount(path, first + i, 1);
    }
}

#[test]
fn human_outputs_match() {
    let d = tmp();
    let dir = d.path();
    let raw = p(dir, "r.raw");
    make_raw(&raw, 8 << 20, 2);
    ok(qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        &raw,
        &p(dir, "a.qcow2"),
    ]));
    ok(qemu_img(&["snapshot", "-c", "s1", &p(dir, "a.qcow2")]));
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        &p(dir, "b.qcow2"),
        "16M",
    ]));
    ok(qemu_io(&[
        "-c",
        "write -P 1 1M 64k",
        "-c",
        "write -z 2M 64k",
        &p(dir, "b.qcow2"),
    ]));
    same(dir, &["info", "a.qcow2"]);
    same(dir, &["info", "--output=json", "a.qcow2"]);
    same(dir, &["info", "b.qcow2"]);
    same(dir, &["info", "--output=json", "b.qcow2"]);
    same(dir, &["info", "--backing-chain", "b.qcow2"]);
    same(
        dir,
        &["info", "--backing-chain", "--output=json", "b.qcow2"],
    );
    same(dir, &["info", "r.raw"]);
    same(dir, &["info", "--output=json", "r.raw"]);
    same(dir, &["snapshot", "-l", "a.qcow2"]);
    same(dir, &["snapshot", "-l", "b.qcow2"]);
    same(dir, &["compare", "a.qcow2", "r.raw"]);
    same(dir, &["compare", "a.qcow2", "b.qcow2"]);
    same(dir, &["compare", "-s", "a.qcow2", "b.qcow2"]);
    same(dir, &["compare", "b.qcow2", "a.qcow2"]);
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        &p(dir, "z8.qcow2"),
        "8M",
    ]));
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        &p(dir, "z9.qcow2"),
        "9M",
    ]));
    same(dir, &["compare", "z8.qcow2", "z9.qcow2"]);
    same(dir, &["compare", "-s", "z8.qcow2", "z9.qcow2"]);
    ok(qemu_io(&["-c", "write -P 3 8300k 1", &p(dir, "z9.qcow2")]));
    same(dir, &["compare", "z8.qcow2", "z9.qcow2"]);
    ok(qemu_io(&["-c", "write -P 3 1000 1", &p(dir, "z8.qcow2")]));
    same(dir, &["compare", "z9.qcow2", "z8.qcow2"]);
    // Last: the allocation map (block_status semantics).
    same(dir, &["map", "b.qcow2"]);
    same(dir, &["map", "--output=json", "b.qcow2"]);
    same(dir, &["map", "--output=json", "a.qcow2"]);
    same(dir, &["map", "-f", "raw", "r.raw"]);
}

#[test]
fn bench_output_lines() {
    let d = tmp();
    let dir = d.path();
    ok(qemu_img(&[
        "create",
        "-f",
        "qcow2",
        &p(dir, "a.qcow2"),
        "64M",
    ]));
    for args in [
        &["bench", "-c", "100", "a.qcow2"][..],
        &[
            "bench", "-c", "100", "-w", "-d", "4", "-s", "8k", "-S", "64k", "-o", "4096", "a.qcow2",
        ],
        &[
            "bench",
            "-c",
            "100",
            "-w",
            "--flush-interval=64",
            "--pattern=7",
            "a.qcow2",
        ],
        &["bench", "-c", "100", "-t", "none", "-d", "8", "a.qcow2"],
    ] {
        let (f, q) = both(dir, args);
        assert_eq!(f.0, q.0, "{args:?}: {}", f.2);
        let fl: Vec<&str> = f.1.lines().collect();
        let ql: Vec<&str> = q.1.lines().collect();
        assert_eq!(fl.len(), ql.len(), "{args:?}\n{}\n{}", f.1, q.1);
        for (a, b) in fl.iter().zip(&ql) {
            if b.starts_with("Run completed in ") {
                assert!(
                    a.starts_with("Run completed in ") && a.ends_with(" seconds."),
                    "{a}"
                );
            } else {
                assert_eq!(a, b);
            }
        }
    }
    // Writes with a pattern land: qemu-img reads them back.
    ok(ferro(&[
        "bench",
        "-c",
        "16",
        "-w",
        "--pattern=0x5a",
        "-s",
        "4k",
        "-S",
        "1M",
        &p(dir, "a.qcow2"),
    ]));
    assert_qemu_clean(&p(dir, "a.qcow2"));
    let o = ok(qemu_io(&["-c", "read -P 0x5a 15M 4k", &p(dir, "a.qcow2")]));
    assert!(
        !stdout(&o).contains("Pattern verification failed"),
        "{}",
        stdout(&o)
    );
}

/// `bench -w -t none -d N`: writes that land in allocated clusters go
/// through the workers' own O_DIRECT handle in parallel, the rest through
/// the engine. Both kinds must land, and the image must stay consistent.
#[test]
fn bench_parallel_direct_writes_land() {
    let d = tmp();
    let raw = p(d.path(), "r.raw");
    make_raw(&raw, 16 << 20, 9);
    let img = p(d.path(), "a.qcow2");
    ok(qemu_img(&["convert", "-O", "qcow2", &raw, &img]));
    // Step 20 KiB over 16 MiB: touches allocated and unallocated clusters,
    // two requests often share a cluster.
    ok(ferro(&[
        "bench",
        "-w",
        "-t",
        "none",
        "-d",
        "16",
        "-c",
        "3000",
        "-s",
        "4k",
        "-S",
        "20k",
        "--pattern=0x6b",
        &img,
    ]));
    assert_qemu_clean(&img);
    let mut want = std::fs::read(&raw).unwrap();
    for i in 0..3000u64 {
        let off = ((i * 20 * 1024) % (16 << 20)) as usize;
        want[off..off + 4096].fill(0x6b);
    }
    assert_same(
        "after parallel direct writes",
        &raw_by_qemu(&img, d.path()),
        &want,
    );
}

/// `snapshot -c NAME` with NAME taken: qemu-img 7.2 exits 0 silently and
/// adds a second snapshot with that name (next id); `-d NAME` then deletes
/// the first of them. ferro does the same, on its own copy of the image.
#[test]
fn snapshot_create_with_an_existing_name() {
    let d = tmp();
    let dir = d.path();
    for f in ["f.qcow2", "q.qcow2"] {
        ok(qemu_img(&["create", "-q", "-f", "qcow2", &p(dir, f), "1M"]));
    }
    let run = |f: &str, args: &[&str]| {
        let mut a = args.to_vec();
        a.push(f);
        if f.starts_with('f') {
            in_dir(dir, ferro_bin(), &["img"], &a)
        } else {
            in_dir(dir, "qemu-img", &[], &a)
        }
    };
    // (id, name) pairs of the snapshots, from qemu-img's own JSON.
    let snaps = |f: &str| -> Vec<(String, String)> {
        let o = ok(qemu_img(&["info", "--output=json", &p(dir, f)]));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["snapshots"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["id"].as_str().unwrap().to_string(),
                            s["name"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for step in [&["snapshot", "-c", "a"][..], &["snapshot", "-c", "a"]] {
        let (fo, qo) = (run("f.qcow2", step), run("q.qcow2", step));
        assert_eq!(
            (code(&fo), stdout(&fo), stderr(&fo)),
            (code(&qo), stdout(&qo), stderr(&qo)),
            "{step:?}"
        );
    }
    let two = vec![("1".into(), "a".into()), ("2".into(), "a".into())];
    assert_eq!(snaps("q.qcow2"), two, "qemu-img 7.2's behaviour changed");
    assert_eq!(snaps("f.qcow2"), two);
    assert_qemu_clean(&p(dir, "f.qcow2"));
    let (fo, qo) = (
        run("f.qcow2", &["snapshot", "-d", "a"]),
        run("q.qcow2", &["snapshot", "-d", "a"]),
    );
    assert_eq!((code(&fo), stderr(&fo)), (code(&qo), stderr(&qo)));
    assert_eq!(snaps("f.qcow2"), snaps("q.qcow2"));
    assert_eq!(snaps("f.qcow2"), vec![("2".into(), "a".into())]);
    assert_qemu_clean(&p(dir, "f.qcow2"));
}
