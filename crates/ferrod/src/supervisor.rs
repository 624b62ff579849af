//! The supervisor: one `ferro run` process per running VM, in its own session
//! (setsid, stdin /dev/null), driven over its control socket. It owns VM
//! states (libvirt's: shutoff, running, paused, shutdown, crashed, each with
//! a reason), restart policies with back-off, autostart, and re-attaching
//! to VMMs that outlived a previous daemon (pid file + /proc scan), so that
//! no VMM is ever left unsupervised.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use uuid::Uuid;

use crate::events::{now_ms, Events, Tasks};
use crate::spec::{self, RunPaths, VmSpec};
use crate::store::{RunRecord, Store, StoreError};

/// Errors of VM operations, mapped to HTTP statuses by the API.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for OpError {
    fn from(e: anyhow::Error) -> Self {
        if e.downcast_ref::<StoreError>().is_some() {
            return OpError::Conflict(e.to_string());
        }
        OpError::Internal(e)
    }
}

pub type OpResult<T> = std::result::Result<T, OpError>;

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The VMM command: program and leading arguments (`ferro run`).
    pub vmm: Vec<OsString>,
    /// How long `shutdown` waits for the guest before destroying it.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Shutoff,
    Running,
    Paused,
    Shutdown,
    Crashed,
}

impl State {
    /// A VMM process exists.
    pub fn active(self) -> bool {
        matches!(self, State::Running | State::Paused | State::Shutdown)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub state: State,
    pub reason: String,
    pub pid: Option<i32>,
    pub since_ms: u64,
}

impl Status {
    fn new(state: State, reason: &str, pid: Option<i32>) -> Self {
        Status {
            state,
            reason: reason.into(),
            pid,
            since_ms: now_ms(),
        }
    }
}

pub struct Vm {
    pub uuid: Uuid,
    /// Serializes operations on this VM.
    pub op: Arc<tokio::sync::Mutex<()>>,
    status: watch::Sender<Status>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped at every start: an exit of an older process is ignored.
    gen: u64,
    /// Why the daemon is stopping it (`destroyed`, `shutdown`, `saved`):
    /// such an exit is never restarted.
    stop_intent: Option<&'static str>,
    started: Option<Instant>,
}

impl Vm {
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }
    fn set(&self, s: Status) {
        self.status.send_replace(s);
    }
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The VMM's `--status-file`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ExitStatusFile {
    pub exit_code: i32,
    pub reason: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// How a VMM ended, from its status file (preferred: it exists even when we
/// were not its parent) or its wait status.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: State,
    pub reason: String,
    /// Counts as a failure for `on-failure`.
    pub failed: bool,
    /// `stopped` or `crashed`.
    pub event: &'static str,
}

pub fn classify(
    file: Option<&ExitStatusFile>,
    wait_code: Option<i32>,
    intent: Option<&str>,
) -> Outcome {
    let o = |state, reason: &str, failed, event| Outcome {
        state,
        reason: reason.into(),
        failed,
        event,
    };
    let reason = file.map(|f| f.reason.as_str());
    let code = file.map(|f| f.exit_code).or(wait_code);
    if let Some(i) = intent {
        if matches!(reason, None | Some("poweroff" | "quit" | "reboot")) {
            return o(State::Shutoff, i, false, "stopped");
        }
    }
    match (reason, code) {
        (Some("poweroff" | "reboot"), _) => o(State::Shutoff, "shutdown", false, "stopped"),
        (Some("quit"), _) => o(State::Shutoff, "destroyed", false, "stopped"),
        (Some("crashed"), _) | (None, Some(3)) => o(State::Crashed, "panicked", true, "crashed"),
        (Some(_), _) => o(State::Shutoff, "failed", true, "stopped"),
        (None, Some(0)) => o(State::Shutoff, "shutdown", false, "stopped"),
        (None, Some(_)) => o(State::Shutoff, "failed", true, "stopped"),
        // Killed by a signal with no status written: the VMM itself died.
        (None, None) => o(State::Shutoff, "crashed", true, "crashed"),
    }
}

