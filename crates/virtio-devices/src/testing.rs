//! A fake virtio driver for tests and the fuzz target: it plays the guest,
//! writing descriptors and rings straight into guest memory and poking the
//! transport's registers the way Linux's virtio_mmio driver does. Hidden from
//! docs; not for production use.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::{BusDevice, IrqLine};
use vm_memory::{Bytes, GuestAddress};

use crate::transport::mmio::{regs, status};
use crate::{Mem, MmioTransport, VirtioDevice};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// An interrupt line that records its level and counts rising edges.
#[derive(Default)]
pub struct TestIrq {
    level: AtomicBool,
    edges: AtomicU64,
}

impl TestIrq {
    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
    pub fn edges(&self) -> u64 {
        self.edges.load(Ordering::SeqCst)
    }
}

impl IrqLine for TestIrq {
    fn set_level(&self, level: bool) {
        if level && !self.level.swap(true, Ordering::SeqCst) {
            self.edges.fetch_add(1, Ordering::SeqCst);
        }
        if !level {
            self.level.store(false, Ordering::SeqCst);
        }
    }
}

pub fn guest_memory(size: usize) -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), size)]).expect("test guest memory")
}

/// Driver-side view of one split virtqueue.
#[derive(Debug, Clone)]
pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_desc: u16,
    pub avail_idx: u16,
    pub last_used: u16,
}

pub struct FakeDriver {
    pub mem: Mem,
    pub dev: MmioTransport,
    pub irq: Arc<TestIrq>,
    pub queues: Vec<DriverQueue>,
    next_free: u64,
    ring_base: u64,
    data_base: u64,
}

/// Guest RAM used by the fake driver: rings below 1 MiB, buffers above.
pub const RING_BASE: u64 = 0x1_0000;
pub const DATA_BASE: u64 = 0x10_0000;

impl FakeDriver {
    pub fn new(device: Box<dyn VirtioDevice>, mem_size: usize) -> Self {
        Self::shared(device, guest_memory(mem_size), RING_BASE, DATA_BASE)
    }

    /// A driver for a second device in the same guest memory: its rings live
    /// at `ring_base` (64 KiB per queue) and its buffers from `data_base`.
    pub fn shared(device: Box<dyn VirtioDevice>, mem: Mem, ring_base: u64, data_base: u64) -> Self {
        let irq = Arc::new(TestIrq::default());
        let dev = MmioTransport::new(device, mem.clone(), irq.clone()).expect("transport");
        Self {
            mem,
            dev,
            irq,
            queues: Vec::new(),
            next_free: data_base,
            ring_base,
            data_base,
        }
    }

    pub fn read32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write32(&mut self, off: u64, v: u32) {
        self.dev.write(off, &v.to_le_bytes());
    }

    pub fn status(&mut self) -> u32 {
        self.read32(regs::STATUS)
    }

    pub fn needs_reset(&mut self) -> bool {
        self.status() & status::DEVICE_NEEDS_RESET != 0
    }

    pub fn device_features(&mut self) -> u64 {
        self.write32(regs::DEVICE_FEATURES_SEL, 0);
        let lo = self.read32(regs::DEVICE_FEATURES) as u64;
        self.write32(regs::DEVICE_FEATURES_SEL, 1);
        let hi = self.read32(regs::DEVICE_FEATURES) as u64;
        (hi << 32) | lo
    }

