//! `ferro run --bios none --kernel prog.elf`: a bare-metal ELF (assembled
//! here with Debian's riscv64 cross gcc) prints through HTIF's console and
//! exits through `tohost`; ferro's exit status is the program's code.

mod run_common;
use run_common::*;

use std::process::Stdio;
use std::time::{Duration, Instant};

fn program(code: u32) -> String {
    program_ending(&format!(
        "li t0, {}\n    la t1, tohost\n    sd t0, 0(t1)\n4:  j 4b",
        (code << 1) | 1
    ))
}

/// The console loop, then `end` (which must not return).
fn program_ending(end: &str) -> String {
    format!(
        r#"
    .section .text.init, "ax"
    .globl _start
_start:
    la a0, msg
1:  lbu a1, 0(a0)
    beqz a1, 2f
    li t0, 0x0101000000000000   # device 1 (console), command 1 (putchar)
    or t0, t0, a1
    la t1, tohost
    sd t0, 0(t1)
3:  ld t2, 0(t1)                # the host clears tohost once it is done
    bnez t2, 3b
    addi a0, a0, 1
    j 1b
2:  {end}
    .section .rodata
msg: .asciz "hello from htif\n"
    .section .tohost, "aw", @progbits
    .align 6
    .globl tohost
tohost: .dword 0
    .align 6
    .globl fromhost
fromhost: .dword 0
"#
    )
}

fn assemble(dir: &tempfile::TempDir, code: u32) -> std::path::PathBuf {
    assemble_src(dir, &format!("p{code}"), &program(code))
}

fn assemble_src(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let src = write(dir, &format!("{name}.S"), text.as_bytes());
    let ld = write(
        dir,
        "link.ld",
        b"SECTIONS { . = 0x80000000; .text : { *(.text.init) *(.text*) } \
          .rodata : { *(.rodata*) } .tohost : { *(.tohost) } .data : { *(.data*) } .bss : { *(.bss*) } }",
    );
    let elf = dir.path().join(format!("{name}.elf"));
    let out = std::process::Command::new("riscv64-linux-gnu-gcc")
        .args([
            "-nostdlib",
            "-nostartfiles",
            "-static",
            "-march=rv64gc",
            "-mabi=lp64d",
        ])
        .arg(format!("-Wl,-T,{}", ld.display()))
        .args(["-Wl,--build-id=none", "-o"])
        .arg(&elf)
        .arg(&src)
        .output()
        .expect(
            "riscv64-linux-gnu-gcc is required (scripts/deps test installs gcc-riscv64-linux-gnu)",
        );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    elf
}

fn run(code: u32) -> (i32, String) {
    let dir = tempdir();
    let elf = assemble(&dir, code);
    run_elf(&elf)
}

fn run_elf(elf: &std::path::Path) -> (i32, String) {
    let mut cmd = ferro();
    cmd.args(["run", "--arch", "riscv64", "--bios", "none", "--kernel"])
        .arg(elf);
    // stdout (guest console) and stderr (ferro's messages) apart: read by two
    // threads, their bytes interleave arbitrarily in the merged output.
    let (code, _, [out, err]) =
        Running::spawn(cmd, Stdio::null()).finish_split(Instant::now() + Duration::from_secs(60));
    (code, out + &err)
}

#[test]
fn htif_console_and_exit_code_zero() {
    let (code, out) = run(0);
    assert!(out.contains("hello from htif"), "{out}");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn htif_nonzero_exit_code_is_ferros_status() {
    let (code, out) = run(3);
    assert!(out.contains("hello from htif"), "{out}");
    assert_eq!(code, 3, "{out}");
}

/// QEMU's pvpanic-mmio at 0x103000: reading it shows the PANICKED and
/// CRASH_LOADED capabilities (else HTIF exit 9); writing PANICKED ends ferro
/// with status 3 and a message.
#[test]
fn pvpanic_write_exits_3() {
    let dir = tempdir();
    let end = "li t0, 0x103000\n    lbu t1, 0(t0)\n    li t2, 3\n    bne t1, t2, 5f\n    \
               li t2, 1\n    sb t2, 0(t0)\n4:  j 4b\n\
               5:  li t0, 19\n    la t1, tohost\n    sd t0, 0(t1)\n6:  j 6b";
    let elf = assemble_src(&dir, "panic", &program_ending(end));
    let (code, out) = run_elf(&elf);
    assert!(out.contains("hello from htif"), "{out}");
    assert!(out.contains("ferro: guest panicked"), "{out}");
    assert_eq!(code, 3, "{out}");
}
