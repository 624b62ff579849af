//! The platform-level interrupt controller (SiFive PLIC layout, as on QEMU
//! `virt`): per-source priority, level-triggered gateways with pending and
//! in-flight (claimed) state, and one context per hart privilege (M = 2h,
//! S = 2h + 1) with enables, threshold and claim/complete.
//!
//! Outputs go to a sink (the CPU backend's `IrqHandle` in the machine); it is
//! called only when a context's output changes.

use std::sync::{Arc, Mutex};

use devices::{BusDevice, IrqLine};
use riscv_emu::IrqContext;
use serde::{Deserialize, Serialize};

/// Sources 1..=NDEV (source 0 does not exist), as QEMU `virt` advertises.
pub const PLIC_NDEV: u32 = 95;
const WORDS: usize = (PLIC_NDEV as usize + 1).div_ceil(32);
/// MMIO window; covers contexts for 8 harts × 2 with room to spare.
pub const PLIC_MMIO_LEN: u64 = 0x60_0000;

const PENDING_BASE: u64 = 0x1000;
const ENABLE_BASE: u64 = 0x2000;
const ENABLE_STRIDE: u64 = 0x80;
const CONTEXT_BASE: u64 = 0x20_0000;
const CONTEXT_STRIDE: u64 = 0x1000;
const MAX_PRIORITY: u32 = 7;

pub type PlicSink = Box<dyn Fn(usize, IrqContext, bool) + Send>;

/// The PLIC's registers and gateway state, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlicState {
    pub priority: Vec<u32>,
    pub level: Vec<u32>,
    pub pending: Vec<u32>,
    pub claimed: Vec<u32>,
    pub enable: Vec<Vec<u32>>,
    pub threshold: Vec<u32>,
}

pub struct Plic {
    priority: [u32; PLIC_NDEV as usize + 1],
    level: [u32; WORDS],
    pending: [u32; WORDS],
    claimed: [u32; WORDS],
    enable: Vec<[u32; WORDS]>,
    threshold: Vec<u32>,
    out: Vec<bool>,
    sink: Option<PlicSink>,
}

fn bit(src: u32) -> (usize, u32) {
    ((src / 32) as usize, 1 << (src % 32))
}

impl Plic {
    pub fn new(harts: usize) -> Self {
        let nctx = harts * 2;
        Plic {
            priority: [0; PLIC_NDEV as usize + 1],
            level: [0; WORDS],
            pending: [0; WORDS],
            claimed: [0; WORDS],
            enable: vec![[0; WORDS]; nctx],
            threshold: vec![0; nctx],
            out: vec![false; nctx],
            sink: None,
        }
    }

    pub fn save_state(&self) -> PlicState {
        PlicState {
            priority: self.priority.to_vec(),
            level: self.level.to_vec(),
            pending: self.pending.to_vec(),
            claimed: self.claimed.to_vec(),
            enable: self.enable.iter().map(|e| e.to_vec()).collect(),
            threshold: self.threshold.clone(),
        }
    }

    /// Loads `s` (untrusted: shapes and ranges checked, bits outside the
    /// sources masked) and drives every output to match.
    pub fn restore_state(&mut self, s: &PlicState) -> Result<(), String> {
        let nctx = self.out.len();
        let words = |v: &Vec<u32>| v.len() == WORDS;
        if s.priority.len() != self.priority.len()
            || !words(&s.level)
            || !words(&s.pending)
            || !words(&s.claimed)
            || s.enable.len() != nctx
            || !s.enable.iter().all(words)
            || s.threshold.len() != nctx
        {
            return Err(format!(
                "PLIC: the state does not have the shape of a {}-hart PLIC",
                nctx / 2
            ));
        }
        let mut valid = [u32::MAX; WORDS];
        valid[0] &= !1;
        for (w, v) in valid.iter_mut().enumerate() {
            let top = (w as u32 + 1) * 32;
            if top > PLIC_NDEV + 1 {
                *v &= u32::MAX.checked_shr(top - (PLIC_NDEV + 1)).unwrap_or(0);
            }
        }
        for (i, p) in s.priority.iter().enumerate() {
            self.priority[i] = if i == 0 { 0 } else { (*p).min(MAX_PRIORITY) };
        }
        for (w, &v) in valid.iter().enumerate() {
            self.level[w] = s.level[w] & v;
            self.pending[w] = s.pending[w] & v;
            self.claimed[w] = s.claimed[w] & v;
            for (e, se) in self.enable.iter_mut().zip(&s.enable) {
                e[w] = se[w] & v;
            }
        }
        for c in 0..nctx {
            self.threshold[c] = s.threshold[c].min(MAX_PRIORITY);
        }
        // Drive every output, whatever it was.
        for ctx in 0..nctx {
            self.out[ctx] = self.best(ctx) == 0;
        }
        self.update();
        Ok(())
    }

