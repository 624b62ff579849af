//! x86-64 vCPU state: the CPUID filter, reset MSRs, FPU, LAPIC LINT pins and
//! the boot registers for the Linux 64-bit and PVH entries.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_segment, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

use super::kvm_err;
use crate::{Error, Result, X86Boot, X86Mode, GDT_ENTRIES};

/// MSRs written at vCPU creation, with their architectural reset values.
pub const MSR_RESET: [(u32, u64); 11] = [
    (0x174, 0),             // IA32_SYSENTER_CS
    (0x175, 0),             // IA32_SYSENTER_ESP
    (0x176, 0),             // IA32_SYSENTER_EIP
    (0xc000_0081, 0),       // STAR
    (0xc000_0082, 0),       // LSTAR
    (0xc000_0083, 0),       // CSTAR
    (0xc000_0084, 0),       // SYSCALL_MASK
    (0xc000_0102, 0),       // KERNEL_GS_BASE
    (0x10, 0),              // TSC
    (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
    (0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
];

const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]; // "KVMKVMKVM\0\0\0"

/// Adapts KVM's supported CPUID to vCPU `id` of `count`: hypervisor bit,
/// APIC IDs and topology (one thread per core, `count` cores, one package),
/// and the KVM paravirtual signature leaf (kvmclock etc. in 0x4000_0001 stay
/// as KVM reports them).
pub fn filter_cpuid(cpuid: &mut CpuId, id: u32, count: u32) {
    let count = count.max(1);
    let core_bits = 32 - (count - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ecx |= 1 << 31; // running under a hypervisor
                let logical = count.next_power_of_two().min(255);
                e.ebx = (e.ebx & 0xffff) | (id << 24) | (logical << 16);
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: EBX[23:16] is valid
                }
            }
            4 => {
                // Cores per package - 1; caches shared by one thread.
                e.eax = (e.eax & 0x3fff) | ((count - 1) << 26);
            }
            0xb => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            6 => {
                // No power-management interfaces to emulate.
                e.eax = 0;
                e.ecx = 0;
            }
            0x4000_0000 => {
                e.eax = e.eax.max(0x4000_0001);
                e.ebx = KVM_SIGNATURE[0];
                e.ecx = KVM_SIGNATURE[1];
                e.edx = KVM_SIGNATURE[2];
            }
            _ => {}
        }
    }
}

pub(super) fn set_msrs(fd: &VcpuFd) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = MSR_RESET
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| Error::Config(format!("MSR list: {e:?}")))?;
    let n = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if n != entries.len() {
        return Err(Error::Config(format!(
            "KVM_SET_MSRS: KVM refused MSR {:#x}",
            entries[n].index
        )));
    }
    Ok(())
}

pub(super) fn set_fpu(fd: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))
}

/// LINT0 = ExtINT (the 8259 PIC's output), LINT1 = NMI, as a PC's BIOS
/// leaves them.
pub(super) fn set_lint(fd: &VcpuFd) -> Result<()> {
    const LINT0: usize = 0x350;
    const LINT1: usize = 0x360;
    let mut lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    for (off, mode) in [(LINT0, 7u32), (LINT1, 4u32)] {
        let b = &mut lapic.regs[off..off + 4];
        let mut v = u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
        v = (v & !0x700) | (mode << 8);
        for (d, s) in b.iter_mut().zip(v.to_le_bytes()) {
            *d = s as _;
        }
    }
    fd.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))
}

fn segment(selector: u16) -> kvm_segment {
    let e = GDT_ENTRIES[(selector >> 3) as usize];
    let flags = (e >> 52) & 0xf;
    let access = (e >> 40) & 0xff;
    kvm_segment {
        base: 0,
        limit: if flags & 0x8 != 0 {
            0xffff_ffff
        } else {
            0xfffff
        },
        selector,
        type_: (access & 0xf) as u8,
        present: ((access >> 7) & 1) as u8,
        dpl: ((access >> 5) & 3) as u8,
        db: ((flags >> 2) & 1) as u8,
        s: ((access >> 4) & 1) as u8,
        l: ((flags >> 1) & 1) as u8,
        g: ((flags >> 3) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

pub(super) fn set_boot_regs(fd: &VcpuFd, b: &X86Boot) -> Result<()> {
    let mut s = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    s.gdt.base = b.gdt;
    s.gdt.limit = (GDT_ENTRIES.len() * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    let data = segment(0x10);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(0x18);
    const PE: u64 = 1;
    const ET: u64 = 1 << 4;
    const NE: u64 = 1 << 5;
    const PG: u64 = 1 << 31;
    match b.mode {
        X86Mode::Long { pml4 } => {
            s.cs = segment(0x08);
            s.cr3 = pml4;
            s.cr4 = 1 << 5; // PAE
            s.cr0 = PE | ET | NE | PG;
            s.efer = (1 << 8) | (1 << 10); // LME | LMA
        }
        X86Mode::Protected32 => {
            s.cs = segment(0x20);
            s.cr3 = 0;
            s.cr4 = 0;
            s.cr0 = PE | ET | NE;
            s.efer = 0;
        }
    }
    fd.set_sregs(&s).map_err(kvm_err("KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs {
        rflags: 2,
        rip: b.rip,
        rsp: b.rsp,
        rbp: b.rsp,
        rsi: b.rsi,
        rbx: b.rbx,
        ..Default::default()
    };
    fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_the_gdt() {
        let cs = segment(0x08);
        assert_eq!((cs.l, cs.db, cs.g, cs.type_, cs.s), (1, 0, 1, 0xb, 1));
        let ds = segment(0x10);
        assert_eq!((ds.l, ds.db, ds.type_, ds.limit), (0, 1, 3, 0xffff_ffff));
        let tr = segment(0x18);
        assert_eq!((tr.s, tr.type_, tr.present), (0, 0xb, 1));
        let cs32 = segment(0x20);
        assert_eq!((cs32.l, cs32.db), (0, 1));
    }

    #[test]
    fn cpuid_topology() {
        let entries = [
            kvm_bindings::kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0008_0800,
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0x4000_0000,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        filter_cpuid(&mut c, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].edx), (2, 4, 3));
        assert_eq!(e[2].ebx, 0x4b4d_564b);
    }
}
