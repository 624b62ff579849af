//! The per-container monitor (the engine's conmon/containerd-shim): it asks
//! the runtime to create and start the container with its stdout/stderr on
//! pipes, becomes the container's reaper (PR_SET_CHILD_SUBREAPER), writes
//! the output to `container.log` as docker json-file lines, records the exit
//! status (and whether the memory cgroup OOM-killed it), serves published
//! ports on loopback, applies the restart policy and, with `--rm`, removes
//! the container. Detached containers get their own monitor process
//! (`ferro container _monitor ID`); a foreground `run` monitors in-process.

use crate::attach;
use crate::container::Container;
use crate::paths::Engine;
use crate::runtime::{Runtime, Started};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};

use std::sync::{Arc, Mutex};

fn pipe() -> Result<(fs::File, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a two-element array as pipe2 requires.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    // SAFETY: pipe2 returned two fresh fds we now own.
    unsafe { Ok((fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

fn json_escape(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Copies one output stream into the log (one JSON line per output line)
/// and, in the foreground, to our own stream.
fn pump(
    src: fs::File,
    stream: &'static str,
    log: Arc<Mutex<fs::File>>,
    echo: bool,
) -> std::thread::JoinHandle<()> {
    pump_to_log(src, stream, log, move |b| {
        if echo {
            if stream == "stdout" {
                let mut o = std::io::stdout();
                let _ = o.write_all(b);
                let _ = o.flush();
            } else {
                let _ = std::io::stderr().write_all(b);
            }
        }
    })
}

/// Sets `process.consoleSize` in the bundle's config.json.
fn set_console_size(dir: &Path, rows: u16, cols: u16) -> Result<()> {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p)?)?;
    v["process"]["consoleSize"] = serde_json::json!({"height": rows, "width": cols});
    fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

/// Copies the pty's output into the log and to attached clients; ends
/// when the last process holding the terminal is gone (EIO).
fn pump_pty(
    m: fs::File,
    log: Arc<Mutex<fs::File>>,
    hub: attach::Hub,
) -> std::thread::JoinHandle<()> {
    pump_to_log(m, "stdout", log, move |b| hub.broadcast(attach::OUTPUT, b))
}

/// Reads `src` to its end on a new thread: each chunk goes to `tee`, and
/// each line (plus a last unterminated one) to the log as `stream`.
fn pump_to_log(
    mut src: fs::File,
    stream: &'static str,
    log: Arc<Mutex<fs::File>>,
    mut tee: impl FnMut(&[u8]) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            tee(&buf[..n]);
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                log_line(&log, &line, stream);
            }
        }
        if !pending.is_empty() {
            log_line(&log, &pending, stream);
        }
    })
}

fn log_line(log: &Arc<Mutex<fs::File>>, line: &[u8], stream: &str) {
    let text = String::from_utf8_lossy(line);
    let entry = format!(
        "{{\"log\":{},\"stream\":\"{stream}\",\"time\":\"{}\"}}\n",
        json_escape(&text),
        images::store::now_rfc3339()
    );
    if let Ok(mut f) = log.lock() {
        let _ = f.write_all(entry.as_bytes());
    }
}

/// Reads the memory cgroup's OOM-kill counter (v1 `memory.oom_control`, v2 `memory.events`).
pub fn oom_kills(c: &Container) -> u64 {
    let cg = c.cgroup_path();
    let candidates = [
        (
            format!("/sys/fs/cgroup/memory{cg}/memory.oom_control"),
            "oom_kill ",
        ),
        (format!("/sys/fs/cgroup{cg}/memory.events"), "oom_kill "),
    ];
    for (p, key) in candidates {
        if let Ok(s) = fs::read_to_string(&p) {
            if let Some(n) = s
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
            {
                return n;
            }
        }
    }
    0
}

fn notify(n: &mut Option<fs::File>, msg: &str) {
    if let Some(f) = n.as_mut() {
        let _ = f.write_all(msg.as_bytes());
    }
    *n = None;
}

pub fn stop_marker(eng: &Engine, c: &Container) -> std::path::PathBuf {
    c.dir(eng).join("stop-requested")
}

