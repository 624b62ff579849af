//! Arbitrary bytes as a ferrod VM definition (TOML or JSON): parse,
//! validate, translate to `ferro run` flags, round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrod::spec::fuzz_definition(data);
});
