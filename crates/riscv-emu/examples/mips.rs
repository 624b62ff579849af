//! Interpreter speed on a loop benchmark (ALU, load, store, branch), for
//! docs/BENCHMARKS.md: `cargo run --release -p riscv-emu --example mips [HARTS]`.
//! Each hart runs 7-instruction iterations; prints total MIPS.

use std::sync::Arc;
use std::time::Instant;

use riscv_emu::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const BASE: u64 = 0x8000_0000;

fn i_type(op: u32, f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
fn r_type(f7: u32, f3: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x33
}
fn s_type(rs1: u32, rs2: u32, imm: i32) -> u32 {
    let imm = imm as u32;
    ((imm >> 5 & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (3 << 12) | ((imm & 31) << 7) | 0x23
}
fn b_type(f3: u32, rs1: u32, rs2: u32, off: i32) -> u32 {
    let o = off as u32;
    ((o >> 12 & 1) << 31)
        | ((o >> 5 & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | ((o >> 1 & 0xf) << 8)
        | ((o >> 11 & 1) << 7)
        | 0x63
}

fn main() {
    let harts: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let iters: u32 = 40_000_000;
    let (t0, sp, a0, a1, a2, a3, t1, t2) = (5, 2, 10, 11, 12, 13, 6, 7);
    let mut code = vec![
        (iters >> 12 << 12) | (t0 << 7) | 0x37, // lui t0, iters
        // sp = per-hart scratch: 0x80100000 + hartid * 64 (a0 = hartid at boot)
        (0x100 << 12) | (sp << 7) | 0x17, // auipc sp, 0x100 (pc = BASE + 4)
        i_type(0x13, 0, sp, sp, -4),      // addi sp, sp, -4
        i_type(0x13, 1, a0, a0, 6),       // slli a0, a0, 6
        r_type(0, 0, sp, sp, a0),         // add sp, sp, a0
    ];
    let lp = code.len();
    code.extend([
        i_type(0x13, 0, a0, a0, 1),
        r_type(0, 4, a1, a1, a0),
        s_type(sp, a1, 0),
        i_type(0x03, 3, a2, sp, 0),
        r_type(0, 0, a3, a3, a2),
        i_type(0x13, 0, t0, t0, -1),
    ]);
    let off = -(((code.len() - lp) * 4) as i32);
    code.push(b_type(1, t0, 0, off));
    // Only hart 0 exits; the others park in WFI.
    let csrr_mhartid = (0xf14 << 20) | (2 << 12) | (t2 << 7) | 0x73;
    code.push(csrr_mhartid);
    code.push(b_type(1, t2, 0, 16)); // bnez t2, park
    while (code.len() * 4) % 8 != 0 {
        code.push(0x13);
    }
    let exit_pc = BASE + code.len() as u64 * 4;
    code.push((1 << 12) | (t1 << 7) | 0x17); // auipc t1, 1
    code.push(i_type(0x13, 0, t2, 0, 1)); // li t2, 1
    code.push(s_type(t1, t2, 0)); // sd t2, 0(t1)
    code.push(0x0000_006f); // j .
    code.push(0x1050_0073); // park: wfi
    code.push(0xffdf_f06f); // j park
    let tohost = exit_pc + 0x1000;

    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(BASE), 64 << 20)]).unwrap();
    let bytes: Vec<u8> = code.iter().flat_map(|w| w.to_le_bytes()).collect();
    ram.write_slice(&bytes, GuestAddress(BASE)).unwrap();
    let mut cpus = Cpus::new(CpuConfig {
        harts,
        ram,
        timebase_hz: 10_000_000,
        htif: Some(HtifConfig {
            tohost,
            fromhost: None,
        }),
        htif_console: None,
    })
    .unwrap();
    for h in 0..harts {
        cpus.set_boot_state(h, BASE, &[(10, h as u64)], Mode::Machine);
    }
    struct NoBus;
    impl SystemBus for NoBus {
        fn load(&self, _: usize, _: u64, _: u8) -> Option<u64> {
            None
        }
        fn store(&self, _: usize, _: u64, _: u8, _: u64) -> bool {
            false
        }
    }
    let t = Instant::now();
    let cpu0 = cpu_seconds();
    let r = cpus.run(Arc::new(NoBus));
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    assert_eq!(r, ExitReason::Poweroff);
    let n = cpus.instret();
    println!(
        "harts {harts}: {n} instructions in {secs:.3} s wall = {:.0} MIPS; {cpu:.3} s CPU = {:.0} MIPS per CPU-second",
        n as f64 / secs / 1e6,
        n as f64 / cpu / 1e6
    );
}

/// User + system CPU time of this process (the host may be shared).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