/// Whether `p` is a restart policy docker accepts: no, always,
/// unless-stopped, on-failure[:N] (also checks ferrod's API requests).
pub fn valid_restart(p: &str) -> bool {
    matches!(p, "no" | "always" | "unless-stopped" | "on-failure")
        || p.strip_prefix("on-failure:")
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// Whether `policy` restarts a container that exited with `code` after
/// `count` restarts (also used by ferrod when a monitor died).
pub fn should_restart(policy: &str, code: i32, count: u32) -> bool {
    match policy.split_once(':') {
        Some(("on-failure", max)) => {
            code != 0 && max.parse::<u32>().map(|m| count < m).unwrap_or(true)
        }
        _ => match policy {
            "always" | "unless-stopped" => true,
            "on-failure" => code != 0,
            _ => false,
        },
    }
}

/// Monitors container `id` until it exits for good; returns its exit code.
pub fn run(eng: &Engine, id: &str, echo: bool, notify_fd: Option<fs::File>) -> Result<i32> {
    run_attachable(eng, id, echo, notify_fd, None)
}

/// `run`, for `-t` containers with the attach listener already bound (by
/// `spawn_detached`) and, when `wait`, one client to accept before the
/// container starts (`run -it`: no output is missed).
pub fn run_attachable(
    eng: &Engine,
    id: &str,
    echo: bool,
    mut notify_fd: Option<fs::File>,
    attach: Option<(UnixListener, bool)>,
) -> Result<i32> {
    let res = run_inner(eng, id, echo, &mut notify_fd, attach);
    if let Err(e) = &res {
        notify(&mut notify_fd, &format!("err {e:#}\n"));
    }
    res
}

fn run_inner(
    eng: &Engine,
    id: &str,
    echo: bool,
    notify_fd: &mut Option<fs::File>,
    attach: Option<(UnixListener, bool)>,
) -> Result<i32> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut c = Container::load(eng, id)?;
    let dir = c.dir(eng);
    let _ = fs::remove_file(stop_marker(eng, &c));
    let rt = Runtime {
        argv: &c.config.runtime.clone(),
        root: &eng.runtime_root(),
    };
    let log = Arc::new(Mutex::new(
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("container.log"))
            .context("opening container.log")?,
    ));
    let mut proxies_started = false;
    // -t: the pty master stays here; clients attach through the hub.
    let hub = attach::Hub::default();
    let mut listener = None;
    let mut pending = Vec::new();
    if c.config.tty {
        let (l, wait) = match attach {
            Some(a) => a,
            None => (attach::bind(&dir)?, false),
        };
        if wait {
            let mut s = l.accept().context("waiting for the attach client")?.0;
            // Its first frame is its window size: the terminal starts with it.
            if let Ok(Some((k, d))) = attach::read_frame(&mut s) {
                if let Some((rows, cols)) = attach::parse_size(k, &d) {
                    set_console_size(&dir, rows, cols)?;
                }
            }
            pending.push(s);
        }
        listener = Some(l);
    }
    let code = loop {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let pidfile = dir.join("init.pid");
        let _ = fs::remove_file(&pidfile);
        let console = if c.config.tty {
            Some(attach::Console::new()?)
        } else {
            None
        };
        let io = crate::runtime::Stdio3 {
            stdin: (echo && c.config.interactive).then_some(0),
            stdout: out_w,
            stderr: err_w,
            console: console.as_ref().map(|c| c.path()),
        };
        let started = rt.create_start(&c.id, &dir, &pidfile, io);
        let t_out = pump(out_r, "stdout", log.clone(), echo);
        let t_err = pump(err_r, "stderr", log.clone(), echo);
        let mut t_pty = None;
        let mut master = None;
        let pid = match started {
            Ok(Started::Ok(pid)) => {
                if let Some(con) = &console {
                    let m = con.receive()?;
                    hub.set_master(Some(m.as_raw_fd()));
                    for s in pending.drain(..) {
                        hub.add(s)?;
                    }
                    if let Some(l) = listener.take() {
                        hub.serve(l);
                    }
                    t_pty = Some(pump_pty(
                        fs::File::from(m.try_clone()?),
                        log.clone(),
                        hub.clone(),
                    ));
                    master = Some(m);
                }
                pid
            }
            Ok(Started::Failed(msg)) => {
                let _ = t_out.join();
                let _ = t_err.join();
                let msg = if msg.is_empty() {
                    crate::logs::tail_text(&dir.join("container.log"), 5)
                } else {
                    msg
                };
                let e = anyhow::anyhow!("runtime create failed: {}", msg.trim());
                return Err(start_failed(eng, &mut c, e)?);
            }
            Err(e) => return Err(start_failed(eng, &mut c, e)?),
        };
        c.refresh(eng)?;
        c.state.status = "running".into();
        c.state.pid = pid;
        c.state.oom_killed = false;
        c.state.error.clear();
        c.state.started_at = images::store::now_rfc3339();
        c.state.monitor_pid = std::process::id() as i32;
        c.save(eng)?;
        if !proxies_started {
            if let Err(e) = crate::network::start_proxies(&c) {
                tracing::warn!("port proxy: {e:#}");
            }
            proxies_started = true;
        }
        notify(notify_fd, &format!("ok {pid}\n"));
        let code = reap_until(pid);
        let _ = t_out.join();
        let _ = t_err.join();
        if let Some(t) = t_pty {
            let _ = t.join();
        }
        hub.set_master(None);
        drop(master);
        let oom = oom_kills(&c) > 0;
        let _ = rt.delete(&c.id);
        c.refresh(eng)?;
        let stopped = stop_marker(eng, &c).exists();
        let again = !stopped && should_restart(&c.config.restart, code, c.state.restart_count);
        c.state.status = if again { "restarting" } else { "exited" }.into();
        c.state.pid = 0;
        c.state.exit_code = code;
        c.state.oom_killed = oom;
        c.state.finished_at = images::store::now_rfc3339();
        if again {
            c.state.restart_count += 1;
        }
        // A --rm container's directory goes away right below.
        if again || !c.config.auto_remove {
            c.save(eng)?;
        }
        if !again {
            break code;
        }
        // Back off a crash-looping container (100 ms doubling, at most 2 s).
        let ms = 100u64 << c.state.restart_count.min(5);
        std::thread::sleep(std::time::Duration::from_millis(ms.min(2000)));
    };
    if c.config.auto_remove {
        if let Err(e) = crate::lifecycle::remove_files(eng, &c) {
            let _ = c.save(eng);
            hub.close_all();
            return Err(e);
        }
    }
    // Attached clients (`run -it --rm`) return once the container is gone.
    hub.broadcast(attach::EXIT, &code.to_be_bytes());
    hub.close_all();
    Ok(code)
}

