//! The child side: what the cloned process does between `clone` and
//! `execve` — join namespaces, build the rootfs, set hostname, terminal,
//! rlimits, credentials, capabilities and seccomp, wait for `start`, exec.
//! Errors go back to the parent over the sync channel.

use crate::caps::CapSets;
use crate::rootfs;
use crate::sync::{Chan, Msg};
use crate::sys;
use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Hook, PosixRlimitType, Process, Spec};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// Everything the child needs, prepared by the parent before `clone`.
pub struct InitArgs<'a> {
    pub spec: &'a Spec,
    pub process: &'a Process,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub chan: &'a Chan,
    /// `create`: the exec.fifo to block on until `start`.
    pub fifo: Option<PathBuf>,
    /// Connected console socket for the pty master.
    pub console: Option<RawFd>,
    /// Namespace fds to setns, user namespace first.
    pub joins: Vec<(RawFd, libc::c_int)>,
    pub new_userns: bool,
    pub new_mountns: bool,
    pub new_utsns: bool,
    pub new_cgroupns: bool,
    pub cgroup: Option<&'a libcgroups::Manager>,
    /// Handles to join the cgroup with, first thing (see libcgroups::Join).
    pub join: Option<&'a libcgroups::Join>,
    /// clone3 already placed us in the unified cgroup.
    pub placed_v2: bool,
    /// `exec`: enter a running container (no rootfs, no start wait).
    pub exec: bool,
    pub seccomp: Option<&'a libseccomp::ScmpFilterContext>,
    pub preserve_fds: i32,
}

/// Runs in the child; never returns.
pub fn main(a: InitArgs) -> ! {
    let err = match run(&a) {
        Ok(e) => e,
        Err(e) => e,
    };
    let msg = format!("{err:#}");
    if a.chan.send(&Msg::Error(msg.clone())).is_err() {
        eprintln!("ferro oci: container init: {msg}");
    }
    // SAFETY: _exit skips Rust/atexit teardown, which belongs to the parent.
    unsafe { libc::_exit(1) }
}

fn expect(chan: &Chan, want: &Msg) -> Result<()> {
    let m = chan.recv().context("waiting for the runtime")?;
    if &m != want {
        bail!("runtime sent {m:?}, expected {want:?}");
    }
    Ok(())
}

fn hooks_of(spec: &Spec, f: impl Fn(&oci_spec::runtime::Hooks) -> &Option<Vec<Hook>>) -> Vec<Hook> {
    spec.hooks()
        .as_ref()
        .and_then(|h| f(h).clone())
        .unwrap_or_default()
}

