//! Where the engine keeps its state, and which OCI runtime it drives.
//!
//! Root: `/var/lib/ferrovisor` for root, `$XDG_DATA_HOME/ferrovisor` (or
//! `~/.local/share/ferrovisor`) otherwise; `--root`/`FERRO_ROOT` override.
//! Below it: `images/` (the image store), `containers/<id>/` (bundle, state,
//! logs), `runtime/` (the runtime's `--root`), `build-cache/`.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Engine {
    pub root: PathBuf,
    /// The runtime command line prefix (`[ferro, oci]` or `[runc]`).
    pub runtime: Vec<String>,
}

pub fn default_root() -> PathBuf {
    if let Ok(r) = std::env::var("FERRO_ROOT") {
        return PathBuf::from(r);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/ferrovisor");
    }
    let base = std::env::var("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".local/share")
        });
    base.join("ferrovisor")
}

/// `--runtime` value → argv prefix. Default: this binary's `oci` subcommand.
pub fn runtime_argv(flag: Option<&str>) -> Result<Vec<String>> {
    let env = std::env::var("FERRO_RUNTIME").ok();
    match flag.map(str::to_string).or(env) {
        Some(r) if !r.is_empty() && r != "ferro" => Ok(vec![r]),
        _ => {
            let exe = std::env::current_exe().context("finding the ferro binary")?;
            Ok(vec![exe.display().to_string(), "oci".into()])
        }
    }
}

impl Engine {
    pub fn new(root: Option<&Path>, runtime: Option<&str>) -> Result<Engine> {
        let root = root.map(Path::to_path_buf).unwrap_or_else(default_root);
        for d in ["containers", "runtime", "build-cache"] {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        Ok(Engine {
            root,
            runtime: runtime_argv(runtime)?,
        })
    }

    pub fn images(&self) -> Result<images::Store> {
        Ok(images::Store::open(&self.root.join("images"))?)
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn runtime_root(&self) -> PathBuf {
        self.root.join("runtime")
    }
}
