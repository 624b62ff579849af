//! The KVM implementation: /dev/kvm, the VM (memory slots, in-kernel
//! PIC/IOAPIC/LAPIC and PIT), vCPUs (CPUID, MSRs, LAPIC LINTs, boot
//! registers) and the kick signal used to interrupt KVM_RUN.

mod x86;

use std::cell::Cell;
use std::sync::{Arc, Once};

use devices::IrqLine;
use kvm_bindings::{
    kvm_pit_config, kvm_run, kvm_userspace_memory_region, CpuId, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm as KvmSys, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::{Error, Exit, Result, Vcpu, Vm, X86Boot};

pub use x86::{filter_cpuid, MSR_RESET};

/// The TSS KVM needs for real-mode emulation on Intel: three pages just
/// below the BIOS area, inside the 32-bit MMIO hole.
const TSS_ADDR: usize = 0xfffb_d000;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// What to tell the user when the KVM device cannot be opened.
fn unavailable(path: &str, errno: i32) -> String {
    match errno {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => format!(
            "{path} does not exist: this host has no KVM (no VT-x/AMD-V, or the kvm module is not loaded); use --accel emu"
        ),
        libc::EACCES | libc::EPERM => format!(
            "{path}: permission denied (add your user to the kvm group, or run as root); or use --accel emu"
        ),
        e => format!(
            "cannot open {path}: {}; use --accel emu",
            std::io::Error::from_raw_os_error(e)
        ),
    }
}

/// An open /dev/kvm.
pub struct Kvm {
    sys: KvmSys,
}

impl Kvm {
    /// Opens /dev/kvm (or `$FERRO_KVM_DEVICE`, for tests), saying what to
    /// do when it is missing or not ours.
    pub fn open() -> Result<Self> {
        let path = std::env::var_os("FERRO_KVM_DEVICE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/dev/kvm".into());
        let p = path.display();
        use std::os::unix::ffi::OsStrExt;
        let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::Unavailable(format!("bad KVM device path {p}")))?;
        let sys = KvmSys::new_with_path(&cpath)
            .map_err(|e| Error::Unavailable(unavailable(&p.to_string(), e.errno())))?;
        if sys.get_api_version() != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(Error::Unavailable(format!(
                "/dev/kvm speaks API version {}, not {}",
                sys.get_api_version(),
                kvm_bindings::KVM_API_VERSION
            )));
        }
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        ] {
            if !sys.check_extension(cap) {
                return Err(Error::Unavailable(format!(
                    "this KVM lacks {name}; use --accel emu"
                )));
            }
        }
        Ok(Kvm { sys })
    }

    pub fn max_vcpus(&self) -> usize {
        self.sys.get_max_vcpus()
    }

    /// A VM with the in-kernel irqchip and PIT.
    pub fn create_vm(&self) -> Result<KvmVm> {
        let vm = self.sys.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm.set_tss_address(TSS_ADDR)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        let cpuid = self
            .sys
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(KvmVm {
            vm: Arc::new(vm),
            cpuid,
        })
    }
}

pub struct KvmVm {
    vm: Arc<VmFd>,
    cpuid: CpuId,
}

impl KvmVm {
    pub fn fd(&self) -> &VmFd {
        &self.vm
    }
}

