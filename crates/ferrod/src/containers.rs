//! Containers under ferrod: the API's operations and their supervision.
//!
//! One source of truth: the engine's state dir (`containers/<id>/state.json`
//! plus one monitor process per running container), under the same root as
//! `ferro container` ([`engine::paths::state_dirs`]). ferrod keeps no
//! container state of its own; the API calls the engine as a library on
//! those files, and `ferro container …` keeps working on them directly, with
//! or without a daemon (it does not route through the socket: the files and
//! the engine's locks already serialize both, and a second path would be a
//! second source of truth). So `ferro ps` shows the same containers either
//! way. Starting runs `ferro container start` as a short-lived child, so a
//! monitor is never ferrod's child: killing or restarting ferrod leaves
//! containers running, and ferrod has no monitors to reap.
//!
//! Supervision: a living monitor owns the restart policy; ferrod does not
//! touch its container. It watches every monitor through a pidfd (monitors
//! started by the CLI are picked up by a scan each [`SCAN_INTERVAL`]) and,
//! when one dies without recording its container's exit (kill -9, a crash),
//! marks the container exited with the reason and applies the policy itself.
//! At daemon start it also starts `always` containers, and `unless-stopped`
//! ones the user did not stop, as dockerd does at boot.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use engine::container::{self, Container};
use engine::lifecycle::{self, CreateOpts};
use engine::monitor::pidfd_open;
use engine::paths::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::supervisor::{pid_alive, proc_start_time, OpError, OpResult};

/// How soon a container started outside the API is watched (a watched
/// monitor's death is noticed at once, through its pidfd).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);

pub struct Containers {
    root: PathBuf,
    /// Serializes operations on one container (keyed by full ID).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// (container ID, monitor pid) pairs with a pidfd task.
    watched: Mutex<HashSet<(String, i32)>>,
}

/// What supervision decided for one container.
enum Action {
    Nothing,
    Watch(i32, OwnedFd),
    Start { delay: Duration, ignore_stop: bool },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Engine errors → HTTP classes (the engine's errors are messages).
fn engine_err(e: anyhow::Error) -> OpError {
    let m = format!("{e:#}");
    if m.starts_with("No such container") {
        OpError::NotFound(m)
    } else if m.starts_with("multiple containers match") || m.starts_with("Invalid container name")
    {
        OpError::Invalid(m)
    } else if m.contains("is already in use")
        || m.contains("cannot remove a running container")
        || m.contains("is not running")
    {
        OpError::Conflict(m)
    } else {
        OpError::Internal(anyhow!(m))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> OpResult<T> + Send + 'static,
) -> OpResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OpError::Internal(anyhow!("engine task failed: {e}")))?
}

impl Containers {
    pub fn new(root: PathBuf) -> Arc<Self> {
        Arc::new(Containers {
            root,
            locks: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashSet::new()),
        })
    }

    fn engine(&self) -> OpResult<Engine> {
        Engine::new(Some(&self.root), None).map_err(OpError::Internal)
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(id.to_string()).or_default().clone()
    }

    /// Resolves a name, ID or unique ID prefix and takes its lock.
    async fn locked(
        self: &Arc<Self>,
        what: &str,
    ) -> OpResult<(Engine, Container, tokio::sync::OwnedMutexGuard<()>)> {
        let eng = self.engine()?;
        let (e2, w) = (eng.clone(), what.to_string());
        let c = blocking(move || find(&e2, &w)).await?;
        let g = self.lock_for(&c.id).lock_owned().await;
        // Re-read under the lock: it may have changed while we waited.
        let (e2, id) = (eng.clone(), c.id.clone());
        let c = blocking(move || {
            Container::load(&e2, &id)
                .map_err(|_| OpError::NotFound(format!("No such container: {id}")))
        })
        .await?;
        Ok((eng, c, g))
    }

    // ---- API operations ---------------------------------------------------

    pub async fn list(&self, all: bool) -> OpResult<Vec<Value>> {
        let eng = self.engine()?;
        let cs = blocking(move || Ok(load_all(&eng))).await?;
        Ok(cs
            .iter()
            .filter(|c| all || c.is_running())
            .map(info)
            .collect())
    }

