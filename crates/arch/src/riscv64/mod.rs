//! The riscv64 `virt`-like machine: RAM, the platform devices on one MMIO
//! bus, the boot images in RAM, the device tree, and the harts' boot state.
//!
//! Building happens in two steps so that the virtio layer can add devices:
//! [`MachineBuilder::new`] lays out memory and the platform, then callers
//! reserve virtio-mmio slots ([`MachineBuilder::add_virtio`]) and attach
//! devices, and [`MachineBuilder::build`] writes the device tree (which lists
//! only attached slots) and sets the boot state.

pub mod fdt;
pub mod fuzzing;
pub mod layout;
pub mod loader;
pub mod plic;

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::{
    Bus, BusDevice, IrqLine, PvPanic, PvPanicEvent, Rtc, RtcState, Serial, SifiveGpio, Syscon,
    SysconEvent, UartState,
};
use riscv_emu::{
    Control, CpuConfig, CpuState, Cpus, ExitReason, HtifConfig, Mode, Pauser, SystemBus,
};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use layout::*;
use loader::{Elf, LoadError};
use plic::{Plic, PlicLine};

const MIB: u64 = 1 << 20;

/// A boot file's bytes plus a label (its path) for error messages.
#[derive(Clone)]
pub struct Blob {
    pub label: String,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bytes)", self.label, self.data.len())
    }
}

pub enum Boot {
    /// M-mode firmware (OpenSBI `fw_dynamic`/`fw_jump`, raw or ELF) at the RAM
    /// base, then an S-mode Linux `Image` and an initrd.
    Firmware {
        firmware: Blob,
        kernel: Option<Blob>,
        initrd: Option<Blob>,
    },
    /// A bare-metal ELF run in M mode; HTIF from its `tohost`/`fromhost`.
    BareElf { elf: Blob },
    /// Nothing loaded: RAM and the harts' state come from a snapshot.
    Empty,
}

pub struct MachineConfig {
    pub harts: usize,
    pub ram_size: u64,
    pub boot: Boot,
    pub cmdline: String,
    /// Where UART0 output goes.
    pub console_out: Box<dyn Write + Send>,
    /// Where HTIF console output goes (bare-metal programs).
    pub htif_console: Option<Box<dyn FnMut(u8) + Send>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} CPUs requested: the riscv64 machine supports 1 to 8")]
    Harts(usize),
    #[error(
        "memory size {size} bytes is not supported: it must be a multiple of 2 MiB \
         between {} MiB and {} GiB",
        MIN_RAM >> 20,
        MAX_RAM >> 30
    )]
    RamSize { size: u64 },
    #[error(
        "memory size {} MiB is too small: {what} needs at least {} MiB",
        have >> 20,
        need.div_ceil(MIB)
    )]
    RamTooSmall { what: String, need: u64, have: u64 },
    #[error("{label}: {source}")]
    Load { label: String, source: LoadError },
    #[error("{label}: {what} at {addr:#x}+{len:#x} is outside guest RAM")]
    OutsideRam {
        label: String,
        what: &'static str,
        addr: u64,
        len: u64,
    },
    #[error("cannot allocate guest RAM: {0}")]
    Ram(String),
    #[error("CPU setup: {0}")]
    Cpu(#[from] riscv_emu::Error),
    #[error("device tree: {0}")]
    Fdt(String),
    #[error("all {VIRTIO_SLOTS} virtio-mmio slots are in use")]
    NoVirtioSlot,
    #[error("virtio-mmio slot {0} does not exist or is already attached")]
    BadVirtioSlot(usize),
    #[error("device bus: {0}")]
    Bus(#[from] devices::BusError),
}

/// A reserved virtio-mmio slot: where the device sits and its interrupt line.
pub struct VirtioSlot {
    pub index: usize,
    pub base: u64,
    pub size: u64,
    pub irq: Arc<dyn IrqLine>,
}

/// Physical accesses outside RAM, served from the device bus.
struct MachineBus {
    bus: Bus,
}

impl SystemBus for MachineBus {
    fn load(&self, _hart: usize, addr: u64, size: u8) -> Option<u64> {
        let mut b = [0u8; 8];
        let n = (size as usize).min(8);
        self.bus
            .read(addr, &mut b[..n])
            .then(|| u64::from_le_bytes(b))
    }
    fn store(&self, _hart: usize, addr: u64, size: u8, value: u64) -> bool {
        let n = (size as usize).min(8);
        self.bus.write(addr, &value.to_le_bytes()[..n])
    }
}

/// Where the boot images ended up (also what tests check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootLayout {
    pub entry: u64,
    pub entry_mode_machine: bool,
    pub kernel: Option<(u64, u64)>,
    pub initrd: Option<(u64, u64)>,
    pub fdt_addr: u64,
    pub dyn_info_addr: Option<u64>,
}

