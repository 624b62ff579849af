//! The virtio-net device model: features, config space (MAC, link status),
//! and the TAP handed to and back from the worker across activate/reset.

use std::sync::Arc;

use super::feat;
use super::tap::Tap;
use super::worker::NetWorker;
use crate::device::{read_config_bytes, ActivateError, Interrupt, QueueContext, VirtioDevice};
use crate::worker::Worker;
use crate::{ids, Mem};

pub(crate) const QUEUE_SIZE: u16 = 256;
const LINK_UP: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("MAC address {0:?} is not six hex bytes separated by ':'")]
    BadMac(String),
    #[error("MAC address {0} is multicast; a NIC needs a unicast address")]
    MulticastMac(String),
}

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(NetError::BadMac(s.into()));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(NetError::BadMac(s.into()));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| NetError::BadMac(s.into()))?;
    }
    if mac[0] & 1 != 0 {
        return Err(NetError::MulticastMac(s.into()));
    }
    Ok(mac)
}

/// What the worker hands back when stopped: the TAP and the queues.
type Stopped = (Tap, Vec<QueueContext>);

pub struct Net {
    tap: Option<Tap>,
    mac: [u8; 6],
    worker: Option<Worker<Option<Stopped>>>,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        Self {
            tap: Some(tap),
            mac,
            worker: None,
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// TUN_F_* offloads the guest can take, from its accepted features.
fn tap_offloads(acked: u64) -> u32 {
    let mut f = 0;
    if acked & feat::GUEST_CSUM != 0 {
        f |= libc::TUN_F_CSUM;
        if acked & feat::GUEST_TSO4 != 0 {
            f |= libc::TUN_F_TSO4;
        }
        if acked & feat::GUEST_TSO6 != 0 {
            f |= libc::TUN_F_TSO6;
        }
        if acked & feat::GUEST_ECN != 0 && f & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
            f |= libc::TUN_F_TSO_ECN;
        }
    }
    f
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        ids::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        feat::CSUM
            | feat::GUEST_CSUM
            | feat::MAC
            | feat::GUEST_TSO4
            | feat::GUEST_TSO6
            | feat::GUEST_ECN
            | feat::HOST_TSO4
            | feat::HOST_TSO6
            | feat::HOST_ECN
            | feat::MRG_RXBUF
            | feat::STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        read_config_bytes(&c, offset, data);
    }

    fn activate(
        &mut self,
        mem: Mem,
        irq: Arc<Interrupt>,
        queues: Vec<QueueContext>,
        acked: u64,
    ) -> Result<(), ActivateError> {
        ActivateError::check_queue_count(&queues, 2)?;
        let tap = self.tap.take().ok_or(ActivateError::BackendGone)?;
        if let Err(e) = tap.set_offload(tap_offloads(acked)) {
            let msg = format!("TUNSETOFFLOAD on {}: {e}", tap.name());
            self.tap = Some(tap);
            return Err(ActivateError::Backend(msg));
        }
        let w = NetWorker::new(mem, irq, queues, tap, acked & feat::MRG_RXBUF != 0);
        self.worker = Some(Worker::spawn("virtio-net", move |stop| w.run(stop))?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            self.tap = w.stop().flatten().map(|(t, _)| t);
        }
    }

    fn pause(&mut self) -> Option<Vec<QueueContext>> {
        let (tap, queues) = self.worker.take()?.stop().flatten()?;
        self.tap = Some(tap);
        Some(queues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:0f").unwrap(),
            [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5254:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
            "+1:54:00:ab:cd:0f",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_mac("01:00:5e:00:00:01"),
            Err(NetError::MulticastMac(_))
        ));
    }

    #[test]
    fn offloads_follow_negotiation() {
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(
            tap_offloads(feat::GUEST_TSO4),
            0,
            "TSO needs checksum offload"
        );
        assert_eq!(
            tap_offloads(feat::GUEST_CSUM | feat::GUEST_TSO4 | feat::GUEST_TSO6),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
    }
}
