//! End to end on the emulator: a bare-metal driver (C, built here with
//! Debian's riscv64 cross gcc) writes malformed descriptor chains into guest
//! RAM through the emulated hart. The attacked device must report
//! DEVICE_NEEDS_RESET with a config interrupt, ferro must keep running, the
//! other device must keep working, and both must work again after a reset.

mod run_common;
mod virtio_util;
use run_common::*;

use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn hostile_queues_need_reset_and_spare_the_other_device() {
    let dir = tempdir();
    let elf = virtio_util::build_baremetal(&dir, "hostile");
    let out_file = dir.path().join("hvc0.txt");
    let mut cmd = ferro();
    cmd.args(["run", "--bios", "none", "--rng", "--kernel"])
        .arg(&elf)
        .arg("--virtio-console")
        .arg(format!("file={}", out_file.display()))
        .env("FERRO_LOG", "warn");
    let (code, out, [guest, log]) =
        Running::spawn(cmd, Stdio::null()).finish_split(Instant::now() + Duration::from_secs(120));
    // The guest's progress lines come on stdout; the warnings on stderr may
    // land in the middle of them in the merged `out`.
    assert!(guest.contains("honest driver ok"), "{out}");
    assert!(guest.contains("loop -> needs reset"), "{out}");
    assert!(guest.contains("out of range -> needs reset"), "{out}");
    assert!(guest.contains("avail jump -> needs reset"), "{out}");
    assert!(guest.contains("all ok"), "{out}");
    assert_eq!(code, 0, "{out}");
    // One warning line per broken episode, naming the device and the cause.
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("needs reset")).collect();
    assert!(
        warns
            .iter()
            .any(|l| l.contains("virtio-rng") && l.contains("loops")),
        "{out}"
    );
    assert!(
        warns
            .iter()
            .any(|l| l.contains("virtio-rng") && l.contains("outside guest memory")),
        "{out}"
    );
    assert!(
        warns
            .iter()
            .any(|l| l.contains("virtio-console") && l.contains("available index jumped")),
        "{out}"
    );
    let hvc = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(
        hvc,
        "line 1 from the guest\nline 2 after the rng broke\nline 3 after both resets\n"
    );
}
