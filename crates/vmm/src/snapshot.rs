//! VM state of the riscv64 emulation backend: pause/resume of the whole
//! machine ([`Vm`]), and the versioned state file that `save`, `--restore`
//! and snapshots use.
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! 0   magic    "FERROVM\0"
//! 8   version  u32   (FORMAT_VERSION; another one is refused)
//! 12  flags    u32   (0)
//! 16  body_len u64
//! 24  crc32    u32   (of the body)
//! 28  reserved u32
//! 32  body:    meta_len u64, meta (JSON: config, machine and device state),
//!              pages u64, bitmap (1 bit per 4 KiB RAM page: non-zero),
//!              zstd stream of the non-zero pages in order
//! ```
//!
//! A state file is untrusted input: sizes are checked against the file
//! before use, RAM is decoded page by page (no allocation from a size field),
//! and the machine/device state goes through the same checks as guest writes
//! (`riscv_emu::HartState::check`, the transports' ring validation).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use arch::riscv64::{MachineState, Platform};
use serde::{Deserialize, Serialize};
use virtio_devices::transport::mmio::TransportState;
use virtio_devices::MmioTransport;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::VirtioArgs;

pub const MAGIC: &[u8; 8] = b"FERROVM\0";
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 32;
const PAGE: usize = 4096;
/// Guest RAM starts here on the riscv64 machine.
const RAM_BASE: u64 = 0x8000_0000;
/// Largest metadata section accepted (it is a few KiB in practice).
const MAX_META: u64 = 16 << 20;

/// What the machine was built from: enough to rebuild it (`--restore`
/// needs no other flags; disks must be the same files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    pub cpus: usize,
    pub ram_size: u64,
    pub cmdline: String,
    pub virtio: VirtioArgs,
    /// The control agent's virtio-console follows the user devices.
    #[serde(default)]
    pub agent_channel: bool,
    /// Boot files, for a reboot of a restored machine.
    #[serde(default)]
    pub boot: BootPaths,
    /// `--uuid` (shown to the guest), kept unless the restore gives one.
    #[serde(default)]
    pub uuid: Option<String>,
}

/// Where the boot images came from (`bare`: `--bios none` ELF in `kernel`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPaths {
    pub firmware: Option<std::path::PathBuf>,
    pub kernel: Option<std::path::PathBuf>,
    pub initrd: Option<std::path::PathBuf>,
    pub bare: bool,
}

/// Everything but RAM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub config: VmConfig,
    /// Seconds since the Unix epoch when the state was taken.
    pub date_sec: u64,
    pub machine: MachineState,
    /// One per virtio-mmio slot in use, in slot order.
    pub virtio: Vec<TransportState>,
}

/// Why a state file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a ferro VM state file (bad magic)")]
    Magic,
    #[error("state file format version {0}; this ferro reads version {FORMAT_VERSION}")]
    Version(u32),
    #[error("state file is truncated: {0}")]
    Truncated(String),
    #[error("state file checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is corrupt")]
    Checksum { stored: u32, computed: u32 },
    #[error("state file is corrupt: {0}")]
    Corrupt(String),
}

/// A parsed (checksum-verified) state file; RAM stays encoded until
/// [`StateFile::for_each_page`].
pub struct StateFile<'a> {
    pub meta: Meta,
    pages: u64,
    bitmap: &'a [u8],
    zdata: &'a [u8],
}

fn take<'a>(b: &mut &'a [u8], n: u64, what: &str) -> Result<&'a [u8], FormatError> {
    if (b.len() as u64) < n {
        return Err(FormatError::Truncated(format!(
            "{what} needs {n} bytes, {} left",
            b.len()
        )));
    }
    let (h, t) = b.split_at(n as usize);
    *b = t;
    Ok(h)
}

