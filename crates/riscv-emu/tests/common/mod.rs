//! Test support: assembles programs from tests/asm with Debian's
//! riscv64-linux-gnu toolchain and runs them on a minimal machine (RAM at
//! 0x8000_0000, the ACLINT at 0x0200_0000, a scratch MMIO register at
//! 0x1000_0000) until they exit through HTIF.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use riscv_emu::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const RAM_BASE: u64 = 0x8000_0000;
pub const RAM_SIZE: usize = 32 << 20;

fn tool(name: &str) -> String {
    format!("riscv64-linux-gnu-{name}")
}

fn asm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/asm")
}

pub struct Program {
    pub image: Vec<u8>,
    pub tohost: u64,
    pub fromhost: u64,
}

/// Assembles and links tests/asm/<name>.S; panics loudly if the toolchain is
/// missing (scripts/deps installs it).
pub fn build(name: &str) -> Program {
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = dir.path().join(format!("{name}.elf"));
    let bin = dir.path().join(format!("{name}.bin"));
    let src = asm_dir().join(format!("{name}.S"));
    let out = Command::new(tool("gcc"))
        .args([
            "-nostdlib",
            "-nostartfiles",
            "-static",
            "-march=rv64gc",
            "-mabi=lp64d",
            "-mno-relax",
            "-fno-pic",
            "-no-pie",
            "-Wl,--build-id=none",
        ])
        .arg("-T")
        .arg(asm_dir().join("link.ld"))
        .arg("-I")
        .arg(asm_dir())
        .arg(&src)
        .arg("-o")
        .arg(&elf)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (install gcc-riscv64-linux-gnu: scripts/deps test): {e}",
                tool("gcc")
            )
        });
    assert!(
        out.status.success(),
        "assembling {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = Command::new(tool("objcopy"))
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin)
        .status()
        .expect("objcopy");
    assert!(st.success());
    let nm = Command::new(tool("nm")).arg(&elf).output().expect("nm");
    let syms = String::from_utf8_lossy(&nm.stdout);
    let sym = |s: &str| {
        syms.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                let (a, _, n) = (it.next()?, it.next()?, it.next()?);
                (n == s).then(|| u64::from_str_radix(a, 16).ok())?
            })
            .unwrap_or_else(|| panic!("{name}: no symbol {s}"))
    };
    Program {
        image: std::fs::read(&bin).expect("read bin"),
        tohost: sym("tohost"),
        fromhost: sym("fromhost"),
    }
}

/// A scratch MMIO register file for tests: 8 u64 registers at 0x1000_0000.
/// Writing register 7 (0x1000_0038) drives hart 0's external interrupt lines:
/// bit 0 = S-level (SEIP), bit 1 = M-level (MEIP), like a PLIC would.
pub struct TestBus {
    pub aclint: Arc<Mutex<dyn devices::BusDevice>>,
    pub regs: Mutex<[u64; 8]>,
    pub irq: IrqHandle,
}

impl SystemBus for TestBus {
    fn load(&self, _hart: usize, addr: u64, size: u8) -> Option<u64> {
        if (0x0200_0000..0x0201_0000).contains(&addr) {
            let mut b = [0u8; 8];
            self.aclint
                .lock()
                .unwrap()
                .read(addr - 0x0200_0000, &mut b[..size as usize]);
            return Some(u64::from_le_bytes(b));
        }
        if (0x1000_0000..0x1000_0040).contains(&addr) {
            let r = self.regs.lock().unwrap()[((addr - 0x1000_0000) / 8) as usize];
            let sh = (addr % 8) * 8;
            return Some(r >> sh);
        }
        None
    }
    fn store(&self, _hart: usize, addr: u64, size: u8, value: u64) -> bool {
        if (0x0200_0000..0x0201_0000).contains(&addr) {
            let b = value.to_le_bytes();
            self.aclint
                .lock()
                .unwrap()
                .write(addr - 0x0200_0000, &b[..size as usize]);
            return true;
        }
        if (0x1000_0000..0x1000_0040).contains(&addr) && addr & 7 == 0 {
            self.regs.lock().unwrap()[((addr - 0x1000_0000) / 8) as usize] = value;
            if addr == 0x1000_0038 {
                self.irq
                    .set_external(0, IrqContext::Supervisor, value & 1 != 0);
                self.irq
                    .set_external(0, IrqContext::Machine, value & 2 != 0);
            }
            return true;
        }
        false
    }
}

pub struct Outcome {
    pub reason: ExitReason,
    pub instret: u64,
    pub console: String,
    pub elapsed: Duration,
}

/// Runs a program on `harts` harts (all start at 0x8000_0000 with a0 = hartid)
/// with a watchdog that stops the machine after `limit`.
pub fn run_program(p: &Program, harts: usize, limit: Duration) -> Outcome {
    run_in_mode(p, harts, limit, Mode::Machine)
}

pub fn run_in_mode(p: &Program, harts: usize, limit: Duration, mode: Mode) -> Outcome {
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_BASE), RAM_SIZE)]).unwrap();
    ram.write_slice(&p.image, GuestAddress(RAM_BASE)).unwrap();
    let console = Arc::new(Mutex::new(Vec::new()));
    let c2 = console.clone();
    let mut cpus = Cpus::new(CpuConfig {
        harts,
        ram,
        timebase_hz: 10_000_000,
        htif: Some(HtifConfig {
            tohost: p.tohost,
            fromhost: Some(p.fromhost),
        }),
        htif_console: Some(Box::new(move |b| c2.lock().unwrap().push(b))),
    })
    .unwrap();
    for h in 0..harts {
        cpus.set_boot_state(h, RAM_BASE, &[(10, h as u64), (11, 0)], mode);
    }
    let bus = Arc::new(TestBus {
        aclint: cpus.aclint(),
        regs: Mutex::new([0; 8]),
        irq: cpus.irq_handle(),
    });
    let ctl = cpus.control();
    let done = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let (m, cv) = &*d2;
        let g = m.lock().unwrap();
        let (g, _) = cv.wait_timeout_while(g, limit, |d| !*d).unwrap();
        if !*g {
            ctl.request_exit(ExitReason::Stopped);
        }
    });
    let t = std::time::Instant::now();
    let reason = cpus.run(bus);
    let elapsed = t.elapsed();
    *done.0.lock().unwrap() = true;
    done.1.notify_all();
    watchdog.join().unwrap();
    let console = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    if reason == ExitReason::Stopped {
        eprintln!("harts at stop: {:x?}", cpus.hart_states());
    }
    Outcome {
        reason,
        instret: cpus.instret(),
        console,
        elapsed,
    }
}

/// Builds and runs `name`, asserting it passes (HTIF exit 0).
pub fn pass(name: &str, harts: usize) -> Outcome {
    let p = build(name);
    let o = run_program(&p, harts, Duration::from_secs(30));
    match &o.reason {
        ExitReason::Poweroff => {}
        ExitReason::ExitCode(c) if *c >= 0x500 => {
            panic!("{name}: unexpected interrupt {}", c - 0x500)
        }
        ExitReason::ExitCode(c) if *c >= 0x400 => {
            panic!("{name}: unexpected trap, mcause {}", c - 0x400)
        }
        ExitReason::ExitCode(c) => panic!("{name}: test {c} failed"),
        r => panic!("{name}: stopped with {r:?}"),
    }
    o
}