/// Returns only on error (the Ok arm is the exec failure).
fn run(a: &InitArgs) -> Result<anyhow::Error> {
    if let Some(j) = a.join {
        j.join_self(a.placed_v2).context("joining the cgroup")?;
    }
    crate::trace("init: in cgroup");
    let host_pid = match a.chan.recv().context("waiting for the runtime")? {
        Msg::Pid(p) => p,
        m => bail!("runtime sent {m:?}, expected the pid"),
    };
    expect(a.chan, &Msg::Go)?;
    if a.new_userns {
        // SAFETY: plain syscalls; we hold every capability in the new userns.
        unsafe {
            if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                bail!(
                    "becoming root in the user namespace: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    for (fd, t) in &a.joins {
        sys::setns(*fd, *t).with_context(|| format!("joining namespace (type {t:#x})"))?;
        sys::close(*fd);
    }
    if a.new_cgroupns {
        sys::unshare(libc::CLONE_NEWCGROUP).context("creating cgroup namespace")?;
    }
    let env = process_env(a.process);
    let mut fifo_fd = None;
    if !a.exec {
        let bundle = a.bundle;
        let state = |status: &str| {
            let ann = a.spec.annotations().clone().unwrap_or_default();
            serde_json::to_vec(&crate::state::HookState {
                oci_version: a.spec.version(),
                id: a.id,
                status,
                pid: Some(host_pid),
                bundle,
                annotations: &ann,
            })
            .unwrap_or_default()
        };
        if a.new_mountns {
            let ctx = rootfs::Ctx {
                spec: a.spec,
                rootfs: a.rootfs,
                bundle: a.bundle,
                new_cgroupns: a.new_cgroupns,
                in_userns: a.new_userns || a.joins.iter().any(|(_, t)| *t == libc::CLONE_NEWUSER),
                cgroup: a.cgroup,
            };
            rootfs::prepare_root(&ctx)?;
            rootfs::mount_all(&ctx)?;
            crate::trace("init: mounted");
        }
        #[allow(deprecated)]
        let runtime_hooks = !hooks_of(a.spec, |h| h.prestart()).is_empty()
            || !hooks_of(a.spec, |h| h.create_runtime()).is_empty();
        if runtime_hooks {
            a.chan.send(&Msg::RunRuntimeHooks)?;
            expect(a.chan, &Msg::HooksDone)?;
        }
        crate::hooks::run(
            &hooks_of(a.spec, |h| h.create_container()),
            &state("created"),
            "createContainer",
        )?;
        if let Some(f) = &a.fifo {
            // O_RDWR never blocks on a fifo; `start` writes a byte to wake us.
            fifo_fd = Some(sys::open(f, libc::O_RDWR, 0).context("opening exec.fifo")?);
        }
        if a.new_mountns {
            let cwd = sys::secure_join(a.rootfs, a.process.cwd())?;
            let _ = std::fs::create_dir_all(cwd);
            rootfs::pivot(a.rootfs)?;
            crate::trace("init: pivoted");
            rootfs::finalize(a.spec)?;
            crate::trace("init: finalized");
        } else if !a.joins.iter().any(|(_, t)| *t == libc::CLONE_NEWNS) {
            bail!("the container needs a mount namespace (add {{\"type\": \"mount\"}} to linux.namespaces)");
        }
        if a.new_utsns {
            if let Some(h) = a.spec.hostname() {
                let c = sys::cstr(h)?;
                // SAFETY: c is a valid buffer of the given length.
                if unsafe { libc::sethostname(c.as_ptr(), h.len()) } != 0 {
                    bail!("sethostname: {}", std::io::Error::last_os_error());
                }
            }
            if let Some(d) = a.spec.domainname() {
                let c = sys::cstr(d)?;
                // SAFETY: as above.
                if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
                    bail!("setdomainname: {}", std::io::Error::last_os_error());
                }
            }
        }
    }
    if a.process.terminal() == Some(true) {
        let sock = a
            .console
            .context("process.terminal is set but no console socket was given")?;
        setup_tty(sock, a.process)?;
    }
    if let Some(adj) = a.process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).context("oom_score_adj")?;
    }
    for rl in a.process.rlimits().iter().flatten() {
        let lim = libc::rlimit {
            rlim_cur: rl.soft(),
            rlim_max: rl.hard(),
        };
        // SAFETY: lim is a valid rlimit.
        if unsafe { libc::setrlimit(rlimit_resource(rl.typ()), &lim) } != 0 {
            bail!(
                "setrlimit {:?}: {}",
                rl.typ(),
                std::io::Error::last_os_error()
            );
        }
    }
    let args = a.process.args().clone().unwrap_or_default();
    let exe = resolve_exe(&args[0], &env, a.process.cwd())?;
    let nnp = a.process.no_new_privileges() == Some(true);
    if nnp {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            bail!("no_new_privs: {}", std::io::Error::last_os_error());
        }
    }
    if let (Some(sc), false) = (a.seccomp, nnp) {
        // Without no_new_privs loading needs CAP_SYS_ADMIN: load before dropping it.
        crate::seccomp::load(sc)?;
    }
    set_user_and_caps(a.process)?;
    std::env::set_current_dir(a.process.cwd())
        .with_context(|| format!("chdir to cwd {}", a.process.cwd().display()))?;
    if let Some(m) = a.process.user().umask() {
        // SAFETY: plain syscall.
        unsafe { libc::umask(m as libc::mode_t) };
    }
    crate::trace("init: creds set");
    if !a.exec {
        a.chan.send(&Msg::Ready)?;
        // `run` (no fifo): create and start are one operation, no round trip.
        if let Some(fd) = fifo_fd {
            let mut b = [0u8; 1];
            sys::read(fd, &mut b).context("waiting on exec.fifo")?;
            sys::close(fd);
        }
        let ann = a.spec.annotations().clone().unwrap_or_default();
        let st = serde_json::to_vec(&crate::state::HookState {
            oci_version: a.spec.version(),
            id: a.id,
            status: "running",
            pid: Some(host_pid),
            bundle: a.bundle,
            annotations: &ann,
        })?;
        crate::hooks::run(
            &hooks_of(a.spec, |h| h.start_container()),
            &st,
            "startContainer",
        )?;
    }
    if let (Some(sc), true) = (a.seccomp, nnp) {
        crate::seccomp::load(sc)?;
    }
    // Everything past the preserved fds is closed by execve.
    // SAFETY: close_range with CLOEXEC only flags fds; it cannot fail harmfully.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 + a.preserve_fds.max(0) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Ok(exec(&exe, &args, &env))
}

fn process_env(p: &Process) -> Vec<String> {
    let mut env: Vec<String> = p.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = if p.user().uid() == 0 { "/root" } else { "/" };
        env.push(format!("HOME={home}"));
    }
    env
}

