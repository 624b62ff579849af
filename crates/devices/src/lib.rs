//! Backend-independent device plumbing: the MMIO/PIO [`Bus`] that CPU backends
//! dispatch to, the [`IrqLine`] a device raises, and the platform devices
//! (16550 UART, goldfish RTC, sifive,test0 syscon, pvpanic-mmio, SiFive GPIO)
//! that the machines share.
//!
//! Dependencies: `vm-superio` (rust-vmm's 16550 model, so we don't rewrite it),
//! `serde` (device state for snapshots).

pub mod bus;
pub mod gpio;
pub mod irq;
pub mod pvpanic;
pub mod rtc;
pub mod serial;
pub mod syscon;

pub use bus::{Bus, BusDevice, BusError};
pub use gpio::SifiveGpio;
pub use irq::IrqLine;
pub use pvpanic::{PvPanic, PvPanicEvent};
pub use rtc::{Rtc, RtcState};
pub use serial::{Serial, UartState};
pub use syscon::{Syscon, SysconEvent};
