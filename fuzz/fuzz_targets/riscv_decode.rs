//! Arbitrary instruction words through the RISC-V decoder, and arbitrary
//! operands through the soft-float unit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    riscv_emu::fuzzing::decode_and_fp(data);
});
