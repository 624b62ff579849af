//! Pause/resume and architectural state capture for the harts.
//!
//! [`Pauser`] is a clonable handle: `pause` asks every hart to park at its next
//! block boundary (WFI sleepers are woken), waits until all have parked, then
//! freezes the virtual clock, so mtime does not jump across a pause (QEMU's
//! vm clock). A parking hart deposits a copy of its state ([`HartState`]);
//! state deposited for it to load ([`Pauser::load_harts`]) is taken when it
//! unparks. [`Cpus::save_state`]/[`Cpus::restore_state`] do the same
//! directly when no `run` is in progress (a machine restored at start-up).
//!
//! A state file is untrusted input: [`HartState::check`] refuses values the
//! harts could never hold (privilege 2, a satp mode other than Bare/Sv39/Sv48,
//! out-of-range CSR fields) instead of loading them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cpus::{Shared, MIP_MSIP, MIP_SEIP, MIP_SSIP, MIP_STIP};
use crate::hart::Hart;
use crate::Cpus;

/// One hart's architectural state (the LR reservation is dropped, as a
/// context switch would).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HartState {
    pub x: Vec<u64>,
    pub f: Vec<u64>,
    pub pc: u64,
    pub mode: u8,
    pub wfi: bool,
    pub instret: u64,
    pub mstatus: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    pub mip_local: u64,
    pub mtvec: u64,
    pub stvec: u64,
    pub mepc: u64,
    pub sepc: u64,
    pub mcause: u64,
    pub scause: u64,
    pub mtval: u64,
    pub stval: u64,
    pub mscratch: u64,
    pub sscratch: u64,
    pub satp: u64,
    pub mcounteren: u64,
    pub scounteren: u64,
    pub menvcfg: u64,
    pub senvcfg: u64,
    pub mcountinhibit: u64,
    pub stimecmp: u64,
    pub fflags: u32,
    pub frm: u32,
    pub pmpcfg: Vec<u64>,
    pub pmpaddr: Vec<u64>,
}

/// The ACLINT: per-hart mtimecmp and MSIP, and the (frozen) mtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclintState {
    pub mtime: u64,
    pub mtimecmp: Vec<u64>,
    pub msip: Vec<bool>,
}

/// Every hart plus the ACLINT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuState {
    pub harts: Vec<HartState>,
    pub aclint: AclintState,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("the harts did not stop within {0:?}")]
    Timeout(Duration),
    #[error("the machine has stopped")]
    Stopped,
    #[error("the machine is not paused")]
    NotPaused,
    #[error("CPU state: {0}")]
    Invalid(String),
}

fn bad(s: String) -> StateError {
    StateError::Invalid(s)
}

impl HartState {
    /// Refuses state no hart could be in.
    pub fn check(&self, id: usize) -> Result<(), StateError> {
        let e = |what: &str| bad(format!("hart {id}: {what}"));
        if self.x.len() != 32 || self.f.len() != 32 {
            return Err(e("register file is not 32 integer and 32 FP registers"));
        }
        if self.x[0] != 0 {
            return Err(e("x0 is not zero"));
        }
        if self.pmpcfg.len() != 8 || self.pmpaddr.len() != 64 {
            return Err(e("PMP is not 8 pmpcfg and 64 pmpaddr registers"));
        }
        if !matches!(self.mode, 0 | 1 | 3) {
            return Err(e(&format!("privilege mode {} does not exist", self.mode)));
        }
        if !matches!(self.satp >> 60, 0 | 8 | 9) {
            return Err(e(&format!(
                "satp mode {} is not Bare, Sv39 or Sv48",
                self.satp >> 60
            )));
        }
        if self.fflags > 0x1f || self.frm > 7 {
            return Err(e("fflags/frm out of range"));
        }
        if (self.mstatus >> 11) & 3 == 2 {
            return Err(e("mstatus.MPP is the reserved mode 2"));
        }
        Ok(())
    }
}

impl Hart {
    pub(crate) fn save_state(&self) -> HartState {
        HartState {
            x: self.x[..32].to_vec(),
            f: self.f.to_vec(),
            pc: self.pc,
            mode: self.mode,
            wfi: self.wfi,
            instret: self.instret,
            mstatus: self.mstatus,
            medeleg: self.medeleg,
            mideleg: self.mideleg,
            mie: self.mie,
            mip_local: self.mip_local,
            mtvec: self.mtvec,
            stvec: self.stvec,
            mepc: self.mepc,
            sepc: self.sepc,
            mcause: self.mcause,
            scause: self.scause,
            mtval: self.mtval,
            stval: self.stval,
            mscratch: self.mscratch,
            sscratch: self.sscratch,
            satp: self.satp,
            mcounteren: self.mcounteren,
            scounteren: self.scounteren,
            menvcfg: self.menvcfg,
            senvcfg: self.senvcfg,
            mcountinhibit: self.mcountinhibit,
            stimecmp: self.stimecmp,
            fflags: self.fflags,
            frm: self.frm,
            pmpcfg: self.pmpcfg.to_vec(),
            pmpaddr: self.pmpaddr.to_vec(),
        }
    }

