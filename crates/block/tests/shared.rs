//! `SharedImage` from several threads: interleaved 4 KiB blocks (so
//! threads race on the same clusters, fresh allocations included), reads,
//! and zeroing; the result equals the reference and passes qemu-img check.

mod common;
use block::{create, CreateOptions, Format, Image, OpenOptions, SharedImage};
use common::*;
use rand::{Rng, SeedableRng};

fn run(opts: CreateOptions, direct: bool, seed: u64) {
    let dir = tempdir();
    let path = dir.path().join("s.qcow2");
    let size: u64 = 16 << 20;
    create(
        &path,
        &CreateOptions {
            format: Some(Format::Qcow2),
            size: Some(size),
            ..opts
        },
    )
    .unwrap();
    let img = Image::open(
        &path,
        &OpenOptions {
            direct,
            ..Default::default()
        },
    )
    .unwrap();
    let shared = SharedImage::new(img).unwrap();
    const T: u64 = 4;
    let blocks = size / 4096;
    let refs: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..T)
            .map(|t| {
                let shared = &shared;
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + t);
                    let mut mine = vec![0u8; size as usize];
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..1500 {
                        let b = rng.gen_range(0..blocks / T) * T + t;
                        let off = b * 4096;
                        match rng.gen_range(0..10) {
                            0..=6 => {
                                rng.fill(&mut buf[..]);
                                shared.write_at(&buf, off).unwrap();
                                mine[off as usize..off as usize + 4096].copy_from_slice(&buf);
                            }
                            7 => {
                                shared.write_zeroes(off, 4096).unwrap();
                                mine[off as usize..off as usize + 4096].fill(0);
                            }
                            _ => {
                                shared.read_at(&mut buf, off).unwrap();
                                assert!(
                                    buf == mine[off as usize..off as usize + 4096],
                                    "thread {t} read back"
                                );
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    shared.flush().unwrap();
    let mut img = shared.into_inner();
    let got = read_all(&mut img);
    drop(img);
    let mut want = vec![0u8; size as usize];
    for b in 0..blocks {
        let t = (b % T) as usize;
        let r = (b * 4096) as usize..(b * 4096 + 4096) as usize;
        want[r.clone()].copy_from_slice(&refs[t][r]);
    }
    assert!(got == want, "seed {seed}: shared writes lost");
    assert_qemu_check_clean(&path);
    assert_qemu_equal(dir.path(), &path, &want);
}

#[test]
fn threads_default() {
    run(CreateOptions::default(), false, seed_from_env(1));
}

#[test]
fn threads_direct_small_clusters() {
    // O_DIRECT where the filesystem allows it (falls back otherwise).
    run(
        CreateOptions {
            cluster_size: Some(8192),
            ..Default::default()
        },
        true,
        seed_from_env(2),
    );
}

#[test]
fn threads_extended_l2() {
    run(
        CreateOptions {
            extended_l2: true,
            ..Default::default()
        },
        false,
        seed_from_env(3),
    );
}
