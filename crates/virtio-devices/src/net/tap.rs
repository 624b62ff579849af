//! A TAP interface opened through /dev/net/tun with IFF_VNET_HDR, plus the
//! few netdevice ioctls the VMM needs (link up, join a bridge). A TAP created
//! here is not persistent: the kernel deletes it when the fd closes, so a
//! `--net bridge=` TAP disappears when the VMM exits, however it exits.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

const IFNAMSIZ: usize = 16;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// `struct ifreq`: a name and a 24-byte union (flags / ifindex / ...).
#[repr(C)]
#[derive(Default)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<Self> {
        if name.len() >= IFNAMSIZ || name.contains('\0') || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {name:?} is invalid (at most 15 bytes)"),
            ));
        }
        let mut r = Self::default();
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(r)
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: every caller passes a request whose argument is `T` (an
    // `IfReq` or a C int) and a pointer to a live, writable `T`.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ioctl_val(fd: RawFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: used only for TUNSETOFFLOAD, which takes its argument by value.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (creating if needed) the TAP `name`; a name with `%d` lets the
    /// kernel pick the number. Non-blocking, with a 12-byte vnet header.
    pub fn open(name: &str) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
        let mut req = IfReq::new(name)?;
        req.set_short((libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16);
        ioctl_ptr(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req)
            .map_err(|e| io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")))?;
        let mut sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
        ioctl_ptr(file.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &mut sz)
            .map_err(|e| io::Error::new(e.kind(), format!("TUNSETVNETHDRSZ: {e}")))?;
        Ok(Self {
            file,
            name: req.name(),
        })
    }

    /// Creates a fresh TAP, brings it up and adds it to `bridge`.
    pub fn for_bridge(bridge: &str) -> io::Result<Self> {
        let tap = Self::open("ferro%d")?;
        tap.set_up()?;
        tap.attach_to_bridge(bridge)?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which offloads the TAP may hand the guest (TUN_F_* bits).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        ioctl_val(self.file.as_raw_fd(), libc::TUNSETOFFLOAD as _, flags as _)
    }

    pub fn set_up(&self) -> io::Result<()> {
        let s = inet_socket()?;
        let mut req = IfReq::new(&self.name)?;
        ioctl_ptr(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
        let flags = req.short() | libc::IFF_UP as i16;
        req.set_short(flags);
        ioctl_ptr(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)
            .map_err(|e| io::Error::new(e.kind(), format!("bring {} up: {e}", self.name)))
    }

    pub fn attach_to_bridge(&self, bridge: &str) -> io::Result<()> {
        let cname = std::ffi::CString::new(self.name.as_str())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `cname` is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let s = inet_socket()?;
        let mut req = IfReq::new(bridge)?;
        req.set_int(index as i32);
        ioctl_ptr(s.as_raw_fd(), SIOCBRADDIF, &mut req).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("add {} to bridge {bridge}: {e}", self.name),
            )
        })
    }

    /// One frame (with its vnet header), or `WouldBlock`.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live readable buffer of `buf.len()` bytes.
        let n = unsafe { libc::write(self.file.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
