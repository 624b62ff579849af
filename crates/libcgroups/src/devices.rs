//! Device access rules on the unified (v2) hierarchy, which has no devices
//! controller: like runc, the OCI `linux.resources.devices` list becomes an
//! eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the cgroup.
//!
//! Semantics are those of the v1 devices controller that runc emulates:
//! rules apply in order and the last one matching a request wins. That is
//! decided per access type (mknod, read, write), so `allow c 1:3 r` then
//! `allow c 1:3 w` allows an O_RDWR open and `deny c 1:3 w` after
//! `allow c 1:3 rwm` still allows reads. A request no rule matches is
//! allowed (a new v1 cgroup inherits its parent's allow-all); OCI lists
//! start with a deny-all rule, which makes the default deny. The program is
//! assembled here from raw instructions (a few dozen lines; no BPF crate).

use crate::{Error, Result};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

// uapi/linux/bpf.h
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `bpf_cgroup_dev_ctx.access_type` is `(access << 16) | type`.
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;

/// One BPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    /// dst register in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// Opcodes used (class | op | source).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const MOV64_K: u8 = 0xb7;
const JA: u8 = 0x05;
const JNE_K: u8 = 0x55;
const JSET_K: u8 = 0x45;
const EXIT: u8 = 0x95;

/// A validated rule: None fields are wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    typ: Option<u32>,
    major: Option<u32>,
    minor: Option<u32>,
    access: u32,
    allow: bool,
}

fn num(what: &str, v: Option<i64>, i: usize) -> Result<Option<u32>> {
    match v {
        None | Some(-1) => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| {
            Error::Msg(format!(
                "device rule {i}: {what} {n} is neither -1 (any) nor a device number"
            ))
        }),
    }
}

fn rule(i: usize, r: &LinuxDeviceCgroup) -> Result<Rule> {
    let typ = match r.typ() {
        None | Some(LinuxDeviceType::A) => None,
        Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
        // Unbuffered character devices are character devices to the kernel.
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(DEV_CHAR),
        Some(LinuxDeviceType::P) => {
            return Err(Error::Msg(format!(
                "device rule {i}: type \"p\" (FIFO) is not a device cgroup type (use a, b or c)"
            )))
        }
    };
    let mut access = 0;
    for ch in r.access().as_deref().unwrap_or("rwm").chars() {
        access |= match ch {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            c => {
                return Err(Error::Msg(format!(
                    "device rule {i}: access {c:?} is not one of r, w, m"
                )))
            }
        };
    }
    if access == 0 {
        // Empty access string: v1 treats it as all.
        access = ACC_READ | ACC_WRITE | ACC_MKNOD;
    }
    Ok(Rule {
        typ,
        major: num("major", r.major(), i)?,
        minor: num("minor", r.minor(), i)?,
        access,
        allow: r.allow(),
    })
}

/// Forward jumps to labels, patched once every label is placed.
#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    fixups: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn emit(&mut self, i: Insn) {
        self.code.push(i);
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn place(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn ja(&mut self, l: usize) {
        self.fixups.push((self.code.len(), l));
        self.emit(insn(JA, 0, 0, 0, 0));
    }
    fn finish(mut self) -> Result<Vec<Insn>> {
        for (at, l) in self.fixups {
            let target = self.labels[l].expect("every label is placed");
            self.code[at].off = i16::try_from(target - at - 1)
                .map_err(|_| Error::Msg("device rule list too long for one program".into()))?;
        }
        Ok(self.code)
    }
}

