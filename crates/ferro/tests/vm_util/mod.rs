//! Shared helpers for the `ferro daemon` / `ferro vm` tests: a daemon on a
//! private state dir (killed, restarted, torn down by the test), the CLI,
//! and the fake VMM (fake_vmm.py) that speaks docs/CONTROL.md.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferrod::client::Client;
use serde_json::Value;

pub const FERRO: &str = env!("CARGO_BIN_EXE_ferro");

pub fn fake_vmm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm_util/fake_vmm.py")
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub vmm: Option<PathBuf>,
    pub extra: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon whose VMs are fake VMMs.
    pub fn fake() -> Daemon {
        Self::with(Some(fake_vmm()), &[])
    }

    pub fn with(vmm: Option<PathBuf>, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s");
        let mut d = Daemon {
            dir,
            state,
            vmm,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        d.spawn();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.state.join("run/ferrod.sock")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.state.join("run")
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let mut c = Command::new(FERRO);
        c.arg("daemon").arg("--state-dir").arg(&self.state);
        if let Some(v) = &self.vmm {
            c.arg("--vmm").arg(v);
        }
        c.args(&self.extra)
            .env("FERRO_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("daemon.log"))
                    .unwrap(),
            );
        self.child = Some(c.spawn().unwrap());
        // Up when the API answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.client().call("GET", "/v1/vms?all=true", None).is_ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {st}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL the daemon (its VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn client(&self) -> Client {
        Client::unix(self.socket())
    }

    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        self.client().call(method, path, body)
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(FERRO)
            .arg("vm")
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `ferro vm ARGS`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "ferro vm {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn info(&self, name: &str) -> Value {
        self.api("GET", &format!("/v1/vms/{name}"), None).unwrap()
    }

    /// Polls until `pred(info)` holds.
    pub fn wait_for(&self, name: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let i = self.info(name);
            if pred(&i) {
                return i;
            }
            assert!(Instant::now() < deadline, "timed out; last info: {i:#}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn define_toml(&self, name: &str, body: &str) {
        let f = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&f, format!("name = \"{name}\"\n{body}")).unwrap();
        self.ok(&["define", f.to_str().unwrap()]);
    }

    /// VMM processes (pid → VM UUID) living in this daemon's run dir.
    pub fn vmms(&self) -> std::collections::HashMap<uuid::Uuid, i32> {
        ferrod::supervisor::scan_vmms(&self.run_dir())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for (_, pid) in self.vmms() {
            // SAFETY: kill(2) of a VMM this test's daemon started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
