//! `ferro run --arch x86_64 --accel kvm`: the x86-64 machine on Linux KVM,
//! with the same virtio devices as the emulator path.
//!
//! Exit codes: guest poweroff or reset 0 (a reset ends the run, as with
//! Firecracker); host stop (Ctrl-A X) 0; triple fault, KVM internal error or
//! failed VM entry 1 with a message naming it.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arch::x86_64::{layout, Entry, Machine, MachineBuilder, MachineConfig, PowerEvent, VirtioSlot};
use devices::BusDevice;
use hypervisor::kvm::Kvm;
use hypervisor::runner::{self, VmControl, VmExit};
use hypervisor::{Vm, X86Boot, X86Mode};

use crate::{parse_memory, read_blob, virtio, RunArgs};

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

/// Guest serial output to stdout, flushed per write (the UART writes one
/// byte at a time; a line buffer would hold back prompts).
struct Stdout;
impl Write for Stdout {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut o = std::io::stdout().lock();
        o.write_all(b)?;
        o.flush()?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
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

pub fn run(args: &RunArgs) -> Result<i32> {
    let ram_size = parse_memory(&args.memory)?;
    let kernel_path = args.kernel.as_ref().context(
        "--arch x86_64 needs --kernel (a bzImage or an ELF vmlinux); there is no default x86-64 guest",
    )?;
    if args.bios.is_some() || args.firmware.is_some() {
        bail!("--bios/--firmware are riscv64 options; x86_64 boots --kernel directly");
    }
    let kernel = read_blob("kernel", kernel_path, ram_size)?;
    // Bad images fail here, before /dev/kvm is even opened.
    arch::x86_64::boot::inspect(&kernel.label, &kernel.data)?;
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
    let mut builder = MachineBuilder::new(
        MachineConfig {
            cpus: args.cpus,
            ram_size,
            kernel,
            initrd,
            cmdline: args.append.clone().unwrap_or_default(),
            console_out: Box::new(Stdout),
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
    let code = run_machine(&*vm, machine, control)?;
    Ok(code)
}

fn run_machine(vm: &dyn Vm, m: Machine, control: Arc<VmControl>) -> Result<i32> {
    vm.set_memory(&m.mem)?;
    let boot = boot_regs(m.boot.entry);
    let n = m.cpus as u32;
    let vcpus = (0..n)
        .map(|id| vm.create_vcpu(id, n, (id == 0).then_some(&boot)))
        .collect::<Result<Vec<_>, _>>()?;
    let _raw = crate::console::RawTerminal::enter();
    let target = crate::console::Target::default();
    let ctl = control.clone();
    target.set(
        m.serial.clone(),
        Arc::new(move || ctl.request_exit(VmExit::Stopped)),
    );
    crate::console::spawn_input(target, crate::console::stdin_is_tty());
    let running = runner::start(control, vcpus, m.pio.clone(), m.mmio.clone())
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
    match why {
        VmExit::Poweroff | VmExit::Reset => Ok(0),
        VmExit::Stopped => {
            eprint!("\r\nferro: terminated\r\n");
            Ok(0)
        }
        VmExit::TripleFault { vcpu } => bail!(
            "guest triple fault on vCPU {vcpu} (KVM_EXIT_SHUTDOWN): the guest crashed before it could handle an exception"
        ),
        VmExit::Error { vcpu, message } => bail!("KVM stopped vCPU {vcpu}: {message}"),
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
