//! Where the engine keeps its state, and which OCI runtime it drives.
//!
//! Root: see [`state_dirs`] (one function for the engine and `ferrod`).
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

/// The state root and the run dir, shared by the engine and `ferrod` so the
/// CLI and the daemon always see the same containers: `explicit` (`--root`,
/// `--state-dir`), else `$FERRO_ROOT`, then run = `ROOT/run`; as root
/// `/var/lib/ferrovisor` and `/run/ferrovisor`; otherwise
/// `$XDG_DATA_HOME/ferrovisor` (or `~/.local/share/ferrovisor`) and
/// `$XDG_RUNTIME_DIR/ferrovisor` (or `ROOT/run`).
pub fn state_dirs(explicit: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let given = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("FERRO_ROOT").map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty());
    if let Some(s) = given {
        let run = s.join("run");
        return Ok((s, run));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok((
            PathBuf::from("/var/lib/ferrovisor"),
            PathBuf::from("/run/ferrovisor"),
        ));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context(
            "neither XDG_DATA_HOME nor HOME is set; give --root / --state-dir or set FERRO_ROOT",
        )?
        .join("ferrovisor");
    let run = std::env::var_os("XDG_RUNTIME_DIR")
        .map(|r| PathBuf::from(r).join("ferrovisor"))
        .unwrap_or_else(|| data.join("run"));
    Ok((data, run))
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
        let root = state_dirs(root)?.0;
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
