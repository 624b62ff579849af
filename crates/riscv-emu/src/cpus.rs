//! State shared by all harts of a machine: RAM mapping, per-page code/HTIF
//! flags, per-hart interrupt lines and timers, the virtual clock and the exit
//! request. Handles (`IrqHandle`, `Control`, the ACLINT) hold an `Arc` of it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use crate::{ExitReason, HtifConfig};

/// Page flag: the page holds decoded instructions (stores must invalidate).
pub const PAGE_CODE: u8 = 1;
/// Page flag: the page holds HTIF `tohost` (stores must be inspected).
pub const PAGE_HTIF: u8 = 2;
/// Page flag: some hart may hold an LR reservation on the page (stores
/// must break other harts' reservations on their granule).
pub const PAGE_RESV: u8 = 4;
/// LR/SC reservation granule (bytes, power of two): the aligned doubleword.
pub const RESV_GRANULE: u64 = 8;

pub const MIP_SSIP: u64 = 1 << 1;
pub const MIP_MSIP: u64 = 1 << 3;
pub const MIP_STIP: u64 = 1 << 5;
pub const MIP_MTIP: u64 = 1 << 7;
pub const MIP_SEIP: u64 = 1 << 9;
pub const MIP_MEIP: u64 = 1 << 11;

/// Per-hart state other threads touch. Cache-line aligned against false sharing.
#[repr(align(64))]
pub struct HartShared {
    /// Externally driven mip bits: MSIP (ACLINT), MEIP and external SEIP (PLIC).
    pub ext: AtomicU64,
    pub mtimecmp: AtomicU64,
    /// Something changed that the hart must look at at its next block end.
    pub attention: AtomicBool,
    pub lock: Mutex<()>,
    pub cv: Condvar,
    /// pc and mode as of the last block-end service, for RISCV_EMU_TRACE.
    pub debug_pc: AtomicU64,
    pub debug_cause: AtomicU64,
    /// Host address of the granule this hart's LR reserved, 0 when none;
    /// other harts' stores to it reset it to 0 (the SC then fails).
    pub resv: AtomicU64,
}

impl HartShared {
    fn new() -> Self {
        HartShared {
            ext: AtomicU64::new(0),
            mtimecmp: AtomicU64::new(u64::MAX),
            attention: AtomicBool::new(false),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            debug_pc: AtomicU64::new(0),
            debug_cause: AtomicU64::new(0),
            resv: AtomicU64::new(0),
        }
    }
    /// Flags attention and wakes the hart if it sleeps in WFI.
    pub fn kick(&self) {
        self.attention.store(true, Ordering::SeqCst);
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.cv.notify_all();
    }
}

/// mtime derived from the host monotonic clock; frozen while the machine is
/// paused (it resumes where it stopped).
pub struct Clock {
    start: Instant,
    hz: u64,
    offset: AtomicI64,
    frozen: AtomicBool,
    frozen_at: AtomicU64,
}

impl Clock {
    pub fn new(hz: u64) -> Self {
        Clock {
            start: Instant::now(),
            hz: hz.max(1),
            offset: AtomicI64::new(0),
            frozen: AtomicBool::new(false),
            frozen_at: AtomicU64::new(0),
        }
    }
    /// Stops mtime at its current value (no-op if already frozen).
    pub fn freeze(&self) {
        if !self.frozen.load(Ordering::SeqCst) {
            self.frozen_at.store(self.mtime(), Ordering::SeqCst);
            self.frozen.store(true, Ordering::SeqCst);
        }
    }
    /// Restarts mtime from where it was frozen.
    pub fn thaw(&self) {
        if self.frozen.load(Ordering::SeqCst) {
            let v = self.frozen_at.load(Ordering::SeqCst);
            self.offset
                .store(v.wrapping_sub(self.ticks()) as i64, Ordering::SeqCst);
            self.frozen.store(false, Ordering::SeqCst);
        }
    }
    fn ticks(&self) -> u64 {
        let ns = self.start.elapsed().as_nanos();
        (ns * self.hz as u128 / 1_000_000_000) as u64
    }
    pub fn mtime(&self) -> u64 {
        if self.frozen.load(Ordering::Relaxed) {
            return self.frozen_at.load(Ordering::Relaxed);
        }
        self.ticks()
            .wrapping_add(self.offset.load(Ordering::Relaxed) as u64)
    }
    pub fn set_mtime(&self, v: u64) {
        if self.frozen.load(Ordering::SeqCst) {
            self.frozen_at.store(v, Ordering::SeqCst);
            return;
        }
        self.offset
            .store(v.wrapping_sub(self.ticks()) as i64, Ordering::Relaxed);
    }
    /// Host time until mtime reaches `target` (zero if already there).
    pub fn until(&self, target: u64) -> Duration {
        let now = self.mtime();
        if target <= now {
            return Duration::ZERO;
        }
        let ticks = (target - now) as u128;
        let ns = ticks * 1_000_000_000 / self.hz as u128;
        Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
    }
}

