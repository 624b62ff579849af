//! The `--control PATH` server (docs/CONTROL.md): a Unix stream socket (mode
//! 0600) speaking JSON lines. Each request line gets exactly one response
//! line, in order, with the request's `"id"` echoed; malformed lines and
//! unknown commands get `{"ok":false,"error":…}` and the connection stays
//! open. Any number of clients may be connected; each has its own thread.
//!
//! The server is backend-neutral: it parses a request ([`parse_request`]) and
//! dispatches it to a [`VmControl`], which each backend (the riscv64
//! emulator, KVM) implements. Only `status`, `powerdown` and `quit` must be
//! implemented; `pause`, `resume`, the `snapshot-*` commands and `save` have
//! default bodies answering "not supported by this backend yet", so a
//! backend overrides exactly what it supports:
//!
//! ```ignore
//! impl VmControl for MyBackend {
//!     fn status(&self) -> VmStatus { … }
//!     fn powerdown(&self) -> anyhow::Result<bool> { … } // delivered?
//!     fn quit(&self) -> anyhow::Result<()> { … }        // returns at once; the VMM exits later
//!     fn pause(&self) -> anyhow::Result<()> { … }       // optional
//! }
//! ```
//!
//! Methods run on the client's thread, concurrently with the vCPUs and with
//! other clients; a backend serialises what must be serialised. `quit` is
//! answered *before* [`VmControl::quit`] is called, so the client sees
//! `{"ok":true}` even though the process exits right after.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Longest request line accepted; longer ones get an error (the rest of
/// the line is skipped without being buffered).
pub const MAX_LINE: usize = 64 * 1024;

/// `status`'s `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
    /// A powerdown was requested and the guest has not stopped yet.
    Shutdown,
}

/// The `status` result (docs/CONTROL.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmStatus {
    pub state: RunState,
    /// `--name`, or "" without one.
    pub name: String,
    pub uuid: String,
    pub pid: u32,
    pub arch: String,
    pub cpus: usize,
    pub memory_bytes: u64,
}

fn unsupported(what: &str) -> anyhow::Error {
    anyhow!("{what} is not supported by this backend yet")
}

/// What a backend offers to the control socket. See the module docs.
pub trait VmControl: Send + Sync {
    fn status(&self) -> VmStatus;
    /// Asks the guest to shut down cleanly; `Ok(false)` when there is no
    /// channel to the guest. The VMM exits 0 (`poweroff`) once it has.
    fn powerdown(&self) -> Result<bool>;
    /// Stops the VM now (libvirt's destroy); disks are flushed as the VMM
    /// exits 0 with reason `quit`. Must return without waiting for that.
    fn quit(&self) -> Result<()>;
    fn pause(&self) -> Result<()> {
        Err(unsupported("pause"))
    }
    fn resume(&self) -> Result<()> {
        Err(unsupported("resume"))
    }
    fn snapshot_create(&self, _name: &str) -> Result<Value> {
        Err(unsupported("snapshot-create"))
    }
    /// `[{"name","date_sec","vm_state_size","disks":[…]}]`
    fn snapshot_list(&self) -> Result<Value> {
        Err(unsupported("snapshot-list"))
    }
    fn snapshot_revert(&self, _name: &str) -> Result<()> {
        Err(unsupported("snapshot-revert"))
    }
    fn snapshot_delete(&self, _name: &str) -> Result<()> {
        Err(unsupported("snapshot-delete"))
    }
    /// The VM must be paused.
    fn save(&self, _path: &Path) -> Result<()> {
        Err(unsupported("save"))
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Pause,
    Resume,
    Powerdown,
    Quit,
    SnapshotCreate(String),
    SnapshotList,
    SnapshotRevert(String),
    SnapshotDelete(String),
    Save(PathBuf),
}

/// One request line: the command and the `id` to echo (any JSON value).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub cmd: Command,
}

/// A request that cannot be run: the error message, and the `id` if the line
/// was an object that had one.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub id: Option<Value>,
    pub error: String,
}