pub struct MachineBuilder {
    harts: usize,
    ram_size: u64,
    ram: GuestMemoryMmap,
    cmdline: String,
    layout: BootLayout,
    cpus: Cpus,
    bus: Bus,
    plic: Arc<Mutex<Plic>>,
    uart: Arc<Mutex<Serial>>,
    rtc: Arc<Mutex<Rtc>>,
    gpio: Arc<Mutex<SifiveGpio>>,
    virtio: [bool; VIRTIO_SLOTS],
    reserved: [bool; VIRTIO_SLOTS],
    fdt_extra: fdt::FdtExtra,
}

pub struct Machine {
    cpus: Cpus,
    bus: Arc<MachineBus>,
    uart: Arc<Mutex<Serial>>,
    platform: Platform,
    ram: GuestMemoryMmap,
    layout: BootLayout,
    dtb: Vec<u8>,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}
fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

fn write_ram(
    ram: &GuestMemoryMmap,
    ram_size: u64,
    label: &str,
    what: &'static str,
    addr: u64,
    data: &[u8],
    memsz: u64,
) -> Result<(), Error> {
    let outside = || Error::OutsideRam {
        label: label.to_string(),
        what,
        addr,
        len: memsz,
    };
    let end = addr.checked_add(memsz).ok_or_else(outside)?;
    if addr < RAM_BASE || end > RAM_BASE + ram_size || (data.len() as u64) > memsz {
        return Err(outside());
    }
    ram.write_slice(data, GuestAddress(addr))
        .map_err(|_| outside())?;
    // Fresh RAM is zero, but bss must be zero whatever was there.
    let zeros = [0u8; 4096];
    let mut a = addr + data.len() as u64;
    while a < end {
        let n = ((end - a) as usize).min(zeros.len());
        ram.write_slice(&zeros[..n], GuestAddress(a))
            .map_err(|_| outside())?;
        a += n as u64;
    }
    Ok(())
}

fn load_elf(
    ram: &GuestMemoryMmap,
    ram_size: u64,
    blob: &Blob,
    what: &'static str,
) -> Result<(Elf, u64), Error> {
    let elf = Elf::parse(what, &blob.data).map_err(|source| Error::Load {
        label: blob.label.clone(),
        source,
    })?;
    let mut end = RAM_BASE;
    for s in &elf.segments {
        let data = &blob.data[s.offset..s.offset + s.filesz];
        write_ram(
            ram,
            ram_size,
            &blob.label,
            "ELF segment",
            s.paddr,
            data,
            s.memsz,
        )?;
        end = end.max(s.paddr + s.memsz);
    }
    Ok((elf, end))
}

fn rng_seed() -> [u8; 64] {
    let mut seed = [0u8; 64];
    let mut got = 0;
    while got < seed.len() {
        // SAFETY: writes at most `len - got` bytes into the live buffer `seed`.
        let r = unsafe { libc::getrandom(seed[got..].as_mut_ptr().cast(), seed.len() - got, 0) };
        if r <= 0 {
            tracing::warn!("getrandom failed; rng-seed is partly zero");
            break;
        }
        got += r as usize;
    }
    seed
}

