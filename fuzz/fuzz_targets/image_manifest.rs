//! Image manifest, index and config parsers (registry and archive input).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = images::store::parse_manifest(data) {
        for l in &m.layers {
            assert!(images::Digest::parse(&l.digest).is_ok());
        }
    }
    let _ = images::store::parse_index(data);
    if let Ok(c) = images::store::parse_config(data) {
        for d in &c.rootfs.diff_ids {
            assert!(images::Digest::parse(d).is_ok());
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = images::Digest::parse(s);
        let _ = images::registry::parse_platform(s);
    }
});
