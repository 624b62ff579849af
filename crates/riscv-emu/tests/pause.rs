//! Pause/resume and hart state capture: a counting hart stops counting while
//! paused, mtime is frozen across the pause, WFI sleepers park at once, and
//! deposited state is what the harts continue from.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use riscv_emu::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// tests/asm/link.ld: .text, then .tohost at +0x1000, then .data at +0x2000.
const COUNTER: u64 = RAM_BASE + 0x2000;

fn read64(ram: &GuestMemoryMmap, a: u64) -> u64 {
    ram.read_obj::<u64>(GuestAddress(a)).unwrap()
}

fn mtime(bus: &TestBus) -> u64 {
    bus.load(0, 0x0200_bff8, 8).unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

#[test]
fn pause_resume_and_state() {
    let p = build("pause");
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_BASE), RAM_SIZE)]).unwrap();
    ram.write_slice(&p.image, GuestAddress(RAM_BASE)).unwrap();
    let mut cpus = Cpus::new(CpuConfig {
        harts: 2,
        ram: ram.clone(),
        timebase_hz: 10_000_000,
        htif: None,
        htif_console: None,
    })
    .unwrap();
    for h in 0..2 {
        cpus.set_boot_state(h, RAM_BASE, &[(10, h as u64)], Mode::Machine);
    }
    let bus = Arc::new(TestBus {
        aclint: cpus.aclint(),
        regs: Mutex::new([0; 8]),
        irq: cpus.irq_handle(),
    });
    let pauser = cpus.pauser();
    let ctl = cpus.control();
    let b2 = bus.clone();
    let runner = std::thread::spawn(move || {
        let r = cpus.run(b2);
        (r, cpus)
    });
    wait_for("the counter to start", || read64(&ram, COUNTER) > 1000);
    wait_for("hart 1 to reach WFI", || {
        pauser.pause().unwrap();
        let in_wfi = pauser.save().unwrap().harts[1].wfi;
        pauser.resume();
        in_wfi
    });

    // Hart 1 sleeps in WFI with nothing enabled: only the pause's kick wakes
    // it before its 500 ms re-check, so a quick pause shows it was woken.
    for _ in 0..4 {
        let t = Instant::now();
        pauser.pause().unwrap();
        let took = t.elapsed();
        assert!(took < Duration::from_millis(250), "pause took {took:?}");
        pauser.resume();
    }

    pauser.pause().unwrap();
    assert!(pauser.is_paused());
    let (c1, m1) = (read64(&ram, COUNTER), mtime(&bus));
    std::thread::sleep(Duration::from_millis(200)); // measuring, not syncing
    assert_eq!(read64(&ram, COUNTER), c1, "counter moved while paused");
    assert_eq!(mtime(&bus), m1, "mtime moved while paused");
    let s1 = pauser.save().unwrap();
    assert_eq!(s1.harts.len(), 2);
    assert!(s1.harts[1].wfi, "hart 1 was in WFI");
    assert_eq!(s1.aclint.mtime, m1);
    let pc0 = s1.harts[0].pc;
    assert!((RAM_BASE..RAM_BASE + 0x100).contains(&pc0), "{pc0:#x}");

    pauser.resume();
    let m2 = mtime(&bus);
    // Paused 200 ms = 2,000,000 ticks; mtime must continue from m1.
    assert!(
        m2 >= m1 && m2 - m1 < 1_000_000,
        "mtime jumped across the pause: {m1} -> {m2}"
    );
    wait_for("counting after resume", || {
        read64(&ram, COUNTER) > c1 + 1000
    });
    wait_for("mtime to move on", || mtime(&bus) > m1 + 5_000_000);

    // Load the earlier state (and RAM as it was): counting resumes from c1
    // and mtime goes back to m1.
    pauser.pause().unwrap();
    let later = mtime(&bus);
    assert!(later > m1);
    let mut bad = s1.clone();
    bad.harts[0].mode = 2;
    assert!(matches!(pauser.load(&bad), Err(StateError::Invalid(_))));
    let mut bad = s1.clone();
    bad.harts.pop();
    assert!(pauser.load(&bad).unwrap_err().to_string().contains("harts"));
    pauser.load(&s1).unwrap();
    ram.write_obj(c1, GuestAddress(COUNTER)).unwrap();
    assert_eq!(mtime(&bus), m1);
    assert_eq!(pauser.save().unwrap(), s1);
    pauser.resume();
    wait_for("counting from the loaded state", || {
        read64(&ram, COUNTER) > c1 + 100
    });
    let t = read64(&ram, COUNTER + 8);
    assert!(
        t >= m1 && t < later,
        "mtime seen by the guest {t}, not between {m1} and {later}"
    );

    // Stopping a paused machine works.
    pauser.pause().unwrap();
    ctl.request_exit(ExitReason::Stopped);
    let (r, cpus) = runner.join().unwrap();
    assert_eq!(r, ExitReason::Stopped);
    // Outside run: direct save/restore.
    let s = cpus.save_state();
    assert_eq!(s.harts[1].pc, s1.harts[1].pc);
}