impl MachineBuilder {
    /// Validates the configuration, allocates RAM, loads the boot images and
    /// creates the harts and platform devices.
    pub fn new(cfg: MachineConfig) -> Result<Self, Error> {
        let MachineConfig {
            harts,
            ram_size,
            boot,
            cmdline,
            console_out,
            htif_console,
        } = cfg;
        if !(1..=8).contains(&harts) {
            return Err(Error::Harts(harts));
        }
        if !(MIN_RAM..=MAX_RAM).contains(&ram_size) || !ram_size.is_multiple_of(2 * MIB) {
            return Err(Error::RamSize { size: ram_size });
        }
        let ram_end = RAM_BASE + ram_size;
        // The device tree and fw_dynamic_info share the top 2 MiB-aligned slot.
        let fdt_addr = align_down(ram_end - MIB, 2 * MIB);
        // Check what can be checked before allocating: the raw image sizes.
        let need = |what: String, need: u64| -> Result<(), Error> {
            if need > fdt_addr - RAM_BASE {
                return Err(Error::RamTooSmall {
                    what,
                    need: need + (ram_end - fdt_addr),
                    have: ram_size,
                });
            }
            Ok(())
        };
        match &boot {
            Boot::Firmware {
                firmware,
                kernel,
                initrd,
            } => {
                let mut total = firmware.data.len() as u64;
                need(format!("the firmware {}", firmware.label), total)?;
                if let Some(k) = kernel {
                    total = align_up(total, 2 * MIB) + k.data.len() as u64;
                    need(format!("the kernel {}", k.label), total)?;
                }
                if let Some(i) = initrd {
                    total += i.data.len() as u64;
                    need(format!("the initrd {}", i.label), total)?;
                }
            }
            Boot::BareElf { .. } | Boot::Empty => {}
        }
        let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), ram_size as usize)])
            .map_err(|e| Error::Ram(e.to_string()))?;

        let mut htif = None;
        let layout = match &boot {
            Boot::Empty => BootLayout {
                entry: RAM_BASE,
                entry_mode_machine: true,
                kernel: None,
                initrd: None,
                fdt_addr,
                dyn_info_addr: None,
            },
            Boot::BareElf { elf } => {
                let (parsed, _) = load_elf(&ram, ram_size, elf, "kernel")?;
                let sym = |n| loader::elf_symbol(&elf.data, n).map(|v| parsed.to_phys(v));
                if let Some(tohost) = sym("tohost") {
                    htif = Some(HtifConfig {
                        tohost,
                        fromhost: sym("fromhost"),
                    });
                } else {
                    tracing::warn!("{}: no `tohost` symbol; HTIF disabled", elf.label);
                }
                BootLayout {
                    entry: parsed.to_phys(parsed.entry),
                    entry_mode_machine: true,
                    kernel: None,
                    initrd: None,
                    fdt_addr,
                    dyn_info_addr: None,
                }
            }
            Boot::Firmware {
                firmware,
                kernel,
                initrd,
            } => {
                let (entry, fw_end) = if loader::is_elf(&firmware.data) {
                    let (e, end) = load_elf(&ram, ram_size, firmware, "firmware")?;
                    (e.to_phys(e.entry), end)
                } else {
                    let len = firmware.data.len() as u64;
                    write_ram(
                        &ram,
                        ram_size,
                        &firmware.label,
                        "firmware",
                        RAM_BASE,
                        &firmware.data,
                        len,
                    )?;
                    (RAM_BASE, RAM_BASE + len)
                };
                let mut top = fw_end;
                let mut kernel_range = None;
                if let Some(k) = kernel {
                    let h = loader::parse_image_header("kernel", &k.data).map_err(|source| {
                        Error::Load {
                            label: k.label.clone(),
                            source,
                        }
                    })?;
                    let addr = align_up(fw_end, 2 * MIB);
                    let end = addr.saturating_add(h.image_size);
                    if end > fdt_addr {
                        return Err(Error::RamTooSmall {
                            what: format!(
                                "the kernel {} ({} MiB in memory)",
                                k.label,
                                h.image_size >> 20
                            ),
                            need: end - RAM_BASE + (ram_end - fdt_addr),
                            have: ram_size,
                        });
                    }
                    write_ram(
                        &ram,
                        ram_size,
                        &k.label,
                        "kernel",
                        addr,
                        &k.data,
                        k.data.len() as u64,
                    )?;
                    kernel_range = Some((addr, end));
                    top = end;
                }
                let mut initrd_range = None;
                if let Some(i) = initrd {
                    let len = i.data.len() as u64;
                    let start = align_down(fdt_addr.saturating_sub(len), 4096);
                    if start < top {
                        return Err(Error::RamTooSmall {
                            what: format!(
                                "the initrd {} ({} MiB) above the kernel",
                                i.label,
                                len >> 20
                            ),
                            need: top - RAM_BASE + len + (ram_end - fdt_addr) + 4096,
                            have: ram_size,
                        });
                    }
                    write_ram(&ram, ram_size, &i.label, "initrd", start, &i.data, len)?;
                    initrd_range = Some((start, start + len));
                }
                BootLayout {
                    entry,
                    entry_mode_machine: true,
                    kernel: kernel_range,
                    initrd: initrd_range,
                    fdt_addr,
                    dyn_info_addr: Some(fdt_addr + MIB),
                }
            }
        };

        let cpus = Cpus::new(CpuConfig {
            harts,
            ram: ram.clone(),
            timebase_hz: TIMEBASE_HZ,
            htif,
            htif_console,
        })?;
        let control = cpus.control();
        let plic = Arc::new(Mutex::new(Plic::new(harts)));
        let irq = cpus.irq_handle();
        plic.lock()
            .unwrap_or_else(|p| p.into_inner())
            .connect(Box::new(move |h, ctx, l| irq.set_external(h, ctx, l)));
        let line = |src| -> Arc<dyn IrqLine> { Arc::new(PlicLine::new(plic.clone(), src)) };
        let uart = Arc::new(Mutex::new(Serial::new(console_out, line(UART0_IRQ))));
        let rtc = Arc::new(Mutex::new(Rtc::new(line(RTC_IRQ))));
        let c = control.clone();
        let pvpanic = Arc::new(Mutex::new(PvPanic::new(Box::new(move |ev| match ev {
            PvPanicEvent::Panicked => c.request_exit(ExitReason::GuestPanic),
            PvPanicEvent::CrashLoaded => tracing::info!("pvpanic: the guest loaded a crash kernel"),
        }))));
        // Pin 0 is the panic LED (see fdt.rs): lit means the kernel panicked.
        let c = control.clone();
        let gpio = Arc::new(Mutex::new(SifiveGpio::new(
            1,
            Box::new(move |levels| {
                if levels & 1 != 0 {
                    c.request_exit(ExitReason::GuestPanic)
                }
            }),
        )));
        let syscon = Arc::new(Mutex::new(Syscon::new(Box::new(move |ev| {
            control.request_exit(match ev {
                SysconEvent::Poweroff => ExitReason::Poweroff,
                SysconEvent::Reset => ExitReason::Reset,
                SysconEvent::Fail(code) => ExitReason::ExitCode(code as u32),
            })
        }))));

        let mut bus = Bus::new();
        bus.insert(SYSCON_BASE, devices::syscon::SYSCON_MMIO_LEN, syscon)?;
        bus.insert(RTC_BASE, devices::rtc::RTC_MMIO_LEN, rtc.clone())?;
        bus.insert(GPIO_BASE, devices::gpio::GPIO_MMIO_LEN, gpio.clone())?;
        bus.insert(PVPANIC_BASE, devices::pvpanic::PVPANIC_MMIO_LEN, pvpanic)?;
        bus.insert(CLINT_BASE, riscv_emu::ACLINT_SIZE, cpus.aclint())?;
        bus.insert(PLIC_BASE, plic::PLIC_MMIO_LEN, plic.clone())?;
        bus.insert(UART0_BASE, devices::serial::SERIAL_MMIO_LEN, uart.clone())?;

        Ok(MachineBuilder {
            harts,
            ram_size,
            ram,
            cmdline,
            layout,
            cpus,
            bus,
            plic,
            uart,
            rtc,
            gpio,
            virtio: [false; VIRTIO_SLOTS],
            reserved: [false; VIRTIO_SLOTS],
            fdt_extra: fdt::FdtExtra::default(),
        })
    }

    /// Guest RAM, for devices that DMA (virtio).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.ram
    }

    /// Reserves the next free virtio-mmio slot (0..8, in order). The device
    /// built for it is then given to [`MachineBuilder::attach_virtio`].
    pub fn add_virtio(&mut self) -> Result<VirtioSlot, Error> {
        let index = (0..VIRTIO_SLOTS)
            .find(|&i| !self.reserved[i])
            .ok_or(Error::NoVirtioSlot)?;
        self.reserved[index] = true;
        Ok(VirtioSlot {
            index,
            base: virtio_base(index),
            size: VIRTIO_SIZE,
            irq: Arc::new(PlicLine::new(self.plic.clone(), virtio_irq(index))),
        })
    }

    /// Maps `dev` (a virtio-mmio transport) at its slot; only attached slots
    /// appear in the device tree.
    pub fn attach_virtio(
        &mut self,
        slot: &VirtioSlot,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), Error> {
        let i = slot.index;
        if i >= VIRTIO_SLOTS || !self.reserved[i] || self.virtio[i] {
            return Err(Error::BadVirtioSlot(i));
        }
        self.bus.insert(virtio_base(i), VIRTIO_SIZE, dev)?;
        self.virtio[i] = true;
        Ok(())
    }

    /// Optional device-tree additions (machine UUID, agent console).
    pub fn fdt_extra_mut(&mut self) -> &mut fdt::FdtExtra {
        &mut self.fdt_extra
    }

    /// Writes the device tree and boot info into RAM and sets every hart's
    /// boot state.
    pub fn build(self) -> Result<Machine, Error> {
        let MachineBuilder {
            harts,
            ram_size,
            ram,
            cmdline,
            layout,
            mut cpus,
            bus,
            uart,
            rtc,
            gpio,
            plic,
            virtio,
            fdt_extra,
            ..
        } = self;
        let slots: Vec<usize> = (0..VIRTIO_SLOTS).filter(|&i| virtio[i]).collect();
        let dtb = fdt::build_with(
            &fdt::FdtParams {
                harts,
                ram_size,
                cmdline: &cmdline,
                initrd: layout.initrd,
                rng_seed: rng_seed(),
                virtio_slots: &slots,
            },
            &fdt_extra,
        )
        .map_err(|e| Error::Fdt(e.to_string()))?;
        if dtb.len() as u64 > MIB {
            return Err(Error::Fdt(format!(
                "{} bytes is larger than its 1 MiB slot",
                dtb.len()
            )));
        }
        write_ram(
            &ram,
            ram_size,
            "device tree",
            "device tree",
            layout.fdt_addr,
            &dtb,
            dtb.len() as u64,
        )?;
        if let (Some(info), Some((kernel, _))) = (layout.dyn_info_addr, layout.kernel) {
            let d = loader::fw_dynamic_info(kernel, true, 0);
            write_ram(
                &ram,
                ram_size,
                "fw_dynamic_info",
                "boot info",
                info,
                &d,
                d.len() as u64,
            )?;
        }
        for h in 0..harts {
            let mut regs = vec![(10, h as u64), (11, layout.fdt_addr)];
            if let (Some(info), Some(_)) = (layout.dyn_info_addr, layout.kernel) {
                regs.push((12, info));
            }
            let mode = if layout.entry_mode_machine {
                Mode::Machine
            } else {
                Mode::Supervisor
            };
            cpus.set_boot_state(h, layout.entry, &regs, mode);
        }
        let platform = Platform {
            pauser: cpus.pauser(),
            plic,
            uart: uart.clone(),
            rtc,
            gpio,
        };
        Ok(Machine {
            cpus,
            bus: Arc::new(MachineBus { bus }),
            platform,
            uart,
            ram,
            layout,
            dtb,
        })
    }
}