    /// Reset, negotiate `offered & want`, set up every queue with `size`
    /// entries (clamped to the max), DRIVER_OK. Returns the accepted features.
    pub fn init(&mut self, want: u64, size: u16) -> u64 {
        self.write32(regs::STATUS, 0);
        self.write32(regs::STATUS, status::ACKNOWLEDGE);
        self.write32(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let feats = self.device_features() & want;
        self.write32(regs::DRIVER_FEATURES_SEL, 0);
        self.write32(regs::DRIVER_FEATURES, feats as u32);
        self.write32(regs::DRIVER_FEATURES_SEL, 1);
        self.write32(regs::DRIVER_FEATURES, (feats >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write32(regs::STATUS, s);
        assert_ne!(self.status() & status::FEATURES_OK, 0, "features refused");
        self.queues.clear();
        let mut q = 0;
        loop {
            self.write32(regs::QUEUE_SEL, q);
            let max = self.read32(regs::QUEUE_NUM_MAX);
            if max == 0 {
                break;
            }
            let size = size.min(max as u16);
            let base = self.ring_base + q as u64 * 0x1_0000;
            let dq = DriverQueue {
                size,
                desc: base,
                avail: base + 16 * size as u64,
                used: (base + 16 * size as u64 + 6 + 2 * size as u64 + 3) & !3,
                next_desc: 0,
                avail_idx: 0,
                last_used: 0,
            };
            // Zero the rings as a fresh driver would.
            let zero = vec![0u8; 0x1_0000];
            self.mem.write_slice(&zero, GuestAddress(base)).unwrap();
            self.write32(regs::QUEUE_NUM, size as u32);
            self.write32(regs::QUEUE_DESC_LOW, dq.desc as u32);
            self.write32(regs::QUEUE_DESC_HIGH, (dq.desc >> 32) as u32);
            self.write32(regs::QUEUE_DRIVER_LOW, dq.avail as u32);
            self.write32(regs::QUEUE_DRIVER_HIGH, (dq.avail >> 32) as u32);
            self.write32(regs::QUEUE_DEVICE_LOW, dq.used as u32);
            self.write32(regs::QUEUE_DEVICE_HIGH, (dq.used >> 32) as u32);
            self.write32(regs::QUEUE_READY, 1);
            self.queues.push(dq);
            q += 1;
        }
        self.write32(regs::STATUS, s | status::DRIVER_OK);
        feats
    }

    /// Bump-allocates guest memory for buffers.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_free;
        self.next_free = (self.next_free + len + 15) & !15;
        a
    }

    pub fn reset_alloc(&mut self) {
        self.next_free = self.data_base;
    }

    pub fn write_desc(&self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.queues[q].desc + 16 * idx as u64;
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(d)).unwrap();
    }

    /// Puts `head` in the avail ring and publishes it (avail idx + 1).
    pub fn push_avail(&mut self, q: usize, head: u16) {
        let dq = &mut self.queues[q];
        let slot = dq.avail + 4 + 2 * (dq.avail_idx % dq.size) as u64;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        let idx = dq.avail_idx;
        let at = GuestAddress(dq.avail + 2);
        self.mem.store(idx, at, Ordering::Release).unwrap();
    }

    /// Writes the avail idx directly (hostile tests).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let at = GuestAddress(self.queues[q].avail + 2);
        self.mem.store(idx, at, Ordering::Release).unwrap();
        self.queues[q].avail_idx = idx;
    }

    /// Adds a chain of (addr, len, device-writable) buffers; returns its head.
    pub fn add_chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % size;
            let last = i + 1 == bufs.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(q, idx, addr, len, flags, (idx + 1) % size);
        }
        self.queues[q].next_desc = (head + bufs.len() as u16) % size;
        self.push_avail(q, head);
        head
    }

    pub fn notify(&mut self, q: u32) {
        self.write32(regs::QUEUE_NOTIFY, q);
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .load(GuestAddress(self.queues[q].used + 2), Ordering::Acquire)
            .unwrap()
    }

    /// Waits (polling, up to `timeout`) for the next used element.
    pub fn wait_used(&mut self, q: usize, timeout: Duration) -> Option<(u32, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.used_idx(q) != self.queues[q].last_used {
                let dq = &mut self.queues[q];
                let e = dq.used + 4 + 8 * (dq.last_used % dq.size) as u64;
                dq.last_used = dq.last_used.wrapping_add(1);
                let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
                return Some((id, len));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Polls (up to `timeout`) until the device reports DEVICE_NEEDS_RESET.
    pub fn wait_needs_reset(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.needs_reset() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn ack_interrupts(&mut self) -> u32 {
        let s = self.read32(regs::INTERRUPT_STATUS);
        self.write32(regs::INTERRUPT_ACK, s);
        s
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn write_bytes(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub fn read_config(&mut self, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.dev.read(regs::CONFIG + off, &mut v);
        v
    }
}
