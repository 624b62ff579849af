//! Helpers shared by the `ferro run` end-to-end tests: run the binary with a
//! deadline, stream its output, and locate the cached default guest.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BOOT_DEADLINE: Duration = Duration::from_secs(600);

pub fn ferro() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferro"))
}

/// The cached default guest; `scripts/test` fetches it before `cargo test`.
pub fn guest() -> guest::DefaultGuest {
    guest::DefaultGuest::cached().unwrap_or_else(|e| {
        panic!("{e:#}\nThe boot tests need the default guest: run `ferro guest fetch` (scripts/test does)")
    })
}

/// A running `ferro` whose stdout (and stderr) arrive on a channel.
pub struct Running {
    pub child: Child,
    rx: mpsc::Receiver<(usize, Vec<u8>)>,
    pub output: String,
    /// The same bytes, per stream (0 stdout, 1 stderr), for tests whose
    /// guest output and host logs would interleave mid-line.
    streams: [String; 2],
}

impl Running {
    pub fn spawn(mut cmd: Command, stdin: Stdio) -> Running {
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start ferro");
        let (tx, rx) = mpsc::channel();
        for (i, mut r) in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .enumerate()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 || tx.send((i, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            });
        }
        Running {
            child,
            rx,
            output: String::new(),
            streams: Default::default(),
        }
    }

    fn push(&mut self, (i, b): (usize, Vec<u8>)) {
        let text = String::from_utf8_lossy(&b);
        self.output.push_str(&text);
        self.streams[i].push_str(&text);
    }

    /// Waits until the output contains `needle` (true) or both pipes close or
    /// the deadline passes (false).
    pub fn wait_for(&mut self, needle: &str, deadline: Instant) -> bool {
        self.wait_for_n(needle, 1, deadline)
    }

    /// Like `wait_for`, for the `n`th occurrence.
    pub fn wait_for_n(&mut self, needle: &str, n: usize, deadline: Instant) -> bool {
        let mut closed = 0;
        while self.output.matches(needle).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.push(b),
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    closed += 1;
                    if closed == 2 {
                        return self.output.matches(needle).count() >= n;
                    }
                }
            }
        }
        true
    }

    /// Collects output until ferro closes its pipes, then its exit status;
    /// kills it and fails if the deadline passes first.
    pub fn finish(self, deadline: Instant) -> (i32, String) {
        let (code, out, _) = self.finish_split(deadline);
        (code, out)
    }

    /// Like `finish`, also returning stdout and stderr apart.
    pub fn finish_split(mut self, deadline: Instant) -> (i32, String, [String; 2]) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.push(b),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "ferro did not finish before the deadline; output so far:\n{}",
                        self.output
                    );
                }
            }
        }
        let status = self.child.wait().expect("wait for ferro");
        (status.code().unwrap_or(-1), self.output, self.streams)
    }

    pub fn send(&mut self, s: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        stdin.write_all(s.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path_str(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

pub fn write(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, data).unwrap();
    p
}