fn u64_at(b: &mut &[u8], what: &str) -> Result<u64, FormatError> {
    let s = take(b, 8, what)?;
    Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// Parses and verifies a state file's bytes.
pub fn parse(data: &[u8]) -> Result<StateFile<'_>, FormatError> {
    if data.len() < 8 || &data[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    if data.len() < HEADER {
        return Err(FormatError::Truncated(format!(
            "{} bytes, the header alone is {HEADER}",
            data.len()
        )));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4"));
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    let body_len = u64::from_le_bytes(data[16..24].try_into().expect("8"));
    let stored = u32::from_le_bytes(data[24..28].try_into().expect("4"));
    let body = &data[HEADER..];
    if (body.len() as u64) < body_len {
        return Err(FormatError::Truncated(format!(
            "the header announces a {body_len}-byte body, the file holds {}",
            body.len()
        )));
    }
    if (body.len() as u64) > body_len {
        return Err(FormatError::Corrupt(format!(
            "{} bytes after the {body_len}-byte body",
            body.len() as u64 - body_len
        )));
    }
    let computed = crc32fast::hash(body);
    if computed != stored {
        return Err(FormatError::Checksum { stored, computed });
    }
    let mut b = body;
    let meta_len = u64_at(&mut b, "metadata length")?;
    if meta_len > MAX_META {
        return Err(FormatError::Corrupt(format!(
            "metadata length {meta_len} is over {MAX_META}"
        )));
    }
    let meta: Meta = serde_json::from_slice(take(&mut b, meta_len, "metadata")?)
        .map_err(|e| FormatError::Corrupt(format!("metadata: {e}")))?;
    let ram = meta.config.ram_size;
    if ram == 0 || !ram.is_multiple_of(2 << 20) || ram > 32 << 30 {
        return Err(FormatError::Corrupt(format!(
            "RAM size {ram} is not a multiple of 2 MiB up to 32 GiB"
        )));
    }
    let pages = u64_at(&mut b, "page count")?;
    if pages != ram / PAGE as u64 {
        return Err(FormatError::Corrupt(format!(
            "{pages} RAM pages for {ram} bytes of RAM"
        )));
    }
    let bitmap = take(&mut b, pages.div_ceil(8), "page bitmap")?;
    Ok(StateFile {
        meta,
        pages,
        bitmap,
        zdata: b,
    })
}

impl StateFile<'_> {
    /// Non-zero pages stored.
    pub fn stored_pages(&self) -> u64 {
        self.bitmap.iter().map(|b| b.count_ones() as u64).sum()
    }

    /// Decodes RAM: `f(page_index, bytes)` for every stored (non-zero) page,
    /// in order. The stream must hold exactly those pages.
    pub fn for_each_page(&self, mut f: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        let mut dec = zstd::stream::read::Decoder::with_buffer(self.zdata)
            .map_err(|e| FormatError::Corrupt(format!("RAM stream: {e}")))?
            .single_frame();
        let mut buf = vec![0u8; PAGE];
        for p in 0..self.pages {
            if self.bitmap[(p / 8) as usize] & (1 << (p % 8)) == 0 {
                continue;
            }
            dec.read_exact(&mut buf).map_err(|e| {
                FormatError::Corrupt(format!("RAM stream ends before page {p}: {e}"))
            })?;
            f(p, &buf)?;
        }
        let mut extra = [0u8; 1];
        match dec.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(FormatError::Corrupt(
                "RAM stream holds more pages than the bitmap".into(),
            )
            .into()),
            Err(e) => Err(FormatError::Corrupt(format!("RAM stream: {e}")).into()),
        }
    }
}

/// Sizes and time of one save.
#[derive(Debug, Clone, Copy)]
pub struct SaveStats {
    pub date_sec: u64,
    pub file_bytes: u64,
    pub ram_pages: u64,
    pub stored_pages: u64,
    pub millis: u64,
}

