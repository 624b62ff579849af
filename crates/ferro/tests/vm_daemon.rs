//! ferrod with fake VMMs: lifecycle through the CLI, events, restart
//! policies, re-attaching after the daemon dies, malformed requests, auth.

mod vm_util;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vm_util::Daemon;

const T: Duration = Duration::from_secs(20);

fn state(i: &Value) -> &str {
    i["state"].as_str().unwrap_or("")
}

#[test]
fn lifecycle_through_the_cli_with_events() {
    let d = Daemon::fake();
    // The API socket is private.
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Collect events from the start.
    let client = d.client();
    let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
    std::thread::spawn(move || {
        let _ = client.events("", |ev, data| {
            let v: Value = serde_json::from_str(data).unwrap();
            tx.send((ev.to_string(), v["vm"].as_str().unwrap().to_string()))
                .is_ok()
        });
    });
    // The stream is subscribed once the first event arrives; poke until then.
    let deadline = Instant::now() + T;
    let first = loop {
        d.define_toml("probe", "");
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(100)) {
            break e;
        }
        assert!(Instant::now() < deadline);
    };
    assert_eq!(first, ("defined".into(), "probe".into()));
    d.ok(&["undefine", "probe"]);

    let disk = d.dir.path().join("root.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let f = d.dir.path().join("web.toml");
    // Relative disk path: resolved against the file's folder.
    std::fs::write(
        &f,
        "name = \"web\"\ncpus = 2\nmemory = \"256M\"\n[[disks]]\npath = \"root.raw\"\nformat = \"raw\"\n[[nics]]\ntap = \"ftap0\"\n",
    )
    .unwrap();
    let out = d.ok(&["define", f.to_str().unwrap()]);
    assert!(out.contains("Domain 'web' defined"), "{out}");
    let i = d.info("web");
    assert_eq!(i["definition"]["disks"][0]["path"], disk.to_str().unwrap());
    let mac = i["definition"]["nics"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!d.ok(&["list"]).contains("web"));
    assert!(d.ok(&["list", "--all"]).contains("shutoff"));

    d.ok(&["start", "web"]);
    let i = d.info("web");
    assert_eq!(
        (state(&i), i["reason"].as_str().unwrap()),
        ("running", "booted")
    );
    assert!(d.ok(&["list"]).contains("running"));
    // Starting twice is a conflict, with a message.
    let o = d.cli(&["start", "web"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already active"));

    d.ok(&["suspend", "web"]);
    assert_eq!(state(&d.info("web")), "paused");
    d.ok(&["resume", "web"]);
    assert_eq!(state(&d.info("web")), "running");
    d.ok(&["snapshot", "create", "web", "s1"]);
    assert!(d.ok(&["snapshot", "list", "web"]).contains("s1"));
    d.ok(&["snapshot", "revert", "web", "s1"]);
    d.ok(&["snapshot", "delete", "web", "s1"]);
    assert!(!d.ok(&["snapshot", "list", "web"]).contains("s1"));
    assert!(d.ok(&["logs", "web"]).contains("fake-vmm web booted"));

    // Console: the socket the daemon reports is the VMM's.
    let sock = d.info("web")["console_socket"]
        .as_str()
        .unwrap()
        .to_string();
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.write_all(b"hello\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("hello") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }

    // Clone needs a shut-off source.
    assert!(!d.cli(&["clone", "web", "web2"]).status.success());
    let out = d.ok(&["shutdown", "web"]);
    assert!(out.contains("is shut down"), "{out}");
    let i = d.info("web");
    assert_eq!(
        (state(&i), i["reason"].as_str().unwrap()),
        ("shutoff", "shutdown")
    );

    d.ok(&["clone", "web", "web2"]);
    d.ok(&["clone", "web", "web3", "--linked"]);
    let (a, b, c3) = (d.info("web"), d.info("web2"), d.info("web3"));
    assert_ne!(a["uuid"], b["uuid"]);
    assert_ne!(b["uuid"], c3["uuid"]);
    assert_ne!(b["definition"]["nics"][0]["mac"].as_str().unwrap(), mac);
    assert_ne!(
        c3["definition"]["nics"][0]["mac"],
        b["definition"]["nics"][0]["mac"]
    );
    let full = b["definition"]["disks"][0]["path"].as_str().unwrap();
    assert_eq!(std::fs::read(full).unwrap().len(), 1 << 20);
    let linked = c3["definition"]["disks"][0]["path"].as_str().unwrap();
    assert_eq!(c3["definition"]["disks"][0]["format"], "qcow2");
    let info = std::process::Command::new(vm_util::FERRO)
        .args(["img", "info", "--output=json", linked])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["backing-filename"], disk.to_str().unwrap());
    d.ok(&["start", "web3"]);
    d.ok(&["destroy", "web3"]);
    assert_eq!(d.info("web3")["reason"], "destroyed");

    // autostart, edit-free redefinition keeps the identity.
    d.ok(&["autostart", "web", "on"]);
    assert_eq!(d.info("web")["autostart"], true);
    assert_eq!(d.info("web")["uuid"], a["uuid"]);
    assert!(d.ok(&["dump", "web"]).contains("autostart = true"));

    d.ok(&["undefine", "web3", "--remove-disks"]);
    assert!(!std::path::Path::new(linked).exists());
    assert!(disk.exists(), "the source disk of a linked clone is kept");
    assert!(!d.cli(&["info", "web3"]).status.success());

    let mut seen = Vec::new();
    while let Ok((ev, vm)) = rx.recv_timeout(Duration::from_millis(200)) {
        seen.push(format!("{ev}:{vm}"));
    }
    for want in [
        "defined:web",
        "started:web",
        "suspended:web",
        "resumed:web",
        "snapshot-created:web",
        "snapshot-reverted:web",
        "snapshot-deleted:web",
        "stopped:web",
        "defined:web2",
        "stopped:web3",
        "undefined:web3",
    ] {
        assert!(seen.iter().any(|s| s == want), "no {want} in {seen:?}");
    }
}

#[test]
fn restart_policies_with_backoff() {
    let d = Daemon::fake();
    // on-failure:2 with a guest that panics at once: two restarts, then it
    // stays crashed; the restarts are spaced by the doubling back-off.
    d.define_toml(
        "crashy",
        "cmdline = \"fake-crash-after=0.05\"\nrestart = \"on-failure:2\"\n",
    );
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let c = d.client();
    std::thread::spawn(move || {
        let _ = c.events("?vm=crashy", |ev, _| {
            tx.send((ev.to_string(), Instant::now())).is_ok()
        });
    });
    // Subscribed once an event for the VM arrives (a redefinition).
    loop {
        d.define_toml(
            "crashy",
            "cmdline = \"fake-crash-after=0.05\"\nrestart = \"on-failure:2\"\n",
        );
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            break;
        }
    }
    while rx.try_recv().is_ok() {}
    d.ok(&["start", "crashy"]);
    let mut evs = Vec::new();
    while evs.iter().filter(|(e, _)| e == "crashed").count() < 3 {
        evs.push(rx.recv_timeout(T).expect("crash events"));
    }
    let names: Vec<&str> = evs.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        ["started", "crashed", "started", "crashed", "started", "crashed"]
    );
    // Back-off: 100 ms after the first crash, 200 ms after the second.
    assert!(evs[2].1 - evs[1].1 >= Duration::from_millis(100));
    assert!(evs[4].1 - evs[3].1 >= Duration::from_millis(200));
    // It stays down.
    assert!(rx.recv_timeout(Duration::from_millis(800)).is_err());
    let i = d.info("crashy");
    assert_eq!(
        (state(&i), i["reason"].as_str(), i["restarts"].as_u64()),
        ("crashed", Some("panicked"), Some(2))
    );

    // restart = "no": a crash is final.
    d.define_toml("once", "cmdline = \"fake-crash-after=0.05\"\n");
    d.ok(&["start", "once"]);
    let i = d.wait_for("once", T, |i| state(i) == "crashed");
    assert_eq!(i["restarts"], 0);

    // always: survives kill -9 of its VMM.
    d.define_toml("sturdy", "restart = \"always\"\n");
    d.ok(&["start", "sturdy"]);
    let pid = d.info("sturdy")["pid"].as_i64().unwrap();
    // SAFETY: kill(2) of the VMM this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let i = d.wait_for("sturdy", T, |i| {
        state(i) == "running" && i["pid"].as_i64().is_some_and(|p| p != pid)
    });
    assert_eq!(i["restarts"], 1);
    // …but an API stop is not restarted.
    d.ok(&["destroy", "sturdy"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&d.info("sturdy")), "shutoff");

    // A VMM that fails to start: the start call fails with its log.
    d.define_toml("broken", "cmdline = \"fake-fail\"\nrestart = \"always\"\n");
    let o = d.cli(&["start", "broken"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("failing as asked"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&d.info("broken")), "shutoff");

    // Shutdown of a guest without an agent: destroyed after the timeout.
    d.define_toml("deaf", "cmdline = \"fake-no-agent\"\n");
    d.ok(&["start", "deaf"]);
    let out = d.ok(&["shutdown", "deaf", "--timeout", "1"]);
    assert!(out.contains("destroyed"), "{out}");
    assert_eq!(state(&d.info("deaf")), "shutoff");
}

