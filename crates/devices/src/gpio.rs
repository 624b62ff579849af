//! A SiFive GPIO controller (`sifive,gpio0`, Linux's built-in gpio-sifive):
//! 32-bit registers for input, output and direction, per-pin interrupt
//! enables and write-1-to-clear pending bits. Nothing drives the pins from
//! outside, so inputs read back the driven outputs and no interrupt ever
//! becomes pending. The machine learns about output changes through a
//! callback (its use: a `gpio-leds` LED with `panic-indicator`, the
//! Linux-native way to signal a kernel panic to the platform).

use crate::BusDevice;

pub const GPIO_MMIO_LEN: u64 = 0x1000;

const INPUT_VAL: u64 = 0x00;
const OUTPUT_EN: u64 = 0x08;
const OUTPUT_VAL: u64 = 0x0c;
const RISE_IP: u64 = 0x1c;
const FALL_IP: u64 = 0x24;
const HIGH_IP: u64 = 0x2c;
const LOW_IP: u64 = 0x34;
const OUTPUT_XOR: u64 = 0x40;
const NREGS: usize = 17;

pub struct SifiveGpio {
    regs: [u32; NREGS],
    pins: u32,
    /// Levels last reported to `on_change`.
    driven: u32,
    on_change: Box<dyn Fn(u32) + Send>,
}

impl SifiveGpio {
    /// `pins` GPIOs (1 to 32; the device tree lists one interrupt per pin).
    /// `on_change(levels)` runs whenever the driven output levels change.
    pub fn new(pins: u32, on_change: Box<dyn Fn(u32) + Send>) -> Self {
        SifiveGpio {
            regs: [0; NREGS],
            pins: pins.clamp(1, 32),
            driven: 0,
            on_change,
        }
    }

    /// Registers, for snapshots.
    pub fn save_state(&self) -> Vec<u32> {
        self.regs.to_vec()
    }

    /// Loads registers (untrusted: the count must match; bits past the
    /// pins are dropped). Outputs are not reported: the LEDs' consumer saw
    /// these levels when the state was taken.
    pub fn restore_state(&mut self, regs: &[u32]) -> Result<(), String> {
        if regs.len() != NREGS {
            return Err(format!("GPIO: {} registers, expected {NREGS}", regs.len()));
        }
        let m = self.mask();
        for (r, v) in self.regs.iter_mut().zip(regs) {
            *r = v & m;
        }
        self.driven = self.outputs();
        Ok(())
    }

    fn mask(&self) -> u32 {
        u32::MAX >> (32 - self.pins)
    }

    /// Pin levels driven by the outputs (output enabled, value after XOR).
    fn outputs(&self) -> u32 {
        let r = |o: u64| self.regs[(o / 4) as usize];
        (r(OUTPUT_VAL) ^ r(OUTPUT_XOR)) & r(OUTPUT_EN) & self.mask()
    }
}

impl BusDevice for SifiveGpio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 || offset & 3 != 0 || offset / 4 >= NREGS as u64 {
            return;
        }
        let v = match offset {
            INPUT_VAL => self.outputs(),
            // Nothing changes pin levels from outside: no interrupt is ever pending.
            RISE_IP | FALL_IP | HIGH_IP | LOW_IP => 0,
            _ => self.regs[(offset / 4) as usize],
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 4 || offset & 3 != 0 || offset / 4 >= NREGS as u64 {
            return;
        }
        let mut b = [0u8; 4];
        b.copy_from_slice(data);
        let v = u32::from_le_bytes(b) & self.mask();
        match offset {
            INPUT_VAL | RISE_IP | FALL_IP | HIGH_IP | LOW_IP => {}
            _ => self.regs[(offset / 4) as usize] = v,
        }
        let now = self.outputs();
        if now != self.driven {
            self.driven = now;
            (self.on_change)(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn w(g: &mut SifiveGpio, off: u64, v: u32) {
        g.write(off, &v.to_le_bytes());
    }
    fn r(g: &mut SifiveGpio, off: u64) -> u32 {
        let mut b = [0u8; 4];
        g.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn outputs_drive_pins_and_report_changes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let mut g = SifiveGpio::new(2, Box::new(move |l| s2.lock().unwrap().push(l)));
        // A value without output enable drives nothing (gpio-leds sets the
        // value first, then the direction).
        w(&mut g, OUTPUT_VAL, 1);
        assert_eq!(r(&mut g, INPUT_VAL), 0);
        w(&mut g, OUTPUT_EN, 1);
        assert_eq!(r(&mut g, INPUT_VAL), 1);
        assert_eq!(r(&mut g, OUTPUT_VAL), 1);
        w(&mut g, OUTPUT_VAL, 0);
        w(&mut g, OUTPUT_VAL, 0); // unchanged: not reported again
        w(&mut g, OUTPUT_XOR, 1); // inverted pin
                                  // Pins beyond `pins` do not exist; pending bits never set.
        w(&mut g, OUTPUT_EN, 0xffff_ffff);
        assert_eq!(r(&mut g, OUTPUT_EN), 3);
        w(&mut g, RISE_IP, 1);
        assert_eq!(r(&mut g, RISE_IP), 0);
        // Bad widths/offsets are ignored.
        g.write(OUTPUT_VAL, &[3]);
        g.write(0x800, &1u32.to_le_bytes());
        let mut b = [0xffu8; 2];
        g.read(OUTPUT_VAL, &mut b);
        assert_eq!(b, [0, 0]);
        assert_eq!(*seen.lock().unwrap(), vec![1, 0, 1]);
    }
}
