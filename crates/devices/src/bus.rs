//! An address-ordered map from guest-physical ranges to devices.
//!
//! Each device sits behind its own mutex so that vCPUs/harts touching
//! different devices never contend.

use std::sync::{Arc, Mutex};

/// A device reachable through MMIO or port I/O.
///
/// `offset` is relative to the base the device was inserted at. `data.len()`
/// is the access width (1, 2, 4 or 8). Devices must tolerate any offset and
/// width: the guest picks them.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device range {base:#x}+{len:#x} is empty or overflows")]
    BadRange { base: u64, len: u64 },
    #[error("device range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

struct Entry {
    base: u64,
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
}

/// Immutable once the machine is built; lookups are a binary search.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let pos = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(pos, Entry { base, len, dev });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let idx = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(idx.checked_sub(1)?)?;
        let off = addr - e.base;
        (off.checked_add(size as u64)? <= e.len).then_some((e, off))
    }

    /// Returns false when no device covers `[addr, addr + data.len())`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                e.dev
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(off, data);
                true
            }
            None => false,
        }
    }

    /// Returns false when no device covers `[addr, addr + data.len())`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                e.dev
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x100, Arc::new(Mutex::new(Reg(1))))
            .unwrap();
        bus.insert(0x2000, 0x100, Arc::new(Mutex::new(Reg(7))))
            .unwrap();
        assert_eq!(
            bus.insert(0x10ff, 2, Arc::new(Mutex::new(Reg(0)))),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 2
            })
        );
        assert_eq!(
            bus.insert(u64::MAX, 2, Arc::new(Mutex::new(Reg(0)))),
            Err(BusError::BadRange {
                base: u64::MAX,
                len: 2
            })
        );
        let mut b = [0u8; 4];
        assert!(bus.read(0x2004, &mut b));
        assert_eq!(b, [11; 4]);
        assert!(bus.write(0x1000, &[42]));
        assert!(bus.read(0x1000, &mut b[..1]));
        assert_eq!(b[0], 42);
        // Straddling the end of a device, or in a hole, is unclaimed.
        assert!(!bus.read(0x10fe, &mut b));
        assert!(!bus.read(0x1800, &mut b));
        assert!(!bus.read(0, &mut b));
    }
}
