//! virtio-blk on the real image engine (`block::open`): a qcow2 made by
//! qemu-img is written through the device and stays valid for qemu-img;
//! discard reaches the qcow2 layer (the cluster stops being data); a raw
//! file opened read-only refuses writes.

use std::process::Command;
use std::time::Duration;

use virtio_devices::block::{consts::*, Block, BlockConfig};
use virtio_devices::testing::FakeDriver;

const T: Duration = Duration::from_secs(20);

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is required (scripts/deps test installs qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn request(
    d: &mut FakeDriver,
    t: u32,
    sector: u64,
    payload: &[u8],
    data_len: u32,
) -> (u8, Vec<u8>) {
    d.reset_alloc();
    let h = d.alloc(16);
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&t.to_le_bytes());
    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
    d.write_bytes(h, &hdr);
    let mut bufs = vec![(h, 16, false)];
    if !payload.is_empty() {
        let p = d.alloc(payload.len() as u64);
        d.write_bytes(p, payload);
        bufs.push((p, payload.len() as u32, false));
    }
    let data = d.alloc(data_len.max(1) as u64);
    if data_len > 0 {
        bufs.push((data, data_len, true));
    }
    let st = d.alloc(1);
    d.write_bytes(st, &[0xff]);
    bufs.push((st, 1, true));
    d.add_chain(0, &bufs);
    d.notify(0);
    d.wait_used(0, T).expect("request completes");
    (
        d.read_bytes(st, 1)[0],
        d.read_bytes(data, data_len as usize),
    )
}

fn device(path: &std::path::Path, read_only: bool) -> FakeDriver {
    let backend = block::open(
        path,
        &block::OpenOptions {
            read_only,
            ..Default::default()
        },
    )
    .unwrap();
    let blk = Block::new(
        backend,
        BlockConfig {
            read_only,
            ..Default::default()
        },
    )
    .unwrap();
    let mut d = FakeDriver::new(Box::new(blk), 16 << 20);
    d.init(u64::MAX, 64);
    d
}

#[test]
fn qcow2_written_through_the_device_stays_valid_and_discard_deallocates() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    let img_s = img.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", img_s, "4M"]);
    let pattern: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i * 31 + i / 4096) as u8)
        .collect();
    {
        let mut d = device(&img, false);
        // 256 KiB at 1 MiB: four 64 KiB clusters.
        assert_eq!(request(&mut d, T_OUT, 2048, &pattern, 0).0, S_OK);
        assert_eq!(request(&mut d, T_FLUSH, 0, &[], 0).0, S_OK);
        let (st, back) = request(&mut d, T_IN, 2048, &[], pattern.len() as u32);
        assert_eq!(st, S_OK);
        assert_eq!(back, pattern);
        // Discard the second cluster (64 KiB at 1 MiB + 64 KiB).
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&(2048u64 + 128).to_le_bytes());
        seg[8..12].copy_from_slice(&128u32.to_le_bytes());
        assert_eq!(request(&mut d, T_DISCARD, 0, &seg, 0).0, S_OK);
        assert_eq!(request(&mut d, T_FLUSH, 0, &[], 0).0, S_OK);
        let (_, z) = request(&mut d, T_IN, 2048 + 128, &[], 65536);
        assert!(z.iter().all(|&b| b == 0), "discarded cluster reads zero");
    } // device dropped: worker stopped, image flushed and closed
    qemu_img(&["check", "-q", img_s]);
    let map = qemu_img(&["map", "--output=json", img_s]);
    let line = map
        .lines()
        .find(|l| l.contains("\"start\": 1114112"))
        .unwrap_or_else(|| panic!("no extent at 1 MiB + 64 KiB:\n{map}"));
    assert!(
        line.contains("\"data\": false"),
        "discard did not reach qcow2:\n{map}"
    );
    let raw = dir.path().join("out.raw");
    qemu_img(&["convert", "-O", "raw", img_s, raw.to_str().unwrap()]);
    let all = std::fs::read(&raw).unwrap();
    assert_eq!(all[1 << 20..(1 << 20) + 65536], pattern[..65536]);
    assert!(all[(1 << 20) + 65536..(1 << 20) + 131072]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(
        all[(1 << 20) + 131072..(1 << 20) + 262144],
        pattern[131072..]
    );
}

#[test]
fn read_only_raw_image_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.raw");
    std::fs::write(&img, vec![0x42u8; 1 << 20]).unwrap();
    let mut d = device(&img, true);
    assert_eq!(request(&mut d, T_OUT, 0, &[0u8; 512], 0).0, S_IOERR);
    let (st, back) = request(&mut d, T_IN, 0, &[], 512);
    assert_eq!(st, S_OK);
    assert!(back.iter().all(|&b| b == 0x42));
    drop(d);
    assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0x42));
}
