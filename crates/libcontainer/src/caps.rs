//! Linux capabilities: the five OCI sets mapped onto prctl/capset.
//! Written against the raw syscalls (capset v3) to avoid a dependency for
//! forty lines.

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

/// Capability numbers by name, from linux/capability.h.
const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub fn all_names() -> &'static [&'static str] {
    NAMES
}

/// Highest capability the running kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn bits(set: &Option<Capabilities>) -> Result<u64> {
    let mut b = 0u64;
    for c in set.iter().flatten() {
        let name = serde_json::to_value(c)?;
        let name = name.as_str().unwrap_or_default();
        let n = NAMES
            .iter()
            .position(|x| *x == name)
            .with_context(|| format!("unknown capability {name}"))?;
        if n as u32 <= last_cap() {
            b |= 1 << n;
        }
    }
    Ok(b)
}

/// The sets as bitmasks: (bounding, effective, permitted, inheritable, ambient).
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl CapSets {
    pub fn from_spec(c: &LinuxCapabilities) -> Result<Self> {
        Ok(CapSets {
            bounding: bits(c.bounding())?,
            effective: bits(c.effective())?,
            permitted: bits(c.permitted())?,
            inheritable: bits(c.inheritable())?,
            ambient: bits(c.ambient())?,
        })
    }

    /// Drops everything outside the bounding set. Needs CAP_SETPCAP, so it
    /// runs before the uid change.
    pub fn drop_bounding(&self) -> Result<()> {
        for n in 0..=last_cap() {
            if self.bounding & (1 << n) == 0 {
                // SAFETY: prctl with integer arguments.
                let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong, 0, 0, 0) };
                if r != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        bail!("dropping {} from the bounding set: {e}", NAMES[n as usize]);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets effective/permitted/inheritable, then raises the ambient set.
    pub fn apply(&self) -> Result<()> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut hdr = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [
            Data {
                effective: self.effective as u32,
                permitted: self.permitted as u32,
                inheritable: self.inheritable as u32,
            },
            Data {
                effective: (self.effective >> 32) as u32,
                permitted: (self.permitted >> 32) as u32,
                inheritable: (self.inheritable >> 32) as u32,
            },
        ];
        // SAFETY: capset v3 takes a header and two data structs, laid out as above.
        let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
        if r != 0 {
            bail!("capset: {}", std::io::Error::last_os_error());
        }
        for n in 0..=last_cap() {
            if self.ambient & (1 << n) != 0 {
                // SAFETY: prctl with integer arguments.
                let r = unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        n as libc::c_ulong,
                        0,
                        0,
                    )
                };
                // Raising an ambient cap not in permitted+inheritable fails;
                // runc ignores that too.
                let _ = r;
            }
        }
        Ok(())
    }
}
