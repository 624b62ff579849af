//! Arbitrary command-line words through `ferro img`'s parsers (getopt,
//! sizes, `-o` option lists).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    imgtool::fuzzing::cli_parsers(data);
});
