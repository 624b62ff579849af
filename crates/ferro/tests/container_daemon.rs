//! Containers under ferrod, as root with the default runtime (`ferro oci`):
//! the REST API, restart policies applied by the daemon when a monitor dies,
//! containers outliving a killed daemon and supervised by the next one,
//! dockerd's boot rules for `always` / `unless-stopped`, the CLI seeing the
//! same containers, malformed requests.

mod container_util;
mod vm_util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vm_util::{Daemon, FERRO};

const T: Duration = Duration::from_secs(30);

/// `ferro container --root STATE ARGS` (no daemon involved).
fn cli(d: &Daemon, args: &[&str]) -> Output {
    cli_at(&d.state, args)
}

fn cli_at(root: &Path, args: &[&str]) -> Output {
    Command::new(FERRO)
        .arg("container")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn cli_ok(d: &Daemon, args: &[&str]) -> String {
    let o = cli(d, args);
    assert!(
        o.status.success(),
        "ferro container {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn inspect(d: &Daemon, name: &str) -> Value {
    d.api("GET", &format!("/v1/containers/{name}"), None)
        .unwrap()
}

fn wait_for(d: &Daemon, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let v = inspect(d, name);
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: timed out waiting for {what}; last: {v:#}\ndaemon log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn st(v: &Value) -> (&str, i64, i64, i64) {
    (
        v["state"]["status"].as_str().unwrap_or(""),
        v["state"]["restart_count"].as_i64().unwrap_or(-1),
        v["state"]["monitor_pid"].as_i64().unwrap_or(0),
        v["state"]["pid"].as_i64().unwrap_or(0),
    )
}

fn kill9(pid: i64) {
    assert!(pid > 0);
    // SAFETY: kill(2) of a monitor or container process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

fn alive(pid: i64) -> bool {
    ferrod::supervisor::pid_alive(pid as i32)
}

/// kill -9 of the monitor, then of the container (a host-side crash).
fn crash(v: &Value) {
    let (_, _, mon, pid) = st(v);
    kill9(mon);
    kill9(pid);
    // SIGKILL lands asynchronously.
    let deadline = Instant::now() + T;
    while alive(mon) || alive(pid) {
        assert!(Instant::now() < deadline, "{mon} or {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run(d: &Daemon, name: &str, restart: &str, cmd: &[&str]) -> Value {
    let body = json!({"image": "busybox", "name": name, "restart": restart,
        "network": "none", "cmd": cmd, "memory": "64m"});
    let r = d
        .client()
        .request(
            "POST",
            "/v1/containers",
            Some("application/json"),
            body.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json().unwrap()
}

fn logs(d: &Daemon, q: &str) -> String {
    let r = d
        .client()
        .request("GET", &format!("/v1/containers/web/logs{q}"), None, b"")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// Waits until `web` has logged `n` lines of "up" (one per start; the
/// output lands a moment after the start is recorded).
fn wait_logs(d: &Daemon, n: usize) {
    let deadline = Instant::now() + T;
    while logs(d, "") != "up\n".repeat(n) {
        assert!(
            Instant::now() < deadline,
            "logs: {:?}\n{:#}\n{}",
            logs(d, ""),
            inspect(d, "web"),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn running_ids(d: &Daemon, all: bool) -> Vec<String> {
    let q = if all { "?all=true" } else { "" };
    let v = d.api("GET", &format!("/v1/containers{q}"), None).unwrap();
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap()[..12].to_string())
        .collect();
    ids.sort();
    ids
}

fn cli_ids(d: &Daemon, all: bool) -> Vec<String> {
    let out = cli_ok(d, if all { &["ps", "-aq"] } else { &["ps", "-q"] });
    let mut ids: Vec<String> = out.split_whitespace().map(str::to_string).collect();
    ids.sort();
    ids
}

/// Removes every container (unmounts, runtime state) before the daemon and
/// the state dir go.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in
            String::from_utf8_lossy(&cli_at(&self.0, &["ps", "-aq"]).stdout).split_whitespace()
        {
            let _ = cli_at(&self.0, &["rm", "-f", id]);
        }
    }
}

#[test]
fn containers_supervised_by_ferrod() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "container tests run as root");
    let mut d = Daemon::with(None, &[]);
    let _c = Cleanup(d.state.clone());
    let archive = d.dir.path().join("bb.tar");
    std::fs::write(
        &archive,
        container_util::oci_archive("busybox:latest", &[container_util::busybox_layer()], false),
    )
    .unwrap();
    cli_ok(&d, &["load", "-i", archive.to_str().unwrap()]);

    // run -d through the API.
    let v = run(
        &d,
        "web",
        "always",
        &["sh", "-c", "echo up; exec sleep 1000"],
    );
    let (s, n, mon, pid) = st(&v);
    assert_eq!((s, n), ("running", 0), "{v:#}");
    assert!(alive(mon) && alive(pid));
    assert_eq!(v["config"]["memory"], 64 << 20);
    assert_eq!(v["config"]["restart"], "always");
    // The CLI, without the daemon, sees the same container.
    assert_eq!(cli_ids(&d, false), running_ids(&d, false));
    assert!(cli_ok(&d, &["ps"]).contains("web"));

    // The container dies, its monitor lives: the monitor restarts it, alone.
    kill9(pid);
    let v = wait_for(&d, "web", "the monitor's restart", |v| {
        let (s, n, _, p) = st(v);
        s == "running" && n == 1 && p != pid
    });
    assert_eq!(st(&v).2, mon, "the same monitor restarted it");
    // Output a monitor has not logged yet dies with it: let it land first.
    wait_logs(&d, 2);

    // Monitor and container killed: ferrod applies the policy.
    crash(&v);
    let v = wait_for(&d, "web", "ferrod's restart", |v| {
        let (s, n, m, _) = st(v);
        s == "running" && n == 2 && m != mon && alive(m)
    });
    let mon = st(&v).2;
    assert!(d.log().contains("container monitor died"), "{}", d.log());
    // One line per start.
    wait_logs(&d, 3);
    assert_eq!(logs(&d, "?tail=1"), "up\n");

    // kill -9 of ferrod: the container keeps running; the next daemon
    // lists it as it is and supervises it.
    d.kill9();
    assert!(alive(mon));
    d.spawn();
    let v = inspect(&d, "web");
    assert_eq!(st(&v).0, "running");
    assert_eq!((st(&v).1, st(&v).2), (2, mon), "not restarted again: {v:#}");
    assert_eq!(running_ids(&d, false), cli_ids(&d, false));
    crash(&v);
    let v = wait_for(&d, "web", "the new daemon's restart", |v| {
        let (s, n, m, _) = st(v);
        s == "running" && n == 3 && m != mon && alive(m)
    });

    // While no daemon runs: `web` and a `no`-policy container crash; the
    // user stops an `unless-stopped` and an `always` container.
    let plain = run(&d, "plain", "no", &["sleep", "1000"]);
    run(&d, "us", "unless-stopped", &["sleep", "1000"]);
    run(&d, "al", "always", &["sleep", "1000"]);
    let r = d
        .client()
        .request(
            "POST",
            "/v1/containers/us/stop",
            Some("application/json"),
            br#"{"timeout":1}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(st(&r.json().unwrap()).0, "exited");
    cli_ok(&d, &["stop", "-t", "1", "al"]);
    d.kill9();
    crash(&v);
    crash(&plain);
    // The CLI notices the dead monitors on its own.
    let ps = cli_ok(&d, &["ps", "-a"]);
    assert!(!ps.contains("Up"), "{ps}");
    d.spawn();
    // Settled before the API answered: dockerd's rules at boot.
    let v = inspect(&d, "web");
    assert_eq!((st(&v).0, st(&v).1), ("running", 4), "{v:#}");
    let v = inspect(&d, "plain");
    assert_eq!(st(&v).0, "exited");
    assert!(
        v["state"]["error"]
            .as_str()
            .unwrap()
            .contains("monitor (pid"),
        "{v:#}"
    );
    assert_eq!(
        st(&inspect(&d, "al")).0,
        "running",
        "always: started at boot"
    );
    assert_eq!(
        st(&inspect(&d, "us")).0,
        "exited",
        "unless-stopped, stopped by the user"
    );
    assert_eq!(running_ids(&d, true), cli_ids(&d, true));
    assert_eq!(running_ids(&d, false), cli_ids(&d, false));

    // The rest of the API: kill, start, restart, remove.
    let r = d
        .client()
        .request("POST", "/v1/containers/plain/start", None, b"")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = d
        .client()
        .request(
            "POST",
            "/v1/containers/plain/kill",
            Some("application/json"),
            br#"{"signal":"KILL"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = wait_for(&d, "plain", "the kill", |v| st(v).0 == "exited");
    assert_eq!(v["state"]["exit_code"], 137);
    let before = st(&inspect(&d, "al")).2;
    let v = d
        .api(
            "POST",
            "/v1/containers/al/restart",
            Some(&json!({"timeout": 1})),
        )
        .unwrap();
    assert_eq!(st(&v).0, "running");
    assert_ne!(st(&v).2, before);
    let r = d
        .client()
        .request("DELETE", "/v1/containers/al", None, b"")
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    let r = d
        .client()
        .request("DELETE", "/v1/containers/al?force=true", None, b"")
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(!cli_ok(&d, &["ps", "-a"]).contains(" al\n"));

    // Malformed requests: 400 with a message naming the problem.
    let c = d.client();
    let j = Some("application/json");
    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        ("POST", "/v1/containers", b"", 400, "image"),
        ("POST", "/v1/containers", b"{", 400, "request body"),
        ("POST", "/v1/containers", br#"{"image":5}"#, 400, "image"),
        (
            "POST",
            "/v1/containers",
            br#"{"image":"busybox","restart":"sometimes"}"#,
            400,
            "restart",
        ),
        (
            "POST",
            "/v1/containers",
            br#"{"image":"busybox","memory":"lots"}"#,
            400,
            "memory",
        ),
        (
            "POST",
            "/v1/containers",
            br#"{"image":"busybox","ports":["a:b"]}"#,
            400,
            "ports[0]",
        ),
        (
            "POST",
            "/v1/containers",
            br#"{"image":"busybox","volumes":["/nonexistent-x:/x"]}"#,
            400,
            "volumes",
        ),
        (
            "POST",
            "/v1/containers",
            br#"{"image":"busybox","bogus":true}"#,
            400,
            "bogus",
        ),
        (
            "POST",
            "/v1/containers",
            br#"{"image":"busybox","name":"web"}"#,
            409,
            "already in use",
        ),
        (
            "POST",
            "/v1/containers",
            br#"{"image":"nosuchimage"}"#,
            404,
            "nosuchimage",
        ),
        (
            "POST",
            "/v1/containers/web/kill",
            br#"{"signal":"NOPE"}"#,
            400,
            "signal",
        ),
        (
            "POST",
            "/v1/containers/web/stop",
            br#"{"timeout":"soon"}"#,
            400,
            "timeout",
        ),
        (
            "POST",
            "/v1/containers/web/start",
            b"",
            409,
            "already running",
        ),
        ("GET", "/v1/containers/nope", b"", 404, "No such container"),
        ("GET", "/v1/containers/web/logs?tail=x", b"", 400, ""),
        ("POST", "/v1/containers/us/kill", b"", 409, "is not running"),
    ];
    for (m, p, body, code, msg) in cases {
        let r = c.request(m, p, j, body).unwrap();
        assert_eq!(
            r.status,
            *code,
            "{m} {p} {}: {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        assert!(r.text().contains(msg), "{m} {p}: {}", r.text());
    }
}
