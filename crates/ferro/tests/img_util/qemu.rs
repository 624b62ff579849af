//! Running qemu-img and qemu-io from tests, shared by the `ferro img` tests
//! (`img_util`) and the block crate's tests (`crates/block/tests/common`
//! includes this file). A missing tool fails loudly, never skips:
//! `scripts/deps test` installs qemu-utils.
#![allow(dead_code)]

use std::process::{Command, Output};

fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run scripts/deps test (installs qemu-utils)"
    );
    Command::new(name)
}

pub fn qemu_img(args: &[&str]) -> Output {
    tool("qemu-img").args(args).output().expect("run qemu-img")
}

pub fn qemu_io(args: &[&str]) -> Output {
    tool("qemu-io").args(args).output().expect("run qemu-io")
}

/// Runs qemu-img, asserts it exited 0, returns its stdout.
#[track_caller]
pub fn qemu_img_ok(args: &[&str]) -> String {
    let o = qemu_img(args);
    assert!(
        o.status.success(),
        "qemu-img {:?} failed ({}): {}{}",
        args,
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `qemu-img check` exit code and output.
pub fn qemu_check(img: &str) -> (i32, String) {
    let o = qemu_img(&["check", img]);
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Asserts `qemu-img check` finds the image clean (exit 0: no corruption,
/// no leaks).
#[track_caller]
pub fn assert_qemu_clean(img: &str) {
    let (c, text) = qemu_check(img);
    assert_eq!(c, 0, "qemu-img check {img}:\n{text}");
}

/// Asserts `qemu-img compare ARGS…` says identical (exit 0).
#[track_caller]
pub fn assert_qemu_compare(args: &[&str]) {
    let mut a = vec!["compare"];
    a.extend_from_slice(args);
    let o = qemu_img(&a);
    assert_eq!(
        o.status.code(),
        Some(0),
        "qemu-img {a:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A non-negative integer field of qemu-img's JSON output (first match).
pub fn json_u64(json: &str, key: &str) -> Option<u64> {
    let k = format!("\"{key}\":");
    let at = json.find(&k)? + k.len();
    let rest = json[at..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
