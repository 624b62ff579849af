//! The contract between the transport and a device model: [`VirtioDevice`],
//! plus the [`Interrupt`] state both sides share (interrupt status bits, the
//! level of the line, DEVICE_NEEDS_RESET and the config generation).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use devices::IrqLine;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::Mem;

/// InterruptStatus bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration (or DEVICE_NEEDS_RESET) changed.
pub const INT_CONFIG: u32 = 2;

/// Interrupt state of one transport. Workers raise bits; the driver acks them
/// through the transport. The line level always equals `status != 0`; the
/// status and the level change under one lock so that a raise racing an ack
/// can never leave the line high with nothing pending (a level-triggered
/// storm) or low with something pending (a lost interrupt).
pub struct Interrupt {
    status: Mutex<u32>,
    line: Arc<dyn IrqLine>,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
    name: String,
}

impl Interrupt {
    pub fn new(line: Arc<dyn IrqLine>, name: impl Into<String>) -> Self {
        Self {
            status: Mutex::new(0),
            line,
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU32::new(0),
            name: name.into(),
        }
    }

    fn raise(&self, bits: u32) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *s |= bits;
        self.line.set_level(true);
    }

    /// A used ring changed.
    pub fn signal_used(&self) {
        self.raise(INT_VRING);
    }

    /// The device changed its config space: bump the generation, then interrupt.
    pub fn signal_config(&self) {
        self.config_generation.fetch_add(1, Ordering::AcqRel);
        self.raise(INT_CONFIG);
    }

    /// The guest broke the protocol: stop trusting the queues until reset.
    /// Logs once per episode, then raises a config-change interrupt.
    pub fn set_needs_reset(&self, why: fmt::Arguments<'_>) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if self.needs_reset.load(Ordering::Acquire) {
            return;
        }
        // Logged, and the config interrupt raised, before the flag shows: a
        // driver that sees DEVICE_NEEDS_RESET also sees the interrupt.
        tracing::warn!("virtio-{}: device needs reset: {why}", self.name);
        self.config_generation.fetch_add(1, Ordering::AcqRel);
        *s |= INT_CONFIG;
        self.line.set_level(true);
        self.needs_reset.store(true, Ordering::Release);
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    pub fn status(&self) -> u32 {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    pub(crate) fn ack(&self, bits: u32) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *s &= !bits;
        self.line.set_level(*s != 0);
    }

    /// Restored state (snapshots): status bits, line level, generation and
    /// the protocol-error flag as they were.
    pub(crate) fn restore(&self, status: u32, generation: u32, needs_reset: bool) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *s = status & (INT_VRING | INT_CONFIG);
        self.config_generation.store(generation, Ordering::Release);
        self.needs_reset.store(needs_reset, Ordering::Release);
        self.line.set_level(*s != 0);
    }

    /// Device reset: nothing pending, line low, protocol error forgotten.
    pub(crate) fn reset(&self) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *s = 0;
        self.needs_reset.store(false, Ordering::Release);
        self.line.set_level(false);
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One queue as handed to a device at activation: the ring state, and the
/// eventfd the transport signals when the driver writes QueueNotify.
pub struct QueueContext {
    pub queue: Queue,
    pub notify: EventFd,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, driver enabled {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("cannot start the device worker: {0}")]
    Worker(#[from] std::io::Error),
    #[error("device backend is gone (an earlier worker failed)")]
    BackendGone,
    #[error("{0}")]
    Backend(String),
}

impl ActivateError {
    /// Every device checks the driver enabled exactly its queues.
    pub fn check_queue_count<T>(queues: &[T], expected: usize) -> Result<(), Self> {
        if queues.len() == expected {
            Ok(())
        } else {
            Err(Self::QueueCount {
                expected,
                got: queues.len(),
            })
        }
    }
}

/// A device model behind the virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (see [`crate::ids`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device-specific feature bits (the transport adds [`crate::features::COMMON`]).
    fn features(&self) -> u64;
    /// Config space read; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Config space write; most devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// DRIVER_OK: start serving `queues` (all of them, in order) with the
    /// negotiated `acked_features`.
    fn activate(
        &mut self,
        mem: Mem,
        interrupt: Arc<Interrupt>,
        queues: Vec<QueueContext>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;
    /// Stop the worker (joining it) and return to the pre-activation state.
    /// Must be idempotent.
    fn reset(&mut self);
    /// Pause (snapshots): stop the worker once the requests it has started
    /// are complete (disks flushed), keep the backend, and return the queues
    /// as they stand, ring indices intact; `activate` with them continues
    /// where it stopped. `None`: not active, or the device cannot pause.
    fn pause(&mut self) -> Option<Vec<QueueContext>> {
        None
    }
    /// The disk behind a block device while no worker holds it (paused or
    /// not active): VM snapshots take its internal snapshots. Others: None.
    fn disk(&mut self) -> Option<&mut dyn block::BlockBackend> {
        None
    }
}

/// Copies the `data.len()` bytes at `offset` of a device's config space;
/// whatever lies past its end reads as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
