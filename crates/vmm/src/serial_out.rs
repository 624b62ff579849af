//! Where the guest's serial console goes in `ferro run`: the terminal
//! (stdout), `--serial-log FILE`, and `--console-socket PATH`, a Unix socket
//! (mode 0600) serving one client at a time: it receives guest output from
//! the moment it connects and its bytes go to the UART. A second client is
//! told `ferro: console busy` and closed.
//!
//! A client that stops reading must not stall the guest (the UART writes
//! under its lock, from a vCPU): the client socket is non-blocking and
//! output it has no room for is dropped, like a serial line without flow
//! control.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::console::{feed, Target};

pub const BUSY: &[u8] = b"ferro: console busy\n";

#[derive(Default)]
struct Outputs {
    stdout: bool,
    log: Option<File>,
    client: Option<(u64, UnixStream)>,
}

/// The serial output fan-out; clones share it.
#[derive(Clone, Default)]
pub struct SerialSink(Arc<Mutex<Outputs>>);

impl SerialSink {
    /// `stdout`: also write to this process's stdout. `log`: append to FILE.
    pub fn new(stdout: bool, log: Option<&Path>) -> Result<Self> {
        let log = log
            .map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("--serial-log {}: cannot open", p.display()))
            })
            .transpose()?;
        Ok(SerialSink(Arc::new(Mutex::new(Outputs {
            stdout,
            log,
            client: None,
        }))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outputs> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A boxed writer for the machine's UART.
    pub fn writer(&self) -> Box<dyn Write + Send> {
        Box::new(self.clone())
    }

    /// Makes `conn` the console client unless a live one is attached. A
    /// client that has hung up but whose reader thread has not yet seen EOF
    /// does not count: a user who quits and reconnects at once must not be
    /// told "busy". (The old reader still drains its socket, then its
    /// `detach` no-ops on the id mismatch.)
    fn attach(&self, id: u64, conn: &UnixStream) -> std::io::Result<bool> {
        let mut o = self.lock();
        if let Some((_, c)) = &o.client {
            if !hung_up(c) {
                return Ok(false);
            }
        }
        // Not set_nonblocking: that would change the reader's descriptor
        // too (one open file); writes use MSG_DONTWAIT instead.
        o.client = Some((id, conn.try_clone()?));
        Ok(true)
    }

    fn detach(&self, id: u64) {
        let mut o = self.lock();
        if matches!(&o.client, Some((i, _)) if *i == id) {
            o.client = None;
        }
    }
}

/// Whether the peer of `c` has closed its end (checked without blocking).
fn hung_up(c: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: c.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd we own, with a zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

impl Write for SerialSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut o = self.lock();
        if o.stdout {
            let mut s = std::io::stdout().lock();
            let _ = s.write_all(b);
            let _ = s.flush();
        }
        if let Some(f) = &mut o.log {
            if let Err(e) = f.write_all(b) {
                tracing::warn!("--serial-log: write failed ({e}); logging stops");
                o.log = None;
            }
        }
        if let Some((_, c)) = &o.client {
            // SAFETY: sends from a live buffer on a socket we own; never
            // blocks (MSG_DONTWAIT) nor raises SIGPIPE (MSG_NOSIGNAL).
            let r = unsafe {
                libc::send(
                    c.as_raw_fd(),
                    b.as_ptr().cast(),
                    b.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            // A short write or EAGAIN drops the rest (no flow control).
            if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                o.client = None; // gone; its reader thread detaches too
            }
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `--console-socket` server; dropping it removes the socket file.
pub struct ConsoleSocket {
    path: PathBuf,
}

impl ConsoleSocket {
    /// Serves `path`: the client's bytes go to `target`'s UART, guest
    /// output reaches it through `sink`.
    pub fn start(path: &Path, sink: SerialSink, target: Target) -> Result<Self> {
        let listener = crate::control::bind_private(path, "--console-socket")?;
        std::thread::Builder::new()
            .name("console-socket".into())
            .spawn(move || {
                let mut next_id = 0u64;
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    next_id += 1;
                    let id = next_id;
                    match sink.attach(id, &conn) {
                        Ok(true) => {}
                        _ => {
                            let _ = conn.write_all(BUSY);
                            continue; // dropped: closed
                        }
                    }
                    let client_sink = sink.clone();
                    let target = target.clone();
                    let r = std::thread::Builder::new()
                        .name("console-client".into())
                        .spawn(move || {
                            let mut buf = [0u8; 512];
                            loop {
                                match conn.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => feed(&target, &buf[..n]),
                                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                    Err(_) => break,
                                }
                            }
                            client_sink.detach(id);
                        });
                    if r.is_err() {
                        sink.detach(id);
                    }
                }
            })
            .context("--console-socket: cannot start the server thread")?;
        Ok(ConsoleSocket {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn one_client_at_a_time_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let path = dir.path().join("con");
        let sink = SerialSink::new(false, Some(&log)).unwrap();
        let _s = ConsoleSocket::start(&path, sink.clone(), Target::default()).unwrap();
        let mut a = UnixStream::connect(&path).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Wait until the server has attached `a` (output then reaches it).
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.lock().client.is_none() {
            assert!(Instant::now() < deadline, "client never attached");
            std::thread::yield_now();
        }
        let mut b = UnixStream::connect(&path).unwrap();
        let mut busy = Vec::new();
        b.read_to_end(&mut busy).unwrap();
        assert_eq!(busy, BUSY);
        sink.clone().write_all(b"hello\n").unwrap();
        let mut got = [0u8; 6];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello\n");
        assert_eq!(std::fs::read(&log).unwrap(), b"hello\n");
        // After the first client leaves, a new one is accepted.
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.lock().client.is_some() {
            assert!(Instant::now() < deadline, "client never detached");
            std::thread::yield_now();
        }
        let c = UnixStream::connect(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.lock().client.is_none() {
            assert!(Instant::now() < deadline, "second client never attached");
            std::thread::yield_now();
        }
        drop(c);
    }

    #[test]
    fn a_hung_up_client_does_not_keep_the_console_busy() {
        // No reader threads here: the client stays recorded after its peer
        // closes, which is the window between a user quitting and the
        // server's reader seeing EOF.
        let sink = SerialSink::new(false, None).unwrap();
        let (a, a_peer) = UnixStream::pair().unwrap();
        assert!(sink.attach(1, &a).unwrap());
        let (b, _b_peer) = UnixStream::pair().unwrap();
        assert!(!sink.attach(2, &b).unwrap(), "a is live: busy");
        drop(a_peer);
        assert!(sink.attach(3, &b).unwrap(), "a hung up: b takes over");
        let (c, _c_peer) = UnixStream::pair().unwrap();
        assert!(!sink.attach(4, &c).unwrap(), "b is live: busy");
        // a's late detach does not drop b.
        sink.detach(1);
        assert!(matches!(&sink.lock().client, Some((3, _))));
    }
}
