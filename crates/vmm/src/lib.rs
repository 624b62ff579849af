//! The VMM: turns `ferro run` flags into a machine, wires the console to the
//! terminal (Ctrl-A X quits) or to `--console-socket`, serves `--control`
//! (docs/CONTROL.md), runs the machine and maps the guest's end to an exit
//! code and reason (also written to `--status-file`).
//!
//! Exit codes (docs/CONTROL.md): guest poweroff 0 (`poweroff`); host stop —
//! `quit` command, Ctrl-A X, SIGTERM/SIGINT — 0 (`quit`, disks flushed
//! first); a guest reboot restarts the machine (with `--no-reboot`, ferro
//! exits 0, `reboot`, as QEMU's `-no-reboot`); a guest crash (kernel panic
//! via pvpanic, KVM triple fault or internal error) 3 (`crashed`); HTIF/syscon failure code N exits
//! N (1 if N does not fit, `guest-failure`); host-side errors exit 1
//! (`error`) with a message.
//!
//! Dependencies: `signal-hook` turns SIGTERM/SIGINT into an ordinary quit
//! on a normal thread (self-pipe), so the exit path that flushes the disks
//! runs outside signal context; vmm-sys-util's signal helpers only install
//! raw handlers, which could do no more than set a flag nobody waits on.
//! `serde`/`serde_json` for the control protocol and the status file.

pub mod console;
pub mod control;
pub mod emu;
#[cfg(target_arch = "x86_64")]
pub mod kvm;
pub mod serial_out;
pub mod snapshot;
pub mod uuid;
pub mod virtio;

use std::io::Write;
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
    /// VM name (as QEMU's -name), reported by the control socket's `status`.
    #[arg(long)]
    pub name: Option<String>,
    /// Machine UUID (as QEMU's -uuid), shown to the guest (riscv64: the
    /// device tree's root `serial-number`). Default: a random v4 UUID.
    #[arg(long, value_parser = parse_uuid_arg)]
    pub uuid: Option<String>,
    /// Serve the VM control protocol (JSON lines, docs/CONTROL.md) on a Unix
    /// socket (mode 0600). Also adds the guest agent's channel on riscv64.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Serve the serial console on a Unix socket (mode 0600), one client at a
    /// time, instead of the terminal.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Append all guest serial output to FILE as well.
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// Just before exiting, write {"exit_code","reason","message"} to FILE
    /// (atomically).
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// Where VM-state snapshots (`snapshot-create` on --control) are kept.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Start from a state file written by `save` (riscv64): the machine's
    /// configuration comes from the file; its disks must be the same files.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// Start paused (QEMU's -S); `resume` on --control starts the CPUs.
    #[arg(short = 'S', long)]
    pub paused: bool,
    /// x86_64: where a bzImage's compressed kernel is unpacked. `auto`: on
    /// the host when ferro decodes its format (gzip, xz, zstd), then the ELF
    /// boots through its PVH (or 64-bit) entry, else in the guest; `host`:
    /// on the host or fail; `guest`: the kernel's own decompressor (and its
    /// KASLR) runs in the guest.
    #[arg(long, value_enum, default_value_t = KernelUnpack::Auto)]
    pub kernel_unpack: KernelUnpack,
    /// x86_64/KVM: seccomp filters on the VMM's threads (Firecracker-style,
    /// per thread role). `on`: a denied system call is reported (thread and
    /// syscall number) and the run ends with status 1; `kill`: the kernel
    /// kills the process silently; `off`: no filters.
    #[arg(long, value_enum, default_value_t = SeccompMode::On)]
    pub seccomp: SeccompMode,
    #[command(flatten)]
    pub virtio: Box<virtio::VirtioArgs>,
}

/// `--kernel-unpack` (x86_64).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelUnpack {
    Auto,
    Host,
    Guest,
}

/// `--seccomp` (x86_64/KVM).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompMode {
    On,
    Kill,
    Off,
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

