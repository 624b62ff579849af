//! `ferro run --arch x86_64 --accel kvm`: the x86-64 machine on Linux KVM,
//! with the same virtio devices as the emulator path.
//!
//! Exit codes: guest poweroff 0 (`poweroff`) or reset 0 (`reboot`: a reset
//! ends the run, as with Firecracker); host stop (Ctrl-A X, `quit`, SIGTERM)
//! 0 (`quit`); triple fault, KVM internal error or failed VM entry 3
//! (`crashed`) with a message naming it; host-side failures 1 (`error`).
//! The control socket's [`KvmVm`] offers status, quit, pause, resume and
//! powerdown (the ACPI power button).
//!
//! seccomp (`--seccomp`, hypervisor::seccomp): the main thread installs the
//! VMM filter on every thread it has started (TSYNC) once the control,
//! console and signal threads exist, then starts the vCPU threads, which
//! inherit it and add the narrower vCPU filter.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arch::x86_64::{layout, Entry, Machine, MachineBuilder, MachineConfig, PowerEvent, VirtioSlot};
use devices::BusDevice;
use hypervisor::kvm::Kvm;
use hypervisor::runner::{self, VmControl, VmExit};
use hypervisor::{Vm, X86Boot, X86Mode};

use crate::control::{RunState, VmStatus};
use crate::emu::VmInfo;
use crate::{
    parse_memory, read_blob, serial_out, virtio, KernelUnpack, Outcome, RunArgs, SeccompMode,
};

/// The KVM backend's control-socket side.
pub struct KvmVm {
    info: VmInfo,
    control: Arc<VmControl>,
    quit_why: Mutex<Option<String>>,
    /// The ACPI PM block: its power button is `powerdown`.
    pm: Arc<Mutex<arch::x86_64::acpi::AcpiPm>>,
    powerdown: std::sync::atomic::AtomicBool,
}

impl KvmVm {
    pub fn quit_because(&self, why: &str) {
        self.quit_why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| why.to_string());
        self.control.request_exit(VmExit::Stopped);
    }
    fn quit_message(&self) -> String {
        let why = self
            .quit_why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        format!("stopped by the host ({})", why.as_deref().unwrap_or("quit"))
    }
}