    pub async fn inspect(self: &Arc<Self>, what: &str) -> OpResult<Value> {
        let eng = self.engine()?;
        let w = what.to_string();
        let c = blocking(move || find(&eng, &w)).await?;
        Ok(info(&c))
    }

    /// Creates and starts (`run -d`).
    pub async fn run(self: &Arc<Self>, mut o: CreateOpts) -> OpResult<Value> {
        let eng = self.engine()?;
        let e2 = eng.clone();
        let c = blocking(move || {
            for b in &mut o.binds {
                let host = std::fs::canonicalize(&b.host).map_err(|e| {
                    OpError::Invalid(format!("volumes: source {} does not exist: {e}", b.host))
                })?;
                b.host = host.display().to_string();
            }
            let store = e2.images().map_err(OpError::Internal)?;
            // No implicit pull: a daemon request should not wait on a
            // registry (`ferro container pull` first), as Docker's create.
            if let Err(e) = store.resolve(&o.image) {
                return Err(OpError::NotFound(format!("{e} (pull it first)")));
            }
            lifecycle::create(&e2, &o).map_err(|e| {
                let m = format!("{e:#}");
                if m.contains("already in use") {
                    OpError::Conflict(m)
                } else if m.starts_with("no command") || m.starts_with("Invalid") {
                    OpError::Invalid(m)
                } else {
                    OpError::Internal(anyhow!(m))
                }
            })
        })
        .await?;
        let _g = self.lock_for(&c.id).lock_owned().await;
        self.start_proc(&c.id).await.map_err(|e| {
            OpError::Internal(anyhow!(
                "created container {} but could not start it: {e}",
                c.id
            ))
        })?;
        self.watch_started(&eng, &c.id).await
    }

    pub async fn start(self: &Arc<Self>, what: &str) -> OpResult<Value> {
        let (eng, c, _g) = self.locked(what).await?;
        if c.is_running() {
            return Err(OpError::Conflict(format!(
                "container {} is already running",
                c.name
            )));
        }
        self.start_proc(&c.id).await?;
        self.watch_started(&eng, &c.id).await
    }

    pub async fn stop(self: &Arc<Self>, what: &str, timeout: Duration) -> OpResult<Value> {
        let (eng, c, _g) = self.locked(what).await?;
        blocking(move || {
            lifecycle::stop(&eng, &c, timeout).map_err(engine_err)?;
            Container::load(&eng, &c.id)
                .map(|c| info(&c))
                .map_err(OpError::Internal)
        })
        .await
    }

    pub async fn restart(self: &Arc<Self>, what: &str, timeout: Duration) -> OpResult<Value> {
        let (eng, c, _g) = self.locked(what).await?;
        let (e2, id) = (eng.clone(), c.id.clone());
        blocking(move || lifecycle::stop(&e2, &c, timeout).map_err(engine_err)).await?;
        self.start_proc(&id).await?;
        self.watch_started(&eng, &id).await
    }

    pub async fn kill(self: &Arc<Self>, what: &str, signal: String) -> OpResult<Value> {
        let (eng, c, _g) = self.locked(what).await?;
        blocking(move || {
            lifecycle::kill(&eng, &c, &signal).map_err(engine_err)?;
            Container::load(&eng, &c.id)
                .map(|c| info(&c))
                .map_err(OpError::Internal)
        })
        .await
    }

    pub async fn remove(self: &Arc<Self>, what: &str, force: bool) -> OpResult<()> {
        let (eng, c, _g) = self.locked(what).await?;
        let id = c.id.clone();
        blocking(move || lifecycle::remove(&eng, &c, force).map_err(engine_err)).await?;
        lock(&self.locks).remove(&id);
        Ok(())
    }

