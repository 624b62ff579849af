//! Transport pause/resume and state save/restore (snapshots): nothing is
//! served while paused, a notification from then is not lost, and a restored
//! transport continues the rings where the saved one stopped; hostile state
//! is refused.

use std::time::Duration;

use virtio_devices::rng::Rng;
use virtio_devices::testing::{FakeDriver, RING_BASE};
use virtio_devices::transport::mmio::status;

const T: Duration = Duration::from_secs(10);

#[test]
fn pause_resume_save_restore() {
    let mut d = FakeDriver::new(Box::new(Rng::new()), 8 << 20);
    d.init(u64::MAX, 64);
    let a = d.alloc(64);
    d.add_chain(0, &[(a, 64, true)]);
    d.notify(0);
    assert_eq!(d.wait_used(0, T).unwrap().1, 64);

    d.dev.pause().unwrap();
    d.dev.pause().unwrap(); // idempotent
    d.add_chain(0, &[(a, 32, true)]);
    d.notify(0);
    // Measuring that nothing happens while paused (a negative check).
    assert!(d.wait_used(0, Duration::from_millis(200)).is_none());
    let s = d.dev.save_state().unwrap();
    assert!(s.activated);
    assert_eq!(s.rings, vec![(1, 1)]);
    d.dev.resume().unwrap();
    assert_eq!(d.wait_used(0, T).unwrap().1, 32, "served after resume");

    // A running device's state cannot be saved.
    assert!(d.dev.save_state().unwrap_err().contains("runs"));
    d.dev.pause().unwrap();
    let s = d.dev.save_state().unwrap();
    assert_eq!(s.rings, vec![(2, 2)]);
    d.add_chain(0, &[(a, 16, true)]); // posted after the save: seen after restore

    // A new transport (same RAM) from the state continues the ring.
    let mut d2 = FakeDriver::shared(Box::new(Rng::new()), d.mem.clone(), RING_BASE, 1 << 22);
    d2.queues = d.queues.clone();
    d2.dev.restore_state(&s).unwrap();
    assert_eq!(d2.status() & status::DRIVER_OK, status::DRIVER_OK);
    assert_eq!(d2.dev.save_state().unwrap(), s);
    d2.dev.resume().unwrap();
    assert_eq!(d2.wait_used(0, T).unwrap().1, 16);
    let b = d2.alloc(8);
    d2.add_chain(0, &[(b, 8, true)]);
    d2.notify(0);
    assert_eq!(d2.wait_used(0, T).unwrap().1, 8);
    assert_eq!(d2.used_idx(0), 4);

    // Hostile states are refused with the reason.
    let mut d3 = FakeDriver::shared(Box::new(Rng::new()), d.mem.clone(), RING_BASE, 1 << 22);
    let mut bad = s.clone();
    bad.queues[0].desc = 1 << 40;
    let e = d3.dev.restore_state(&bad).unwrap_err();
    assert!(e.contains("not inside guest RAM"), "{e}");
    let mut bad = s.clone();
    bad.queues[0].size = 3;
    assert!(d3
        .dev
        .restore_state(&bad)
        .unwrap_err()
        .contains("power of two"));
    let mut bad = s.clone();
    bad.device_type = 2;
    assert!(d3
        .dev
        .restore_state(&bad)
        .unwrap_err()
        .contains("device type"));
    let mut bad = s.clone();
    bad.acked_features |= 1 << 60;
    assert!(d3
        .dev
        .restore_state(&bad)
        .unwrap_err()
        .contains("never offered"));
    let mut bad = s.clone();
    bad.rings.clear();
    assert!(d3.dev.restore_state(&bad).is_err());
    assert_eq!(d3.status(), 0, "a refused state leaves the device reset");
}