#[test]
fn daemon_restart_reattaches_and_reaps() {
    let mut d = Daemon::fake();
    d.define_toml("keep", "");
    let once = d.dir.path().join("crashed-once");
    d.define_toml(
        "dies",
        &format!(
            "cmdline = \"fake-crash-once={}\"\nrestart = \"on-failure\"\n",
            once.display()
        ),
    );
    d.define_toml("auto", "autostart = true\n");
    d.ok(&["start", "keep"]);
    d.ok(&["suspend", "keep"]);
    d.ok(&["start", "dies"]);
    let keep_pid = d.info("keep")["pid"].as_i64().unwrap();
    let dies_pid = d.info("dies")["pid"].as_i64().unwrap();

    d.kill9();
    // While no daemon watches: "dies" crashes.
    let deadline = Instant::now() + T;
    while ferrod::supervisor::pid_alive(dies_pid as i32) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    d.spawn();
    let i = d.info("keep");
    assert_eq!((state(&i), i["pid"].as_i64()), ("paused", Some(keep_pid)));
    // It is supervised again: resume and destroy work through the daemon.
    d.ok(&["resume", "keep"]);
    // "dies" ended while we were away: its status file says crashed, and
    // on-failure restarts it.
    let i = d.wait_for("dies", T, |i| state(i) == "running");
    assert_ne!(i["pid"].as_i64(), Some(dies_pid));
    assert_eq!(i["restarts"], 1);
    // Autostart runs at the first daemon start of a host boot (the marker
    // lives in the run dir, tmpfs in production): not on this restart…
    assert_eq!(state(&d.info("auto")), "shutoff");
    d.kill9();
    // …but after a "reboot".
    std::fs::remove_file(d.run_dir().join("autostarted")).unwrap();
    d.spawn();
    assert_eq!(state(&d.info("auto")), "running");
    d.ok(&["destroy", "auto"]);
    d.ok(&["destroy", "dies"]);
    d.restart();
    assert_eq!(state(&d.info("auto")), "shutoff");
    assert_eq!(state(&d.info("keep")), "running");

    // A VMM whose domain is gone (undefined behind the daemon's back while
    // it was down) is stopped, not left unsupervised.
    let orphan = d.info("keep");
    d.kill9();
    let db = rusqlite_free_delete(&d, orphan["uuid"].as_str().unwrap());
    assert!(db);
    d.spawn();
    let left = d.vmms();
    assert!(
        left.is_empty(),
        "unsupervised VMMs left: {left:?} (orphan {}, pid {keep_pid}); log: {}",
        orphan["uuid"],
        d.log()
    );
    assert!(!ferrod::supervisor::pid_alive(keep_pid as i32));
}