pub struct Shared {
    pub ram_base: u64,
    pub ram_size: u64,
    /// Host address of guest RAM's first byte.
    pub ram_host: u64,
    /// Keeps the mapping alive.
    pub _mem: GuestMemoryMmap,
    pub page_flags: Box<[AtomicU8]>,
    pub page_version: Box<[AtomicU32]>,
    pub harts: Box<[HartShared]>,
    pub exit_flag: AtomicBool,
    pub exit_reason: Mutex<Option<ExitReason>>,
    pub clock: Clock,
    pub htif: Option<HtifConfig>,
    pub htif_console: Mutex<Option<Box<dyn FnMut(u8) + Send>>>,
    /// Pause requested: harts park at their next block end (module `state`).
    pub pause_req: AtomicBool,
    /// Hart threads exist (inside `Cpus::run`).
    pub in_run: AtomicBool,
    pub park: Mutex<Park>,
    pub park_cv: Condvar,
}

/// Parked harts and the state they deposit / are given to load.
pub struct Park {
    pub parked: usize,
    pub saved: Vec<Option<crate::state::HartState>>,
    pub load: Vec<Option<crate::state::HartState>>,
}

impl Shared {
    pub fn new(
        mem: GuestMemoryMmap,
        ram_base: u64,
        ram_size: u64,
        ram_host: u64,
        harts: usize,
        hz: u64,
        htif: Option<HtifConfig>,
        htif_console: Option<Box<dyn FnMut(u8) + Send>>,
    ) -> Self {
        let pages = ram_size.div_ceil(4096) as usize;
        let sh = Shared {
            ram_base,
            ram_size,
            ram_host,
            _mem: mem,
            page_flags: (0..pages).map(|_| AtomicU8::new(0)).collect(),
            page_version: (0..pages).map(|_| AtomicU32::new(0)).collect(),
            harts: (0..harts).map(|_| HartShared::new()).collect(),
            exit_flag: AtomicBool::new(false),
            exit_reason: Mutex::new(None),
            clock: Clock::new(hz),
            htif,
            htif_console: Mutex::new(htif_console),
            pause_req: AtomicBool::new(false),
            in_run: AtomicBool::new(false),
            park: Mutex::new(Park {
                parked: 0,
                saved: vec![None; harts],
                load: vec![None; harts],
            }),
            park_cv: Condvar::new(),
        };
        if let Some(h) = &sh.htif {
            sh.mark_htif();
            let _ = h;
        }
        sh
    }

    pub fn mark_htif(&self) {
        if let Some(h) = &self.htif {
            for a in [Some(h.tohost), h.fromhost].into_iter().flatten() {
                if let Some(p) = self.ram_page(a) {
                    self.page_flags[p].fetch_or(PAGE_HTIF, Ordering::SeqCst);
                }
            }
        }
    }

    /// RAM page index of a physical address.
    #[inline]
    pub fn ram_page(&self, pa: u64) -> Option<usize> {
        let off = pa.wrapping_sub(self.ram_base);
        (off < self.ram_size).then_some((off >> 12) as usize)
    }

    /// Host address of `[pa, pa + len)` if it lies wholly in RAM.
    #[inline]
    pub fn ram_host_addr(&self, pa: u64, len: u64) -> Option<u64> {
        let off = pa.wrapping_sub(self.ram_base);
        (off < self.ram_size && self.ram_size - off >= len).then(|| self.ram_host + off)
    }

    pub fn request_exit(&self, reason: ExitReason) {
        {
            let mut r = self.exit_reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.exit_flag.store(true, Ordering::SeqCst);
        for h in self.harts.iter() {
            h.kick();
        }
        // Parked harts (a paused machine) wake up to stop.
        let _p = self.park.lock().unwrap_or_else(|p| p.into_inner());
        self.park_cv.notify_all();
    }
}
