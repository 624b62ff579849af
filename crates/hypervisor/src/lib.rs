//! The hypervisor abstraction: a [`Vm`] owns guest memory slots and the
//! interrupt controller, a [`Vcpu`] runs guest code until an exit the VMM
//! must handle. [`runner`] drives one thread per vCPU, dispatches port and
//! MMIO exits to `devices::Bus`es, and pauses/resumes/stops the VM.
//! [`kvm`] implements the traits on Linux KVM for x86-64 guests.
//!
//! Dependencies: `kvm-ioctls`/`kvm-bindings` (rust-vmm's safe KVM wrappers),
//! `vmm-sys-util` (signals to kick vCPU threads out of KVM_RUN), `vm-memory`
//! (the guest RAM shared with devices), `seccompiler` (rust-vmm's
//! seccomp-bpf compiler, as Firecracker uses, for the per-thread filters).

pub mod kvm;
pub mod runner;
pub mod seccomp;

use std::sync::Arc;

use devices::IrqLine;
use vm_memory::GuestMemoryMmap;

pub use runner::{VmControl, VmExit};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unavailable(String),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Why a vCPU returned to the VMM. Port and MMIO accesses carry the data
/// buffer that the VMM fills (reads) or consumes (writes); the access
/// completes on the next [`Vcpu::run`].
pub enum Exit<'a> {
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    /// KVM_RUN was interrupted (a kick, or `immediate_exit`).
    Interrupted,
    /// The guest halted and the hypervisor does not emulate HLT itself.
    Hlt,
    /// Triple fault or other shutdown condition.
    Shutdown,
    /// The guest asked to reset or power off through a hypervisor interface.
    Reset,
    Poweroff,
    /// The hypervisor could not run the guest; the text says why.
    Failed(String),
    /// An exit this VMM does not handle, with its name.
    Unhandled(String),
}

/// x86-64 boot state of the boot vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86Boot {
    pub rip: u64,
    pub rsp: u64,
    /// Linux 64-bit protocol: the zero page. PVH: 0.
    pub rsi: u64,
    /// PVH: the `hvm_start_info`. Linux: 0.
    pub rbx: u64,
    pub mode: X86Mode,
    /// Where the GDT (null, code64, data, tss, code32 at selector 0x20) lives.
    pub gdt: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum X86Mode {
    /// Long mode with paging on and CR3 at the identity-mapped PML4.
    Long { pml4: u64 },
    /// 32-bit protected mode, paging off (the PVH entry state).
    Protected32,
}

/// The GDT entries [`X86Boot`] expects the machine to have written.
pub const GDT_ENTRIES: [u64; 5] = [
    0,
    0x00af_9b00_0000_ffff, // 0x08: 64-bit code
    0x00cf_9300_0000_ffff, // 0x10: flat data
    0x008f_8b00_0000_ffff, // 0x18: busy TSS (required by VM entry)
    0x00cf_9b00_0000_ffff, // 0x20: 32-bit flat code (PVH)
];

/// A virtual machine: memory, interrupt controller, vCPUs.
pub trait Vm: Send + Sync {
    /// Maps every region of `mem` into the guest (once, at setup).
    fn set_memory(&self, mem: &GuestMemoryMmap) -> Result<()>;
    /// A level-triggered line on interrupt controller input `gsi`.
    fn irq_line(&self, gsi: u32) -> Arc<dyn IrqLine>;
    /// Creates vCPU `id` of `count`; `boot` is the boot vCPU's entry state
    /// (the others wait for the boot vCPU to start them).
    fn create_vcpu(&self, id: u32, count: u32, boot: Option<&X86Boot>) -> Result<Box<dyn Vcpu>>;
}

/// One virtual CPU. Used from one thread at a time.
pub trait Vcpu: Send {
    fn id(&self) -> u32;
    /// Enters the guest until the next exit.
    fn run(&mut self) -> Result<Exit<'_>>;
    /// With `true`, the next [`Vcpu::run`] completes any pending port/MMIO
    /// access and returns [`Exit::Interrupted`] without entering the guest.
    fn set_immediate_exit(&mut self, on: bool);
    /// Called on the thread that will run this vCPU, before the first run:
    /// lets a kick signal reach this vCPU's `immediate_exit`.
    fn bind_thread(&mut self);
    /// A one-line register summary for diagnostics.
    fn describe(&self) -> String;
}
