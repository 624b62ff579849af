//! virtio-blk against a real temp raw file through the fake driver.

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::{patterned_file, FileDisk, Gate};
use virtio_devices::block::{consts::*, feat, Block, BlockConfig};
use virtio_devices::features;
use virtio_devices::testing::FakeDriver;
use virtio_devices::transport::mmio::regs;

const T: Duration = Duration::from_secs(10);
const ALL: u64 = u64::MAX;

fn header(t: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

struct Rig {
    d: FakeDriver,
    file: tempfile::NamedTempFile,
    data: Vec<u8>,
    log: std::sync::Arc<std::sync::Mutex<common::Log>>,
}

fn rig(size: usize, cfg: BlockConfig) -> Rig {
    let (file, data) = patterned_file(size);
    let disk = FileDisk::new(file.reopen().unwrap(), false);
    let log = disk.log.clone();
    let blk = Block::new(Box::new(disk), cfg).unwrap();
    let mut d = FakeDriver::new(Box::new(blk), 16 << 20);
    d.init(ALL, 128);
    Rig { d, file, data, log }
}

/// Submits header + payload (readable) and `data_len` writable bytes + status.
/// Returns (status, used len, data read back).
fn request(
    d: &mut FakeDriver,
    t: u32,
    sector: u64,
    payload: &[u8],
    data_len: u32,
) -> (u8, u32, Vec<u8>) {
    let h = d.alloc(16);
    d.write_bytes(h, &header(t, sector));
    let mut bufs = vec![(h, 16, false)];
    if !payload.is_empty() {
        let p = d.alloc(payload.len() as u64);
        d.write_bytes(p, payload);
        bufs.push((p, payload.len() as u32, false));
    }
    let data = d.alloc(data_len as u64);
    if data_len > 0 {
        bufs.push((data, data_len, true));
    }
    let st = d.alloc(1);
    d.write_bytes(st, &[0xff]);
    bufs.push((st, 1, true));
    let head = d.add_chain(0, &bufs);
    d.notify(0);
    let (id, len) = d.wait_used(0, T).expect("request completes");
    assert_eq!(id, head as u32);
    let status = d.read_bytes(st, 1)[0];
    let out = d.read_bytes(data, data_len as usize);
    d.reset_alloc();
    (status, len, out)
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let mut r = rig(1 << 20, BlockConfig::default());
    let feats = r.d.dev.acked_features();
    for f in [
        feat::FLUSH,
        feat::DISCARD,
        feat::WRITE_ZEROES,
        feat::BLK_SIZE,
        feat::SEG_MAX,
        feat::SIZE_MAX,
    ] {
        assert_ne!(feats & f, 0, "feature {f:#x}");
    }
    assert_eq!(feats & feat::RO, 0);
    let cfg = r.d.read_config(0, 60);
    assert_eq!(u64::from_le_bytes(cfg[0..8].try_into().unwrap()), 2048);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512);
    assert!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()) >= 1);
    // Narrow and unaligned config reads work too.
    assert_eq!(r.d.read_config(1, 1)[0], 8);
}

#[test]
fn read_write_roundtrip_against_the_file() {
    let mut r = rig(1 << 20, BlockConfig::default());
    // Read sectors 3..5.
    let (st, len, got) = request(&mut r.d, T_IN, 3, &[], 1024);
    assert_eq!(st, S_OK);
    assert_eq!(len, 1025);
    assert_eq!(got, r.data[3 * 512..5 * 512]);
    // Write sector 10 and check the file.
    let new: Vec<u8> = (0..512u32).map(|i| (i ^ 0x5a) as u8).collect();
    let (st, len, _) = request(&mut r.d, T_OUT, 10, &new, 0);
    assert_eq!((st, len), (S_OK, 1));
    let mut back = vec![0u8; 512];
    r.file.as_file().read_exact_at(&mut back, 10 * 512).unwrap();
    assert_eq!(back, new);
    // And through the device.
    let (_, _, got) = request(&mut r.d, T_IN, 10, &[], 512);
    assert_eq!(got, new);
    // A large multi-chunk read (1 MiB = whole disk).
    let (st, _, got) = request(&mut r.d, T_IN, 0, &[], 1 << 20);
    assert_eq!(st, S_OK);
    assert_eq!(got[..5120], r.data[..5120]);
    assert_eq!(got[10 * 512..11 * 512], new[..]);
}

