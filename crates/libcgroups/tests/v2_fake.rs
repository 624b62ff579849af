//! The cgroup v2 manager against a fake cgroupfs: a temporary directory
//! laid out like a v2 mount (cgroup.controllers, cgroup.subtree_control),
//! so the resource files it writes and the stats it reads can be checked on
//! any host, including cgroup v1/hybrid ones whose v2 hierarchy has no
//! controllers. What the kernel does with the values is not exercised here
//! (see v2_real.rs for what runs against the real unified hierarchy).

use libcgroups::{Manager, Mode};
use oci_spec::runtime::LinuxResources;
use serde_json::json;
use std::fs;
use std::path::Path;

/// A fake v2 root offering `controllers`, with nothing delegated yet.
fn fake_root(controllers: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("cgroup.controllers"), controllers).unwrap();
    fs::write(t.path().join("cgroup.subtree_control"), "").unwrap();
    t
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn resources(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).unwrap()
}

#[test]
fn create_delegates_controllers_down_to_the_parent_only() {
    let t = fake_root("cpuset cpu io memory hugetlb pids rdma misc\n");
    let m = Manager::v2(t.path(), Path::new("/a/b")).unwrap();
    assert_eq!(m.mode(), Mode::V2);
    m.create().unwrap();
    let leaf = t.path().join("a/b");
    assert!(leaf.is_dir());
    assert_eq!(m.unified_dir(), Some(leaf.as_path()));
    assert_eq!(m.dir("memory"), Some(leaf.as_path()));
    let want = "+cpuset +cpu +io +memory +hugetlb +pids";
    assert_eq!(read(&t.path().join("cgroup.subtree_control")), want);
    assert_eq!(read(&t.path().join("a/cgroup.subtree_control")), want);
    // The leaf holds the processes: v2 forbids controllers delegated below it.
    assert!(!leaf.join("cgroup.subtree_control").exists());
}

#[test]
fn create_writes_only_controllers_not_yet_delegated() {
    let t = fake_root("cpu io memory pids\n");
    // The kernel lists enabled controllers without '+'.
    fs::write(t.path().join("cgroup.subtree_control"), "cpu memory\n").unwrap();
    let m = Manager::v2(t.path(), Path::new("/c")).unwrap();
    m.create().unwrap();
    assert_eq!(read(&t.path().join("cgroup.subtree_control")), "+io +pids");
}

#[test]
fn resources_are_written_with_runcs_conversions() {
    let t = fake_root("cpuset cpu io memory hugetlb pids\n");
    let m = Manager::v2(t.path(), Path::new("ferro/r")).unwrap();
    m.create().unwrap();
    m.apply(&resources(json!({
        "memory": {"limit": 268435456, "swap": 536870912, "reservation": 134217728},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "pids": {"limit": 100},
        "blockIO": {
            "weight": 500,
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 300}]
        },
        "hugepageLimits": [{"pageSize": "2MB", "limit": 1073741824}],
        "unified": {"memory.high": "200000000"}
    })))
    .unwrap();
    let d = t.path().join("ferro/r");
    for (file, want) in [
        ("memory.max", "268435456"),
        // OCI swap is memory+swap; v2 limits swap alone.
        ("memory.swap.max", "268435456"),
        ("memory.low", "134217728"),
        // runc 1.1: 1 + (shares - 2) * 9999 / 262142.
        ("cpu.weight", "39"),
        ("cpu.max", "50000 100000"),
        ("cpuset.cpus", "0-1"),
        ("cpuset.mems", "0"),
        ("pids.max", "100"),
        // 1 + (500 - 10) * 9999 / 990.
        ("io.weight", "4950"),
        // One line per write; the fake file keeps the last.
        ("io.max", "8:16 wiops=300"),
        ("hugetlb.2MB.max", "1073741824"),
        ("memory.high", "200000000"),
    ] {
        assert_eq!(read(&d.join(file)), want, "{file}");
    }
}

#[test]
fn unset_and_unlimited_values_follow_runc() {
    let t = fake_root("cpu memory pids\n");
    let m = Manager::v2(t.path(), Path::new("/u")).unwrap();
    m.create().unwrap();
    let d = t.path().join("u");
    // Quota without period: the kernel keeps the period; -1 means max.
    m.apply(&resources(json!({
        "memory": {"limit": -1},
        "cpu": {"quota": -1},
        "pids": {"limit": 0}
    })))
    .unwrap();
    assert_eq!(read(&d.join("cpu.max")), "max");
    assert_eq!(read(&d.join("memory.max")), "max");
    assert_eq!(read(&d.join("memory.swap.max")), "max");
    assert_eq!(read(&d.join("pids.max")), "max");
    assert!(!d.join("cpu.weight").exists(), "no shares, no cpu.weight");
    assert!(
        !d.join("memory.low").exists(),
        "no reservation, no memory.low"
    );
    m.apply(&resources(json!({"cpu": {"quota": 20000}})))
        .unwrap();
    assert_eq!(read(&d.join("cpu.max")), "20000");
    // Memory and memory+swap equal: no swap at all.
    m.apply(&resources(
        json!({"memory": {"limit": 1000000, "swap": 1000000}}),
    ))
    .unwrap();
    assert_eq!(read(&d.join("memory.swap.max")), "0");
}

