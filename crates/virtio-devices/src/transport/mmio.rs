//! The virtio-mmio register window (virtio 1.2, 4.2.2; version 2 only).
//!
//! Runs on the vCPU/hart thread that touched the register, so everything here
//! is cheap: QueueNotify only bumps the queue's eventfd, and the device's
//! worker does the rest. The transport keeps the queue registers until
//! DRIVER_OK, then builds `virtio_queue::Queue`s from them (rejecting bad
//! sizes, alignment and rings outside RAM) and hands them to the device.

use std::sync::Arc;

use devices::{BusDevice, IrqLine};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{Interrupt, QueueContext, VirtioDevice};
use crate::{features, Mem};

pub const MAGIC: u32 = 0x7472_6976; // "virt"
pub const VERSION: u32 = 2;
/// "FERO", little-endian.
pub const VENDOR_ID: u32 = 0x4f52_4546;

/// Register offsets.
pub mod regs {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegs {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | low as u64;
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | ((high as u64) << 32);
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Mem,
    interrupt: Arc<Interrupt>,
    max_sizes: Vec<u16>,
    queues: Vec<QueueRegs>,
    notify: Vec<EventFd>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    status: u32,
    activated: bool,
    /// While paused (snapshots): the queues the device handed back.
    paused: Option<Vec<QueueContext>>,
}

/// A transport's state for snapshots: registers, ring positions, interrupt
/// state, and what the device offered (checked on restore, so a state file
/// cannot attach a different device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub offered_features: u64,
    pub queue_max_sizes: Vec<u16>,
    pub status: u32,
    pub acked_features: u64,
    pub queue_sel: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queues: Vec<QueueRegs>,
    pub activated: bool,
    /// (next_avail, next_used) of each queue; empty unless activated.
    pub rings: Vec<(u16, u16)>,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub needs_reset: bool,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Mem,
        irq: Arc<dyn IrqLine>,
    ) -> std::io::Result<Self> {
        let name = match device.device_type() {
            crate::ids::NET => "net",
            crate::ids::BLOCK => "blk",
            crate::ids::CONSOLE => "console",
            crate::ids::RNG => "rng",
            _ => "dev",
        };
        let max_sizes = device.queue_max_sizes().to_vec();
        let notify = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        let queues = max_sizes
            .iter()
            .map(|&m| QueueRegs {
                size: m,
                ..Default::default()
            })
            .collect();
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq, name)),
            max_sizes,
            queues,
            notify,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            status: 0,
            activated: false,
            paused: None,
        })
    }

    /// A block device's disk while paused or inactive (see
    /// [`VirtioDevice::disk`]).
    pub fn disk(&mut self) -> Option<&mut dyn block::BlockBackend> {
        self.device.disk()
    }

    /// Stops the device's worker once its started requests are complete and
    /// keeps the queues; the guest's registers stay as they are. Idempotent.
    pub fn pause(&mut self) -> Result<(), String> {
        if !self.activated || self.paused.is_some() {
            return Ok(());
        }
        match self.device.pause() {
            Some(q) => {
                self.paused = Some(q);
                Ok(())
            }
            None => Err(format!(
                "virtio-{}: the device cannot pause",
                self.interrupt.name()
            )),
        }
    }

    /// Restarts the paused worker. Each queue is kicked once (a notification
    /// the stopped worker had not consumed, or one from before a restore,
    /// must not be lost; a spurious one is harmless).
    pub fn resume(&mut self) -> Result<(), String> {
        let Some(queues) = self.paused.take() else {
            return Ok(());
        };
        for q in &queues {
            let _ = q.notify.write(1);
        }
        self.device
            .activate(
                self.mem.clone(),
                self.interrupt.clone(),
                queues,
                self.acked_features,
            )
            .map_err(|e| {
                self.activated = false;
                let msg = format!("virtio-{}: cannot resume: {e}", self.interrupt.name());
                self.interrupt.set_needs_reset(format_args!("{msg}"));
                msg
            })
    }

    /// The transport's state; the device must be paused (or not active).
    pub fn save_state(&self) -> Result<TransportState, String> {
        let rings = match (&self.paused, self.activated) {
            (Some(q), _) => q
                .iter()
                .map(|c| (c.queue.next_avail(), c.queue.next_used()))
                .collect(),
            (None, false) => Vec::new(),
            (None, true) => {
                return Err(format!(
                    "virtio-{}: state saved while the device runs",
                    self.interrupt.name()
                ))
            }
        };
        Ok(TransportState {
            device_type: self.device.device_type(),
            offered_features: self.offered_features(),
            queue_max_sizes: self.max_sizes.clone(),
            status: self.status,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queues: self.queues.clone(),
            activated: self.activated,
            rings,
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.config_generation(),
            needs_reset: self.interrupt.needs_reset(),
        })
    }

    /// Loads `s` (untrusted: checked like the guest's own register writes,
    /// rings inside RAM) into this transport, which is reset first. Guest RAM
    /// must already hold the restored contents. An active device is left
    /// paused: [`MmioTransport::resume`] starts it.
    pub fn restore_state(&mut self, s: &TransportState) -> Result<(), String> {
        let name = self.interrupt.name().to_string();
        let err = |m: String| format!("virtio-{name}: {m}");
        if s.device_type != self.device.device_type()
            || s.offered_features != self.offered_features()
            || s.queue_max_sizes != self.max_sizes
        {
            return Err(err(format!(
                "the state is for device type {} (features {:#x}, queues {:?}), this one is type {} (features {:#x}, queues {:?})",
                s.device_type,
                s.offered_features,
                s.queue_max_sizes,
                self.device.device_type(),
                self.offered_features(),
                self.max_sizes
            )));
        }
        if s.queues.len() != self.max_sizes.len() {
            return Err(err(format!(
                "{} queue registers for {} queues",
                s.queues.len(),
                self.max_sizes.len()
            )));
        }
        if s.acked_features & !self.offered_features() != 0 {
            return Err(err(format!(
                "acked features {:#x} were never offered",
                s.acked_features
            )));
        }
        self.reset();
        self.queues = s.queues.clone();
        self.acked_features = s.acked_features;
        self.queue_sel = s.queue_sel;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.status = s.status & !status::DEVICE_NEEDS_RESET;
        self.interrupt
            .restore(s.interrupt_status, s.config_generation, s.needs_reset);
        if !s.activated {
            if s.status & status::DRIVER_OK != 0 && !s.needs_reset {
                return Err(err("DRIVER_OK set on an inactive device".into()));
            }
            return Ok(());
        }
        let ok = status::FEATURES_OK | status::DRIVER_OK;
        if s.status & ok != ok || s.rings.len() != self.queues.len() {
            self.reset();
            return Err(err(
                "active without FEATURES_OK and DRIVER_OK, or ring positions missing".into(),
            ));
        }
        let mut ctxs = Vec::with_capacity(self.queues.len());
        for (i, &(avail, used)) in s.rings.iter().enumerate() {
            let built = self.build_queue(i).and_then(|mut queue| {
                if self.queues[i].ready {
                    queue.set_next_avail(avail);
                    queue.set_next_used(used);
                }
                let notify = self.notify[i]
                    .try_clone()
                    .map_err(|e| format!("cannot clone eventfd: {e}"))?;
                Ok(QueueContext { queue, notify })
            });
            match built {
                Ok(c) => ctxs.push(c),
                Err(m) => {
                    self.reset();
                    return Err(err(m));
                }
            }
        }
        self.activated = true;
        self.paused = Some(ctxs);
        Ok(())
    }

    /// Shared interrupt state (tests and the VMM use it to observe the device).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | features::COMMON
    }

    fn selected(&mut self) -> Option<&mut QueueRegs> {
        if self.activated || self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        self.device.reset();
        self.paused = None;
        for (q, &max) in self.queues.iter_mut().zip(&self.max_sizes) {
            *q = QueueRegs {
                size: max,
                ..Default::default()
            };
        }
        for e in &self.notify {
            let _ = e.read();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.status = 0;
        self.activated = false;
        self.interrupt.reset();
    }

    fn build_queue(&self, i: usize) -> Result<Queue, String> {
        let r = self.queues[i];
        let mut q = Queue::new(self.max_sizes[i]).map_err(|e| format!("queue {i}: {e}"))?;
        if !r.ready {
            return Ok(q);
        }
        q.try_set_size(r.size).map_err(|_| {
            format!(
                "queue {i}: size {} is not a power of two up to {}",
                r.size, self.max_sizes[i]
            )
        })?;
        q.try_set_desc_table_address(GuestAddress(r.desc))
            .and_then(|_| q.try_set_avail_ring_address(GuestAddress(r.driver)))
            .and_then(|_| q.try_set_used_ring_address(GuestAddress(r.device)))
            .map_err(|e| format!("queue {i}: {e}"))?;
        q.set_event_idx(self.acked_features & features::EVENT_IDX != 0);
        q.set_ready(true);
        if !q.is_valid(&self.mem) {
            return Err(format!(
                "queue {i}: rings at desc {:#x} avail {:#x} used {:#x} (size {}) are not inside guest RAM",
                r.desc, r.driver, r.device, r.size
            ));
        }
        Ok(q)
    }

    fn activate(&mut self) {
        let mut ctxs = Vec::with_capacity(self.queues.len());
        for i in 0..self.queues.len() {
            let queue = match self.build_queue(i) {
                Ok(q) => q,
                Err(why) => {
                    self.interrupt.set_needs_reset(format_args!("{why}"));
                    return;
                }
            };
            let notify = match self.notify[i].try_clone() {
                Ok(e) => e,
                Err(e) => {
                    self.interrupt
                        .set_needs_reset(format_args!("cannot clone eventfd: {e}"));
                    return;
                }
            };
            ctxs.push(QueueContext { queue, notify });
        }
        match self.device.activate(
            self.mem.clone(),
            self.interrupt.clone(),
            ctxs,
            self.acked_features,
        ) {
            Ok(()) => self.activated = true,
            Err(e) => self
                .interrupt
                .set_needs_reset(format_args!("activation failed: {e}")),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v & !status::DEVICE_NEEDS_RESET;
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let offered = self.offered_features();
            let ok = self.acked_features & !offered == 0
                && self.acked_features & features::VERSION_1 != 0;
            if !ok {
                tracing::debug!(
                    "virtio-{}: driver features {:#x} rejected (offered {:#x}, VERSION_1 required)",
                    self.interrupt.name(),
                    self.acked_features,
                    offered
                );
                v &= !status::FEATURES_OK;
            }
        }
        let newly_ok = v & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0;
        self.status = v;
        if newly_ok && !self.activated && v & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            regs::MAGIC => MAGIC,
            regs::VERSION => VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self
                .max_sizes
                .get(self.queue_sel as usize)
                .map_or(0, |&m| m as u32),
            regs::QUEUE_READY => q.is_some_and(|q| q.ready) as u32,
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => {
                let nr = if self.interrupt.needs_reset() {
                    status::DEVICE_NEEDS_RESET
                } else {
                    0
                };
                self.status | nr
            }
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH => u32::MAX, // no shared memory regions
            regs::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            regs::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    return; // frozen once accepted
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.acked_features, v),
                    1 => set_high(&mut self.acked_features, v),
                    _ => {}
                }
            }
            regs::QUEUE_SEL => self.queue_sel = v,
            regs::QUEUE_NUM => {
                if let Some(q) = self.selected() {
                    // Too big to be valid: 0 makes activation reject it.
                    q.size = u16::try_from(v).unwrap_or(0);
                }
            }
            regs::QUEUE_READY => {
                if let Some(q) = self.selected() {
                    q.ready = v == 1;
                }
            }
            regs::QUEUE_DESC_LOW => self.selected().map_or((), |q| set_low(&mut q.desc, v)),
            regs::QUEUE_DESC_HIGH => self.selected().map_or((), |q| set_high(&mut q.desc, v)),
            regs::QUEUE_DRIVER_LOW => self.selected().map_or((), |q| set_low(&mut q.driver, v)),
            regs::QUEUE_DRIVER_HIGH => self.selected().map_or((), |q| set_high(&mut q.driver, v)),
            regs::QUEUE_DEVICE_LOW => self.selected().map_or((), |q| set_low(&mut q.device, v)),
            regs::QUEUE_DEVICE_HIGH => self.selected().map_or((), |q| set_high(&mut q.device, v)),
            regs::QUEUE_NOTIFY => {
                // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
                if self.activated {
                    if let Some(e) = self.notify.get(v as usize) {
                        let _ = e.write(1);
                    }
                }
            }
            regs::INTERRUPT_ACK => self.interrupt.ack(v),
            regs::STATUS => self.write_status(v),
            regs::SHM_SEL => {}
            _ => tracing::debug!(
                "virtio-{}: write {v:#x} to read-only/unknown register {offset:#x}",
                self.interrupt.name()
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            self.device.read_config(offset - regs::CONFIG, data);
            return;
        }
        // The register block only allows aligned 32-bit accesses.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            self.device.write_config(offset - regs::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        self.device.reset();
    }
}
