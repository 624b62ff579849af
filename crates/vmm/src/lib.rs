//! The VMM: turns `ferro run` flags into a machine, wires the console to the
//! terminal (Ctrl-A X quits), runs it and maps the guest's end to an exit code.
//!
//! Exit codes: guest poweroff 0; host stop (Ctrl-A X) 0; a guest reboot
//! restarts the machine (with `--no-reboot`, ferro exits 0 instead, as
//! QEMU's `-no-reboot`); HTIF/syscon failure code N exits N (1 if N does
//! not fit); a guest kernel panic exits 3 ("ferro: guest panicked");
//! host-side errors exit 1 with a message.

pub mod console;
#[cfg(target_arch = "x86_64")]
pub mod kvm;
pub mod snapshot;
pub mod virtio;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arch::riscv64::{Blob, Boot, MachineBuilder, MachineConfig};
use riscv_emu::ExitReason;

/// `ferro run` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Guest architecture: riscv64 (emulated) or x86_64 (KVM).
    #[arg(long, default_value = "riscv64", value_parser = ["riscv64", "x86_64"])]
    pub arch: String,
    /// Accelerator: emu (the riscv64 emulator) or kvm (x86_64 guests on
    /// /dev/kvm). Default: emu for riscv64, kvm for x86_64.
    #[arg(long, value_parser = ["emu", "kvm"])]
    pub accel: Option<String>,
    /// Linux `Image` (with firmware) or, with `--bios none`, a bare-metal ELF.
    /// Without it, the default guest boots.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line, passed as-is (default guest: "console=ttyS0").
    #[arg(long)]
    pub append: Option<String>,
    /// M-mode firmware (OpenSBI fw_dynamic/fw_jump, raw or ELF). Default: the
    /// default guest's OpenSBI fw_dynamic.bin.
    #[arg(long)]
    pub firmware: Option<PathBuf>,
    /// `none` runs `--kernel` as a bare-metal ELF in M mode (HTIF); a path is
    /// the same as `--firmware`.
    #[arg(long, conflicts_with = "firmware")]
    pub bios: Option<String>,
    /// Number of harts (1 to 8).
    #[arg(long, visible_alias = "smp", default_value_t = 1)]
    pub cpus: usize,
    /// Guest RAM: a number with an optional K/M/G suffix (plain numbers are MiB, as in QEMU).
    #[arg(long, short = 'm', visible_alias = "mem", default_value = "512M")]
    pub memory: String,
    /// Exit (status 0) when the guest reboots instead of restarting it.
    #[arg(long)]
    pub no_reboot: bool,
    /// Write the generated device tree blob to this file and exit.
    #[arg(long, value_name = "FILE")]
    pub dumpdtb: Option<PathBuf>,
    /// Print instructions retired and MIPS to stderr when the VM ends.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub virtio: Box<virtio::VirtioArgs>,
}

impl Default for RunArgs {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            a: RunArgs,
        }
        <Wrap as clap::Parser>::parse_from(["run"]).a
    }
}

/// Parses a QEMU-style memory size: plain numbers are MiB; K/M/G/T suffixes
/// (optionally followed by `B` or `iB`) are binary units.
pub fn parse_memory(s: &str) -> Result<u64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let num_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(num_end);
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid memory size {s:?}: expected e.g. 512M or 2G"))?;
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" | "m" => 20,
        "k" => 10,
        "g" => 30,
        "t" => 40,
        _ => bail!("invalid memory size {s:?}: unknown unit {unit:?} (use K, M, G or T)"),
    };
    n.checked_mul(1 << shift)
        .filter(|&v| v > 0)
        .with_context(|| format!("invalid memory size {s:?}"))
}

