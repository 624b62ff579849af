//! Paravirtual devices: the virtio-mmio (version 2) transport and the block,
//! net, console and rng devices behind it. Backend-independent: a device sees
//! guest memory, its MMIO window (a `devices::BusDevice`) and an `IrqLine`.
//!
//! Layout: [`transport::mmio`] speaks the register protocol and owns the
//! queues until the driver sets DRIVER_OK; then it hands them to a
//! [`VirtioDevice`], which runs them on its own worker thread so that no I/O
//! ever happens on a vCPU/hart thread. [`chain`] turns a guest descriptor chain
//! into validated segments; every device reads and writes guest memory only
//! through it (vm-memory volatile accessors, never a `&[u8]` into the guest).
//!
//! Dependencies: `virtio-queue` (rust-vmm's split-ring implementation, with
//! descriptor validation), `virtio-bindings` (spec constants), `vmm-sys-util`
//! (eventfd/epoll for the worker threads).

pub mod block;
pub mod chain;
pub mod console;
pub mod device;
pub mod fuzzing;
pub mod net;
pub mod rng;
#[doc(hidden)]
pub mod testing;
pub mod transport;
mod worker;

pub use device::{ActivateError, Interrupt, QueueContext, VirtioDevice};
pub use transport::mmio::MmioTransport;

/// Guest memory as every device sees it (cheap to clone: a list of `Arc`ed regions).
pub type Mem = vm_memory::GuestMemoryMmap;

/// Device IDs (virtio spec 5).
pub mod ids {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const CONSOLE: u32 = 3;
    pub const RNG: u32 = 4;
}

/// Transport-level feature bits every device here supports.
pub mod features {
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
    /// Offered by the transport on behalf of every device.
    pub const COMMON: u64 = INDIRECT_DESC | EVENT_IDX | VERSION_1;
}

/// Size of one virtio-mmio window; slots are this far apart.
pub const MMIO_WINDOW: u64 = 0x1000;
