//! ferrod reliability with fake VMMs: `kill -9` of the daemon at random
//! points during define/start/snapshot/clone (50 rounds, seeds printed and
//! replayable with FERROD_SEED), and 100 concurrent API clients.

mod vm_util;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use vm_util::Daemon;

/// After a daemon restart: every definition is whole (parses, validates and
/// equals one we sent), and every VMM in the run dir is one the daemon
/// reports as running with that pid.
fn check_consistent(d: &Daemon, sent: &HashMap<String, Vec<Value>>, ctx: &str) {
    let st = ferrod::store::Store::open(&d.state.join("ferrod.db")).unwrap();
    assert_eq!(st.integrity_check().unwrap(), "ok", "{ctx}");
    drop(st);
    let list = d.api("GET", "/v1/vms?all=true", None).unwrap();
    for vm in list.as_array().unwrap() {
        let name = vm["name"].as_str().unwrap();
        let info = d.info(name);
        let def: ferrod::spec::VmSpec = serde_json::from_value(info["definition"].clone()).unwrap();
        def.validate().unwrap();
        if let Some(versions) = sent.get(name) {
            // One of the versions we sent, whole.
            let got = &info["definition"];
            assert!(
                versions
                    .iter()
                    .any(|w| w["memory"] == got["memory"] && w["cpus"] == got["cpus"]),
                "{ctx} {name}: {got} is none of {versions:?}"
            );
        } else {
            assert!(name.starts_with("clone"), "{ctx}: unknown VM {name}");
        }
    }
    let by_uuid: HashMap<String, Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["uuid"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    for (uuid, pid) in d.vmms() {
        let v = by_uuid
            .get(&uuid.to_string())
            .unwrap_or_else(|| panic!("{ctx}: VMM {pid} of unknown VM {uuid} left running"));
        assert!(
            matches!(v["state"].as_str(), Some("running" | "paused" | "shutdown"))
                && v["pid"].as_i64() == Some(pid as i64),
            "{ctx}: VMM {pid} not supervised: {v}; log: {}",
            d.log()
        );
    }
}

#[test]
fn kill9_of_the_daemon_at_random_points() {
    let base: u64 = std::env::var("FERROD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill -9 storm: FERROD_SEED={base}");
    let mut d = Daemon::fake();
    let mut sent: HashMap<String, Vec<Value>> = HashMap::new();
    let disk = d.dir.path().join("base.raw");
    std::fs::write(&disk, vec![0u8; 256 << 10]).unwrap();
    for round in 0..50u64 {
        let seed = base.wrapping_add(round);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let name = format!("vm{}", round % 6);
        let spec = json!({
            "name": name,
            "cpus": rng.gen_range(1..=4),
            "memory": format!("{}M", 64 * rng.gen_range(1..=8)),
            "disks": [{"path": disk, "format": "raw", "readonly": true}],
            "restart": "on-failure",
        });
        // A worker fires a burst of operations; the daemon dies under it.
        let c = d.client();
        let spec2 = spec.clone();
        let op = rng.gen_range(0..4);
        let worker = std::thread::spawn(move || {
            let n = spec2["name"].as_str().unwrap().to_string();
            let _ = c.call("POST", "/v1/vms", Some(&spec2));
            match op {
                0 => {
                    let _ = c.call_wait("POST", &format!("/v1/vms/{n}/start"), None);
                }
                1 => {
                    let _ = c.call_wait("POST", &format!("/v1/vms/{n}/start"), None);
                    let _ = c.call_wait(
                        "POST",
                        &format!("/v1/vms/{n}/snapshots"),
                        Some(&json!({"name": "s"})),
                    );
                }
                2 => {
                    let _ = c.call("POST", &format!("/v1/vms/{n}/destroy"), None);
                    let _ = c.call_wait(
                        "POST",
                        &format!("/v1/vms/{n}/clone"),
                        Some(&json!({"name": format!("clone{round}"), "linked": false})),
                    );
                }
                _ => {
                    let _ = c.call("POST", &format!("/v1/vms/{n}/destroy"), None);
                    let _ = c.call("DELETE", &format!("/v1/vms/{n}"), None);
                }
            }
        });
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..40_000)));
        d.kill9();
        worker.join().unwrap();
        // The define may or may not have committed; both are whole.
        sent.entry(name.clone()).or_default().push(spec);
        d.spawn();
        check_consistent(&d, &sent, &format!("round {round} (seed {seed}, op {op})"));
    }
}

#[test]
fn hundred_concurrent_clients() {
    let d = Daemon::fake();
    for i in 0..5 {
        d.define_toml(&format!("c{i}"), "");
        d.ok(&["start", &format!("c{i}")]);
    }
    let lat = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..100)
        .map(|t| {
            let c = d.client();
            let (lat, errors) = (lat.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for k in 0..20 {
                    let vm = format!("c{}", rng.gen_range(0..5));
                    let (m, p, b): (&str, String, Option<Value>) = match rng.gen_range(0..7) {
                        0 => ("GET", "/v1/vms?all=true".into(), None),
                        1 => ("GET", format!("/v1/vms/{vm}"), None),
                        2 => ("POST", format!("/v1/vms/{vm}/suspend"), None),
                        3 => ("POST", format!("/v1/vms/{vm}/resume"), None),
                        4 => (
                            "POST",
                            "/v1/vms".into(),
                            Some(json!({"name": format!("t{t}-{k}"), "memory": "64M"})),
                        ),
                        5 => ("GET", format!("/v1/vms/{vm}/snapshots"), None),
                        _ => ("DELETE", format!("/v1/vms/t{t}-{}", k.max(1) - 1), None),
                    };
                    let s = Instant::now();
                    let body = b.map(|b| b.to_string()).unwrap_or_default();
                    let r = c.request(m, &p, Some("application/json"), body.as_bytes());
                    lat.lock().unwrap().push(s.elapsed());
                    match r {
                        // 404: deleting a VM not defined (yet); 409: suspend
                        // of a paused VM and the like.
                        Ok(r) if r.status < 300 || r.status == 404 || r.status == 409 => {}
                        Ok(r) => errors.lock().unwrap().push(format!(
                            "{m} {p}: {} {}",
                            r.status,
                            r.text()
                        )),
                        Err(e) => errors.lock().unwrap().push(format!("{m} {p}: {e}")),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let wall = t0.elapsed();
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} failures: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let mut l = lat.lock().unwrap().clone();
    assert_eq!(l.len(), 2000, "every request answered");
    l.sort();
    let p = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    eprintln!(
        "100 clients x 20 mixed requests: p50 {:?}, p99 {:?}, max {:?}, {:.0} req/s",
        p(0.5),
        p(0.99),
        l[l.len() - 1],
        l.len() as f64 / wall.as_secs_f64()
    );
    // Per-VM serialization: the daemon's state of each VM is the VMM's.
    for i in 0..5 {
        let name = format!("c{i}");
        let info = d.info(&name);
        let sock = std::path::Path::new(info["console_socket"].as_str().unwrap())
            .with_file_name("control.sock");
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        use std::io::{BufRead, Write};
        s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["result"]["state"], info["state"], "{name}");
    }
}
