//! `ferro container …` end to end, as root, with the default OCI runtime
//! (`ferro oci`; `FERRO_TEST_RUNTIME=runc` swaps it) and one test with runc.
//! Test images are built here from Debian's busybox-static; a registry
//! test starts Debian's docker-registry on a private loopback port.

mod container_util;

use container_util::*;
use images::Digest;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// ---------- running ferro ----------

struct Eng {
    dir: tempfile::TempDir,
    runtime: String,
}

impl Eng {
    fn new() -> Eng {
        Eng::with_runtime(&std::env::var("FERRO_TEST_RUNTIME").unwrap_or_else(|_| "ferro".into()))
    }

    fn with_runtime(runtime: &str) -> Eng {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "container tests run as root");
        Eng {
            dir: tempfile::tempdir().unwrap(),
            runtime: runtime.to_string(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferro"));
        c.arg("container").args(args);
        c.env("FERRO_ROOT", self.root())
            .env("FERRO_RUNTIME", &self.runtime);
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "ferro container {args:?} failed ({:?}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn load(&self, archive: &[u8]) -> Output {
        let p = self
            .dir
            .path()
            .join(format!("in-{}.tar", Digest::of(archive).short()));
        std::fs::write(&p, archive).unwrap();
        self.run(&["load", "-i", p.to_str().unwrap()])
    }

    fn load_busybox(&self) {
        let o = self.load(&oci_archive("busybox:latest", &[busybox_layer()], false));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    fn inspect(&self, what: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", what])).unwrap();
        v[0].clone()
    }

    fn wait_for(&self, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.inspect(what);
            if cond(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on {what}: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Eng {
    fn drop(&mut self) {
        // Unmount rootfs overlays and free network leases.
        let ids = self.run(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.run(&["rm", "-f", id]);
        }
    }
}

fn out_err(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------- tests ----------

#[test]
fn whiteouts_and_load_save_round_trips() {
    let e = Eng::new();
    let base = busybox_layer();
    let l2 = layer(&[
        ("a", E::Dir),
        ("a/x", E::File(b"x")),
        ("a/y", E::File(b"y")),
        ("d", E::Dir),
        ("d/old", E::File(b"old")),
    ]);
    let l3 = layer(&[
        ("a/.wh.x", E::File(b"")),
        ("d/.wh..wh..opq", E::File(b"")),
        ("d/new", E::File(b"new")),
    ]);
    let layers = vec![base, l2, l3];
    let check = |img: &str| {
        let out = e.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            img,
            "sh",
            "-c",
            "ls /a; echo --; ls /d",
        ]);
        assert_eq!(out, "y\n--\nnew\n", "whiteouts in {img}");
    };
    let o = e.load(&oci_archive("wh:oci", &layers, false));
    assert!(o.status.success(), "{}", out_err(&o));
    assert!(
        out_err(&o).contains("Loaded image: wh:oci"),
        "{}",
        out_err(&o)
    );
    check("wh:oci");
    // save → rmi → load gives the same image ID and filesystem.
    let id = e.inspect("wh:oci")["Id"].as_str().unwrap().to_string();
    let saved = e.dir.path().join("saved.tar");
    e.ok(&["save", "-o", saved.to_str().unwrap(), "wh:oci"]);
    e.ok(&["rmi", "wh:oci"]);
    assert!(!e.ok(&["images"]).contains("wh"));
    e.ok(&["load", "-i", saved.to_str().unwrap()]);
    assert_eq!(e.inspect("wh:oci")["Id"].as_str().unwrap(), id);
    check("wh:oci");
    // A legacy docker-archive of the same layers.
    let o = e.load(&docker_archive("wh:docker", &layers));
    assert!(o.status.success(), "{}", out_err(&o));
    check("wh:docker");
    assert_eq!(
        e.inspect("wh:docker")["Id"].as_str().unwrap(),
        id,
        "same config bytes, same ID"
    );
    // tag + images listing.
    e.ok(&["tag", "wh:oci", "other/name:v2"]);
    let imgs = e.ok(&["images"]);
    assert!(imgs.contains("other/name") && imgs.contains("v2"), "{imgs}");
}

#[test]
fn hostile_layers_are_refused() {
    let e = Eng::new();
    let outside = e.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let esc = outside.display().to_string();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (layer(&[("../../../../pwned", E::File(b"x"))]), "'..'"),
        (
            layer(&[("evil", E::Sym(&esc)), ("evil/pwned", E::File(b"x"))]),
            "symlink",
        ),
        (
            layer(&[("evil", E::Sym("/")), ("evil/tmp/pwned", E::File(b"x"))]),
            "symlink",
        ),
        (
            layer(&[("h", E::Hard("../../../../etc/passwd"))]),
            "escapes",
        ),
        (
            layer(&[("h", E::Hard("/etc/shadow"))]),
            "not a file in this layer",
        ),
    ];
    for (i, (l, want)) in cases.into_iter().enumerate() {
        let o = e.load(&oci_archive(&format!("evil:{i}"), &[l], false));
        assert!(!o.status.success(), "hostile layer {i} loaded");
        assert!(out_err(&o).contains(want), "case {i}: {}", out_err(&o));
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!Path::new("/pwned").exists() && !Path::new("/tmp/pwned").exists());
    let o = e.load(&oci_archive("corrupt:1", &[busybox_layer()], true));
    assert!(!o.status.success());
    assert!(out_err(&o).contains("digest mismatch"), "{}", out_err(&o));
    assert!(!e.ok(&["images"]).contains("corrupt"));
    // No unpacked layer or stray file was left behind in the store.
    let layers = std::fs::read_dir(e.root().join("images/layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 0);
}

#[test]
fn run_ps_logs_exec_stop_rm() {
    let e = Eng::new();
    e.load_busybox();
    let id = e
        .ok(&[
            "run",
            "-d",
            "--name",
            "t1",
            "--network",
            "none",
            "-e",
            "FOO=bar",
            "-w",
            "/work",
            "busybox",
            "sh",
            "-c",
            "echo out; echo err >&2; echo $FOO; pwd; exec sleep 300",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = e.run(&["logs", "t1"]);
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        // stdout and stderr are pumped by separate threads: wait for both.
        if s.contains("/work") && !o.stderr.is_empty() {
            assert_eq!(s, "out\nbar\n/work\n");
            assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logs never showed the output: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // --tail counts lines of both streams together (their order across
    // streams is not fixed), as docker's does.
    let o = e.run(&["logs", "--tail", "1", "t1"]);
    assert_eq!(out_err(&o).lines().count(), 1, "{}", out_err(&o));
    let o = e.run(&["logs", "--tail", "4", "t1"]);
    assert_eq!(out_err(&o).lines().count(), 4, "{}", out_err(&o));
    let ps = e.ok(&["ps"]);
    assert!(
        ps.contains("t1") && ps.contains(&id[..12]) && ps.contains("Up"),
        "{ps}"
    );
    assert_eq!(e.ok(&["ps", "-q"]).trim(), &id[..12]);
    assert_eq!(
        e.ok(&["exec", "t1", "sh", "-c", "echo $FOO; pwd"]),
        "bar\n/work\n"
    );
    assert_eq!(e.ok(&["exec", "-u", "nobody", "t1", "id", "-u"]), "65534\n");
    let o = e.run(&["exec", "t1", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    let o = e.run(&["rm", "t1"]);
    assert!(!o.status.success() && out_err(&o).contains("cannot remove a running container"));
    let t0 = Instant::now();
    e.ok(&["stop", "-t", "1", "t1"]);
    assert!(t0.elapsed() < Duration::from_secs(10));
    let v = e.inspect("t1");
    assert_eq!(v["State"]["Status"], "exited");
    // sleep as PID 1 ignores SIGTERM, so stop escalated to SIGKILL.
    assert_eq!(v["State"]["ExitCode"], 137);
    assert_eq!(v["State"]["OOMKilled"], false);
    assert!(e.ok(&["ps", "-a"]).contains("Exited (137)"));
    assert!(!e.ok(&["ps"]).contains("t1"));
    e.ok(&["rm", "t1"]);
    assert!(!e.ok(&["ps", "-a"]).contains("t1"));

    // Foreground: output, exit code, --rm.
    let o = e.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo fg; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "fg\n");
    assert_eq!(e.ok(&["ps", "-aq"]), "");
    // -v HOST:CTR:ro, -u, --entrypoint.
    let vol = e.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("f"), "data\n").unwrap();
    let spec = format!("{}:/data:ro", vol.display());
    let o = e.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &spec,
        "busybox",
        "sh",
        "-c",
        "cat /data/f; touch /data/g",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "data\n");
    assert!(!vol.join("g").exists());
    let spec = format!("{}:/data", vol.display());
    e.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &spec,
        "busybox",
        "touch",
        "/data/g",
    ]);
    assert!(vol.join("g").exists());
    assert_eq!(
        e.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-u",
            "nobody",
            "busybox",
            "id",
            "-u"
        ]),
        "65534\n"
    );
    assert_eq!(
        e.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "echo",
            "busybox",
            "a",
            "b"
        ]),
        "a b\n"
    );
    // --restart on-failure:2 runs three times in all.
    e.ok(&[
        "run",
        "-d",
        "--name",
        "rs",
        "--network",
        "none",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "echo try; exit 1",
    ]);
    let v = e.wait_for("rs", |v| {
        v["RestartCount"] == 2 && v["State"]["Status"] == "exited"
    });
    assert_eq!(v["State"]["ExitCode"], 1);
    assert_eq!(e.ok(&["logs", "rs"]), "try\ntry\ntry\n");
    // logs -f follows until the container exits.
    e.ok(&[
        "run",
        "-d",
        "--name",
        "fl",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo a; sleep 1; echo b",
    ]);
    assert_eq!(e.ok(&["logs", "-f", "fl"]), "a\nb\n");
    assert_eq!(e.inspect("fl")["State"]["Status"], "exited");
    // Bad input gets clear errors.
    let o = e.run(&["run", "--rm", "nosuchimage:1"]);
    assert!(!o.status.success());
    let o = e.run(&["run", "--rm", "-m", "lots", "busybox", "true"]);
    assert!(out_err(&o).contains("invalid size"), "{}", out_err(&o));
}

#[test]
fn memory_limit_oom_and_pids_limit() {
    let e = Eng::new();
    e.load_busybox();
    let o = e.run(&[
        "run",
        "--name",
        "oom",
        "--network",
        "none",
        "-m",
        "16m",
        "busybox",
        "sh",
        "-c",
        "x=$(yes | head -c 100000000); echo survived",
    ]);
    assert_eq!(o.status.code(), Some(137), "{}", out_err(&o));
    assert!(!out_err(&o).contains("survived"));
    let v = e.inspect("oom");
    assert_eq!(v["State"]["OOMKilled"], true, "{v}");
    assert_eq!(v["State"]["ExitCode"], 137);
    // A fork bomb hits the pids limit instead of the host: ash stops at the
    // first failed fork, after fewer than 20 children.
    let o = e.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--pids-limit",
        "20",
        "busybox",
        "sh",
        "-c",
        "n=0; for i in $(seq 1 200); do sleep 30 & n=$((n+1)); echo $n; done",
    ]);
    assert_ne!(o.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last: u32 = stdout
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    assert!(last > 0 && last < 20, "{}", out_err(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("can't fork"),
        "{}",
        out_err(&o)
    );
    // stats reads the container's cgroups.
    e.ok(&[
        "run",
        "-d",
        "--name",
        "st",
        "--network",
        "none",
        "-m",
        "32m",
        "busybox",
        "sleep",
        "60",
    ]);
    let st = e.ok(&["stats", "--no-stream", "st"]);
    assert!(st.contains("st") && st.contains("/ 33.554MB"), "{st}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    Some(r)
}

fn poll_http(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = http_get(addr) {
            if r.contains("200") {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn publish_serves_busybox_httpd() {
    let e = Eng::new();
    e.load_busybox();
    let port = free_port();
    let p = format!("{port}:80");
    e.ok(&[
        "run", "-d", "--name", "web", "-p", &p, "busybox", "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    let r = poll_http(&format!("127.0.0.1:{port}"));
    assert!(r.contains("hello from ferro"), "{r}");
    // The host's own non-loopback address goes through the DNAT rules.
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    let host_ip = String::from_utf8_lossy(&addrs.stdout)
        .lines()
        .filter(|l| !l.contains("ferro0"))
        .find_map(|l| {
            l.split_whitespace()
                .nth(3)
                .map(|a| a.split('/').next().unwrap().to_string())
        });
    if let Some(ip) = host_ip {
        let r = poll_http(&format!("{ip}:{port}"));
        assert!(r.contains("hello from ferro"), "{r}");
    }
    let ip = e.inspect("web")["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip.starts_with("10.89.0."), "{ip}");
    // Container to container over the bridge.
    let url = format!("http://{ip}/");
    assert_eq!(
        e.ok(&["run", "--rm", "busybox", "wget", "-qO-", &url]),
        "hello from ferro\n"
    );
    e.ok(&["rm", "-f", "web"]);
    assert!(http_get(&format!("127.0.0.1:{port}")).is_none());
}

struct Registry {
    child: Child,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry(dir: &Path, htpasswd: Option<&str>) -> Registry {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let mut cfg = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    if let Some(line) = htpasswd {
        std::fs::write(dir.join("htpasswd"), line).unwrap();
        cfg += &format!(
            "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
            dir.join("htpasswd").display()
        );
    }
    std::fs::write(dir.join("config.yml"), cfg).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .expect("docker-registry is installed (scripts/deps test)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Registry { child, port }
}

#[test]
fn push_and_pull_with_a_local_registry() {
    let e = Eng::new();
    e.load_busybox();
    let anon = registry(&e.dir.path().join("reg-anon"), None);
    let name = format!("127.0.0.1:{}/test/busybox:v1", anon.port);
    e.ok(&["tag", "busybox", &name]);
    let id = e.inspect("busybox")["Id"].as_str().unwrap().to_string();
    e.ok(&["push", &name]);
    e.ok(&["rmi", &name]);
    e.ok(&["rmi", "busybox"]);
    assert_eq!(e.ok(&["images", "-q"]), "");
    e.ok(&["pull", &name]);
    assert_eq!(e.inspect(&name)["Id"].as_str().unwrap(), id);
    assert_eq!(
        e.ok(&["run", "--rm", "--network", "none", &name, "echo", "pulled"]),
        "pulled\n"
    );
    let o = e.run(&[
        "pull",
        "--platform",
        "linux/s390x",
        &format!("127.0.0.1:{}/test/nothere:v1", anon.port),
    ]);
    assert!(!o.status.success());

    // Basic auth (htpasswd with bcrypt).
    let hp = Command::new("htpasswd")
        .args(["-Bbn", "alice", "s3cret"])
        .output()
        .expect("htpasswd (apache2-utils)");
    let auth = registry(
        &e.dir.path().join("reg-auth"),
        Some(&String::from_utf8_lossy(&hp.stdout)),
    );
    let secured = format!("127.0.0.1:{}/private/bb:v1", auth.port);
    e.ok(&["tag", &name, &secured]);
    let o = e.run(&["push", &secured]);
    assert!(
        !o.status.success() && out_err(&o).contains("401"),
        "{}",
        out_err(&o)
    );
    e.ok(&[
        "push",
        "--username",
        "alice",
        "--password",
        "s3cret",
        &secured,
    ]);
    e.ok(&["rmi", &secured]);
    let o = e.run(&["pull", &secured]);
    assert!(
        !o.status.success() && out_err(&o).to_lowercase().contains("not authorized"),
        "{}",
        out_err(&o)
    );
    e.ok(&[
        "pull",
        "--username",
        "alice",
        "--password",
        "s3cret",
        &secured,
    ]);
    assert_eq!(e.inspect(&secured)["Id"].as_str().unwrap(), id);
}

#[test]
fn build_multi_stage_with_cache() {
    let e = Eng::new();
    e.load_busybox();
    let ctx = e.dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("hello.txt"), "ctxfile\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        r#"ARG BASE=busybox
FROM $BASE AS builder
ARG GREETING=hi
ENV OUT=/out
WORKDIR /src
COPY hello.txt .
RUN mkdir -p $OUT && echo "$GREETING from build" > $OUT/msg && cat hello.txt >> $OUT/msg && rm /bin/wget

FROM busybox
LABEL org.test.kind="multi stage"
COPY --from=builder /out/msg /msg
EXPOSE 8080
USER nobody
ENTRYPOINT ["cat"]
CMD ["/msg"]
"#,
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile.scratch"),
        "FROM busybox AS src\nFROM scratch\nCOPY --from=src /bin/busybox /bin/busybox\nCOPY hello.txt /\nENTRYPOINT [\"/bin/busybox\", \"cat\", \"/hello.txt\"]\n",
    )
    .unwrap();
    std::fs::write(ctx.join("Dockerfile.bad"), "FROM busybox\nRUN exit 3\n").unwrap();
    let c = ctx.to_str().unwrap();
    let build = |args: &[&str]| {
        let mut a = vec!["build"];
        a.extend_from_slice(args);
        a.push(c);
        let o = e.run(&a);
        assert!(o.status.success(), "build {args:?}: {}", out_err(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let log = build(&["-t", "built:1", "--build-arg", "GREETING=hello"]);
    assert!(log.contains("0 of 3 layer steps from cache"), "{log}");
    assert_eq!(
        e.ok(&["run", "--rm", "--network", "none", "built:1"]),
        "hello from build\nctxfile\n"
    );
    let v = e.inspect("built:1");
    let id = v["Id"].as_str().unwrap().to_string();
    assert_eq!(v["Config"]["User"], "nobody");
    assert_eq!(v["Config"]["Labels"]["org.test.kind"], "multi stage");
    assert!(v["Config"]["ExposedPorts"]["8080/tcp"].is_object(), "{v}");
    assert_eq!(
        e.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "id",
            "built:1",
            "-u"
        ]),
        "65534\n"
    );
    // Second build: every layer step from the cache, same image.
    let log = build(&["-t", "built:1", "--build-arg", "GREETING=hello"]);
    assert!(log.contains("3 of 3 layer steps from cache"), "{log}");
    assert_eq!(e.inspect("built:1")["Id"].as_str().unwrap(), id);
    // A new build-arg value reruns RUN and what depends on it, not the COPY before.
    let log = build(&["-t", "built:2", "--build-arg", "GREETING=bye"]);
    assert!(log.contains("1 of 3 layer steps from cache"), "{log}");
    assert_eq!(
        e.ok(&["run", "--rm", "--network", "none", "built:2"]),
        "bye from build\nctxfile\n"
    );
    // The builder stage: WORKDIR + COPY landed, RUN's deletion is a whiteout.
    build(&["--target", "builder", "-t", "stage:b"]);
    let o = e.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "stage:b",
        "sh",
        "-c",
        "cat /src/hello.txt; ls /bin/wget",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ctxfile\n");
    assert_ne!(o.status.code(), Some(0));
    // FROM scratch.
    build(&["-f", &format!("{c}/Dockerfile.scratch"), "-t", "tiny"]);
    assert_eq!(
        e.ok(&["run", "--rm", "--network", "none", "tiny"]),
        "ctxfile\n"
    );
    // A failing RUN fails the build and names the step.
    let o = e.run(&[
        "build",
        "-f",
        &format!("{c}/Dockerfile.bad"),
        "-t",
        "bad",
        c,
    ]);
    assert!(!o.status.success());
    assert!(
        out_err(&o).contains("returned a non-zero code: 3"),
        "{}",
        out_err(&o)
    );
}

#[test]
fn runc_as_the_runtime() {
    let e = Eng::with_runtime("runc");
    e.load_busybox();
    let o = e.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo $HOSTNAME >/dev/null; echo via-runc; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "via-runc\n");
    e.ok(&[
        "run",
        "-d",
        "--name",
        "r",
        "--network",
        "none",
        "busybox",
        "sleep",
        "300",
    ]);
    assert_eq!(e.inspect("r")["HostConfig"]["Runtime"], "runc");
    assert_eq!(
        e.ok(&["exec", "r", "cat", "/proc/1/cmdline"]),
        "sleep\u{0}300\u{0}"
    );
    e.ok(&["kill", "r"]);
    let v = e.wait_for("r", |v| v["State"]["Status"] == "exited");
    assert_eq!(v["State"]["ExitCode"], 137);
}

/// PUTs a raw manifest (an index here) the way a registry client does.
fn put_manifest(port: u16, repo: &str, tag: &str, media_type: &str, body: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let req = format!(
        "PUT /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 201"), "{r}");
}

#[test]
fn pull_selects_the_platform_from_an_index() {
    let e = Eng::new();
    e.load_busybox();
    let o = e.load(&oci_archive(
        "other:latest",
        &[busybox_layer(), layer(&[("arm", E::File(b"arm"))])],
        false,
    ));
    assert!(o.status.success(), "{}", out_err(&o));
    let reg = registry(&e.dir.path().join("reg"), None);
    let repo = "multi/bb";
    let amd = format!("127.0.0.1:{}/{repo}:amd", reg.port);
    let arm = format!("127.0.0.1:{}/{repo}:arm", reg.port);
    e.ok(&["tag", "busybox", &amd]);
    e.ok(&["tag", "other", &arm]);
    e.ok(&["push", &amd]);
    e.ok(&["push", &arm]);
    let desc = |name: &str, arch: &str| {
        let saved = e.dir.path().join(format!("{arch}.tar"));
        e.ok(&["save", "-o", saved.to_str().unwrap(), name]);
        let mut ar = tar::Archive::new(std::fs::File::open(&saved).unwrap());
        let mut idx = String::new();
        for ent in ar.entries().unwrap() {
            let mut ent = ent.unwrap();
            if ent.path().unwrap().to_str() == Some("index.json") {
                ent.read_to_string(&mut idx).unwrap();
            }
        }
        let v: Value = serde_json::from_str(&idx).unwrap();
        let m = &v["manifests"][0];
        json!({"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
               "platform": {"os": "linux", "architecture": arch}})
    };
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [desc(&arm, "arm64"), desc(&amd, "amd64")]});
    put_manifest(
        reg.port,
        repo,
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index).unwrap(),
    );
    let multi = format!("127.0.0.1:{}/{repo}:multi", reg.port);
    e.ok(&["pull", &multi]);
    assert_eq!(e.inspect(&multi)["Id"], e.inspect("busybox")["Id"]);
    e.ok(&["pull", "--platform", "linux/arm64", &multi]);
    assert_eq!(e.inspect(&multi)["Id"], e.inspect("other")["Id"]);
    let o = e.run(&["pull", "--platform", "linux/s390x", &multi]);
    assert!(
        out_err(&o).contains("no image for platform linux/s390x"),
        "{}",
        out_err(&o)
    );
}

/// `ferro container ARGS` on a pty: script(1) gives the client a terminal
/// while our side stays pipes; its output is collected by a thread.
struct OnPty {
    child: Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl OnPty {
    fn spawn(e: &Eng, args: &str) -> OnPty {
        OnPty::spawn_after(e, "true", args)
    }

    /// `pre` runs first in script's shell (e.g. `stty rows R cols C`).
    /// script(1) passes a piped stdin through; `</dev/tty` gives a command
    /// the pty itself.
    fn spawn_after(e: &Eng, pre: &str, args: &str) -> OnPty {
        let mut child = Command::new("script")
            .args([
                "-qfec",
                &format!("{pre}; {} container {args}", env!("CARGO_BIN_EXE_ferro")),
                "/dev/null",
            ])
            .env("FERRO_ROOT", e.root())
            .env("FERRO_RUNTIME", &e.runtime)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("script(1) from util-linux");
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o2, mut so) = (out.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = so.read(&mut b) {
                if n == 0 {
                    break;
                }
                o2.lock().unwrap().extend_from_slice(&b[..n]);
            }
        });
        OnPty { child, out }
    }

    fn send(&mut self, b: &[u8]) {
        let i = self.child.stdin.as_mut().unwrap();
        i.write_all(b).unwrap();
        i.flush().unwrap();
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn wait_text(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} on the terminal: {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "client did not exit: {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn tty_detach_attach_and_run_it() {
    let e = Eng::new();
    e.load_busybox();
    let id = e.ok(&[
        "run",
        "-d",
        "-t",
        "--name",
        "t1",
        "--network",
        "none",
        "busybox",
        "sh",
    ]);
    assert_eq!(id.trim().len(), 64, "run -d -t prints the ID: {id}");
    assert_eq!(e.inspect("t1")["Config"]["Tty"], true);

    // Attach, run a command, detach with ctrl-p ctrl-q: the shell lives on.
    let mut a = OnPty::spawn(&e, "attach t1");
    a.send(b"echo hello-$((40+2))\n");
    a.wait_text("hello-42");
    a.send(b"\x10\x11");
    assert_eq!(a.wait(), 0, "detach exits 0: {}", a.text());
    assert_eq!(e.inspect("t1")["State"]["Running"], true);
    assert!(
        e.ok(&["logs", "t1"]).contains("hello-42"),
        "the monitor logs the terminal"
    );

    // Attach again and end the shell: attach returns its exit code.
    let mut a = OnPty::spawn(&e, "attach t1");
    a.send(b"exit 7\n");
    assert_eq!(a.wait(), 7, "{}", a.text());
    let v = e.wait_for("t1", |v| v["State"]["Status"] == "exited");
    assert_eq!(v["State"]["ExitCode"], 7);
    let o = e.run(&["attach", "t1"]);
    assert!(
        !o.status.success(),
        "attach to a stopped container is refused"
    );

    // run -it goes through the same monitor path, with both runtimes; the
    // first output is not lost even though the command exits at once.
    for rt in ["ferro", "runc"] {
        let e = Eng::with_runtime(rt);
        e.load_busybox();
        // The client's window size reaches the container's terminal.
        let mut r = OnPty::spawn_after(
            &e,
            "stty rows 33 cols 91 </dev/tty",
            "run -it --rm --network none busybox sh -c 'echo hi-there; stty -a | head -1; exit 3' </dev/tty",
        );
        assert_eq!(r.wait(), 3, "{rt}: {}", r.text());
        assert!(r.text().contains("hi-there"), "{rt}: {}", r.text());
        assert!(
            r.text().contains("rows 33; columns 91"),
            "{rt}: {}",
            r.text()
        );
        assert_eq!(e.ok(&["ps", "-aq"]), "", "{rt}: --rm removed it");
    }

    // Attach needs a terminal.
    e.ok(&[
        "run",
        "-d",
        "--name",
        "plain",
        "--network",
        "none",
        "busybox",
        "sleep",
        "300",
    ]);
    let o = e.run(&["attach", "plain"]);
    assert!(out_err(&o).contains("no terminal"), "{}", out_err(&o));
}

/// Serves `body` at `path` (404 elsewhere) on a loopback port, forever.
fn http_file_server(path: &'static str, body: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let resp = if line.starts_with(&format!("GET {path} ")) {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(body);
                r
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            };
            let _ = s.write_all(&resp);
        }
    });
    port
}

#[test]
fn build_add_archives_urls_and_run_networks() {
    let e = Eng::new();
    e.load_busybox();
    let ctx = e.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let tar_of = |name: &str, data: &[u8]| {
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, name, data);
        b.into_inner().unwrap()
    };
    std::fs::write(ctx.join("a.tar.gz"), gz(&tar_of("dir/a.txt", b"from-gz\n"))).unwrap();
    std::fs::write(ctx.join("c.tar"), tar_of("c.txt", b"from-tar\n")).unwrap();
    std::fs::write(ctx.join("b.tar"), tar_of("b.txt", b"from-xz\n")).unwrap();
    let st = Command::new("xz")
        .arg("-z")
        .arg(ctx.join("b.tar"))
        .status()
        .unwrap();
    assert!(st.success(), "xz (xz-utils) compresses the fixture");
    std::fs::write(ctx.join("plain.txt"), b"just text\n").unwrap();
    let port = http_file_server("/files/dl.txt", b"downloaded\n");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM busybox\nADD a.tar.gz /gz/\nADD b.tar.xz /xz\nADD c.tar /t/\nADD plain.txt /p/\n\
             ADD http://127.0.0.1:{port}/files/dl.txt /dl/\nRUN ip -4 addr > /net.txt\n"
        ),
    )
    .unwrap();
    let c = ctx.to_str().unwrap();
    e.ok(&["build", "-t", "added", c]);
    let got = e.ok(&[
        "run", "--rm", "--network", "none", "added", "sh", "-c",
        "cat /gz/dir/a.txt /xz/b.txt /t/c.txt /p/plain.txt /dl/dl.txt; stat -c %a /dl/dl.txt; ls /t",
    ]);
    assert_eq!(
        got, "from-gz\nfrom-xz\nfrom-tar\njust text\ndownloaded\n600\nc.txt\n",
        "archives unpacked, plain file and download copied"
    );
    // Default RUN network: docker's bridge (own namespace, 10.89.0.x).
    let net = e.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "added",
        "cat",
        "/net.txt",
    ]);
    assert!(
        net.contains("inet 10.89.0.") && net.contains("eth0"),
        "bridge: {net}"
    );

    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN ip -4 addr > /net.txt\n",
    )
    .unwrap();
    e.ok(&["build", "--network", "none", "-t", "nonet", c]);
    let net = e.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "nonet",
        "cat",
        "/net.txt",
    ]);
    assert!(
        !net.contains("eth0") && !net.contains("10.89.0."),
        "none: {net}"
    );
    e.ok(&[
        "build",
        "--no-cache",
        "--network",
        "host",
        "-t",
        "hostnet",
        c,
    ]);
    let net = e.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "hostnet",
        "cat",
        "/net.txt",
    ]);
    assert!(net.contains("ferro0"), "host sees the host's bridge: {net}");
    let o = e.run(&["build", "--network", "bogus", c]);
    assert!(
        out_err(&o).contains("use bridge, host or none"),
        "{}",
        out_err(&o)
    );

    // A missing URL is a clear build error.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM busybox\nADD http://127.0.0.1:{port}/nope.txt /x\n"),
    )
    .unwrap();
    let o = e.run(&["build", c]);
    assert!(!o.status.success());
    assert!(out_err(&o).contains("HTTP 404"), "{}", out_err(&o));
}
