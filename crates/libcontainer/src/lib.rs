//! libcontainer: Ferrovisor's low-level OCI runtime (the runc/youki layer).
//!
//! Given an OCI bundle (config.json + rootfs) it creates the container's
//! namespaces, cgroups (via `libcgroups`), root filesystem, credentials and
//! seccomp filter, and runs the container process; `cli` exposes it as the
//! runc-compatible `ferro oci` command, which is the contract with engines.
//!
//! Process model, chosen for speed: the runtime clones the container init
//! once (no re-exec of the binary), with every new namespace in the one
//! `clone` call; parent and child then talk over a socketpair (`sync`). A
//! `create`d container waits on `exec.fifo` in its state directory until
//! `start` writes to it, as runc's does.
//!
//! Dependencies: `oci-spec` for the runtime-spec types (maintained with the
//! spec by the youki project, so config.json, state and features JSON match
//! the spec field for field); `libseccomp` (binding to Debian's libseccomp)
//! for seccomp, because OCI profiles need per-rule actions, argument
//! comparisons, syscall names resolved per architecture and multi-arch
//! filters, which is exactly libseccomp's model (seccompiler has one action
//! per filter and no public name table); `clap` for the CLI.

pub mod caps;
pub mod cli;
pub mod config;
pub mod container;
pub mod fuzzing;
pub mod hooks;
pub mod init;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod sync;
pub mod sys;

pub use container::Container;

/// With `FERRO_OCI_TRACE` set, prints a timestamp (µs since the first
/// call, the CLI's start) and `what` to stderr: where the wall time of
/// create/run/delete goes, without strace's overhead.
pub fn trace(what: &str) {
    static T0: std::sync::OnceLock<Option<std::time::Instant>> = std::sync::OnceLock::new();
    let t0 =
        T0.get_or_init(|| std::env::var_os("FERRO_OCI_TRACE").map(|_| std::time::Instant::now()));
    if let Some(t0) = t0 {
        eprintln!(
            "ferro-oci trace {:>6} us pid {}: {what}",
            t0.elapsed().as_micros(),
            std::process::id()
        );
    }
}