/// Machine state for snapshots: harts and ACLINT, PLIC, UART, RTC, GPIO.
/// (The syscon, pvpanic and HTIF hold none; HTIF's words are in RAM.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    pub cpus: CpuState,
    pub plic: plic::PlicState,
    pub uart: UartState,
    pub rtc: RtcState,
    pub gpio: Vec<u32>,
}

/// Clonable handle on a machine's pause/resume and platform state, usable
/// from another thread while [`Machine::run`] blocks.
#[derive(Clone)]
pub struct Platform {
    pauser: Pauser,
    plic: Arc<Mutex<Plic>>,
    uart: Arc<Mutex<Serial>>,
    rtc: Arc<Mutex<Rtc>>,
    gpio: Arc<Mutex<SifiveGpio>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Platform {
    /// Parks every hart at a block boundary and freezes mtime (see
    /// `riscv_emu::Pauser`). Devices with worker threads are the caller's.
    pub fn pause(&self) -> Result<(), riscv_emu::StateError> {
        self.pauser.pause()
    }
    pub fn resume(&self) {
        self.pauser.resume()
    }
    pub fn is_paused(&self) -> bool {
        self.pauser.is_paused()
    }
    /// The paused machine's state (harts as they parked).
    pub fn save(&self) -> Result<MachineState, String> {
        let cpus = self.pauser.save().map_err(|e| e.to_string())?;
        Ok(self.with_cpus(cpus))
    }
    fn with_cpus(&self, cpus: CpuState) -> MachineState {
        MachineState {
            cpus,
            plic: lock(&self.plic).save_state(),
            uart: lock(&self.uart).save_state(),
            rtc: lock(&self.rtc).save_state(),
            gpio: lock(&self.gpio).save_state(),
        }
    }
    /// Loads the platform devices (PLIC first, so that the devices' lines
    /// meet its restored gateways) and gives the parked harts their state.
    pub fn load(&self, s: &MachineState) -> Result<(), String> {
        lock(&self.plic).restore_state(&s.plic)?;
        lock(&self.uart).restore_state(&s.uart)?;
        lock(&self.rtc).restore_state(&s.rtc);
        lock(&self.gpio).restore_state(&s.gpio)?;
        self.pauser.load(&s.cpus).map_err(|e| e.to_string())
    }
}

impl Machine {
    /// Pause/resume and state handle.
    pub fn platform(&self) -> Platform {
        self.platform.clone()
    }
    /// State while not running (e.g. before the first `run`).
    pub fn save_state(&self) -> MachineState {
        self.platform.with_cpus(self.cpus.save_state())
    }
    /// Loads a state while not running (a machine restored at start-up).
    pub fn restore_state(&mut self, s: &MachineState) -> Result<(), String> {
        lock(&self.platform.plic).restore_state(&s.plic)?;
        lock(&self.platform.uart).restore_state(&s.uart)?;
        lock(&self.platform.rtc).restore_state(&s.rtc);
        lock(&self.platform.gpio).restore_state(&s.gpio)?;
        self.cpus.restore_state(&s.cpus).map_err(|e| e.to_string())
    }
    /// UART0, for the host console's input side.
    pub fn uart(&self) -> Arc<Mutex<Serial>> {
        self.uart.clone()
    }
    pub fn control(&self) -> Control {
        self.cpus.control()
    }
    pub fn layout(&self) -> BootLayout {
        self.layout
    }
    pub fn dtb(&self) -> &[u8] {
        &self.dtb
    }
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.ram
    }
    /// Runs until the guest powers off, resets, fails, or the host stops it.
    pub fn run(&mut self) -> ExitReason {
        self.cpus.run(self.bus.clone())
    }
    pub fn instret(&self) -> u64 {
        self.cpus.instret()
    }
}