struct KvmIrq {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl IrqLine for KvmIrq {
    fn set_level(&self, level: bool) {
        if let Err(e) = self.vm.set_irq_line(self.gsi, level) {
            tracing::warn!("KVM_IRQ_LINE {} = {level}: {e}", self.gsi);
        }
    }
}

impl Vm for KvmVm {
    fn set_memory(&self, mem: &GuestMemoryMmap) -> Result<()> {
        for (slot, r) in mem.iter().enumerate() {
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| Error::Config(format!("guest memory region: {e}")))?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the
            // VMM keeps alive (it is shared with the devices) for as long as
            // the VM exists; the slot does not overlap another.
            unsafe { self.vm.set_user_memory_region(region) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    fn irq_line(&self, gsi: u32) -> Arc<dyn IrqLine> {
        Arc::new(KvmIrq {
            vm: self.vm.clone(),
            gsi,
        })
    }

    fn create_vcpu(&self, id: u32, count: u32, boot: Option<&X86Boot>) -> Result<Box<dyn Vcpu>> {
        let fd = self
            .vm
            .create_vcpu(id as u64)
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let mut cpuid = self.cpuid.clone();
        filter_cpuid(&mut cpuid, id, count);
        fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        x86::set_msrs(&fd)?;
        x86::set_fpu(&fd)?;
        x86::set_lint(&fd)?;
        if let Some(b) = boot {
            x86::set_boot_regs(&fd, b)?;
        }
        Ok(Box::new(KvmVcpu { fd, id }))
    }
}

pub struct KvmVcpu {
    fd: VcpuFd,
    id: u32,
}

thread_local! {
    /// The kvm_run of the vCPU this thread runs, for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with`: never panic in a signal handler (const-initialized, no
    // destructor, so no lazy registration happens here).
    let _ = KVM_RUN.try_with(|r| {
        let p = r.get();
        if !p.is_null() {
            // SAFETY: `p` is this thread's vCPU kvm_run mapping, registered
            // by `bind_thread` and cleared before the mapping goes away.
            unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    res
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        let me: *mut kvm_run = self.fd.get_kvm_run();
        let _ = KVM_RUN.try_with(|r| {
            if r.get() == me {
                r.set(std::ptr::null_mut());
            }
        });
    }
}

impl Vcpu for KvmVcpu {
    fn id(&self) -> u32 {
        self.id
    }

    fn bind_thread(&mut self) {
        let p: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|r| r.set(p));
    }

    fn describe(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "vCPU {}: rip={:#x} rsp={:#x} rax={:#x} rbx={:#x} rbp={:#x} rflags={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
                self.id, r.rip, r.rsp, r.rax, r.rbx, r.rbp, r.rflags, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector
            ),
            (Err(e), _) | (_, Err(e)) => format!("vCPU {}: registers unavailable: {e}", self.id),
        }
    }

    fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(on as u8);
    }

    fn run(&mut self) -> Result<Exit<'_>> {
        let run: *const kvm_run = self.fd.get_kvm_run();
        let exit = match self.fd.run() {
            Ok(VcpuExit::IoIn(p, d)) => Exit::IoIn(p, d),
            Ok(VcpuExit::IoOut(p, d)) => Exit::IoOut(p, d),
            Ok(VcpuExit::MmioRead(a, d)) => Exit::MmioRead(a, d),
            Ok(VcpuExit::MmioWrite(a, d)) => Exit::MmioWrite(a, d),
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::SystemEvent(t, _)) => match t {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Exit::Poweroff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => Exit::Reset,
                t => Exit::Failed(format!("KVM system event {t}")),
            },
            Ok(VcpuExit::InternalError) => {
                // SAFETY: `run` is this vCPU's kvm_run mapping, valid while
                // `self.fd` lives; KVM filled `internal` for this exit.
                let sub = unsafe { (*run).__bindgen_anon_1.internal.suberror };
                Exit::Failed(format!(
                    "KVM internal error (suberror {sub}: {})",
                    match sub {
                        1 => "instruction emulation failed",
                        2 => "simultaneous exceptions",
                        3 => "delivery event failed",
                        _ => "see KVM_INTERNAL_ERROR_* in linux/kvm.h",
                    }
                ))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::Failed(format!(
                "VM entry failed (hardware reason {reason:#x}, host CPU {cpu})"
            )),
            Ok(other) => Exit::Unhandled(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(source) => {
                return Err(Error::Kvm {
                    what: "KVM_RUN",
                    source,
                })
            }
        };
        Ok(exit)
    }
}

impl KvmVcpu {
    /// The vCPU's general registers (tests and diagnostics).
    pub fn regs(&self) -> Result<kvm_bindings::kvm_regs> {
        self.fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_say_what_to_do() {
        let m = unavailable("/dev/kvm", libc::EACCES);
        assert!(
            m.contains("permission denied") && m.contains("kvm group"),
            "{m}"
        );
        assert!(m.contains("--accel emu"));
        let m = unavailable("/dev/kvm", libc::ENOENT);
        assert!(
            m.contains("does not exist") && m.contains("--accel emu"),
            "{m}"
        );
        let m = unavailable("/dev/kvm", libc::EBUSY);
        assert!(
            m.starts_with("cannot open /dev/kvm") && m.contains("--accel emu"),
            "{m}"
        );
    }
}
