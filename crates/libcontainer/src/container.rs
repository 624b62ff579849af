//! The runtime operations on a container (the parent side): create, start,
//! state, kill, delete, run, exec, ps, pause/resume, stats.

use crate::init::{self, InitArgs};
use crate::state::{self, Saved, Status};
use crate::sync::{Chan, Msg};
use crate::sys;
use anyhow::{bail, Context, Result};
use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceType, LinuxNamespaceType, LinuxResources, Process, Spec,
};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// Options shared by create/run.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: i32,
}

/// A handle on a container's record.
pub struct Container {
    pub root: PathBuf,
    pub saved: Saved,
}

/// How the init waits for `start`.
enum StartVia {
    Fifo,
    Chan,
}

/// A created container whose init is our child, still holding the channel.
pub struct Created {
    pub container: Container,
    chan: Chan,
    /// Our end of the console socket when we proxy the terminal ourselves.
    tty: Option<std::os::unix::net::UnixStream>,
    /// The cgroup, so `run` need not look the hierarchies up again.
    cgroup: libcgroups::Manager,
    /// The init reported ready before we returned. When false (foreground
    /// `run` without terminal or runtime-side hooks) it is still setting up:
    /// its errors stay queued on `chan` until after it exits.
    confirmed: bool,
}

fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => 0x80,
    }
}

/// runc's always-allowed device cgroup rules, after the spec's own.
fn device_rules(spec: &Spec) -> Vec<LinuxDeviceCgroup> {
    let mut v: Vec<LinuxDeviceCgroup> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().clone())
        .unwrap_or_default();
    let rule = |ty: LinuxDeviceType, ma: Option<i64>, mi: Option<i64>, acc: &str| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true);
        r.set_typ(Some(ty));
        r.set_major(ma);
        r.set_minor(mi);
        r.set_access(Some(acc.to_string()));
        r
    };
    v.push(rule(LinuxDeviceType::C, None, None, "m"));
    v.push(rule(LinuxDeviceType::B, None, None, "m"));
    for (_, ma, mi) in crate::rootfs::default_devices() {
        v.push(rule(LinuxDeviceType::C, Some(ma), Some(mi), "rwm"));
    }
    v.push(rule(LinuxDeviceType::C, Some(136), None, "rwm")); // /dev/pts/*
    v.push(rule(LinuxDeviceType::C, Some(5), Some(2), "rwm")); // /dev/ptmx
    v.push(rule(LinuxDeviceType::C, Some(10), Some(200), "rwm")); // /dev/net/tun
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        // FIFOs are no device cgroup type (the kernel never checks them).
        .filter(|d| d.typ() != LinuxDeviceType::P)
    {
        v.push(LinuxDeviceCgroup::from(d));
    }
    v
}

