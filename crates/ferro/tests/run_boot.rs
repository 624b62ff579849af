//! End to end: Debian's kernel boots on the emulator with an initramfs built
//! here, whose init checks the guest with BusyBox and powers off.

mod run_common;
use run_common::*;

use std::process::Stdio;
use std::time::Instant;

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "E2E-SHA=$(sha256sum /known | cut -d' ' -f1)"
echo "E2E-ARCH=$(uname -m)"
echo "E2E-NPROC=$(nproc)"
echo "E2E-DONE"
poweroff -f
"#;

fn known_file() -> Vec<u8> {
    // xorshift: deterministic, incompressible-looking data.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn host_sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils)");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn boot_and_check(cpus: usize) {
    let g = guest();
    let dir = tempdir();
    let known = write(&dir, "known", &known_file());
    let initrd = g
        .initramfs(INIT, &[("/known", 0o644, known_file())])
        .expect("build the test initramfs");
    let initrd = write(&dir, "initrd.gz", &initrd);
    let mut cmd = ferro();
    cmd.args(["run", "--arch", "riscv64", "--kernel"])
        .arg(&g.kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--firmware")
        .arg(&g.firmware)
        .args([
            "--append",
            "console=ttyS0 panic=-1",
            "--memory",
            "512M",
            "--no-reboot",
        ])
        .args(["--cpus", &cpus.to_string()]);
    let deadline = Instant::now() + BOOT_DEADLINE;
    let (code, out) = Running::spawn(cmd, Stdio::null()).finish(deadline);
    assert!(
        out.contains("E2E-DONE"),
        "init did not finish; output:\n{out}"
    );
    assert!(
        out.contains(&format!("E2E-SHA={}", host_sha256(&known))),
        "sha256 differs:\n{out}"
    );
    assert!(out.contains("E2E-ARCH=riscv64"), "{out}");
    assert!(out.contains(&format!("E2E-NPROC={cpus}")), "{out}");
    assert_eq!(
        code, 0,
        "ferro run must exit 0 on guest poweroff; output:\n{out}"
    );
}

#[test]
fn debian_kernel_boots_busybox_init_1_cpu() {
    boot_and_check(1);
}

#[test]
fn debian_kernel_boots_busybox_init_2_cpus() {
    boot_and_check(2);
}