#[test]
fn bfq_weight_is_used_when_the_scheduler_offers_it() {
    let t = fake_root("io\n");
    let m = Manager::v2(t.path(), Path::new("/b")).unwrap();
    m.create().unwrap();
    let d = t.path().join("b");
    fs::write(d.join("io.bfq.weight"), "default 100\n").unwrap();
    m.apply(&resources(json!({"blockIO": {"weight": 500}})))
        .unwrap();
    assert_eq!(read(&d.join("io.bfq.weight")), "500");
    assert!(!d.join("io.weight").exists());
}

#[test]
fn bad_limits_give_clear_errors() {
    let t = fake_root("cpu memory\n");
    let m = Manager::v2(t.path(), Path::new("/e")).unwrap();
    m.create().unwrap();
    let err = |v| m.apply(&resources(v)).unwrap_err().to_string();
    let e = err(json!({"memory": {"swap": 1000}}));
    assert!(e.contains("needs a memory.limit"), "{e}");
    let e = err(json!({"memory": {"limit": 2000, "swap": 1000}}));
    assert!(e.contains("below memory.limit"), "{e}");
    let e = err(json!({"cpu": {"realtimeRuntime": 1000}}));
    assert!(e.contains("realtime"), "{e}");
    let e = err(json!({"unified": {"../cgroup.procs": "1"}}));
    assert!(e.contains("not a cgroup file name"), "{e}");
    assert!(Manager::v2(t.path(), Path::new("/x/../../etc")).is_err());
}

#[test]
fn conversions_match_runc_at_the_edges() {
    use libcgroups::{blkio_to_io_weight, shares_to_weight, v2_swap};
    assert_eq!(shares_to_weight(0), None);
    assert_eq!(shares_to_weight(2), Some(1));
    assert_eq!(shares_to_weight(1024), Some(39));
    assert_eq!(shares_to_weight(262_144), Some(10_000));
    // Out of range like the v1 kernel's clamp, never an invalid weight.
    assert_eq!(shares_to_weight(1), Some(1));
    assert_eq!(shares_to_weight(1 << 30), Some(10_000));
    assert_eq!(blkio_to_io_weight(10), 1);
    assert_eq!(blkio_to_io_weight(1000), 10_000);
    assert_eq!(v2_swap(0, 0).unwrap(), None);
    assert_eq!(v2_swap(0, -1).unwrap().as_deref(), Some("max"));
    assert_eq!(v2_swap(-1, 100).unwrap().as_deref(), Some("max"));
    assert_eq!(v2_swap(300, 100).unwrap().as_deref(), Some("200"));
    assert!(v2_swap(100, -1).is_err());
}

#[test]
fn stats_are_read_from_the_v2_files() {
    let t = fake_root("cpu memory pids\n");
    let m = Manager::v2(t.path(), Path::new("/s")).unwrap();
    m.create().unwrap();
    let d = t.path().join("s");
    for (f, v) in [
        ("memory.current", "1000\n"),
        ("memory.peak", "2000\n"),
        ("memory.max", "max\n"),
        (
            "memory.events",
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        ),
        ("pids.current", "5\n"),
        ("pids.max", "max\n"),
        (
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 2\nthrottled_usec 7\n",
        ),
    ] {
        fs::write(d.join(f), v).unwrap();
    }
    let s = m.stats().unwrap();
    assert_eq!(s.memory.usage, 1000);
    assert_eq!(s.memory.max_usage, 2000);
    assert_eq!(s.memory.limit, u64::MAX, "max is unlimited");
    assert_eq!(s.memory.failcnt, 3);
    assert_eq!(s.memory.oom_kill, 1);
    assert_eq!(m.oom_kills(), 1);
    assert_eq!(s.pids.current, 5);
    assert_eq!(s.pids.limit, 0, "max pids is reported as 0 (unlimited)");
    assert_eq!(s.cpu.usage_total, 1_500_000);
    assert_eq!(s.cpu.usage_user, 1_000_000);
    assert_eq!(s.cpu.usage_kernel, 500_000);
    assert_eq!(s.cpu.throttled_periods, 2);
    fs::write(d.join("memory.max"), "4096\n").unwrap();
    fs::write(d.join("pids.max"), "64\n").unwrap();
    let s = m.stats().unwrap();
    assert_eq!((s.memory.limit, s.pids.limit), (4096, 64));
}

#[test]
fn freeze_writes_cgroup_freeze_and_reads_cgroup_events() {
    let t = fake_root("");
    let m = Manager::v2(t.path(), Path::new("/f")).unwrap();
    m.create().unwrap();
    let d = t.path().join("f");
    m.freeze(true).unwrap();
    assert_eq!(read(&d.join("cgroup.freeze")), "1");
    fs::write(d.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
    assert!(m.is_frozen());
    m.freeze(false).unwrap();
    assert_eq!(read(&d.join("cgroup.freeze")), "0");
    fs::write(d.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    assert!(!m.is_frozen());
}

#[test]
fn device_rules_outside_cgroup2_are_refused_clearly() {
    let t = fake_root("");
    let m = Manager::v2(t.path(), Path::new("/d")).unwrap();
    m.create().unwrap();
    let e = m
        .apply(&resources(
            json!({"devices": [{"allow": false, "access": "rwm"}]}),
        ))
        .unwrap_err()
        .to_string();
    assert!(e.contains("need a cgroup2 directory"), "{e}");
    let e = m
        .apply(&resources(json!({"devices": [{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwz"}]})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("access 'z'"), "{e}");
}