/// The device tree a machine with this configuration would get (for
/// `--dumpdtb`-style inspection and tests) without needing the CPU backend.
pub fn dtb_for(
    harts: usize,
    ram_size: u64,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    virtio_slots: &[usize],
) -> Result<Vec<u8>, Error> {
    fdt::build(&fdt::FdtParams {
        harts,
        ram_size,
        cmdline,
        initrd,
        rng_seed: rng_seed(),
        virtio_slots,
    })
    .map_err(|e| Error::Fdt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(label: &str, data: Vec<u8>) -> Blob {
        Blob {
            label: label.into(),
            data,
        }
    }

    fn cfg(ram_size: u64, boot: Boot) -> MachineConfig {
        MachineConfig {
            harts: 2,
            ram_size,
            boot,
            cmdline: "console=ttyS0".into(),
            console_out: Box::new(std::io::sink()),
            htif_console: None,
        }
    }

    fn linux(fw: usize, kernel: Vec<u8>, initrd: usize) -> Boot {
        Boot::Firmware {
            firmware: blob("fw", vec![0x13; fw]),
            kernel: Some(blob("Image", kernel)),
            initrd: Some(blob("initrd", vec![0xaa; initrd])),
        }
    }

    fn read(ram: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        ram.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn errors_before_boot() {
        let err = |c: MachineConfig| MachineBuilder::new(c).err().expect("must fail").to_string();
        let k = loader::tests::image(4096, 0x10_0000);
        let mut c = cfg(64 * MIB, linux(100, k.clone(), 100));
        c.harts = 9;
        assert!(err(c).contains("1 to 8"));
        assert!(err(cfg(63 * MIB, linux(100, k.clone(), 100))).contains("multiple of 2 MiB"));
        assert!(err(cfg(8 * MIB, linux(100, k.clone(), 100))).contains("between 16 MiB"));
        let e = err(cfg(64 * MIB, linux(100, vec![0; 4096], 100)));
        assert!(
            e.contains("Image: ") && e.contains("not a RISC-V Linux Image"),
            "{e}"
        );
        // image_size (bss included) larger than RAM.
        let e = err(cfg(
            64 * MIB,
            linux(100, loader::tests::image(4096, 200 * MIB), 100),
        ));
        assert!(
            e.contains("too small") && e.contains("the kernel Image"),
            "{e}"
        );
        // Kernel fits, initrd does not.
        let e = err(cfg(64 * MIB, linux(100, k.clone(), 60 * MIB as usize)));
        assert!(e.contains("too small") && e.contains("initrd"), "{e}");
        let e = err(cfg(
            64 * MIB,
            Boot::BareElf {
                elf: blob("p.elf", vec![1, 2, 3]),
            },
        ));
        assert!(e.contains("p.elf") && e.contains("not an ELF"), "{e}");
        // A segment outside RAM.
        let elf = loader::tests::elf(0x1000, &[0; 4], 4);
        let e = err(cfg(
            64 * MIB,
            Boot::BareElf {
                elf: blob("p.elf", elf),
            },
        ));
        assert!(e.contains("outside guest RAM"), "{e}");
    }

    #[test]
    fn linux_boot_layout_in_ram() {
        let k = loader::tests::image(8192, 4 * MIB);
        let m = MachineBuilder::new(cfg(64 * MIB, linux(300_000, k.clone(), MIB as usize)))
            .unwrap()
            .build()
            .unwrap();
        let l = m.layout();
        assert_eq!(l.entry, RAM_BASE);
        assert!(l.entry_mode_machine);
        assert_eq!(l.kernel, Some((0x8020_0000, 0x8060_0000)));
        assert_eq!(l.fdt_addr, 0x83e0_0000);
        let (is, ie) = l.initrd.unwrap();
        assert_eq!(ie - is, MIB);
        assert!(is >= 0x8060_0000 && ie <= l.fdt_addr && is % 4096 == 0);
        let ram = m.memory();
        assert_eq!(read(ram, RAM_BASE, 4), [0x13; 4]);
        assert_eq!(read(ram, 0x8020_0000, 8192), k);
        assert_eq!(read(ram, is, 16), [0xaa; 16]);
        assert_eq!(read(ram, l.fdt_addr, 4), [0xd0, 0x0d, 0xfe, 0xed]);
        assert_eq!(read(ram, l.fdt_addr, m.dtb().len()), m.dtb());
        let info = read(ram, l.dyn_info_addr.unwrap(), 48);
        assert_eq!(info, loader::fw_dynamic_info(0x8020_0000, true, 0));
    }

    #[test]
    fn virtio_slots_attach_in_order() {
        struct Dev;
        impl BusDevice for Dev {
            fn read(&mut self, _: u64, d: &mut [u8]) {
                d.fill(0x5a);
            }
            fn write(&mut self, _: u64, _: &[u8]) {}
        }
        let k = loader::tests::image(4096, 0);
        let mut b = MachineBuilder::new(cfg(64 * MIB, linux(100, k, 100))).unwrap();
        let s0 = b.add_virtio().unwrap();
        let s1 = b.add_virtio().unwrap();
        assert_eq!(
            (s0.index, s0.base, s1.index, s1.base),
            (0, 0x1000_1000, 1, 0x1000_2000)
        );
        b.attach_virtio(&s1, Arc::new(Mutex::new(Dev))).unwrap();
        assert!(matches!(
            b.attach_virtio(&s1, Arc::new(Mutex::new(Dev))),
            Err(Error::BadVirtioSlot(1))
        ));
        for _ in 2..VIRTIO_SLOTS {
            b.add_virtio().unwrap();
        }
        assert!(matches!(b.add_virtio(), Err(Error::NoVirtioSlot)));
        let m = b.build().unwrap();
        // Only the attached slot is on the bus.
        assert_eq!(m.bus.load(0, 0x1000_2000, 4), Some(0x5a5a_5a5a));
        assert_eq!(m.bus.load(0, 0x1000_1000, 4), None);
    }

    #[test]
    fn bare_elf_gets_htif_and_entry() {
        let elf = loader::tests::elf(0x8000_0000, &[0x13, 0, 0, 0], 0x2000);
        let m = MachineBuilder::new(cfg(
            64 * MIB,
            Boot::BareElf {
                elf: blob("p.elf", elf),
            },
        ))
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(m.layout().entry, 0x8000_0000);
        assert_eq!(m.layout().kernel, None);
        assert_eq!(read(m.memory(), 0x8000_0000, 4), [0x13, 0, 0, 0]);
    }
}
