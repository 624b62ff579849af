//! Terminals of `-t` containers: the monitor holds the pty master (handed
//! over by the runtime through `--console-socket`), logs its output and
//! serves `attach.sock` in the container directory; `ferro container attach`
//! and `run -it` are clients. Frames both ways are `[kind u8][len u32 BE]
//! [payload]`: output and the exit code from the monitor, input and window
//! sizes from clients. Detach keys (client side): ctrl-p ctrl-q, as docker.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub const OUTPUT: u8 = 1;
pub const EXIT: u8 = 2;
pub const INPUT: u8 = 1;
pub const RESIZE: u8 = 3;

pub fn write_frame(w: &mut impl Write, kind: u8, data: &[u8]) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(5 + data.len());
    b.push(kind);
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b)
}

/// Next frame, or None at EOF.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut h = [0u8; 5];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if n > 1 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "attach frame too large",
        ));
    }
    let mut d = vec![0u8; n];
    r.read_exact(&mut d)?;
    Ok(Some((h[0], d)))
}

/// Unix socket paths are limited to 108 bytes and container directories
/// are long: bind and connect through `/proc/self/fd/<dirfd>/`.
fn via_dirfd<T>(dir: &Path, name: &str, f: impl FnOnce(&str) -> std::io::Result<T>) -> Result<T> {
    let d = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let p = format!("/proc/self/fd/{}/{name}", d.as_raw_fd());
    f(&p).with_context(|| format!("{}/{name}", dir.display()))
}

pub fn bind(dir: &Path) -> Result<UnixListener> {
    let _ = std::fs::remove_file(dir.join("attach.sock"));
    via_dirfd(dir, "attach.sock", |p| UnixListener::bind(p))
}

/// Connects and sends our window size first (0x0 without a terminal): a
/// monitor waiting to start the container sizes its terminal from it.
pub fn connect(dir: &Path) -> Result<UnixStream> {
    let mut s = connect_raw(dir)?;
    send_size(&mut s)?;
    Ok(s)
}

fn connect_raw(dir: &Path) -> Result<UnixStream> {
    via_dirfd(dir, "attach.sock", |p| UnixStream::connect(p))
        .context("connecting to the container's attach socket (is it a running -t container?)")
}

/// Console socket for the runtime: a short path in a private temp dir.
pub struct Console {
    pub dir: tempfile::TempDir,
    pub listener: UnixListener,
}

impl Console {
    pub fn new() -> Result<Console> {
        let dir = tempfile::Builder::new()
            .prefix("ferro-con")
            .tempdir()
            .context("creating the console socket directory")?;
        let listener =
            UnixListener::bind(dir.path().join("c.sock")).context("binding the console socket")?;
        Ok(Console { dir, listener })
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("c.sock")
    }

    /// The pty master the runtime sent (it connected during create).
    pub fn receive(&self) -> Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let (s, _) = self
            .listener
            .accept()
            .context("the runtime did not connect to the console socket")?;
        s.set_nonblocking(false)?;
        let (fd, _) =
            libcontainer::sys::recv_fd(s.as_raw_fd()).context("receiving the pty master")?;
        // SAFETY: recv_fd returned a fresh fd we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The monitor's side: clients, and the current pty master for their input.
#[derive(Clone, Default)]
pub struct Hub {
    clients: Arc<Mutex<Vec<UnixStream>>>,
    master: Arc<Mutex<Option<RawFd>>>,
}

impl Hub {
    pub fn set_master(&self, fd: Option<RawFd>) {
        if let Ok(mut m) = self.master.lock() {
            *m = fd;
        }
    }

    /// Sends a frame to every client, dropping the ones that went away.
    pub fn broadcast(&self, kind: u8, data: &[u8]) {
        if let Ok(mut cs) = self.clients.lock() {
            cs.retain_mut(|c| write_frame(c, kind, data).is_ok());
        }
    }

    pub fn close_all(&self) {
        if let Ok(mut cs) = self.clients.lock() {
            for c in cs.iter() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            cs.clear();
        }
    }

