//! Images written by this crate must pass `qemu-img check` and equal the
//! in-memory reference under `qemu-img compare`, after seeded random
//! write/discard/zero/snapshot/compressed workloads (the seed is printed;
//! set BLOCK_TEST_SEED to replay).

mod common;
use block::{create, Compat, CompressionType, CreateOptions, Format};
use common::*;

fn run(name: &str, opts: CreateOptions, size: u64, w: Workload, seed: u64) {
    run_with(name, opts, size, w, seed, &block::OpenOptions::default())
}

fn run_with(
    name: &str,
    opts: CreateOptions,
    size: u64,
    w: Workload,
    seed: u64,
    open: &block::OpenOptions,
) {
    let dir = tempdir();
    let img = dir.path().join(format!("{name}.qcow2"));
    create(
        &img,
        &CreateOptions {
            format: Some(Format::Qcow2),
            size: Some(size),
            ..opts
        },
    )
    .unwrap();
    assert_qemu_check_clean(&img);
    let seed = seed_from_env(seed);
    let reference = run_workload_with(&img, seed, w, vec![0u8; size as usize], open);
    assert_qemu_check_clean(&img);
    assert_qemu_equal(dir.path(), &img, &reference);
}

const W: Workload = Workload {
    ops: 300,
    max_len: 256 << 10,
    snapshots: true,
    compressed: true,
    align: 512,
};

#[test]
fn default_64k() {
    run("default", CreateOptions::default(), 32 << 20, W, 1);
}

#[test]
fn cluster_512() {
    let o = CreateOptions {
        cluster_size: Some(512),
        ..Default::default()
    };
    run(
        "c512",
        o,
        4 << 20,
        Workload {
            max_len: 16 << 10,
            ..W
        },
        2,
    );
}

#[test]
fn cluster_2m() {
    let o = CreateOptions {
        cluster_size: Some(2 << 20),
        ..Default::default()
    };
    run(
        "c2m",
        o,
        64 << 20,
        Workload {
            ops: 120,
            max_len: 3 << 20,
            ..W
        },
        3,
    );
}

#[test]
fn refcount_bits_1() {
    // 1-bit refcounts cannot share clusters: no snapshots, no compression
    // (qemu refuses those too).
    let o = CreateOptions {
        refcount_bits: Some(1),
        ..Default::default()
    };
    run(
        "rc1",
        o,
        16 << 20,
        Workload {
            snapshots: false,
            compressed: false,
            ..W
        },
        4,
    );
}

#[test]
fn refcount_bits_64() {
    let o = CreateOptions {
        refcount_bits: Some(64),
        cluster_size: Some(4096),
        ..Default::default()
    };
    run(
        "rc64",
        o,
        16 << 20,
        Workload {
            max_len: 64 << 10,
            ..W
        },
        5,
    );
}

#[test]
fn v2() {
    let o = CreateOptions {
        compat: Some(Compat::V2),
        ..Default::default()
    };
    run("v2", o, 16 << 20, W, 6);
}

#[test]
fn extended_l2() {
    let o = CreateOptions {
        extended_l2: true,
        cluster_size: Some(32768),
        ..Default::default()
    };
    run("extl2", o, 16 << 20, W, 7);
}

#[test]
fn lazy_refcounts() {
    let o = CreateOptions {
        lazy_refcounts: true,
        ..Default::default()
    };
    run("lazy", o, 16 << 20, W, 8);
}

#[test]
fn zstd_compressed() {
    let o = CreateOptions {
        compression_type: Some(CompressionType::Zstd),
        ..Default::default()
    };
    run("zstd", o, 16 << 20, W, 9);
}

#[test]
fn tiny_caches_evict_in_order() {
    // 4 L2 tables and 4 refcount blocks of 512 bytes for a 4 MiB disk
    // (128 L2 tables): every path that writes back a dirty victim runs.
    let o = CreateOptions {
        cluster_size: Some(512),
        ..Default::default()
    };
    let open = block::OpenOptions {
        l2_cache_size: Some(16 * 512),
        ..Default::default()
    };
    run_with(
        "tiny",
        o,
        4 << 20,
        Workload {
            max_len: 16 << 10,
            ..W
        },
        10,
        &open,
    );
}
