//! `check` finds what qemu-img check finds (leaks, refcount corruption,
//! COPIED flags) with the same counts, and `check -r` leaves an image that
//! qemu-img check reports clean.

mod common;
use std::path::Path;

use block::{create, BlockBackend, CreateOptions, Format, Image, OpenOptions, Repair};
use common::*;

fn get64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

/// An image with data, and the byte offset of its first refcount block.
fn image_with_data(dir: &Path) -> (std::path::PathBuf, usize) {
    let path = dir.join("c.qcow2");
    create(
        &path,
        &CreateOptions {
            format: Some(Format::Qcow2),
            size: Some(8 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    let mut i = open_rw(&path);
    i.write_at(&vec![0x5a; 300_000], 65536).unwrap();
    drop(i);
    let v = std::fs::read(&path).unwrap();
    let rt = get64(&v, 48) as usize;
    let rb = get64(&v, rt) as usize;
    (path, rb)
}

fn ours(path: &Path, repair: Repair) -> block::CheckReport {
    let mut i = Image::open(
        path,
        &OpenOptions {
            check: true,
            read_only: repair == Repair::None,
            no_backing: true,
            ..Default::default()
        },
    )
    .unwrap();
    i.check(repair).unwrap()
}

fn agree(path: &Path) -> block::CheckReport {
    let r = ours(path, Repair::None);
    let o = qemu_img(&["check", "--output=json", p(path)]);
    let j = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        r.leaks,
        json_u64(&j, "leaks").unwrap_or(0),
        "leaks: ours {:?} qemu {j}",
        r.messages
    );
    assert_eq!(
        r.corruptions,
        json_u64(&j, "corruptions").unwrap_or(0),
        "corruptions: ours {:?} qemu {j}",
        r.messages
    );
    assert_eq!(o.status.code(), Some(r.exit_code()), "exit code");
    r
}

#[test]
fn leaked_cluster_found_and_repaired() {
    let dir = tempdir();
    let (path, rb) = image_with_data(dir.path());
    let mut v = std::fs::read(&path).unwrap();
    // Append a cluster and count it without referencing it.
    let c = v.len().div_ceil(65536);
    v.resize((c + 1) * 65536, 0);
    v[rb + c * 2..rb + c * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
    std::fs::write(&path, &v).unwrap();
    let r = agree(&path);
    assert_eq!((r.leaks, r.corruptions), (1, 0));
    assert_eq!(r.exit_code(), 3);
    assert!(r
        .messages
        .iter()
        .any(|m| m.starts_with(&format!("Leaked cluster {c} refcount=1 reference=0"))));
    let fixed = ours(&path, Repair::Leaks);
    assert_eq!((fixed.leaks_fixed, fixed.leaks), (1, 0));
    assert_qemu_check_clean(&path);
}

#[test]
fn refcount_corruption_found_and_repaired() {
    let dir = tempdir();
    let (path, rb) = image_with_data(dir.path());
    let mut v = std::fs::read(&path).unwrap();
    // The first data cluster: find it through L1/L2.
    let l1 = get64(&v, 40) as usize;
    let l2 = (get64(&v, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let data = (get64(&v, l2 + 8) & 0x00ff_ffff_ffff_fe00) as usize;
    let c = data / 65536;
    v[rb + c * 2..rb + c * 2 + 2].copy_from_slice(&0u16.to_be_bytes());
    std::fs::write(&path, &v).unwrap();
    let r = agree(&path);
    assert!(r.corruptions >= 1);
    assert_eq!(r.exit_code(), 2);
    // Leaks-only repair leaves the corruption.
    let after = ours(&path, Repair::Leaks);
    assert!(after.corruptions >= 1);
    let fixed = ours(&path, Repair::All);
    assert_eq!(fixed.corruptions, 0, "{:?}", fixed.messages);
    assert!(fixed.corruptions_fixed >= 1);
    assert_qemu_check_clean(&path);
    // Data intact.
    let mut i = open_rw(&path);
    let mut b = vec![0u8; 300_000];
    i.read_at(&mut b, 65536).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
}

#[test]
fn copied_flag_errors_match_qemu() {
    let dir = tempdir();
    let (path, _) = image_with_data(dir.path());
    let mut v = std::fs::read(&path).unwrap();
    let l1 = get64(&v, 40) as usize;
    let l2 = (get64(&v, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let e = get64(&v, l2 + 8);
    v[l2 + 8..l2 + 16].copy_from_slice(&(e & !(1u64 << 63)).to_be_bytes());
    std::fs::write(&path, &v).unwrap();
    let r = agree(&path);
    assert_eq!(r.corruptions, 1);
    ours(&path, Repair::All);
    assert_qemu_check_clean(&path);
}

#[test]
fn qemu_repairs_what_we_report_and_vice_versa() {
    // A leak made by us is repaired by qemu-img check -r leaks, and our
    // check then agrees the image is clean.
    let dir = tempdir();
    let (path, rb) = image_with_data(dir.path());
    let mut v = std::fs::read(&path).unwrap();
    let c = v.len().div_ceil(65536);
    v.resize((c + 1) * 65536, 0);
    v[rb + c * 2..rb + c * 2 + 2].copy_from_slice(&3u16.to_be_bytes());
    std::fs::write(&path, &v).unwrap();
    let o = qemu_img(&["check", "-r", "leaks", p(&path)]);
    assert_eq!(o.status.code(), Some(0));
    let r = ours(&path, Repair::None);
    assert_eq!((r.leaks, r.corruptions), (0, 0));
}
