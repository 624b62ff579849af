//! Arbitrary bytes as an OCI bundle's config.json through `ferro oci`'s
//! parsing, validation and derived settings (mount flags, cgroup path,
//! capabilities, seccomp filter compilation).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    libcontainer::fuzzing::config(data);
});
