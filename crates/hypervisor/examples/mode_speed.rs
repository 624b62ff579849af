//! How fast guest code runs in each CPU mode on this host's KVM (on a
//! software KVM some modes are emulated instruction by instruction):
//! `cargo run --release -p hypervisor --example mode_speed`.
//! Each guest runs a `dec; jnz` loop of N iterations and powers off.

use std::time::Instant;

use hypervisor::kvm::Kvm;
use hypervisor::{Exit, Vm, X86Boot, X86Mode, GDT_ENTRIES};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const N: u32 = 2_000_000;

fn run(name: &str, mode: X86Mode, prologue: &[u8], iters: u32, huge: bool) {
    run_u(name, mode, prologue, iters, huge, false)
}

fn run_u(name: &str, mode: X86Mode, prologue: &[u8], iters: u32, huge: bool, user: bool) {
    let kvm = Kvm::open().expect("/dev/kvm");
    let vm = kvm.create_vm().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    for (i, e) in GDT_ENTRIES.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(0x500 + 8 * i as u64))
            .unwrap();
    }
    // Ring-3 code and data (0x28, 0x30) and a GDTR for them at 0x5f0.
    mem.write_obj(0x00af_fb00_0000_ffffu64, GuestAddress(0x528))
        .unwrap();
    mem.write_obj(0x00cf_f300_0000_ffffu64, GuestAddress(0x530))
        .unwrap();
    mem.write_obj(55u16, GuestAddress(0x5f0)).unwrap();
    mem.write_obj(0x500u64, GuestAddress(0x5f2)).unwrap();
    let u = if user { 4 } else { 0 };
    mem.write_obj(0xa003u64 | u, GuestAddress(0x9000)).unwrap();
    mem.write_obj(0xb003u64 | u, GuestAddress(0xa000)).unwrap();
    if huge {
        for i in 0..32u64 {
            mem.write_obj((i << 21) | 0x83 | u, GuestAddress(0xb000 + i * 8))
                .unwrap();
        }
    } else {
        // 4 KiB pages: 32 page tables at 0x20_0000.
        for i in 0..32u64 {
            let pt = 0x20_0000 + i * 0x1000;
            mem.write_obj(pt | 3, GuestAddress(0xb000 + i * 8)).unwrap();
            for j in 0..512u64 {
                mem.write_obj(((i << 21) + (j << 12)) | 3, GuestAddress(pt + j * 8))
                    .unwrap();
            }
        }
    }
    let mut code = prologue.to_vec();
    // mov ecx, N; 1: dec ecx; jnz 1b; mov dx, 0x604; mov ax, 0x2000; out dx, ax; hlt
    code.push(0xb9);
    code.extend(iters.to_le_bytes());
    code.extend([0xff, 0xc9, 0x75, 0xfc]);
    code.extend([
        0x66, 0xba, 0x04, 0x06, 0x66, 0xb8, 0x00, 0x20, 0x66, 0xef, 0xf4,
    ]);
    mem.write_slice(&code, GuestAddress(0x10_0000)).unwrap();
    vm.set_memory(&mem).unwrap();
    let boot = X86Boot {
        rip: 0x10_0000,
        rsp: 0x8000,
        rsi: 0,
        rbx: 0,
        mode,
        gdt: 0x500,
    };
    let mut vcpu = vm.create_vcpu(0, 1, Some(&boot)).unwrap();
    let t = Instant::now();
    let mut exits = 0;
    loop {
        exits += 1;
        match vcpu.run().unwrap() {
            Exit::IoOut(0x604, _) => break,
            Exit::Failed(m) | Exit::Unhandled(m) => panic!("{name}: {m}"),
            Exit::Shutdown => panic!("{name}: triple fault"),
            _ => {}
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{name:40} {:8.1} ms  {:7.3} us/iteration (2 insns)  {exits} exits",
        s * 1e3,
        s / iters as f64 * 1e6
    );
}

fn main() {
    let long = X86Mode::Long { pml4: 0x9000 };
    // lgdt [0x5f0]; iretq to ring 3 (IOPL 3) at the loop.
    let ring3 = [
        0x0f, 0x01, 0x14, 0x25, 0xf0, 0x05, 0x00, 0x00, 0x6a, 0x33, 0x68, 0x00, 0x80, 0x00, 0x00,
        0x68, 0x02, 0x30, 0x00, 0x00, 0x6a, 0x2b, 0x68, 0x1d, 0x00, 0x10, 0x00, 0x48, 0xcf,
    ];
    run_u(
        "long mode, ring 3, 2M pages",
        long,
        &ring3,
        N * 10,
        true,
        true,
    );
    if std::env::args().nth(1).as_deref() == Some("ring3") {
        return;
    }
    run("long mode, 2M pages, IF=0", long, &[], N, true);
    run("long mode, 4K pages, IF=0", long, &[], N, false);
    run("long mode, 2M pages, IF=1 (sti)", long, &[0xfb], N, true);
    run(
        "32-bit protected, paging off",
        X86Mode::Protected32,
        &[],
        N / 10,
        true,
    );
    // mov rsp,0x8000; touch 32 MiB: mov rdi,0x400000; mov ecx,0x2000000; xor eax,eax; rep stosb
    let stos = [
        0x48, 0xc7, 0xc7, 0x00, 0x00, 0x40, 0x00, 0xb9, 0x00, 0x00, 0x00, 0x02, 0x31, 0xc0, 0xf3,
        0xaa,
    ];
    run("long mode 2M, rep stosb 32 MiB first", long, &stos, 1, true);
    run(
        "long mode 4K, rep stosb 32 MiB first",
        long,
        &stos,
        1,
        false,
    );
}