/// Encodes a state file (meta + RAM) into `out`.
pub fn encode(meta: &Meta, ram: &GuestMemoryMmap, out: &mut Vec<u8>) -> Result<(u64, u64)> {
    let size = meta.config.ram_size;
    let pages = size / PAGE as u64;
    let meta_json = serde_json::to_vec(meta)?;
    let mut body = Vec::with_capacity(meta_json.len() + 64);
    body.extend_from_slice(&(meta_json.len() as u64).to_le_bytes());
    body.extend_from_slice(&meta_json);
    body.extend_from_slice(&pages.to_le_bytes());
    let bitmap_at = body.len();
    body.resize(bitmap_at + pages.div_ceil(8) as usize, 0);
    let mut stored = 0u64;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1)?;
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < size {
        let n = ((size - off) as usize).min(CHUNK);
        ram.read_slice(&mut buf[..n], GuestAddress(RAM_BASE + off))
            .map_err(|e| anyhow!("reading guest RAM at {:#x}: {e}", RAM_BASE + off))?;
        for (i, page) in buf[..n].chunks(PAGE).enumerate() {
            if !is_zero(page) {
                let p = off / PAGE as u64 + i as u64;
                body[bitmap_at + (p / 8) as usize] |= 1 << (p % 8);
                enc.write_all(page)?;
                stored += 1;
            }
        }
        off += n as u64;
    }
    body.extend_from_slice(&enc.finish()?);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&body);
    Ok((pages, stored))
}

