//! The virtio-console device model: one port, no multiport, no resize.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::worker::ConsoleWorker;
use crate::device::{read_config_bytes, ActivateError, Interrupt, QueueContext, VirtioDevice};
use crate::worker::Worker;
use crate::{ids, Mem};

pub(crate) const QUEUE_SIZE: u16 = 256;

/// Where the port's bytes come from and go to.
pub struct ConsoleIo {
    /// Host-to-guest bytes; read only when epoll says it is readable, so it
    /// may stay blocking. `None`: the guest never receives input.
    pub input: Option<OwnedFd>,
    /// Guest-to-host bytes.
    pub output: Box<dyn Write + Send>,
}

/// What the worker hands back when stopped: the I/O and the queues.
type Stopped = (ConsoleIo, Vec<QueueContext>);

pub struct Console {
    io: Option<ConsoleIo>,
    worker: Option<Worker<Option<Stopped>>>,
}

impl Console {
    pub fn new(io: ConsoleIo) -> Self {
        Self {
            io: Some(io),
            worker: None,
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        ids::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (unused without F_SIZE), max_nr_ports = 1, emerg_wr.
        let mut c = [0u8; 12];
        c[4..8].copy_from_slice(&1u32.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    fn activate(
        &mut self,
        mem: Mem,
        irq: Arc<Interrupt>,
        queues: Vec<QueueContext>,
        _acked: u64,
    ) -> Result<(), ActivateError> {
        ActivateError::check_queue_count(&queues, 2)?;
        let io = self.io.take().ok_or(ActivateError::BackendGone)?;
        let w = ConsoleWorker::new(mem, irq, queues, io);
        self.worker = Some(Worker::spawn("virtio-console", move |stop| w.run(stop))?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            self.io = w.stop().flatten().map(|(io, _)| io);
        }
    }

    fn pause(&mut self) -> Option<Vec<QueueContext>> {
        let (io, queues) = self.worker.take()?.stop().flatten()?;
        self.io = Some(io);
        Some(queues)
    }
}