    /// Connects the outputs (done once the harts exist) and drives them.
    pub fn connect(&mut self, sink: PlicSink) {
        for (ctx, &o) in self.out.iter().enumerate() {
            sink(ctx / 2, ctx_kind(ctx), o);
        }
        self.sink = Some(sink);
    }

    /// Input level of a source (its device's interrupt line).
    pub fn set_level(&mut self, src: u32, level: bool) {
        if src == 0 || src > PLIC_NDEV {
            return;
        }
        let (w, m) = bit(src);
        if level {
            self.level[w] |= m;
            if self.claimed[w] & m == 0 {
                self.pending[w] |= m;
            }
        } else {
            self.level[w] &= !m;
            self.pending[w] &= !m;
        }
        self.update();
    }

    /// Highest-priority pending source enabled for `ctx` above its threshold.
    fn best(&self, ctx: usize) -> u32 {
        let (mut best, mut best_prio) = (0, self.threshold[ctx]);
        for w in 0..WORDS {
            let mut bits = self.pending[w] & self.enable[ctx][w];
            while bits != 0 {
                let src = w as u32 * 32 + bits.trailing_zeros();
                bits &= bits - 1;
                let p = self.priority[src as usize];
                if p > best_prio {
                    best = src;
                    best_prio = p;
                }
            }
        }
        best
    }

    fn update(&mut self) {
        for ctx in 0..self.out.len() {
            let o = self.best(ctx) != 0;
            if o != self.out[ctx] {
                self.out[ctx] = o;
                if let Some(s) = &self.sink {
                    s(ctx / 2, ctx_kind(ctx), o);
                }
            }
        }
    }

    fn claim(&mut self, ctx: usize) -> u32 {
        let src = self.best(ctx);
        if src != 0 {
            let (w, m) = bit(src);
            self.pending[w] &= !m;
            self.claimed[w] |= m;
            self.update();
        }
        src
    }

    fn complete(&mut self, ctx: usize, src: u32) {
        if src == 0 || src > PLIC_NDEV {
            return;
        }
        let (w, m) = bit(src);
        // The spec ignores completions for sources not enabled in this context.
        if self.enable[ctx][w] & m == 0 || self.claimed[w] & m == 0 {
            return;
        }
        self.claimed[w] &= !m;
        if self.level[w] & m != 0 {
            self.pending[w] |= m;
        }
        self.update();
    }

    fn read32(&mut self, off: u64) -> u32 {
        match off {
            0..PENDING_BASE => self.priority.get((off / 4) as usize).copied().unwrap_or(0),
            PENDING_BASE..ENABLE_BASE => self
                .pending
                .get(((off - PENDING_BASE) / 4) as usize)
                .copied()
                .unwrap_or(0),
            ENABLE_BASE..CONTEXT_BASE => {
                let ctx = ((off - ENABLE_BASE) / ENABLE_STRIDE) as usize;
                let w = ((off - ENABLE_BASE) % ENABLE_STRIDE / 4) as usize;
                self.enable
                    .get(ctx)
                    .and_then(|e| e.get(w))
                    .copied()
                    .unwrap_or(0)
            }
            _ => {
                let ctx = ((off - CONTEXT_BASE) / CONTEXT_STRIDE) as usize;
                if ctx >= self.out.len() {
                    return 0;
                }
                match (off - CONTEXT_BASE) % CONTEXT_STRIDE {
                    0 => self.threshold[ctx],
                    4 => self.claim(ctx),
                    _ => 0,
                }
            }
        }
    }

