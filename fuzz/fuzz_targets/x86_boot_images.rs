//! Arbitrary bytes as an x86-64 kernel (bzImage setup header, ELF/PVH
//! note), inspected and loaded into guest RAM: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    arch::x86_64::fuzzing::x86_boot_images(data);
});