/// Assembles the device program for `rules`. Registers: r2 device type,
/// r3 requested access bits, r4 major, r5 minor; returns 1 (allow) or 0.
pub fn program(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>> {
    let rules: Vec<Rule> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(i, r))
        .collect::<Result<_>>()?;
    let mut a = Asm::default();
    a.emit(insn(LDX_W, 2, 1, 0, 0));
    a.emit(insn(ALU32_AND_K, 2, 0, 0, 0xffff));
    a.emit(insn(LDX_W, 3, 1, 0, 0));
    a.emit(insn(ALU32_RSH_K, 3, 0, 0, 16));
    a.emit(insn(LDX_W, 4, 1, 4, 0));
    a.emit(insn(LDX_W, 5, 1, 8, 0));
    for bit in [ACC_MKNOD, ACC_READ, ACC_WRITE] {
        let done = a.label();
        // Not requested: nothing to decide for this bit.
        a.emit(insn(JSET_K, 3, 0, 1, bit as i32));
        a.ja(done);
        // Newest rule first: the first match is the last one in the list.
        for r in rules.iter().rev().filter(|r| r.access & bit != 0) {
            let checks: Vec<(u8, u32)> = [(2, r.typ), (4, r.major), (5, r.minor)]
                .into_iter()
                .filter_map(|(reg, v)| v.map(|v| (reg, v)))
                .collect();
            let action_len = if r.allow { 1 } else { 2 };
            for (k, (reg, v)) in checks.iter().enumerate() {
                let skip = (checks.len() - 1 - k + action_len) as i16;
                a.emit(insn(JNE_K, *reg, 0, skip, *v as i32));
            }
            if r.allow {
                a.ja(done);
            } else {
                a.emit(insn(MOV64_K, 0, 0, 0, 0));
                a.emit(insn(EXIT, 0, 0, 0, 0));
            }
            if checks.is_empty() {
                // Matches everything: older rules are unreachable, and the
                // verifier refuses unreachable code.
                break;
            }
        }
        a.place(done);
    }
    a.emit(insn(MOV64_K, 0, 0, 0, 1));
    a.emit(insn(EXIT, 0, 0, 0, 0));
    a.finish()
}

fn sys_bpf<T>(cmd: libc::c_int, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a live, fully initialised bpf_attr prefix of the
    // size passed; the kernel zero-extends the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
}

#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Loads `code` as a cgroup device program. The license only gates
/// GPL-only helpers, which this program does not call, so runc's "Apache"
/// is accepted.
pub fn load(code: &[Insn]) -> Result<OwnedFd> {
    let license = c"Apache";
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"ferro_devcg");
    let mut attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: code.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            // Again with the verifier's log, for the error message.
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            if let Ok(fd) = sys_bpf(BPF_PROG_LOAD, &mut attr) {
                return Ok(owned(fd));
            }
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            Err(Error::Msg(format!(
                "loading the device cgroup eBPF program: {e}; verifier: {}",
                String::from_utf8_lossy(&log[..end]).trim()
            )))
        }
    }
}

/// Ids of the device programs attached to the cgroup `dir` itself.
fn attached(dir: &OwnedFd) -> std::io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut q = QueryAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_QUERY, &mut q)?;
    ids.truncate(q.prog_cnt as usize);
    Ok(ids)
}

/// How many device programs are attached to the cgroup directory `dir`.
pub fn attached_count(dir: &Path) -> Result<usize> {
    let d = crate::open_fd(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    attached(&d)
        .map(|v| v.len())
        .map_err(|e| crate::io_err(dir, e))
}

/// Enforces `rules` on the cgroup directory `dir`: attaches the new program
/// (multi mode, as runc and systemd do) and then detaches the ones attached
/// before, so there is never a moment without a filter (both together are
/// only stricter).
pub fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let prog = load(&program(rules)?)?;
    let d = crate::open_fd(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let ctx = |what: &str, e: std::io::Error| {
        Error::Msg(format!(
            "{what} device cgroup eBPF program on {}: {e}",
            dir.display()
        ))
    };
    let old = attached(&d).map_err(|e| ctx("querying the", e))?;
    let mut at = AttachAttr {
        target_fd: d.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_ATTACH, &mut at).map_err(|e| ctx("attaching the", e))?;
    for id in old {
        let mut g = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        let old_fd = match sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut g) {
            Ok(fd) => owned(fd),
            // Detached meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(ctx("opening an old", e)),
        };
        let mut dt = AttachAttr {
            target_fd: d.as_raw_fd() as u32,
            attach_bpf_fd: old_fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        match sys_bpf(BPF_PROG_DETACH, &mut dt) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(ctx("detaching an old", e)),
        }
    }
    Ok(())
}
