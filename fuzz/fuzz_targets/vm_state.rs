//! A hostile VM state file (`--restore`, snapshot-revert): header, checksum,
//! metadata and the RAM stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::snapshot::fuzz_parse(data);
});