#[test]
fn out_of_range_and_misaligned_requests_fail_with_ioerr() {
    let mut r = rig(1 << 20, BlockConfig::default());
    assert_eq!(request(&mut r.d, T_IN, 2047, &[], 1024).0, S_IOERR);
    assert_eq!(request(&mut r.d, T_IN, u64::MAX, &[], 512).0, S_IOERR);
    assert_eq!(request(&mut r.d, T_OUT, 0, &[1; 100], 0).0, S_IOERR);
    assert_eq!(request(&mut r.d, 99, 0, &[], 0).0, S_UNSUPP);
    // The device is still fine.
    assert_eq!(request(&mut r.d, T_IN, 2047, &[], 512).0, S_OK);
}

#[test]
fn flush_discard_write_zeroes_reach_the_backend() {
    let mut r = rig(1 << 20, BlockConfig::default());
    assert_eq!(request(&mut r.d, T_FLUSH, 0, &[], 0).0, S_OK);
    assert!(r.log.lock().unwrap().flushes >= 1);
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&8u64.to_le_bytes());
    seg[8..12].copy_from_slice(&16u32.to_le_bytes());
    assert_eq!(request(&mut r.d, T_DISCARD, 0, &seg, 0).0, S_OK);
    assert_eq!(r.log.lock().unwrap().discards, vec![(4096, 8192)]);
    seg[0..8].copy_from_slice(&100u64.to_le_bytes());
    seg[12..16].copy_from_slice(&1u32.to_le_bytes()); // unmap hint
    assert_eq!(request(&mut r.d, T_WRITE_ZEROES, 0, &seg, 0).0, S_OK);
    assert_eq!(r.log.lock().unwrap().zeroes, vec![(51200, 8192)]);
    let mut back = vec![1u8; 8192];
    r.file.as_file().read_exact_at(&mut back, 51200).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    // Discard with the unmap flag is not a thing; beyond the end is an error.
    assert_eq!(request(&mut r.d, T_DISCARD, 0, &seg, 0).0, S_UNSUPP);
    seg[0..8].copy_from_slice(&2040u64.to_le_bytes());
    seg[12..16].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(request(&mut r.d, T_DISCARD, 0, &seg, 0).0, S_IOERR);
}

