//! KVM backend tests with hand-assembled 64-bit guests (raw machine code):
//! port output reaches the PIO bus, a poweroff port ends the run, a triple
//! fault is reported, and pause/resume keeps a guest counter going.
//! These need /dev/kvm (present on the CI and dev machines; a missing one
//! fails loudly).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::{Bus, BusDevice};
use hypervisor::kvm::Kvm;
use hypervisor::runner::{self, VmControl, VmExit};
use hypervisor::{Vm, X86Boot, X86Mode, GDT_ENTRIES};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const GDT: u64 = 0x500;
const PML4: u64 = 0x9000;
const CODE: u64 = 0x10_0000;
const COUNTER: u64 = 0x5000;

fn memory() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    for (i, e) in GDT_ENTRIES.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT + 8 * i as u64)).unwrap();
    }
    // Identity map of the first GiB with 2 MiB pages.
    mem.write_obj(PML4 + 0x1000 + 3, GuestAddress(PML4))
        .unwrap();
    mem.write_obj(PML4 + 0x2000 + 3, GuestAddress(PML4 + 0x1000))
        .unwrap();
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PML4 + 0x2000 + i * 8))
            .unwrap();
    }
    mem
}

struct Recorder(Arc<Mutex<Vec<u8>>>);
impl BusDevice for Recorder {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, data: &[u8]) {
        self.0.lock().unwrap().push(data[0]);
    }
}

struct PowerOff(Arc<VmControl>);
impl BusDevice for PowerOff {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, data: &[u8]) {
        if data.len() == 2 && u16::from_le_bytes([data[0], data[1]]) == 0x2000 {
            self.0.request_exit(VmExit::Poweroff);
        }
    }
}

struct Guest {
    run: runner::Running,
    out: Arc<Mutex<Vec<u8>>>,
    mem: GuestMemoryMmap,
}

fn boot(code: &[u8]) -> Guest {
    let kvm = Kvm::open().expect("these tests need /dev/kvm");
    let vm = kvm.create_vm().unwrap();
    let mem = memory();
    mem.write_slice(code, GuestAddress(CODE)).unwrap();
    vm.set_memory(&mem).unwrap();
    let boot = X86Boot {
        rip: CODE,
        rsp: 0x8000,
        rsi: 0,
        rbx: 0,
        mode: X86Mode::Long { pml4: PML4 },
        gdt: GDT,
    };
    let vcpu = vm.create_vcpu(0, 1, Some(&boot)).unwrap();
    let control = VmControl::new(1);
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut pio = Bus::new();
    pio.insert(0x3f8, 8, Arc::new(Mutex::new(Recorder(out.clone()))))
        .unwrap();
    pio.insert(0x604, 2, Arc::new(Mutex::new(PowerOff(control.clone()))))
        .unwrap();
    let run = runner::start(control, vec![vcpu], Arc::new(pio), Arc::new(Bus::new())).unwrap();
    Guest { run, out, mem }
}

/// `mov al, C; out dx, al` for each byte, with dx = 0x3f8.
fn print(s: &[u8]) -> Vec<u8> {
    let mut v = vec![0x66, 0xba, 0xf8, 0x03];
    for &c in s {
        v.extend([0xb0, c, 0xee]);
    }
    v
}

const POWEROFF: [u8; 10] = [0x66, 0xba, 0x04, 0x06, 0x66, 0xb8, 0x00, 0x20, 0x66, 0xef];

#[test]
fn port_output_then_poweroff() {
    let mut code = print(b"hello from long mode\n");
    code.extend(POWEROFF);
    code.push(0xf4); // hlt (never reached)
    let g = boot(&code);
    let why = g.run.join();
    assert_eq!(why, VmExit::Poweroff);
    assert_eq!(&*g.out.lock().unwrap(), b"hello from long mode\n");
}

#[test]
fn triple_fault_is_reported() {
    // IDT limit is 0: ud2 -> #GP -> #DF -> shutdown.
    let mut code = print(b"x");
    code.extend([0x0f, 0x0b]); // ud2
    let g = boot(&code);
    assert_eq!(g.run.join(), VmExit::TripleFault { vcpu: 0 });
    assert_eq!(&*g.out.lock().unwrap(), b"x");
}

fn counter(mem: &GuestMemoryMmap) -> u64 {
    mem.read_obj(GuestAddress(COUNTER)).unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

#[test]
fn pause_and_resume_keep_the_counter_going() {
    // loop: inc qword [COUNTER]; out 0x3f8, al; jmp loop
    // (the port write makes the guest exit to the VMM every iteration, so
    // pauses land both inside the guest and on pending PIO exits).
    let code = [
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'.', // mov al, '.'
        0x48, 0xff, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, // inc qword [0x5000]
        0xee, // out dx, al
        0xeb, 0xf5, // jmp inc
    ];
    let g = boot(&code);
    let ctl = g.run.control.clone();
    wait_until("the guest to count", || counter(&g.mem) > 10);
    for _ in 0..20 {
        ctl.pause();
        assert!(ctl.is_paused());
        let c1 = counter(&g.mem);
        let out1 = g.out.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(20)); // observation window, not sync
        assert_eq!(counter(&g.mem), c1, "guest ran while paused");
        assert_eq!(g.out.lock().unwrap().len(), out1);
        // Each completed iteration did one inc and then one out.
        assert!(out1 as u64 == c1 || out1 as u64 + 1 == c1, "{out1} vs {c1}");
        ctl.resume();
        wait_until("the counter to move after resume", || {
            counter(&g.mem) > c1 + 5
        });
    }
    ctl.request_exit(VmExit::Stopped);
    assert_eq!(g.run.join(), VmExit::Stopped);
}
