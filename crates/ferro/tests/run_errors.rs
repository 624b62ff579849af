//! `ferro run` refuses bad input before boot with a message naming the problem.

mod run_common;
use run_common::*;

fn fails(args: &[&str], want: &str) {
    let out = ferro().arg("run").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{args:?} succeeded");
    assert!(
        err.contains(want),
        "{args:?}: stderr {err:?} lacks {want:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempdir();
    let junk = path_str(&write(&dir, "junk", &[0x42; 4096]));
    let fw = path_str(&write(&dir, "fw.bin", &[0x13, 0, 0, 0]));
    let missing = path_str(&dir.path().join("missing-Image"));
    fails(&["--kernel", &missing, "--firmware", &fw], "missing-Image");
    fails(
        &["--kernel", &junk, "--firmware", &fw],
        "not a RISC-V Linux Image",
    );
    fails(&["--kernel", &junk, "--firmware", &missing], "firmware");
    fails(
        &["--kernel", &junk, "--firmware", &fw, "--initrd", &missing],
        "initrd",
    );
    fails(
        &["--kernel", &junk, "--firmware", &fw, "--cpus", "9"],
        "1 to 8",
    );
    fails(
        &["--kernel", &junk, "--firmware", &fw, "--memory", "lots"],
        "invalid memory size",
    );
    fails(
        &["--kernel", &junk, "--firmware", &fw, "--memory", "1M"],
        "memory size",
    );
    fails(&["--bios", "none", "--kernel", &junk], "not an ELF");
    fails(&["--bios", "none"], "--bios none needs --kernel");
    fails(&["--arch", "mips", "--kernel", &junk], "riscv64");
}

#[test]
fn images_too_big_for_memory_are_refused() {
    let g = guest();
    let out = ferro()
        .arg("run")
        .arg("--kernel")
        .arg(&g.kernel)
        .arg("--firmware")
        .arg(&g.firmware)
        .arg("--initrd")
        .arg(&g.initrd)
        .args(["--memory", "32M"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("too small") && err.contains("kernel"), "{err}");
}