    fn write32(&mut self, off: u64, v: u32) {
        match off {
            0..PENDING_BASE => {
                let src = (off / 4) as usize;
                if src != 0 && src <= PLIC_NDEV as usize {
                    self.priority[src] = v.min(MAX_PRIORITY);
                    self.update();
                }
            }
            PENDING_BASE..ENABLE_BASE => {} // read-only
            ENABLE_BASE..CONTEXT_BASE => {
                let ctx = ((off - ENABLE_BASE) / ENABLE_STRIDE) as usize;
                let w = ((off - ENABLE_BASE) % ENABLE_STRIDE / 4) as usize;
                if ctx < self.enable.len() && w < WORDS {
                    // Source 0 and sources past NDEV are hardwired to zero.
                    let mut valid = u32::MAX;
                    if w == 0 {
                        valid &= !1;
                    }
                    let top = (w as u32 + 1) * 32;
                    if top > PLIC_NDEV + 1 {
                        valid &= u32::MAX >> (top - (PLIC_NDEV + 1));
                    }
                    self.enable[ctx][w] = v & valid;
                    self.update();
                }
            }
            _ => {
                let ctx = ((off - CONTEXT_BASE) / CONTEXT_STRIDE) as usize;
                if ctx >= self.out.len() {
                    return;
                }
                match (off - CONTEXT_BASE) % CONTEXT_STRIDE {
                    0 => {
                        self.threshold[ctx] = v.min(MAX_PRIORITY);
                        self.update();
                    }
                    4 => self.complete(ctx, v),
                    _ => {}
                }
            }
        }
    }
}

fn ctx_kind(ctx: usize) -> IrqContext {
    if ctx.is_multiple_of(2) {
        IrqContext::Machine
    } else {
        IrqContext::Supervisor
    }
}

impl BusDevice for Plic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are 32-bit; other widths read as zero (no side effects).
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read32(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 4 && offset.is_multiple_of(4) {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write32(offset, v);
        }
    }
}

/// A device's interrupt line into PLIC source `src`.
pub struct PlicLine {
    plic: Arc<Mutex<Plic>>,
    src: u32,
}

impl PlicLine {
    pub fn new(plic: Arc<Mutex<Plic>>, src: u32) -> Self {
        PlicLine { plic, src }
    }
}

