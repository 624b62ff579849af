//! Measures the PIO exit round trip at the bare `Vcpu::run` level (no
//! runner, no bus) and through `runner` with the bus, on one raw guest:
//! `cargo run --release -p hypervisor --example exit_cost`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::{Bus, BusDevice};
use hypervisor::kvm::Kvm;
use hypervisor::runner::{self, VmControl, VmExit};
use hypervisor::{Exit, Vm, X86Boot, X86Mode, GDT_ENTRIES};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const N: u32 = 20000;

fn guest() -> (hypervisor::kvm::KvmVm, GuestMemoryMmap, X86Boot) {
    let kvm = Kvm::open().expect("/dev/kvm");
    let vm = kvm.create_vm().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    for (i, e) in GDT_ENTRIES.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(0x500 + 8 * i as u64))
            .unwrap();
    }
    mem.write_obj(0xa003u64, GuestAddress(0x9000)).unwrap();
    mem.write_obj(0xb003u64, GuestAddress(0xa000)).unwrap();
    mem.write_obj(0x83u64, GuestAddress(0xb000)).unwrap();
    // mov ecx, N; mov dx, 0x3ff; 1: out dx, al; dec ecx; jnz 1b; mov dx, 0x604; mov ax, 0x2000; out dx, ax
    let mut code = vec![0xb9];
    code.extend(N.to_le_bytes());
    code.extend([0x66, 0xba, 0xff, 0x03, 0xee, 0xff, 0xc9, 0x75, 0xfb]);
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
        mode: X86Mode::Long { pml4: 0x9000 },
        gdt: 0x500,
    };
    (vm, mem, boot)
}

struct Sink;
impl BusDevice for Sink {
    fn read(&mut self, _: u64, d: &mut [u8]) {
        d.fill(0)
    }
    fn write(&mut self, _: u64, _: &[u8]) {}
}

struct Off(Arc<VmControl>);
impl BusDevice for Off {
    fn read(&mut self, _: u64, d: &mut [u8]) {
        d.fill(0)
    }
    fn write(&mut self, _: u64, _: &[u8]) {
        self.0.request_exit(VmExit::Poweroff);
    }
}

fn main() {
    let (vm, _mem, boot) = guest();
    let mut vcpu = vm.create_vcpu(0, 1, Some(&boot)).unwrap();
    let t = Instant::now();
    let mut n = 0u32;
    loop {
        match vcpu.run().unwrap() {
            Exit::IoOut(0x604, _) => break,
            Exit::IoOut(..) => n += 1,
            _ => {}
        }
    }
    let bare = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    println!("bare Vcpu::run loop: {n} exits, {bare:.2} us per PIO exit");

    let (vm, _mem, boot) = guest();
    let vcpu = vm.create_vcpu(0, 1, Some(&boot)).unwrap();
    let ctl = VmControl::new(1);
    let mut pio = Bus::new();
    pio.insert(0x3f8, 8, Arc::new(Mutex::new(Sink))).unwrap();
    pio.insert(0x604, 2, Arc::new(Mutex::new(Off(ctl.clone()))))
        .unwrap();
    let t = Instant::now();
    let r = runner::start(ctl, vec![vcpu], Arc::new(pio), Arc::new(Bus::new())).unwrap();
    assert_eq!(r.join(), VmExit::Poweroff);
    let run = t.elapsed().as_secs_f64() / N as f64 * 1e6;
    println!("runner + bus: {run:.2} us per PIO exit");
}
