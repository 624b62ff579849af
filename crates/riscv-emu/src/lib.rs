//! The emulation CPU backend: RV64IMAFDC + Zicsr, Zifencei, Zicntr, Sstc harts
//! in M/S/U mode with Sv39/Sv48, running in parallel threads over one shared
//! guest RAM. Also owns the per-hart timer/IPI block (ACLINT) and Spike's HTIF,
//! since both are hart-intimate.
//!
//! The machine (crate `arch`) gives us RAM (vm-memory) and a [`SystemBus`] for
//! every non-RAM physical address, and raises external interrupts through
//! [`IrqHandle`]. This file is the contract between the two.
//!
//! How a machine uses it:
//! ```text
//! let mut cpus = Cpus::new(CpuConfig { harts, ram, timebase_hz: 10_000_000, htif: None, htif_console: None })?;
//! bus.insert(0x0200_0000, ACLINT_SIZE, cpus.aclint());   // machine's MMIO bus
//! let irq = cpus.irq_handle();                            // give to the PLIC
//! let ctl = cpus.control();                               // give to syscon / console (Ctrl-A X)
//! for h in 0..harts {                                     // OpenSBI fw_dynamic / fw_jump
//!     cpus.set_boot_state(h, fw_entry, &[(10, h as u64), (11, fdt), (12, dyn_info)], Mode::Machine);
//! }
//! let reason = cpus.run(Arc::new(machine_bus));           // blocks until a hart stops the machine
//! ```
//!
//! Dependencies: `vm-memory` (rust-vmm guest memory, shared with the devices).

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

/// Size of the ACLINT window (SiFive CLINT layout) returned by [`Cpus::aclint`].
pub const ACLINT_SIZE: u64 = 0x1_0000;

/// `riscv,isa` string for the device tree's cpu nodes (what the harts implement).
pub const ISA_STRING: &str = "rv64imafdc_zicntr_zicsr_zifencei_sstc";
/// `riscv,isa-base` for the device tree.
pub const ISA_BASE: &str = "rv64i";
/// `riscv,isa-extensions` for the device tree.
pub const ISA_EXTENSIONS: &[&str] = &[
    "i", "m", "a", "f", "d", "c", "zicntr", "zicsr", "zifencei", "sstc",
];
/// `mmu-type` for the device tree. Sv48 is the widest mode; satp also accepts Sv39
/// (Linux probes by writing satp and reading it back).
pub const MMU_TYPE: &str = "riscv,sv48";

/// Physical addresses outside RAM, as the harts see them.
///
/// Called from hart threads concurrently; `hart` is the accessing hart's index.
/// Every access is naturally aligned (misaligned MMIO accesses are split into
/// bytes by the hart).
pub trait SystemBus: Send + Sync {
    /// Little-endian load of `size` (1, 2, 4, 8) bytes. `None` is an access fault.
    fn load(&self, hart: usize, addr: u64, size: u8) -> Option<u64>;
    /// Little-endian store of the low `size` bytes of `value`. `false` is an access fault.
    fn store(&self, hart: usize, addr: u64, size: u8, value: u64) -> bool;
}

/// Why [`Cpus::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Guest asked to power off (syscon/SBI SRST shutdown), or HTIF exit code 0.
    Poweroff,
    /// Guest asked to reboot.
    Reset,
    /// HTIF `tohost` exit with a non-zero code (payload >> 1), or syscon FAIL.
    ExitCode(u32),
    /// Host side asked to stop (e.g. Ctrl-A X).
    Stopped,
    /// Emulator error that is not the guest's architectural business.
    Error(String),
}

/// Privilege mode a hart starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    User = 0,
    Supervisor = 1,
    Machine = 3,
}

/// Interrupt-controller context on a hart: PLIC drives M and S external lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqContext {
    Machine,
    Supervisor,
}

/// Spike HTIF: physical addresses of the `tohost`/`fromhost` words (usually the
/// ELF symbols of those names). Must lie in RAM.
#[derive(Clone, Debug)]
pub struct HtifConfig {
    pub tohost: u64,
    pub fromhost: Option<u64>,
}

