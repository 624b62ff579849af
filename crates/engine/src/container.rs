//! Containers on disk: `containers/<id>/` holds `state.json` (config and
//! status), the OCI bundle (`config.json`, `rootfs/` = overlay of the image
//! layers with `upper/` + `work/`), `container.log` (docker json-file lines)
//! and the files bind-mounted into `/etc`.

use crate::paths::Engine;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Bind {
    pub host: String,
    pub container: String,
    pub readonly: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct Port {
    pub host: u16,
    pub container: u16,
    pub proto: String,
}

/// What `run`/`create` asked for.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct RunConfig {
    pub image: String,
    pub image_id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub tty: bool,
    pub interactive: bool,
    pub binds: Vec<Bind>,
    pub ports: Vec<Port>,
    pub network: String,
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub restart: String,
    pub auto_remove: bool,
    pub hostname: String,
    pub runtime: Vec<String>,
    pub stop_signal: String,
    pub layers: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Status {
    /// created | running | exited
    pub status: String,
    pub pid: i32,
    pub exit_code: i32,
    pub oom_killed: bool,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    pub restart_count: u32,
    pub monitor_pid: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub created: String,
    pub config: RunConfig,
    pub state: Status,
    pub ip: String,
}

impl Container {
    pub fn dir(&self, eng: &Engine) -> PathBuf {
        eng.containers_dir().join(&self.id)
    }

    pub fn load(eng: &Engine, id: &str) -> Result<Container> {
        let p = eng.containers_dir().join(id).join("state.json");
        let data = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&data).with_context(|| format!("parsing {}", p.display()))
    }

    /// Rewrites state.json atomically.
    pub fn save(&self, eng: &Engine) -> Result<()> {
        let dir = self.dir(eng);
        // A temporary name per writer: the monitor, the CLI and ferrod's
        // threads may save the same container at once; each rename is atomic.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!("state.json.tmp.{}.{n}", std::process::id()));
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, dir.join("state.json")).context("replacing state.json")?;
        Ok(())
    }

    /// Re-reads status fields the monitor wrote, keeping the rest.
    pub fn refresh(&mut self, eng: &Engine) -> Result<()> {
        *self = Container::load(eng, &self.id)?;
        Ok(())
    }

    /// Running, or between runs under a restart policy (the monitor is alive).
    pub fn is_running(&self) -> bool {
        self.state.status == "running" || self.state.status == "restarting"
    }

    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }

    pub fn cgroup_path(&self) -> String {
        format!("/ferro/{}", self.id)
    }
}

/// All containers, newest first, as recorded (nothing rewritten).
pub fn load_all(eng: &Engine) -> Result<Vec<Container>> {
    let mut out: Vec<Container> = fs::read_dir(eng.containers_dir())?
        .flatten()
        .filter_map(|e| Container::load(eng, e.file_name().to_str()?).ok())
        .collect();
    out.sort_by(|a, b| b.created.cmp(&a.created));
    Ok(out)
}

/// All containers, newest first, with those whose monitor died marked
/// exited (see `fix_stale`).
pub fn list(eng: &Engine) -> Result<Vec<Container>> {
    let mut out = load_all(eng)?;
    for c in &mut out {
        fix_stale(eng, c);
    }
    Ok(out)
}

/// The `error` of a container [`list`] found running with its monitor gone
/// (ferrod looks for it to apply the restart policy).
pub const MONITOR_DIED: &str = "monitor process died";

/// A "running" container whose monitor died is reported as exited.
/// A monitor saves its last record before it exits, so re-reading after
/// seeing it dead gets that record; without the re-read a monitor that
/// exited normally between our read and our check would have its exit
/// code overwritten.
fn fix_stale(eng: &Engine, c: &mut Container) {
    let stale = |c: &Container| {
        c.is_running() && c.state.monitor_pid > 0 && !pid_alive(c.state.monitor_pid)
    };
    if !stale(c) {
        return;
    }
    match Container::load(eng, &c.id) {
        Ok(fresh) => *c = fresh,
        Err(_) => return,
    }
    if stale(c) {
        c.state.status = "exited".into();
        c.state.exit_code = 255;
        c.state.error = MONITOR_DIED.into();
        let _ = c.save(eng);
    }
}

/// Alive and not a zombie (a zombie has exited; an init that does not reap
/// orphans keeps a dead monitor as one).
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Finds a container by full ID, unique ID prefix or name.
pub fn find(eng: &Engine, what: &str) -> Result<Container> {
    let all = list(eng)?;
    if let Some(c) = all.iter().find(|c| c.name == what || c.id == what) {
        return Ok(c.clone());
    }
    let hits: Vec<_> = all.iter().filter(|c| c.id.starts_with(what)).collect();
    match hits.len() {
        1 => Ok(hits[0].clone()),
        0 => bail!("No such container: {what}"),
        _ => bail!("multiple containers match ID prefix {what}"),
    }
}

pub fn random_id() -> Result<String> {
    let mut b = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(hex::encode(b))
}

/// Parses docker sizes: `64m`, `1g`, `512k`, `1048576`.
pub fn parse_size(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| {
        anyhow!("invalid size {s:?}: expected a number with an optional b/k/m/g suffix")
    })?;
    if n.is_nan() || n <= 0.0 {
        bail!("invalid size {s:?}: must be positive");
    }
    Ok((n * mul as f64) as i64)
}

/// Resolves `user[:group]` (names or numbers) against the rootfs's
/// /etc/passwd and /etc/group.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<(u32, u32)> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let read = |f: &str| fs::read_to_string(rootfs.join(f)).unwrap_or_default();
    let passwd = read("etc/passwd");
    let (uid, pgid) = match u.parse::<u32>() {
        Ok(n) => (
            n,
            passwd
                .lines()
                .find(|l| l.split(':').nth(2) == Some(u))
                .and_then(|l| l.split(':').nth(3)?.parse().ok())
                .unwrap_or(0),
        ),
        Err(_) => {
            let line = passwd
                .lines()
                .find(|l| l.split(':').next() == Some(u))
                .ok_or_else(|| {
                    anyhow!("unable to find user {u}: no matching entries in passwd file")
                })?;
            let f: Vec<&str> = line.split(':').collect();
            (
                f.get(2).and_then(|s| s.parse().ok()).unwrap_or(0),
                f.get(3).and_then(|s| s.parse().ok()).unwrap_or(0),
            )
        }
    };
    let gid = match g {
        None => pgid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read("etc/group")
                .lines()
                .find(|l| l.split(':').next() == Some(g))
                .and_then(|l| l.split(':').nth(2)?.parse().ok())
                .ok_or_else(|| {
                    anyhow!("unable to find group {g}: no matching entries in group file")
                })?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1m").is_err());
    }

    #[test]
    fn users() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("etc")).unwrap();
        fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(t.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(t.path(), "www").unwrap(), (33, 34));
        assert_eq!(resolve_user(t.path(), "www:staff").unwrap(), (33, 50));
        assert_eq!(resolve_user(t.path(), "1000:1000").unwrap(), (1000, 1000));
        assert!(resolve_user(t.path(), "nobody").is_err());
    }
}
