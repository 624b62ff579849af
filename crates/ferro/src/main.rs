//! `ferro`: one binary, one subcommand per job. Each subcommand's flags are
//! owned by the crate that implements it.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ferro",
    version,
    about = "Ferrovisor: VMs, images and containers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot a VM (with no arguments: the default guest, console on this terminal).
    Run(vmm::RunArgs),
    /// Create, inspect and convert disk images (qemu-img compatible).
    #[command(disable_help_flag = true)]
    Img(imgtool::ImgArgs),
    /// Fetch and prepare the default guest.
    Guest(guest::GuestArgs),
    /// Docker-like containers and images (run, ps, exec, logs, build, pull…).
    Container(engine::ContainerArgs),
    /// List containers (`ferro container ps`).
    Ps(engine::PsArgs),
    /// List images (`ferro container images`).
    Images(engine::ImagesArgs),
    /// Low-level OCI container runtime (runc-compatible).
    Oci(libcontainer::cli::OciArgs),
    /// Manage persistent VMs through the ferrod daemon (virsh-like).
    Vm(ferrod::VmArgs),
    /// Run the management daemon (ferrod): definitions, lifecycle, REST API.
    Daemon(ferrod::DaemonArgs),
}

/// `ferrod [FLAGS]`: the daemon, when the binary is invoked by that name.
#[derive(Parser, Debug)]
#[command(name = "ferrod", version, about = "Ferrovisor's management daemon")]
struct Ferrod {
    #[command(flatten)]
    args: ferrod::DaemonArgs,
}

/// `ferro oci …` parsed on its own: the OCI runtime is started once per
/// container operation by engines, so it skips building the whole CLI and
/// the tracing subscriber (libcontainer does not log through tracing);
/// that halves its startup CPU (docs/BENCHMARKS.md, containers).
#[derive(Parser, Debug)]
#[command(
    name = "ferro oci",
    bin_name = "ferro oci",
    about = "Low-level OCI container runtime (runc-compatible)"
)]
struct OciOnly {
    #[command(flatten)]
    args: libcontainer::cli::OciArgs,
}

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "oci") {
        let args = OciOnly::parse_from(std::env::args_os().skip(1)).args;
        std::process::exit(libcontainer::cli::main(args));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("ferrod")) {
        std::process::exit(report(ferrod::daemon_main(Ferrod::parse().args)));
    }
    let cli = Cli::parse();
    let code = match cli.cmd {
        Some(Cmd::Img(a)) => imgtool::main(a),
        Some(Cmd::Guest(a)) => report(guest::main(a)),
        Some(Cmd::Run(a)) => report(vmm::run(a)),
        Some(Cmd::Container(a)) => engine::main(a),
        Some(Cmd::Ps(a)) => engine::ps_main(a),
        Some(Cmd::Images(a)) => engine::images_main(a),
        Some(Cmd::Oci(a)) => libcontainer::cli::main(a),
        Some(Cmd::Vm(a)) => report(ferrod::vm_main(a)),
        Some(Cmd::Daemon(a)) => report(ferrod::daemon_main(a)),
        None => report(vmm::run_default()),
    };
    std::process::exit(code);
}

fn report(r: anyhow::Result<i32>) -> i32 {
    r.unwrap_or_else(|e| {
        eprintln!("ferro: {e:#}");
        1
    })
}
