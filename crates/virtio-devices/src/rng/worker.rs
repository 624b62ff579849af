//! The virtio-rng worker: waits for the queue's notify eventfd and fills each
//! chain's writable part with host randomness.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::chain::{Chain, QueueError};
use crate::device::{Interrupt, QueueContext};
use crate::worker::{consume, drain, Poller, STOP_TOKEN};
use crate::Mem;

/// Bytes served per request at most: the driver just asks again, and it
/// bounds the time one hostile 4 GiB chain can hold the worker.
const MAX_PER_REQUEST: u64 = 64 * 1024;

/// Serves until stopped; returns the queue (for a pause).
pub(crate) fn run(
    mem: Mem,
    irq: Arc<Interrupt>,
    mut q: QueueContext,
    stop: EventFd,
) -> QueueContext {
    let mut poller = match Poller::new() {
        Ok(p) => p,
        Err(e) => {
            irq.set_needs_reset(format_args!("epoll: {e}"));
            return q;
        }
    };
    if let Err(e) = poller
        .add(q.notify.as_raw_fd(), 0)
        .and_then(|_| poller.add(stop.as_raw_fd(), STOP_TOKEN))
    {
        irq.set_needs_reset(format_args!("epoll: {e}"));
        return q;
    }
    let mut handler = |mem: &Mem, chain: Chain| fill(mem, &chain);
    loop {
        let Ok(tokens) = poller.wait() else { return q };
        for t in tokens {
            if t == STOP_TOKEN {
                return q;
            }
            consume(&q.notify);
            drain(&mut q.queue, &mem, &irq, &q.notify, &mut handler);
        }
    }
}

fn fill(mem: &Mem, chain: &Chain) -> Result<u32, QueueError> {
    let mut w = chain.writer(mem);
    let mut left = w.remaining().min(MAX_PER_REQUEST);
    let mut buf = [0u8; 4096];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        getrandom(&mut buf[..n]).map_err(|e| QueueError::Backend(format!("getrandom: {e}")))?;
        w.write(&buf[..n])?;
        left -= n as u64;
    }
    Ok(w.written() as u32)
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`,
        // which we own mutably; getrandom writes at most that many bytes.
        let r = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if r > 0 {
            done += r as usize;
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(())
}