    /// Loads a state that passed [`HartState::check`]; CSR fields go through
    /// the same WARL masks as guest writes would.
    pub(crate) fn load_state(&mut self, s: &HartState) {
        self.x[..32].copy_from_slice(&s.x);
        self.x[0] = 0;
        self.f.copy_from_slice(&s.f);
        self.pc = s.pc;
        self.mode = s.mode;
        self.wfi = s.wfi;
        self.instret = s.instret;
        self.mstatus = 0;
        self.medeleg = s.medeleg;
        self.mideleg = s.mideleg;
        self.mie = s.mie;
        self.mip_local = s.mip_local & (MIP_SSIP | MIP_STIP | MIP_SEIP);
        self.mtvec = 0;
        self.stvec = 0;
        self.mepc = s.mepc;
        self.sepc = s.sepc;
        self.mcause = s.mcause;
        self.scause = s.scause;
        self.mtval = s.mtval;
        self.stval = s.stval;
        self.mscratch = s.mscratch;
        self.sscratch = s.sscratch;
        self.satp = 0;
        self.mcounteren = s.mcounteren;
        self.scounteren = s.scounteren;
        self.menvcfg = s.menvcfg;
        self.senvcfg = s.senvcfg;
        self.mcountinhibit = s.mcountinhibit;
        self.stimecmp = s.stimecmp;
        self.fflags = s.fflags;
        self.frm = s.frm;
        self.pmpcfg = [0; 8];
        self.pmpaddr = [0; 64];
        // Through the CSR write paths: masks and WARL rules as for the guest.
        let m = self.mode;
        self.mode = 3;
        for (csr, v) in [
            (0x300, s.mstatus),
            (0x302, s.medeleg),
            (0x303, s.mideleg),
            (0x304, s.mie),
            (0x305, s.mtvec),
            (0x105, s.stvec),
            (0x306, s.mcounteren),
            (0x106, s.scounteren),
            (0x30a, s.menvcfg),
            (0x320, s.mcountinhibit),
            (0x341, s.mepc),
            (0x141, s.sepc),
            (0x180, s.satp),
        ] {
            let _ = self.csr_write(csr, v);
        }
        // pmpaddr before pmpcfg: a locked entry refuses address writes.
        for (i, &v) in s.pmpaddr.iter().enumerate() {
            let _ = self.csr_write(0x3b0 + i as u32, v);
        }
        for (i, &v) in s.pmpcfg.iter().enumerate() {
            let _ = self.csr_write(0x3a0 + 2 * i as u32, v);
        }
        self.mode = m;
        self.reservation = None;
        self.flush_tlb();
        self.update_ctx();
        self.flush_icache = true;
        self.check = true;
    }

    /// Parks until the pause is over (or the machine stops), depositing this
    /// hart's state while parked and loading state deposited for it.
    pub(crate) fn park(&mut self) {
        let sh = self.sh.clone();
        let mut p = sh.park.lock().unwrap_or_else(|p| p.into_inner());
        p.saved[self.id] = Some(self.save_state());
        p.parked += 1;
        sh.park_cv.notify_all();
        while sh.pause_req.load(Ordering::SeqCst) && !sh.exit_flag.load(Ordering::SeqCst) {
            p = sh.park_cv.wait(p).unwrap_or_else(|p| p.into_inner());
        }
        p.parked -= 1;
        p.saved[self.id] = None;
        if let Some(s) = p.load[self.id].take() {
            self.load_state(&s);
        }
        sh.park_cv.notify_all();
    }
}

/// Clonable pause/resume handle (see the module docs).
#[derive(Clone)]
pub struct Pauser {
    sh: Arc<Shared>,
}

/// How long `pause` waits for the harts (they stop within one block, unless
/// one is stuck in a device access).
const PAUSE_TIMEOUT: Duration = Duration::from_secs(30);

impl Pauser {
    /// Parks every hart at a block boundary and freezes mtime. Idempotent.
    /// Called before [`Cpus::run`], the harts park as soon as they start.
    /// Must not be called while holding a device lock a hart may need.
    pub fn pause(&self) -> Result<(), StateError> {
        let sh = &self.sh;
        sh.pause_req.store(true, Ordering::SeqCst);
        for h in sh.harts.iter() {
            h.kick();
        }
        if !sh.in_run.load(Ordering::SeqCst) {
            // No hart threads: nothing runs, freeze now (Cpus::run parks them).
            sh.clock.freeze();
            return Ok(());
        }
        let p = self.wait_parked()?;
        drop(p);
        sh.clock.freeze();
        Ok(())
    }

