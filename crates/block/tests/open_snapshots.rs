//! Internal snapshots through `BlockBackend` on an image that stays open
//! (VM snapshots of a disk in use): create, write on, apply, delete; the
//! image stays clean for qemu-img and qemu-img sees the snapshot.

mod common;
use common::*;

use block::BlockBackend;

#[test]
fn snapshots_on_an_open_image() {
    let d = tempdir();
    let path = path_in(d.path(), "a.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", p(&path), "4M"]);
    let mut img: Box<dyn BlockBackend> = block::open(&path, &Default::default()).unwrap();
    assert!(img.can_snapshot());
    img.write_at(&[1u8; 65536], 0).unwrap();
    img.snapshot_create("s1").unwrap();
    assert_eq!(img.snapshots().len(), 1);
    assert_eq!(img.snapshots()[0].name, "s1");
    img.write_at(&[2u8; 65536], 0).unwrap();
    img.write_at(&[3u8; 512], 1 << 20).unwrap();
    img.flush().unwrap();
    let l = qemu_img_ok(&["snapshot", "-l", p(&path)]);
    assert!(l.contains("s1"), "{l}");
    img.snapshot_apply("s1").unwrap();
    let mut b = vec![0u8; 65536];
    img.read_at(&mut b, 0).unwrap();
    assert_eq!(b, vec![1u8; 65536]);
    img.read_at(&mut b[..512], 1 << 20).unwrap();
    assert_eq!(&b[..512], &[0u8; 512]);
    // Writing after the revert copies on write; the snapshot keeps its data.
    img.write_at(&[4u8; 4096], 0).unwrap();
    img.snapshot_apply("s1").unwrap();
    img.read_at(&mut b[..4096], 0).unwrap();
    assert_eq!(&b[..4096], &[1u8; 4096]);
    img.flush().unwrap();
    assert_qemu_check_clean(&path);
    img.snapshot_delete("s1").unwrap();
    assert!(img.snapshots().is_empty());
    img.flush().unwrap();
    drop(img);
    assert_qemu_check_clean(&path);

    // Raw images have none.
    let raw = path_in(d.path(), "b.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let mut r: Box<dyn BlockBackend> = block::open(&raw, &Default::default()).unwrap();
    assert!(!r.can_snapshot());
    let e = r.snapshot_create("x").unwrap_err().to_string();
    assert!(e.contains("does not support internal snapshots"), "{e}");
}
