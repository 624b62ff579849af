//! Interrupt lines as devices see them: a level they raise or lower.
//!
//! The interrupt controller behind the line (the emulator's PLIC, KVM's
//! in-kernel irqchip) is the machine's business, not the device's.

/// A level-triggered interrupt line. Implementations must be cheap to call
/// repeatedly with the same level.
pub trait IrqLine: Send + Sync {
    fn set_level(&self, level: bool);
}
