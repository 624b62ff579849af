//! Drives the OCI runtime as docker drives runc: as a CLI,
//! `<runtime> --root R run --detach --bundle B --pid-file P ID` (create and
//! start in one call), `state`, `kill`, `delete`, `exec`. When the runtime is this binary's own
//! `ferro oci`, the same operations call `libcontainer` in-process instead,
//! which saves a fork+exec of a large binary per operation (the engine's
//! main cost per `run --rm`).

use anyhow::{bail, Context, Result};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Command, Stdio};

pub struct Runtime<'a> {
    pub argv: &'a [String],
    pub root: &'a Path,
}

/// What the container's stdin, stdout and stderr are.
pub struct Stdio3 {
    /// None: /dev/null; Some(fd): that fd (e.g. our own 0 to pass stdin through).
    pub stdin: Option<RawFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// `--console-socket` for a container with a terminal.
    pub console: Option<std::path::PathBuf>,
}

/// Result of creating and starting a container.
pub enum Started {
    Ok(i32),
    /// The runtime refused; its message (the CLI's stderr also went to the
    /// container's stderr pipe).
    Failed(String),
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(usize::MAX)
}

/// Points fds 0-2 at the container's stdio while libcontainer clones the
/// init (which inherits them), and restores ours on drop.
struct StdioSwap {
    saved: [RawFd; 3],
}

impl StdioSwap {
    fn new(fds: [RawFd; 3]) -> Result<StdioSwap> {
        let mut saved = [-1; 3];
        for (i, fd) in fds.iter().enumerate() {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a possibly closed fd only fails.
            saved[i] = unsafe { libc::fcntl(i as RawFd, libc::F_DUPFD_CLOEXEC, 3) };
            if *fd == i as RawFd {
                continue;
            }
            // SAFETY: both fds are ours; dup2 atomically replaces fd i.
            if unsafe { libc::dup2(*fd, i as RawFd) } < 0 {
                let e = std::io::Error::last_os_error();
                drop(StdioSwap { saved });
                return Err(e).context("redirecting the container's stdio");
            }
        }
        Ok(StdioSwap { saved })
    }
}

impl Drop for StdioSwap {
    fn drop(&mut self) {
        for (i, s) in self.saved.iter().enumerate() {
            // SAFETY: restoring our own fds saved in new(); closing the dup.
            unsafe {
                if *s >= 0 {
                    libc::dup2(*s, i as RawFd);
                    libc::close(*s);
                } else {
                    libc::close(i as RawFd);
                }
            }
        }
    }
}

impl Runtime<'_> {
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        c.arg("--root").arg(self.root);
        c
    }

    /// The runtime is this very binary's `ferro oci`, so libcontainer can be
    /// called directly.
    pub fn in_process(&self) -> bool {
        self.argv.len() == 2
            && self.argv[1] == "oci"
            && std::env::current_exe().is_ok_and(|e| Path::new(&self.argv[0]) == e)
    }

    /// Runs a short runtime command; its stderr becomes the error.
    fn simple(&self, args: &[&str]) -> Result<String> {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running runtime {}", self.argv.join(" ")))?;
        if !out.status.success() {
            bail!(
                "runtime {} failed: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn load(&self, id: &str) -> Result<libcontainer::Container> {
        libcontainer::Container::load(self.root, id)
    }

    /// Creates and starts container `id` from `bundle` with the given stdio;
    /// returns the init's pid. In-process, the init is our child.
    pub fn create_start(
        &self,
        id: &str,
        bundle: &Path,
        pidfile: &Path,
        io: Stdio3,
    ) -> Result<Started> {
        // A stale state (monitor crash, restart) would make create fail.
        let _ = self.delete(id);
        // libcontainer clones the init from this process: only safe while
        // we are single-threaded (no locks held by other threads).
        if self.in_process() && threads() == 1 {
            let o = libcontainer::container::CreateOpts {
                root: self.root.to_path_buf(),
                id: id.to_string(),
                bundle: bundle.to_path_buf(),
                console_socket: io.console.clone(),
                pid_file: Some(pidfile.to_path_buf()),
                preserve_fds: 0,
            };
            let null;
            let stdin = match io.stdin {
                Some(fd) => fd,
                None => {
                    null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
                    null.as_raw_fd()
                }
            };
            let res = {
                let _swap = StdioSwap::new([stdin, io.stdout.as_raw_fd(), io.stderr.as_raw_fd()])?;
                libcontainer::container::run(&o, true, true)
            };
            drop(io);
            return match res {
                Ok(_) => Ok(Started::Ok(read_pid(pidfile)?)),
                Err(e) => Ok(Started::Failed(format!("{e:#}"))),
            };
        }
        // `run --detach` is create + start in one runtime invocation; the
        // init is re-parented to us (the monitor is a child subreaper).
        let mut run = self.cmd();
        run.arg("run")
            .arg("--detach")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pidfile);
        if let Some(p) = &io.console {
            run.arg("--console-socket").arg(p);
        }
        run.arg(id)
            .stdout(Stdio::from(io.stdout))
            .stderr(Stdio::from(io.stderr));
        match io.stdin {
            Some(_) => run.stdin(Stdio::inherit()),
            None => run.stdin(Stdio::null()),
        };
        let status = run
            .status()
            .with_context(|| format!("running the runtime {}", self.argv.join(" ")))?;
        drop(run);
        if !status.success() {
            return Ok(Started::Failed(String::new()));
        }
        Ok(Started::Ok(read_pid(pidfile)?))
    }

    pub fn start(&self, id: &str) -> Result<()> {
        if self.in_process() {
            return self.load(id)?.start();
        }
        self.simple(&["start", id]).map(|_| ())
    }

    pub fn kill(&self, id: &str, signal: &str) -> Result<()> {
        if self.in_process() {
            let sig = libcontainer::cli::parse_signal(signal)?;
            return self.load(id)?.kill(sig, false);
        }
        self.simple(&["kill", id, signal]).map(|_| ())
    }

    /// `delete --force`. Both runc and ferro keep a container's state in
    /// `<root>/<id>`: without it there is nothing to delete, and no runtime
    /// call is spent finding that out.
    pub fn delete(&self, id: &str) -> Result<()> {
        if !self.root.join(id).exists() {
            return Ok(());
        }
        if self.in_process() {
            return self.load(id)?.delete(true);
        }
        self.simple(&["delete", "--force", id]).map(|_| ())
    }

    pub fn state(&self, id: &str) -> Result<serde_json::Value> {
        let s = self.simple(&["state", id])?;
        serde_json::from_str(&s).context("parsing runtime state JSON")
    }
}

fn read_pid(pidfile: &Path) -> Result<i32> {
    std::fs::read_to_string(pidfile)
        .context("reading the runtime's pid file")?
        .trim()
        .parse()
        .context("parsing the runtime's pid file")
}