/// Whole-page zero test; the OR over fixed 64-byte chunks vectorizes.
fn is_zero(page: &[u8]) -> bool {
    page.chunks(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// Writes `data` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let r = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename to {}", path.display()))?;
        if let Some(d) = dir {
            if let Ok(d) = std::fs::File::open(d) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Writes RAM from a state file; pages not stored become zero unless `fresh`
/// (RAM just allocated, already zero).
pub fn load_ram(sf: &StateFile<'_>, ram: &GuestMemoryMmap, fresh: bool) -> Result<()> {
    let zero = vec![0u8; PAGE];
    let mut next = 0u64;
    let zero_until = |to: u64, next: &mut u64| -> Result<()> {
        while !fresh && *next < to {
            ram.write_slice(&zero, GuestAddress(RAM_BASE + *next * PAGE as u64))
                .map_err(|e| anyhow!("writing guest RAM: {e}"))?;
            *next += 1;
        }
        *next = to;
        Ok(())
    };
    sf.for_each_page(|p, data| {
        zero_until(p, &mut next)?;
        ram.write_slice(data, GuestAddress(RAM_BASE + p * PAGE as u64))
            .map_err(|e| anyhow!("writing guest RAM page {p}: {e}"))?;
        next = p + 1;
        Ok(())
    })?;
    zero_until(sf.pages, &mut next)
}

/// The running machine as the control plane sees it: pause/resume, save and
/// load its state. Clonable; usable from any thread while the machine runs.
#[derive(Clone)]
pub struct Vm {
    pub platform: Platform,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub ram: GuestMemoryMmap,
    pub config: VmConfig,
    /// Serializes pause/resume/save/load from several control clients.
    op: Arc<Mutex<()>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vm {
    pub fn new(
        platform: Platform,
        transports: Vec<Arc<Mutex<MmioTransport>>>,
        ram: GuestMemoryMmap,
        config: VmConfig,
    ) -> Self {
        Vm {
            platform,
            transports,
            ram,
            config,
            op: Arc::new(Mutex::new(())),
        }
    }

    /// Harts parked at an instruction boundary, then every device worker
    /// stopped once its in-flight I/O is done (disks flushed), mtime frozen.
    pub fn pause(&self) -> Result<()> {
        let _op = lock(&self.op);
        self.pause_locked()
    }

    fn pause_locked(&self) -> Result<()> {
        self.platform.pause().map_err(|e| anyhow!("pause: {e}"))?;
        for t in &self.transports {
            if let Err(e) = lock(t).pause() {
                self.resume_locked()?;
                bail!("pause: {e}");
            }
        }
        Ok(())
    }

    pub fn resume(&self) -> Result<()> {
        let _op = lock(&self.op);
        self.resume_locked()
    }

    fn resume_locked(&self) -> Result<()> {
        let mut err = None;
        for t in &self.transports {
            if let Err(e) = lock(t).resume() {
                err.get_or_insert(e);
            }
        }
        self.platform.resume();
        match err {
            Some(e) => bail!("resume: {e}"),
            None => Ok(()),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.platform.is_paused()
    }

    /// The paused machine's full state, encoded.
    pub fn encode(&self) -> Result<(Vec<u8>, SaveStats)> {
        let _op = lock(&self.op);
        self.encode_locked()
    }

    fn encode_locked(&self) -> Result<(Vec<u8>, SaveStats)> {
        if !self.is_paused() {
            bail!("the VM must be paused");
        }
        let t = Instant::now();
        let machine = self.platform.save().map_err(|e| anyhow!(e))?;
        let virtio = self
            .transports
            .iter()
            .map(|t| lock(t).save_state().map_err(|e| anyhow!(e)))
            .collect::<Result<Vec<_>>>()?;
        let meta = Meta {
            config: self.config.clone(),
            date_sec: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            machine,
            virtio,
        };
        let mut out = Vec::new();
        let (ram_pages, stored_pages) = encode(&meta, &self.ram, &mut out)?;
        let stats = SaveStats {
            date_sec: meta.date_sec,
            file_bytes: out.len() as u64,
            ram_pages,
            stored_pages,
            millis: t.elapsed().as_millis() as u64,
        };
        Ok((out, stats))
    }

    /// `save PATH`: the paused machine's state into a file (atomically).
    pub fn save(&self, path: &Path) -> Result<SaveStats> {
        let t = Instant::now();
        let (data, mut stats) = self.encode()?;
        write_atomic(path, &data)?;
        stats.millis = t.elapsed().as_millis() as u64;
        Ok(stats)
    }

    /// Loads a state file into this (paused) machine: RAM, harts, platform
    /// and virtio devices. The configuration must match this machine's.
    pub fn load(&self, data: &[u8]) -> Result<()> {
        let _op = lock(&self.op);
        let sf = parse(data)?;
        self.check_state(&sf)?;
        self.load_locked(&sf)
    }

    /// Everything about `sf` that can be refused before the machine changes.
    fn check_state(&self, sf: &StateFile<'_>) -> Result<()> {
        if !self.is_paused() {
            bail!("the VM must be paused");
        }
        check_config(&sf.meta.config, &self.config)?;
        if sf.meta.virtio.len() != self.transports.len() {
            bail!(
                "the state has {} virtio devices, this VM {}",
                sf.meta.virtio.len(),
                self.transports.len()
            );
        }
        // Refuse a bad state before touching the running machine.
        for (i, h) in sf.meta.machine.cpus.harts.iter().enumerate() {
            h.check(i)?;
        }
        sf.for_each_page(|_, _| Ok(()))?;
        Ok(())
    }

    fn load_locked(&self, sf: &StateFile<'_>) -> Result<()> {
        load_ram(sf, &self.ram, false)?;
        self.platform
            .load(&sf.meta.machine)
            .map_err(|e| anyhow!(e))?;
        for (t, s) in self.transports.iter().zip(&sf.meta.virtio) {
            lock(t).restore_state(s).map_err(|e| anyhow!(e))?;
        }
        Ok(())
    }
}

/// One VM snapshot, as `snapshot-list` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub name: String,
    pub date_sec: u64,
    /// Bytes of the VM state file.
    pub vm_state_size: u64,
    /// Disks (paths) holding an internal snapshot of this name.
    pub disks: Vec<String>,
}

/// Snapshot names become file names in the snapshot directory.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+@:".contains(&b));
    if !ok {
        bail!("snapshot name {name:?}: use 1 to 128 letters, digits and -_.+@: (not starting with '.')");
    }
    Ok(())
}

fn state_path(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.vmstate"))
}

/// Metadata of a state file without reading its RAM (for listing).
pub fn peek_meta(path: &Path) -> Result<(Meta, u64)> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = f.metadata()?.len();
    let mut head = [0u8; HEADER + 8];
    f.read_exact(&mut head)
        .map_err(|_| FormatError::Truncated("no header".into()))?;
    if &head[..8] != MAGIC {
        return Err(FormatError::Magic.into());
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4"));
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version).into());
    }
    let meta_len = u64::from_le_bytes(head[HEADER..].try_into().expect("8"));
    if meta_len > MAX_META || meta_len > size {
        return Err(FormatError::Corrupt(format!("metadata length {meta_len}")).into());
    }
    let mut meta = vec![0u8; meta_len as usize];
    f.read_exact(&mut meta)
        .map_err(|_| FormatError::Truncated("metadata".into()))?;
    let meta: Meta = serde_json::from_slice(&meta)
        .map_err(|e| FormatError::Corrupt(format!("metadata: {e}")))?;
    Ok((meta, size))
}

