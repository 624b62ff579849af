//! Parallel 4 KiB writes or reads through `SharedImage`, issued like
//! `qemu-img bench` (offset i*step modulo the size), for comparing with
//! `qemu-img bench -d DEPTH -t none` on the same image:
//!
//!   cargo run --release -p block --example shared_bench -- IMAGE COUNT STEP THREADS [w] [direct]
use std::sync::atomic::{AtomicU64, Ordering};

use block::{Image, OpenOptions, SharedImage};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: shared_bench IMAGE COUNT STEP THREADS [w] [direct]");
        std::process::exit(1);
    }
    let count: u64 = a[2].parse().unwrap();
    let step: u64 = a[3].parse().unwrap();
    let threads: usize = a[4].parse().unwrap();
    let write = a.iter().any(|x| x == "w");
    let direct = a.iter().any(|x| x == "direct");
    let img = Image::open(
        std::path::Path::new(&a[1]),
        &OpenOptions {
            read_only: !write,
            direct,
            ..Default::default()
        },
    )
    .unwrap();
    let s = SharedImage::new(img).unwrap();
    let size = s.size();
    let next = AtomicU64::new(0);
    let t0 = std::time::Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                let mut buf = vec![0xa5u8; 4096];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let off = ((i as u128 * step as u128) % size as u128) as u64;
                    if write {
                        s.write_at(&buf, off).unwrap();
                    } else {
                        s.read_at(&mut buf, off).unwrap();
                    }
                }
            });
        }
    });
    s.flush().unwrap();
    println!(
        "Run completed in {:.3} seconds.",
        t0.elapsed().as_secs_f64()
    );
}
