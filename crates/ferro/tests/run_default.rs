//! End to end: `ferro run` with no arguments boots the default guest to a
//! shell prompt, and `poweroff` typed there ends ferro with status 0.

mod run_common;
use run_common::*;

use std::process::Stdio;
use std::time::Instant;

#[test]
fn default_guest_reaches_prompt_and_powers_off() {
    let _ = guest(); // fail loudly if the cache is missing (no silent fetch)
    let mut cmd = ferro();
    cmd.arg("run");
    let mut r = Running::spawn(cmd, Stdio::piped());
    let deadline = Instant::now() + BOOT_DEADLINE;
    assert!(
        r.wait_for(guest::PROMPT, deadline),
        "no shell prompt {:?}; output:\n{}",
        guest::PROMPT,
        r.output
    );
    r.send("echo marker-$((6*7))\n");
    assert!(
        r.wait_for("marker-42", deadline),
        "shell did not run a command:\n{}",
        r.output
    );
    r.send("poweroff\n");
    let (code, out) = r.finish(deadline);
    assert!(out.contains("reboot: Power down"), "{out}");
    assert_eq!(code, 0, "{out}");
}
