//! virtio-mmio transport: identification, feature handshake, queue setup,
//! reset, config generation, interrupt status/ack.

use std::time::Duration;

use virtio_devices::features;
use virtio_devices::rng::Rng;
use virtio_devices::testing::FakeDriver;
use virtio_devices::transport::mmio::{regs, status};

const T: Duration = Duration::from_secs(5);

fn rng_driver() -> FakeDriver {
    FakeDriver::new(Box::new(Rng::new()), 4 << 20)
}

#[test]
fn identifies_as_modern_virtio_mmio() {
    let mut d = rng_driver();
    assert_eq!(d.read32(regs::MAGIC), 0x7472_6976);
    assert_eq!(d.read32(regs::VERSION), 2);
    assert_eq!(d.read32(regs::DEVICE_ID), 4);
    let f = d.device_features();
    assert_ne!(f & features::VERSION_1, 0);
    assert_ne!(f & features::EVENT_IDX, 0);
    assert_ne!(f & features::INDIRECT_DESC, 0);
    // Unaligned or narrow register accesses read as zero and are ignored.
    let mut b = [0xffu8; 2];
    devices::BusDevice::read(&mut d.dev, regs::MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn features_ok_requires_version_1_and_offered_bits_only() {
    let mut d = rng_driver();
    d.write32(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    // Legacy driver (no VERSION_1): FEATURES_OK does not stick.
    d.write32(regs::DRIVER_FEATURES_SEL, 1);
    d.write32(regs::DRIVER_FEATURES, 0);
    d.write32(
        regs::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(d.status() & status::FEATURES_OK, 0);
    // A bit the device never offered: refused too.
    d.write32(regs::STATUS, 0);
    d.write32(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.write32(regs::DRIVER_FEATURES_SEL, 1);
    d.write32(regs::DRIVER_FEATURES, 1 | (1 << 30));
    d.write32(
        regs::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(d.status() & status::FEATURES_OK, 0);
    // Exactly VERSION_1: accepted, and frozen afterwards.
    d.write32(regs::STATUS, 0);
    d.write32(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.write32(regs::DRIVER_FEATURES_SEL, 1);
    d.write32(regs::DRIVER_FEATURES, 1);
    d.write32(
        regs::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(d.status() & status::FEATURES_OK, 0);
    d.write32(regs::DRIVER_FEATURES, 3);
    assert_eq!(d.dev.acked_features(), features::VERSION_1);
}

#[test]
fn queue_setup_activation_and_reset() {
    let mut d = rng_driver();
    d.write32(regs::QUEUE_SEL, 0);
    assert_eq!(d.read32(regs::QUEUE_NUM_MAX), 256);
    d.write32(regs::QUEUE_SEL, 1);
    assert_eq!(d.read32(regs::QUEUE_NUM_MAX), 0, "rng has one queue");
    let f = d.init(features::VERSION_1 | features::EVENT_IDX, 64);
    assert_eq!(f, features::VERSION_1 | features::EVENT_IDX);
    assert!(d.dev.is_activated());
    d.write32(regs::QUEUE_SEL, 0);
    assert_eq!(d.read32(regs::QUEUE_READY), 1);
    // Queue registers are frozen after DRIVER_OK.
    d.write32(regs::QUEUE_READY, 0);
    assert_eq!(d.read32(regs::QUEUE_READY), 1);

    let buf = d.alloc(64);
    d.add_chain(0, &[(buf, 64, true)]);
    d.notify(0);
    let (id, len) = d.wait_used(0, T).expect("rng request served");
    assert_eq!((id, len), (0, 64));

    // Reset: status 0, queues not ready, interrupt cleared, device stopped.
    d.write32(regs::STATUS, 0);
    assert_eq!(d.status(), 0);
    assert!(!d.dev.is_activated());
    assert_eq!(d.read32(regs::QUEUE_READY), 0);
    assert_eq!(d.read32(regs::INTERRUPT_STATUS), 0);
    assert!(!d.irq.level());
    // And it comes back.
    d.init(features::VERSION_1, 16);
    d.reset_alloc();
    let buf = d.alloc(32);
    d.add_chain(0, &[(buf, 32, true)]);
    d.notify(0);
    assert_eq!(d.wait_used(0, T), Some((0, 32)));
}

#[test]
fn interrupt_status_and_ack_drive_the_line() {
    let mut d = rng_driver();
    d.init(features::VERSION_1, 16);
    let buf = d.alloc(16);
    d.add_chain(0, &[(buf, 16, true)]);
    d.notify(0);
    d.wait_used(0, T).unwrap();
    // The interrupt is raised after the used ring update: poll for it.
    let deadline = std::time::Instant::now() + T;
    while d.read32(regs::INTERRUPT_STATUS) & 1 == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no used-buffer interrupt"
        );
        std::thread::yield_now();
    }
    assert!(d.irq.level());
    d.write32(regs::INTERRUPT_ACK, 1);
    assert_eq!(d.read32(regs::INTERRUPT_STATUS), 0);
    assert!(!d.irq.level());
}

#[test]
fn bad_ring_addresses_mean_needs_reset_not_activation() {
    let mut d = rng_driver();
    d.write32(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.write32(regs::DRIVER_FEATURES_SEL, 1);
    d.write32(regs::DRIVER_FEATURES, 1);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    d.write32(regs::STATUS, s);
    d.write32(regs::QUEUE_SEL, 0);
    d.write32(regs::QUEUE_NUM, 16);
    d.write32(regs::QUEUE_DESC_LOW, 0);
    d.write32(regs::QUEUE_DESC_HIGH, 0x10); // far outside 4 MiB of RAM
    d.write32(regs::QUEUE_DRIVER_LOW, 0x2000);
    d.write32(regs::QUEUE_DEVICE_LOW, 0x3000);
    d.write32(regs::QUEUE_READY, 1);
    d.write32(regs::STATUS, s | status::DRIVER_OK);
    assert!(!d.dev.is_activated());
    assert!(d.needs_reset());
    assert_ne!(d.read32(regs::INTERRUPT_STATUS) & 2, 0, "config interrupt");
    let gen = d.read32(regs::CONFIG_GENERATION);
    assert!(gen > 0, "needs-reset bumps the config generation");
    // A non-power-of-two size is rejected the same way.
    d.write32(regs::STATUS, 0);
    assert!(!d.needs_reset());
    d.write32(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.write32(regs::DRIVER_FEATURES_SEL, 1);
    d.write32(regs::DRIVER_FEATURES, 1);
    d.write32(regs::STATUS, s);
    d.write32(regs::QUEUE_NUM, 100);
    d.write32(regs::QUEUE_DRIVER_LOW, 0x2000);
    d.write32(regs::QUEUE_DEVICE_LOW, 0x3000);
    d.write32(regs::QUEUE_READY, 1);
    d.write32(regs::STATUS, s | status::DRIVER_OK);
    assert!(d.needs_reset());
    assert!(!d.dev.is_activated());
}