fn parse_uuid_arg(s: &str) -> Result<String, String> {
    uuid::parse(s).map_err(|e| e.to_string())
}

/// How a run ended: the process exit code and the status file's contents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub exit_code: i32,
    /// `poweroff`, `reboot`, `quit`, `crashed`, `guest-failure` or `error`.
    pub reason: &'static str,
    pub message: String,
}

impl Outcome {
    pub fn new(exit_code: i32, reason: &'static str, message: impl Into<String>) -> Self {
        Outcome {
            exit_code,
            reason,
            message: message.into(),
        }
    }
}

/// Writes the status file atomically (temp file in the same directory,
/// fsync, rename).
pub fn write_status_file(path: &Path, o: &Outcome) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("--status-file {}: not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut text = serde_json::to_string(o)?;
    text.push('\n');
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("--status-file {}: cannot write", path.display()))
}

/// SIGTERM/SIGINT call `quit` (on a plain thread) with the signal's name.
pub fn quit_on_signals(quit: impl Fn(&'static str) + Send + 'static) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("cannot install the SIGTERM/SIGINT handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                quit(if s == SIGTERM { "SIGTERM" } else { "SIGINT" });
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
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

/// Resolves the boot files `ferro run`'s flags name (the default guest's
/// when none), and the command line the default guest wants.
fn boot_paths(args: &RunArgs) -> Result<(snapshot::BootPaths, Option<String>)> {
    let mut cmdline = args.append.clone();
    if args.bios.as_deref() == Some("none") {
        let k = args
            .kernel
            .as_ref()
            .context("--bios none needs --kernel PROGRAM.elf")?;
        if args.initrd.is_some() {
            bail!("--initrd needs firmware: it cannot be used with --bios none");
        }
        let p = snapshot::BootPaths {
            kernel: Some(k.clone()),
            bare: true,
            ..Default::default()
        };
        return Ok((p, cmdline));
    }
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
    let p = snapshot::BootPaths {
        firmware: Some(fw_path),
        kernel: Some(kernel),
        initrd,
        bare: false,
    };
    Ok((p, cmdline))
}

/// Reads the boot files.
fn read_boot(p: &snapshot::BootPaths, ram_size: u64) -> Result<BootFiles> {
    let kernel = p.kernel.as_ref().context("no kernel to boot")?;
    if p.bare {
        return Ok(BootFiles::Bare {
            elf: read_blob("kernel", kernel, ram_size)?,
        });
    }
    let fw = p.firmware.as_ref().context("no firmware to boot")?;
    Ok(BootFiles::Firmware {
        firmware: read_blob("firmware", fw, ram_size)?,
        kernel: Some(read_blob("kernel", kernel, ram_size)?),
        initrd: p
            .initrd
            .as_ref()
            .map(|i| read_blob("initrd", i, ram_size))
            .transpose()?,
    })
}

/// Runs a VM; returns the process exit code. With `--status-file`, the
/// outcome (errors included) is written there once everything, disks
/// included, has been closed.
pub fn run(args: RunArgs) -> Result<i32> {
    let status_file = args.status_file.clone();
    let r = run_vm(args);
    if let Some(p) = &status_file {
        let o = match &r {
            Ok(o) => o.clone(),
            Err(e) => Outcome::new(1, "error", format!("{e:#}")),
        };
        write_status_file(p, &o)?;
    }
    r.map(|o| o.exit_code)
}

/// Runs a VM to its end.
pub fn run_vm(args: RunArgs) -> Result<Outcome> {
    if args.arch != "riscv64" && (args.restore.is_some() || args.paused) {
        bail!("--restore and -S are supported on riscv64 (the emulator) only");
    }
    match (args.arch.as_str(), args.accel.as_deref()) {
        #[cfg(target_arch = "x86_64")]
        ("x86_64", None | Some("kvm")) => return kvm::run(&args),
        ("x86_64", _) => bail!("x86_64 guests run only with --accel kvm (on an x86-64 host)"),
        (_, Some("kvm")) => {
            bail!("--accel kvm runs x86_64 guests (--arch x86_64); riscv64 guests use --accel emu")
        }
        _ => {}
    }
    // --restore: the machine's configuration comes from the state file.
    let state_data = match &args.restore {
        Some(p) => Some(snapshot::read_file(p)?),
        None => None,
    };
    let restored = match (&state_data, &args.restore) {
        (Some(d), Some(p)) => {
            Some(snapshot::parse(d).with_context(|| format!("--restore {}", p.display()))?)
        }
        _ => None,
    };
    let (config, mut files) = match &restored {
        Some(sf) => (sf.meta.config.clone(), None),
        None => {
            let ram_size = parse_memory(&args.memory)?;
            if !(1..=8).contains(&args.cpus) {
                bail!("--cpus {}: the riscv64 machine supports 1 to 8", args.cpus);
            }
            let (boot, cmdline) = boot_paths(&args)?;
            let files = read_boot(&boot, ram_size)?;
            let config = snapshot::VmConfig {
                cpus: args.cpus,
                ram_size,
                cmdline: cmdline.unwrap_or_default(),
                virtio: (*args.virtio).clone(),
                agent_channel: args.control.is_some(),
                boot,
                uuid: None,
            };
            (config, Some(files))
        }
    };
    let ram_size = config.ram_size;
    let cmdline = config.cmdline.clone();
    let uuid = args
        .uuid
        .clone()
        .or_else(|| config.uuid.clone())
        .unwrap_or_else(uuid::random);
    let config = snapshot::VmConfig {
        uuid: Some(uuid.clone()),
        ..config
    };
    let vm = emu::EmuVm::new(emu::VmInfo {
        name: args.name.clone().unwrap_or_default(),
        uuid: uuid.clone(),
        arch: "riscv64",
        cpus: config.cpus,
        memory_bytes: ram_size,
    });
    // Managed (ferrod): never read stdin nor touch the terminal.
    let managed = args.control.is_some() || args.console_socket.is_some();
    let sink =
        serial_out::SerialSink::new(args.console_socket.is_none(), args.serial_log.as_deref())?;

    type Built = (
        arch::riscv64::Machine,
        Option<std::os::unix::net::UnixStream>,
        virtio::Transports,
    );
    let build = |boot: Boot| -> Result<Built> {
        let mut htif_sink = sink.clone();
        let htif_console: Box<dyn FnMut(u8) + Send> = Box::new(move |b| {
            let _ = htif_sink.write_all(&[b]);
        });
        let mut builder = MachineBuilder::new(MachineConfig {
            harts: config.cpus,
            ram_size,
            boot,
            cmdline: cmdline.clone(),
            console_out: sink.writer(),
            htif_console: Some(htif_console),
        })?;
        let mut transports = virtio::attach(&mut builder, &config.virtio)?;
        // The agent channel comes after every user device (docs/CONTROL.md).
        let agent = if config.agent_channel {
            let (host, t) = emu::EmuVm::add_agent_channel(&mut builder)?;
            transports.push(t);
            Some(host)
        } else {
            None
        };
        builder.fdt_extra_mut().serial_number = Some(uuid.clone());
        Ok((builder.build()?, agent, transports))
    };
    // The state handle of a built machine (control: pause, save, snapshots).
    let state_of = |m: &arch::riscv64::Machine, t: virtio::Transports| {
        snapshot::Vm::new(m.platform(), t, m.memory().clone(), config.clone())
    };

    let (mut machine, agent, transports) = match (&files, &restored) {
        (Some(f), _) => build(f.boot())?,
        (None, Some(sf)) => {
            let t = Instant::now();
            let (mut m, agent, transports) = build(Boot::Empty)?;
            snapshot::restore_machine(sf, &mut m, &transports)?;
            tracing::info!("restored in {} ms", t.elapsed().as_millis());
            (m, agent, transports)
        }
        (None, None) => unreachable!("boot files or a state file"),
    };
    let mut state = state_of(&machine, transports);
    if args.paused {
        state.pause()?;
    } else if restored.is_some() {
        state.resume()?;
    }
    vm.attach_state(state.clone(), args.snapshot_dir.clone());
    if let Some(p) = &args.dumpdtb {
        std::fs::write(p, machine.dtb())
            .with_context(|| format!("cannot write {}", p.display()))?;
        return Ok(Outcome::new(0, "quit", "device tree written"));
    }
    vm.attach(machine.control(), agent);

    let target = console::Target::default();
    let quit: console::Quit = {
        let vm = vm.clone();
        Arc::new(move || vm.quit_because("Ctrl-A X"))
    };
    target.set(machine.uart(), quit.clone());
    let _control = args
        .control
        .as_ref()
        .map(|p| control::ControlServer::start(p, vm.clone()))
        .transpose()?;
    let _console = args
        .console_socket
        .as_ref()
        .map(|p| serial_out::ConsoleSocket::start(p, sink.clone(), target.clone()))
        .transpose()?;
    {
        let vm = vm.clone();
        quit_on_signals(move |sig| vm.quit_because(sig))?;
    }
    let _raw = if managed {
        None
    } else {
        let tty = console::stdin_is_tty();
        let raw = console::RawTerminal::enter();
        console::spawn_input(target.clone(), tty);
        raw
    };

    let start = Instant::now();
    let mut instret = 0;
    let outcome = loop {
        let reason = machine.run();
        instret += machine.instret();
        match reason {
            ExitReason::Poweroff => break Ok(Outcome::new(0, "poweroff", "the guest powered off")),
            ExitReason::Stopped => {
                eprint!("\r\nferro: terminated\r\n");
                break Ok(Outcome::new(0, "quit", vm.quit_message()));
            }
            ExitReason::Reset if args.no_reboot => {
                break Ok(Outcome::new(
                    0,
                    "reboot",
                    "the guest rebooted (--no-reboot)",
                ))
            }
            ExitReason::Reset if vm.quit_requested() => {
                break Ok(Outcome::new(0, "quit", vm.quit_message()))
            }
            ExitReason::Reset => {
                // Release disks and TAPs before the new machine reopens them.
                vm.detach();
                drop(machine);
                drop(state);
                if files.is_none() {
                    // A restored machine reboots from its original files.
                    files = Some(read_boot(&config.boot, ram_size)?);
                }
                let f = files.as_ref().expect("just read");
                let (m, agent, transports) = build(f.boot())?;
                machine = m;
                state = state_of(&machine, transports);
                vm.attach_state(state.clone(), args.snapshot_dir.clone());
                target.set(machine.uart(), quit.clone());
                vm.attach(machine.control(), agent);
            }
            ExitReason::ExitCode(c) => {
                let msg = format!("guest exited with code {c}");
                eprint!("\r\nferro: {msg}\r\n");
                let code = if (1..=255).contains(&c) { c as i32 } else { 1 };
                break Ok(Outcome::new(code, "guest-failure", msg));
            }
            ExitReason::GuestPanic => {
                eprint!("\r\nferro: guest panicked\r\n");
                break Ok(Outcome::new(3, "crashed", "guest panicked"));
            }
            ExitReason::Error(e) => break Err(anyhow::anyhow!("emulation error: {e}")),
        }
    };
    // Disks are flushed and closed here, before the status file is written
    // (every holder of the virtio transports lets go first).
    vm.detach();
    drop(state);
    drop(machine);
    if args.stats {
        let secs = start.elapsed().as_secs_f64();
        eprint!(
            "\r\nferro: {instret} instructions in {secs:.2} s ({:.1} MIPS)\r\n",
            instret as f64 / secs / 1e6
        );
    }
    outcome
}

/// `ferro run` with no arguments: fetch (once) and boot the default guest.
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
