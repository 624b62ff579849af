//! End to end: `ferro run` with no arguments boots the default guest to a
//! shell prompt, and `poweroff` typed there ends ferro with status 0; a
//! guest reboot restarts the machine; a guest kernel panic exits 3; SMP
//! guests work the same way.

mod run_common;
use run_common::*;

use std::process::Stdio;
use std::time::Instant;

fn boot_to_prompt(extra: &[&str]) -> (Running, Instant) {
    let _ = guest(); // fail loudly if the cache is missing (no silent fetch)
    let mut cmd = ferro();
    cmd.arg("run").args(extra);
    let mut r = Running::spawn(cmd, Stdio::piped());
    let deadline = Instant::now() + BOOT_DEADLINE;
    assert!(
        r.wait_for(guest::PROMPT, deadline),
        "no shell prompt {:?}; output:\n{}",
        guest::PROMPT,
        r.output
    );
    (r, deadline)
}

fn poweroff(mut r: Running, deadline: Instant) {
    r.send("poweroff\n");
    let (code, out) = r.finish(deadline);
    assert!(out.contains("reboot: Power down"), "{out}");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn default_guest_reaches_prompt_and_powers_off() {
    let (mut r, deadline) = boot_to_prompt(&[]);
    r.send("echo marker-$((6*7))\n");
    assert!(
        r.wait_for("marker-42", deadline),
        "shell did not run a command:\n{}",
        r.output
    );
    // The virtio transport module from Debian's package is loaded; drivers
    // for absent devices are not.
    r.send("echo mods-$(grep -c -E '^(virtio_mmio|virtio_rng) ' /proc/modules)\n");
    assert!(r.wait_for("mods-1", deadline), "modules:\n{}", r.output);
    poweroff(r, deadline);
}

#[test]
fn default_guest_smp_loads_modules_and_powers_off() {
    let (mut r, deadline) = boot_to_prompt(&["--cpus", "2", "--rng"]);
    r.send("echo cpus-$(nproc)\n");
    assert!(r.wait_for("cpus-2", deadline), "{}", r.output);
    // The virtio-rng device's driver was loaded on demand.
    r.send("echo rng-$(grep -c '^virtio_rng ' /proc/modules)\n");
    assert!(r.wait_for("rng-1", deadline), "{}", r.output);
    poweroff(r, deadline);
}

/// One boot serves two checks: a reboot restarts the machine, and then a
/// kernel panic (sysrq `c`) lights the panic LED and ends ferro with exit
/// code 3 and a message (docs/CONTROL.md: reason `crashed`).
#[test]
fn guest_reboot_restarts_the_machine_and_a_panic_exits_3() {
    const BANNER: &str = "Ferrovisor default guest (";
    let (mut r, deadline) = boot_to_prompt(&[]);
    r.send("reboot\n");
    assert!(
        r.wait_for_n(BANNER, 2, deadline),
        "no second boot:\n{}",
        r.output
    );
    assert!(
        r.wait_for_n(guest::PROMPT, 2, deadline),
        "no prompt after reboot:\n{}",
        r.output
    );
    r.send("echo c > /proc/sysrq-trigger\n");
    let (code, out, [stdout, stderr]) = r.finish_split(deadline);
    assert!(
        stdout.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{out}"
    );
    assert!(stderr.contains("ferro: guest panicked"), "{stderr}");
    assert_eq!(code, 3, "{out}");
}
