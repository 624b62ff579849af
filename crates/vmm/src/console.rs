//! The host side of the guest console: raw terminal mode (restored on every
//! exit path, including fatal signals), and the input thread that feeds
//! stdin to the UART with QEMU's Ctrl-A escapes (Ctrl-A X quits, Ctrl-A
//! Ctrl-A sends Ctrl-A, Ctrl-A H helps). When stdin is not a terminal, bytes
//! are forwarded as they come and EOF leaves the VM running.

use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use devices::Serial;

static SAVED: OnceLock<libc::termios> = OnceLock::new();

pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

extern "C" fn restore_and_die(sig: libc::c_int) {
    if let Some(t) = SAVED.get() {
        // SAFETY: tcsetattr, signal and raise are async-signal-safe; `t` is a
        // plain struct initialised before the handler was installed.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, t);
        }
    }
    // SAFETY: back to the default action, then re-deliver to die as usual.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Raw mode on the terminal while alive; the original mode comes back on
/// drop, on panic (drop during unwinding) and on fatal signals.
pub struct RawTerminal(());

impl RawTerminal {
    pub fn enter() -> Option<Self> {
        if !stdin_is_tty() {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a termios we own.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return None;
        }
        let _ = SAVED.set(t);
        // SIGTERM/SIGINT are a clean quit (crate::quit_on_signals): the
        // terminal comes back when RawTerminal drops on that exit path.
        for sig in [libc::SIGHUP, libc::SIGQUIT] {
            // SAFETY: installs an async-signal-safe handler.
            unsafe {
                libc::signal(sig, restore_and_die as *const () as libc::sighandler_t);
            }
        }
        let mut raw = t;
        // SAFETY: cfmakeraw edits the struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: valid termios for fd 0.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) };
        Some(RawTerminal(()))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = SAVED.get() {
            // SAFETY: restores the saved settings on fd 0.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

type Uart = Arc<Mutex<Serial>>;
/// Stops the machine on Ctrl-A X; each backend says how.
pub type Quit = Arc<dyn Fn() + Send + Sync>;

/// Where input goes; swapped when the machine reboots.
#[derive(Clone, Default)]
pub struct Target(Arc<Mutex<Option<(Uart, Quit)>>>);

impl Target {
    pub fn set(&self, uart: Arc<Mutex<Serial>>, quit: Quit) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((uart, quit));
    }
    fn get(&self) -> Option<(Uart, Quit)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Feeds all of `bytes` to the UART, waiting while its FIFO is full.
pub(crate) fn feed(target: &Target, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let Some((uart, _)) = target.get() else {
            return;
        };
        let (n, space, gen) = {
            let mut u = uart.lock().unwrap_or_else(|p| p.into_inner());
            let space = u.rx_space();
            let gen = space.generation();
            (u.enqueue(bytes), space, gen)
        };
        bytes = &bytes[n..];
        if !bytes.is_empty() {
            // Woken when the guest drains the FIFO; the timeout covers a reboot.
            space.wait_change(gen, Duration::from_millis(200));
        }
    }
}

const HELP: &str = "\r\nC-a h    print this help\r\nC-a x    exit ferro\r\nC-a C-a  send C-a\r\n";

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
}

/// QEMU-style Ctrl-A escape decoding, kept across reads.
#[derive(Default)]
pub struct Escapes {
    pending: bool,
}

impl Escapes {
    /// Bytes for the guest, and the first host action (input after a quit is dropped).
    pub fn process(&mut self, input: &[u8]) -> (Vec<u8>, Option<Action>) {
        let mut out = Vec::with_capacity(input.len());
        let mut action = None;
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'x' | b'X' => return (out, Some(Action::Quit)),
                    0x01 => out.push(0x01),
                    b'h' | b'H' => action = Some(Action::Help),
                    _ => {}
                }
            } else if b == 0x01 {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        (out, action)
    }
}

/// Starts the stdin → UART thread.
pub fn spawn_input(target: Target, escapes: bool) {
    let r = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 512];
            let mut escapes_state = Escapes::default();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return, // EOF: the guest keeps running.
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                if !escapes {
                    feed(&target, &buf[..n]);
                    continue;
                }
                let (out, action) = escapes_state.process(&buf[..n]);
                feed(&target, &out);
                match action {
                    Some(Action::Quit) => {
                        if let Some((_, quit)) = target.get() {
                            quit();
                        }
                        return;
                    }
                    Some(Action::Help) => {
                        use std::io::Write;
                        let _ = std::io::stdout().write_all(HELP.as_bytes());
                        let _ = std::io::stdout().flush();
                    }
                    None => {}
                }
            }
        });
    if let Err(e) = r {
        tracing::warn!("cannot start the console input thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_escapes() {
        let mut e = Escapes::default();
        assert_eq!(e.process(b"ls\r"), (b"ls\r".to_vec(), None));
        // Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-C passes through to the guest.
        assert_eq!(e.process(b"a\x01\x01b\x03"), (b"a\x01b\x03".to_vec(), None));
        // An escape split across reads still works.
        assert_eq!(e.process(b"q\x01"), (b"q".to_vec(), None));
        assert_eq!(e.process(b"h"), (vec![], Some(Action::Help)));
        // Unknown escapes are swallowed; Ctrl-A X quits and drops what follows.
        assert_eq!(
            e.process(b"\x01zok\x01xrest"),
            (b"ok".to_vec(), Some(Action::Quit))
        );
    }
}