impl crate::control::VmControl for KvmVm {
    fn status(&self) -> VmStatus {
        let state = if self.control.is_paused() {
            RunState::Paused
        } else if self.powerdown.load(std::sync::atomic::Ordering::Relaxed) {
            RunState::Shutdown
        } else {
            RunState::Running
        };
        self.info.status(state)
    }
    /// Presses the ACPI fixed power button (PM1_STS.PWRBTN, SCI);
    /// delivered when the guest has enabled the event (an ACPI OS).
    fn powerdown(&self) -> Result<bool> {
        let delivered = self
            .pm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .power_button();
        if delivered {
            self.powerdown
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(delivered)
    }
    fn quit(&self) -> Result<()> {
        self.quit_because("quit command");
        Ok(())
    }
    fn pause(&self) -> Result<()> {
        self.control.pause();
        Ok(())
    }
    fn resume(&self) -> Result<()> {
        self.control.resume();
        Ok(())
    }
}

impl virtio::VirtioHost for MachineBuilder {
    fn memory(&self) -> &vm_memory::GuestMemoryMmap {
        MachineBuilder::memory(self)
    }
    fn add_virtio(&mut self) -> Result<VirtioSlot> {
        Ok(MachineBuilder::add_virtio(self)?)
    }
    fn attach_virtio(&mut self, slot: &VirtioSlot, dev: Arc<Mutex<dyn BusDevice>>) -> Result<()> {
        Ok(MachineBuilder::attach_virtio(self, slot, dev)?)
    }
}

/// The boot vCPU's entry state for what the loader produced.
pub fn boot_regs(e: Entry) -> X86Boot {
    match e {
        Entry::Linux64 { rip, zero_page } => X86Boot {
            rip,
            rsp: layout::BOOT_STACK,
            rsi: zero_page,
            rbx: 0,
            mode: X86Mode::Long { pml4: layout::PML4 },
            gdt: layout::GDT,
        },
        Entry::Pvh { rip, start_info } => X86Boot {
            rip,
            rsp: layout::BOOT_STACK,
            rsi: 0,
            rbx: start_info,
            mode: X86Mode::Protected32,
            gdt: layout::GDT,
        },
    }
}

pub fn run(args: &RunArgs) -> Result<Outcome> {
    let ram_size = parse_memory(&args.memory)?;
    let kernel_path = args.kernel.as_ref().context(
        "--arch x86_64 needs --kernel (a bzImage or an ELF vmlinux); there is no default x86-64 guest",
    )?;
    if args.bios.is_some() || args.firmware.is_some() {
        bail!("--bios/--firmware are riscv64 options; x86_64 boots --kernel directly");
    }
    let mut kernel = read_blob("kernel", kernel_path, ram_size)?;
    // Bad images fail here, before /dev/kvm is even opened.
    arch::x86_64::boot::inspect(&kernel.label, &kernel.data)?;
    if args.kernel_unpack != KernelUnpack::Guest {
        use arch::x86_64::unpack::{unpack, Unpacked};
        match unpack(&kernel.label, &kernel.data, ram_size)? {
            Unpacked::Elf { data, format } => {
                tracing::info!(
                    "{}: unpacked the {format} payload on the host ({} bytes of ELF vmlinux)",
                    kernel.label,
                    data.len()
                );
                kernel.data = data;
            }
            Unpacked::NotBzImage => {}
            Unpacked::Unsupported(why) if args.kernel_unpack == KernelUnpack::Auto => {
                tracing::info!("{}: {why}; the guest unpacks it", kernel.label)
            }
            Unpacked::Unsupported(why) => bail!(
                "{}: --kernel-unpack host: {why} (ferro unpacks gzip, xz and zstd)",
                kernel.label
            ),
        }
    }
    let initrd = args
        .initrd
        .as_ref()
        .map(|p| read_blob("initrd", p, ram_size))
        .transpose()?;
    let kvm = Kvm::open()?;
    if args.cpus > kvm.max_vcpus() {
        bail!(
            "--cpus {}: this KVM supports at most {}",
            args.cpus,
            kvm.max_vcpus()
        );
    }
    let vm = Arc::new(kvm.create_vm()?);
    let control = VmControl::new(args.cpus);
    let ctl = control.clone();
    let on_power = Arc::new(move |e: PowerEvent| {
        ctl.request_exit(match e {
            PowerEvent::Reset => VmExit::Reset,
            PowerEvent::Poweroff => VmExit::Poweroff,
        })
    });
    let irq_vm = vm.clone();
    // Serial output, flushed per write by the sink (the UART writes one byte
    // at a time; a line buffer would hold back prompts).
    let sink =
        serial_out::SerialSink::new(args.console_socket.is_none(), args.serial_log.as_deref())?;
    let mut builder = MachineBuilder::new(
        MachineConfig {
            cpus: args.cpus,
            ram_size,
            kernel,
            initrd,
            cmdline: args.append.clone().unwrap_or_default(),
            console_out: sink.writer(),
        },
        Box::new(move |gsi| irq_vm.irq_line(gsi)),
        on_power,
    )?;
    virtio::attach(&mut builder, &args.virtio)?;
    let machine = builder.build()?;
    tracing::info!(
        "x86_64 boot: {:?}, cmdline {:?}",
        machine.boot,
        machine.cmdline
    );
    let kvm_vm = Arc::new(KvmVm {
        info: VmInfo {
            name: args.name.clone().unwrap_or_default(),
            uuid: args.uuid.clone().unwrap_or_else(crate::uuid::random),
            arch: "x86_64",
            cpus: args.cpus,
            memory_bytes: ram_size,
        },
        control: control.clone(),
        quit_why: Mutex::new(None),
        pm: machine.pm.clone(),
        powerdown: std::sync::atomic::AtomicBool::new(false),
    });
    run_machine(&*vm, machine, kvm_vm, args, sink)
}

fn run_machine(
    vm: &dyn Vm,
    m: Machine,
    kvm_vm: Arc<KvmVm>,
    args: &RunArgs,
    sink: serial_out::SerialSink,
) -> Result<Outcome> {
    let control = kvm_vm.control.clone();
    use hypervisor::seccomp::{self, Role};
    // Compiled before any thread starts, so a bad filter fails early.
    let filters = match args.seccomp {
        SeccompMode::Off => None,
        mode => {
            let action = if mode == SeccompMode::Kill {
                seccomp::Action::Kill
            } else {
                seccomp::Action::Trap
            };
            seccomp::install_sigsys_handler().map_err(anyhow::Error::msg)?;
            Some((
                seccomp::filter(Role::Vcpu, action).map_err(anyhow::Error::msg)?,
                seccomp::filter(Role::Vmm, action).map_err(anyhow::Error::msg)?,
            ))
        }
    };
    vm.set_memory(&m.mem)?;
    let boot = boot_regs(m.boot.entry);
    let n = m.cpus as u32;
    let vcpus = (0..n)
        .map(|id| vm.create_vcpu(id, n, (id == 0).then_some(&boot)))
        .collect::<Result<Vec<_>, _>>()?;
    let target = crate::console::Target::default();
    let q = kvm_vm.clone();
    target.set(
        m.serial.clone(),
        Arc::new(move || q.quit_because("Ctrl-A X")),
    );
    let _control = args
        .control
        .as_ref()
        .map(|p| crate::control::ControlServer::start(p, kvm_vm.clone()))
        .transpose()?;
    let _console = args
        .console_socket
        .as_ref()
        .map(|p| serial_out::ConsoleSocket::start(p, sink.clone(), target.clone()))
        .transpose()?;
    {
        let q = kvm_vm.clone();
        crate::quit_on_signals(move |sig| q.quit_because(sig))?;
    }
    let managed = args.control.is_some() || args.console_socket.is_some();
    let _raw = if managed {
        None
    } else {
        let raw = crate::console::RawTerminal::enter();
        crate::console::spawn_input(target, crate::console::stdin_is_tty());
        raw
    };
    let init = match filters {
        Some((vcpu_filter, vmm_filter)) => {
            // Every thread so far (main, control, console, signals, input).
            seccomp::apply_all_threads(&vmm_filter).map_err(anyhow::Error::msg)?;
            Some(Arc::new(move || seccomp::apply(&vcpu_filter)) as runner::ThreadInit)
        }
        None => None,
    };
    let running = runner::start_with(control, vcpus, m.pio.clone(), m.mmio.clone(), init)
        .context("cannot start vCPU threads")?;
    if let Some(secs) = std::env::var("FERRO_KVM_STOP_AFTER")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        // Diagnostics: stop after a while (with FERRO_KVM_DUMP, print where
        // each vCPU was).
        let ctl = running.control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(secs));
            ctl.request_exit(VmExit::Stopped);
        });
    }
    let why = running.join();
    drop(_raw);
    // Devices (disks) are flushed and closed with the machine.
    drop(m);
    // docs/CONTROL.md: a guest crash is exit 3, reason `crashed`.
    let crashed = |msg: String| {
        eprint!("\r\nferro: guest crashed: {msg}\r\n");
        Ok(Outcome::new(3, "crashed", format!("guest crashed: {msg}")))
    };
    match why {
        VmExit::Poweroff => Ok(Outcome::new(0, "poweroff", "the guest powered off")),
        VmExit::Reset => Ok(Outcome::new(0, "reboot", "the guest rebooted")),
        VmExit::Stopped => {
            eprint!("\r\nferro: terminated\r\n");
            Ok(Outcome::new(0, "quit", kvm_vm.quit_message()))
        }
        VmExit::TripleFault { vcpu } => crashed(format!(
            "triple fault on vCPU {vcpu} (KVM_EXIT_SHUTDOWN): an exception the guest could not handle"
        )),
        VmExit::Crashed { vcpu, message } => crashed(format!("KVM stopped vCPU {vcpu}: {message}")),
        VmExit::Error { vcpu, message } => bail!("vCPU {vcpu}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gdts_agree() {
        assert_eq!(
            arch::x86_64::boot::GDT_ENTRIES,
            hypervisor::GDT_ENTRIES,
            "the GDT written to memory must match the segments KVM is given"
        );
    }
}
