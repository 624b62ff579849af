//! The REST API (axum): routes, request parsing (every bad input is a 4xx
//! with a message), long operations as tasks, events as Server-Sent Events,
//! bearer-token auth for TCP, and the OpenAPI document generated from the
//! same route table the tests check against the router.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_stream::StreamExt as _;

use crate::spec::{self, VmSpec};
use crate::supervisor::{OpError, StartOpts, State as VmState, Supervisor, Vm};

/// Largest request body (a definition is a few KiB).
pub const BODY_LIMIT: usize = 1 << 20;

type Sup = Arc<Supervisor>;

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        let code = match &self {
            OpError::NotFound(_) => StatusCode::NOT_FOUND,
            OpError::Conflict(_) => StatusCode::CONFLICT,
            OpError::Invalid(_) => StatusCode::BAD_REQUEST,
            OpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, Json(json!({"error": self.to_string()}))).into_response()
    }
}

type ApiResult<T> = Result<T, OpError>;

/// A small JSON body; empty means all defaults.
pub(crate) fn body<T: DeserializeOwned + Default>(b: &[u8]) -> ApiResult<T> {
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    let mut de = serde_json::Deserializer::from_slice(b);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let p = e.path().to_string();
        OpError::Invalid(if p == "." || p == "?" {
            format!("request body: {}", e.into_inner())
        } else {
            format!("{p}: {}", e.into_inner())
        })
    })?;
    de.end()
        .map_err(|e| OpError::Invalid(format!("request body: trailing data: {e}")))?;
    Ok(v)
}

#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    pub name: String,
    pub uuid: String,
    pub state: VmState,
    pub reason: String,
    pub pid: Option<i32>,
    pub autostart: bool,
    pub restart: String,
    pub restarts: u32,
    pub since_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_log: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<VmSpec>,
}

fn info(sup: &Supervisor, spec: &VmSpec, full: bool) -> VmInfo {
    let vm = sup.vm(&spec.uuid());
    let st = vm.status();
    let paths = sup.paths(&spec.uuid());
    VmInfo {
        name: spec.name.clone(),
        uuid: spec.uuid().to_string(),
        state: st.state,
        reason: st.reason,
        pid: st.pid,
        autostart: spec.autostart,
        restart: spec.restart.to_string(),
        restarts: sup
            .store
            .run_record(&spec.uuid())
            .map(|r| r.restarts)
            .unwrap_or(0),
        since_ms: st.since_ms,
        console_socket: full.then_some(paths.console),
        serial_log: full.then_some(paths.serial_log),
        definition: full.then(|| spec.clone()),
    }
}

/// Looks the VM up and takes its operation lock; the definition is read
/// again under the lock (it may have changed or gone while we waited).
async fn locked(
    sup: &Sup,
    name: &str,
) -> ApiResult<(Arc<Vm>, tokio::sync::OwnedMutexGuard<()>, VmSpec)> {
    let spec = sup.lookup(name)?;
    let vm = sup.vm(&spec.uuid());
    let g = vm.op.clone().lock_owned().await;
    let spec = sup
        .store
        .get(&vm.uuid)?
        .ok_or_else(|| OpError::NotFound(format!("no domain named '{name}'")))?;
    Ok((vm, g, spec))
}

/// Runs `fut` as a task (the VM lock is already held and moves into it);
/// answers 202 with the task id.
fn task<F>(sup: &Sup, op: &str, vm: &str, fut: F) -> Response
where
    F: std::future::Future<Output = ApiResult<Value>> + Send + 'static,
{
    let id = sup.tasks.create(op, vm);
    let s = sup.clone();
    tokio::spawn(async move {
        let r = fut.await.map_err(|e| e.to_string());
        s.tasks.finish(id, r);
    });
    (
        StatusCode::ACCEPTED,
        Json(json!({"task": id, "href": format!("/v1/tasks/{id}")})),
    )
        .into_response()
}

// ---- handlers ----------------------------------------------------------

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list(State(sup): State<Sup>, Query(q): Query<ListQuery>) -> ApiResult<Json<Vec<VmInfo>>> {
    let specs = sup.store.list()?;
    Ok(Json(
        specs
            .iter()
            .map(|s| info(&sup, s, false))
            .filter(|i| q.all || i.state.active())
            .collect(),
    ))
}

