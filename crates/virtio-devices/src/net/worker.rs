//! The virtio-net worker: one thread, one epoll over the TAP, both queue
//! notifiers and the stop eventfd.
//!
//! tx: each chain's readable bytes (vnet header + frame) are gathered into a
//! bounce buffer and written to the TAP in one write (the TAP wants whole
//! frames). Oversized or undersized frames are dropped, as a NIC would.
//! rx: one frame is read from the TAP into a bounce buffer, then spread over
//! as many rx chains as needed (MRG_RXBUF; `num_buffers` in the first
//! header). With no buffers posted, the frame waits and the TAP is dropped
//! from the epoll set until the driver posts some.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::tap::Tap;
use super::{MAX_FRAME, VNET_HDR_LEN};
use crate::chain::{self, Chain, ChainReader, QueueError};
use crate::device::{Interrupt, QueueContext};
use crate::worker::{consume, drain, notify_used, Poller, STOP_TOKEN};
use crate::Mem;

const RX: u64 = 0;
const TX: u64 = 1;
const TAP: u64 = 2;
/// Frames moved from the TAP per wake-up before tx gets a turn.
const RX_BATCH: usize = 64;

pub(crate) struct NetWorker {
    mem: Mem,
    irq: Arc<Interrupt>,
    rx: QueueContext,
    tx: QueueContext,
    tap: Tap,
    mrg: bool,
    rx_buf: Vec<u8>,
    rx_len: usize,
    tx_buf: Vec<u8>,
}

/// Gathers a tx chain into `buf`; returns the frame length (header included),
/// or `None` if it is not a plausible frame (too short, too long).
pub fn parse_tx_frame(
    r: &mut ChainReader<'_>,
    buf: &mut [u8],
) -> Result<Option<usize>, QueueError> {
    let len = r.remaining();
    if len < (VNET_HDR_LEN + 14) as u64 || len > buf.len() as u64 {
        return Ok(None);
    }
    let n = r.read(&mut buf[..len as usize])?;
    Ok(Some(n))
}

impl NetWorker {
    pub fn new(
        mem: Mem,
        irq: Arc<Interrupt>,
        mut queues: Vec<QueueContext>,
        tap: Tap,
        mrg: bool,
    ) -> Self {
        let tx = queues.pop().expect("two queues");
        let rx = queues.pop().expect("two queues");
        Self {
            mem,
            irq,
            rx,
            tx,
            tap,
            mrg,
            rx_buf: vec![0u8; MAX_FRAME],
            rx_len: 0,
            tx_buf: vec![0u8; MAX_FRAME],
        }
    }

    /// Serves until stopped; hands back the TAP and the queues (rx, tx). A
    /// frame read from the TAP but not yet delivered is dropped, as on a wire.
    pub fn run(mut self, stop: EventFd) -> Option<(Tap, Vec<QueueContext>)> {
        if let Err(e) = self.serve(&stop) {
            self.irq.set_needs_reset(format_args!("net worker: {e}"));
        }
        Some((self.tap, vec![self.rx, self.tx]))
    }

    fn serve(&mut self, stop: &EventFd) -> io::Result<()> {
        let mut poller = Poller::new()?;
        poller.add(self.rx.notify.as_raw_fd(), RX)?;
        poller.add(self.tx.notify.as_raw_fd(), TX)?;
        poller.add(self.tap.as_raw_fd(), TAP)?;
        poller.add(stop.as_raw_fd(), STOP_TOKEN)?;
        loop {
            for t in poller.wait()? {
                match t {
                    STOP_TOKEN => return Ok(()),
                    TX => {
                        consume(&self.tx.notify);
                        self.transmit();
                    }
                    RX => {
                        consume(&self.rx.notify);
                        self.receive()?;
                    }
                    TAP => self.receive()?,
                    _ => {}
                }
            }
            // Listen to the TAP only while a read frame could be delivered.
            poller.set_interest(self.tap.as_raw_fd(), TAP, self.rx_len == 0)?;
        }
    }

    fn transmit(&mut self) {
        let tap = &self.tap;
        let buf = &mut self.tx_buf;
        let mut h = |mem: &Mem, c: Chain| -> Result<u32, QueueError> {
            let mut r = c.reader(mem);
            match parse_tx_frame(&mut r, buf)? {
                Some(n) => {
                    if let Err(e) = tap.write_frame(&buf[..n]) {
                        // EAGAIN or a downed link: the frame is lost, as on a wire.
                        tracing::debug!("virtio-net: tx frame dropped: {e}");
                    }
                }
                None => tracing::debug!("virtio-net: tx chain of {} bytes dropped", c.read_len()),
            }
            Ok(0)
        };
        drain(
            &mut self.tx.queue,
            &self.mem,
            &self.irq,
            &self.tx.notify,
            &mut h,
        );
    }

    /// Moves frames from the TAP to the guest while both sides allow.
    fn receive(&mut self) -> io::Result<()> {
        if self.irq.needs_reset() || !self.rx.queue.ready() {
            return Ok(());
        }
        let mut delivered = false;
        for _ in 0..RX_BATCH {
            if self.rx_len == 0 {
                match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_LEN => self.rx_len = n,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            match self.deliver() {
                Ok(true) => delivered = true,
                Ok(false) => break,
                Err(e) => {
                    self.irq.set_needs_reset(format_args!("{e}"));
                    return Ok(());
                }
            }
        }
        if delivered {
            notify_used(&mut self.rx.queue, &self.mem, &self.irq);
        }
        Ok(())
    }

    /// Delivers the pending frame; false if the guest has no room yet.
    fn deliver(&mut self) -> Result<bool, QueueError> {
        let len = self.rx_len as u64;
        let max_chains = if self.mrg {
            usize::from(self.rx.queue.size())
        } else {
            1
        };
        let chains = match chain::pop_writable(&mut self.rx.queue, &self.mem, len, max_chains)? {
            Some(c) => c,
            None if max_chains == 1 && self.first_chain_too_small(len)? => {
                // Without MRG_RXBUF a frame must fit one buffer; this one
                // never will, so drop it rather than stall rx.
                tracing::debug!("virtio-net: {len}-byte frame dropped: rx buffer too small");
                self.rx_len = 0;
                return Ok(true);
            }
            None => {
                // Ask to be told about the next buffer, then look once more:
                // the driver may have posted some in between.
                chain::arm_for_more(&mut self.rx.queue, &self.mem)?;
                match chain::pop_writable(&mut self.rx.queue, &self.mem, len, max_chains)? {
                    Some(c) => c,
                    None => return Ok(false),
                }
            }
        };
        let num_buffers = chains.len() as u16;
        self.rx_buf[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        let mut off = 0usize;
        for c in &chains {
            let mut w = c.writer(&self.mem);
            let n = w.write(&self.rx_buf[off..self.rx_len])?;
            off += n;
            self.rx.queue.add_used(&self.mem, c.head, n as u32)?;
        }
        self.rx_len = 0;
        Ok(true)
    }

    fn first_chain_too_small(&mut self, len: u64) -> Result<bool, QueueError> {
        let start = self.rx.queue.next_avail();
        let c = chain::pop(&mut self.rx.queue, &self.mem)?;
        self.rx.queue.set_next_avail(start);
        Ok(c.is_some_and(|c| c.write_len() < len))
    }
}
