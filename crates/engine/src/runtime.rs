//! Drives the OCI runtime as a CLI, exactly as docker drives runc:
//! `<runtime> --root R create --bundle B --pid-file P ID`, `start`, `state`,
//! `kill`, `delete`, `exec`.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

pub struct Runtime<'a> {
    pub argv: &'a [String],
    pub root: &'a Path,
}

impl Runtime<'_> {
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        c.arg("--root").arg(self.root);
        c
    }

    /// Runs a short runtime command; its stderr becomes the error.
    fn simple(&self, args: &[&str]) -> Result<String> {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running runtime {}", self.argv.join(" ")))?;
        if !out.status.success() {
            bail!(
                "runtime {} failed: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.simple(&["start", id]).map(|_| ())
    }

    pub fn kill(&self, id: &str, signal: &str) -> Result<()> {
        self.simple(&["kill", id, signal]).map(|_| ())
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        self.simple(&["delete", "--force", id]).map(|_| ())
    }

    pub fn state(&self, id: &str) -> Result<serde_json::Value> {
        let s = self.simple(&["state", id])?;
        serde_json::from_str(&s).context("parsing runtime state JSON")
    }
}
