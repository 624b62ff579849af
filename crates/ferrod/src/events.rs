//! Lifecycle events (libvirt's names: defined, undefined, started, suspended,
//! resumed, stopped, crashed, snapshot-*) and long-running tasks. Events fan
//! out to every `GET /v1/events` stream through a broadcast channel; tasks
//! are kept in memory (a task of a killed daemon is gone; its effect is not).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::{broadcast, watch};

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    pub event: String,
    pub vm: String,
    pub uuid: String,
    /// libvirt-style detail: `booted`, `destroyed`, `panicked`, …
    pub detail: String,
}

pub struct Events {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(1024).0,
            seq: AtomicU64::new(1),
        }
    }
}

impl Events {
    pub fn emit(&self, event: &str, vm: &str, uuid: &uuid::Uuid, detail: &str) {
        let e = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            time_ms: now_ms(),
            event: event.into(),
            vm: vm.into(),
            uuid: uuid.to_string(),
            detail: detail.into(),
        };
        tracing::info!(event = %e.event, vm = %e.vm, detail = %e.detail, "event");
        // No subscriber is not an error.
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Task {
    pub id: u64,
    pub op: String,
    pub vm: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

#[derive(Default)]
pub struct Tasks {
    next: AtomicU64,
    map: Mutex<HashMap<u64, watch::Sender<Task>>>,
}

impl Tasks {
    pub fn create(&self, op: &str, vm: &str) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let t = Task {
            id,
            op: op.into(),
            vm: vm.into(),
            state: "running".into(),
            result: None,
            error: None,
            started_ms: now_ms(),
            finished_ms: None,
        };
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded memory: forget the oldest finished tasks.
        if m.len() >= 4096 {
            let mut done: Vec<u64> = m
                .iter()
                .filter(|(_, t)| t.borrow().state != "running")
                .map(|(k, _)| *k)
                .collect();
            done.sort_unstable();
            for k in done.iter().take(1024) {
                m.remove(k);
            }
        }
        m.insert(id, watch::channel(t).0);
        id
    }

    pub fn finish(&self, id: u64, r: Result<serde_json::Value, String>) {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = m.get(&id) {
            tx.send_modify(|t| {
                t.finished_ms = Some(now_ms());
                match r {
                    Ok(v) => {
                        t.state = "done".into();
                        t.result = Some(v);
                    }
                    Err(e) => {
                        t.state = "failed".into();
                        t.error = Some(e);
                    }
                }
            });
        }
    }

    /// The task, after waiting up to `wait` for it to finish.
    pub async fn get(&self, id: u64, wait: std::time::Duration) -> Option<Task> {
        let mut rx = {
            let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
            m.get(&id)?.subscribe()
        };
        let _ = tokio::time::timeout(wait, rx.wait_for(|t| t.state != "running")).await;
        let t = rx.borrow().clone();
        Some(t)
    }
}