/// Reads a boot file, refusing anything that cannot fit in guest RAM before
/// allocating for it.
fn read_blob(what: &str, path: &Path, limit: u64) -> Result<Blob> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{what} {}: cannot open", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {}: not a regular file", path.display());
    }
    if meta.len() == 0 {
        bail!("{what} {}: file is empty", path.display());
    }
    if meta.len() > limit {
        bail!(
            "{what} {} ({} MiB) does not fit in guest memory ({} MiB); raise --memory",
            path.display(),
            meta.len() >> 20,
            limit >> 20
        );
    }
    let data =
        std::fs::read(path).with_context(|| format!("{what} {}: cannot read", path.display()))?;
    Ok(Blob {
        label: format!("{what} {}", path.display()),
        data,
    })
}

enum BootFiles {
    Firmware {
        firmware: Blob,
        kernel: Option<Blob>,
        initrd: Option<Blob>,
    },
    Bare {
        elf: Blob,
    },
}

impl BootFiles {
    fn boot(&self) -> Boot {
        match self {
            BootFiles::Firmware {
                firmware,
                kernel,
                initrd,
            } => Boot::Firmware {
                firmware: firmware.clone(),
                kernel: kernel.clone(),
                initrd: initrd.clone(),
            },
            BootFiles::Bare { elf } => Boot::BareElf { elf: elf.clone() },
        }
    }
}

/// Virtio devices (`--disk`, `--net`, `--rng`: issue 4) are attached here,
/// through [`MachineBuilder::add_virtio`] / [`MachineBuilder::attach_virtio`].
fn attach_virtio(builder: &mut MachineBuilder, args: &RunArgs) -> Result<()> {
    virtio::attach(builder, &args.virtio).map(|_| ())
}