    /// Waits until every hart has parked (pause requested, inside `run`).
    fn wait_parked(&self) -> Result<std::sync::MutexGuard<'_, crate::cpus::Park>, StateError> {
        let sh = &self.sh;
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut p = sh.park.lock().unwrap_or_else(|p| p.into_inner());
        while p.parked < sh.harts.len() {
            if !sh.pause_req.load(Ordering::SeqCst) {
                return Err(StateError::NotPaused);
            }
            if sh.exit_flag.load(Ordering::SeqCst) {
                return Err(StateError::Stopped);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StateError::Timeout(PAUSE_TIMEOUT));
            }
            p = sh
                .park_cv
                .wait_timeout(p, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(p)
    }

    /// Thaws mtime where it stopped and lets the harts go. Idempotent.
    pub fn resume(&self) {
        let sh = &self.sh;
        let _p = sh.park.lock().unwrap_or_else(|p| p.into_inner());
        sh.clock.thaw();
        sh.pause_req.store(false, Ordering::SeqCst);
        sh.park_cv.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.sh.pause_req.load(Ordering::SeqCst)
    }

    /// The parked harts' state and the ACLINT's. The machine must be paused;
    /// waits for the harts to park (they do once [`Cpus::run`] runs).
    pub fn save(&self) -> Result<CpuState, StateError> {
        let sh = &self.sh;
        let p = self.wait_parked()?;
        let harts = p
            .saved
            .iter()
            .map(|s| s.clone().ok_or(StateError::NotPaused))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CpuState {
            harts,
            aclint: aclint_state(sh),
        })
    }

    /// Gives the parked harts `state` to load when they resume, and sets the
    /// ACLINT now. Decoded code and TLBs are dropped (RAM changed under them).
    pub fn load(&self, state: &CpuState) -> Result<(), StateError> {
        let sh = &self.sh;
        check(sh, state)?;
        let mut p = self.wait_parked()?;
        for (i, h) in state.harts.iter().enumerate() {
            p.load[i] = Some(h.clone());
            p.saved[i] = Some(h.clone());
        }
        drop(p);
        set_aclint(sh, &state.aclint);
        invalidate_code(sh);
        Ok(())
    }
}

fn aclint_state(sh: &Shared) -> AclintState {
    AclintState {
        mtime: sh.clock.mtime(),
        mtimecmp: sh
            .harts
            .iter()
            .map(|h| h.mtimecmp.load(Ordering::SeqCst))
            .collect(),
        msip: sh
            .harts
            .iter()
            .map(|h| h.ext.load(Ordering::SeqCst) & MIP_MSIP != 0)
            .collect(),
    }
}

fn check(sh: &Shared, s: &CpuState) -> Result<(), StateError> {
    let n = sh.harts.len();
    if s.harts.len() != n || s.aclint.mtimecmp.len() != n || s.aclint.msip.len() != n {
        return Err(bad(format!(
            "{} harts in the state, {n} in the machine",
            s.harts.len()
        )));
    }
    for (i, h) in s.harts.iter().enumerate() {
        h.check(i)?;
    }
    Ok(())
}

fn set_aclint(sh: &Shared, a: &AclintState) {
    sh.clock.set_mtime(a.mtime);
    for (i, h) in sh.harts.iter().enumerate() {
        h.mtimecmp.store(a.mtimecmp[i], Ordering::SeqCst);
        if a.msip[i] {
            h.ext.fetch_or(MIP_MSIP, Ordering::SeqCst);
        } else {
            h.ext.fetch_and(!MIP_MSIP, Ordering::SeqCst);
        }
        h.kick();
    }
}

/// Every decoded block becomes stale (RAM was rewritten behind the harts).
fn invalidate_code(sh: &Shared) {
    for (i, f) in sh.page_flags.iter().enumerate() {
        if f.swap(0, Ordering::SeqCst) != 0 {
            sh.page_version[i].fetch_add(1, Ordering::SeqCst);
        }
    }
    sh.mark_htif();
}

impl Cpus {
    pub fn pauser(&self) -> Pauser {
        Pauser {
            sh: self.sh.clone(),
        }
    }

    /// State of every hart and the ACLINT, outside [`Cpus::run`].
    pub fn save_state(&self) -> CpuState {
        CpuState {
            harts: self.harts.iter().map(|(h, _)| h.save_state()).collect(),
            aclint: aclint_state(&self.sh),
        }
    }

    /// Loads `state` (checked first) outside [`Cpus::run`]; RAM must already
    /// hold the matching contents.
    pub fn restore_state(&mut self, state: &CpuState) -> Result<(), StateError> {
        check(&self.sh, state)?;
        for ((h, c), s) in self.harts.iter_mut().zip(&state.harts) {
            h.load_state(s);
            c.flush();
        }
        set_aclint(&self.sh, &state.aclint);
        invalidate_code(&self.sh);
        Ok(())
    }
}