pub struct Supervisor {
    pub cfg: Config,
    pub store: Store,
    pub events: Events,
    pub tasks: Tasks,
    /// The engine's containers under the same state dir.
    pub containers: Arc<crate::containers::Containers>,
    vms: Mutex<HashMap<Uuid, Arc<Vm>>>,
}

/// How a VMM is started.
#[derive(Debug, Clone, Default)]
pub struct StartOpts {
    pub paused: bool,
    pub restore: Option<PathBuf>,
}

impl Supervisor {
    pub fn new(cfg: Config, store: Store) -> Arc<Self> {
        Arc::new(Supervisor {
            containers: crate::containers::Containers::new(cfg.state_dir.clone()),
            cfg,
            store,
            events: Events::default(),
            tasks: Tasks::default(),
            vms: Mutex::new(HashMap::new()),
        })
    }

    pub fn vm(&self, uuid: &Uuid) -> Arc<Vm> {
        let mut m = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(*uuid)
            .or_insert_with(|| {
                Arc::new(Vm {
                    uuid: *uuid,
                    op: Arc::new(tokio::sync::Mutex::new(())),
                    status: watch::channel(Status::new(State::Shutoff, "unknown", None)).0,
                    inner: Mutex::new(Inner::default()),
                })
            })
            .clone()
    }

    pub fn vm_dir(&self, uuid: &Uuid) -> PathBuf {
        self.cfg.state_dir.join("vms").join(uuid.to_string())
    }

    pub fn paths(&self, uuid: &Uuid) -> RunPaths {
        RunPaths::new(&self.cfg.run_dir.join(uuid.to_string()), &self.vm_dir(uuid))
    }

    /// Looks a VM up by name (or UUID).
    pub fn lookup(&self, name: &str) -> OpResult<VmSpec> {
        if let Some(s) = self.store.get_by_name(name)? {
            return Ok(s);
        }
        if let Ok(u) = name.parse::<Uuid>() {
            if let Some(s) = self.store.get(&u)? {
                return Ok(s);
            }
        }
        Err(OpError::NotFound(format!("no domain named '{name}'")))
    }

    pub fn record(&self, uuid: &Uuid, f: impl FnOnce(&mut RunRecord)) -> Result<()> {
        let mut r = self.store.run_record(uuid)?;
        f(&mut r);
        self.store.set_run_record(uuid, &r)
    }

    // ---- starting and monitoring --------------------------------------