async fn define(State(sup): State<Sup>, headers: HeaderMap, b: Bytes) -> ApiResult<Response> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let spec = if ct.starts_with("application/json") {
        spec::from_json(&b)
    } else if ct.contains("toml") {
        std::str::from_utf8(&b)
            .map_err(|e| spec::SpecError {
                field: String::new(),
                message: format!("not UTF-8: {e}"),
            })
            .and_then(spec::from_toml)
    } else {
        spec::parse(&b)
    }
    .map_err(|e| OpError::Invalid(e.to_string()))?;
    // Serialized with other operations on the same name.
    let lock = match sup.store.get_by_name(&spec.name)? {
        Some(old) => Some(sup.vm(&old.uuid()).op.clone().lock_owned().await),
        None => None,
    };
    let s = sup.define(spec)?;
    drop(lock);
    Ok((StatusCode::CREATED, Json(info(&sup, &s, true))).into_response())
}

async fn get_vm(State(sup): State<Sup>, Path(name): Path<String>) -> ApiResult<Json<VmInfo>> {
    let spec = sup.lookup(&name)?;
    Ok(Json(info(&sup, &spec, true)))
}

async fn definition(State(sup): State<Sup>, Path(name): Path<String>) -> ApiResult<Response> {
    let spec = sup.lookup(&name)?;
    Ok(([("content-type", "application/toml")], spec.to_toml()).into_response())
}

#[derive(Deserialize)]
struct UndefineQuery {
    #[serde(default)]
    remove_disks: bool,
}

async fn undefine(
    State(sup): State<Sup>,
    Path(name): Path<String>,
    Query(q): Query<UndefineQuery>,
) -> ApiResult<StatusCode> {
    let (vm, _g, spec) = locked(&sup, &name).await?;
    sup.undefine_locked(&vm, &spec, q.remove_disks)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    paused: bool,
}

