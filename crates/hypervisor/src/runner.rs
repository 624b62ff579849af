//! One thread per vCPU: the exit loop, bus dispatch, and the pause/resume/stop
//! protocol.
//!
//! A vCPU thread parks only between KVM_RUNs and only after re-entering once
//! with `immediate_exit` set, so a port/MMIO read the VMM has just answered is
//! completed into guest registers before the VM counts as paused. Kicks are a
//! real-time signal whose handler sets `immediate_exit` (see `kvm::kick`), so
//! a kick that lands just before KVM_RUN is not lost.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::Bus;

use crate::{Exit, Vcpu};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    Poweroff,
    Reset,
    /// The host asked (Ctrl-A X, a signal, a test).
    Stopped,
    /// Triple fault: KVM_EXIT_SHUTDOWN on `vcpu`.
    TripleFault {
        vcpu: u32,
    },
    /// The guest state made KVM give up on `vcpu` (internal error such as
    /// an instruction it cannot emulate, failed VM entry): a guest crash.
    Crashed {
        vcpu: u32,
        message: String,
    },
    /// The host side failed on `vcpu` (KVM_RUN error, an exit this VMM
    /// does not handle).
    Error {
        vcpu: u32,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Run,
    Pause,
    Stop,
}

struct State {
    want: Want,
    /// vCPU threads currently parked for a pause.
    parked: usize,
    /// vCPU threads still running their loop.
    live: usize,
    exit: Option<VmExit>,
    /// pthread ids of live vCPU threads (kicked with a signal).
    threads: Vec<Option<libc::pthread_t>>,
}

/// Shared control of a running VM: pause, resume, stop, wait for the end.
pub struct VmControl {
    state: Mutex<State>,
    cv: Condvar,
}

