//! `ferro-oci`: the runtime as its own executable, for engines that take a
//! runc-compatible binary path (docker's `runtimes`, containerd's
//! `BinaryName`) and for the integration tests. Same CLI as `ferro oci`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "ferro-oci", version)]
struct Cli {
    #[command(flatten)]
    args: libcontainer::cli::OciArgs,
}

fn main() {
    std::process::exit(libcontainer::cli::main(Cli::parse().args));
}