async fn start(State(sup): State<Sup>, Path(name): Path<String>, b: Bytes) -> ApiResult<Response> {
    let req: StartBody = body(&b)?;
    let (vm, g, spec) = locked(&sup, &name).await?;
    if vm.status().state.active() {
        return Err(OpError::Conflict(format!(
            "domain '{name}' is already active"
        )));
    }
    let s = sup.clone();
    Ok(task(&sup, "start", &spec.name.clone(), async move {
        let _g = g;
        let opts = StartOpts {
            paused: req.paused,
            restore: None,
        };
        s.record(&vm.uuid, |r| r.restarts = 0)?;
        s.start_locked(&vm, &spec, &opts).await?;
        Ok(json!(vm.status()))
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    /// Seconds to wait for the guest before destroying it.
    timeout: Option<u64>,
}

async fn shutdown(
    State(sup): State<Sup>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    let req: ShutdownBody = body(&b)?;
    let (vm, g, spec) = locked(&sup, &name).await?;
    if !vm.status().state.active() {
        return Err(OpError::Conflict(format!("domain '{name}' is not running")));
    }
    let timeout = req
        .timeout
        .map(Duration::from_secs)
        .unwrap_or(sup.cfg.shutdown_timeout);
    let s = sup.clone();
    Ok(task(&sup, "shutdown", &spec.name.clone(), async move {
        let _g = g;
        s.shutdown_locked(&vm, &spec, timeout).await
    }))
}

async fn destroy(State(sup): State<Sup>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let (vm, _g, spec) = locked(&sup, &name).await?;
    sup.destroy_locked(&vm, &spec, "destroyed").await?;
    Ok(Json(json!(vm.status())))
}

async fn suspend(State(sup): State<Sup>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let (vm, _g, spec) = locked(&sup, &name).await?;
    sup.suspend_locked(&vm, &spec).await?;
    Ok(Json(json!(vm.status())))
}

async fn resume(State(sup): State<Sup>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let (vm, _g, spec) = locked(&sup, &name).await?;
    sup.resume_locked(&vm, &spec).await?;
    Ok(Json(json!(vm.status())))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AutostartBody {
    enabled: bool,
}

async fn autostart(
    State(sup): State<Sup>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<Json<VmInfo>> {
    if b.is_empty() {
        return Err(OpError::Invalid(
            "request body: expected {\"enabled\": bool}".into(),
        ));
    }
    let req: AutostartBody = body(&b)?;
    let (_vm, _g, mut spec) = locked(&sup, &name).await?;
    spec.autostart = req.enabled;
    let s = sup.define(spec)?;
    Ok(Json(info(&sup, &s, true)))
}

#[derive(Deserialize)]
struct LogsQuery {
    /// Last N bytes (default 64 KiB).
    tail: Option<u64>,
}

async fn logs(
    State(sup): State<Sup>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    use std::io::{Read, Seek, SeekFrom};
    let spec = sup.lookup(&name)?;
    let p = sup.paths(&spec.uuid()).serial_log;
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(&p) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let n = q.tail.unwrap_or(64 << 10).min(16 << 20).min(len);
        f.seek(SeekFrom::Start(len - n))
            .map_err(anyhow::Error::from)?;
        f.take(n)
            .read_to_end(&mut out)
            .map_err(anyhow::Error::from)?;
    }
    Ok(([("content-type", "text/plain; charset=utf-8")], out).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    name: String,
}

fn check_snapshot_name(n: &str) -> ApiResult<()> {
    if n.is_empty()
        || n.len() > 128
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(OpError::Invalid(format!(
            "name: {n:?}: 1 to 128 letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

async fn snapshot_create(
    State(sup): State<Sup>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    let req: SnapshotBody = body(&b)?;
    snapshot_task(&sup, &name, req.name, "snapshot-create", "snapshot-created").await
}

async fn snapshot_list(State(sup): State<Sup>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let (vm, _g, spec) = locked(&sup, &name).await?;
    let r = sup
        .control_cmd(&vm, &spec, json!({"cmd": "snapshot-list"}))
        .await?;
    Ok(Json(r))
}

async fn snapshot_revert(
    State(sup): State<Sup>,
    Path((name, snap)): Path<(String, String)>,
) -> ApiResult<Response> {
    snapshot_task(&sup, &name, snap, "snapshot-revert", "snapshot-reverted").await
}

/// Create and revert: a task on a running VM that sends `cmd` to its VMM and
/// emits `event` when the VMM has done it.
async fn snapshot_task(
    sup: &Sup,
    name: &str,
    snap: String,
    cmd: &'static str,
    event: &'static str,
) -> ApiResult<Response> {
    check_snapshot_name(&snap)?;
    let (vm, g, spec) = locked(sup, name).await?;
    if !vm.status().state.active() {
        return Err(OpError::Conflict(format!("domain '{name}' is not running")));
    }
    let s = sup.clone();
    Ok(task(sup, cmd, &spec.name.clone(), async move {
        let _g = g;
        let r = s
            .control_cmd(&vm, &spec, json!({"cmd": cmd, "name": snap}))
            .await?;
        s.events.emit(event, &spec.name, &vm.uuid, &snap);
        Ok(r)
    }))
}

async fn snapshot_delete(
    State(sup): State<Sup>,
    Path((name, snap)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_snapshot_name(&snap)?;
    let (vm, _g, spec) = locked(&sup, &name).await?;
    sup.control_cmd(&vm, &spec, json!({"cmd": "snapshot-delete", "name": snap}))
        .await?;
    sup.events
        .emit("snapshot-deleted", &spec.name, &vm.uuid, &snap);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PathBody {
    path: PathBuf,
}

async fn save(State(sup): State<Sup>, Path(name): Path<String>, b: Bytes) -> ApiResult<Response> {
    let req: PathBody = body(&b)?;
    if !req.path.is_absolute() {
        return Err(OpError::Invalid("path: must be an absolute path".into()));
    }
    let (vm, g, spec) = locked(&sup, &name).await?;
    if !vm.status().state.active() {
        return Err(OpError::Conflict(format!("domain '{name}' is not running")));
    }
    let s = sup.clone();
    Ok(task(&sup, "save", &spec.name.clone(), async move {
        let _g = g;
        s.save_locked(&vm, &spec, &req.path).await?;
        Ok(json!({"path": req.path}))
    }))
}

async fn restore(
    State(sup): State<Sup>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    let req: PathBody = body(&b)?;
    if !req.path.is_absolute() {
        return Err(OpError::Invalid("path: must be an absolute path".into()));
    }
    if !req.path.is_file() {
        return Err(OpError::Invalid(format!(
            "path: {} is not a file",
            req.path.display()
        )));
    }
    let (vm, g, spec) = locked(&sup, &name).await?;
    if vm.status().state.active() {
        return Err(OpError::Conflict(format!(
            "domain '{name}' is already active"
        )));
    }
    let s = sup.clone();
    Ok(task(&sup, "restore", &spec.name.clone(), async move {
        let _g = g;
        let opts = StartOpts {
            paused: false,
            restore: Some(req.path),
        };
        s.start_locked(&vm, &spec, &opts).await?;
        Ok(json!(vm.status()))
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CloneBody {
    name: String,
    #[serde(default)]
    linked: bool,
}

async fn clone_vm(
    State(sup): State<Sup>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    let req: CloneBody = body(&b)?;
    spec::check_name(&req.name).map_err(|e| OpError::Invalid(e.to_string()))?;
    let (vm, g, spec) = locked(&sup, &name).await?;
    let s = sup.clone();
    Ok(task(&sup, "clone", &spec.name.clone(), async move {
        let _g = g;
        let s2 = s.clone();
        let new =
            tokio::task::spawn_blocking(move || s2.clone_locked(&vm, &spec, &req.name, req.linked))
                .await
                .map_err(|e| OpError::Internal(e.into()))??;
        Ok(json!(info(&s, &new, true)))
    }))
}

#[derive(Deserialize)]
struct TaskQuery {
    /// Seconds to wait for the task to finish (long poll), at most 600.
    wait: Option<f64>,
}

async fn get_task(
    State(sup): State<Sup>,
    Path(id): Path<u64>,
    Query(q): Query<TaskQuery>,
) -> ApiResult<Json<Value>> {
    let wait = Duration::from_secs_f64(q.wait.unwrap_or(0.0).clamp(0.0, 600.0));
    let t = sup
        .tasks
        .get(id, wait)
        .await
        .ok_or_else(|| OpError::NotFound(format!("no task {id}")))?;
    Ok(Json(json!(t)))
}

#[derive(Deserialize)]
struct EventsQuery {
    vm: Option<String>,
}

async fn events(
    State(sup): State<Sup>,
    Query(q): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = sup.events.subscribe();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| {
        let e = r.ok()?;
        if q.vm.as_ref().is_some_and(|v| *v != e.vm && *v != e.uuid) {
            return None;
        }
        Some(Ok(SseEvent::default()
            .event(e.event.clone())
            .id(e.seq.to_string())
            .data(serde_json::to_string(&e).unwrap_or_default())))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// ---- containers -----------------------------------------------------------

async fn ctr_list(State(sup): State<Sup>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(sup.containers.list(q.all).await?)))
}

async fn ctr_run(State(sup): State<Sup>, b: Bytes) -> ApiResult<Response> {
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Err(OpError::Invalid(
            "request body: expected {\"image\": \"NAME\", …}".into(),
        ));
    }
    let req: crate::containers::RunBody = body(&b)?;
    let opts = crate::containers::run_opts(req).map_err(OpError::Invalid)?;
    let v = sup.containers.run(opts).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn ctr_inspect(State(sup): State<Sup>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(sup.containers.inspect(&id).await?))
}

async fn ctr_start(State(sup): State<Sup>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(sup.containers.start(&id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct StopBody {
    /// Seconds between the stop signal and SIGKILL (default 10).
    pub timeout: Option<u64>,
}

fn stop_timeout(b: &Bytes) -> ApiResult<Duration> {
    let req: StopBody = body(b)?;
    Ok(Duration::from_secs(req.timeout.unwrap_or(10).min(3600)))
}

async fn ctr_stop(
    State(sup): State<Sup>,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Json<Value>> {
    let t = stop_timeout(&b)?;
    Ok(Json(sup.containers.stop(&id, t).await?))
}

async fn ctr_restart(
    State(sup): State<Sup>,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Json<Value>> {
    let t = stop_timeout(&b)?;
    Ok(Json(sup.containers.restart(&id, t).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignalBody {
    /// Default SIGKILL.
    pub signal: Option<String>,
}

async fn ctr_kill(
    State(sup): State<Sup>,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Json<Value>> {
    let req: SignalBody = body(&b)?;
    let sig = crate::containers::signal(req.signal.as_deref().unwrap_or("KILL"))
        .map_err(OpError::Invalid)?;
    Ok(Json(sup.containers.kill(&id, sig).await?))
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn ctr_remove(
    State(sup): State<Sup>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<StatusCode> {
    sup.containers.remove(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct CtrLogsQuery {
    /// Last N lines (default all).
    tail: Option<usize>,
}

async fn ctr_logs(
    State(sup): State<Sup>,
    Path(id): Path<String>,
    Query(q): Query<CtrLogsQuery>,
) -> ApiResult<Response> {
    let out = sup.containers.logs(&id, q.tail).await?;
    Ok(([("content-type", "text/plain; charset=utf-8")], out).into_response())
}

async fn not_found() -> OpError {
    OpError::NotFound("no such endpoint (see /v1/openapi.json)".into())
}

// ---- router and the route table --------------------------------------

/// (method, path, summary, request body, success status).
pub const ROUTES: &[(&str, &str, &str, Option<&str>, u16)] = &[
    ("get", "/v1/openapi.json", "This document", None, 200),
    (
        "get",
        "/v1/vms",
        "List VMs (active ones; ?all=true for all)",
        None,
        200,
    ),
    (
        "post",
        "/v1/vms",
        "Define (or redefine) a VM from TOML or JSON",
        Some("VmSpec"),
        201,
    ),
    (
        "get",
        "/v1/vms/{name}",
        "A VM's state and definition",
        None,
        200,
    ),
    (
        "delete",
        "/v1/vms/{name}",
        "Undefine a shut-off VM (?remove_disks=true)",
        None,
        204,
    ),
    (
        "get",
        "/v1/vms/{name}/definition",
        "The definition as TOML",
        None,
        200,
    ),
    (
        "post",
        "/v1/vms/{name}/start",
        "Start (task); body {\"paused\":bool}",
        Some("StartBody"),
        202,
    ),
    (
        "post",
        "/v1/vms/{name}/shutdown",
        "Guest shutdown, then destroy after the timeout (task)",
        Some("ShutdownBody"),
        202,
    ),
    (
        "post",
        "/v1/vms/{name}/destroy",
        "Stop now (disks flushed)",
        None,
        200,
    ),
    (
        "post",
        "/v1/vms/{name}/suspend",
        "Pause the vCPUs",
        None,
        200,
    ),
    (
        "post",
        "/v1/vms/{name}/resume",
        "Resume the vCPUs",
        None,
        200,
    ),
    (
        "put",
        "/v1/vms/{name}/autostart",
        "Set autostart; body {\"enabled\":bool}",
        Some("AutostartBody"),
        200,
    ),
    (
        "get",
        "/v1/vms/{name}/logs",
        "Serial console log (?tail=BYTES)",
        None,
        200,
    ),
    (
        "get",
        "/v1/vms/{name}/snapshots",
        "List snapshots",
        None,
        200,
    ),
    (
        "post",
        "/v1/vms/{name}/snapshots",
        "Create a snapshot (task); body {\"name\"}",
        Some("SnapshotBody"),
        202,
    ),
    (
        "post",
        "/v1/vms/{name}/snapshots/{snapshot}/revert",
        "Revert to a snapshot (task)",
        None,
        202,
    ),
    (
        "delete",
        "/v1/vms/{name}/snapshots/{snapshot}",
        "Delete a snapshot",
        None,
        204,
    ),
    (
        "post",
        "/v1/vms/{name}/save",
        "Pause, save the state to a file, stop (task); body {\"path\"}",
        Some("PathBody"),
        202,
    ),
    (
        "post",
        "/v1/vms/{name}/restore",
        "Start from a saved state file (task); body {\"path\"}",
        Some("PathBody"),
        202,
    ),
    (
        "post",
        "/v1/vms/{name}/clone",
        "Clone a shut-off VM (task); body {\"name\",\"linked\"}",
        Some("CloneBody"),
        202,
    ),
    (
        "get",
        "/v1/containers",
        "List containers (running ones; ?all=true for all)",
        None,
        200,
    ),
    (
        "post",
        "/v1/containers",
        "Create and start a container (`run -d`)",
        Some("ContainerRun"),
        201,
    ),
    (
        "get",
        "/v1/containers/{id}",
        "A container's configuration and state (by name, ID or ID prefix)",
        None,
        200,
    ),
    (
        "delete",
        "/v1/containers/{id}",
        "Remove a container (?force=true kills a running one)",
        None,
        204,
    ),
    (
        "post",
        "/v1/containers/{id}/start",
        "Start a created or exited container",
        None,
        200,
    ),
    (
        "post",
        "/v1/containers/{id}/stop",
        "Stop signal, then SIGKILL after the timeout; body {\"timeout\":SECONDS}",
        Some("StopBody"),
        200,
    ),
    (
        "post",
        "/v1/containers/{id}/restart",
        "Stop (as /stop), then start",
        Some("StopBody"),
        200,
    ),
    (
        "post",
        "/v1/containers/{id}/kill",
        "Send a signal (default SIGKILL); body {\"signal\":NAME}",
        Some("SignalBody"),
        200,
    ),
    (
        "get",
        "/v1/containers/{id}/logs",
        "Output, both streams in order (?tail=LINES)",
        None,
        200,
    ),
    (
        "get",
        "/v1/tasks/{id}",
        "A task (?wait=SECONDS long-polls until it ends)",
        None,
        200,
    ),
    (
        "get",
        "/v1/events",
        "Lifecycle events (Server-Sent Events; ?vm=NAME)",
        None,
        200,
    ),
];

pub fn router(sup: Sup) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/vms", get(list).post(define))
        .route("/v1/vms/{name}", get(get_vm).delete(undefine))
        .route("/v1/vms/{name}/definition", get(definition))
        .route("/v1/vms/{name}/start", post(start))
        .route("/v1/vms/{name}/shutdown", post(shutdown))
        .route("/v1/vms/{name}/destroy", post(destroy))
        .route("/v1/vms/{name}/suspend", post(suspend))
        .route("/v1/vms/{name}/resume", post(resume))
        .route("/v1/vms/{name}/autostart", put(autostart))
        .route("/v1/vms/{name}/logs", get(logs))
        .route(
            "/v1/vms/{name}/snapshots",
            get(snapshot_list).post(snapshot_create),
        )
        .route(
            "/v1/vms/{name}/snapshots/{snapshot}/revert",
            post(snapshot_revert),
        )
        .route(
            "/v1/vms/{name}/snapshots/{snapshot}",
            axum::routing::delete(snapshot_delete),
        )
        .route("/v1/vms/{name}/save", post(save))
        .route("/v1/vms/{name}/restore", post(restore))
        .route("/v1/vms/{name}/clone", post(clone_vm))
        .route("/v1/containers", get(ctr_list).post(ctr_run))
        .route("/v1/containers/{id}", get(ctr_inspect).delete(ctr_remove))
        .route("/v1/containers/{id}/start", post(ctr_start))
        .route("/v1/containers/{id}/stop", post(ctr_stop))
        .route("/v1/containers/{id}/restart", post(ctr_restart))
        .route("/v1/containers/{id}/kill", post(ctr_kill))
        .route("/v1/containers/{id}/logs", get(ctr_logs))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/events", get(events))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(sup)
}

/// Wraps the router with a bearer-token check (for the TCP listener).
pub fn with_token(r: Router, token: String) -> Router {
    let token = Arc::new(token);
    r.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let token = token.clone();
            async move {
                let ok = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
                if ok {
                    next.run(req).await
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        [("www-authenticate", "Bearer")],
                        Json(json!({"error": "missing or wrong bearer token"})),
                    )
                        .into_response()
                }
            }
        },
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn schemas() -> Value {
    let s = |t: &str| json!({"type": t});
    json!({
        "VmSpec": {
            "type": "object",
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"},
                "uuid": {"type": "string", "format": "uuid"},
                "arch": {"type": "string", "enum": ["riscv64", "x86_64"], "default": "riscv64"},
                "accel": {"type": "string", "enum": ["emu", "kvm"]},
                "cpus": {"type": "integer", "minimum": 1, "default": 1},
                "memory": {"type": "string", "default": "512M"},
                "kernel": s("string"),
                "firmware": s("string"),
                "initrd": s("string"),
                "cmdline": s("string"),
                "disks": {"type": "array", "items": {
                    "type": "object", "additionalProperties": false, "required": ["path"],
                    "properties": {
                        "path": s("string"),
                        "format": {"type": "string", "enum": ["raw", "qcow2"]},
                        "readonly": s("boolean"),
                        "serial": s("string")
                    }}},
                "nics": {"type": "array", "items": {
                    "type": "object", "additionalProperties": false,
                    "properties": {"tap": s("string"), "bridge": s("string"), "mac": s("string")}}},
                "restart": {"type": "string", "pattern": "^(no|always|on-failure(:[0-9]+)?)$", "default": "no"},
                "autostart": {"type": "boolean", "default": false}
            }
        },
        "StartBody": {"type": "object", "additionalProperties": false, "properties": {"paused": s("boolean")}},
        "ShutdownBody": {"type": "object", "additionalProperties": false, "properties": {"timeout": {"type": "integer", "minimum": 0}}},
        "AutostartBody": {"type": "object", "additionalProperties": false, "required": ["enabled"], "properties": {"enabled": s("boolean")}},
        "SnapshotBody": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {"name": s("string")}},
        "PathBody": {"type": "object", "additionalProperties": false, "required": ["path"], "properties": {"path": s("string")}},
        "CloneBody": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {"name": s("string"), "linked": s("boolean")}},
        "ContainerRun": {
            "type": "object",
            "additionalProperties": false,
            "required": ["image"],
            "properties": {
                "image": s("string"),
                "name": {"type": "string", "pattern": "^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"},
                "cmd": {"type": "array", "items": s("string")},
                "entrypoint": s("string"),
                "env": {"type": "array", "items": {"type": "string", "description": "KEY=VALUE"}},
                "workdir": s("string"),
                "user": s("string"),
                "hostname": s("string"),
                "restart": {"type": "string", "pattern": "^(no|always|unless-stopped|on-failure(:[0-9]+)?)$", "default": "no"},
                "memory": {"type": "string", "description": "bytes with an optional k/m/g suffix", "example": "64m"},
                "cpus": {"type": "number", "exclusiveMinimum": 0},
                "pids_limit": {"type": "integer", "minimum": 1},
                "network": {"type": "string", "enum": ["bridge", "host", "none"], "default": "bridge"},
                "ports": {"type": "array", "items": {"type": "string", "description": "HOST:CONTAINER[/tcp|udp]"}},
                "volumes": {"type": "array", "items": {"type": "string", "description": "/HOST:/CONTAINER[:ro]"}}
            }
        },
        "StopBody": {"type": "object", "additionalProperties": false, "properties": {"timeout": {"type": "integer", "minimum": 0, "default": 10}}},
        "SignalBody": {"type": "object", "additionalProperties": false, "properties": {"signal": {"type": "string", "default": "SIGKILL"}}},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": s("string")}},
        "TaskRef": {"type": "object", "properties": {"task": s("integer"), "href": s("string")}}
    })
}

/// The OpenAPI 3.0 document, built from [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, body, status) in ROUTES {
        let mut params = Vec::new();
        for p in ["name", "snapshot", "id"] {
            if path.contains(&format!("{{{p}}}")) {
                params.push(json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}));
            }
        }
        let ok = match status {
            202 => {
                json!({"description": "Accepted: a task", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskRef"}}}})
            }
            204 => json!({"description": "Done"}),
            _ => json!({"description": "OK"}),
        };
        let err = json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        let mut op = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                status.to_string(): ok,
                "400": err.clone(), "404": err.clone(), "409": err.clone(), "413": {"description": "Body too large"}
            }
        });
        if let Some(b) = body {
            let mut content = serde_json::Map::new();
            content.insert(
                "application/json".into(),
                json!({"schema": {"$ref": format!("#/components/schemas/{b}")}}),
            );
            if *b == "VmSpec" {
                content.insert(
                    "application/toml".into(),
                    json!({"schema": {"type": "string"}}),
                );
            }
            op["requestBody"] = json!({"required": *b == "VmSpec", "content": content});
        }
        paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .insert(method.to_string(), op);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "ferrod",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Ferrovisor's management API: VM definitions, lifecycle, snapshots, clones, events; containers (the same ones as `ferro container`) with restart policies. Served on a Unix socket (mode 0600) and optionally on TCP with a bearer token."
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/openapi.json is the document the daemon serves (regenerate
    /// with `FERROD_BLESS=1 cargo test -p ferrod openapi`).
    #[test]
    fn openapi_committed_matches_generated() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = serde_json::to_string_pretty(&openapi_document()).unwrap() + "\n";
        if std::env::var_os("FERROD_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).expect("docs/openapi.json");
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run FERROD_BLESS=1 cargo test -p ferrod openapi"
        );
    }

    #[test]
    fn route_table_is_consistent() {
        let doc = openapi_document();
        let n: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_object().unwrap().len())
            .sum();
        assert_eq!(n, ROUTES.len(), "duplicate (method, path) in ROUTES");
        for (_, path, _, body, _) in ROUTES {
            assert!(path.starts_with("/v1/"));
            if let Some(b) = body {
                assert!(schemas().get(b).is_some(), "schema {b} missing");
            }
        }
    }
}