/// Reaps children until `pid` exits; returns its docker-style exit code.
fn reap_until(pid: i32) -> i32 {
    loop {
        let mut st = 0;
        // SAFETY: st is a valid out-pointer.
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // No children left: the process is gone without us seeing it.
            return 255;
        }
        if r == pid {
            if libc::WIFEXITED(st) {
                return libc::WEXITSTATUS(st);
            }
            if libc::WIFSIGNALED(st) {
                return 128 + libc::WTERMSIG(st);
            }
        }
    }
}

/// Records that `c` could not be started (exit 127, as a shell reports a
/// command it could not run) and hands the error back.
fn start_failed(eng: &Engine, c: &mut Container, e: anyhow::Error) -> Result<anyhow::Error> {
    c.refresh(eng)?;
    c.state.status = "exited".into();
    c.state.exit_code = 127;
    c.state.error = format!("{e:#}");
    c.save(eng)?;
    Ok(e)
}

/// Starts a detached monitor process for `c` and waits until the container
/// runs (or failed to start).
pub fn spawn_detached(eng: &Engine, c: &Container) -> Result<i32> {
    spawn_detached_attach(eng, c, None)
}

/// `spawn_detached`, handing the monitor a bound attach listener (as fd 4)
/// whose first, already queued, client it serves before starting.
pub fn spawn_detached_attach(
    eng: &Engine,
    c: &Container,
    attach: Option<UnixListener>,
) -> Result<i32> {
    let (mut r, w) = pipe()?;
    let exe = std::env::current_exe().context("finding the ferro binary")?;
    let logf = fs::File::create(c.dir(eng).join("monitor.log"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("container")
        .arg("--root")
        .arg(&eng.root)
        .arg("_monitor");
    if attach.is_some() {
        cmd.arg("--wait-attach");
    }
    cmd.arg(&c.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(logf));
    let wfd = std::os::fd::AsRawFd::as_raw_fd(&w);
    let lfd = attach.as_ref().map(|l| l.as_raw_fd()).unwrap_or(-1);
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls (setsid, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // Out of the way of 3 and 4 first (either may already be one of them).
            let w = libc::fcntl(wfd, libc::F_DUPFD_CLOEXEC, 10);
            let l = if lfd >= 0 {
                libc::fcntl(lfd, libc::F_DUPFD_CLOEXEC, 10)
            } else {
                -1
            };
            if w < 0 || libc::dup2(w, 3) < 0 || (l >= 0 && libc::dup2(l, 4) < 0) {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the container monitor")?;
    drop(w);
    drop(attach);
    let mut msg = String::new();
    let _ = r.read_to_string(&mut msg);
    // The monitor keeps running; reap it later only if it already exited.
    let _ = child.try_wait();
    std::mem::forget(child);
    match msg.split_once(' ') {
        Some(("ok", pid)) => Ok(pid.trim().parse().unwrap_or(0)),
        Some(("err", e)) => bail!("{}", e.trim()),
        _ => bail!(
            "container monitor exited without starting the container: {}",
            fs::read_to_string(c.dir(eng).join("monitor.log"))
                .unwrap_or_default()
                .trim()
        ),
    }
}

/// fd 4 as handed over by `spawn_detached_attach`.
pub fn inherited_attach_listener() -> Result<UnixListener> {
    // SAFETY: fcntl(F_GETFD) only queries.
    if unsafe { libc::fcntl(4, libc::F_GETFD) } < 0 {
        bail!("--wait-attach without an attach listener on fd 4");
    }
    // SAFETY: fd 4 is open and was given to this process as the listener.
    unsafe {
        libc::fcntl(4, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok(UnixListener::from_raw_fd(4))
    }
}

/// fd 3 as handed over by `spawn_detached`.
pub fn inherited_notify_fd() -> Option<fs::File> {
    // SAFETY: fcntl(F_GETFD) only queries; we take ownership only if fd 3 is open.
    if unsafe { libc::fcntl(3, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: fd 3 is open and was given to this process for this purpose.
    let f = unsafe { fs::File::from_raw_fd(3) };
    // SAFETY: FD_CLOEXEC so the runtime and container don't inherit it.
    unsafe { libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(f)
}

/// Waits until the container is no longer running or its monitor is gone.
/// Sleeps on a pidfd of the monitor (woken the moment it exits); a monitor
/// that outlives the container (restart policy) is re-checked each 100 ms.
pub fn wait_exited(eng: &Engine, id: &str, timeout: std::time::Duration) -> Result<Container> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pidfd: Option<(i32, OwnedFd)> = None;
    loop {
        let c = Container::load(eng, id)?;
        let monitor_gone =
            c.state.monitor_pid <= 0 || !crate::container::pid_alive(c.state.monitor_pid);
        if !c.is_running() || monitor_gone {
            return Ok(c);
        }
        let now = std::time::Instant::now();
        if now > deadline {
            bail!("timed out waiting for container {} to exit", c.short_id());
        }
        if pidfd.as_ref().map(|p| p.0) != Some(c.state.monitor_pid) {
            pidfd = pidfd_open(c.state.monitor_pid).map(|fd| (c.state.monitor_pid, fd));
        }
        let ms = (deadline - now).as_millis().min(100) as i32;
        match &pidfd {
            Some((_, fd)) => {
                let mut p = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(fd),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: p is one valid pollfd.
                unsafe { libc::poll(&mut p, 1, ms) };
            }
            None => std::thread::sleep(std::time::Duration::from_millis(ms.min(20) as u64)),
        }
    }
}

/// A pidfd for `pid` (None if it is gone or pidfds are unavailable).
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // SAFETY: a non-negative return is a fresh fd we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}
