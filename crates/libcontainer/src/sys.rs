//! Thin, checked wrappers over the Linux syscalls the runtime needs.
//! Everything returns `io::Result` with the errno; callers add context.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};

pub fn cstr(p: impl AsRef<std::ffi::OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = src.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.filter(|d| !d.is_empty()).map(cstr).transpose()?;
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: all pointers are NUL-terminated strings that outlive the call, or NULL.
    check(unsafe {
        libc::mount(
            p(&src),
            target.as_ptr(),
            p(&fstype),
            flags,
            p(&data) as *const libc::c_void,
        )
    })
    .map(drop)
}

pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: t is a valid C string.
    check(unsafe { libc::umount2(t.as_ptr(), flags) }).map(drop)
}

pub fn pivot_root(new: &Path, old: &Path) -> io::Result<()> {
    let n = cstr(new)?;
    let o = cstr(old)?;
    // SAFETY: valid C strings; the raw syscall has no libc wrapper.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) as libc::c_int })
        .map(drop)
}

pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: fd is an open namespace file descriptor owned by the caller.
    check(unsafe { libc::setns(fd, nstype) }).map(drop)
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall with integer flags.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

pub fn open(path: &Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<RawFd> {
    let c = cstr(path)?;
    // SAFETY: valid C string; the returned fd is owned by the caller.
    check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })
}

pub fn close(fd: RawFd) {
    // SAFETY: closing an fd the caller owns; errors are irrelevant here.
    unsafe { libc::close(fd) };
}

pub fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    // SAFETY: fds are plain integers; dup2 validates them.
    check(unsafe { libc::dup2(old, new) }).map(drop)
}

pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is a valid slice for its length.
        let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a valid, writable slice for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(n as usize);
    }
}

/// Forks with `flags` (CLONE_NEW* etc.) like fork(2): the child returns 0 on
/// the same (copied) stack. The caller must be single-threaded.
pub fn clone_fork(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: raw clone with a NULL stack behaves like fork: the child runs on
    // a copy of the parent's stack. The runtime is single-threaded here, so no
    // lock is held by another thread in the child.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as libc::pid_t)
    }
}

/// clone3's argument block (linux/sched.h, CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Like [`clone_fork`], but born in the cgroup v2 directory `cgroup_fd`
/// when given (`clone3(CLONE_INTO_CGROUP)`, Linux 5.7+), which needs no
/// cgroup.procs write afterwards. Returns the pid (0 in the child) and
/// whether the child was placed; on any clone3 failure it falls back to a
/// plain clone and the caller joins the cgroup the slow way.
pub fn clone_into(flags: libc::c_int, cgroup_fd: Option<RawFd>) -> io::Result<(libc::pid_t, bool)> {
    if let Some(fd) = cgroup_fd {
        let args = CloneArgs {
            flags: flags as u32 as u64 | CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: fd as u64,
            ..Default::default()
        };
        // SAFETY: clone3 without a stack (0) forks: the child runs on a copy
        // of our stack. args is a valid struct of the size passed. The
        // caller is single-threaded, as for clone_fork.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if r >= 0 {
            return Ok((r as libc::pid_t, true));
        }
    }
    clone_fork(flags).map(|p| (p, false))
}

/// waitpid for one child; returns the shell-style exit code (128+signal).
pub fn wait_exit(pid: libc::pid_t) -> io::Result<i32> {
    let mut st = 0;
    loop {
        // SAFETY: st is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break;
    }
    Ok(exit_code(st))
}

pub fn exit_code(st: libc::c_int) -> i32 {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        255
    }
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Field 22 of /proc/PID/stat (start time in ticks) and the state letter:
/// identifies a process across pid reuse.
pub fn proc_start_time(pid: libc::pid_t) -> Option<(u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some((f.get(19)?.parse().ok()?, f.first()?.chars().next()?))
}

/// Joins `unsafe_path` under `root` resolving symlinks as if `root` were `/`,
/// so no component (`..`, absolute symlink) can lead outside `root`.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new(); // relative to root
    let mut todo: Vec<std::ffi::OsString> = unsafe_path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            out.pop();
            continue;
        }
        let cand = out.join(&c);
        match std::fs::symlink_metadata(root.join(&cand)) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(root.join(&cand))?;
                if target.is_absolute() {
                    out = PathBuf::new();
                }
                for tc in target.components().rev() {
                    match tc {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => out = cand,
        }
    }
    Ok(root.join(out))
}

pub fn errno_str(e: i32) -> String {
    // SAFETY: strerror returns a pointer to a static (or thread-local) string.
    unsafe { CStr::from_ptr(libc::strerror(e)) }
        .to_string_lossy()
        .into_owned()
}

/// Sends `fd` over a unix socket with SCM_RIGHTS (the console-socket
/// protocol runc uses: the payload is the file's name).
pub fn send_fd(sock: RawFd, fd: RawFd, name: &str) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: name.as_ptr() as *mut libc::c_void,
        iov_len: name.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msg points at iov and cbuf, both alive for the call; the cmsg
    // header is written inside cbuf, sized by CMSG_SPACE above.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one fd sent with `send_fd`; returns it and the payload.
pub fn recv_fd(sock: RawFd) -> io::Result<(RawFd, String)> {
    let mut buf = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msg points at live buffers; we only read a cmsg the kernel
    // wrote, after checking its level/type.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no file descriptor in the message",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const RawFd);
        Ok((fd, String::from_utf8_lossy(&buf[..n as usize]).into_owned()))
    }
}

/// Waits for a process that is not our child to exit, bounded by `timeout`.
/// Returns true when it is gone.
pub fn wait_gone(pid: libc::pid_t, timeout: std::time::Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if fd < 0 {
        return true; // ESRCH: already gone
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    close(fd);
    r > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("a/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../x", r.join("a/rel")).unwrap();
        assert_eq!(
            secure_join(r, Path::new("/a/abs/passwd")).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(secure_join(r, Path::new("a/rel/y")).unwrap(), r.join("x/y"));
        assert_eq!(secure_join(r, Path::new("/../../z")).unwrap(), r.join("z"));
    }
}
