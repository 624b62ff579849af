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
//! Design, for speed: instructions are decoded once into blocks (per physical
//! address, up to 64 instructions, running through not-taken branches and
//! in-page direct jumps) kept in a per-hart arena and chained to their
//! successors; a per-hart software TLB stores host-pointer offsets so a RAM
//! access is a tag compare and an add; interrupts, timers and exit requests are
//! looked at between blocks (every 4096 instructions at the latest). Stores to
//! pages holding decoded code bump a per-page version that invalidates the
//! blocks; `fence.i` makes each block re-check its bytes (catching memory that
//! DMA rewrote). Guest RAM is accessed through raw pointers; LR/SC and AMOs use
//! host atomics on it, so they are atomic across harts.
//!
//! Floating point is a software IEEE implementation (module `fpu`) with exact
//! RISC-V flags and all rounding modes.
//!
//! Behaviour worth knowing: instructions are fetched from RAM only (a fetch
//! elsewhere is an instruction access fault, so start harts directly at the
//! firmware entry); misaligned loads/stores are done in hardware, misaligned
//! AMO/LR/SC trap; an LR reserves its aligned doubleword, and another hart's
//! store there (found through a page flag the store path already checks, so
//! ordinary stores pay nothing) makes the SC fail, as does a changed value;
//! PMP is enforced when TLB entries are filled (module `pmp`); `pause`
//! yields the host thread. Diagnostics: `RISCV_EMU_STATS=1` prints per-hart cache/TLB/trap
//! counters when a run ends, `RISCV_EMU_TRACE=SECS` prints every hart's pc
//! (low bits: privilege) every SECS seconds.
//!
//! Dependencies: `vm-memory` (rust-vmm guest memory, shared with the devices),
//! `serde` (hart/ACLINT state for snapshots, encoded by the VMM).

// manual_is_multiple_of: the workspace MSRV (1.85) predates is_multiple_of.
// bad_bit_mask: the generic page-crossing check is trivially true for bytes.
#![allow(
    clippy::too_many_arguments,
    clippy::type_complexity,
    clippy::manual_is_multiple_of,
    clippy::bad_bit_mask
)]

mod aclint;
mod cpus;
mod csr;
pub mod decode;
mod exec;
pub mod fpu;
#[doc(hidden)]
pub mod fuzzing;
mod hart;
mod htif;
mod mmu;
mod pmp;
mod state;
mod tlb;
mod trap;

use std::sync::{Arc, Mutex};

use vm_memory::{
    Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use cpus::{Shared, MIP_MEIP, MIP_SEIP};
use hart::{BlockCache, Hart};
pub use state::{AclintState, CpuState, HartState, Pauser, StateError};

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
    /// The guest signalled a kernel panic (pvpanic, panic LED).
    GuestPanic,
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
    sh: Arc<Shared>,
}

impl IrqHandle {
    /// Sets the level of `hart`'s external interrupt line for `ctx` (MEIP or the
    /// external half of SEIP; the guest-writable SEIP bit is OR'd in). Wakes the
    /// hart from WFI. Out-of-range harts are ignored. Cheap when unchanged.
    pub fn set_external(&self, hart: usize, ctx: IrqContext, level: bool) {
        let Some(hs) = self.sh.harts.get(hart) else {
            return;
        };
        let bit = match ctx {
            IrqContext::Machine => MIP_MEIP,
            IrqContext::Supervisor => MIP_SEIP,
        };
        let old = if level {
            hs.ext.fetch_or(bit, std::sync::atomic::Ordering::SeqCst)
        } else {
            hs.ext.fetch_and(!bit, std::sync::atomic::Ordering::SeqCst)
        };
        if (old & bit != 0) != level {
            hs.kick();
        }
    }
}

/// Clonable handle to stop all harts from another thread or a device.
#[derive(Clone)]
pub struct Control {
    sh: Arc<Shared>,
}

impl Control {
    /// First reason wins; all harts stop at their next block end (also from WFI),
    /// and [`Cpus::run`] returns that reason.
    pub fn request_exit(&self, reason: ExitReason) {
        self.sh.request_exit(reason);
    }
}

/// All harts of one machine.
pub struct Cpus {
    sh: Arc<Shared>,
    harts: Vec<(Hart, BlockCache)>,
    aclint: Arc<Mutex<aclint::Aclint>>,
}

