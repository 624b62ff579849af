//! A container's on-disk record under `<root>/<id>/`: state.json (what
//! `state`, `kill`, `exec` and `delete` need, including a copy of the
//! config) and exec.fifo (present while the container is `created`).

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const FIFO: &str = "exec.fifo";

/// What the runtime remembers about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub pid: i32,
    /// /proc/PID/stat start time, to detect pid reuse.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    pub cgroup_path: PathBuf,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    pub config: Spec,
}

/// Container status, as the OCI runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// runc's `state` output, field for field (and in runc's order).
#[derive(Debug, Serialize, Deserialize)]
pub struct RuncState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: String,
    pub bundle: String,
    pub rootfs: String,
    pub created: String,
    #[serde(skip_serializing_if = "HashMap::is_empty", default)]
    pub annotations: HashMap<String, String>,
    pub owner: String,
}

/// The OCI state passed to hooks on stdin.
#[derive(Debug, Serialize)]
pub struct HookState<'a> {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'a str,
    pub id: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: &'a Path,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
}

pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

pub fn load(root: &Path, id: &str) -> Result<Saved> {
    crate::config::validate_id(id)?;
    let p = dir(root, id).join(STATE_FILE);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("container {id} does not exist")
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    serde_json::from_slice(&text).with_context(|| format!("{} is corrupt", p.display()))
}

/// Writes state.json atomically (write + rename), so readers never see half.
pub fn save(root: &Path, s: &Saved) -> Result<()> {
    let d = dir(root, &s.id);
    let tmp = d.join(".state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(s)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, d.join(STATE_FILE)).context("renaming state.json")?;
    Ok(())
}

impl Saved {
    /// Whether the init process we recorded is still the one alive.
    pub fn init_alive(&self) -> bool {
        self.pid > 0
            && matches!(crate::sys::proc_start_time(self.pid), Some((t, st)) if t == self.start_time && st != 'Z' && st != 'X')
    }

    pub fn status(&self, root: &Path) -> Status {
        if !self.init_alive() {
            return Status::Stopped;
        }
        if dir(root, &self.id).join(FIFO).exists() {
            return Status::Created;
        }
        if let Ok(m) = libcgroups::Manager::new(&self.cgroup_path) {
            if m.is_frozen() {
                return Status::Paused;
            }
        }
        Status::Running
    }

    pub fn runc_state(&self, root: &Path) -> RuncState {
        let st = self.status(root);
        RuncState {
            oci_version: self.config.version().clone(),
            id: self.id.clone(),
            pid: if st == Status::Stopped { 0 } else { self.pid },
            status: st.as_str().into(),
            bundle: self.bundle.display().to_string(),
            rootfs: self.rootfs.display().to_string(),
            created: self.created.clone(),
            annotations: self.annotations.clone(),
            owner: self.owner.clone(),
        }
    }
}

/// Now as RFC 3339 with nanoseconds in UTC, like Go's time.Time JSON.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil-from-days (proleptic Gregorian), after H. Hinnant.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_shape() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
    }
}
