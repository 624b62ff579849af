//! Arbitrary guest RAM under a virtqueue: chain validation, virtio-blk
//! request parsing/execution and virtio-net tx/rx framing must never panic,
//! hang or touch memory outside the guest.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtio_devices::fuzzing::fuzz_virtio_queue(data);
});
