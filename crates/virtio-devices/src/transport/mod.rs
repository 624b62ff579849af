//! Transports. Only virtio-mmio (version 2) for now; a PCI transport would sit
//! beside it and drive the same [`crate::VirtioDevice`]s.

pub mod mmio;
