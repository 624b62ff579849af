//! `SharedImage`: one image used from several threads (virtio-blk queues,
//! `bench -d N`). Metadata work stays serialized behind a mutex, but the
//! data transfer of a request whose clusters are already mapped, or that
//! gets a fresh cluster, runs outside the lock, so O_DIRECT requests
//! overlap like qemu's thread pool.
//!
//! Safety of unlocked I/O: it only targets clusters that no concurrent
//! request can free. Writes go in place only to exclusively owned (COPIED)
//! clusters, which writes never free; reads go to mapped data clusters,
//! which writes free only after copying them elsewhere. Operations that do
//! free mapped clusters (discard, write_zeroes) take an exclusive gate that
//! waits for unlocked I/O to drain. A fresh cluster is published in the L2
//! table only after its data is written (data before L2), and its guest
//! cluster is marked pending meanwhile so no other writer maps it twice.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock};

use crate::image::{Image, Plan};
use crate::qcow2::io_err;
use crate::{BlockBackend, Error, Result};

const ALIGN: usize = 4096;

struct State {
    img: Image,
    /// Guest clusters with a fresh allocation not yet published.
    pending: HashSet<u64>,
}

/// A thread-safe image handle (see the module docs).
pub struct SharedImage {
    state: Mutex<State>,
    published: Condvar,
    gate: RwLock<()>,
    buffered: File,
    direct: Option<File>,
    size: u64,
    read_only: bool,
    /// Cluster size used for pending bookkeeping (raw: none needed).
    cluster_bits: Option<u32>,
}

thread_local! {
    static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl SharedImage {
    /// Wraps an opened image. With `OpenOptions::direct` the unlocked data
    /// path uses O_DIRECT too.
    pub fn new(img: Image) -> Result<SharedImage> {
        let path = img.data_path().to_path_buf();
        let ro = img.read_only();
        let buffered = std::fs::OpenOptions::new()
            .read(true)
            .write(!ro)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let direct = if img.is_direct() {
            std::fs::OpenOptions::new()
                .read(true)
                .write(!ro)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .ok()
        } else {
            None
        };
        Ok(SharedImage {
            size: img.size(),
            read_only: ro,
            cluster_bits: img.cluster_size().map(|c| c.trailing_zeros()),
            state: Mutex::new(State {
                img,
                pending: HashSet::new(),
            }),
            published: Condvar::new(),
            gate: RwLock::new(()),
            buffered,
            direct,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The wrapped image back (after all threads are done).
    pub fn into_inner(self) -> Image {
        self.state
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .img
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn clusters(&self, off: u64, len: u64) -> std::ops::Range<u64> {
        match self.cluster_bits {
            Some(b) if len > 0 => (off >> b)..((off + len - 1) >> b) + 1,
            _ => 0..0,
        }
    }

    /// Locks the state once no pending allocation overlaps the range.
    fn lock_clear(&self, off: u64, len: u64) -> MutexGuard<'_, State> {
        let mut g = self.lock();
        let r = self.clusters(off, len);
        while r.clone().any(|c| g.pending.contains(&c)) {
            g = self.published.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g
    }

    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        crate::image::check_range(self.size, off, buf.len() as u64)?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut segs = Vec::new();
        {
            let mut g = self.lock();
            match g.img.plan(off, buf, &mut segs, false)? {
                Plan::InPlace => {}
                _ => return g.img.read_at(buf, off),
            }
        }
        for s in &segs {
            self.pread(&mut buf[s.buf..s.buf + s.len], s.host)?;
        }
        Ok(())
    }

    pub fn write_at(&self, buf: &[u8], off: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        crate::image::check_range(self.size, off, buf.len() as u64)?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut segs = Vec::new();
        let plan = {
            let mut g = self.lock_clear(off, buf.len() as u64);
            let plan = g.img.plan(off, buf, &mut segs, true)?;
            match plan {
                Plan::InPlace => {}
                Plan::Fresh { gc, .. } => {
                    g.pending.insert(gc);
                }
                Plan::Locked => return g.img.write_at(buf, off),
            }
            plan
        };
        let mut res = Ok(());
        for s in &segs {
            res = self.pwrite(&buf[s.buf..s.buf + s.len], s.host);
            if res.is_err() {
                break;
            }
        }
        if let Plan::Fresh { gc, host, bitmap } = plan {
            let mut g = self.lock();
            g.pending.remove(&gc);
            let r = if res.is_ok() {
                g.img.publish(gc, host, bitmap)
            } else {
                g.img.unpublish(host)
            };
            drop(g);
            self.published.notify_all();
            r?;
        }
        res
    }

    pub fn flush(&self) -> Result<()> {
        self.lock().img.flush()
    }

    pub fn discard(&self, off: u64, len: u64) -> Result<()> {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        self.lock_clear(off, len).img.discard(off, len)
    }

    pub fn write_zeroes(&self, off: u64, len: u64) -> Result<()> {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        self.lock_clear(off, len).img.write_zeroes(off, len)
    }

    /// Runs `f` on the image with exclusive access (snapshots, resize…).
    pub fn with_image<T>(&self, f: impl FnOnce(&mut Image) -> T) -> T {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let mut g = self.lock();
        while !g.pending.is_empty() {
            g = self.published.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        f(&mut g.img)
    }

    fn pread(&self, buf: &mut [u8], off: u64) -> Result<()> {
        if let Some(d) = &self.direct {
            if aligned(off, buf.len()) {
                let r = if buf.as_ptr().align_offset(ALIGN) == 0 {
                    read_full(d, buf, off)
                } else {
                    BOUNCE.with(|b| {
                        let mut b = b.borrow_mut();
                        let s = bounce(&mut b, buf.len());
                        let n = buf.len();
                        read_full(d, &mut b[s..s + n], off)?;
                        buf.copy_from_slice(&b[s..s + n]);
                        Ok(())
                    })
                };
                return r.map_err(|e| io_err(std::path::Path::new("image"), e));
            }
        }
        read_full(&self.buffered, buf, off).map_err(|e| io_err(std::path::Path::new("image"), e))
    }

    fn pwrite(&self, buf: &[u8], off: u64) -> Result<()> {
        if let Some(d) = &self.direct {
            if aligned(off, buf.len()) {
                let r = if buf.as_ptr().align_offset(ALIGN) == 0 {
                    d.write_all_at(buf, off)
                } else {
                    BOUNCE.with(|b| {
                        let mut b = b.borrow_mut();
                        let s = bounce(&mut b, buf.len());
                        let n = buf.len();
                        b[s..s + n].copy_from_slice(buf);
                        d.write_all_at(&b[s..s + n], off)
                    })
                };
                return r.map_err(|e| io_err(std::path::Path::new("image"), e));
            }
        }
        self.buffered
            .write_all_at(buf, off)
            .map_err(|e| io_err(std::path::Path::new("image"), e))
    }
}

fn aligned(off: u64, len: usize) -> bool {
    len > 0 && off.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN)
}

fn bounce(b: &mut Vec<u8>, len: usize) -> usize {
    if b.len() < len + ALIGN {
        *b = vec![0u8; len + ALIGN];
    }
    b.as_ptr().align_offset(ALIGN)
}

fn read_full(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// Compile-time check: shareable across threads.
const _: fn() = || {
    fn sync<T: Sync + Send>() {}
    sync::<SharedImage>();
};
