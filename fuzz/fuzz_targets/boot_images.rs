//! Arbitrary bytes as a RISC-V Linux Image or bare-metal ELF (header, program
//! headers, symbol table): errors, never panics or out-of-bounds slices.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    arch::riscv64::fuzzing::boot_images(data);
});