    /// The output (both streams, in order), the last `tail` lines.
    pub async fn logs(self: &Arc<Self>, what: &str, tail: Option<usize>) -> OpResult<Vec<u8>> {
        let eng = self.engine()?;
        let w = what.to_string();
        blocking(move || {
            let c = find(&eng, &w)?;
            let data = std::fs::read(c.dir(&eng).join("container.log")).unwrap_or_default();
            let lines: Vec<String> = data
                .split(|b| *b == b'\n')
                .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
                .filter_map(|v| v.get("log")?.as_str().map(str::to_string))
                .collect();
            let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
            Ok(lines[skip..].concat().into_bytes())
        })
        .await
    }

    /// `ferro container start` as a child that exits once the container
    /// runs: its monitor is re-parented away from ferrod.
    async fn start_proc(&self, id: &str) -> OpResult<()> {
        let exe = std::env::current_exe().context("cannot find the ferro binary")?;
        let out = tokio::process::Command::new(exe)
            .arg("container")
            .arg("--root")
            .arg(&self.root)
            .arg("start")
            .arg(id)
            .stdin(Stdio::null())
            .kill_on_drop(false)
            .output()
            .await
            .context("running ferro container start")?;
        if !out.status.success() {
            let e = String::from_utf8_lossy(&out.stderr);
            return Err(OpError::Internal(anyhow!(
                "{}",
                e.trim().trim_start_matches("ferro: ")
            )));
        }
        Ok(())
    }

    /// Watches the monitor of a container just started; its info.
    async fn watch_started(self: &Arc<Self>, eng: &Engine, id: &str) -> OpResult<Value> {
        let (e2, i) = (eng.clone(), id.to_string());
        let c = blocking(move || Container::load(&e2, &i).map_err(OpError::Internal)).await?;
        if c.is_running() {
            if let Some(fd) = probe(&c) {
                self.spawn_watch(&c.id, c.state.monitor_pid, fd);
            }
        }
        Ok(info(&c))
    }

    // ---- supervision --------------------------------------------------------

    /// Daemon start: settles every container (see the module docs).
    pub async fn recover(self: &Arc<Self>) {
        self.scan(true).await;
    }