/// Removes a half-created container on error.
struct Undo {
    dir: Option<PathBuf>,
    cgroup: Option<libcgroups::Manager>,
    pid: Option<libc::pid_t>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(p) = self.pid {
            let _ = sys::kill(p, libc::SIGKILL);
            let _ = sys::wait_exit(p);
        }
        if let Some(c) = &self.cgroup {
            let _ = c.destroy();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn write_pid_file(p: &Path, pid: i32) -> Result<()> {
    let tmp = p.with_extension("tmp-ferro");
    std::fs::write(&tmp, pid.to_string())
        .with_context(|| format!("writing pid file {}", tmp.display()))?;
    std::fs::rename(&tmp, p).with_context(|| format!("writing pid file {}", p.display()))
}

fn create(o: &CreateOpts, via: StartVia, foreground: bool) -> Result<Created> {
    crate::config::validate_id(&o.id)?;
    let bundle = std::path::absolute(&o.bundle).context("bundle path")?;
    let spec = crate::config::load(&bundle)?;
    crate::trace("config loaded");
    let process = spec
        .process()
        .clone()
        .context("config.json has no process to run")?;
    let rootfs = crate::config::rootfs_path(&spec, &bundle)?;
    let linux = spec.linux().clone().unwrap_or_default();
    let mut tty_local = None;
    let console = match (process.terminal() == Some(true), &o.console_socket) {
        (true, Some(p)) => Some(
            std::os::unix::net::UnixStream::connect(p)
                .with_context(|| format!("connecting to console socket {}", p.display()))?,
        ),
        (true, None) if foreground => {
            // Foreground `run` with a terminal: we are the console socket.
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            tty_local = Some(ours);
            Some(theirs)
        }
        (true, None) => {
            bail!("cannot allocate a terminal without --console-socket (process.terminal is true)")
        }
        (false, _) => None,
    };
    let cg_path = libcgroups::cgroup_path(linux.cgroups_path().as_deref(), &o.id)?;
    let nnp = process.no_new_privileges() == Some(true);
    let seccomp = match linux.seccomp() {
        Some(sc) => Some(crate::seccomp::build(sc, nnp)?),
        None => None,
    };
    crate::trace("seccomp built");

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&o.root)
        .with_context(|| format!("creating state root {}", o.root.display()))?;
    let dir = state::dir(&o.root, &o.id);
    match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("container with id {} already exists", o.id)
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let mut undo = Undo {
        dir: Some(dir.clone()),
        cgroup: None,
        pid: None,
    };
    let mgr = libcgroups::Manager::new(&cg_path)?;
    mgr.create()?;
    crate::trace("cgroup mkdir");
    undo.cgroup = Some(mgr.clone());
    let mut res = linux
        .resources()
        .clone()
        .unwrap_or_else(LinuxResources::default);
    res.set_devices(Some(device_rules(&spec)));
    mgr.apply(&res)?;
    let join = mgr.open_join()?;
    crate::trace("cgroup created");

    let fifo = match via {
        StartVia::Fifo => {
            let f = dir.join(state::FIFO);
            let c = sys::cstr(&f)?;
            // SAFETY: c is a valid C string.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o622) } != 0 {
                bail!(
                    "mkfifo {}: {}",
                    f.display(),
                    std::io::Error::last_os_error()
                );
            }
            Some(f)
        }
        StartVia::Chan => None,
    };

    // Namespaces: new ones in the clone flags (cgroup ns after the cgroup
    // move, in the child); joined ones as fds, the user namespace first.
    let mut flags = 0;
    let mut joins: Vec<(RawFd, libc::c_int)> = Vec::new();
    let mut pid_join = None;
    let (mut new_user, mut new_mnt, mut new_uts, mut new_cg) = (false, false, false, false);
    for ns in linux.namespaces().iter().flatten() {
        let f = ns_flag(ns.typ());
        match ns.path() {
            None => match ns.typ() {
                LinuxNamespaceType::Cgroup => new_cg = true,
                t => {
                    flags |= f;
                    new_user |= t == LinuxNamespaceType::User;
                    new_mnt |= t == LinuxNamespaceType::Mount;
                    new_uts |= t == LinuxNamespaceType::Uts;
                }
            },
            Some(p) => {
                let fd = sys::open(p, libc::O_RDONLY, 0)
                    .with_context(|| format!("opening {} namespace {}", ns.typ(), p.display()))?;
                if ns.typ() == LinuxNamespaceType::Pid {
                    pid_join = Some(fd);
                } else if ns.typ() == LinuxNamespaceType::User {
                    joins.insert(0, (fd, f));
                } else {
                    joins.push((fd, f));
                }
            }
        }
    }
    if let Some(fd) = pid_join {
        // Only affects our children (pid_for_children).
        sys::setns(fd, libc::CLONE_NEWPID).context("joining pid namespace")?;
        sys::close(fd);
    }