impl Vm {
    /// Block transports with their `--disk` paths, in order.
    fn disks(&self) -> Vec<(Arc<Mutex<MmioTransport>>, String)> {
        self.transports
            .iter()
            .filter(|t| lock(t).device_type() == virtio_devices::ids::BLOCK)
            .zip(&self.config.virtio.disk)
            .map(|(t, d)| (t.clone(), d.path.display().to_string()))
            .collect()
    }

    /// Runs `f` paused (pausing first if needed, resuming afterwards if the
    /// VM was running), with the operation lock held.
    fn paused<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _op = lock(&self.op);
        let was_paused = self.is_paused();
        if !was_paused {
            self.pause_locked()?;
        }
        let r = f();
        if !was_paused {
            self.resume_locked()?;
        }
        r
    }

    /// `snapshot-create NAME`: the VM state into `DIR/NAME.vmstate` plus an
    /// internal snapshot NAME on every writable qcow2 disk, all or nothing.
    pub fn snapshot_create(&self, dir: &Path, name: &str) -> Result<SnapshotEntry> {
        check_name(name)?;
        let file = state_path(dir, name);
        if file.exists() {
            bail!("snapshot {name:?} already exists");
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("snapshot directory {}", dir.display()))?;
        self.paused(|| {
            let disks = self.disks();
            for (t, path) in &disks {
                let mut t = lock(t);
                let Some(d) = t.disk() else {
                    bail!("disk {path}: not reachable while paused");
                };
                if !d.can_snapshot() && !d.read_only() {
                    // Its contents could not go back with the machine (QEMU's
                    // savevm refuses such a disk too).
                    bail!("disk {path} is writable but cannot hold internal snapshots (not qcow2)");
                }
                if d.can_snapshot() && d.snapshots().iter().any(|s| s.name == name) {
                    bail!("disk {path} already has an internal snapshot {name:?}");
                }
            }
            let (data, stats) = self.encode_locked()?;
            // Disk snapshots, each remembered by id so a rollback removes
            // exactly what was made.
            let mut made: Vec<(Arc<Mutex<MmioTransport>>, String, String)> = Vec::new();
            let mut result = Ok(());
            for (t, path) in &disks {
                let mut g = lock(t);
                let Some(d) = g.disk() else { continue };
                if !d.can_snapshot() {
                    continue;
                }
                match d.snapshot_create(name).and_then(|_| d.flush()) {
                    Ok(()) => {
                        let id = d
                            .snapshots()
                            .last()
                            .map(|s| s.id.clone())
                            .unwrap_or_default();
                        made.push((t.clone(), path.clone(), id));
                    }
                    Err(e) => {
                        result = Err(anyhow!("disk {path}: snapshot {name:?}: {e}"));
                        break;
                    }
                }
            }
            if result.is_ok() {
                result = write_atomic(&file, &data);
            }
            if let Err(e) = result {
                for (t, path, id) in made {
                    let mut g = lock(&t);
                    if let Some(d) = g.disk() {
                        if let Err(e2) = d.snapshot_delete(&id).and_then(|_| d.flush()) {
                            tracing::error!("rollback: disk {path}: snapshot id {id}: {e2}");
                        }
                    }
                }
                return Err(e);
            }
            Ok(SnapshotEntry {
                name: name.to_string(),
                date_sec: stats.date_sec,
                vm_state_size: data.len() as u64,
                disks: made.into_iter().map(|(_, p, _)| p).collect(),
            })
        })
    }

    /// `snapshot-list`: the state files in `dir`, with the disks that hold
    /// a matching internal snapshot. Takes the disks' view while paused.
    pub fn snapshot_list(&self, dir: &Path) -> Result<Vec<SnapshotEntry>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(anyhow!("snapshot directory {}: {e}", dir.display())),
        };
        let disk_snaps: Vec<(String, Vec<String>)> = self.paused(|| {
            Ok(self
                .disks()
                .iter()
                .map(|(t, p)| {
                    let names = lock(t)
                        .disk()
                        .map(|d| d.snapshots().into_iter().map(|s| s.name).collect())
                        .unwrap_or_default();
                    (p.clone(), names)
                })
                .collect())
        })?;
        for e in rd.flatten() {
            let p = e.path();
            let Some(name) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".vmstate"))
            else {
                continue;
            };
            if check_name(name).is_err() {
                continue;
            }
            match peek_meta(&p) {
                Ok((meta, size)) => out.push(SnapshotEntry {
                    name: name.to_string(),
                    date_sec: meta.date_sec,
                    vm_state_size: size,
                    disks: disk_snaps
                        .iter()
                        .filter(|(_, n)| n.iter().any(|n| n == name))
                        .map(|(p, _)| p.clone())
                        .collect(),
                }),
                Err(e) => tracing::warn!("snapshot {}: {e:#}", p.display()),
            }
        }
        out.sort_by(|a, b| (a.date_sec, &a.name).cmp(&(b.date_sec, &b.name)));
        Ok(out)
    }

    /// `snapshot-revert NAME`: disks and machine back to the snapshot; the
    /// run state (running/paused) stays what it was.
    pub fn snapshot_revert(&self, dir: &Path, name: &str) -> Result<()> {
        check_name(name)?;
        let file = state_path(dir, name);
        if !file.exists() {
            bail!("snapshot {name:?} does not exist");
        }
        let data = read_file(&file)?;
        let sf = parse(&data).with_context(|| format!("snapshot {name:?}"))?;
        self.paused(|| {
            self.check_state(&sf)?;
            let disks = self.disks();
            for (t, path) in &disks {
                let mut g = lock(t);
                let Some(d) = g.disk() else { continue };
                if d.can_snapshot() && !d.snapshots().iter().any(|s| s.name == name) {
                    bail!("disk {path} has no internal snapshot {name:?}");
                }
            }
            for (t, path) in &disks {
                let mut g = lock(t);
                let Some(d) = g.disk() else { continue };
                if d.can_snapshot() {
                    d.snapshot_apply(name)
                        .and_then(|_| d.flush())
                        .map_err(|e| anyhow!("disk {path}: revert to {name:?}: {e}"))?;
                }
            }
            self.load_locked(&sf)
        })
    }

    /// `snapshot-delete NAME`: the state file and the disks' internal
    /// snapshots of that name.
    pub fn snapshot_delete(&self, dir: &Path, name: &str) -> Result<()> {
        check_name(name)?;
        let file = state_path(dir, name);
        self.paused(|| {
            let mut found = file.exists();
            for (t, path) in self.disks() {
                let mut g = lock(&t);
                let Some(d) = g.disk() else { continue };
                if d.can_snapshot() && d.snapshots().iter().any(|s| s.name == name) {
                    found = true;
                    d.snapshot_delete(name)
                        .and_then(|_| d.flush())
                        .map_err(|e| anyhow!("disk {path}: delete {name:?}: {e}"))?;
                }
            }
            if !found {
                bail!("snapshot {name:?} does not exist");
            }
            if file.exists() {
                std::fs::remove_file(&file)
                    .with_context(|| format!("cannot remove {}", file.display()))?;
            }
            Ok(())
        })
    }
}

