//! virtio-net (device 1) on a Linux TAP: one rx/tx queue pair, the MAC from
//! the config space, link status, mergeable receive buffers, and checksum /
//! TSO offloads passed straight through (the TAP speaks the same 12-byte
//! virtio-net header, IFF_VNET_HDR).

mod device;
mod tap;
mod worker;

pub use device::{parse_mac, Net, NetError};
pub use tap::Tap;
pub use worker::parse_tx_frame;

/// Feature bits (virtio 1.2, 5.1.3).
pub mod feat {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const MAC: u64 = 1 << 5;
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const GUEST_ECN: u64 = 1 << 9;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    pub const HOST_ECN: u64 = 1 << 13;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
}

/// virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame (plus header) the TAP can hand us with TSO: 64 KiB of IP
/// payload plus an Ethernet/VLAN header.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65535 + 18;