pub struct CpuConfig {
    /// Number of harts, 1 to 8. Hart `i` has `mhartid` = `i`.
    pub harts: usize,
    /// Guest RAM; a single region (its start is the RAM base, e.g. 0x8000_0000).
    pub ram: GuestMemoryMmap,
    /// `time` CSR / mtime frequency, derived from the host monotonic clock (10 MHz on `virt`).
    pub timebase_hz: u64,
    /// Spike HTIF, for bare-metal programs.
    pub htif: Option<HtifConfig>,
    /// HTIF console bytes (device 1, cmd 1) go here. Without it they are dropped.
    pub htif_console: Option<Box<dyn FnMut(u8) + Send>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hart count {0} is out of range (1 to 8)")]
    HartCount(usize),
    #[error("guest RAM must be one region: {0}")]
    Ram(String),
    #[error("HTIF address {0:#x} is not in RAM")]
    Htif(u64),
}

/// Cheap, clonable handle the PLIC uses to drive MEIP/SEIP.
#[derive(Clone)]
pub struct IrqHandle {
    _private: (),
}

impl IrqHandle {
    /// Sets the level of `hart`'s external interrupt line for `ctx` (MEIP or the
    /// external half of SEIP; the guest-writable SEIP bit is OR'd in). Wakes the
    /// hart from WFI. Out-of-range harts are ignored. Cheap when unchanged.
    pub fn set_external(&self, _hart: usize, _ctx: IrqContext, _level: bool) {
        todo!()
    }
}

/// Clonable handle to stop all harts from another thread or a device.
#[derive(Clone)]
pub struct Control {
    _private: (),
}

impl Control {
    /// First reason wins; all harts stop at their next block end (also from WFI),
    /// and [`Cpus::run`] returns that reason.
    pub fn request_exit(&self, _reason: ExitReason) {
        todo!()
    }
}

/// All harts of one machine.
pub struct Cpus {
    _private: (),
}

impl Cpus {
    /// Builds `cfg.harts` harts in their reset state (M mode, pc 0, registers 0).
    pub fn new(_cfg: CpuConfig) -> Result<Self, Error> {
        todo!()
    }
    /// Sets a hart's start state: pc, integer registers given as `(index, value)`
    /// (x1..x31; OpenSBI wants a0 = x10 = hartid, a1 = x11 = FDT address,
    /// a2 = x12 = fw_dynamic_info address) and privilege mode. Every hart runs
    /// from its boot state when [`Cpus::run`] starts; a hart never given one starts
    /// at pc 0. Out-of-range harts/registers are ignored.
    pub fn set_boot_state(&mut self, _hart: usize, _pc: u64, _regs: &[(usize, u64)], _mode: Mode) {
        todo!()
    }
    /// The ACLINT (MSWI msip at +0, MTIMER mtimecmp at +0x4000, mtime at +0xBFF8;
    /// SiFive CLINT layout) for the machine to map on its bus at 0x0200_0000,
    /// length [`ACLINT_SIZE`]. mtime comes from the host monotonic clock.
    pub fn aclint(&self) -> Arc<std::sync::Mutex<dyn devices::BusDevice>> {
        todo!()
    }
    pub fn irq_handle(&self) -> IrqHandle {
        todo!()
    }
    pub fn control(&self) -> Control {
        todo!()
    }
    /// Runs every hart on its own host thread until one of them (HTIF, a device
    /// through [`Control`]) stops the machine; returns the first reason. `bus`
    /// serves every physical access outside RAM. May be called again after
    /// [`Cpus::reset`] + [`Cpus::set_boot_state`] (for `ExitReason::Reset`).
    pub fn run(&mut self, _bus: Arc<dyn SystemBus>) -> ExitReason {
        todo!()
    }
    /// Back to the power-on state (all harts M mode, pc 0, caches flushed,
    /// pending exit cleared). RAM is untouched: the machine reloads it.
    pub fn reset(&mut self) {
        todo!()
    }
    /// Instructions retired by all harts so far (over every `run`), for MIPS figures.
    pub fn instret(&self) -> u64 {
        todo!()
    }
}
