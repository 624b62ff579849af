//! The virtio-blk device model: features, config space, and the hand-off of
//! the backend to and from the worker thread across activate/reset.

use std::sync::Arc;

use block::BlockBackend;

use super::consts::{ID_BYTES, SECTOR};
use super::feat;
use super::worker::BlockWorker;
use crate::device::{read_config_bytes, ActivateError, Interrupt, QueueContext, VirtioDevice};
use crate::worker::Worker;
use crate::{ids, Mem};

pub(crate) const QUEUE_SIZE: u16 = 256;
/// Data segments per request we advertise (queue size minus header and status).
pub(crate) const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest single data segment we advertise.
pub(crate) const SIZE_MAX: u32 = 1 << 20;
/// Per-request discard / write-zeroes limits, in sectors.
pub(crate) const MAX_DISCARD_SECTORS: u32 = 1 << 22;

#[derive(Debug, Clone, Default)]
pub struct BlockConfig {
    /// Expose the disk read-only (VIRTIO_BLK_F_RO); writes fail with IOERR.
    pub read_only: bool,
    /// GET_ID string, at most 20 bytes.
    pub serial: Option<String>,
    /// Logical block size; 512 when `None`.
    pub block_size: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("serial {0:?} is longer than {ID_BYTES} bytes")]
    SerialTooLong(String),
    #[error("block size {0} must be a power of two between 512 and 65536")]
    BlockSize(u32),
}

pub(crate) struct Settings {
    pub read_only: bool,
    pub serial: [u8; ID_BYTES],
    pub capacity_sectors: u64,
    pub acked: u64,
}

/// What the worker hands back when stopped: the backend and the queue.
type Stopped = (Box<dyn BlockBackend>, QueueContext);

pub struct Block {
    backend: Option<Box<dyn BlockBackend>>,
    worker: Option<Worker<Option<Stopped>>>,
    read_only: bool,
    serial: [u8; ID_BYTES],
    block_size: u32,
    features: u64,
    /// Fixed at creation: the backend lives on the worker while active.
    capacity_sectors: u64,
}

impl Block {
    pub fn new(backend: Box<dyn BlockBackend>, cfg: BlockConfig) -> Result<Self, BlockError> {
        let mut serial = [0u8; ID_BYTES];
        if let Some(s) = &cfg.serial {
            if s.len() > ID_BYTES {
                return Err(BlockError::SerialTooLong(s.clone()));
            }
            serial[..s.len()].copy_from_slice(s.as_bytes());
        }
        let block_size = cfg.block_size.unwrap_or(512);
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(BlockError::BlockSize(block_size));
        }
        let read_only = cfg.read_only || backend.read_only();
        let mut features = feat::SIZE_MAX | feat::SEG_MAX | feat::BLK_SIZE | feat::FLUSH;
        if read_only {
            features |= feat::RO;
        } else {
            features |= feat::DISCARD | feat::WRITE_ZEROES;
        }
        Ok(Self {
            capacity_sectors: backend.size() / SECTOR,
            backend: Some(backend),
            worker: None,
            read_only,
            serial,
            block_size,
            features,
        })
    }

    fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    fn config(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        c[0..8].copy_from_slice(&self.capacity_sectors().to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // geometry (16..20) left zero: no CHS.
        c[20..24].copy_from_slice(&self.block_size.to_le_bytes());
        // topology (24..32): physical == logical, no alignment offset.
        // writeback (32): only meaningful with CONFIG_WCE, which we don't offer.
        c[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        let align = (self.block_size as u64 / SECTOR).max(1) as u32;
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        c[44..48].copy_from_slice(&align.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        c[56] = 1; // write_zeroes_may_unmap
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        ids::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(
        &mut self,
        mem: Mem,
        irq: Arc<Interrupt>,
        mut queues: Vec<QueueContext>,
        acked: u64,
    ) -> Result<(), ActivateError> {
        ActivateError::check_queue_count(&queues, 1)?;
        let settings = Settings {
            read_only: self.read_only,
            serial: self.serial,
            capacity_sectors: self.capacity_sectors(),
            acked,
        };
        let backend = self.backend.take().ok_or(ActivateError::BackendGone)?;
        let q = queues.remove(0);
        let w = BlockWorker::new(mem, irq, q, backend, settings);
        self.worker = Some(Worker::spawn("virtio-blk", move |stop| w.run(stop))?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            // The worker flushes before handing the backend back.
            self.backend = w.stop().flatten().map(|(b, _)| b);
            if self.backend.is_none() {
                tracing::error!("virtio-blk: worker lost the disk backend");
            }
        }
    }

    fn disk(&mut self) -> Option<&mut dyn BlockBackend> {
        if self.worker.is_some() {
            return None;
        }
        self.backend
            .as_deref_mut()
            .map(|b| b as &mut dyn BlockBackend)
    }

    fn pause(&mut self) -> Option<Vec<QueueContext>> {
        let (backend, q) = self.worker.take()?.stop().flatten()?;
        self.backend = Some(backend);
        Some(vec![q])
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.reset();
        if let Some(b) = self.backend.as_mut() {
            if let Err(e) = b.flush() {
                tracing::error!("virtio-blk: final flush failed: {e}");
            }
        }
    }
}
