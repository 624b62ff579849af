//! The parent↔init channel: a SOCK_SEQPACKET socketpair carrying short
//! messages, one per packet, so neither side needs framing.

use std::io;
use std::os::fd::RawFd;

/// Messages between the runtime (parent) and the container init (child).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// parent → child: cgroup joined, id maps written; go on.
    Go,
    /// child → parent: mounts are ready; run createRuntime/prestart hooks.
    RunRuntimeHooks,
    /// parent → child: hooks done.
    HooksDone,
    /// child → parent: set up; waiting for start.
    Ready,
    /// parent → child (`run`): start now.
    Start,
    /// either way: failure with a message.
    Error(String),
    /// parent → child: host pid of the init (it only sees itself as 1).
    Pid(i32),
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Go => b"go".to_vec(),
            Msg::RunRuntimeHooks => b"hooks".to_vec(),
            Msg::HooksDone => b"hooks-done".to_vec(),
            Msg::Ready => b"ready".to_vec(),
            Msg::Start => b"start".to_vec(),
            Msg::Error(s) => format!("error:{s}").into_bytes(),
            Msg::Pid(p) => format!("pid:{p}").into_bytes(),
        }
    }
    fn decode(b: &[u8]) -> io::Result<Msg> {
        let s = String::from_utf8_lossy(b);
        Ok(match &*s {
            "go" => Msg::Go,
            "hooks" => Msg::RunRuntimeHooks,
            "hooks-done" => Msg::HooksDone,
            "ready" => Msg::Ready,
            "start" => Msg::Start,
            _ => {
                if let Some(e) = s.strip_prefix("error:") {
                    Msg::Error(e.to_string())
                } else if let Some(p) = s.strip_prefix("pid:").and_then(|p| p.parse().ok()) {
                    Msg::Pid(p)
                } else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected sync message {s:?}"),
                    ));
                }
            }
        })
    }
}

/// One end of the channel.
#[derive(Debug)]
pub struct Chan(pub RawFd);

impl Chan {
    pub fn pair() -> io::Result<(Chan, Chan)> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid out-array of two ints.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((Chan(fds[0]), Chan(fds[1])))
    }

    pub fn send(&self, m: &Msg) -> io::Result<()> {
        let b = m.encode();
        crate::sys::write_all(self.0, &b)
    }

    /// Receives one message; EOF (peer gone) is an error.
    pub fn recv(&self) -> io::Result<Msg> {
        let mut buf = [0u8; 4096];
        let n = crate::sys::read(self.0, &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other side exited",
            ));
        }
        Msg::decode(&buf[..n])
    }
}

impl Drop for Chan {
    fn drop(&mut self) {
        crate::sys::close(self.0);
    }
}