    /// Watches containers until the daemon exits.
    pub fn supervise(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(SCAN_INTERVAL);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                me.scan(false).await;
            }
        });
    }

    async fn scan(self: &Arc<Self>, boot: bool) {
        let ids: Vec<String> = match std::fs::read_dir(self.root.join("containers")) {
            Ok(rd) => rd
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect(),
            Err(_) => return,
        };
        for id in ids {
            self.check(&id, boot).await;
        }
    }

    /// Looks at one container and does what supervision asks.
    async fn check(self: &Arc<Self>, id: &str, boot: bool) {
        let l = self.lock_for(id);
        let _g = l.lock().await;
        let mut boot = boot;
        // At most: start it, then watch the monitor that started it.
        for _ in 0..2 {
            let (me, i) = (self.clone(), id.to_string());
            let action = match blocking(move || me.assess(&i, boot)).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(container = %id, "supervision: {e}");
                    return;
                }
            };
            match action {
                Action::Nothing => return,
                Action::Watch(pid, fd) => {
                    self.spawn_watch(id, pid, fd);
                    return;
                }
                Action::Start { delay, ignore_stop } => {
                    tokio::time::sleep(delay).await;
                    // The user may have stopped or removed it meanwhile.
                    let (me, i) = (self.clone(), id.to_string());
                    let wanted = blocking(move || {
                        let eng = me.engine()?;
                        Ok(Container::load(&eng, &i).is_ok_and(|c| {
                            !c.is_running()
                                && (ignore_stop || !engine::monitor::stop_marker(&eng, &c).exists())
                        }))
                    })
                    .await
                    .unwrap_or(false);
                    if !wanted {
                        return;
                    }
                    match self.start_proc(id).await {
                        Ok(()) => tracing::info!(container = %id, "started by ferrod"),
                        Err(e) => {
                            tracing::warn!(container = %id, "restart failed: {e}");
                            return;
                        }
                    }
                    boot = false;
                }
            }
        }
    }

    /// The decision for one container (blocking: reads and writes its state).
    fn assess(&self, id: &str, boot: bool) -> OpResult<Action> {
        let eng = self.engine()?;
        let Ok(c) = Container::load(&eng, id) else {
            return Ok(Action::Nothing);
        };
        if c.is_running() {
            if let Some(fd) = probe(&c) {
                let pid = c.state.monitor_pid;
                if lock(&self.watched).contains(&(c.id.clone(), pid)) {
                    return Ok(Action::Nothing);
                }
                return Ok(Action::Watch(pid, fd));
            }
            // Gone: re-read, it may have recorded an exit on its way out.
            let Ok(c) = Container::load(&eng, id) else {
                return Ok(Action::Nothing);
            };
            if c.is_running() {
                return self.monitor_died(&eng, c);
            }
            return self.assess_stopped(&eng, c, boot);
        }
        self.assess_stopped(&eng, c, boot)
    }

    fn assess_stopped(&self, eng: &Engine, c: Container, boot: bool) -> OpResult<Action> {
        // `ferro container ps` saw the dead monitor before we did (or a
        // stale read-modify-write of state.json says so).
        if c.state.status == "exited" && c.state.error == container::MONITOR_DIED {
            return self.monitor_died(eng, c);
        }
        if boot && c.state.status == "exited" {
            let stopped = engine::monitor::stop_marker(eng, &c).exists();
            let start = match c.config.restart.as_str() {
                "always" => Some(true),
                "unless-stopped" if !stopped => Some(false),
                _ => None,
            };
            if let Some(ignore_stop) = start {
                tracing::info!(container = %c.name, policy = %c.config.restart, "starting at daemon start");
                return Ok(Action::Start {
                    delay: Duration::ZERO,
                    ignore_stop,
                });
            }
        }
        Ok(Action::Nothing)
    }

    /// The monitor died without recording the exit: record it, clean up,
    /// apply the restart policy.
    fn monitor_died(&self, eng: &Engine, mut c: Container) -> OpResult<Action> {
        // The state may be a lost update (a reader that saw the old monitor
        // dead saved over the new one's record): a live monitor of this
        // container means it is running; put that back and watch it.
        if let Some((pid, fd)) = live_monitor(&c.id) {
            tracing::info!(container = %c.name, monitor = pid, "state said exited; its monitor runs");
            c.state.status = "running".into();
            c.state.monitor_pid = pid;
            c.state.error.clear();
            if let Ok(p) = std::fs::read_to_string(c.dir(eng).join("init.pid")) {
                c.state.pid = p.trim().parse().unwrap_or(c.state.pid);
            }
            c.save(eng).map_err(OpError::Internal)?;
            if lock(&self.watched).contains(&(c.id.clone(), pid)) {
                return Ok(Action::Nothing);
            }
            return Ok(Action::Watch(pid, fd));
        }
        // Without its monitor nobody reaps or logs the container: end it.
        let _ = engine::runtime::Runtime {
            argv: &c.config.runtime,
            root: &eng.runtime_root(),
        }
        .delete(&c.id);
        let stopped = engine::monitor::stop_marker(eng, &c).exists();
        // Its real exit status is lost with the monitor: 255, as the CLI.
        let code = 255;
        let again = !stopped
            && !c.config.auto_remove
            && engine::monitor::should_restart(&c.config.restart, code, c.state.restart_count);
        let mon = c.state.monitor_pid;
        c.state.status = "exited".into();
        c.state.pid = 0;
        c.state.exit_code = code;
        c.state.finished_at = images::store::now_rfc3339();
        c.state.error = if again {
            format!(
                "monitor (pid {mon}) died; restarted by ferrod (restart policy {})",
                c.config.restart
            )
        } else {
            format!("monitor (pid {mon}) died")
        };
        if again {
            c.state.restart_count += 1;
        }
        tracing::warn!(container = %c.name, monitor = mon, restart = again, "container monitor died");
        c.save(eng).map_err(OpError::Internal)?;
        if c.config.auto_remove {
            lifecycle::remove_files(eng, &c).map_err(OpError::Internal)?;
            return Ok(Action::Nothing);
        }
        if !again {
            return Ok(Action::Nothing);
        }
        // The monitor's own back-off: 100 ms doubling, at most 2 s.
        let ms = (100u64 << c.state.restart_count.min(5)).min(2000);
        Ok(Action::Start {
            delay: Duration::from_millis(ms),
            ignore_stop: false,
        })
    }

    fn spawn_watch(self: &Arc<Self>, id: &str, pid: i32, fd: OwnedFd) {
        let key = (id.to_string(), pid);
        if !lock(&self.watched).insert(key.clone()) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::supervisor::pidfd_exited(fd).await {
                tracing::warn!("cannot watch monitor {pid}: {e}");
                lock(&me.watched).remove(&key);
                return;
            }
            lock(&me.watched).remove(&key);
            me.check_boxed(key.0).await;
        });
    }

    /// `check` behind a box: it is reached again from the task it spawns.
    fn check_boxed(
        self: Arc<Self>,
        id: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.check(&id, false).await })
    }
}

