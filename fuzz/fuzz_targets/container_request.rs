//! Arbitrary bytes as the bodies of ferrod's container requests (run, stop,
//! kill): parse and validate, as the API does before touching the engine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrod::containers::fuzz_request(data);
});