#[test]
fn get_id_returns_the_serial() {
    let cfg = BlockConfig {
        serial: Some("ferro-disk-0".into()),
        ..Default::default()
    };
    let mut r = rig(1 << 16, cfg);
    let (st, len, id) = request(&mut r.d, T_GET_ID, 0, &[], 20);
    assert_eq!(st, S_OK);
    assert_eq!(len, 21);
    assert_eq!(&id[..12], b"ferro-disk-0");
    assert!(id[12..].iter().all(|&b| b == 0));
    assert!(Block::new(
        Box::new(FileDisk::new(tempfile::tempfile().unwrap(), false)),
        BlockConfig {
            serial: Some("x".repeat(21)),
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn read_only_disk_refuses_writes() {
    let cfg = BlockConfig {
        read_only: true,
        ..Default::default()
    };
    let mut r = rig(1 << 16, cfg);
    let feats = r.d.dev.acked_features();
    assert_ne!(feats & feat::RO, 0);
    assert_eq!(feats & feat::DISCARD, 0);
    assert_eq!(request(&mut r.d, T_OUT, 0, &[7; 512], 0).0, S_IOERR);
    let mut seg = [0u8; 16];
    seg[8..12].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(request(&mut r.d, T_WRITE_ZEROES, 0, &seg, 0).0, S_UNSUPP);
    let mut back = vec![0u8; 512];
    r.file.as_file().read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, r.data[..512], "file unchanged");
    assert_eq!(request(&mut r.d, T_IN, 0, &[], 512).0, S_OK);
}

#[test]
fn indirect_descriptors_and_event_idx_work() {
    let mut r = rig(1 << 16, BlockConfig::default());
    let f = r.d.dev.acked_features();
    assert_ne!(f & features::INDIRECT_DESC, 0);
    assert_ne!(f & features::EVENT_IDX, 0);
    // Indirect table: header, 2 data buffers, status.
    let h = r.d.alloc(16);
    r.d.write_bytes(h, &header(T_IN, 1));
    let b1 = r.d.alloc(512);
    let b2 = r.d.alloc(512);
    let st = r.d.alloc(1);
    let table = r.d.alloc(64);
    let ent = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(&addr.to_le_bytes());
        e[8..12].copy_from_slice(&len.to_le_bytes());
        e[12..14].copy_from_slice(&flags.to_le_bytes());
        e[14..].copy_from_slice(&next.to_le_bytes());
        e
    };
    use virtio_devices::testing::{F_INDIRECT, F_NEXT, F_WRITE};
    let mut t = Vec::new();
    t.extend(ent(h, 16, F_NEXT, 1));
    t.extend(ent(b1, 512, F_NEXT | F_WRITE, 2));
    t.extend(ent(b2, 512, F_NEXT | F_WRITE, 3));
    t.extend(ent(st, 1, F_WRITE, 0));
    r.d.write_bytes(table, &t);
    r.d.write_desc(0, 0, table, 64, F_INDIRECT, 0);
    r.d.push_avail(0, 0);
    r.d.notify(0);
    assert_eq!(r.d.wait_used(0, T), Some((0, 1025)));
    assert_eq!(r.d.read_bytes(st, 1)[0], S_OK);
    assert_eq!(r.d.read_bytes(b1, 512), r.data[512..1024]);
    assert_eq!(r.d.read_bytes(b2, 512), r.data[1024..1536]);
}

#[test]
fn a_slow_disk_never_blocks_the_mmio_path() {
    let (file, data) = patterned_file(1 << 16);
    let mut disk = FileDisk::new(file.reopen().unwrap(), false);
    let gate = Gate::closed();
    disk.gate = Some(gate.clone());
    let blk = Block::new(Box::new(disk), BlockConfig::default()).unwrap();
    let mut d = FakeDriver::new(Box::new(blk), 16 << 20);
    d.init(ALL, 64);
    let h = d.alloc(16);
    d.write_bytes(h, &header(T_IN, 0));
    let b = d.alloc(512);
    let st = d.alloc(1);
    d.add_chain(0, &[(h, 16, false), (b, 512, true), (st, 1, true)]);
    let t0 = Instant::now();
    d.notify(0);
    // The worker is now stuck in the backend; the register path is not.
    let deadline = Instant::now() + T;
    while *gate.entered.lock().unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "worker never reached the backend"
        );
        std::thread::yield_now();
    }
    assert_eq!(d.read32(regs::MAGIC), 0x7472_6976);
    d.notify(0);
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(d.used_idx(0), 0, "request still in flight");
    gate.open();
    assert_eq!(d.wait_used(0, T), Some((0, 513)));
    assert_eq!(d.read_bytes(b, 512), data[..512]);
}

#[test]
fn any_layout_header_data_and_status_share_descriptors() {
    let mut r = rig(1 << 16, BlockConfig::default());
    // Header and write payload in one readable descriptor...
    let new = [0x77u8; 512];
    let a = r.d.alloc(16 + 512);
    let mut req = header(T_OUT, 4).to_vec();
    req.extend_from_slice(&new);
    r.d.write_bytes(a, &req);
    let st = r.d.alloc(1);
    r.d.add_chain(0, &[(a, 528, false), (st, 1, true)]);
    r.d.notify(0);
    assert_eq!(r.d.wait_used(0, T), Some((0, 1)));
    assert_eq!(r.d.read_bytes(st, 1)[0], S_OK);
    // ...and read data plus status in one writable descriptor, split oddly.
    let h = r.d.alloc(16);
    r.d.write_bytes(h, &header(T_IN, 4));
    let w1 = r.d.alloc(100);
    let w2 = r.d.alloc(413);
    r.d.add_chain(
        0,
        &[
            (h, 7, false),
            (h + 7, 9, false),
            (w1, 100, true),
            (w2, 413, true),
        ],
    );
    r.d.notify(0);
    let (_, len) = r.d.wait_used(0, T).unwrap();
    assert_eq!(len, 513);
    let mut got = r.d.read_bytes(w1, 100);
    got.extend(r.d.read_bytes(w2, 412));
    assert_eq!(got, new);
    assert_eq!(r.d.read_bytes(w2 + 412, 1)[0], S_OK);
}
