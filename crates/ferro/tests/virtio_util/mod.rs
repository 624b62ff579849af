//! Builds the bare-metal virtio driver (baremetal.c) for the e2e tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Compiles baremetal.c with `-DTEST_<name>` into an ELF at 0x80000000.
pub fn build_baremetal(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/virtio_util/baremetal.c");
    let elf = dir.path().join(format!("{name}.elf"));
    let out = std::process::Command::new("riscv64-linux-gnu-gcc")
        .args([
            "-O2",
            "-ffreestanding",
            "-fno-builtin",
            "-fno-stack-protector",
            "-fno-pie",
            "-no-pie",
            "-nostdlib",
            "-nostartfiles",
            "-static",
            "-march=rv64gc",
            "-mabi=lp64d",
            "-mcmodel=medany",
            "-Wl,--no-relax",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(concat!(
            "-Wl,-T,",
            env!("CARGO_MANIFEST_DIR"),
            "/tests/virtio_util/baremetal.ld"
        ))
        .arg(format!("-DTEST_{}", name.to_uppercase()))
        .arg("-o")
        .arg(&elf)
        .arg(src)
        .output()
        .expect("riscv64-linux-gnu-gcc is required (scripts/deps installs gcc-riscv64-linux-gnu)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    elf
}