impl IrqLine for PlicLine {
    fn set_level(&self, level: bool) {
        self.plic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_level(self.src, level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Arc<Mutex<Vec<(usize, IrqContext, bool)>>>;

    fn plic(harts: usize) -> (Plic, Seen) {
        let seen: Seen = Arc::default();
        let s2 = seen.clone();
        let mut p = Plic::new(harts);
        p.connect(Box::new(move |h, c, l| s2.lock().unwrap().push((h, c, l))));
        seen.lock().unwrap().clear();
        (p, seen)
    }

    fn w(p: &mut Plic, off: u64, v: u32) {
        p.write(off, &v.to_le_bytes());
    }
    fn r(p: &mut Plic, off: u64) -> u32 {
        let mut b = [0u8; 4];
        p.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    const S1: usize = 3; // hart 1, S context
    fn en(ctx: usize) -> u64 {
        ENABLE_BASE + ENABLE_STRIDE * ctx as u64
    }
    fn th(ctx: usize) -> u64 {
        CONTEXT_BASE + CONTEXT_STRIDE * ctx as u64
    }

    #[test]
    fn claim_complete_level_semantics() {
        let (mut p, seen) = plic(2);
        w(&mut p, 10 * 4, 1);
        w(&mut p, en(S1), 1 << 10);
        p.set_level(10, true);
        assert_eq!(r(&mut p, PENDING_BASE), 1 << 10);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(1, IrqContext::Supervisor, true)]
        );
        // Claim returns the source, clears pending and lowers the output.
        assert_eq!(r(&mut p, th(S1) + 4), 10);
        assert_eq!(r(&mut p, PENDING_BASE), 0);
        assert_eq!(
            seen.lock().unwrap().last(),
            Some(&(1, IrqContext::Supervisor, false))
        );
        // Still-high level while in flight does not re-pend; a second claim gets 0.
        p.set_level(10, true);
        assert_eq!(r(&mut p, th(S1) + 4), 0);
        // Completion re-pends a source whose line is still high.
        w(&mut p, th(S1) + 4, 10);
        assert_eq!(r(&mut p, PENDING_BASE), 1 << 10);
        assert_eq!(
            seen.lock().unwrap().last(),
            Some(&(1, IrqContext::Supervisor, true))
        );
        // Lowering the line withdraws the request.
        p.set_level(10, false);
        assert_eq!(r(&mut p, PENDING_BASE), 0);
        assert_eq!(
            seen.lock().unwrap().last(),
            Some(&(1, IrqContext::Supervisor, false))
        );
    }

    #[test]
    fn priority_threshold_and_enables() {
        let (mut p, seen) = plic(1);
        w(&mut p, 4, 2); // src 1 prio 2
        w(&mut p, 11 * 4, 5); // src 11 prio 5
        assert_eq!(r(&mut p, 11 * 4), 5);
        w(&mut p, 12 * 4, 100); // clamped
        assert_eq!(r(&mut p, 12 * 4), MAX_PRIORITY);
        p.set_level(1, true);
        p.set_level(11, true);
        assert!(seen.lock().unwrap().is_empty(), "nothing enabled yet");
        w(&mut p, en(0), (1 << 1) | (1 << 11) | 1);
        assert_eq!(
            r(&mut p, en(0)),
            (1 << 1) | (1 << 11),
            "source 0 is hardwired off"
        );
        assert_eq!(*seen.lock().unwrap(), vec![(0, IrqContext::Machine, true)]);
        // Threshold 5 masks both (strictly greater is needed).
        w(&mut p, th(0), 5);
        assert_eq!(
            seen.lock().unwrap().last(),
            Some(&(0, IrqContext::Machine, false))
        );
        assert_eq!(r(&mut p, th(0) + 4), 0);
        w(&mut p, th(0), 1);
        assert_eq!(r(&mut p, th(0) + 4), 11, "highest priority first");
        assert_eq!(r(&mut p, th(0) + 4), 1);
        // Completing an unclaimed or out-of-range source is ignored.
        w(&mut p, th(0) + 4, 7);
        w(&mut p, th(0) + 4, 1000);
        // Contexts past the harts, odd widths and offsets are harmless.
        assert_eq!(r(&mut p, th(5) + 4), 0);
        w(&mut p, en(9), u32::MAX);
        let mut b = [0u8; 2];
        p.read(2, &mut b);
        assert_eq!(b, [0, 0]);
        assert_eq!(r(&mut p, PLIC_MMIO_LEN - 4), 0);
        // Words past the last source do not exist.
        w(&mut p, en(0) + 8, u32::MAX);
        assert_eq!(r(&mut p, en(0) + 8), u32::MAX);
        w(&mut p, en(0) + 12, u32::MAX);
        assert_eq!(r(&mut p, en(0) + 12), 0);
    }

    #[test]
    fn line_reaches_plic() {
        let (p, seen) = plic(1);
        let p = Arc::new(Mutex::new(p));
        {
            let mut g = p.lock().unwrap();
            w(&mut g, 10 * 4, 1);
            w(&mut g, en(1), 1 << 10);
        }
        let line = PlicLine::new(p.clone(), 10);
        line.set_level(true);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(0, IrqContext::Supervisor, true)]
        );
    }
}
