//! SiFive test device (`sifive,test0`), QEMU `virt`'s syscon: one 32-bit
//! register whose low half asks for poweroff (0x5555), reset (0x7777) or a
//! failure exit (0x3333, code in the high half). The machine decides what an
//! event means (the device must not know the CPU backend).

use crate::BusDevice;

pub const SYSCON_MMIO_LEN: u64 = 0x1000;
pub const SYSCON_POWEROFF: u32 = 0x5555;
pub const SYSCON_RESET: u32 = 0x7777;
pub const SYSCON_FAIL: u32 = 0x3333;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysconEvent {
    Poweroff,
    Reset,
    Fail(u16),
}

pub struct Syscon {
    on_event: Box<dyn Fn(SysconEvent) + Send>,
}

impl Syscon {
    pub fn new(on_event: Box<dyn Fn(SysconEvent) + Send>) -> Self {
        Syscon { on_event }
    }
}

impl BusDevice for Syscon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // OpenSBI and Linux write the whole word; a 16-bit write of the
        // command is accepted too, as QEMU does.
        if offset != 0 || data.len() < 2 {
            return;
        }
        let mut b = [0u8; 4];
        b[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
        let v = u32::from_le_bytes(b);
        let ev = match v & 0xffff {
            SYSCON_POWEROFF => SysconEvent::Poweroff,
            SYSCON_RESET => SysconEvent::Reset,
            SYSCON_FAIL => SysconEvent::Fail((v >> 16) as u16),
            other => {
                tracing::debug!("syscon: ignoring command {other:#x}");
                return;
            }
        };
        (self.on_event)(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn commands_map_to_events() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let mut s = Syscon::new(Box::new(move |e| s2.lock().unwrap().push(e)));
        s.write(0, &0x5555u32.to_le_bytes());
        s.write(0, &0x7777u32.to_le_bytes());
        s.write(0, &((3u32 << 16) | 0x3333).to_le_bytes());
        s.write(0, &0x1234u32.to_le_bytes()); // unknown: ignored
        s.write(4, &0x5555u32.to_le_bytes()); // other offset: ignored
        s.write(0, &[0x55]); // byte write: ignored
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                SysconEvent::Poweroff,
                SysconEvent::Reset,
                SysconEvent::Fail(3)
            ]
        );
        let mut b = [0xffu8; 4];
        s.read(0, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