    let (parent, child) = Chan::pair()?;
    let (pid, placed_v2) = sys::clone_into(flags, join.cgroup_fd()).context("clone")?;
    if pid == 0 {
        drop(parent);
        init::main(InitArgs {
            spec: &spec,
            process: &process,
            id: &o.id,
            bundle: &bundle,
            rootfs: &rootfs,
            chan: &child,
            fifo,
            console: console.as_ref().map(|c| c.as_raw_fd()),
            joins,
            new_userns: new_user,
            new_mountns: new_mnt,
            new_utsns: new_uts,
            new_cgroupns: new_cg,
            cgroup: Some(&mgr),
            join: Some(&join),
            placed_v2,
            exec: false,
            seccomp: seccomp.as_ref(),
            preserve_fds: o.preserve_fds,
        });
    }
    drop(child);
    drop(join);
    crate::trace("cloned");
    for (fd, _) in &joins {
        sys::close(*fd);
    }
    drop(console);
    undo.pid = Some(pid);
    if new_user {
        write_id_maps(pid, &spec)?;
    }
    parent.send(&Msg::Pid(pid))?;
    parent.send(&Msg::Go)?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    // Foreground `run` with nothing for us to do between clone and exit
    // need not wake for `ready` and the exec: it saves the state while the
    // init sets up and goes on to wait for it (two fewer wakeups, and the
    // state write off the critical path).
    #[allow(deprecated)]
    let runtime_hooks = spec.hooks().as_ref().is_some_and(|h| {
        [h.prestart(), h.create_runtime(), h.poststart()]
            .iter()
            .any(|v| v.as_ref().is_some_and(|v| !v.is_empty()))
    });
    let confirmed =
        !(matches!(via, StartVia::Chan) && foreground && tty_local.is_none() && !runtime_hooks);
    loop {
        if !confirmed {
            break;
        }
        match parent.recv() {
            Ok(Msg::RunRuntimeHooks) => {
                let st = serde_json::to_vec(&state::HookState {
                    oci_version: spec.version(),
                    id: &o.id,
                    status: "creating",
                    pid: Some(pid),
                    bundle: &bundle,
                    annotations: &annotations,
                })?;
                #[allow(deprecated)]
                let r = spec.hooks().as_ref().map_or(Ok(()), |h| {
                    crate::hooks::run(
                        h.prestart().as_deref().unwrap_or_default(),
                        &st,
                        "prestart",
                    )?;
                    crate::hooks::run(
                        h.create_runtime().as_deref().unwrap_or_default(),
                        &st,
                        "createRuntime",
                    )
                });
                if let Err(e) = r {
                    let _ = parent.send(&Msg::Error(format!("{e:#}")));
                    return Err(e);
                }
                parent.send(&Msg::HooksDone)?;
            }
            Ok(Msg::Ready) => {
                crate::trace("init ready");
                break;
            }
            Ok(Msg::Error(e)) => bail!("{e}"),
            Ok(m) => bail!("container init sent unexpected {m:?}"),
            Err(e) => bail!("container init exited during setup: {e}"),
        }
    }
    let (start_time, _) = sys::proc_start_time(pid).context("container init vanished")?;
    let saved = Saved {
        id: o.id.clone(),
        pid,
        start_time,
        bundle: bundle.clone(),
        rootfs,
        created: state::now_rfc3339(),
        owner: String::new(),
        cgroup_path: cg_path,
        annotations,
        config: spec,
    };
    state::save(&o.root, &saved)?;
    crate::trace("state saved");
    if let Some(p) = &o.pid_file {
        write_pid_file(p, pid)?;
    }
    undo.pid = None;
    undo.cgroup = None;
    undo.dir = None;
    Ok(Created {
        container: Container {
            root: o.root.clone(),
            saved,
        },
        chan: parent,
        tty: tty_local,
        cgroup: mgr,
        confirmed,
    })
}

fn write_id_maps(pid: i32, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref().context("no linux section")?;
    let fmt = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|x| format!("{} {} {}\n", x.container_id(), x.host_id(), x.size()))
            .collect::<String>()
    };
    std::fs::write(format!("/proc/{pid}/uid_map"), fmt(linux.uid_mappings()))
        .context("writing uid_map")?;
    std::fs::write(format!("/proc/{pid}/gid_map"), fmt(linux.gid_mappings()))
        .context("writing gid_map")?;
    Ok(())
}

/// `create`: the container waits in `created` state for `start`.
pub fn create_container(o: &CreateOpts) -> Result<Container> {
    Ok(create(o, StartVia::Fifo, false)?.container)
}

static FWD_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let p = FWD_PID.load(Ordering::Relaxed);
    if p > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(p, sig) };
    }
}

fn forward_signals(pid: i32) {
    FWD_PID.store(pid, Ordering::Relaxed);
    for s in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ] {
        // SAFETY: installing a handler that only calls kill().
        unsafe { libc::signal(s, forward as *const () as libc::sighandler_t) };
    }
}

