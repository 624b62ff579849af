//! Opens arbitrary bytes as a disk image (raw or qcow2) and reads/maps it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    block::fuzzing::open_and_read(data);
});