impl Cpus {
    /// Builds `cfg.harts` harts in their reset state (M mode, pc 0, registers 0).
    pub fn new(cfg: CpuConfig) -> Result<Self, Error> {
        if !(1..=8).contains(&cfg.harts) {
            return Err(Error::HartCount(cfg.harts));
        }
        if cfg.ram.num_regions() != 1 {
            return Err(Error::Ram(format!("{} regions", cfg.ram.num_regions())));
        }
        let region = cfg
            .ram
            .iter()
            .next()
            .ok_or_else(|| Error::Ram("no region".into()))?;
        let base = region.start_addr().raw_value();
        let size = region.len();
        if base & 0xfff != 0 || size == 0 {
            return Err(Error::Ram(format!(
                "base {base:#x} must be page aligned and the size non-zero"
            )));
        }
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| Error::Ram(e.to_string()))? as u64;
        if let Some(h) = &cfg.htif {
            for a in [Some(h.tohost), h.fromhost].into_iter().flatten() {
                if a < base || a.saturating_add(8) > base + size {
                    return Err(Error::Htif(a));
                }
            }
        }
        let sh = Arc::new(Shared::new(
            cfg.ram.clone(),
            base,
            size,
            host,
            cfg.harts,
            cfg.timebase_hz,
            cfg.htif,
            cfg.htif_console,
        ));
        let harts = (0..cfg.harts)
            .map(|i| (Hart::new(i, sh.clone()), BlockCache::new()))
            .collect();
        let aclint = Arc::new(Mutex::new(aclint::Aclint { sh: sh.clone() }));
        Ok(Cpus { sh, harts, aclint })
    }
    /// Sets a hart's start state: pc, integer registers given as `(index, value)`
    /// (x1..x31; OpenSBI wants a0 = x10 = hartid, a1 = x11 = FDT address,
    /// a2 = x12 = fw_dynamic_info address) and privilege mode. Every hart runs
    /// from its boot state when [`Cpus::run`] starts; a hart never given one starts
    /// at pc 0. Out-of-range harts/registers are ignored. A hart started in
    /// S or U mode gets PMP entry 0 granting all memory (firmware's job).
    pub fn set_boot_state(&mut self, hart: usize, pc: u64, regs: &[(usize, u64)], mode: Mode) {
        if let Some((h, _)) = self.harts.get_mut(hart) {
            h.set_boot(pc, regs, mode);
        }
    }
    /// The ACLINT (MSWI msip at +0, MTIMER mtimecmp at +0x4000, mtime at +0xBFF8;
    /// SiFive CLINT layout) for the machine to map on its bus at 0x0200_0000,
    /// length [`ACLINT_SIZE`]. mtime comes from the host monotonic clock.
    pub fn aclint(&self) -> Arc<Mutex<dyn devices::BusDevice>> {
        self.aclint.clone()
    }
    pub fn irq_handle(&self) -> IrqHandle {
        IrqHandle {
            sh: self.sh.clone(),
        }
    }
    pub fn control(&self) -> Control {
        Control {
            sh: self.sh.clone(),
        }
    }
    /// Runs every hart on its own host thread until one of them (HTIF, a device
    /// through [`Control`]) stops the machine; returns the first reason. `bus`
    /// serves every physical access outside RAM. May be called again after
    /// [`Cpus::reset`] + [`Cpus::set_boot_state`] (for `ExitReason::Reset`).
    /// An emulator bug in a hart thread (a panic) stops the machine with
    /// `ExitReason::Error`.
    pub fn run(&mut self, bus: Arc<dyn SystemBus>) -> ExitReason {
        let sh = self.sh.clone();
        sh.in_run.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::scope(|s| {
            // RISCV_EMU_TRACE=SECS: print every hart's pc (low bits: mode) periodically.
            if let Some(secs) = std::env::var("RISCV_EMU_TRACE")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
            {
                let sh = sh.clone();
                s.spawn(move || {
                    while !sh.exit_flag.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
                        let pcs: Vec<String> = sh
                            .harts
                            .iter()
                            .map(|h| {
                                format!(
                                    "{:#x}/{:#x}",
                                    h.debug_pc.load(std::sync::atomic::Ordering::Relaxed),
                                    h.debug_cause.load(std::sync::atomic::Ordering::Relaxed)
                                )
                            })
                            .collect();
                        eprintln!("riscv-emu: hart pcs {}", pcs.join(" "));
                    }
                });
            }
            for (hart, cache) in self.harts.iter_mut() {
                let bus = bus.clone();
                let hsh = sh.clone();
                std::thread::Builder::new()
                    .name(format!("hart{}", hart.id))
                    .spawn_scoped(s, move || {
                        let id = hart.id;
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            hart.run(cache, bus)
                        }));
                        if r.is_err() {
                            hsh.request_exit(ExitReason::Error(format!(
                                "hart {id}: emulator panic"
                            )));
                        }
                    })
                    .map_err(|e| {
                        sh.request_exit(ExitReason::Error(format!("cannot start hart thread: {e}")))
                    })
                    .ok();
            }
        });
        sh.in_run.store(false, std::sync::atomic::Ordering::SeqCst);
        let reason = sh
            .exit_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        reason.unwrap_or(ExitReason::Stopped)
    }
    /// Back to the power-on state (all harts M mode, pc 0, caches flushed,
    /// pending exit cleared, timers and IPIs cleared). RAM is untouched: the
    /// machine reloads it.
    pub fn reset(&mut self) {
        use std::sync::atomic::Ordering;
        for (h, c) in self.harts.iter_mut() {
            h.reset();
            c.flush();
        }
        for hs in self.sh.harts.iter() {
            hs.ext.store(0, Ordering::SeqCst);
            hs.mtimecmp.store(u64::MAX, Ordering::SeqCst);
            hs.attention.store(false, Ordering::SeqCst);
            hs.resv.store(0, Ordering::SeqCst);
        }
        for (i, f) in self.sh.page_flags.iter().enumerate() {
            if f.swap(0, Ordering::SeqCst) != 0 {
                self.sh.page_version[i].fetch_add(1, Ordering::SeqCst);
            }
        }
        self.sh.mark_htif();
        *self
            .sh
            .exit_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.sh.exit_flag.store(false, Ordering::SeqCst);
    }
    /// Diagnostics: each hart's (pc, privilege mode, mcause, mepc, scause, sepc) after `run`.
    pub fn hart_states(&self) -> Vec<(u64, u8, u64, u64, u64, u64)> {
        self.harts
            .iter()
            .map(|(h, _)| (h.pc, h.mode, h.mcause, h.mepc, h.scause, h.sepc))
            .collect()
    }
    /// Instructions retired by all harts so far (over every `run`), for MIPS figures.
    pub fn instret(&self) -> u64 {
        self.harts.iter().map(|(h, _)| h.instret).sum()
    }
}