/// The first error message left on the channel of an init that exited.
fn queued_error(chan: &Chan) -> Option<String> {
    loop {
        match chan.recv() {
            Ok(Msg::Error(e)) => return Some(e),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Waits until the chan closes (exec succeeded) or reports an error.
fn wait_exec(chan: &Chan) -> Result<()> {
    match chan.recv() {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        Err(e) => Err(e.into()),
        Ok(Msg::Error(e)) => bail!("{e}"),
        Ok(m) => bail!("container init sent unexpected {m:?}"),
    }
}

/// `run`: create, start and (unless `detach`) wait; returns the exit code
/// (128+signal when killed) after deleting the container (unless `keep`).
pub fn run(o: &CreateOpts, detach: bool, keep: bool) -> Result<i32> {
    let c = create(o, StartVia::Chan, !detach)?;
    let pid = c.container.saved.pid;
    if c.confirmed {
        if let Err(e) = wait_exec(&c.chan) {
            let _ = sys::wait_exit(pid);
            let _ = c.container.cleanup(Some(&c.cgroup));
            return Err(e);
        }
        c.container.poststart();
        if detach {
            return Ok(0);
        }
    }
    forward_signals(pid);
    if let Some(t) = &c.tty {
        tty_proxy(t)?;
    }
    let code = sys::wait_exit(pid).context("waiting for the container")?;
    crate::trace("container exited");
    if !c.confirmed {
        // A setup or exec failure was queued before the init exited; after
        // a successful exec the channel holds only `ready`, then EOF.
        if let Some(e) = queued_error(&c.chan) {
            FWD_PID.store(0, Ordering::Relaxed);
            let _ = c.container.cleanup(Some(&c.cgroup));
            bail!("{e}");
        }
    }
    FWD_PID.store(0, Ordering::Relaxed);
    if c.cgroup.oom_kills() > 0 {
        eprintln!(
            "ferro oci: container {} was OOM-killed (memory limit)",
            o.id
        );
    }
    if !keep {
        c.container.delete_in(true, Some(&c.cgroup))?;
    }
    crate::trace("deleted");
    Ok(code)
}

impl Container {
    pub fn load(root: &Path, id: &str) -> Result<Self> {
        Ok(Container {
            root: root.to_path_buf(),
            saved: state::load(root, id)?,
        })
    }

    pub fn status(&self) -> Status {
        self.saved.status(&self.root)
    }

    pub fn cgroup(&self) -> Result<libcgroups::Manager> {
        Ok(libcgroups::Manager::new(&self.saved.cgroup_path)?)
    }

    fn dir(&self) -> PathBuf {
        state::dir(&self.root, &self.saved.id)
    }

    fn hook_state(&self, status: &str) -> Vec<u8> {
        serde_json::to_vec(&state::HookState {
            oci_version: self.saved.config.version(),
            id: &self.saved.id,
            status,
            pid: (self.saved.pid > 0 && status != "stopped").then_some(self.saved.pid),
            bundle: &self.saved.bundle,
            annotations: &self.saved.annotations,
        })
        .unwrap_or_default()
    }

    fn poststart(&self) {
        let hooks = self
            .saved
            .config
            .hooks()
            .as_ref()
            .and_then(|h| h.poststart().clone())
            .unwrap_or_default();
        if let Err(e) = crate::hooks::run(&hooks, &self.hook_state("running"), "poststart") {
            eprintln!("ferro oci: warning: {e:#}");
        }
    }

    /// `start`: wakes a created container's init.
    pub fn start(&self) -> Result<()> {
        match self.status() {
            Status::Created => {}
            Status::Stopped => bail!("cannot start a container that has stopped"),
            s => bail!("cannot start an already {} container", s.as_str()),
        }
        let f = self.dir().join(state::FIFO);
        let fd = match sys::open(&f, libc::O_WRONLY | libc::O_NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                bail!("container init exited before start")
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", f.display())),
        };
        let r = sys::write_all(fd, b"0");
        sys::close(fd);
        r.context("waking container init")?;
        let _ = std::fs::remove_file(&f);
        self.poststart();
        Ok(())
    }

    /// `kill`: one signal to the init, or (`all`) to every process in the cgroup.
    pub fn kill(&self, sig: libc::c_int, all: bool) -> Result<()> {
        let st = self.status();
        if st == Status::Stopped && !all {
            bail!("container not running");
        }
        if all {
            let cg = self.cgroup()?;
            cg.kill(sig)?;
            if st == Status::Paused && sig == libc::SIGKILL {
                let _ = cg.freeze(false);
            }
            return Ok(());
        }
        sys::kill(self.saved.pid, sig).with_context(|| format!("signalling pid {}", self.saved.pid))
    }

    /// `delete`: removes a stopped (or created) container; `force` kills a
    /// running one first.
    pub fn delete(&self, force: bool) -> Result<()> {
        self.delete_in(force, None)
    }

    /// `delete` with the cgroup already looked up (`run`).
    fn delete_in(&self, force: bool, cg: Option<&libcgroups::Manager>) -> Result<()> {
        match self.status() {
            Status::Stopped => {}
            Status::Created => {
                let _ = self.kill(libc::SIGKILL, true);
            }
            s if force => {
                let _ = self.kill(libc::SIGKILL, true);
                if s == Status::Paused {
                    let _ = self.cgroup().and_then(|c| Ok(c.freeze(false)?));
                }
            }
            s => bail!(
                "cannot delete container {} that is not stopped: {}",
                self.saved.id,
                s.as_str()
            ),
        }
        if self.saved.init_alive() && !sys::wait_gone(self.saved.pid, Duration::from_secs(10)) {
            bail!(
                "container init {} did not exit after SIGKILL",
                self.saved.pid
            );
        }
        crate::trace("delete: init gone");
        self.cleanup(cg)?;
        crate::trace("delete: cleaned up");
        let hooks = self
            .saved
            .config
            .hooks()
            .as_ref()
            .and_then(|h| h.poststop().clone())
            .unwrap_or_default();
        if let Err(e) = crate::hooks::run(&hooks, &self.hook_state("stopped"), "poststop") {
            eprintln!("ferro oci: warning: {e:#}");
        }
        Ok(())
    }

    fn cleanup(&self, cg: Option<&libcgroups::Manager>) -> Result<()> {
        let looked_up;
        let cg = match cg {
            Some(c) => Some(c),
            None => {
                looked_up = self.cgroup().ok();
                looked_up.as_ref()
            }
        };
        if let Some(cg) = cg {
            // Stray processes (no pid namespace) must go before rmdir.
            let _ = cg.kill(libc::SIGKILL);
            crate::trace("cleanup: killed strays");
            cg.destroy()?;
            crate::trace("cleanup: cgroup removed");
        }
        std::fs::remove_dir_all(self.dir())
            .with_context(|| format!("removing {}", self.dir().display()))
    }

    pub fn pause(&self) -> Result<()> {
        match self.status() {
            Status::Running | Status::Created => Ok(self.cgroup()?.freeze(true)?),
            s => bail!("container not running ({})", s.as_str()),
        }
    }

    pub fn resume(&self) -> Result<()> {
        match self.status() {
            Status::Paused => Ok(self.cgroup()?.freeze(false)?),
            s => bail!("container not paused ({})", s.as_str()),
        }
    }

    /// `exec`: runs `process` inside the running container. Returns the
    /// exit code, or 0 right after the start when `detach`.
    pub fn exec(
        &self,
        process: &Process,
        console_socket: Option<&Path>,
        pid_file: Option<&Path>,
        detach: bool,
        preserve_fds: i32,
    ) -> Result<i32> {
        let st = self.status();
        if st != Status::Running && st != Status::Created {
            bail!("cannot exec in a {} container", st.as_str());
        }
        let spec = &self.saved.config;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            bail!("exec needs a command");
        }
        let mut tty_local = None;
        let console = match (process.terminal() == Some(true), console_socket) {
            (true, Some(p)) => Some(
                std::os::unix::net::UnixStream::connect(p)
                    .with_context(|| format!("connecting to console socket {}", p.display()))?,
            ),
            (true, None) if !detach => {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
                tty_local = Some(ours);
                Some(theirs)
            }
            (true, None) => bail!("cannot allocate a terminal without --console-socket"),
            (false, _) => None,
        };
        let nnp = process.no_new_privileges() == Some(true);
        let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            Some(sc) => Some(crate::seccomp::build(sc, nnp)?),
            None => None,
        };
        let target = self.saved.pid;
        let mut joins = Vec::new();
        let mut pid_fd = None;
        for (name, flag) in [
            ("user", libc::CLONE_NEWUSER),
            ("ipc", libc::CLONE_NEWIPC),
            ("uts", libc::CLONE_NEWUTS),
            ("net", libc::CLONE_NEWNET),
            ("pid", libc::CLONE_NEWPID),
            ("cgroup", libc::CLONE_NEWCGROUP),
            ("mnt", libc::CLONE_NEWNS),
        ] {
            let theirs = std::fs::read_link(format!("/proc/{target}/ns/{name}"))
                .with_context(|| format!("reading namespace {name} of pid {target}"))?;
            let ours = std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
            if Some(&theirs) == ours.as_ref() {
                continue;
            }
            let fd = sys::open(
                Path::new(&format!("/proc/{target}/ns/{name}")),
                libc::O_RDONLY,
                0,
            )?;
            if flag == libc::CLONE_NEWPID {
                pid_fd = Some(fd);
            } else {
                joins.push((fd, flag));
            }
        }
        if let Some(fd) = pid_fd {
            sys::setns(fd, libc::CLONE_NEWPID).context("joining the container's pid namespace")?;
            sys::close(fd);
        }
        let join = self.cgroup()?.open_join()?;
        let (parent, child) = Chan::pair()?;
        let (pid, placed_v2) = sys::clone_into(0, join.cgroup_fd()).context("fork")?;
        if pid == 0 {
            drop(parent);
            init::main(InitArgs {
                spec,
                process,
                id: &self.saved.id,
                bundle: &self.saved.bundle,
                rootfs: &self.saved.rootfs,
                chan: &child,
                fifo: None,
                console: console.as_ref().map(|c| c.as_raw_fd()),
                joins,
                new_userns: false,
                new_mountns: false,
                new_utsns: false,
                new_cgroupns: false,
                cgroup: None,
                join: Some(&join),
                placed_v2,
                exec: true,
                seccomp: seccomp.as_ref(),
                preserve_fds,
            });
        }
        drop(child);
        drop(console);
        for (fd, _) in &joins {
            sys::close(*fd);
        }
        drop(join);
        let r = (|| -> Result<()> {
            parent.send(&Msg::Pid(pid))?;
            parent.send(&Msg::Go)?;
            wait_exec(&parent)
        })();
        if let Err(e) = r {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::wait_exit(pid);
            return Err(e);
        }
        if let Some(p) = pid_file {
            write_pid_file(p, pid)?;
        }
        if detach {
            return Ok(0);
        }
        forward_signals(pid);
        if let Some(t) = &tty_local {
            tty_proxy(t)?;
        }
        let code = sys::wait_exit(pid)?;
        FWD_PID.store(0, Ordering::Relaxed);
        Ok(code)
    }
}

/// Containers under `root`, sorted by id.
pub fn list(root: &Path) -> Result<Vec<Container>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    for e in rd.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if let Ok(c) = Container::load(root, &id) {
            out.push(c);
        }
    }
    out.sort_by(|a, b| a.saved.id.cmp(&b.saved.id));
    Ok(out)
}

