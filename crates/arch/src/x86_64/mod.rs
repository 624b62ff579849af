//! The x86-64 machine for hardware-assisted backends (KVM): memory layout
//! and e820 ([`layout`]), kernel loading by the Linux/PVH boot protocols
//! ([`boot`]), the MP table ([`mptable`]), and the legacy platform: COM1
//! (the shared `devices::Serial`), the i8042 reset line and ACPI
//! ([`acpi`]: tables, PM1 block with S5 poweroff and the power button). virtio-mmio devices (the same `virtio-devices` code as on riscv64)
//! sit in the 32-bit MMIO hole and are announced on the command line.
//!
//! The interrupt controller lives in the hypervisor (KVM's in-kernel
//! PIC/IOAPIC), so the builder takes a factory for its lines.

pub mod acpi;
pub mod boot;
pub mod fuzzing;
pub mod layout;
pub mod mptable;
pub mod unpack;

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::{Bus, BusDevice, IrqLine, Serial};
use vm_memory::GuestMemoryMmap;

pub use crate::riscv64::{Blob, VirtioSlot};
pub use boot::{BootInfo, Entry, KernelKind};
use layout::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error("--memory {0} MiB is too small for the x86-64 machine (minimum 8 MiB)")]
    TooLittleMemory(u64),
    #[error("--cpus {0}: the x86-64 machine supports 1 to {max}", max = MAX_CPUS)]
    BadCpus(usize),
    #[error("cannot allocate guest memory: {0}")]
    Memory(String),
    #[error("all {} virtio-mmio slots are in use", VIRTIO_IRQS.len())]
    NoVirtioSlot,
    #[error("virtio-mmio slot {0} does not exist or is already attached")]
    BadVirtioSlot(usize),
    #[error("device bus: {0}")]
    Bus(#[from] devices::BusError),
}

/// vCPUs the machine takes (the MP table fits the EBDA up to here).
pub const MAX_CPUS: usize = 32;

/// A guest request that ends the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    Reset,
    Poweroff,
}

pub type PowerHandler = Arc<dyn Fn(PowerEvent) + Send + Sync>;

/// The i8042 keyboard controller, only as far as a PC uses it to reset:
/// command 0xfe on port 0x64 pulses the CPU reset line. Everything else
/// reads as "no data, nothing pending".
pub struct I8042 {
    on: PowerHandler,
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        // Inserted at 0x60 with length 5: 0x64 is offset 4.
        if offset == 4 && data[0] == 0xfe {
            (self.on)(PowerEvent::Reset);
        }
    }
}

/// Port 0x604, the ACPI PM1a control register ([`acpi::AcpiPm`]), as on
/// QEMU's q35: writing 0x2000 (SLP_EN, sleep type 0) or SLP_EN with the
/// DSDT's `\_S5` type powers off.
pub const POWEROFF_PORT: u64 = acpi::PM1A_CNT as u64;

pub struct MachineConfig {
    pub cpus: usize,
    pub ram_size: u64,
    pub kernel: Blob,
    pub initrd: Option<Blob>,
    pub cmdline: String,
    pub console_out: Box<dyn Write + Send>,
}

pub type IrqFactory = Box<dyn Fn(u32) -> Arc<dyn IrqLine>>;

pub struct MachineBuilder {
    cfg: MachineConfig,
    mem: GuestMemoryMmap,
    pio: Bus,
    mmio: Bus,
    irq: IrqFactory,
    serial: Arc<Mutex<Serial>>,
    pm: Arc<Mutex<acpi::AcpiPm>>,
    reserved: Vec<bool>,
    attached: Vec<bool>,
}

/// A machine ready to run: memory loaded, buses populated.
pub struct Machine {
    pub mem: GuestMemoryMmap,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub boot: BootInfo,
    pub serial: Arc<Mutex<Serial>>,
    /// The ACPI PM block: [`acpi::AcpiPm::power_button`] for `powerdown`.
    pub pm: Arc<Mutex<acpi::AcpiPm>>,
    pub cpus: usize,
    /// The command line as the guest sees it.
    pub cmdline: String,
}

