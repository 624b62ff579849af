//! The crash test: `ferro img __crash-writer` runs a seeded random
//! write+flush workload on a qcow2 image and reports each completed flush
//! (log file fsync'd, then a line on stdout). We SIGKILL it at a seeded
//! random moment, 60 times over several image layouts, then require:
//! `qemu-img check` reports no corruption (exit 0, or 3 for leaks only), and
//! every write covered by a logged flush reads back (via qemu-img), except
//! bytes a later, possibly in-flight write also covers.
//!
//! Synchronization is by the child's own progress (we read its stdout until
//! it has reported a seeded number of flushes); there are no sleeps.

mod img_util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use img_util::*;
use imgtool::crashtest::{expected_image, Rng};

const RUNS: u64 = 60;
const SIZE: u64 = 8 << 20;

#[test]
fn kill_9_during_writes_loses_no_flushed_data() {
    let layouts = [
        "cluster_size=65536",
        "cluster_size=4096",
        "cluster_size=512,refcount_bits=1",
        "extended_l2=on",
        "compat=0.10",
        "refcount_bits=64,cluster_size=2M",
    ];
    let mut rng = Rng(0x5EED_CAFE);
    let d = tmp();
    let mut summary = Vec::new();
    for run in 0..RUNS {
        let seed = rng.next_u64();
        let layout = layouts[(run as usize) % layouts.len()];
        let img = p(d.path(), &format!("crash{run}.qcow2"));
        let log = p(d.path(), &format!("crash{run}.log"));
        let _ = std::fs::remove_file(&log);
        ok(qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            layout,
            &img,
            &SIZE.to_string(),
        ]));
        let mut child = Command::new(ferro_bin())
            .args(["img", "__crash-writer", &img, &seed.to_string(), &log])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn writer");
        // Kill after a seeded number of reported flushes (1..=40): the child
        // is then somewhere in its next batch of writes, or in a flush.
        let target = 1 + rng.below(40);
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut seen = 0;
        while seen < target {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("flushed ") => seen += 1,
                Some(Ok(_)) => {}
                _ => {
                    let out = child.wait_with_output().expect("wait");
                    panic!(
                        "run {run} (seed {seed}, {layout}): writer ended early: {}",
                        stderr(&out)
                    );
                }
            }
        }
        child.kill().expect("kill -9");
        let status = child.wait().expect("reap");
        assert!(
            !status.success(),
            "run {run}: the writer should have died from SIGKILL"
        );

        let (c, text) = qemu_check(&img);
        assert!(
            c == 0 || c == 3,
            "run {run} (seed {seed}, {layout}): qemu-img check exit {c}:\n{text}"
        );
        let flushed: u64 = std::fs::read_to_string(&log)
            .expect("log")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .next_back()
            .expect("at least one logged flush");
        let got = raw_by_qemu(&img, d.path());
        assert_eq!(got.len() as u64, SIZE);
        let want = expected_image(seed, SIZE, flushed);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if let Some(w) = w {
                assert_eq!(
                    g, w,
                    "run {run} (seed {seed}, {layout}): byte {i} lost after {flushed} flushed writes"
                );
            }
        }
        summary.push(format!(
            "run {run}: seed {seed} {layout} flushed={flushed} check={c}"
        ));
        let _ = std::fs::remove_file(&img);
    }
    eprintln!("{}", summary.join("\n"));
}
