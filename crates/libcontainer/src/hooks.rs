//! OCI hooks: each runs as a child process with the container state JSON on
//! stdin, its own args/env, and an optional timeout in seconds. A failing
//! hook fails the operation (except poststart/poststop, whose callers log).

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Hook;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn run(hooks: &[Hook], state_json: &[u8], phase: &str) -> Result<()> {
    for h in hooks {
        run_one(h, state_json).with_context(|| format!("{phase} hook {}", h.path().display()))?;
    }
    Ok(())
}

fn run_one(h: &Hook, state_json: &[u8]) -> Result<()> {
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args() {
        if let Some(a0) = args.first() {
            cmd.arg0(a0);
        }
        cmd.args(args.iter().skip(1));
    }
    cmd.env_clear();
    for e in h.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().context("starting")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that ignores stdin may close it early; that is fine.
        let _ = stdin.write_all(state_json);
    }
    let status = match h.timeout() {
        Some(t) if t > 0 => {
            let deadline = Instant::now() + Duration::from_secs(t as u64);
            loop {
                if let Some(s) = child.try_wait()? {
                    break s;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("timed out after {t}s");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Some(t) if t < 0 => bail!("timeout {t} is negative"),
        _ => child.wait()?,
    };
    if !status.success() {
        bail!("exited with {status}");
    }
    Ok(())
}