/// Runs a VM; returns the process exit code.
pub fn run(args: RunArgs) -> Result<i32> {
    match (args.arch.as_str(), args.accel.as_deref()) {
        #[cfg(target_arch = "x86_64")]
        ("x86_64", None | Some("kvm")) => return kvm::run(&args),
        ("x86_64", _) => bail!("x86_64 guests run only with --accel kvm (on an x86-64 host)"),
        (_, Some("kvm")) => {
            bail!("--accel kvm runs x86_64 guests (--arch x86_64); riscv64 guests use --accel emu")
        }
        _ => {}
    }
    let ram_size = parse_memory(&args.memory)?;
    if !(1..=8).contains(&args.cpus) {
        bail!("--cpus {}: the riscv64 machine supports 1 to 8", args.cpus);
    }
    let bare = args.bios.as_deref() == Some("none");
    let mut cmdline = args.append.clone();
    let files = if bare {
        let k = args
            .kernel
            .as_ref()
            .context("--bios none needs --kernel PROGRAM.elf")?;
        if args.initrd.is_some() {
            bail!("--initrd needs firmware: it cannot be used with --bios none");
        }
        BootFiles::Bare {
            elf: read_blob("kernel", k, ram_size)?,
        }
    } else {
        let fw_path = args
            .firmware
            .clone()
            .or_else(|| args.bios.clone().map(PathBuf::from));
        let (kernel, initrd, fw_path) = match &args.kernel {
            Some(k) => {
                let fw = match fw_path {
                    Some(f) => f,
                    None => guest::DefaultGuest::cached()
                        .map(|g| g.firmware)
                        .context("no firmware given (--firmware FILE), and the default guest's OpenSBI is not cached")?,
                };
                (k.clone(), args.initrd.clone(), fw)
            }
            None => {
                if args.initrd.is_some() {
                    bail!("--initrd needs --kernel");
                }
                let g = guest::ensure()?;
                cmdline.get_or_insert_with(|| guest::DEFAULT_CMDLINE.to_string());
                (g.kernel, Some(g.initrd), fw_path.unwrap_or(g.firmware))
            }
        };
        BootFiles::Firmware {
            firmware: read_blob("firmware", &fw_path, ram_size)?,
            kernel: Some(read_blob("kernel", &kernel, ram_size)?),
            initrd: initrd
                .map(|i| read_blob("initrd", &i, ram_size))
                .transpose()?,
        }
    };
    let cmdline = cmdline.unwrap_or_default();

    let build = |boot: Boot| -> Result<arch::riscv64::Machine> {
        let htif_console: Box<dyn FnMut(u8) + Send> = Box::new(|b| {
            use std::io::Write;
            let mut o = std::io::stdout();
            let _ = o.write_all(&[b]);
            let _ = o.flush();
        });
        let mut builder = MachineBuilder::new(MachineConfig {
            harts: args.cpus,
            ram_size,
            boot,
            cmdline: cmdline.clone(),
            console_out: Box::new(std::io::stdout()),
            htif_console: Some(htif_console),
        })?;
        attach_virtio(&mut builder, &args)?;
        Ok(builder.build()?)
    };

    let mut machine = build(files.boot())?;
    if let Some(p) = &args.dumpdtb {
        std::fs::write(p, machine.dtb())
            .with_context(|| format!("cannot write {}", p.display()))?;
        return Ok(0);
    }

    let target = console::Target::default();
    target.set(machine.uart(), quit_on(machine.control()));
    let tty = console::stdin_is_tty();
    let _raw = console::RawTerminal::enter();
    console::spawn_input(target.clone(), tty);

    let start = Instant::now();
    let mut instret = 0;
    let code = loop {
        let reason = machine.run();
        instret += machine.instret();
        match reason {
            ExitReason::Poweroff => break Ok(0),
            ExitReason::Stopped => {
                eprint!("\r\nferro: terminated\r\n");
                break Ok(0);
            }
            ExitReason::Reset if args.no_reboot => break Ok(0),
            ExitReason::Reset => {
                // Release disks and TAPs before the new machine reopens them.
                drop(machine);
                machine = build(files.boot())?;
                target.set(machine.uart(), quit_on(machine.control()));
            }
            ExitReason::ExitCode(c) => {
                eprint!("\r\nferro: guest exited with code {c}\r\n");
                break Ok(if (1..=255).contains(&c) { c as i32 } else { 1 });
            }
            ExitReason::GuestPanic => {
                eprint!("\r\nferro: guest panicked\r\n");
                break Ok(3);
            }
            ExitReason::Error(e) => break Err(anyhow::anyhow!("emulation error: {e}")),
        }
    };
    if args.stats {
        let secs = start.elapsed().as_secs_f64();
        eprint!(
            "\r\nferro: {instret} instructions in {secs:.2} s ({:.1} MIPS)\r\n",
            instret as f64 / secs / 1e6
        );
    }
    code
}

/// `ferro run` with no arguments: fetch (once) and boot the default guest.
/// Ctrl-A X on the emulator: every hart stops at its next block end.
fn quit_on(control: riscv_emu::Control) -> console::Quit {
    Arc::new(move || control.request_exit(riscv_emu::ExitReason::Stopped))
}

pub fn run_default() -> Result<i32> {
    run(RunArgs::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory("512").unwrap(), 512 << 20);
        assert_eq!(parse_memory("2G").unwrap(), 2 << 30);
        assert_eq!(parse_memory("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_memory("65536k").unwrap(), 64 << 20);
        for bad in ["", "M", "12X", "-1", "0", "99999999999999T"] {
            assert!(parse_memory(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_memory("12X")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
    }

    #[test]
    fn bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        let e = read_blob("kernel", &missing, 1 << 20).unwrap_err();
        assert!(
            format!("{e:#}").contains("kernel") && format!("{e:#}").contains("nope"),
            "{e:#}"
        );
        let big = d.path().join("big");
        std::fs::write(&big, vec![1u8; 4096]).unwrap();
        let e = read_blob("initrd", &big, 1024).unwrap_err().to_string();
        assert!(e.contains("does not fit in guest memory"), "{e}");
        let empty = d.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(read_blob("firmware", &empty, 1024)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(read_blob("firmware", d.path(), 1024)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
    }
}