/// What the API shows of a container: its engine record (`ferro container
/// inspect` shows the same data in Docker's layout).
pub fn info(c: &Container) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    v["running"] = Value::Bool(c.is_running());
    v
}

/// Resolves a name, full ID or unique ID prefix, only reading state files
/// (the engine's `find` also rewrites stale ones, racing with monitors).
fn find(eng: &Engine, what: &str) -> OpResult<Container> {
    let all = load_all(eng);
    if let Some(c) = all.iter().find(|c| c.name == what || c.id == what) {
        return Ok(c.clone());
    }
    let hits: Vec<&Container> = all.iter().filter(|c| c.id.starts_with(what)).collect();
    match hits.as_slice() {
        [c] if !what.is_empty() => Ok((*c).clone()),
        [] | [_] => Err(OpError::NotFound(format!("No such container: {what}"))),
        _ => Err(OpError::Invalid(format!(
            "multiple containers match ID prefix {what}"
        ))),
    }
}

/// Every container, newest first, without the engine's stale-record fix.
fn load_all(eng: &Engine) -> Vec<Container> {
    container::load_all(eng).unwrap_or_default()
}

/// A live `ferro container _monitor ID` process for container `id`.
fn live_monitor(id: &str) -> Option<(i32, OwnedFd)> {
    let is_ours = |pid: i32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.windows(2)
            .any(|w| w[0] == b"_monitor" && w[1] == id.as_bytes())
    };
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if !is_ours(pid) {
            continue;
        }
        let Some(fd) = pidfd_open(pid) else {
            continue;
        };
        // Again, now that the pidfd pins the process (the pid may have been
        // reused in between).
        if pid_alive(pid) && is_ours(pid) {
            return Some((pid, fd));
        }
    }
    None
}

/// A pidfd for the container's monitor if it is alive and is the process
/// that recorded the container's start (not a reuse of its pid).
fn probe(c: &Container) -> Option<OwnedFd> {
    let pid = c.state.monitor_pid;
    if pid <= 0 {
        return None;
    }
    let fd = pidfd_open(pid)?;
    // From here the fd pins the process: checks below are about the same one.
    if !pid_alive(pid) {
        return None;
    }
    if let (Some(started), Some(t)) = (
        images::store::parse_rfc3339(&c.state.started_at),
        proc_start_unix(pid),
    ) {
        // Boot time is whole seconds: some slack.
        if t > started + 2 {
            return None;
        }
    }
    Some(fd)
}

/// When `pid` started, in Unix seconds.
fn proc_start_unix(pid: i32) -> Option<u64> {
    let ticks = proc_start_time(pid)?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| btime + ticks / hz as u64)
}

// ---- request bodies -------------------------------------------------------

/// `POST /v1/containers`: `ferro container run -d`'s options.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    pub image: String,
    pub name: Option<String>,
    /// The command (replaces the image's CMD).
    #[serde(default)]
    pub cmd: Vec<String>,
    pub entrypoint: Option<String>,
    /// `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// no | always | unless-stopped | on-failure[:N]
    pub restart: Option<String>,
    /// Memory limit: bytes with an optional k/m/g suffix (`64m`).
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// bridge (default) | host | none
    pub network: Option<String>,
    /// `HOST:CONTAINER[/tcp|udp]` (bridge network only).
    #[serde(default)]
    pub ports: Vec<String>,
    /// `/HOST:/CONTAINER[:ro]`.
    #[serde(default)]
    pub volumes: Vec<String>,
}

