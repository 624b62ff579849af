//! `ferro img`: qemu-img's subcommands, flags, output and exit codes over the
//! `block` crate.
//!
//! Dependencies: `indicatif` (progress bar for `convert -p`).

/// `ferro img …` arguments (everything after `img`).
#[derive(clap::Args, Debug)]
#[command(disable_help_subcommand = true)]
pub struct ImgArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs one `ferro img` command; returns the process exit code (qemu-img's).
pub fn main(_args: ImgArgs) -> i32 {
    todo!()
}
