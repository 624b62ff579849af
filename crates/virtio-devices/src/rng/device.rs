//! The virtio-rng device model: no features, no config, one queue.

use std::sync::Arc;

use crate::device::{ActivateError, Interrupt, QueueContext, VirtioDevice};
use crate::worker::Worker;
use crate::{ids, Mem};

pub(crate) const QUEUE_SIZE: u16 = 256;

#[derive(Default)]
pub struct Rng {
    worker: Option<Worker<QueueContext>>,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        ids::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: Mem,
        irq: Arc<Interrupt>,
        mut queues: Vec<QueueContext>,
        _acked: u64,
    ) -> Result<(), ActivateError> {
        ActivateError::check_queue_count(&queues, 1)?;
        let q = queues.remove(0);
        self.worker = Some(Worker::spawn("virtio-rng", move |stop| {
            super::worker::run(mem, irq, q, stop)
        })?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn pause(&mut self) -> Option<Vec<QueueContext>> {
        Some(vec![self.worker.take()?.stop()?])
    }
}