impl MachineBuilder {
    /// Validates the kernel (before anything else), allocates RAM and puts
    /// the platform devices on the buses.
    pub fn new(
        mut cfg: MachineConfig,
        irq: IrqFactory,
        on_power: PowerHandler,
    ) -> Result<Self, Error> {
        if !(1..=MAX_CPUS).contains(&cfg.cpus) {
            return Err(Error::BadCpus(cfg.cpus));
        }
        if cfg.ram_size < 8 << 20 {
            return Err(Error::TooLittleMemory(cfg.ram_size >> 20));
        }
        boot::inspect(&cfg.kernel.label, &cfg.kernel.data)?;
        let mem = GuestMemoryMmap::from_ranges(&ram_regions(cfg.ram_size))
            .map_err(|e| Error::Memory(e.to_string()))?;
        let mut pio = Bus::new();
        let out = std::mem::replace(&mut cfg.console_out, Box::new(std::io::sink()));
        let serial = Arc::new(Mutex::new(Serial::new(out, irq(COM1_IRQ))));
        pio.insert(COM1, 8, serial.clone())?;
        pio.insert(
            0x60,
            5,
            Arc::new(Mutex::new(I8042 {
                on: on_power.clone(),
            })),
        )?;
        let pm = Arc::new(Mutex::new(acpi::AcpiPm::new(irq(acpi::SCI_IRQ), on_power)));
        pio.insert(acpi::PM1A_EVT as u64, 12, pm.clone())?;
        Ok(MachineBuilder {
            cfg,
            mem,
            pio,
            mmio: Bus::new(),
            irq,
            serial,
            pm,
            reserved: vec![false; VIRTIO_IRQS.len()],
            attached: vec![false; VIRTIO_IRQS.len()],
        })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Reserves the next virtio-mmio slot.
    pub fn add_virtio(&mut self) -> Result<VirtioSlot, Error> {
        let index = self
            .reserved
            .iter()
            .position(|r| !r)
            .ok_or(Error::NoVirtioSlot)?;
        self.reserved[index] = true;
        Ok(VirtioSlot {
            index,
            base: VIRTIO_BASE + index as u64 * VIRTIO_SIZE,
            size: VIRTIO_SIZE,
            irq: (self.irq)(VIRTIO_IRQS[index]),
        })
    }

    /// Maps a virtio-mmio transport at its slot.
    pub fn attach_virtio(
        &mut self,
        slot: &VirtioSlot,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), Error> {
        let i = slot.index;
        if i >= self.reserved.len() || !self.reserved[i] || self.attached[i] {
            return Err(Error::BadVirtioSlot(i));
        }
        self.mmio
            .insert(VIRTIO_BASE + i as u64 * VIRTIO_SIZE, VIRTIO_SIZE, dev)?;
        self.attached[i] = true;
        Ok(())
    }

    /// Loads the kernel, initrd, command line (plus one
    /// `virtio_mmio.device=` per attached device) and boot tables.
    pub fn build(self) -> Result<Machine, Error> {
        let mut cmdline = self.cfg.cmdline.clone();
        for (i, _) in self.attached.iter().enumerate().filter(|(_, a)| **a) {
            let dev = format!(
                "virtio_mmio.device=4K@{:#x}:{}",
                VIRTIO_BASE + i as u64 * VIRTIO_SIZE,
                VIRTIO_IRQS[i]
            );
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str(&dev);
        }
        let info = boot::load(
            &self.mem,
            &boot::BootImages {
                label: &self.cfg.kernel.label,
                kernel: &self.cfg.kernel.data,
                initrd: self.cfg.initrd.as_ref().map(|b| &b.data[..]),
                cmdline: &cmdline,
                ram_size: self.cfg.ram_size,
                cpus: self.cfg.cpus,
            },
        )?;
        Ok(Machine {
            mem: self.mem,
            pio: Arc::new(self.pio),
            mmio: Arc::new(self.mmio),
            boot: info,
            serial: self.serial,
            pm: self.pm,
            cpus: self.cfg.cpus,
            cmdline,
        })
    }
}
