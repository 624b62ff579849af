//! `ferro img`: qemu-img's subcommands, flags, output and exit codes over the
//! `block` crate. This crate only parses arguments and prints; the image
//! work (formats, check, snapshots, commit, rebase…) lives in `block`.
//!
//! Every command writes through a [`Ctx`] so tests can run [`run`] in-process
//! and capture stdout/stderr.
//!
//! Dependencies: `indicatif` (progress bar for `-p`), `libc` (O_DIRECT and
//! localtime for the snapshot table). Arguments are parsed with a small
//! getopt work-alike ([`getopt`]) because qemu-img's syntax (options after
//! operands, negative sizes, `-o` lists) is GNU getopt's, not clap's.

use std::io::Write;
use std::path::Path;

pub mod bench;
pub mod crashtest;
mod create;
pub mod fuzzing;
pub mod getopt;
pub mod human;
mod info;
pub mod json;
mod ops;
pub mod opts;
pub mod size;

use block::{Format, Image, OpenOptions};

/// `ferro img …` arguments (everything after `img`).
#[derive(clap::Args, Debug)]
#[command(disable_help_subcommand = true)]
pub struct ImgArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs one `ferro img` command; returns the process exit code (qemu-img's).
pub fn main(args: ImgArgs) -> i32 {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    let code = run(&args.args, &mut out, &mut err);
    let _ = out.flush();
    code
}

/// The program name in messages, as qemu-img uses its own.
pub const PROG: &str = "ferro img";

/// Where a command prints.
pub struct Ctx<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub quiet: bool,
}

impl Ctx<'_> {
    /// qemu's `error_report`: "ferro img: msg" on stderr.
    pub fn error(&mut self, msg: &str) {
        let _ = writeln!(self.err, "{PROG}: {msg}");
    }
    /// Normal output, unless `-q`.
    pub fn print(&mut self, s: &str) {
        if !self.quiet {
            let _ = self.out.write_all(s.as_bytes());
        }
    }
}

/// How a command failed.
#[derive(Debug)]
pub enum Fail {
    /// A usage error: message, then "Try 'ferro img [CMD] --help'", exit 1.
    Usage(String),
    /// An option-parsing error, in glibc getopt's words; printed after
    /// "ferro img CMD:" like qemu-img 10 does, then the same "Try" line.
    Getopt(String),
    /// An error message and an exit code.
    Error(String, i32),
    /// Already reported; just the exit code.
    Code(i32),
}

impl Fail {
    pub fn msg(m: impl Into<String>) -> Fail {
        Fail::Error(m.into(), 1)
    }
}

pub type CmdResult = Result<i32, Fail>;

/// Runs `ferro img ARGS…` writing to `out`/`err`; returns the exit code.
pub fn run(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let mut ctx = Ctx {
        out,
        err,
        quiet: false,
    };
    let r = dispatch(args, &mut ctx);
    let _ = ctx.out.flush();
    // Usage hints name the subcommand once one was recognised.
    let prog = match args.first().map(String::as_str) {
        Some(c) if command(c).is_some() => format!("{PROG} {c}"),
        _ => PROG.to_string(),
    };
    match r {
        Ok(code) | Err(Fail::Code(code)) => code,
        Err(Fail::Usage(m)) => {
            ctx.error(&m);
            let _ = writeln!(ctx.err, "Try '{prog} --help' for more info");
            1
        }
        Err(Fail::Getopt(m)) => {
            let _ = writeln!(ctx.err, "{prog}: {m}");
            let _ = writeln!(ctx.err, "Try '{prog} --help' for more info");
            1
        }
        Err(Fail::Error(m, code)) => {
            ctx.error(&m);
            code
        }
    }
}

type Command = fn(&[String], &mut Ctx) -> CmdResult;

/// The qemu-img subcommands we implement (dispatch and usage hints both
/// read this table).
const COMMANDS: &[(&str, Command)] = &[
    ("create", create::create),
    ("info", info::info),
    ("check", info::check),
    ("map", info::map),
    ("snapshot", info::snapshot),
    ("convert", ops::convert),
    ("compare", ops::compare),
    ("resize", ops::resize),
    ("commit", ops::commit),
    ("rebase", ops::rebase),
    ("bench", bench::bench),
];

