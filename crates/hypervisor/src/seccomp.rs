//! seccomp-bpf filters for the KVM VMM's threads, Firecracker-style: each
//! thread installs the filter for its role when it starts.
//!
//! - [`Role::Vcpu`]: vCPU threads, and the virtio worker threads they spawn
//!   when a guest activates a device (a thread inherits its creator's
//!   filter), so it also allows disk and tap I/O. ioctl is limited to the
//!   vCPU and IRQ-line requests.
//! - [`Role::Vmm`]: installed on every thread the main thread has started
//!   (control socket, console socket, signals, console input) at once
//!   (TSYNC), before the vCPU threads start: waiting, terminal and socket
//!   I/O, the status file, raising IRQ lines, kicking vCPUs. It is a
//!   superset of the vCPU filter, which the vCPU threads add on top.
//!
//! A denied call raises SIGSYS (`SECCOMP_RET_TRAP`); the handler installed
//! by [`install_sigsys_handler`] names the syscall and the thread on stderr
//! and exits with status 1 (as Firecracker does with its own code), unless
//! the action is [`Action::Kill`].

use std::collections::BTreeMap;
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Vcpu,
    Vmm,
}

/// What a denied syscall does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGSYS: a message naming the syscall, then exit status 1.
    Trap,
    /// The kernel kills the process (SIGSYS, no message).
    Kill,
}

const KVMIO: u64 = 0xae;
const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
pub const KVM_RUN: u64 = io(0x80);
pub const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
pub const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());
pub const KVM_IRQ_LINE: u64 = iow(0x61, std::mem::size_of::<kvm_bindings::kvm_irq_level>());
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const TCSETSW: u64 = 0x5403;
const TCSETSF: u64 = 0x5404;
const TIOCGWINSZ: u64 = 0x5413;
const FIONBIO: u64 = 0x5421;

/// Syscalls every thread needs: memory, futexes, signals, time, exit,
/// plain I/O on descriptors it already holds, and thread creation.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_fcntl,
    libc::SYS_tgkill,
];

/// Disk and tap I/O of the virtio workers (and the vCPU threads that
/// handle their notifications synchronously).
const DEVICE: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_copy_file_range,
];

/// The main thread and its helpers: sockets (control and console sockets,
/// accepted and served after setup), waiting for children, signals.
const VMM: &[i64] = &[
    // vCPU threads start under this filter and add theirs (filters only
    // ever narrow what is allowed).
    libc::SYS_seccomp,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_rt_sigaction,
    libc::SYS_kill,
    libc::SYS_wait4,
    libc::SYS_openat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_preadv,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
];

fn ioctl_rules(reqs: &[u64]) -> Vec<SeccompRule> {
    reqs.iter()
        .map(|&r| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                r,
            )
            .expect("valid condition")])
            .expect("valid rule")
        })
        .collect()
}

/// The compiled filter for `role`.
pub fn filter(role: Role, action: Action) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // The VMM filter is installed on every thread before the vCPU threads
    // start, so it must allow all the vCPU filter does.
    let extra: &[&[i64]] = match role {
        Role::Vcpu => &[DEVICE],
        Role::Vmm => &[DEVICE, VMM],
    };
    for &s in COMMON.iter().chain(extra.iter().copied().flatten()) {
        rules.insert(s, vec![]);
    }
    let ioctls: &[u64] = match role {
        Role::Vcpu => &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_IRQ_LINE, FIONBIO],
        Role::Vmm => &[
            KVM_RUN,
            KVM_IRQ_LINE,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            TCGETS,
            TCSETS,
            TCSETSW,
            TCSETSF,
            TIOCGWINSZ,
            FIONBIO,
        ],
    };
    rules.insert(libc::SYS_ioctl, ioctl_rules(ioctls));
    let deny = match action {
        Action::Trap => SeccompAction::Trap,
        Action::Kill => SeccompAction::KillProcess,
    };
    let f = SeccompFilter::new(rules, deny, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    f.try_into().map_err(|e| format!("seccomp filter: {e:?}"))
}

/// Installs `prog` on the calling thread (and the threads it creates
/// later).
pub fn apply(prog: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(prog).map_err(|e| format!("cannot install the seccomp filter: {e}"))
}

/// Installs `prog` on every thread of the process (SECCOMP_FILTER_FLAG_TSYNC);
/// threads created later inherit it.
pub fn apply_all_threads(prog: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter_all_threads(prog)
        .map_err(|e| format!("cannot install the seccomp filter on all threads: {e}"))
}

/// Async-signal-safe decimal formatting into `buf`; returns the digits.
fn fmt_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; `_sigsys` keeps
    // the syscall number at byte 24 (after signo, errno, code and the
    // call address) on x86-64.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() } as u64;
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(16);
    let mut num = [0u8; 20];
    let parts: [&[u8]; 5] = [
        b"\r\nferro: seccomp: thread '",
        &name[..name_len],
        b"' made system call ",
        fmt_u64(nr, &mut num),
        b", which its filter denies (see `ausyscall` or asm/unistd_64.h for the name; --seccomp=off disables the filters)\r\n",
    ];
    for p in parts {
        // SAFETY: write(2) on stderr is async-signal-safe; `p` is valid.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(1) };
}

/// Installs the SIGSYS handler that reports denied syscalls (once).
pub fn install_sigsys_handler() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
            .map_err(|e| format!("cannot install the SIGSYS handler: {e}"));
    });
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // From linux/kvm.h as compiled for x86-64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_IRQ_LINE, 0x4008_ae61);
    }

    /// Runs `child` in a fresh process (this test binary, one test), so the
    /// filter never lands on the test harness.
    fn in_child(test: &str, mode: &str) -> std::process::Output {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FERRO_SECCOMP_CHILD", mode)
            .output()
            .unwrap()
    }

    #[test]
    #[ignore = "helper: denied_syscall_is_reported_or_kills runs it in a child process"]
    fn child_makes_a_denied_syscall() {
        let mode = std::env::var("FERRO_SECCOMP_CHILD").expect("run by in_child");
        let action = if mode == "kill" {
            Action::Kill
        } else {
            Action::Trap
        };
        install_sigsys_handler().unwrap();
        let prog = filter(Role::Vcpu, action).unwrap();
        // SAFETY: prctl(PR_SET_NAME) with a NUL-terminated string.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"vcpu0".as_ptr()) };
        apply(&prog).unwrap();
        // Allowed: the thread keeps working.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"FILTERED\n");
        // Denied for vCPU threads: socket(2).
        // SAFETY: a plain syscall; it should never return.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        eprintln!("SURVIVED");
    }

    #[test]
    fn denied_syscall_is_reported_or_kills() {
        let t = "seccomp::tests::child_makes_a_denied_syscall";
        let o = in_child(t, "trap");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("FILTERED"), "{err}");
        assert!(!err.contains("SURVIVED"), "{err}");
        assert_eq!(o.status.code(), Some(1), "{err}");
        let want = format!("thread 'vcpu0' made system call {}", libc::SYS_socket);
        assert!(err.contains(&want), "{err}");
        let o = in_child(t, "kill");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("FILTERED") && !err.contains("SURVIVED"),
            "{err}"
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(libc::SIGSYS), "{err}");
    }
}