fn valid_name(n: &str) -> bool {
    let mut ch = n.chars();
    n.len() <= 128
        && ch.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && ch.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Checks a run request (no I/O; volume sources are checked at create).
pub fn run_opts(b: RunBody) -> Result<CreateOpts, String> {
    if b.image.trim().is_empty() {
        return Err("image: required (e.g. \"busybox\")".into());
    }
    if let Some(n) = &b.name {
        if !valid_name(n) {
            return Err(format!(
                "name: {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-], at most 128 characters"
            ));
        }
    }
    let restart = b.restart.unwrap_or_else(|| "no".into());
    if !engine::monitor::valid_restart(&restart) {
        return Err(format!(
            "restart: {restart:?}: expected no, always, unless-stopped or on-failure[:N]"
        ));
    }
    let network = b.network.unwrap_or_else(|| "bridge".into());
    if !["bridge", "host", "none"].contains(&network.as_str()) {
        return Err(format!(
            "network: {network:?}: expected bridge, host or none"
        ));
    }
    for (i, e) in b.env.iter().enumerate() {
        if e.is_empty() || e.starts_with('=') || e.contains('\0') {
            return Err(format!("env[{i}]: {e:?}: expected KEY=VALUE"));
        }
    }
    if b.cmd.iter().chain(&b.entrypoint).any(|a| a.contains('\0')) {
        return Err("cmd: arguments cannot contain NUL".into());
    }
    let memory = b
        .memory
        .as_deref()
        .map(container::parse_size)
        .transpose()
        .map_err(|e| format!("memory: {e}"))?;
    if let Some(c) = b.cpus {
        if !c.is_finite() || c <= 0.0 || c > 4096.0 {
            return Err(format!("cpus: {c}: must be a positive number"));
        }
    }
    if let Some(p) = b.pids_limit {
        if p <= 0 {
            return Err(format!("pids_limit: {p}: must be positive"));
        }
    }
    let mut ports = Vec::new();
    for (i, p) in b.ports.iter().enumerate() {
        ports.push(engine::network::parse_port(p).map_err(|e| format!("ports[{i}]: {e}"))?);
    }
    if !ports.is_empty() && network != "bridge" {
        return Err("ports: publishing needs the bridge network".into());
    }
    let mut binds = Vec::new();
    for (i, v) in b.volumes.iter().enumerate() {
        let parts: Vec<&str> = v.split(':').collect();
        let (host, ctr, ro) = match parts.as_slice() {
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [h, c, "rw"] => (*h, *c, false),
            _ => {
                return Err(format!(
                    "volumes[{i}]: {v:?}: expected /HOST:/CONTAINER[:ro]"
                ))
            }
        };
        if !host.starts_with('/') || !ctr.starts_with('/') || ctr.split('/').any(|c| c == "..") {
            return Err(format!(
                "volumes[{i}]: {v:?}: both paths must be absolute (and without ..)"
            ));
        }
        binds.push(container::Bind {
            host: host.into(),
            container: ctr.into(),
            readonly: ro,
        });
    }
    Ok(CreateOpts {
        name: b.name,
        image: b.image,
        args: b.cmd,
        entrypoint: b.entrypoint,
        env: b.env,
        workdir: b.workdir,
        user: b.user,
        tty: false,
        interactive: false,
        binds,
        ports,
        network,
        memory,
        cpus: b.cpus,
        pids_limit: b.pids_limit,
        restart,
        auto_remove: false,
        hostname: b.hostname,
    })
}

/// `POST …/kill` signal: a name (`KILL`, `SIGKILL`) or number → the
/// runtime's spelling.
pub fn signal(s: &str) -> Result<String, String> {
    const NAMES: &[&str] = &[
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    if let Ok(n) = s.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n.to_string());
        }
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if NAMES.contains(&name) {
        return Ok(format!("SIG{name}"));
    }
    Err(format!(
        "signal: {s:?}: expected a signal name (KILL, SIGTERM, …) or number 1-64"
    ))
}

