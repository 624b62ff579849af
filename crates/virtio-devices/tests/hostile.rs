//! A hostile guest: malformed descriptor chains written straight into guest
//! memory. Each must put the device in DEVICE_NEEDS_RESET (with a config
//! interrupt), leave the process running, leave a second device in the same
//! guest memory working, and the attacked device must work again after reset.

mod common;

use std::time::Duration;

use common::{patterned_file, FileDisk};
use virtio_devices::block::{consts::*, Block, BlockConfig};
use virtio_devices::rng::Rng;
use virtio_devices::testing::{guest_memory, FakeDriver, F_INDIRECT, F_NEXT, F_WRITE};
use virtio_devices::transport::mmio::regs;

const T: Duration = Duration::from_secs(10);
const ALL: u64 = u64::MAX;
const QSIZE: u16 = 16;

struct Pair {
    blk: FakeDriver,
    rng: FakeDriver,
    _file: tempfile::NamedTempFile,
}

fn pair() -> Pair {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mem = guest_memory(16 << 20);
    let (file, _) = patterned_file(1 << 16);
    let disk = FileDisk::new(file.reopen().unwrap(), false);
    let blk = Block::new(Box::new(disk), BlockConfig::default()).unwrap();
    let mut blk = FakeDriver::shared(Box::new(blk), mem.clone(), 0x1_0000, 0x10_0000);
    let mut rng = FakeDriver::shared(Box::new(Rng::new()), mem, 0x8_0000, 0x80_0000);
    blk.init(ALL, QSIZE);
    rng.init(ALL, QSIZE);
    Pair {
        blk,
        rng,
        _file: file,
    }
}

