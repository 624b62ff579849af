//! virtio-blk (device 2) on a `block::BlockBackend` (raw or qcow2 with its
//! backing chain): read, write, flush, discard, write-zeroes, GET_ID and a
//! read-only mode. Requests run on the device's worker thread.

pub(crate) mod device;
pub(crate) mod request;
mod worker;

pub use device::{Block, BlockConfig, BlockError};
pub use request::{parse_request, RequestKind};

/// Request types and status codes (virtio 1.2, 5.2.6).
pub mod consts {
    pub const T_IN: u32 = 0;
    pub const T_OUT: u32 = 1;
    pub const T_FLUSH: u32 = 4;
    pub const T_GET_ID: u32 = 8;
    pub const T_DISCARD: u32 = 11;
    pub const T_WRITE_ZEROES: u32 = 13;
    pub const S_OK: u8 = 0;
    pub const S_IOERR: u8 = 1;
    pub const S_UNSUPP: u8 = 2;
    pub const SECTOR: u64 = 512;
    pub const ID_BYTES: usize = 20;
}

/// Feature bits (virtio 1.2, 5.2.3).
pub mod feat {
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
}