/// The fuzz target's body (`fuzz/fuzz_targets/container_request.rs`):
/// arbitrary bytes as each container request body; never panics.
pub fn fuzz_request(data: &[u8]) {
    if let Ok(b) = crate::api::body::<RunBody>(data) {
        let _ = run_opts(b);
    }
    if let Ok(b) = crate::api::body::<crate::api::SignalBody>(data) {
        if let Some(s) = b.signal {
            let _ = signal(&s);
        }
    }
    let _ = crate::api::body::<crate::api::StopBody>(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<CreateOpts, String> {
        let b = crate::api::body::<RunBody>(s.as_bytes()).map_err(|e| e.to_string())?;
        run_opts(b)
    }

    #[test]
    fn run_bodies() {
        let o = parse(
            r#"{"image":"busybox","name":"web","cmd":["sleep","9"],"env":["A=1"],
                "restart":"on-failure:3","memory":"64m","cpus":0.5,"network":"bridge",
                "ports":["8080:80"],"volumes":["/tmp:/data:ro"]}"#,
        )
        .unwrap();
        assert_eq!(o.image, "busybox");
        assert_eq!(o.args, ["sleep", "9"]);
        assert_eq!(o.restart, "on-failure:3");
        assert_eq!(o.memory, Some(64 << 20));
        assert_eq!(o.ports.len(), 1);
        assert!(o.binds[0].readonly);
        let o = parse(r#"{"image":"busybox"}"#).unwrap();
        assert_eq!((o.restart.as_str(), o.network.as_str()), ("no", "bridge"));
        for (body, want) in [
            ("{}", "missing field `image`"),
            (r#"{"image":""}"#, "image: required"),
            (
                r#"{"image":"b","restart":"sometimes"}"#,
                "restart: \"sometimes\"",
            ),
            (r#"{"image":"b","memory":"lots"}"#, "memory: invalid size"),
            (r#"{"image":"b","cpus":-1}"#, "cpus: -1"),
            (r#"{"image":"b","network":"mesh"}"#, "network: \"mesh\""),
            (
                r#"{"image":"b","ports":["x:80"]}"#,
                "ports[0]: invalid port",
            ),
            (
                r#"{"image":"b","network":"none","ports":["1:2"]}"#,
                "needs the bridge",
            ),
            (r#"{"image":"b","volumes":["rel:/x"]}"#, "volumes[0]"),
            (r#"{"image":"b","name":"-x"}"#, "name: \"-x\""),
            (r#"{"image":"b","env":["=x"]}"#, "env[0]"),
            (r#"{"image":"b","bogus":1}"#, "unknown field `bogus`"),
            (r#"{"image":5}"#, "image: invalid type"),
            (r#"{"image":"b"} x"#, "trailing"),
            ("[", "request body"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn signals() {
        assert_eq!(signal("KILL").unwrap(), "SIGKILL");
        assert_eq!(signal("sigterm").unwrap(), "SIGTERM");
        assert_eq!(signal("9").unwrap(), "9");
        assert!(signal("0").is_err());
        assert!(signal("NOPE").is_err());
    }

    /// The fuzz target's body over a small corpus and mutations of it.
    #[test]
    fn fuzz_body_over_a_corpus() {
        let corpus: Vec<&[u8]> = vec![
            br#"{"image":"busybox","cmd":["sh"],"restart":"always","ports":["1:2/udp"]}"#,
            br#"{"signal":"KILL"}"#,
            br#"{"timeout":3}"#,
            br#"{"image":"b","memory":"99999999999999999999g","cpus":1e308}"#,
            b"",
            b"\xff\xfe{",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for c in &corpus {
            fuzz_request(c);
            for _ in 0..200 {
                let mut m = c.to_vec();
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if !m.is_empty() {
                    let i = (seed as usize) % m.len();
                    m[i] = (seed >> 32) as u8;
                    m.truncate(m.len() - (seed >> 40) as usize % 2);
                }
                fuzz_request(&m);
            }
        }
    }
}