/// Finds the program like execvp, with the container's PATH, in the
/// container's root (we are already pivoted).
fn resolve_exe(arg0: &str, env: &[String], cwd: &Path) -> Result<PathBuf> {
    if arg0.contains('/') {
        let p = if arg0.starts_with('/') {
            PathBuf::from(arg0)
        } else {
            cwd.join(arg0)
        };
        if !p.exists() {
            bail!("exec: {arg0:?}: no such file or directory");
        }
        return Ok(p);
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':') {
        let p = Path::new(if dir.is_empty() { "." } else { dir }).join(arg0);
        if let Ok(c) = sys::cstr(&p) {
            // SAFETY: c is a valid C string.
            if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && !p.is_dir() {
                return Ok(p);
            }
        }
    }
    bail!("exec: {arg0:?}: executable file not found in $PATH")
}

fn exec(exe: &Path, args: &[String], env: &[String]) -> anyhow::Error {
    let to_c = |v: &[String]| -> Option<Vec<std::ffi::CString>> {
        v.iter().map(|s| sys::cstr(s).ok()).collect()
    };
    let (Ok(path), Some(argv), Some(envp)) = (sys::cstr(exe), to_c(args), to_c(env)) else {
        return anyhow::anyhow!("exec: argument contains a NUL byte");
    };
    let mut pa: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    pa.push(std::ptr::null());
    let mut pe: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    pe.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings, alive for the call.
    unsafe { libc::execve(path.as_ptr(), pa.as_ptr(), pe.as_ptr()) };
    anyhow::anyhow!(
        "exec {}: {}",
        exe.display(),
        std::io::Error::last_os_error()
    )
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Bounding set first (needs CAP_SETPCAP), then groups and ids keeping the
/// permitted set, then the requested sets.
fn set_user_and_caps(p: &Process) -> Result<()> {
    let caps = match p.capabilities() {
        Some(c) => Some(CapSets::from_spec(c)?),
        None => None,
    };
    if let Some(c) = &caps {
        c.drop_bounding()?;
    }
    let u = p.user();
    // SAFETY: prctl/setgroups/setres[ug]id with valid arguments; gids is a live slice.
    unsafe {
        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        let gids: Vec<libc::gid_t> = u.additional_gids().clone().unwrap_or_default();
        if libc::setgroups(gids.len(), gids.as_ptr()) != 0 {
            let e = std::io::Error::last_os_error();
            // setgroups is denied in user namespaces with setgroups=deny.
            if !(gids.is_empty() && e.raw_os_error() == Some(libc::EPERM)) {
                bail!("setgroups: {e}");
            }
        }
        if libc::setresgid(u.gid(), u.gid(), u.gid()) != 0 {
            bail!("setgid {}: {}", u.gid(), std::io::Error::last_os_error());
        }
        if libc::setresuid(u.uid(), u.uid(), u.uid()) != 0 {
            bail!("setuid {}: {}", u.uid(), std::io::Error::last_os_error());
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
    }
    if let Some(c) = &caps {
        c.apply()?;
    }
    Ok(())
}

/// Opens a pty in the container's devpts, sends the master over the console
/// socket, makes the slave our controlling terminal and stdio.
fn setup_tty(sock: RawFd, p: &Process) -> Result<()> {
    let master = sys::open(Path::new("/dev/ptmx"), libc::O_RDWR | libc::O_NOCTTY, 0)
        .context("opening /dev/ptmx")?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: master is a pty master we own; name is a writable buffer of its length.
    let slave_path = unsafe {
        if libc::unlockpt(master) != 0
            || libc::ptsname_r(master, name.as_mut_ptr(), name.len()) != 0
        {
            bail!("pty setup: {}", std::io::Error::last_os_error());
        }
        std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    if let Some(sz) = p.console_size() {
        let ws = libc::winsize {
            ws_row: sz.height() as u16,
            ws_col: sz.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct.
        unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
    }
    let slave = sys::open(Path::new(&slave_path), libc::O_RDWR | libc::O_NOCTTY, 0)
        .context("opening pty slave")?;
    sys::send_fd(sock, master, "/dev/ptmx")
        .context("sending the pty master over the console socket")?;
    sys::close(master);
    sys::close(sock);
    // SAFETY: setsid and TIOCSCTTY on our own pty slave.
    unsafe {
        libc::setsid();
        if libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
            bail!("TIOCSCTTY: {}", std::io::Error::last_os_error());
        }
    }
    for fd in 0..3 {
        sys::dup2(slave, fd)?;
    }
    sys::close(slave);
    Ok(())
}
