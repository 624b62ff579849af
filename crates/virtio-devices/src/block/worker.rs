//! The virtio-blk worker thread: owns the backend while the device is live,
//! serves the request queue whenever the driver notifies, and flushes and
//! returns the backend when stopped.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use block::BlockBackend;
use vmm_sys_util::eventfd::EventFd;

use super::device::Settings;
use super::request::{self, Bounce};
use crate::chain::{Chain, QueueError};
use crate::device::{Interrupt, QueueContext};
use crate::worker::{consume, drain, Poller, STOP_TOKEN};
use crate::Mem;

pub(crate) struct BlockWorker {
    mem: Mem,
    irq: Arc<Interrupt>,
    q: QueueContext,
    backend: Box<dyn BlockBackend>,
    settings: Settings,
}

impl BlockWorker {
    pub fn new(
        mem: Mem,
        irq: Arc<Interrupt>,
        q: QueueContext,
        backend: Box<dyn BlockBackend>,
        settings: Settings,
    ) -> Self {
        Self {
            mem,
            irq,
            q,
            backend,
            settings,
        }
    }

    /// Serves until stopped; then flushes and hands back the backend and
    /// the queue (for a pause).
    pub fn run(mut self, stop: EventFd) -> Option<(Box<dyn BlockBackend>, QueueContext)> {
        self.serve(&stop);
        if let Err(e) = self.backend.flush() {
            tracing::error!("virtio-blk: flush at device stop failed: {e}");
        }
        Some((self.backend, self.q))
    }

    fn serve(&mut self, stop: &EventFd) {
        let mut poller = match Poller::new() {
            Ok(p) => p,
            Err(e) => return self.irq.set_needs_reset(format_args!("epoll: {e}")),
        };
        if let Err(e) = poller
            .add(self.q.notify.as_raw_fd(), 0)
            .and_then(|_| poller.add(stop.as_raw_fd(), STOP_TOKEN))
        {
            return self.irq.set_needs_reset(format_args!("epoll: {e}"));
        }
        let mut bounce = Bounce::new();
        loop {
            let Ok(tokens) = poller.wait() else { return };
            for t in tokens {
                if t == STOP_TOKEN {
                    return;
                }
                consume(&self.q.notify);
                let backend = &mut self.backend;
                let settings = &self.settings;
                let bounce = &mut bounce;
                let mut handler = |mem: &Mem, chain: Chain| -> Result<u32, QueueError> {
                    request::execute(backend.as_mut(), settings, bounce, mem, &chain)
                };
                drain(
                    &mut self.q.queue,
                    &self.mem,
                    &self.irq,
                    &self.q.notify,
                    &mut handler,
                );
            }
        }
    }
}
