//! The 16550A UART: rust-vmm's `vm-superio` model behind a [`BusDevice`],
//! plus the level-triggered interrupt output that a PLIC needs.
//!
//! vm-superio signals interrupts as edges (its `Trigger`) and never lowers
//! them; an edge-to-level mismatch loses interrupts on a level-sensitive
//! controller. So after every access we recompute the real 16550 output,
//! "an enabled condition is pending", from the model's registers.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{Serial as SuperioSerial, SerialEvents, SerialState};
use vm_superio::Trigger;

use crate::{BusDevice, IrqLine};

const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
// vm-superio keeps pending causes as a bitmask in IIR.
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;

/// MMIO window of one UART on `virt` (registers are byte-wide, stride 1).
pub const SERIAL_MMIO_LEN: u64 = 0x100;

struct NoTrigger;
impl Trigger for NoTrigger {
    type E = ();
    fn trigger(&self) -> Result<(), ()> {
        Ok(())
    }
}

/// Wakes a host input thread that waits for the guest to drain the FIFO.
#[derive(Clone, Default)]
pub struct RxSpace(Arc<(Mutex<u64>, Condvar)>);

impl RxSpace {
    fn notify(&self) {
        let (m, c) = &*self.0;
        *m.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        c.notify_all();
    }
    /// Current generation; pass it to [`RxSpace::wait_change`].
    pub fn generation(&self) -> u64 {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Blocks until the guest has emptied the receive FIFO since `gen`, or
    /// `timeout` passes.
    pub fn wait_change(&self, gen: u64, timeout: std::time::Duration) {
        let (m, c) = &*self.0;
        let g = m.lock().unwrap_or_else(|p| p.into_inner());
        let _ = c.wait_timeout_while(g, timeout, |g| *g == gen);
    }
}

struct Events(RxSpace);
impl SerialEvents for Events {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        self.0.notify();
    }
}

/// The UART's registers and receive FIFO, for snapshots (vm-superio's
/// `SerialState`, which has no serde support).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// A 16550A UART. Output goes to `out`; input arrives via [`Serial::enqueue`].
pub struct Serial {
    inner: SuperioSerial<NoTrigger, Events, Box<dyn Write + Send>>,
    irq: Arc<dyn IrqLine>,
    level: bool,
    rx_space: RxSpace,
}

impl Serial {
    pub fn new(out: Box<dyn Write + Send>, irq: Arc<dyn IrqLine>) -> Self {
        let rx_space = RxSpace::default();
        let inner = SuperioSerial::with_events(NoTrigger, Events(rx_space.clone()), out);
        let mut s = Serial {
            inner,
            irq,
            level: false,
            rx_space,
        };
        s.irq.set_level(false);
        s.update_irq();
        s
    }

    /// Event the host input thread waits on when the FIFO is full.
    pub fn rx_space(&self) -> RxSpace {
        self.rx_space.clone()
    }

    /// Queues host input for the guest; returns how many bytes fit (the
    /// FIFO holds 64).
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.inner.fifo_capacity());
        if n > 0 {
            // Only FullFifo or a trigger error are possible: neither here.
            let _ = self.inner.enqueue_raw_bytes(&bytes[..n]);
        }
        self.update_irq();
        n
    }

    pub fn save_state(&self) -> UartState {
        let s = self.inner.state();
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Loads registers and FIFO (untrusted: a FIFO over 64 bytes is refused)
    /// and drives the interrupt line to match.
    pub fn restore_state(&mut self, s: &UartState) -> Result<(), String> {
        let st = SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        if st.in_buffer.len() > 64 {
            return Err(format!(
                "UART: {} bytes in a 64-byte FIFO",
                st.in_buffer.len()
            ));
        }
        let placeholder: Box<dyn Write + Send> = Box::new(std::io::sink());
        let old = std::mem::replace(
            &mut self.inner,
            SuperioSerial::with_events(NoTrigger, Events(self.rx_space.clone()), placeholder),
        );
        let out = old.into_writer();
        self.inner = SuperioSerial::from_state(&st, NoTrigger, Events(self.rx_space.clone()), out)
            .map_err(|e| format!("UART: {e:?}"))?;
        self.level = !self.level;
        self.update_irq();
        self.rx_space.notify();
        Ok(())
    }

    /// Room left in the receive FIFO.
    pub fn rx_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }

    fn update_irq(&mut self) {
        let st = self.inner.state();
        let iir = st.interrupt_identification;
        let ier = st.interrupt_enable;
        let level = (iir & IIR_THRE != 0 && ier & IER_THRE != 0)
            || (iir & IIR_RDA != 0 && ier & IER_RDA != 0);
        if level != self.level {
            self.level = level;
            self.irq.set_level(level);
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset < 8 {
            data[0] = self.inner.read(offset as u8);
            self.update_irq();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < 8 {
            // A host output error (closed stdout) must not stop the guest.
            if let Err(e) = self.inner.write(offset as u8, data[0]) {
                tracing::debug!("uart: {e:?}");
            }
            self.update_irq();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Line(AtomicBool);
    impl IrqLine for Line {
        fn set_level(&self, l: bool) {
            self.0.store(l, Ordering::SeqCst);
        }
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn rd(s: &mut Serial, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    #[test]
    fn output_and_thre_interrupt() {
        let line = Arc::new(Line::default());
        let sink = Sink::default();
        let mut s = Serial::new(Box::new(sink.clone()), line.clone());
        s.write(0, b"h");
        s.write(0, b"i");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        assert!(!line.0.load(Ordering::SeqCst), "no interrupt while IER=0");
        // Enabling THRE with an empty transmitter raises the line at once.
        s.write(1, &[IER_THRE]);
        assert!(line.0.load(Ordering::SeqCst));
        // LSR says THR empty and transmitter idle.
        assert_eq!(rd(&mut s, 5) & 0x60, 0x60);
        // Reading IIR acknowledges THRE and lowers the line.
        assert_eq!(rd(&mut s, 2) & 0x0f, 0x02);
        assert!(!line.0.load(Ordering::SeqCst));
        // Each transmitted byte re-arms THRE.
        s.write(0, b"x");
        assert!(line.0.load(Ordering::SeqCst));
        // Masking IER lowers the output even with the cause pending.
        s.write(1, &[0]);
        assert!(!line.0.load(Ordering::SeqCst));
    }

    #[test]
    fn input_fifo_and_rx_interrupt() {
        let line = Arc::new(Line::default());
        let mut s = Serial::new(Box::new(std::io::sink()), line.clone());
        s.write(1, &[IER_RDA]);
        assert!(!line.0.load(Ordering::SeqCst));
        let big = [b'a'; 100];
        assert_eq!(s.enqueue(&big), 64, "FIFO holds 64 bytes");
        assert_eq!(s.rx_capacity(), 0);
        assert!(line.0.load(Ordering::SeqCst));
        assert_eq!(rd(&mut s, 5) & 1, 1, "LSR data ready");
        let space = s.rx_space();
        let gen = space.generation();
        for _ in 0..64 {
            assert_eq!(rd(&mut s, 0), b'a');
        }
        assert_eq!(rd(&mut s, 5) & 1, 0);
        assert!(!line.0.load(Ordering::SeqCst));
        assert_ne!(
            space.generation(),
            gen,
            "drained FIFO wakes the input thread"
        );
        // Out-of-range offsets read as zero and are ignored on write.
        assert_eq!(rd(&mut s, 0x80), 0);
        s.write(0x80, &[1]);
    }
}
