//! QEMU's `pvpanic-mmio` (DT `qemu,pvpanic-mmio`): one byte register. A read
//! returns the events the host understands; the guest writes an event when
//! it panics (bit 0) or has loaded a crash kernel that will take over
//! (bit 1). Byte 1 of the 2-byte window is reserved. The machine decides
//! what an event means.

use crate::BusDevice;

/// Guest window length (the device tree's `reg` size).
pub const PVPANIC_MMIO_LEN: u64 = 2;
pub const PVPANIC_PANICKED: u8 = 1 << 0;
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvPanicEvent {
    /// The guest kernel panicked.
    Panicked,
    /// A kdump kernel is loaded and will handle the crash (the VM keeps running).
    CrashLoaded,
}

pub struct PvPanic {
    on_event: Box<dyn Fn(PvPanicEvent) + Send>,
}

impl PvPanic {
    pub fn new(on_event: Box<dyn Fn(PvPanicEvent) + Send>) -> Self {
        PvPanic { on_event }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first().filter(|_| offset == 0) else {
            return;
        };
        // As QEMU: PANICKED wins over CRASH_LOADED; unknown bits are ignored.
        if v & PVPANIC_PANICKED != 0 {
            (self.on_event)(PvPanicEvent::Panicked);
        } else if v & PVPANIC_CRASH_LOADED != 0 {
            (self.on_event)(PvPanicEvent::CrashLoaded);
        } else if v != 0 {
            tracing::debug!("pvpanic: ignoring event {v:#x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn events_and_capabilities() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let mut p = PvPanic::new(Box::new(move |e| s2.lock().unwrap().push(e)));
        let mut b = [0xffu8; 2];
        p.read(0, &mut b);
        assert_eq!(b, [3, 0]);
        let mut r = [0xffu8; 1];
        p.read(1, &mut r);
        assert_eq!(r, [0]);
        p.write(0, &[0]); // nothing
        p.write(0, &[4]); // unknown bit: ignored
        p.write(1, &[1]); // reserved byte: ignored
        p.write(0, &[2]);
        p.write(0, &[3]);
        p.write(0, &[]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![PvPanicEvent::CrashLoaded, PvPanicEvent::Panicked]
        );
    }
}
