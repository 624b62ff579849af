//! The riscv64 emulator backend's [`VmControl`]: status, `powerdown`
//! through the agent channel, `quit`. It outlives each machine (a guest
//! reboot builds a new one, see [`EmuVm::attach`]), so the control socket,
//! signal handlers and Ctrl-A X keep working across reboots.
//!
//! The agent channel (docs/CONTROL.md, "Cooperative shutdown") is one
//! virtio-console attached after every user device, its input a socketpair
//! whose other end stays here; the device tree names it
//! (`/chosen/ferrovisor,agent-console`) so the default guest's init knows
//! to run its agent on the last hvc.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use arch::riscv64::MachineBuilder;
use riscv_emu::{Control, ExitReason};
use virtio_devices::console::{Console, ConsoleIo};

use crate::control::{RunState, VmControl, VmStatus};

/// What `status` reports that does not change while the VMM runs.
#[derive(Debug, Clone)]
pub struct VmInfo {
    pub name: String,
    pub uuid: String,
    pub arch: &'static str,
    pub cpus: usize,
    pub memory_bytes: u64,
}

impl VmInfo {
    pub fn status(&self, state: RunState) -> VmStatus {
        VmStatus {
            state,
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            pid: std::process::id(),
            arch: self.arch.to_string(),
            cpus: self.cpus,
            memory_bytes: self.memory_bytes,
        }
    }
}

#[derive(Default)]
struct Current {
    control: Option<Control>,
    /// Host end of the agent channel of the current machine.
    agent: Option<UnixStream>,
    /// Pause/resume and state of the current machine (module `snapshot`).
    state: Option<crate::snapshot::Vm>,
    snapshot_dir: Option<std::path::PathBuf>,
}

pub struct EmuVm {
    info: VmInfo,
    cur: Mutex<Current>,
    quit: AtomicBool,
    quit_why: Mutex<Option<String>>,
    powerdown: AtomicBool,
}