impl VmControl {
    /// Control for a VM of `n` vCPUs; devices get it before [`start`].
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(VmControl {
            state: Mutex::new(State {
                want: Want::Run,
                parked: 0,
                live: 0,
                exit: None,
                threads: vec![None; n],
            }),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kick_all(st: &State) {
        for t in st.threads.iter().flatten() {
            // SAFETY: the thread is registered only while its loop runs (it
            // removes itself under this same lock before exiting), so the id
            // is valid; the handler only sets a flag.
            unsafe { libc::pthread_kill(*t, crate::kvm::kick_signal()) };
        }
    }

    /// Ends the VM with `why` (the first reason wins) and kicks every vCPU.
    pub fn request_exit(&self, why: VmExit) {
        let mut st = self.lock();
        if st.exit.is_none() {
            st.exit = Some(why);
        }
        st.want = Want::Stop;
        Self::kick_all(&st);
        self.cv.notify_all();
    }

    /// Stops every vCPU between exits; returns once all are parked (or the
    /// VM has ended). Pending port/MMIO accesses are completed first.
    pub fn pause(&self) {
        let mut st = self.lock();
        if st.want != Want::Run {
            return;
        }
        st.want = Want::Pause;
        loop {
            if st.parked == st.live || st.want == Want::Stop {
                return;
            }
            Self::kick_all(&st);
            // Kicks are sticky (immediate_exit), so one round suffices;
            // the timeout only bounds a wait on a vCPU stuck in a device.
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn resume(&self) {
        let mut st = self.lock();
        if st.want == Want::Pause {
            st.want = Want::Run;
            self.cv.notify_all();
        }
    }

    pub fn is_paused(&self) -> bool {
        let st = self.lock();
        st.want == Want::Pause && st.parked == st.live
    }

    /// The exit reason, once the VM has ended.
    pub fn exit(&self) -> Option<VmExit> {
        self.lock().exit.clone()
    }

    /// Blocks until the VM ends and every vCPU thread has left its loop.
    pub fn wait(&self) -> VmExit {
        let mut st = self.lock();
        while st.exit.is_none() || st.live > 0 {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.exit.clone().unwrap_or(VmExit::Stopped)
    }
}

/// A running VM's threads.
pub struct Running {
    pub control: Arc<VmControl>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits for the end and joins the vCPU threads.
    pub fn join(self) -> VmExit {
        let why = self.control.wait();
        for t in self.threads {
            let _ = t.join();
        }
        why
    }
}

/// Runs first on each vCPU thread (e.g. installs its seccomp filter); an
/// error ends the VM before the vCPU runs.
pub type ThreadInit = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Starts one thread per vCPU. Port accesses go to `pio`, MMIO to `mmio`;
/// unclaimed reads return all-ones, unclaimed writes are dropped.
pub fn start(
    control: Arc<VmControl>,
    vcpus: Vec<Box<dyn Vcpu>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
) -> std::io::Result<Running> {
    start_with(control, vcpus, pio, mmio, None)
}

/// [`start`], with `init` run on each vCPU thread before its first entry.
pub fn start_with(
    control: Arc<VmControl>,
    vcpus: Vec<Box<dyn Vcpu>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    init: Option<ThreadInit>,
) -> std::io::Result<Running> {
    crate::kvm::install_kick_handler()?;
    if control.lock().threads.len() != vcpus.len() {
        return Err(std::io::Error::other(
            "VmControl built for another vCPU count",
        ));
    }
    let mut threads = Vec::new();
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let (ctl, pio, mmio) = (control.clone(), pio.clone(), mmio.clone());
        let init = init.clone();
        control.lock().live += 1;
        let t = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || vcpu_thread(i, vcpu, &ctl, &pio, &mmio, init));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                control.lock().live -= 1;
                control.request_exit(VmExit::Stopped);
                Running { control, threads }.join();
                return Err(e);
            }
        }
    }
    Ok(Running { control, threads })
}

fn vcpu_thread(
    i: usize,
    mut vcpu: Box<dyn Vcpu>,
    ctl: &VmControl,
    pio: &Bus,
    mmio: &Bus,
    init: Option<ThreadInit>,
) {
    vcpu.bind_thread();
    if let Some(Err(e)) = init.map(|f| f()) {
        ctl.request_exit(VmExit::Error {
            vcpu: vcpu.id(),
            message: e,
        });
        let mut st = ctl.lock();
        st.live -= 1;
        ctl.cv.notify_all();
        return;
    }
    {
        let mut st = ctl.lock();
        // SAFETY: pthread_self has no preconditions.
        st.threads[i] = Some(unsafe { libc::pthread_self() });
    }
    let id = vcpu.id();
    loop {
        // Park or leave between exits only.
        let want = ctl.lock().want;
        if want != Want::Run {
            // Complete a pending access before anyone observes the pause.
            vcpu.set_immediate_exit(true);
            let done = vcpu.run().map(|_| ());
            vcpu.set_immediate_exit(false);
            if let Err(e) = done {
                ctl.request_exit(VmExit::Error {
                    vcpu: id,
                    message: e.to_string(),
                });
                break;
            }
            let mut st = ctl.lock();
            if st.want == Want::Stop {
                break;
            }
            st.parked += 1;
            ctl.cv.notify_all();
            while st.want == Want::Pause {
                st = ctl.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.parked -= 1;
            // A kick delivered while parked left immediate_exit set.
            drop(st);
            vcpu.set_immediate_exit(false);
            continue;
        }
        let exit = match vcpu.run() {
            Ok(e) => e,
            Err(e) => {
                ctl.request_exit(VmExit::Error {
                    vcpu: id,
                    message: format!("KVM_RUN: {e}"),
                });
                break;
            }
        };
        match exit {
            Exit::IoIn(port, data) => {
                if !pio.read(port as u64, data) {
                    data.fill(0xff);
                }
            }
            Exit::IoOut(port, data) => {
                pio.write(port as u64, data);
            }
            Exit::MmioRead(addr, data) => {
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            Exit::MmioWrite(addr, data) => {
                mmio.write(addr, data);
            }
            Exit::Interrupted => {
                vcpu.set_immediate_exit(false);
            }
            Exit::Hlt => {
                // Only without an in-kernel irqchip: nothing can wake it.
                ctl.request_exit(VmExit::Error {
                    vcpu: id,
                    message: "guest halted with no way to wake".into(),
                });
            }
            Exit::Shutdown => ctl.request_exit(VmExit::TripleFault { vcpu: id }),
            Exit::Reset => ctl.request_exit(VmExit::Reset),
            Exit::Poweroff => ctl.request_exit(VmExit::Poweroff),
            Exit::Failed(m) => {
                // Where the guest was helps tell a guest bug from a host limit.
                let message = format!("{m}; {}", vcpu.describe());
                ctl.request_exit(VmExit::Crashed { vcpu: id, message })
            }
            Exit::Unhandled(m) => ctl.request_exit(VmExit::Error {
                vcpu: id,
                message: format!("unhandled exit {m}"),
            }),
        }
    }
    if std::env::var_os("FERRO_KVM_DUMP").is_some() {
        eprint!("\r\nferro: {}\r\n", vcpu.describe());
    }
    let mut st = ctl.lock();
    st.threads[i] = None;
    st.live -= 1;
    ctl.cv.notify_all();
}
