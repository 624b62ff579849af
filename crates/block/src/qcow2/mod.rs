//! qcow2 (v2 and v3): header, L1/L2 mapping, refcounts, caches, snapshots,
//! compression and check.

/// An open qcow2 file (its backing chain is owned by the `Image`).
pub struct Qcow2 {}