impl EmuVm {
    pub fn new(info: VmInfo) -> Arc<Self> {
        Arc::new(EmuVm {
            info,
            cur: Mutex::new(Current::default()),
            quit: AtomicBool::new(false),
            quit_why: Mutex::new(None),
            powerdown: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.cur.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Points pause/resume, save and snapshots at the current machine.
    pub fn attach_state(
        &self,
        state: crate::snapshot::Vm,
        snapshot_dir: Option<std::path::PathBuf>,
    ) {
        let mut c = self.lock();
        c.state = Some(state);
        c.snapshot_dir = snapshot_dir;
    }

    /// The current machine's state handle (cloned: operations on it may
    /// take long and must not hold the lock `quit` needs).
    fn state(&self) -> Result<(crate::snapshot::Vm, Option<std::path::PathBuf>)> {
        let c = self.lock();
        let s = c.state.clone().context("the machine is not running yet")?;
        Ok((s, c.snapshot_dir.clone()))
    }

    fn snapshot_dir(&self) -> Result<(crate::snapshot::Vm, std::path::PathBuf)> {
        let (s, d) = self.state()?;
        Ok((s, d.context("snapshots need --snapshot-dir DIR")?))
    }

    /// Adds the agent's virtio-console (call after every user device).
    /// Returns the host end, for [`EmuVm::attach`].
    pub fn add_agent_channel(
        builder: &mut MachineBuilder,
    ) -> Result<(UnixStream, Arc<Mutex<virtio_devices::MmioTransport>>)> {
        let (host, guest) = UnixStream::pair().context("agent channel: socketpair")?;
        // Guest output on the agent port is not used.
        let console = Console::new(ConsoleIo {
            input: Some(OwnedFd::from(guest)),
            output: Box::new(std::io::sink()),
        });
        let (slot, t) = crate::virtio::attach_device(builder, Box::new(console))
            .context("agent channel (virtio-console)")?;
        builder.fdt_extra_mut().agent_console = Some(slot);
        Ok((host, t))
    }

    /// Points the control at a newly built machine. A quit that raced with
    /// the rebuild stops the new machine at once.
    pub fn attach(&self, control: Control, agent: Option<UnixStream>) {
        let mut c = self.lock();
        if self.quit.load(Ordering::SeqCst) {
            control.request_exit(ExitReason::Stopped);
        }
        c.control = Some(control);
        c.agent = agent;
        self.powerdown.store(false, Ordering::SeqCst);
    }

    /// Lets go of the current machine (its state handle holds the virtio
    /// transports, hence the disks): call before dropping the machine, so
    /// that the disks are flushed and closed then, at exit or before a
    /// reboot reopens them.
    pub fn detach(&self) {
        let mut c = self.lock();
        c.state = None;
        c.control = None;
        c.agent = None;
    }

    /// Whether `quit` (command, signal) was asked for.
    pub fn quit_requested(&self) -> bool {
        self.quit.load(Ordering::SeqCst)
    }

    /// Stops the machine for the host; `why` (the first one) ends up in
    /// the status file's message.
    pub fn quit_because(&self, why: &str) {
        let c = self.lock();
        self.quit_why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| why.to_string());
        self.quit.store(true, Ordering::SeqCst);
        if let Some(ctl) = &c.control {
            ctl.request_exit(ExitReason::Stopped);
        }
    }

    /// The status-file message for a host stop.
    pub fn quit_message(&self) -> String {
        let why = self
            .quit_why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        format!("stopped by the host ({})", why.as_deref().unwrap_or("quit"))
    }
}

impl VmControl for EmuVm {
    fn status(&self) -> VmStatus {
        let paused = self.lock().state.as_ref().is_some_and(|s| s.is_paused());
        let state = if self.powerdown.load(Ordering::SeqCst) {
            RunState::Shutdown
        } else if paused {
            RunState::Paused
        } else {
            RunState::Running
        };
        self.info.status(state)
    }

    fn powerdown(&self) -> Result<bool> {
        let mut c = self.lock();
        let Some(agent) = &mut c.agent else {
            return Ok(false);
        };
        // Non-blocking: a guest that never reads must not hang the client.
        agent.set_nonblocking(true)?;
        agent
            .write_all(b"poweroff\n")
            .context("cannot write to the agent channel")?;
        self.powerdown.store(true, Ordering::SeqCst);
        Ok(true)
    }

    fn quit(&self) -> Result<()> {
        self.quit_because("quit command");
        Ok(())
    }

    fn pause(&self) -> Result<()> {
        self.state()?.0.pause()
    }

    fn resume(&self) -> Result<()> {
        self.state()?.0.resume()
    }

    fn save(&self, path: &std::path::Path) -> Result<()> {
        let stats = self.state()?.0.save(path)?;
        tracing::info!(
            "saved {} ({} bytes, {} of {} RAM pages, {} ms)",
            path.display(),
            stats.file_bytes,
            stats.stored_pages,
            stats.ram_pages,
            stats.millis
        );
        Ok(())
    }

    fn snapshot_create(&self, name: &str) -> Result<serde_json::Value> {
        let (s, dir) = self.snapshot_dir()?;
        Ok(serde_json::to_value(s.snapshot_create(&dir, name)?)?)
    }

    fn snapshot_list(&self) -> Result<serde_json::Value> {
        let (s, dir) = self.snapshot_dir()?;
        Ok(serde_json::to_value(s.snapshot_list(&dir)?)?)
    }

    fn snapshot_revert(&self, name: &str) -> Result<()> {
        let (s, dir) = self.snapshot_dir()?;
        s.snapshot_revert(&dir, name)
    }

    fn snapshot_delete(&self, name: &str) -> Result<()> {
        let (s, dir) = self.snapshot_dir()?;
        s.snapshot_delete(&dir, name)
    }
}
