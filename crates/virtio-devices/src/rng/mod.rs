//! virtio-rng (device 4): one request queue, filled from the host's
//! `getrandom(2)`, so the guest's /dev/hwrng is as good as the host's pool.

mod device;
mod worker;

pub use device::Rng;
