//! The emulation CPU backend: RV64IMAFDC + Zicsr, Zifencei, Zicntr, Sstc harts
//! in M/S/U mode with Sv39/Sv48, running in parallel threads over one shared
//! guest RAM. Also owns the per-hart timer/IPI block (ACLINT) and Spike's HTIF,
//! since both are hart-intimate.
//!
//! The machine (crate `arch`) gives us RAM (vm-memory) and a [`SystemBus`] for
//! every non-RAM physical address, and raises external interrupts through
//! [`IrqHandle`]. This file is the contract between the two.
//!
//! Dependencies: `vm-memory` (rust-vmm guest memory, shared with the devices).

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

/// Physical addresses outside RAM, as the harts see them.
pub trait SystemBus: Send + Sync {
    /// Little-endian load of `size` (1, 2, 4, 8) bytes. `None` is an access fault.
    fn load(&self, hart: usize, addr: u64, size: u8) -> Option<u64>;
    /// Little-endian store. `false` is an access fault.
    fn store(&self, hart: usize, addr: u64, size: u8, value: u64) -> bool;
}

/// Why [`Cpus::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Guest asked to power off (syscon/SBI SRST shutdown), or HTIF exit code 0.
    Poweroff,
    /// Guest asked to reboot.
    Reset,
    /// HTIF `tohost` exit with a non-zero code, or syscon FAIL.
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

#[derive(Clone, Debug)]
pub struct HtifConfig {
    pub tohost: u64,
    pub fromhost: Option<u64>,
}

pub struct CpuConfig {
    pub harts: usize,
    /// Guest RAM; a single region starting at the RAM base.
    pub ram: GuestMemoryMmap,
    pub bus: Arc<dyn SystemBus>,
    /// `time` CSR / mtime frequency, derived from the host clock (10 MHz on `virt`).
    pub timebase_hz: u64,
    /// Spike HTIF, for bare-metal programs.
    pub htif: Option<HtifConfig>,
    /// HTIF console bytes (device 1, cmd 1) go here.
    pub htif_console: Option<Box<dyn FnMut(u8) + Send>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hart count {0} is out of range (1 to 8)")]
    HartCount(usize),
    #[error("guest RAM must be one region: {0}")]
    Ram(String),
}

/// Cheap, clonable handle the PLIC uses to drive MEIP/SEIP.
#[derive(Clone)]
pub struct IrqHandle {
    _private: (),
}

impl IrqHandle {
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
    /// First reason wins; all harts stop at their next block end.
    pub fn request_exit(&self, _reason: ExitReason) {
        todo!()
    }
}

/// All harts of one machine.
pub struct Cpus {
    _private: (),
}

impl Cpus {
    pub fn new(_cfg: CpuConfig) -> Result<Self, Error> {
        todo!()
    }
    /// Sets a hart's reset state: OpenSBI wants a0 = hartid, a1 = FDT, a2 = fw_dynamic info.
    pub fn set_boot_state(&mut self, _hart: usize, _pc: u64, _regs: &[(usize, u64)], _mode: Mode) {
        todo!()
    }
    /// The ACLINT (MSWI + MTIMER, SiFive CLINT layout) to map at 0x0200_0000, length 0x1_0000.
    pub fn aclint(&self) -> Arc<std::sync::Mutex<dyn devices::BusDevice>> {
        todo!()
    }
    pub fn irq_handle(&self) -> IrqHandle {
        todo!()
    }
    pub fn control(&self) -> Control {
        todo!()
    }
    /// Runs every hart on its own thread until one asks to stop.
    pub fn run(self) -> ExitReason {
        todo!()
    }
    /// Instructions retired by all harts, for MIPS figures.
    pub fn instret(&self) -> u64 {
        todo!()
    }
}