fn command(name: &str) -> Option<Command> {
    COMMANDS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

fn dispatch(args: &[String], ctx: &mut Ctx) -> CmdResult {
    let Some(cmd) = args.first() else {
        return Err(Fail::Usage("Not enough arguments".into()));
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "-h" | "--help" | "help" => {
            let _ = ctx.out.write_all(HELP.as_bytes());
            Ok(0)
        }
        "-V" | "--version" => {
            let _ = writeln!(ctx.out, "{PROG} version {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        // The crash test's writer (tests only; not part of qemu-img).
        "__crash-writer" => crashtest::writer(rest, ctx),
        other => match command(other) {
            Some(f) => f(rest, ctx),
            None => Err(Fail::Usage(format!("Command not found: {other}"))),
        },
    }
}

const HELP: &str = "\
usage: ferro img [standard options] command [command options]
Disk image utility, compatible with qemu-img's commands, flags, output and exit codes.

Command syntax:
  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename
  check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename
  commit [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename
  compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2
  convert [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] filename output_filename
  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]
  info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename
  map [--output=ofmt] [-f fmt] [--start-offset=offset] [--max-length=len] [-U] filename
  snapshot [-q] [-l | -a snapshot | -c snapshot | -d snapshot] [-U] filename
  rebase [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] [-U] -b backing_file [-F backing_fmt] filename
  resize [--shrink] [-f fmt] [--preallocation=prealloc] [-q] filename [+ | -]size

Supported formats: raw qcow2
";

/// Parses `-f`/`-O`/`-F` format names.
pub(crate) fn parse_format(s: &str) -> Option<Format> {
    match s {
        "raw" => Some(Format::Raw),
        "qcow2" => Some(Format::Qcow2),
        _ => None,
    }
}

/// qemu's wording for a failed open: "Could not open 'x': <why>".
pub(crate) fn open_error(path: &str, e: &block::Error) -> String {
    match e {
        block::Error::Io { source, .. } => {
            format!(
                "Could not open '{path}': Could not open '{path}': {}",
                io_text(source)
            )
        }
        other => format!("Could not open '{path}': {other}"),
    }
}

/// An io::Error as strerror() prints it (without Rust's "(os error N)").
pub(crate) fn io_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let s = std::io::Error::from_raw_os_error(code).to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
        None => e.to_string(),
    }
}

/// A block error's text for messages that add their own context.
pub(crate) fn block_text(e: &block::Error) -> String {
    match e {
        block::Error::Io { source, .. } => io_text(source),
        other => other.to_string(),
    }
}

/// Options for [`open_image`].
#[derive(Default, Clone, Copy)]
pub(crate) struct Open {
    pub read_only: bool,
    pub no_backing: bool,
    pub check: bool,
}

/// Opens `path` as qemu-img does: `-f` or probing, with qemu's warning when
/// a probed raw image is opened writable.
pub(crate) fn open_image(
    ctx: &mut Ctx,
    path: &str,
    fmt: Option<&str>,
    o: Open,
) -> Result<Image, Fail> {
    let format =
        match fmt {
            Some(f) => Some(parse_format(f).ok_or_else(|| {
                Fail::msg(format!("Could not open '{path}': Unknown driver '{f}'"))
            })?),
            None => None,
        };
    if format.is_none() && !o.read_only {
        if let Ok(Format::Raw) = block::probe(Path::new(path)) {
            let _ = writeln!(
                ctx.err,
                "WARNING: Image format was not specified for '{path}' and probing guessed raw.\n         \
                 Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         \
                 Specify the 'raw' format explicitly to remove the restrictions."
            );
        }
    }
    let opts = OpenOptions {
        format,
        read_only: o.read_only,
        no_backing: o.no_backing,
        check: o.check,
        ..Default::default()
    };
    Image::open(Path::new(path), &opts).map_err(|e| Fail::msg(open_error(path, &e)))
}

/// `--output=human|json`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutFmt {
    Human,
    Json,
}

pub(crate) fn parse_output(v: &str) -> Result<OutFmt, Fail> {
    match v {
        "human" => Ok(OutFmt::Human),
        "json" => Ok(OutFmt::Json),
        _ => Err(Fail::Usage(format!(
            "--output expects 'human' or 'json' not '{v}'"
        ))),
    }
}

/// `-t`/`-T` cache modes qemu accepts; returns whether it bypasses the
/// host page cache (O_DIRECT).
pub(crate) fn parse_cache(v: &str) -> Option<bool> {
    match v {
        "none" | "directsync" => Some(true),
        "writeback" | "writethrough" | "unsafe" => Some(false),
        _ => None,
    }
}

/// A progress bar for `-p` (indicatif), drawn on stderr when it is a
/// terminal; counts percent like qemu's "(42.00/100%)".
pub(crate) fn progress_bar(enabled: bool) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let pb = indicatif::ProgressBar::new(10000);
    pb.set_style(
        indicatif::ProgressStyle::with_template("    {bar:40} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(pb)
}

pub(crate) fn progress_set(pb: &Option<indicatif::ProgressBar>, done: u64, total: u64) {
    if let Some(pb) = pb {
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        pb.set_position((frac * 10000.0) as u64);
        pb.set_message(format!("({:.2}/100%)", frac * 100.0));
    }
}
