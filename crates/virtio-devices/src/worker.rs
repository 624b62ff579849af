//! Shared worker-thread plumbing: an epoll loop over queue-notify eventfds
//! (plus backend fds and a stop eventfd), and [`drain`], the one place that
//! pops chains, hands them to a device and publishes used entries with
//! notification suppression (EVENT_IDX aware via virtio-queue).

use std::io;
use std::os::fd::RawFd;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::chain::{self, Chain, QueueError};
use crate::{Interrupt, Mem};

/// Token reserved for the stop eventfd.
pub(crate) const STOP_TOKEN: u64 = u64::MAX;

pub(crate) struct Poller {
    epoll: Epoll,
    events: Vec<EpollEvent>,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            events: vec![EpollEvent::default(); 8],
        })
    }

    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    }

    /// Turns interest in `fd` on or off without forgetting it.
    pub fn set_interest(&self, fd: RawFd, token: u64, on: bool) -> io::Result<()> {
        let set = if on { EventSet::IN } else { EventSet::empty() };
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(set, token))
    }

    /// Blocks until something is ready; returns the ready tokens.
    pub fn wait(&mut self) -> io::Result<Vec<u64>> {
        loop {
            match self.epoll.wait(-1, &mut self.events) {
                Ok(n) => return Ok(self.events[..n].iter().map(|e| e.data()).collect()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Consumes an eventfd's counter (it is non-blocking, so an empty one is fine).
pub(crate) fn consume(evt: &EventFd) {
    let _ = evt.read();
}

/// A running worker thread and the eventfd that stops it.
pub(crate) struct Worker<T> {
    stop: EventFd,
    handle: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Spawns `body(stop_fd)`; the body must return soon after `stop_fd` fires.
    pub fn spawn(name: &str, body: impl FnOnce(EventFd) -> T + Send + 'static) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let theirs = stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || body(theirs))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops and joins; returns what the body returned (None if it panicked).
    pub fn stop(mut self) -> Option<T> {
        let _ = self.stop.write(1);
        self.handle.take()?.join().ok()
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.stop.write(1);
            let _ = h.join();
        }
    }
}

/// What a device does with one chain: the number of bytes it wrote into the
/// chain's writable part (the used-ring length), or a protocol error.
pub(crate) trait ChainHandler {
    fn handle(&mut self, mem: &Mem, chain: Chain) -> Result<u32, QueueError>;
}

impl<F: FnMut(&Mem, Chain) -> Result<u32, QueueError>> ChainHandler for F {
    fn handle(&mut self, mem: &Mem, chain: Chain) -> Result<u32, QueueError> {
        self(mem, chain)
    }
}

/// Chains served per [`drain`] call before the worker looks at its other
/// events (so a guest that keeps refilling a queue cannot starve a reset).
const DRAIN_BUDGET: usize = 1024;

/// Serves the available chains of `queue`, then interrupts if the driver
/// wants it. A protocol error marks the device as needing reset and leaves
/// the queue alone from then on. When the budget runs out it re-signals
/// `notify` so the worker comes back after handling other events.
pub(crate) fn drain(
    queue: &mut Queue,
    mem: &Mem,
    irq: &Interrupt,
    notify: &EventFd,
    handler: &mut impl ChainHandler,
) {
    if irq.needs_reset() {
        return;
    }
    match try_drain(queue, mem, handler) {
        Ok(true) => {
            let _ = notify.write(1);
        }
        Ok(false) => {}
        Err(e) => {
            irq.set_needs_reset(format_args!("{e}"));
            return;
        }
    }
    notify_used(queue, mem, irq);
}

fn try_drain(
    queue: &mut Queue,
    mem: &Mem,
    handler: &mut impl ChainHandler,
) -> Result<bool, QueueError> {
    let mut served = 0;
    loop {
        queue.disable_notification(mem)?;
        while let Some(c) = chain::pop(queue, mem)? {
            let head = c.head;
            let len = handler.handle(mem, c)?;
            queue.add_used(mem, head, len)?;
            served += 1;
            if served >= DRAIN_BUDGET {
                return Ok(true);
            }
        }
        if !queue.enable_notification(mem)? {
            return Ok(false);
        }
    }
}

/// Signals used buffers added outside [`drain`] (e.g. rx), if the driver wants it.
pub(crate) fn notify_used(queue: &mut Queue, mem: &Mem, irq: &Interrupt) {
    match queue.needs_notification(mem) {
        Ok(true) => irq.signal_used(),
        Ok(false) => {}
        Err(e) => irq.set_needs_reset(format_args!("used ring: {e}")),
    }
}
