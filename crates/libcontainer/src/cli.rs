//! `ferro oci`: runc's command line (commands, flags, JSON outputs and exit
//! codes), so engines can use it where they would use runc.

use crate::container::{self, Container, CreateOpts};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use oci_spec::runtime::Process;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Default state directory (runc uses /run/runc).
pub const DEFAULT_ROOT: &str = "/run/ferro-oci";

#[derive(Args, Debug)]
#[command(about = "Low-level OCI runtime (runc-compatible commands and flags)")]
pub struct OciArgs {
    /// Root directory for storage of container state.
    #[arg(long, default_value = DEFAULT_ROOT, global = true)]
    pub root: PathBuf,
    /// Also write errors to this file.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, default_value = "text", global = true)]
    pub log_format: String,
    /// Accepted for compatibility.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd cgroups (not supported: cgroupfs only).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for compatibility (true|false|auto).
    #[arg(long)]
    pub rootless: Option<String>,
    #[command(subcommand)]
    pub cmd: OciCmd,
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Path to the bundle (directory with config.json).
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the pty master when process.terminal is set.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// File to write the container init's pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Accepted for compatibility (pivot_root is always used).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for compatibility.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass this many extra fds (from 3) to the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    pub id: String,
}

#[derive(Subcommand, Debug)]
pub enum OciCmd {
    /// Create a container (it waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init.
    Kill {
        /// Signal every process in the container.
        #[arg(short = 'a', long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a container's resources.
    Delete {
        /// Kill the container first if it is running.
        #[arg(short = 'f', long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, wait for it and delete it.
    Run {
        /// Start and return (do not wait).
        #[arg(short = 'd', long)]
        detach: bool,
        /// Do not delete the container after it exits.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Run a new process in a running container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps {
        /// table or json.
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        id: String,
        /// Arguments for ps(1) (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    List {
        /// table or json.
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        /// Only ids.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Print resource usage (with --stats, once) as runc's events JSON.
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Print what this runtime supports, as JSON.
    Features,
    /// Write a default config.json into the bundle.
    Spec {
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
        /// A spec for a rootless container.
        #[arg(long)]
        rootless: bool,
    },
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment (KEY=VALUE), repeatable.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Allocate a pseudo-TTY (needs --console-socket).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// UID[:GID] to run as.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Additional gids, repeatable.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// A process.json (the spec's process object) instead of args.
    #[arg(short = 'p', long)]
    pub process: Option<PathBuf>,
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Accepted for compatibility.
    #[arg(long)]
    pub process_label: Option<String>,
    /// Accepted for compatibility (no AppArmor support).
    #[arg(long)]
    pub apparmor: Option<String>,
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability, repeatable.
    #[arg(short = 'c', long = "cap")]
    pub cap: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    #[arg(long)]
    pub ignore_paused: bool,
    pub id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs the command; returns the process exit code.
pub fn main(a: OciArgs) -> i32 {
    crate::trace("start");
    match dispatch(&a) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("ferro oci: {msg}");
            if let Some(log) = &a.log {
                log_error(log, &a.log_format, &msg);
            }
            1
        }
    }
}

fn log_error(path: &Path, format: &str, msg: &str) {
    let line = if format == "json" {
        serde_json::json!({"level": "error", "msg": msg, "time": crate::state::now_rfc3339()})
            .to_string()
    } else {
        format!(
            "time=\"{}\" level=error msg={:?}",
            crate::state::now_rfc3339(),
            msg
        )
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn opts(root: &Path, c: &CreateArgs) -> CreateOpts {
    CreateOpts {
        root: root.to_path_buf(),
        id: c.id.clone(),
        bundle: c.bundle.clone(),
        console_socket: c.console_socket.clone(),
        pid_file: c.pid_file.clone(),
        preserve_fds: c.preserve_fds,
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn dispatch(a: &OciArgs) -> Result<i32> {
    if a.systemd_cgroup {
        bail!("--systemd-cgroup is not supported (ferro oci manages cgroupfs directly)");
    }
    let root = &a.root;
    match &a.cmd {
        OciCmd::Create(c) => {
            container::create_container(&opts(root, c))?;
            Ok(0)
        }
        OciCmd::Run {
            detach,
            keep,
            create,
        } => container::run(&opts(root, create), *detach, *keep),
        OciCmd::Start { id } => Container::load(root, id)?.start().map(|_| 0),
        OciCmd::State { id } => {
            let c = Container::load(root, id)?;
            // runc prints the indented JSON without a trailing newline.
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &c.saved.runc_state(root))?;
            out.flush()?;
            Ok(0)
        }
        OciCmd::Kill { all, id, signal } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            Container::load(root, id)?.kill(sig, *all).map(|_| 0)
        }
        OciCmd::Delete { force, id } => {
            match Container::load(root, id) {
                Ok(c) => c.delete(*force)?,
                // runc: deleting a missing container with --force succeeds.
                Err(_) if *force => {}
                Err(e) => return Err(e),
            }
            Ok(0)
        }
        OciCmd::Exec(e) => exec(root, e),
        OciCmd::Ps {
            format,
            id,
            ps_args,
        } => ps(root, id, format, ps_args),
        OciCmd::List { format, quiet } => {
            let all = container::list(root)?;
            if *quiet {
                for c in &all {
                    println!("{}", c.saved.id);
                }
            } else if format == "json" {
                let v: Vec<_> = all.iter().map(|c| c.saved.runc_state(root)).collect();
                print_json(&v)?;
            } else {
                println!(
                    "{:<12} {:<8} {:<10} {:<40} {:<30} OWNER",
                    "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                );
                for c in &all {
                    let s = c.saved.runc_state(root);
                    println!(
                        "{:<12} {:<8} {:<10} {:<40} {:<30} {}",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle,
                        s.created,
                        if s.owner.is_empty() { "root" } else { &s.owner }
                    );
                }
            }
            Ok(0)
        }
        OciCmd::Pause { id } => Container::load(root, id)?.pause().map(|_| 0),
        OciCmd::Resume { id } => Container::load(root, id)?.resume().map(|_| 0),
        OciCmd::Events { stats, id, .. } => {
            if !stats {
                bail!("only `events --stats` is supported");
            }
            let c = Container::load(root, id)?;
            let s = c.cgroup()?.stats()?;
            let v = serde_json::json!({
                "type": "stats",
                "id": id,
                "data": {
                    "cpu": {"usage": {"total": s.cpu.usage_total, "user": s.cpu.usage_user, "kernel": s.cpu.usage_kernel},
                            "throttling": {"throttledPeriods": s.cpu.throttled_periods}},
                    "memory": {"usage": {"usage": s.memory.usage, "max": s.memory.max_usage, "limit": s.memory.limit, "failcnt": s.memory.failcnt},
                               "oom_kill": s.memory.oom_kill},
                    "pids": {"current": s.pids.current, "limit": s.pids.limit}
                }
            });
            println!("{v}");
            Ok(0)
        }
        OciCmd::Features => {
            print_json(&features())?;
            Ok(0)
        }
        OciCmd::Spec { bundle, rootless } => {
            let p = bundle.join("config.json");
            if p.exists() {
                bail!("File {} exists. Remove it first", p.display());
            }
            let s = crate::spec::default_spec(*rootless)?;
            std::fs::write(&p, serde_json::to_vec_pretty(&s)?)
                .with_context(|| format!("writing {}", p.display()))?;
            Ok(0)
        }
    }
}

/// Signal by number, name or SIG-name (case-insensitive), as runc accepts.
pub fn parse_signal(s: &str) -> Result<libc::c_int> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal {s}");
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    Ok(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => bail!("unknown signal {s:?}"),
    })
}

fn exec(root: &Path, e: &ExecArgs) -> Result<i32> {
    let c = Container::load(root, &e.id)?;
    let mut p: Process = match &e.process {
        Some(path) => {
            let t = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice(&t)
                .with_context(|| format!("{} is not a valid process JSON", path.display()))?
        }
        None => {
            if e.command.is_empty() {
                bail!("exec needs a command (or --process)");
            }
            let mut p = c
                .saved
                .config
                .process()
                .clone()
                .context("container has no process")?;
            p.set_args(Some(e.command.clone()));
            p.set_terminal(Some(e.tty));
            p.set_console_size(None);
            let mut env = p.env().clone().unwrap_or_default();
            for kv in &e.env {
                if !kv.contains('=') {
                    bail!("--env {kv:?} is not KEY=VALUE");
                }
                let k = kv.split('=').next().unwrap_or_default();
                env.retain(|x| x.split('=').next() != Some(k));
                env.push(kv.clone());
            }
            p.set_env(Some(env));
            if let Some(cwd) = &e.cwd {
                p.set_cwd(cwd.clone());
            }
            if let Some(u) = &e.user {
                let (uid, gid) = match u.split_once(':') {
                    Some((a, b)) => (a.parse::<u32>()?, b.parse::<u32>()?),
                    None => (
                        u.parse::<u32>()
                            .with_context(|| format!("--user {u:?} must be UID[:GID]"))?,
                        0,
                    ),
                };
                p.user_mut().set_uid(uid);
                p.user_mut().set_gid(gid);
            }
            if !e.additional_gids.is_empty() {
                p.user_mut()
                    .set_additional_gids(Some(e.additional_gids.clone()));
            }
            if e.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            if !e.cap.is_empty() {
                let mut caps = p.capabilities().clone().unwrap_or_default();
                for name in &e.cap {
                    let cap: oci_spec::runtime::Capability =
                        serde_json::from_value(serde_json::Value::String(name.clone()))
                            .with_context(|| format!("unknown capability {name}"))?;
                    let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                        let mut s = s.clone().unwrap_or_default();
                        s.insert(cap);
                        Some(s)
                    };
                    caps.set_bounding(add(caps.bounding()));
                    caps.set_effective(add(caps.effective()));
                    caps.set_permitted(add(caps.permitted()));
                }
                p.set_capabilities(Some(caps));
            }
            p
        }
    };
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        bail!("process.args must name the program to run");
    }
    if !p.cwd().is_absolute() {
        p.set_cwd(PathBuf::from("/").join(p.cwd()));
    }
    c.exec(
        &p,
        e.console_socket.as_deref(),
        e.pid_file.as_deref(),
        e.detach,
        e.preserve_fds,
    )
}

fn ps(root: &Path, id: &str, format: &str, args: &[String]) -> Result<i32> {
    let c = Container::load(root, id)?;
    let pids = c.cgroup()?.pids()?;
    if format == "json" {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    if format != "table" {
        bail!("invalid format {format:?} (table or json)");
    }
    let args: Vec<String> = if args.is_empty() {
        vec!["-ef".into()]
    } else {
        args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("running ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps output has no PID column")?;
    println!("{header}");
    for l in lines {
        if let Some(p) = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
        {
            if pids.contains(&p) {
                println!("{l}");
            }
        }
    }
    Ok(0)
}

/// `features`: the runtime-spec features document.
pub fn features() -> serde_json::Value {
    let v = libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "loud", "mand",
            "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid",
            "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared", "rslave", "runbindable",
            "rw", "shared", "silent", "slave", "strictatime", "suid", "sync", "unbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": crate::caps::all_names(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
                "knownFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"io.github.seccomp.libseccomp.version": v}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("9").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), libc::SIGTERM);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }
}
