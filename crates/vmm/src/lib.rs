//! The VMM: turns `ferro run` flags into a machine, wires the console to the
//! terminal (Ctrl-A X quits), runs it and maps the guest's end to an exit code.

/// `ferro run` arguments.
#[derive(clap::Args, Debug)]
pub struct RunArgs {}

/// Runs a VM; returns the process exit code.
pub fn run(_args: RunArgs) -> anyhow::Result<i32> {
    todo!()
}

/// `ferro run` with no arguments: fetch (once) and boot the default guest.
pub fn run_default() -> anyhow::Result<i32> {
    todo!()
}
