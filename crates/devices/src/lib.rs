//! Backend-independent device plumbing: the MMIO/PIO [`Bus`] that CPU backends
//! dispatch to, the [`IrqLine`] a device raises, and the platform devices
//! (16550 UART, goldfish RTC, sifive,test0 syscon) that both the emulator and
//! KVM machines share.
//!
//! Dependencies: `vm-superio` (rust-vmm's 16550 model, so we don't rewrite it).

pub mod bus;
pub mod irq;
pub mod rtc;
pub mod serial;
pub mod syscon;

pub use bus::{Bus, BusDevice, BusError};
pub use irq::IrqLine;
pub use rtc::Rtc;
pub use serial::Serial;
pub use syscon::{Syscon, SysconEvent};
