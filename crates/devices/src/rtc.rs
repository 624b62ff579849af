//! Goldfish RTC (`google,goldfish-rtc`), as on QEMU `virt`: nanoseconds since
//! the Unix epoch from the host clock, a settable offset, and a one-shot alarm
//! that raises a level interrupt until the guest clears it.
//!
//! The alarm runs on a small helper thread (started on first use) so that it
//! fires even while every hart sleeps in WFI.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{BusDevice, IrqLine};

pub const RTC_MMIO_LEN: u64 = 0x1000;

const TIME_LOW: u64 = 0x00;
const TIME_HIGH: u64 = 0x04;
const ALARM_LOW: u64 = 0x08;
const ALARM_HIGH: u64 = 0x0c;
const IRQ_ENABLED: u64 = 0x10;
const CLEAR_ALARM: u64 = 0x14;
const ALARM_STATUS: u64 = 0x18;
const CLEAR_INTERRUPT: u64 = 0x1c;

fn host_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

struct State {
    offset: i64,
    time_high_latch: u32,
    alarm_next: u64,
    alarm_running: bool,
    irq_enabled: bool,
    irq_pending: bool,
    thread_started: bool,
    closed: bool,
    irq: Arc<dyn IrqLine>,
}

impl State {
    fn now(&self) -> u64 {
        host_ns().wrapping_add_signed(self.offset)
    }
    fn update_irq(&self) {
        self.irq.set_level(self.irq_pending && self.irq_enabled);
    }
    fn set_time(&mut self, new: u64) {
        let cur = self.now();
        self.offset = self.offset.wrapping_add(new.wrapping_sub(cur) as i64);
    }
}

struct Shared {
    st: Mutex<State>,
    cv: Condvar,
}

pub struct Rtc {
    sh: Arc<Shared>,
}

/// The RTC's guest-visible state, for snapshots. Time stays the host's
/// wall clock plus the guest's offset (QEMU's `-rtc base=utc` behaviour).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    pub offset: i64,
    pub alarm_next: u64,
    pub alarm_running: bool,
    pub irq_enabled: bool,
    pub irq_pending: bool,
}

impl Rtc {
    pub fn save_state(&self) -> RtcState {
        let st = self.lock();
        RtcState {
            offset: st.offset,
            alarm_next: st.alarm_next,
            alarm_running: st.alarm_running,
            irq_enabled: st.irq_enabled,
            irq_pending: st.irq_pending,
        }
    }

    pub fn restore_state(&self, s: &RtcState) {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.offset = s.offset;
        st.alarm_next = s.alarm_next;
        st.irq_enabled = s.irq_enabled;
        st.irq_pending = s.irq_pending;
        st.alarm_running = false;
        st.update_irq();
        if s.alarm_running {
            self.arm(st);
        }
    }

