//! Random instruction words (seeded) never panic the emulator: whatever the
//! guest executes, the machine only takes architectural traps until stopped.

mod common;
use std::time::Duration;

use common::*;
use riscv_emu::{ExitReason, Mode};

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[test]
fn random_instruction_words_never_panic() {
    for (i, mode) in [Mode::Machine, Mode::Supervisor, Mode::User, Mode::Machine]
        .into_iter()
        .enumerate()
    {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
        // 256 KiB of garbage; mtvec and stvec (if the garbage sets them) point
        // back into it, so the harts keep trapping through random code.
        let mut image = Vec::with_capacity(256 << 10);
        while image.len() < 256 << 10 {
            let mut w = xorshift(&mut seed) as u32;
            // Bias towards real opcodes (SYSTEM, AMO, FP, loads/stores) to reach deep paths.
            if w >> 30 == 0 {
                let ops = [
                    0x73, 0x2f, 0x53, 0x43, 0x03, 0x23, 0x07, 0x27, 0x0f, 0x67, 0x63, 0x33, 0x3b,
                ];
                w = (w & !0x7f) | ops[(w >> 7) as usize % ops.len()];
            }
            image.extend_from_slice(&w.to_le_bytes());
        }
        let p = Program {
            image,
            tohost: RAM_BASE + (RAM_SIZE as u64) - 4096,
            fromhost: RAM_BASE + (RAM_SIZE as u64) - 4096 + 64,
        };
        let o = run_in_mode(&p, 2, Duration::from_millis(300), mode);
        match o.reason {
            ExitReason::Error(e) => panic!("seed {i}: emulator error {e}"),
            // Garbage may well hit the HTIF exit or stop on the watchdog; both are fine.
            ExitReason::Stopped | ExitReason::Poweroff | ExitReason::ExitCode(_) => {}
            r => panic!("seed {i}: unexpected {r:?}"),
        }
    }
}
