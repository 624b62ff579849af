//! A hostile `--control` client: arbitrary bytes through the JSON-lines
//! splitter, the request parser and the dispatcher.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::control::fuzz_requests(data);
});