/// Parses one request line (without its newline). Unknown extra fields are
/// ignored, so newer clients can add optional arguments.
pub fn parse_request(line: &[u8]) -> Result<Request, BadRequest> {
    let bad = |id: Option<Value>, error: String| BadRequest { id, error };
    let v: Value =
        serde_json::from_slice(line).map_err(|e| bad(None, format!("malformed request: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(bad(None, "a request must be a JSON object".into()));
    };
    let id = obj.get("id").cloned();
    let cmd = match obj.get("cmd") {
        Some(Value::String(c)) => c.as_str(),
        Some(_) => return Err(bad(id, "\"cmd\" must be a string".into())),
        None => return Err(bad(id, "missing \"cmd\"".into())),
    };
    let arg = |key: &str| -> Result<String, BadRequest> {
        match obj.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(bad(id.clone(), format!("{cmd}: \"{key}\" is empty"))),
            Some(_) => Err(bad(
                id.clone(),
                format!("{cmd}: \"{key}\" must be a string"),
            )),
            None => Err(bad(
                id.clone(),
                format!("{cmd}: missing argument \"{key}\""),
            )),
        }
    };
    let cmd = match cmd {
        "status" => Command::Status,
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "powerdown" => Command::Powerdown,
        "quit" => Command::Quit,
        "snapshot-create" => Command::SnapshotCreate(arg("name")?),
        "snapshot-list" => Command::SnapshotList,
        "snapshot-revert" => Command::SnapshotRevert(arg("name")?),
        "snapshot-delete" => Command::SnapshotDelete(arg("name")?),
        "save" => Command::Save(PathBuf::from(arg("path")?)),
        other => return Err(bad(id, format!("unknown command {other:?}"))),
    };
    Ok(Request { id, cmd })
}

fn response(id: Option<Value>, r: Result<Option<Value>, String>) -> Value {
    let mut m = Map::new();
    match r {
        Ok(result) => {
            m.insert("ok".into(), Value::Bool(true));
            if let Some(v) = result {
                m.insert("result".into(), v);
            }
        }
        Err(e) => {
            m.insert("ok".into(), Value::Bool(false));
            m.insert("error".into(), Value::String(e));
        }
    }
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

/// Runs one parsed request against the backend (except `quit`, see
/// [`serve_client`]).
pub fn dispatch(vm: &dyn VmControl, cmd: &Command) -> Result<Option<Value>> {
    let done = |r: Result<()>| r.map(|()| None);
    match cmd {
        Command::Status => Ok(Some(serde_json::to_value(vm.status())?)),
        Command::Pause => done(vm.pause()),
        Command::Resume => done(vm.resume()),
        Command::Powerdown => Ok(Some(json!({ "delivered": vm.powerdown()? }))),
        Command::Quit => done(vm.quit()),
        Command::SnapshotCreate(n) => vm.snapshot_create(n).map(Some),
        Command::SnapshotList => vm.snapshot_list().map(Some),
        Command::SnapshotRevert(n) => done(vm.snapshot_revert(n)),
        Command::SnapshotDelete(n) => done(vm.snapshot_delete(n)),
        Command::Save(p) => done(vm.save(p)),
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf` (newline
/// stripped). `Ok(None)` at EOF; `Ok(Some(false))` for an over-long line,
/// whose remainder has been skipped.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Some(true));
    }
    if buf.len() <= MAX_LINE {
        return Ok(Some(true)); // last line without a newline
    }
    // Too long: drop the rest of the line a chunk at a time.
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                break;
            }
            None => {
                let n = chunk.len();
                r.consume(n);
            }
        }
    }
    Ok(Some(false))
}

/// Serves one client until it disconnects.
pub fn serve_client(vm: &dyn VmControl, conn: UnixStream) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut line = Vec::new();
    while let Some(fits) = read_line(&mut r, &mut line)? {
        if fits && line.iter().all(u8::is_ascii_whitespace) {
            continue; // blank lines are not requests
        }
        let (resp, quit) = if !fits {
            let e = format!("request line longer than {MAX_LINE} bytes");
            (response(None, Err(e)), false)
        } else {
            match parse_request(&line) {
                Err(b) => (response(b.id, Err(b.error)), false),
                Ok(Request {
                    id,
                    cmd: Command::Quit,
                }) => (response(id, Ok(None)), true),
                Ok(req) => {
                    let r = dispatch(vm, &req.cmd).map_err(|e| format!("{e:#}"));
                    (response(req.id, r), false)
                }
            }
        };
        let mut text = resp.to_string();
        text.push('\n');
        let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        if quit {
            // Answered first: the process may be gone right after.
            if let Err(e) = vm.quit() {
                tracing::error!("control: quit failed: {e:#}");
            }
        }
        written?;
    }
    Ok(())
}

/// Binds a Unix stream socket at `path` with mode 0600 before anyone can
/// connect (bind, chmod, then listen). A stale socket at `path` is
/// replaced; any other existing file is an error.
pub fn bind_private(path: &Path, what: &str) -> Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("{what} {}: cannot remove the old socket", path.display()))?,
        Ok(_) => bail!("{what} {}: exists and is not a socket", path.display()),
        Err(_) => {}
    }
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        bail!(
            "{what} {}: a socket path must be 1 to {} bytes",
            path.display(),
            addr.sun_path.len() - 1
        );
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("{what}: socket"));
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::bind(raw, (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{what} {}: cannot bind", path.display()));
    }
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("{what} {}: cannot chmod", path.display()))?;
    // SAFETY: listen on the bound socket we own.
    if unsafe { libc::listen(raw, 16) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{what} {}: cannot listen", path.display()));
    }
    Ok(UnixListener::from(fd))
}

/// The running server; dropping it removes the socket file (clients already
/// connected keep their connection until the process exits).
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` and serves every client on its own thread.
    pub fn start(path: &Path, vm: Arc<dyn VmControl>) -> Result<Self> {
        let listener = bind_private(path, "--control")?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let conn = match conn {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!("control: accept failed: {e}");
                            continue;
                        }
                    };
                    let vm = vm.clone();
                    let r = std::thread::Builder::new()
                        .name("control-client".into())
                        .spawn(move || {
                            if let Err(e) = serve_client(&*vm, conn) {
                                tracing::debug!("control client: {e}");
                            }
                        });
                    if let Err(e) = r {
                        tracing::warn!("control: cannot start a client thread: {e}");
                    }
                }
            })
            .context("--control: cannot start the server thread")?;
        Ok(ControlServer {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Handles one raw request line the way the server does, returning the
/// response line (for the fuzz target and unit tests).
pub fn handle_line(vm: &dyn VmControl, line: &[u8]) -> String {
    let resp = match parse_request(line) {
        Err(b) => response(b.id, Err(b.error)),
        Ok(req) => {
            let r = dispatch(vm, &req.cmd).map_err(|e| format!("{e:#}"));
            response(req.id, r)
        }
    };
    resp.to_string()
}

/// Body of fuzz/fuzz_targets/control_request.rs: a client's byte stream
/// through the line splitter, the parser and the dispatcher (against a
/// backend that supports nothing). Never panics; every line gets one
/// well-formed response.
pub fn fuzz_requests(data: &[u8]) {
    struct Inert;
    impl VmControl for Inert {
        fn status(&self) -> VmStatus {
            VmStatus {
                state: RunState::Paused,
                name: String::new(),
                uuid: String::new(),
                pid: 0,
                arch: String::new(),
                cpus: 0,
                memory_bytes: 0,
            }
        }
        fn powerdown(&self) -> Result<bool> {
            Ok(false)
        }
        fn quit(&self) -> Result<()> {
            Ok(())
        }
    }
    let mut r = BufReader::new(data);
    let mut line = Vec::new();
    while let Ok(Some(fits)) = read_line(&mut r, &mut line) {
        assert!(line.len() <= MAX_LINE + 1);
        if fits {
            let resp: Value =
                serde_json::from_str(&handle_line(&Inert, &line)).expect("responses are JSON");
            assert!(resp["ok"].is_boolean());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The fuzz target's body over a small corpus (cargo fuzz needs nightly).
    #[test]
    fn fuzz_body_on_corpus() {
        let long = format!("{{\"cmd\":\"{}\"}}", "y".repeat(MAX_LINE * 2));
        for c in [
            &b""[..],
            b"\n\n\r\n",
            b"{\"cmd\":\"status\",\"id\":[1,{\"a\":null}]}\n{\"cmd\":\"quit\"}",
            b"{\"cmd\":\"save\",\"path\":\"\\u0000\"}\n",
            b"{\"cmd\":\"snapshot-revert\",\"name\":\"\xff\"}\n",
            b"\xff\xfe{{{{[[[[\n1e999999\n\"\\ud800\"\n",
            long.as_bytes(),
        ] {
            fuzz_requests(c);
        }
        // Deep nesting must not overflow the stack (serde_json limits it).
        fuzz_requests("[".repeat(100_000).as_bytes());
    }

    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
    }

    impl VmControl for Fake {
        fn status(&self) -> VmStatus {
            VmStatus {
                state: RunState::Running,
                name: "t".into(),
                uuid: "00000000-0000-4000-8000-000000000000".into(),
                pid: 1,
                arch: "riscv64".into(),
                cpus: 2,
                memory_bytes: 1 << 20,
            }
        }
        fn powerdown(&self) -> Result<bool> {
            self.calls.lock().unwrap().push("powerdown".into());
            Ok(false)
        }
        fn quit(&self) -> Result<()> {
            self.calls.lock().unwrap().push("quit".into());
            Ok(())
        }
    }

    fn resp(vm: &Fake, line: &str) -> Value {
        serde_json::from_str(&handle_line(vm, line.as_bytes())).unwrap()
    }

    #[test]
    fn parses_every_command() {
        let p = |s: &str| parse_request(s.as_bytes()).map(|r| r.cmd);
        assert_eq!(p(r#"{"cmd":"status"}"#), Ok(Command::Status));
        assert_eq!(p(r#"{"cmd":"pause"}"#), Ok(Command::Pause));
        assert_eq!(p(r#"{"cmd":"resume"}"#), Ok(Command::Resume));
        assert_eq!(p(r#"{"cmd":"powerdown"}"#), Ok(Command::Powerdown));
        assert_eq!(p(r#"{"cmd":"quit"}"#), Ok(Command::Quit));
        assert_eq!(
            p(r#"{"cmd":"snapshot-create","name":"a b"}"#),
            Ok(Command::SnapshotCreate("a b".into()))
        );
        assert_eq!(p(r#"{"cmd":"snapshot-list"}"#), Ok(Command::SnapshotList));
        assert_eq!(
            p(r#"{"cmd":"snapshot-revert","name":"x"}"#),
            Ok(Command::SnapshotRevert("x".into()))
        );
        assert_eq!(
            p(r#"{"cmd":"snapshot-delete","name":"x","future":1}"#),
            Ok(Command::SnapshotDelete("x".into()))
        );
        assert_eq!(
            p(r#"{"cmd":"save","path":"/tmp/s"}"#),
            Ok(Command::Save("/tmp/s".into()))
        );
        let r = parse_request(br#"{"id":{"n":[1]},"cmd":"status"}"#).unwrap();
        assert_eq!(r.id, Some(json!({"n":[1]})));
    }

    #[test]
    fn bad_requests_say_why() {
        for (line, why, id) in [
            ("{", "malformed request", None),
            ("", "malformed request", None),
            ("[1]", "must be a JSON object", None),
            ("\"status\"", "must be a JSON object", None),
            (r#"{"id":7}"#, "missing \"cmd\"", Some(json!(7))),
            (
                r#"{"id":"a","cmd":3}"#,
                "must be a string",
                Some(json!("a")),
            ),
            (
                r#"{"id":1,"cmd":"frobnicate"}"#,
                "unknown command \"frobnicate\"",
                Some(json!(1)),
            ),
            (
                r#"{"cmd":"snapshot-create"}"#,
                "snapshot-create: missing argument \"name\"",
                None,
            ),
            (
                r#"{"cmd":"snapshot-revert","name":5}"#,
                "\"name\" must be a string",
                None,
            ),
            (r#"{"cmd":"save","path":""}"#, "\"path\" is empty", None),
        ] {
            let e = parse_request(line.as_bytes()).unwrap_err();
            assert!(e.error.contains(why), "{line}: {}", e.error);
            assert_eq!(e.id, id, "{line}");
        }
    }

    #[test]
    fn responses_and_defaults() {
        let vm = Fake::default();
        let r = resp(&vm, r#"{"cmd":"status","id":9}"#);
        assert_eq!(r["ok"], true);
        assert_eq!(r["id"], 9);
        assert_eq!(r["result"]["state"], "running");
        assert_eq!(r["result"]["cpus"], 2);
        let r = resp(&vm, r#"{"cmd":"powerdown"}"#);
        assert_eq!(r, json!({"ok":true,"result":{"delivered":false}}));
        let r = resp(&vm, r#"{"cmd":"frobnicate"}"#);
        assert_eq!(
            r,
            json!({"ok":false,"error":"unknown command \"frobnicate\""})
        );
        // Default trait bodies: a clear error, not a panic.
        for c in [
            r#"{"cmd":"pause"}"#,
            r#"{"cmd":"resume"}"#,
            r#"{"cmd":"snapshot-create","name":"s"}"#,
            r#"{"cmd":"snapshot-list"}"#,
            r#"{"cmd":"save","path":"/x"}"#,
        ] {
            let r = resp(&vm, c);
            assert_eq!(r["ok"], false, "{c}");
            assert!(
                r["error"].as_str().unwrap().contains("not supported"),
                "{r}"
            );
        }
    }

    #[test]
    fn socket_server_keeps_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let vm = Arc::new(Fake::default());
        let server = ControlServer::start(&path, vm.clone()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let conn = UnixStream::connect(&path).unwrap();
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        let long = format!("{{\"cmd\":\"{}\"}}\n", "x".repeat(MAX_LINE + 10));
        w.write_all(b"not json\n\n{\"cmd\":\"status\",\"id\":\"a\"}\n")
            .unwrap();
        w.write_all(long.as_bytes()).unwrap();
        w.write_all(b"{\"cmd\":\"quit\",\"id\":2}\n").unwrap();
        let mut lines = Vec::new();
        for _ in 0..4 {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            lines.push(serde_json::from_str::<Value>(&l).unwrap());
        }
        assert_eq!(lines[0]["ok"], false);
        assert_eq!(lines[1]["id"], "a");
        assert_eq!(lines[1]["result"]["name"], "t");
        assert!(lines[2]["error"].as_str().unwrap().contains("longer than"));
        assert_eq!(lines[3], json!({"ok":true,"id":2}));
        // A second client at the same time.
        let mut c2 = UnixStream::connect(&path).unwrap();
        c2.write_all(b"{\"cmd\":\"powerdown\"}\n").unwrap();
        let mut l = String::new();
        BufReader::new(c2).read_line(&mut l).unwrap();
        assert!(l.contains("delivered"), "{l}");
        // quit was answered, then called.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !vm.calls.lock().unwrap().contains(&"quit".to_string()) {
            assert!(std::time::Instant::now() < deadline, "quit never called");
            std::thread::yield_now();
        }
        drop(server);
        assert!(!path.exists());
        // A regular file in the way is not clobbered.
        std::fs::write(&path, b"keep").unwrap();
        let e = bind_private(&path, "--control").unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
    }
}