fn header(t: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A good read request; returns its status.
fn good_read(d: &mut FakeDriver) -> u8 {
    d.reset_alloc();
    let h = d.alloc(16);
    d.write_bytes(h, &header(T_IN, 0));
    let b = d.alloc(512);
    let st = d.alloc(1);
    d.write_bytes(st, &[0xff]);
    d.add_chain(0, &[(h, 16, false), (b, 512, true), (st, 1, true)]);
    d.notify(0);
    d.wait_used(0, T).expect("good request completes");
    d.read_bytes(st, 1)[0]
}

fn rng_works(d: &mut FakeDriver) {
    d.reset_alloc();
    let b = d.alloc(32);
    d.add_chain(0, &[(b, 32, true)]);
    d.notify(0);
    let (_, len) = d.wait_used(0, T).expect("rng still serves");
    assert_eq!(len, 32);
}

/// Runs `attack` against the block device and checks the aftermath.
fn assert_attack(name: &str, attack: impl FnOnce(&mut FakeDriver)) {
    let mut p = pair();
    assert_eq!(good_read(&mut p.blk), S_OK, "{name}: warm-up");
    p.blk.ack_interrupts();
    attack(&mut p.blk);
    p.blk.notify(0);
    assert!(
        p.blk.wait_needs_reset(T),
        "{name}: needs-reset not reported"
    );
    assert_ne!(
        p.blk.read32(regs::INTERRUPT_STATUS) & 2,
        0,
        "{name}: no config-change interrupt"
    );
    assert!(p.blk.irq.level(), "{name}: line not raised");
    // The other device in the same guest is unaffected.
    rng_works(&mut p.rng);
    assert!(!p.rng.needs_reset(), "{name}: rng caught the blk error");
    // A driver reset brings the block device back.
    p.blk.init(ALL, QSIZE);
    assert!(
        !p.blk.needs_reset(),
        "{name}: reset did not clear needs-reset"
    );
    assert_eq!(good_read(&mut p.blk), S_OK, "{name}: blk after reset");
}

#[test]
fn descriptor_loop() {
    assert_attack("loop", |d| {
        let h = d.alloc(16);
        d.write_bytes(h, &header(T_IN, 0));
        d.write_desc(0, 0, h, 16, F_NEXT, 1);
        d.write_desc(0, 1, h + 512, 512, F_NEXT, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn self_loop_on_the_head() {
    assert_attack("self loop", |d| {
        d.write_desc(0, 3, 0x10_0000, 16, F_NEXT, 3);
        d.push_avail(0, 3);
    });
}

#[test]
fn address_outside_guest_memory() {
    assert_attack("out of range", |d| {
        let h = d.alloc(16);
        d.write_bytes(h, &header(T_IN, 0));
        d.write_desc(0, 0, h, 16, F_NEXT, 1);
        d.write_desc(0, 1, 0xffff_0000_0000, 512, F_NEXT | F_WRITE, 2);
        d.write_desc(0, 2, h + 1024, 1, F_WRITE, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn buffer_straddling_the_end_of_ram() {
    assert_attack("straddle", |d| {
        let h = d.alloc(16);
        d.write_bytes(h, &header(T_IN, 0));
        d.write_desc(0, 0, h, 16, F_NEXT, 1);
        d.write_desc(0, 1, (16 << 20) - 256, 512, F_WRITE, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn huge_length_wrapping_address_space() {
    assert_attack("huge len", |d| {
        d.write_desc(0, 0, u64::MAX - 8, u32::MAX, F_WRITE, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn next_index_beyond_queue_size() {
    assert_attack("bad next", |d| {
        let h = d.alloc(16);
        d.write_bytes(h, &header(T_IN, 0));
        d.write_desc(0, 0, h, 16, F_NEXT, 500);
        d.push_avail(0, 0);
    });
}

#[test]
fn head_index_beyond_queue_size() {
    assert_attack("bad head", |d| {
        d.push_avail(0, 1000);
    });
}

#[test]
fn avail_index_jumps_past_queue_size() {
    assert_attack("avail jump", |d| {
        let idx = d.queues[0].avail_idx.wrapping_add(QSIZE + 5);
        d.set_avail_idx(0, idx);
    });
}

#[test]
fn chain_longer_than_any_limit_via_indirect_table() {
    assert_attack("too long", |d| {
        // 2048 linked entries: more than MAX_CHAIN_DESCRIPTORS, no loop.
        let n = 2048u32;
        let table = d.alloc(16 * n as u64);
        let buf = d.alloc(16);
        let mut t = Vec::with_capacity(16 * n as usize);
        for i in 0..n {
            let mut e = [0u8; 16];
            e[..8].copy_from_slice(&buf.to_le_bytes());
            e[8..12].copy_from_slice(&16u32.to_le_bytes());
            let last = i + 1 == n;
            let flags = if last { F_WRITE } else { F_NEXT };
            e[12..14].copy_from_slice(&flags.to_le_bytes());
            e[14..].copy_from_slice(&((i + 1) as u16).to_le_bytes());
            t.extend(e);
        }
        d.write_bytes(table, &t);
        d.write_desc(0, 0, table, 16 * n, F_INDIRECT, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn nested_indirect_table() {
    assert_attack("nested indirect", |d| {
        let inner = d.alloc(16);
        let outer = d.alloc(16);
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(&inner.to_le_bytes());
        e[8..12].copy_from_slice(&16u32.to_le_bytes());
        e[12..14].copy_from_slice(&F_INDIRECT.to_le_bytes());
        d.write_bytes(outer, &e);
        d.write_desc(0, 0, outer, 16, F_INDIRECT, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn indirect_table_outside_memory() {
    assert_attack("indirect oob", |d| {
        d.write_desc(0, 0, 0x7fff_ffff_0000, 64, F_INDIRECT, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn zero_length_header() {
    assert_attack("zero length", |d| {
        let st = d.alloc(1);
        d.write_desc(0, 0, 0x10_0000, 0, F_NEXT, 1);
        d.write_desc(0, 1, st, 1, F_WRITE, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn header_in_a_write_only_descriptor() {
    assert_attack("write-only header", |d| {
        let h = d.alloc(16);
        d.write_bytes(h, &header(T_IN, 0));
        d.write_desc(0, 0, h, 16, F_WRITE | F_NEXT, 1);
        d.write_desc(0, 1, h + 64, 1, F_WRITE, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn no_status_byte() {
    assert_attack("no status", |d| {
        let h = d.alloc(16);
        d.write_bytes(h, &header(T_FLUSH, 0));
        d.write_desc(0, 0, h, 16, 0, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn readable_after_writable() {
    assert_attack("read after write", |d| {
        let h = d.alloc(16);
        d.write_bytes(h, &header(T_IN, 0));
        d.write_desc(0, 0, h, 16, F_NEXT, 1);
        d.write_desc(0, 1, h + 64, 1, F_WRITE | F_NEXT, 2);
        d.write_desc(0, 2, h + 128, 16, 0, 0);
        d.push_avail(0, 0);
    });
}

#[test]
fn rng_with_a_looping_chain_while_blk_keeps_working() {
    let mut p = pair();
    p.rng.write_desc(0, 0, 0x80_0000, 16, F_WRITE | F_NEXT, 1);
    p.rng.write_desc(0, 1, 0x80_0100, 16, F_WRITE | F_NEXT, 0);
    p.rng.push_avail(0, 0);
    p.rng.notify(0);
    assert!(p.rng.wait_needs_reset(T));
    assert_eq!(good_read(&mut p.blk), S_OK);
    // Further notifies on the broken device are ignored, not crashes.
    p.rng.notify(0);
    p.rng.notify(7);
    assert_eq!(good_read(&mut p.blk), S_OK);
}