/// Restores the terminal mode saved when the proxy put stdin in raw mode.
struct RawMode(Option<libc::termios>);

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restoring attributes we read from fd 0 earlier.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// Foreground terminal: receives the pty master the container init sent
/// over our console socket and copies stdin → pty → stdout until the
/// container side closes (what runc does for `run`/`exec -t` without
/// --console-socket).
fn tty_proxy(sock: &std::os::unix::net::UnixStream) -> Result<()> {
    let (master, _) = sys::recv_fd(sock.as_raw_fd()).context("receiving the pty master")?;
    // SAFETY: termios/winsize calls on fd 0 and the master we own; the
    // structs are zeroed out-params.
    let raw = unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master, libc::TIOCSWINSZ, &ws);
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::isatty(0) == 1 && libc::tcgetattr(0, &mut t) == 0 {
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode(Some(saved))
        } else {
            RawMode(None)
        }
    };
    let mut stdin_open = true;
    let mut buf = [0u8; 8192];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: master,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if fds[0].revents != 0 {
            match sys::read(master, &mut buf) {
                Ok(n) if n > 0 => {
                    if sys::write_all(1, &buf[..n]).is_err() {
                        break;
                    }
                }
                _ => break, // EIO: every slave fd is closed
            }
        }
        if stdin_open && fds[1].revents != 0 {
            match sys::read(0, &mut buf) {
                Ok(n) if n > 0 => {
                    let _ = sys::write_all(master, &buf[..n]);
                }
                _ => stdin_open = false,
            }
        }
    }
    drop(raw);
    sys::close(master);
    Ok(())
}