/// Loads a parsed state file into a machine just built from its config
/// (fresh RAM; not running). Transports are left paused: [`Vm::resume`].
pub fn restore_machine(
    sf: &StateFile<'_>,
    m: &mut arch::riscv64::Machine,
    transports: &[Arc<Mutex<MmioTransport>>],
) -> Result<()> {
    if sf.meta.virtio.len() != transports.len() {
        bail!(
            "the state has {} virtio devices, the rebuilt machine {}",
            sf.meta.virtio.len(),
            transports.len()
        );
    }
    load_ram(sf, m.memory(), true)?;
    m.restore_state(&sf.meta.machine).map_err(|e| anyhow!(e))?;
    for (t, s) in transports.iter().zip(&sf.meta.virtio) {
        lock(t).restore_state(s).map_err(|e| anyhow!(e))?;
    }
    Ok(())
}

/// A state can only go into a machine built the same way.
pub fn check_config(saved: &VmConfig, ours: &VmConfig) -> Result<()> {
    if saved.cpus != ours.cpus || saved.ram_size != ours.ram_size {
        bail!(
            "the state is for {} CPUs and {} MiB, this VM has {} CPUs and {} MiB",
            saved.cpus,
            saved.ram_size >> 20,
            ours.cpus,
            ours.ram_size >> 20
        );
    }
    if saved.virtio != ours.virtio || saved.agent_channel != ours.agent_channel {
        bail!("the state was taken with other devices (disks, NICs, rng, console)");
    }
    Ok(())
}