    /// Takes a client: its output stream is registered, its input is
    /// written to the pty master by a thread.
    pub fn add(&self, s: UnixStream) -> Result<()> {
        let mut r = s.try_clone()?;
        if let Ok(mut cs) = self.clients.lock() {
            cs.push(s);
        }
        let master = self.master.clone();
        std::thread::spawn(move || {
            while let Ok(Some((kind, data))) = read_frame(&mut r) {
                let Some(fd) = master.lock().ok().and_then(|m| *m) else {
                    continue;
                };
                match kind {
                    INPUT => {
                        let _ = libcontainer::sys::write_all(fd, &data);
                    }
                    RESIZE if data.len() == 4 && data != [0; 4] => {
                        let ws = libc::winsize {
                            ws_row: u16::from_be_bytes([data[0], data[1]]),
                            ws_col: u16::from_be_bytes([data[2], data[3]]),
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ reads one winsize struct.
                        unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
                    }
                    _ => {}
                }
            }
        });
        Ok(())
    }

    /// Accepts clients for the monitor's lifetime.
    pub fn serve(&self, l: UnixListener) {
        let hub = self.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let _ = hub.add(s);
            }
        });
    }
}

struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> Option<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; t is a valid out-pointer.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // SAFETY: cfmakeraw edits the struct in place; tcsetattr applies it.
        unsafe {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved in enter().
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Sends our terminal's size (fd 0; 0x0 when it is none) to the monitor.
fn send_size(s: &mut UnixStream) -> Result<()> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: ws is a valid out-pointer; a non-terminal fd 0 only fails.
    if unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } != 0 {
        ws.ws_row = 0;
        ws.ws_col = 0;
    }
    let mut d = ws.ws_row.to_be_bytes().to_vec();
    d.extend_from_slice(&ws.ws_col.to_be_bytes());
    write_frame(s, RESIZE, &d)?;
    Ok(())
}

/// `attach`: proxies our stdin/stdout to the container's terminal until it
/// exits (returns its exit code) or the user detaches (returns 0).
pub fn client(mut s: UnixStream, stdin_open: bool) -> Result<i32> {
    use std::io::IsTerminal;
    let tty = std::io::stdin().is_terminal();
    let _raw = if tty { RawMode::enter(0) } else { None };
    if tty {
        // Window changes: SIGWINCH is blocked in every thread (set before
        // any is spawned) and taken synchronously by one.
        // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset;
        // pthread_sigmask only changes this thread's mask.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGWINCH);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            set
        };
        let mut w = s.try_clone()?;
        std::thread::spawn(move || loop {
            let mut sig = 0;
            // SAFETY: set is a valid sigset; sig a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 || send_size(&mut w).is_err() {
                break;
            }
        });
    }
    if stdin_open {
        let mut w = s.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut after_ctrl_p = false;
            let mut stdin = std::io::stdin().lock();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut out = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    if after_ctrl_p {
                        after_ctrl_p = false;
                        if b == 0x11 {
                            // Detach: closing our side ends the output loop.
                            let _ = write_frame(&mut w, INPUT, &out);
                            let _ = w.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        out.push(0x10);
                    }
                    if b == 0x10 {
                        after_ctrl_p = true;
                    } else {
                        out.push(b);
                    }
                }
                if write_frame(&mut w, INPUT, &out).is_err() {
                    break;
                }
            }
        });
    }
    let mut stdout = std::io::stdout().lock();
    loop {
        match read_frame(&mut s) {
            Ok(Some((OUTPUT, d))) => {
                stdout.write_all(&d)?;
                stdout.flush()?;
            }
            Ok(Some((EXIT, d))) if d.len() == 4 => {
                return Ok(i32::from_be_bytes([d[0], d[1], d[2], d[3]]));
            }
            Ok(Some(_)) => {}
            // Detached (or the monitor went away): the container runs on.
            Ok(None) | Err(_) => return Ok(0),
        }
    }
}

/// `(rows, cols)` of a RESIZE frame, if it carries a size.
pub fn parse_size(kind: u8, d: &[u8]) -> Option<(u16, u16)> {
    if kind != RESIZE || d.len() != 4 || d == [0; 4] {
        return None;
    }
    Some((
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
    ))
}

/// Refuses attach to containers without a terminal.
pub fn check_tty(tty: bool, id: &str) -> Result<()> {
    if !tty {
        bail!("container {id} has no terminal (attach needs one started with -t); use `ferro container logs -f`");
    }
    Ok(())
}
