//! A hostile guest's MMIO to the PLIC and the 16550 UART, interleaved with
//! interrupt line changes and host input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    arch::riscv64::fuzzing::platform_mmio(data);
});
