//! End to end with Debian's kernel on the emulator: virtio-blk on qcow2 and
//! raw images. A root disk made by `ferro guest mkdisk` keeps a file across
//! boots through an overlay while its base stays byte-identical; 64 MiB of
//! random data written by the guest hash the same on the host; a qcow2 made
//! by qemu-img reads back exactly; read-only and serial reach the guest.

mod run_common;
mod virtio_util;
use run_common::*;
use virtio_util::*;

use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(300);

#[test]
fn root_disk_round_trip_through_an_overlay() {
    let dir = tempdir();
    let base = dir.path().join("base.qcow2");
    let overlay = dir.path().join("overlay.qcow2");
    run_ok(
        ferro()
            .args(["guest", "mkdisk", "--size", "128M", "-o"])
            .arg(&base),
    );
    let base_sum = sha256_file(&base, None);
    run_ok(
        ferro()
            .args(["img", "create", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&overlay),
    );
    let args = vec![
        "--disk".to_string(),
        format!("{},format=qcow2", overlay.display()),
        "--append".to_string(),
        "console=ttyS0 root=/dev/vda".to_string(),
    ];

    let mut r = boot(&args);
    let mounts = sh(&mut r, "grep ' / ' /proc/mounts", T);
    assert!(
        mounts.contains("/dev/vda / ext4"),
        "root is not the disk: {mounts}"
    );
    sh(&mut r, "echo persistent-$((6*7)) > /root/note && sync", T);
    poweroff(r);

    let mut r = boot(&args);
    let note = sh(&mut r, "cat /root/note", T);
    assert!(note.contains("persistent-42"), "{note}");
    poweroff(r);

    assert_eq!(
        sha256_file(&base, None),
        base_sum,
        "the backing file changed"
    );
    for img in [&base, &overlay] {
        run_ok(Command::new("qemu-img").args(["check"]).arg(img));
    }
}

#[test]
fn raw_integrity_qemu_img_qcow2_readonly_and_serial() {
    let dir = tempdir();
    let raw = dir.path().join("data.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    // A qcow2 written by qemu-img, with random content.
    let src = dir.path().join("src.raw");
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "head -c 16777216 /dev/urandom > '{}'",
        src.display()
    )));
    let q = dir.path().join("q.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&src)
            .arg(&q),
    );
    let mut r = boot(&[
        "--disk".into(),
        format!("{},format=raw,serial=DATA0", raw.display()),
        "--disk".into(),
        format!("{},readonly=on,serial=QEMU1", q.display()),
    ]);
    let info = sh(
        &mut r,
        "for d in vda vdb; do echo $d $(cat /sys/block/$d/serial) \
         $(cat /sys/block/$d/size) $(cat /sys/block/$d/ro); done",
        T,
    );
    // First --disk is vda; serial, size in sectors and read-only reach the guest.
    assert!(
        info.contains(&format!("vda DATA0 {} 0", 96 * 2048)),
        "{info}"
    );
    assert!(
        info.contains(&format!("vdb QEMU1 {} 1", 16 * 2048)),
        "{info}"
    );

    // 64 MiB of pseudo-random data onto the raw disk, then read back
    // through the device (caches dropped).
    let out = sh(
        &mut r,
        "dd if=/dev/urandom of=/tmp/r bs=1M count=64 2>/dev/null && \
         dd if=/tmp/r of=/dev/vda bs=1M conv=fsync 2>/dev/null && sha256sum /tmp/r",
        T,
    );
    let guest_sum = find_sha(&out);
    let back = sh(
        &mut r,
        "rm /tmp/r; echo 3 > /proc/sys/vm/drop_caches; \
         dd if=/dev/vda bs=1M count=64 2>/dev/null | sha256sum",
        T,
    );
    assert_eq!(find_sha(&back), guest_sum, "read-back differs");

    // The qemu-img qcow2 reads back exactly; writes to it fail.
    let q_sum = find_sha(&sh(&mut r, "sha256sum /dev/vdb", T));
    assert_eq!(q_sum, sha256_file(&src, None));
    let w = sh(
        &mut r,
        "dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>&1; true",
        T,
    );
    assert!(
        w.to_lowercase().contains("read-only") || w.contains("Operation not permitted"),
        "{w}"
    );
    poweroff(r);

    assert_eq!(sha256_file(&raw, Some(64 << 20)), guest_sum);
    run_ok(Command::new("qemu-img").args(["check"]).arg(&q));
    let q_raw = dir.path().join("q.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&q)
            .arg(&q_raw),
    );
    assert_eq!(
        sha256_file(&q_raw, None),
        sha256_file(&src, None),
        "the read-only qcow2 changed"
    );
}