/// Reads a state file (for `--restore`).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read state file {}", path.display()))
}

/// Body of fuzz/fuzz_targets/vm_state.rs: no panic, no unbounded
/// allocation, whatever the bytes.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(sf) = parse(data) {
        let _ = sf.for_each_page(|_, _| Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arch::riscv64::{Boot, MachineBuilder, MachineConfig};

    const MIB: u64 = 1 << 20;

    fn machine() -> arch::riscv64::Machine {
        MachineBuilder::new(MachineConfig {
            harts: 2,
            ram_size: 16 * MIB,
            boot: Boot::Empty,
            cmdline: String::new(),
            console_out: Box::new(std::io::sink()),
            htif_console: None,
        })
        .unwrap()
        .build()
        .unwrap()
    }

    fn sample() -> (Vec<u8>, Meta) {
        let m = machine();
        let ram = m.memory().clone();
        ram.write_slice(b"page one", GuestAddress(RAM_BASE + 4096))
            .unwrap();
        ram.write_slice(b"last", GuestAddress(RAM_BASE + 16 * MIB - 4))
            .unwrap();
        let meta = Meta {
            config: VmConfig {
                cpus: 2,
                ram_size: 16 * MIB,
                cmdline: "console=ttyS0".into(),
                virtio: Default::default(),
                agent_channel: false,
                boot: Default::default(),
                uuid: None,
            },
            date_sec: 1,
            machine: m.save_state(),
            virtio: vec![],
        };
        let mut out = Vec::new();
        let (pages, stored) = encode(&meta, &ram, &mut out).unwrap();
        // Our two pages and the device tree the machine wrote.
        assert_eq!(pages, 4096);
        assert!((3..10).contains(&stored), "{stored}");
        (out, meta)
    }

    #[test]
    fn round_trip_and_refusals() {
        let (file, meta) = sample();
        let sf = parse(&file).unwrap();
        assert_eq!(sf.meta, meta);
        // RAM into a fresh machine, and over a dirty one.
        let mut m = machine();
        let ram = m.memory().clone();
        ram.write_slice(b"junk", GuestAddress(RAM_BASE + 8192))
            .unwrap();
        load_ram(&sf, &ram, false).unwrap();
        let mut b = [0u8; 8];
        ram.read_slice(&mut b, GuestAddress(RAM_BASE + 4096))
            .unwrap();
        assert_eq!(&b, b"page one");
        ram.read_slice(&mut b[..4], GuestAddress(RAM_BASE + 8192))
            .unwrap();
        assert_eq!(&b[..4], &[0; 4], "unsaved pages are zeroed");
        m.restore_state(&sf.meta.machine).unwrap();

        let err = |d: &[u8]| parse(d).err().expect("refused");
        assert_eq!(err(b"hello world"), FormatError::Magic);
        let mut v = file.clone();
        v[8] = 2;
        assert_eq!(err(&v), FormatError::Version(2));
        assert!(err(&v).to_string().contains("version 2"));
        let cut = &file[..file.len() - 10];
        assert!(matches!(err(cut), FormatError::Truncated(_)));
        assert!(matches!(err(&file[..20]), FormatError::Truncated(_)));
        let mut v = file.clone();
        let n = v.len();
        v[n - 5] ^= 1;
        assert!(matches!(err(&v), FormatError::Checksum { .. }));
        assert!(err(&v).to_string().contains("checksum"));
    }

    /// Snapshots on a running machine (two harts looping on WFI) with a
    /// qcow2 disk: create/list/revert/delete, RAM goes back, name checks, and
    /// a writable raw disk makes snapshot-create refuse.
    #[test]
    fn snapshots_on_a_running_machine() {
        let d = tempfile::tempdir().unwrap();
        let qcow = d.path().join("d.qcow2");
        block::create(
            &qcow,
            &block::CreateOptions {
                format: Some(block::Format::Qcow2),
                size: Some(MIB),
                ..Default::default()
            },
        )
        .unwrap();
        let raw = d.path().join("r.raw");
        std::fs::write(&raw, vec![0u8; MIB as usize]).unwrap();
        let disk = |p: &Path| crate::virtio::DiskSpec::parse(p.to_str().unwrap()).unwrap();
        let run = |disks: Vec<crate::virtio::DiskSpec>| {
            let virtio = VirtioArgs {
                disk: disks,
                ..Default::default()
            };
            let mut b = MachineBuilder::new(MachineConfig {
                harts: 2,
                ram_size: 16 * MIB,
                boot: Boot::Empty,
                cmdline: String::new(),
                console_out: Box::new(std::io::sink()),
                htif_console: None,
            })
            .unwrap();
            let t = crate::virtio::attach(&mut b, &virtio).unwrap();
            let mut m = b.build().unwrap();
            // wfi; j .-4 at the entry.
            let code = [0x1050_0073u32, 0xffdf_f06f];
            for (i, w) in code.iter().enumerate() {
                m.memory()
                    .write_obj(*w, GuestAddress(RAM_BASE + 4 * i as u64))
                    .unwrap();
            }
            let config = VmConfig {
                cpus: 2,
                ram_size: 16 * MIB,
                cmdline: String::new(),
                virtio,
                agent_channel: false,
                boot: Default::default(),
                uuid: None,
            };
            let vm = Vm::new(m.platform(), t, m.memory().clone(), config);
            let ctl = m.control();
            let h = std::thread::spawn(move || m.run());
            (vm, ctl, h)
        };
        let snaps = d.path().join("snaps");

        let (vm, ctl, h) = run(vec![disk(&qcow), disk(&raw)]);
        let e = vm.snapshot_create(&snaps, "s").unwrap_err().to_string();
        assert!(
            e.contains("r.raw") && e.contains("cannot hold internal snapshots"),
            "{e}"
        );
        assert!(!vm.is_paused(), "the run state comes back after a failure");
        ctl.request_exit(riscv_emu::ExitReason::Stopped);
        h.join().unwrap();

        let (vm, ctl, h) = run(vec![disk(&qcow)]);
        let mark = GuestAddress(RAM_BASE + 0x10_0000);
        vm.ram.write_obj(0x1234u64, mark).unwrap();
        let s = vm.snapshot_create(&snaps, "s1").unwrap();
        assert_eq!(s.disks, vec![qcow.display().to_string()]);
        assert!(!vm.is_paused());
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(vm.snapshot_create(&snaps, bad).is_err(), "{bad:?}");
        }
        assert!(vm
            .snapshot_create(&snaps, "s1")
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        vm.ram.write_obj(0x5678u64, mark).unwrap();
        vm.pause().unwrap();
        vm.snapshot_revert(&snaps, "s1").unwrap();
        assert!(vm.is_paused(), "revert keeps the run state");
        assert_eq!(vm.ram.read_obj::<u64>(mark).unwrap(), 0x1234);
        vm.resume().unwrap();
        let l = vm.snapshot_list(&snaps).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].name.as_str(), l[0].disks.len()), ("s1", 1));
        assert!(vm
            .snapshot_revert(&snaps, "nope")
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        vm.snapshot_delete(&snaps, "s1").unwrap();
        assert!(vm.snapshot_list(&snaps).unwrap().is_empty());
        assert!(vm.snapshot_delete(&snaps, "s1").is_err());
        ctl.request_exit(riscv_emu::ExitReason::Stopped);
        h.join().unwrap();
        let img = block::open(&qcow, &Default::default()).unwrap();
        assert!(img.snapshots().is_empty(), "the disk snapshot went too");
    }

    /// The fuzz target's body over a few mutations (cargo fuzz needs nightly).
    #[test]
    fn fuzz_body_on_mutations() {
        let (file, _) = sample();
        for i in (0..file.len()).step_by(97) {
            let mut v = file.clone();
            v[i] ^= 0x5a;
            fuzz_parse(&v);
            fuzz_parse(&v[..i]);
        }
    }
}