/// Deletes a definition straight from the database (as a lost record would
/// look), through the daemon's own store code.
fn rusqlite_free_delete(d: &Daemon, uuid: &str) -> bool {
    let st = ferrod::store::Store::open(&d.state.join("ferrod.db")).unwrap();
    st.undefine(&uuid.parse().unwrap()).unwrap()
}

#[test]
fn malformed_requests_get_4xx_with_a_message() {
    let d = Daemon::fake();
    let c = d.client();
    /// (method, path, content type, body, status, part of the message)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/vms",
            Some("application/json"),
            b"{".to_vec(),
            400,
            "EOF",
        ),
        (
            "POST",
            "/v1/vms",
            Some("application/json"),
            b"[1,2]".to_vec(),
            400,
            "invalid type",
        ),
        (
            "POST",
            "/v1/vms",
            Some("application/json"),
            br#"{"name":"a","cpus":"2"}"#.to_vec(),
            400,
            "cpus",
        ),
        (
            "POST",
            "/v1/vms",
            Some("application/json"),
            br#"{"name":"a","gpu":1}"#.to_vec(),
            400,
            "gpu",
        ),
        (
            "POST",
            "/v1/vms",
            Some("application/json"),
            br#"{"name":"a","cpus":99}"#.to_vec(),
            400,
            "cpus",
        ),
        (
            "POST",
            "/v1/vms",
            Some("application/toml"),
            b"name = \"a\"\n[[disks]]\npath = 3\n".to_vec(),
            400,
            "disks[0].path",
        ),
        (
            "POST",
            "/v1/vms",
            Some("application/toml"),
            b"name = = 3".to_vec(),
            400,
            "line 1",
        ),
        ("POST", "/v1/vms", None, vec![0xff, 0xfe, 0], 400, "UTF-8"),
        (
            "POST",
            "/v1/vms",
            Some("application/json"),
            vec![b' '; 2 << 20],
            413,
            "",
        ),
        ("GET", "/v1/vms/nope", None, vec![], 404, "no domain"),
        ("POST", "/v1/vms/nope/start", None, vec![], 404, "no domain"),
        ("GET", "/v1/nothing", None, vec![], 404, "no such endpoint"),
        ("PATCH", "/v1/vms", None, vec![], 405, ""),
        ("GET", "/v1/tasks/abc", None, vec![], 400, ""),
        ("GET", "/v1/tasks/999999", None, vec![], 404, "no task"),
    ];
    for (m, p, ct, body, code, msg) in &cases {
        let r = c.request(m, p, *ct, body).unwrap();
        assert_eq!(r.status, *code, "{m} {p}: {}", r.text());
        assert!(r.text().contains(msg), "{m} {p}: {}", r.text());
    }
    d.define_toml("a", "");
    let bad_bodies: &[(&str, &str, &str)] = &[
        ("/v1/vms/a/start", r#"{"paused":"yes"}"#, "paused"),
        ("/v1/vms/a/start", r#"{"bogus":1}"#, "bogus"),
        ("/v1/vms/a/snapshots", r#"{"name":"../x"}"#, "name"),
        ("/v1/vms/a/clone", r#"{"name":""}"#, "name"),
        ("/v1/vms/a/save", r#"{"path":"rel"}"#, "absolute"),
        (
            "/v1/vms/a/restore",
            r#"{"path":"/nonexistent"}"#,
            "not a file",
        ),
        ("/v1/vms/a/suspend", "", "not running"),
    ];
    for (p, b, msg) in bad_bodies {
        let r = c
            .request("POST", p, Some("application/json"), b.as_bytes())
            .unwrap();
        assert!((400..500).contains(&r.status), "{p} {b}: {}", r.status);
        assert!(r.text().contains(msg), "{p} {b}: {}", r.text());
    }
    let r = c
        .request("PUT", "/v1/vms/a/autostart", Some("application/json"), b"")
        .unwrap();
    assert_eq!(r.status, 400);
    // Still alive and consistent.
    assert_eq!(state(&d.info("a")), "shutoff");

    // The served OpenAPI document is the committed one.
    let served = d.api("GET", "/v1/openapi.json", None).unwrap();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(served, committed);
    // Every documented route is routed (not 404 "no such endpoint" / 405).
    for (method, path, ..) in ferrod::api::ROUTES {
        if *path == "/v1/events" {
            continue;
        }
        let p = path
            .replace("{name}", "a")
            .replace("{snapshot}", "s")
            .replace("{id}", "1");
        let r = c.request(&method.to_uppercase(), &p, None, b"").unwrap();
        assert!(
            r.status != 405 && !r.text().contains("no such endpoint"),
            "{method} {p}: {} {}",
            r.status,
            r.text()
        );
    }
}

#[test]
fn tcp_needs_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, "s3cret\n").unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::with(
        Some(vm_util::fake_vmm()),
        &["--listen-tcp", &addr, "--token-file", tok.to_str().unwrap()],
    );
    let tcp = |token: Option<&str>| ferrod::client::Client {
        endpoint: ferrod::client::Endpoint::Tcp {
            addr: addr.clone(),
            token: token.map(String::from),
        },
    };
    let deadline = Instant::now() + T;
    let r = loop {
        match tcp(None).request("GET", "/v1/vms", None, b"") {
            Ok(r) => break r,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(r.status, 401);
    assert_eq!(
        tcp(Some("wrong"))
            .request("GET", "/v1/vms", None, b"")
            .unwrap()
            .status,
        401
    );
    let v = tcp(Some("s3cret"))
        .call("POST", "/v1/vms", Some(&json!({"name": "t"})))
        .unwrap();
    assert_eq!(v["name"], "t");
    drop(d);
}