    /// Starts the VMM (the caller holds `vm.op`).
    pub async fn start_locked(
        self: &Arc<Self>,
        vm: &Arc<Vm>,
        spec: &VmSpec,
        opts: &StartOpts,
    ) -> OpResult<()> {
        if vm.status().state.active() {
            return Err(OpError::Conflict(format!(
                "domain '{}' is already active",
                spec.name
            )));
        }
        let p = self.paths(&vm.uuid);
        for d in [&p.dir, &self.vm_dir(&vm.uuid), &p.snapshots] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        for f in [&p.control, &p.console, &p.status, &p.pid] {
            let _ = std::fs::remove_file(f);
        }
        let mut args = spec.run_args(&p);
        if let Some(r) = &opts.restore {
            args.push("--restore".into());
            args.push(r.into());
        }
        if opts.paused {
            args.push("--paused".into());
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.vmm_log)
            .with_context(|| format!("cannot open {}", p.vmm_log.display()))?;
        {
            use std::io::Write;
            let _ = writeln!(log, "--- ferrod: starting at {} ms", now_ms());
        }
        let mut cmd = std::process::Command::new(&self.cfg.vmm[0]);
        // Not `ferrod`, even when this binary was invoked by that name.
        cmd.arg0("ferro")
            .args(&self.cfg.vmm[1..])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory of the
        // parent; it runs in the forked child before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut cmd = tokio::process::Command::from(cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {:?}", self.cfg.vmm[0]))?;
        let pid = child.id().context("VMM exited at once")? as i32;
        let pid_start = proc_start_time(pid);
        write_atomic(
            &p.pid,
            format!("{pid} {}\n", pid_start.unwrap_or(0)).as_bytes(),
        )?;
        self.record(&vm.uuid, |r| {
            r.want_running = true;
            r.pid = Some(pid);
            r.pid_start = pid_start;
        })?;
        let gen = {
            let mut i = vm.inner();
            i.gen += 1;
            i.stop_intent = None;
            i.started = Some(Instant::now());
            i.gen
        };
        let detail = if opts.restore.is_some() {
            "restored"
        } else {
            "booted"
        };
        vm.set(Status::new(
            if opts.paused {
                State::Paused
            } else {
                State::Running
            },
            if opts.paused { "user" } else { detail },
            Some(pid),
        ));
        self.spawn_monitor(vm.clone(), gen, Exit::Child(child));

        // Up when its control socket answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut rx = vm.status.subscribe();
        loop {
            if control(&p.control, json!({"cmd": "status"}), Duration::from_secs(5))
                .await
                .is_ok()
            {
                break;
            }
            let ended = !rx.borrow().state.active();
            if ended || Instant::now() > deadline {
                if !ended {
                    vm.inner().stop_intent = Some("failed");
                    kill_and_wait(vm, pid).await;
                }
                let _ = self.record(&vm.uuid, |r| r.want_running = false);
                let tail = log_tail(&p.vmm_log, 2000);
                return Err(OpError::Internal(anyhow!(
                    "the VMM for '{}' did not come up; its log ends with:\n{tail}",
                    spec.name
                )));
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
        }
        self.events.emit("started", &spec.name, &vm.uuid, detail);
        Ok(())
    }

    fn spawn_monitor(self: &Arc<Self>, vm: Arc<Vm>, gen: u64, exit: Exit) {
        let me = self.clone();
        tokio::spawn(async move {
            let code = exit.wait().await;
            me.on_exit(&vm, gen, code).await;
        });
    }

    async fn on_exit(self: &Arc<Self>, vm: &Arc<Vm>, gen: u64, wait_code: Option<i32>) {
        let (intent, ran_for) = {
            let mut i = vm.inner();
            if i.gen != gen {
                return;
            }
            (
                i.stop_intent.take(),
                i.started.map(|s| s.elapsed()).unwrap_or_default(),
            )
        };
        let p = self.paths(&vm.uuid);
        let file = read_status_file(&p.status);
        let _ = std::fs::remove_file(&p.pid);
        let out = classify(file.as_ref(), wait_code, intent);
        let spec = self.store.get(&vm.uuid).ok().flatten();
        let rec = self.store.run_record(&vm.uuid).unwrap_or_default();
        // A VM that ran for a while starts its back-off from scratch.
        let in_row = if ran_for > Duration::from_secs(10) {
            0
        } else {
            rec.restarts
        };
        let restart = intent.is_none()
            && rec.want_running
            && spec
                .as_ref()
                .is_some_and(|s| s.restart.should_restart(out.failed, in_row));
        let _ = self.store.set_run_record(
            &vm.uuid,
            &RunRecord {
                want_running: restart,
                pid: None,
                pid_start: None,
                restarts: in_row,
            },
        );
        vm.set(Status::new(out.state, &out.reason, None));
        let name = spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        self.events.emit(out.event, &name, &vm.uuid, &out.reason);
        if restart {
            let me = self.clone();
            let vm = vm.clone();
            tokio::spawn(async move { me.restart_after(vm, gen, in_row).await });
        }
    }

    async fn restart_after(self: Arc<Self>, vm: Arc<Vm>, gen: u64, in_row: u32) {
        tokio::time::sleep(spec::backoff(in_row)).await;
        let _g = vm.op.lock().await;
        // Someone started, stopped or undefined it meanwhile.
        let Ok(Some(spec)) = self.store.get(&vm.uuid) else {
            return;
        };
        let rec = self.store.run_record(&vm.uuid).unwrap_or_default();
        if vm.inner().gen != gen || vm.status().state.active() || !rec.want_running {
            return;
        }
        let _ = self.record(&vm.uuid, |r| r.restarts = in_row + 1);
        if let Err(e) = self.start_locked(&vm, &spec, &StartOpts::default()).await {
            tracing::warn!(vm = %spec.name, "restart failed: {e}");
        }
    }

    // ---- operations (callers hold vm.op) -----------------------------

    fn active_or_409(vm: &Vm, spec: &VmSpec) -> OpResult<Status> {
        let s = vm.status();
        if !s.state.active() {
            return Err(OpError::Conflict(format!(
                "domain '{}' is not running",
                spec.name
            )));
        }
        Ok(s)
    }

    pub async fn control_cmd(&self, vm: &Vm, spec: &VmSpec, cmd: Value) -> OpResult<Value> {
        Self::active_or_409(vm, spec)?;
        let timeout = Duration::from_secs(600);
        Ok(control(&self.paths(&vm.uuid).control, cmd, timeout).await?)
    }

    /// Waits until the VMM of the current generation has exited.
    async fn wait_stopped(vm: &Vm, timeout: Duration) -> bool {
        let mut rx = vm.status.subscribe();
        let r = tokio::time::timeout(timeout, rx.wait_for(|s| !s.state.active())).await;
        r.is_ok()
    }

    pub async fn destroy_locked(
        &self,
        vm: &Arc<Vm>,
        spec: &VmSpec,
        intent: &'static str,
    ) -> OpResult<()> {
        let st = Self::active_or_409(vm, spec)?;
        vm.inner().stop_intent = Some(intent);
        self.record(&vm.uuid, |r| r.want_running = false)?;
        let _ = control(
            &self.paths(&vm.uuid).control,
            json!({"cmd": "quit"}),
            Duration::from_secs(5),
        )
        .await;
        if !Self::wait_stopped(vm, Duration::from_secs(10)).await {
            if let Some(pid) = st.pid {
                kill_and_wait(vm, pid).await;
            }
        }
        Ok(())
    }

    pub async fn shutdown_locked(
        &self,
        vm: &Arc<Vm>,
        spec: &VmSpec,
        timeout: Duration,
    ) -> OpResult<Value> {
        let st = Self::active_or_409(vm, spec)?;
        vm.inner().stop_intent = Some("shutdown");
        self.record(&vm.uuid, |r| r.want_running = false)?;
        let r = control(
            &self.paths(&vm.uuid).control,
            json!({"cmd": "powerdown"}),
            Duration::from_secs(10),
        )
        .await;
        let delivered = r
            .as_ref()
            .ok()
            .and_then(|v| v.get("delivered"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        vm.set(Status::new(State::Shutdown, "user", st.pid));
        if delivered && Self::wait_stopped(vm, timeout).await {
            return Ok(json!({"delivered": true, "destroyed": false}));
        }
        self.destroy_locked(vm, spec, "destroyed").await?;
        Ok(json!({"delivered": delivered, "destroyed": true}))
    }

    pub async fn suspend_locked(&self, vm: &Arc<Vm>, spec: &VmSpec) -> OpResult<()> {
        let st = Self::active_or_409(vm, spec)?;
        self.control_cmd(vm, spec, json!({"cmd": "pause"})).await?;
        vm.set(Status::new(State::Paused, "user", st.pid));
        self.events
            .emit("suspended", &spec.name, &vm.uuid, "paused");
        Ok(())
    }

    pub async fn resume_locked(&self, vm: &Arc<Vm>, spec: &VmSpec) -> OpResult<()> {
        let st = Self::active_or_409(vm, spec)?;
        self.control_cmd(vm, spec, json!({"cmd": "resume"})).await?;
        vm.set(Status::new(State::Running, "unpaused", st.pid));
        self.events
            .emit("resumed", &spec.name, &vm.uuid, "unpaused");
        Ok(())
    }

    /// `save`: pause, write the state file, stop (libvirt's managed save).
    pub async fn save_locked(&self, vm: &Arc<Vm>, spec: &VmSpec, path: &Path) -> OpResult<()> {
        let st = Self::active_or_409(vm, spec)?;
        if !path.is_absolute() {
            return Err(OpError::Invalid("path: must be absolute".into()));
        }
        if st.state != State::Paused {
            self.control_cmd(vm, spec, json!({"cmd": "pause"})).await?;
            vm.set(Status::new(State::Paused, "save", st.pid));
        }
        self.control_cmd(vm, spec, json!({"cmd": "save", "path": path}))
            .await?;
        self.destroy_locked(vm, spec, "saved").await
    }

    // ---- definitions -------------------------------------------------

    pub fn define(&self, mut spec: VmSpec) -> OpResult<VmSpec> {
        spec.validate()
            .map_err(|e| OpError::Invalid(e.to_string()))?;
        let previous = self.store.get_by_name(&spec.name)?;
        if let (Some(p), Some(u)) = (&previous, spec.uuid) {
            if p.uuid() != u {
                return Err(OpError::Conflict(format!(
                    "domain '{}' already exists with UUID {}",
                    spec.name,
                    p.uuid()
                )));
            }
        }
        spec.normalize(previous.as_ref());
        self.store.define(&spec)?;
        let vm = self.vm(&spec.uuid());
        let st = vm.status();
        if !st.state.active() && st.reason == "unknown" {
            vm.set(Status::new(State::Shutoff, "unknown", None));
        }
        self.events.emit(
            "defined",
            &spec.name,
            &spec.uuid(),
            if previous.is_some() {
                "updated"
            } else {
                "added"
            },
        );
        Ok(spec)
    }

    pub fn undefine_locked(&self, vm: &Arc<Vm>, spec: &VmSpec, remove_disks: bool) -> OpResult<()> {
        if vm.status().state.active() {
            return Err(OpError::Conflict(format!(
                "domain '{}' is active; destroy or shut it down first",
                spec.name
            )));
        }
        self.store.undefine(&vm.uuid)?;
        if remove_disks {
            for d in spec.disks.iter().filter(|d| !d.readonly) {
                if let Err(e) = std::fs::remove_file(&d.path) {
                    tracing::warn!("cannot remove {}: {e}", d.path.display());
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.paths(&vm.uuid).dir);
        if remove_disks {
            let _ = std::fs::remove_dir_all(self.vm_dir(&vm.uuid));
        }
        self.vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&vm.uuid);
        self.events
            .emit("undefined", &spec.name, &vm.uuid, "removed");
        Ok(())
    }

    /// Clones a shut-off VM: new name, UUID and MACs; disks as qcow2 overlays
    /// (`linked`) or full copies in the new VM's directory. Read-only disks
    /// are shared. The definition is written last, in one transaction, so an
    /// interrupted clone leaves no definition behind.
    pub fn clone_locked(
        &self,
        vm: &Vm,
        src: &VmSpec,
        name: &str,
        linked: bool,
    ) -> OpResult<VmSpec> {
        spec::check_name(name).map_err(|e| OpError::Invalid(e.to_string()))?;
        if self.store.get_by_name(name)?.is_some() {
            return Err(OpError::Conflict(format!("domain '{name}' already exists")));
        }
        if vm.status().state.active() {
            return Err(OpError::Conflict(format!(
                "domain '{}' is active; shut it down before cloning",
                src.name
            )));
        }
        let mut new = src.clone();
        new.name = name.into();
        new.uuid = Some(Uuid::new_v4());
        new.autostart = false;
        for n in &mut new.nics {
            n.mac = None;
        }
        new.normalize(None);
        let dir = self.vm_dir(&new.uuid());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for (i, d) in new.disks.iter_mut().enumerate() {
            if d.readonly {
                continue;
            }
            let fmt = match d.format.as_deref() {
                Some("qcow2") => block::Format::Qcow2,
                Some(_) => block::Format::Raw,
                None => block::probe(&d.path)
                    .with_context(|| format!("disks[{i}]: {}", d.path.display()))?,
            };
            let dst = if linked {
                let dst = dir.join(format!("disk{i}.qcow2"));
                block::create(
                    &dst,
                    &block::CreateOptions {
                        format: Some(block::Format::Qcow2),
                        backing_file: Some(d.path.to_string_lossy().into_owned()),
                        backing_format: Some(fmt),
                        ..Default::default()
                    },
                )
                .with_context(|| {
                    format!(
                        "disks[{i}]: cannot create an overlay on {}",
                        d.path.display()
                    )
                })?;
                d.format = Some("qcow2".into());
                dst
            } else {
                let dst = dir.join(format!("disk{i}.{}", fmt.name()));
                let tmp = dst.with_extension("part");
                std::fs::copy(&d.path, &tmp)
                    .with_context(|| format!("disks[{i}]: cannot copy {}", d.path.display()))?;
                std::fs::rename(&tmp, &dst).context("rename")?;
                d.format = Some(fmt.name().into());
                dst
            };
            d.path = dst;
        }
        new.validate()
            .map_err(|e| OpError::Invalid(e.to_string()))?;
        self.store.define(&new)?;
        self.vm(&new.uuid());
        self.events
            .emit("defined", &new.name, &new.uuid(), "cloned");
        Ok(new)
    }

    // ---- daemon start: re-attach, reap, autostart ----------------------

    /// Re-attaches to the VMMs of a previous daemon, stops VMMs of VMs that
    /// no longer exist, settles VMs that ended meanwhile (restart policies
    /// apply) and, once per boot, autostarts.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        let specs = self.store.list()?;
        // Two sources: the pid we recorded (checked by start time, so a
        // reused pid is not mistaken for our VMM), and a /proc scan for the
        // --control path (VMMs spawned just before a crash, whose pid never
        // reached the database). The scan runs twice: a process caught in
        // the middle of exec shows no command line for a moment.
        let mut found = scan_vmms(&self.cfg.run_dir);
        for s in &specs {
            let rec = self.store.run_record(&s.uuid())?;
            if let (Some(pid), Some(start)) = (rec.pid, rec.pid_start) {
                if pid_alive(pid) && proc_start_time(pid) == Some(start) {
                    found.entry(s.uuid()).or_insert(pid);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (u, pid) in scan_vmms(&self.cfg.run_dir) {
            found.entry(u).or_insert(pid);
        }
        tracing::info!(?found, "recovering");
        for (uuid, pid) in &found {
            if !specs.iter().any(|s| s.uuid() == *uuid) {
                tracing::warn!(%uuid, pid, "stopping a VMM whose domain is not defined");
                let p = self.paths(uuid);
                let _ = control(&p.control, json!({"cmd": "quit"}), Duration::from_secs(3)).await;
                if !wait_pid_gone(*pid, Duration::from_secs(5)).await {
                    // SAFETY: kill(2) on a pid we identified by its command line.
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                    wait_pid_gone(*pid, Duration::from_secs(5)).await;
                }
                let _ = std::fs::remove_dir_all(p.dir);
            }
        }
        for spec in &specs {
            let uuid = spec.uuid();
            let vm = self.vm(&uuid);
            let _g = vm.op.lock().await;
            let p = self.paths(&uuid);
            if let Some(pid) = found.get(&uuid) {
                let pid = *pid;
                let gen = {
                    let mut i = vm.inner();
                    i.gen += 1;
                    i.started = Some(Instant::now());
                    i.gen
                };
                // A VMM spawned just before the old daemon died may not
                // listen yet: give it time.
                let mut state = None;
                let deadline = Instant::now() + Duration::from_secs(30);
                while pid_alive(pid) && Instant::now() < deadline {
                    if let Ok(v) =
                        control(&p.control, json!({"cmd":"status"}), Duration::from_secs(5)).await
                    {
                        state = Some(match v.get("state").and_then(Value::as_str) {
                            Some("paused") => State::Paused,
                            Some("shutdown") => State::Shutdown,
                            _ => State::Running,
                        });
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let start = proc_start_time(pid);
                let _ = write_atomic(&p.pid, format!("{pid} {}\n", start.unwrap_or(0)).as_bytes());
                self.record(&uuid, |r| {
                    r.want_running = true;
                    r.pid = Some(pid);
                    r.pid_start = start;
                })?;
                vm.set(Status::new(
                    state.unwrap_or(State::Running),
                    "attached",
                    Some(pid),
                ));
                tracing::info!(vm = %spec.name, pid, "re-attached");
                self.spawn_monitor(vm.clone(), gen, Exit::Pid(pid));
                continue;
            }
            let rec = self.store.run_record(&uuid)?;
            tracing::info!(vm = %spec.name, ?rec, status = p.status.exists(), "not running");
            if rec.want_running || p.status.exists() {
                // It ended while no daemon watched it.
                let gen = {
                    let mut i = vm.inner();
                    i.gen += 1;
                    i.gen
                };
                vm.set(Status::new(State::Running, "attached", rec.pid));
                drop(_g);
                self.on_exit(&vm, gen, None).await;
            } else {
                vm.set(Status::new(State::Shutoff, "unknown", None));
            }
        }
        let marker = self.cfg.run_dir.join("autostarted");
        if !marker.exists() {
            for spec in specs.iter().filter(|s| s.autostart) {
                let vm = self.vm(&spec.uuid());
                let _g = vm.op.lock().await;
                if vm.status().state.active() {
                    continue;
                }
                if let Err(e) = self.start_locked(&vm, spec, &StartOpts::default()).await {
                    tracing::warn!(vm = %spec.name, "autostart failed: {e}");
                }
            }
            let _ = std::fs::write(&marker, b"");
        }
        Ok(())
    }
}

enum Exit {
    Child(tokio::process::Child),
    Pid(i32),
}

impl Exit {
    /// Waits for the process to end; the exit code when we are its parent.
    async fn wait(self) -> Option<i32> {
        match self {
            Exit::Child(mut c) => c.wait().await.ok().and_then(|s| s.code()),
            Exit::Pid(pid) => {
                wait_pid_exit(pid).await;
                None
            }
        }
    }
}

/// Waits for a process that is not our child to exit (pidfd; polling when
/// pidfds are not available).
async fn wait_pid_exit(pid: i32) {
    if let Some(fd) = engine::monitor::pidfd_open(pid) {
        if pidfd_exited(fd).await.is_ok() {
            return;
        }
    }
    while pid_alive(pid) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the process behind a pidfd exits (the fd turns readable);
/// errs when the runtime cannot watch the fd.
pub(crate) async fn pidfd_exited(fd: std::os::fd::OwnedFd) -> std::io::Result<()> {
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open (and the same
    // fd) until the AsyncFd is dropped.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }?;
    let _ = afd.readable().await;
    Ok(())
}

async fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, wait_pid_exit(pid))
        .await
        .is_ok()
}

async fn kill_and_wait(vm: &Vm, pid: i32) {
    if vm.status().pid == Some(pid) && vm.status().state.active() {
        // SAFETY: kill(2) of our VMM's pid, which is alive (its monitor has
        // not seen it exit), so the pid has not been reused.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    Supervisor::wait_stopped(vm, Duration::from_secs(10)).await;
}

/// Alive and not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Field 6 of /proc/PID/stat (session id).
fn proc_session(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Live VMMs whose `--control` socket is in `run_dir/UUID/`: UUID → pid.
pub fn scan_vmms(run_dir: &Path) -> HashMap<Uuid, i32> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let Some(i) = args.iter().position(|a| *a == b"--control") else {
            continue;
        };
        let Some(ctl) = args.get(i + 1).and_then(|a| std::str::from_utf8(a).ok()) else {
            continue;
        };
        let ctl = Path::new(ctl);
        let Some(dir) = ctl.parent() else { continue };
        // The VMM is the leader of the session we gave it; its forked
        // helpers (e.g. a wrapper script's subshells) share the command
        // line but are not.
        if dir.parent() != Some(run_dir) || !pid_alive(pid) || proc_session(pid) != Some(pid) {
            continue;
        }
        if let Some(u) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<Uuid>().ok())
        {
            out.insert(u, pid);
        }
    }
    out
}

fn read_status_file(p: &Path) -> Option<ExitStatusFile> {
    let s = std::fs::read(p).ok()?;
    let _ = std::fs::remove_file(p);
    serde_json::from_slice(&s).ok()
}

pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn log_tail(p: &Path, max: usize) -> String {
    let s = std::fs::read(p).unwrap_or_default();
    let s = String::from_utf8_lossy(&s[s.len().saturating_sub(max)..]).into_owned();
    s.trim_end().to_string()
}

/// One control-protocol request: connect, send a line, read a line.
pub async fn control(sock: &Path, cmd: Value, timeout: Duration) -> Result<Value> {
    let fut = async {
        let s = tokio::net::UnixStream::connect(sock)
            .await
            .with_context(|| format!("cannot connect to {}", sock.display()))?;
        let (r, mut w) = s.into_split();
        let mut line = serde_json::to_vec(&cmd)?;
        line.push(b'\n');
        w.write_all(&line).await?;
        let mut resp = String::new();
        BufReader::new(r).read_line(&mut resp).await?;
        if resp.is_empty() {
            bail!("the VMM closed its control socket");
        }
        let v: Value = serde_json::from_str(&resp).context("bad control response")?;
        if v.get("ok") == Some(&Value::Bool(true)) {
            Ok(v.get("result").cloned().unwrap_or(Value::Null))
        } else {
            let e = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            bail!("VMM: {e}")
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("the VMM did not answer within {timeout:?}"))?
}

/// Creates `dir` with mode 0700 (and its parents).
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let f = |code, reason: &str| ExitStatusFile {
            exit_code: code,
            reason: reason.into(),
            message: None,
        };
        let c = classify(Some(&f(0, "poweroff")), None, None);
        assert_eq!(
            (c.state, c.reason.as_str(), c.failed),
            (State::Shutoff, "shutdown", false)
        );
        let c = classify(Some(&f(3, "crashed")), Some(3), None);
        assert_eq!(
            (c.state, c.reason.as_str(), c.failed, c.event),
            (State::Crashed, "panicked", true, "crashed")
        );
        let c = classify(Some(&f(0, "quit")), None, Some("destroyed"));
        assert_eq!(
            (c.state, c.reason.as_str(), c.failed),
            (State::Shutoff, "destroyed", false)
        );
        let c = classify(Some(&f(5, "guest-failure")), None, None);
        assert_eq!((c.reason.as_str(), c.failed), ("failed", true));
        // SIGKILL of the VMM: no status file, no exit code.
        let c = classify(None, None, None);
        assert_eq!(
            (c.state, c.reason.as_str(), c.failed, c.event),
            (State::Shutoff, "crashed", true, "crashed")
        );
        let c = classify(None, None, Some("destroyed"));
        assert_eq!((c.reason.as_str(), c.failed), ("destroyed", false));
        // A crash during a shutdown is still a crash.
        let c = classify(Some(&f(3, "crashed")), None, Some("shutdown"));
        assert_eq!(c.state, State::Crashed);
    }

    #[test]
    fn proc_helpers() {
        let me = std::process::id() as i32;
        assert!(pid_alive(me));
        assert!(proc_start_time(me).is_some());
        assert!(!pid_alive(i32::MAX));
    }
}