    pub fn new(irq: Arc<dyn IrqLine>) -> Self {
        irq.set_level(false);
        let st = State {
            offset: 0,
            time_high_latch: 0,
            alarm_next: 0,
            alarm_running: false,
            irq_enabled: false,
            irq_pending: false,
            thread_started: false,
            closed: false,
            irq,
        };
        Rtc {
            sh: Arc::new(Shared {
                st: Mutex::new(st),
                cv: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.sh.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arm(&self, st: &mut State) {
        if st.alarm_next <= st.now() {
            st.alarm_running = false;
            st.irq_pending = true;
            st.update_irq();
            return;
        }
        st.alarm_running = true;
        if !st.thread_started {
            st.thread_started = true;
            let sh = self.sh.clone();
            let spawned = std::thread::Builder::new()
                .name("rtc-alarm".into())
                .spawn(move || alarm_thread(sh));
            if let Err(e) = spawned {
                tracing::warn!("rtc: cannot start alarm thread: {e}");
                st.thread_started = false;
            }
        }
        self.sh.cv.notify_all();
    }
}

fn alarm_thread(sh: Arc<Shared>) {
    let mut st = sh.st.lock().unwrap_or_else(|p| p.into_inner());
    while !st.closed {
        if !st.alarm_running {
            st = sh.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        let now = st.now();
        if now >= st.alarm_next {
            st.alarm_running = false;
            st.irq_pending = true;
            st.update_irq();
            continue;
        }
        let wait = Duration::from_nanos(st.alarm_next - now);
        st = sh
            .cv
            .wait_timeout(st, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

impl Drop for Rtc {
    fn drop(&mut self) {
        self.lock().closed = true;
        self.sh.cv.notify_all();
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut st = self.lock();
        let v: u32 = match offset {
            TIME_LOW => {
                let t = st.now();
                st.time_high_latch = (t >> 32) as u32;
                t as u32
            }
            TIME_HIGH => st.time_high_latch,
            ALARM_LOW => st.alarm_next as u32,
            ALARM_HIGH => (st.alarm_next >> 32) as u32,
            IRQ_ENABLED => st.irq_enabled as u32,
            ALARM_STATUS => st.alarm_running as u32,
            _ => 0,
        };
        let b = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = b.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        for (i, d) in data.iter().take(4).enumerate() {
            b[i] = *d;
        }
        let v = u32::from_le_bytes(b) as u64;
        let mut guard = self.lock();
        let st = &mut *guard;
        match offset {
            TIME_LOW => {
                let cur = st.now();
                st.set_time((cur & !0xffff_ffff) | v);
            }
            TIME_HIGH => {
                let cur = st.now();
                st.set_time((cur & 0xffff_ffff) | (v << 32));
            }
            ALARM_LOW => {
                st.alarm_next = (st.alarm_next & !0xffff_ffff) | v;
                self.arm(st);
            }
            ALARM_HIGH => st.alarm_next = (st.alarm_next & 0xffff_ffff) | (v << 32),
            IRQ_ENABLED => {
                st.irq_enabled = v & 1 != 0;
                st.update_irq();
            }
            CLEAR_ALARM => st.alarm_running = false,
            CLEAR_INTERRUPT => {
                st.irq_pending = false;
                st.update_irq();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    #[derive(Default)]
    struct Line(AtomicBool);
    impl IrqLine for Line {
        fn set_level(&self, l: bool) {
            self.0.store(l, Ordering::SeqCst);
        }
    }

    fn r32(r: &mut Rtc, off: u64) -> u32 {
        let mut b = [0u8; 4];
        r.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn now(r: &mut Rtc) -> u64 {
        let lo = r32(r, TIME_LOW) as u64;
        ((r32(r, TIME_HIGH) as u64) << 32) | lo
    }

    #[test]
    fn time_tracks_host_and_can_be_set() {
        let mut r = Rtc::new(Arc::new(Line::default()));
        let host = host_ns();
        let t = now(&mut r);
        assert!(t >= host && t - host < 5_000_000_000, "{t} vs {host}");
        // Set the clock to 2000-01-01 (946684800 s).
        let want: u64 = 946_684_800 * 1_000_000_000;
        r.write(TIME_HIGH, &((want >> 32) as u32).to_le_bytes());
        r.write(TIME_LOW, &(want as u32).to_le_bytes());
        let t = now(&mut r);
        assert!(t >= want && t - want < 5_000_000_000);
    }

    #[test]
    fn alarm_fires_and_clears() {
        let line = Arc::new(Line::default());
        let mut r = Rtc::new(line.clone());
        r.write(IRQ_ENABLED, &1u32.to_le_bytes());
        // An alarm 20 ms ahead fires on the helper thread.
        let at = now(&mut r) + 20_000_000;
        r.write(ALARM_HIGH, &((at >> 32) as u32).to_le_bytes());
        r.write(ALARM_LOW, &(at as u32).to_le_bytes());
        assert_eq!(r32(&mut r, ALARM_STATUS), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !line.0.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "alarm never fired");
            std::thread::yield_now();
        }
        assert_eq!(r32(&mut r, ALARM_STATUS), 0);
        r.write(CLEAR_INTERRUPT, &1u32.to_le_bytes());
        assert!(!line.0.load(Ordering::SeqCst));
        // An alarm in the past fires at once; masking lowers the line.
        r.write(ALARM_LOW, &0u32.to_le_bytes());
        assert!(line.0.load(Ordering::SeqCst));
        r.write(IRQ_ENABLED, &0u32.to_le_bytes());
        assert!(!line.0.load(Ordering::SeqCst));
    }
}
