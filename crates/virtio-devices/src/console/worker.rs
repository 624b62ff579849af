//! The virtio-console worker: transmitq chains are copied to the output
//! writer; input bytes wait in a small buffer until the guest posts receiveq
//! buffers (input interest is dropped meanwhile, so a chatty host cannot spin
//! the thread).

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::device::ConsoleIo;
use crate::chain::{self, Chain, QueueError};
use crate::device::{Interrupt, QueueContext};
use crate::worker::{consume, drain, notify_used, Poller, STOP_TOKEN};
use crate::Mem;

const RX: u64 = 0;
const TX: u64 = 1;
const INPUT: u64 = 2;
const INPUT_CHUNK: usize = 4096;

pub(crate) struct ConsoleWorker {
    mem: Mem,
    irq: Arc<Interrupt>,
    rx: QueueContext,
    tx: QueueContext,
    io: ConsoleIo,
    pending: VecDeque<u8>,
    input_open: bool,
}

impl ConsoleWorker {
    pub fn new(
        mem: Mem,
        irq: Arc<Interrupt>,
        mut queues: Vec<QueueContext>,
        io: ConsoleIo,
    ) -> Self {
        let tx = queues.pop().expect("two queues");
        let rx = queues.pop().expect("two queues");
        Self {
            mem,
            irq,
            rx,
            tx,
            input_open: io.input.is_some(),
            io,
            pending: VecDeque::with_capacity(INPUT_CHUNK),
        }
    }

    /// Serves until stopped; hands back the I/O and the queues (rx, tx).
    /// Input read but not yet delivered is dropped.
    pub fn run(mut self, stop: EventFd) -> Option<(ConsoleIo, Vec<QueueContext>)> {
        if let Err(e) = self.serve(&stop) {
            self.irq
                .set_needs_reset(format_args!("console worker: {e}"));
        }
        Some((self.io, vec![self.rx, self.tx]))
    }

    fn serve(&mut self, stop: &EventFd) -> std::io::Result<()> {
        let mut poller = Poller::new()?;
        poller.add(self.rx.notify.as_raw_fd(), RX)?;
        poller.add(self.tx.notify.as_raw_fd(), TX)?;
        poller.add(stop.as_raw_fd(), STOP_TOKEN)?;
        if let Some(fd) = &self.io.input {
            poller.add(fd.as_raw_fd(), INPUT)?;
        }
        loop {
            for t in poller.wait()? {
                match t {
                    STOP_TOKEN => return Ok(()),
                    TX => {
                        consume(&self.tx.notify);
                        let out = &mut self.io.output;
                        let mut h = |mem: &Mem, c: Chain| transmit(mem, &c, out);
                        drain(
                            &mut self.tx.queue,
                            &self.mem,
                            &self.irq,
                            &self.tx.notify,
                            &mut h,
                        );
                        let _ = self.io.output.flush();
                    }
                    RX => {
                        consume(&self.rx.notify);
                        self.deliver();
                    }
                    INPUT => {
                        if self.pending.is_empty() {
                            self.read_input(&poller)?;
                        }
                        self.deliver();
                    }
                    _ => {}
                }
                if let Some(fd) = &self.io.input {
                    // Read more only once everything read so far is delivered.
                    let want = self.input_open && self.pending.is_empty();
                    poller.set_interest(fd.as_raw_fd(), INPUT, want)?;
                }
            }
        }
    }

    fn read_input(&mut self, poller: &Poller) -> std::io::Result<()> {
        let Some(fd) = &self.io.input else {
            return Ok(());
        };
        let mut buf = [0u8; INPUT_CHUNK];
        // SAFETY: `buf` is a live, writable stack buffer of INPUT_CHUNK bytes
        // and `fd` is open for the duration of the call.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            self.pending.extend(&buf[..n as usize]);
        } else if n == 0
            || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            // EOF or a dead fd: stop listening, the guest just sees no input.
            self.input_open = false;
            let _ = poller.set_interest(fd.as_raw_fd(), INPUT, false);
        }
        Ok(())
    }

    /// Moves pending input into receiveq buffers while there are any.
    fn deliver(&mut self) {
        if self.irq.needs_reset() || !self.rx.queue.ready() {
            return;
        }
        let mut added = false;
        while !self.pending.is_empty() {
            match chain::pop(&mut self.rx.queue, &self.mem) {
                Ok(Some(c)) => {
                    let r = fill(&self.mem, &c, &mut self.pending)
                        .and_then(|n| Ok(self.rx.queue.add_used(&self.mem, c.head, n)?));
                    if let Err(e) = r {
                        return self.irq.set_needs_reset(format_args!("{e}"));
                    }
                    added = true;
                }
                Ok(None) => match self.rx.queue.enable_notification(&self.mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => return self.irq.set_needs_reset(format_args!("{e}")),
                },
                Err(e) => return self.irq.set_needs_reset(format_args!("{e}")),
            }
        }
        if added {
            notify_used(&mut self.rx.queue, &self.mem, &self.irq);
        }
    }
}

fn fill(mem: &Mem, c: &Chain, pending: &mut VecDeque<u8>) -> Result<u32, QueueError> {
    let mut w = c.writer(mem);
    let (a, b) = pending.as_slices();
    let mut n = w.write(a)?;
    if n == a.len() {
        n += w.write(b)?;
    }
    pending.drain(..n);
    Ok(n as u32)
}

fn transmit(mem: &Mem, c: &Chain, out: &mut Box<dyn Write + Send>) -> Result<u32, QueueError> {
    let mut r = c.reader(mem);
    let mut buf = [0u8; 4096];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            // A closed host side drops output, like an unplugged serial line.
            tracing::debug!("virtio-console: output dropped: {e}");
        }
    }
}
