//! Paravirtual devices: the virtio-mmio (version 2) transport and the block,
//! net, console and rng devices behind it. Backend-independent: a device sees
//! guest memory, its MMIO window (a `devices::BusDevice`) and an `IrqLine`.
//!
//! Dependencies: `virtio-queue` (rust-vmm's split-ring implementation, with
//! descriptor validation), `virtio-bindings` (spec constants).
