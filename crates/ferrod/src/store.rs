//! The persistent store: VM definitions and each VM's last known run state,
//! in one SQLite database (`ferrod.db` in the state dir).
//!
//! SQLite in WAL mode with `synchronous=FULL`: every define/undefine/edit is
//! one transaction, so a `kill -9` (or power loss) at any instant leaves
//! either the old or the new definition, never a torn one; readers (the API's
//! list/info) do not block the writer.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::spec::VmSpec;

pub struct Store {
    conn: Mutex<Connection>,
}

/// What the daemon remembers about a VM's process across its own restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRecord {
    /// The VM should be running (started through the API or by autostart,
    /// and not stopped through the API since).
    pub want_running: bool,
    pub pid: Option<i32>,
    /// /proc/PID/stat start time, to tell our VMM from a reused PID.
    pub pid_start: Option<u64>,
    pub restarts: u32,
}

/// Errors the API maps to 4xx codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("domain '{0}' already exists with UUID {1}")]
    NameTaken(String, String),
    #[error("UUID {0} already belongs to domain '{1}'")]
    UuidTaken(String, String),
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS vms (
                 uuid TEXT PRIMARY KEY,
                 name TEXT NOT NULL UNIQUE,
                 spec TEXT NOT NULL,
                 created INTEGER NOT NULL,
                 updated INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS runs (
                 uuid TEXT PRIMARY KEY REFERENCES vms(uuid) ON DELETE CASCADE,
                 want_running INTEGER NOT NULL,
                 pid INTEGER,
                 pid_start INTEGER,
                 restarts INTEGER NOT NULL DEFAULT 0
             );",
        )
        .context("cannot create the database schema")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (the transaction rolls back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts or replaces the definition named `spec.name` (which must be
    /// normalized: it has a UUID). Returns the previous definition.
    pub fn define(&self, spec: &VmSpec) -> Result<Option<VmSpec>> {
        let uuid = spec.uuid().to_string();
        let json = serde_json::to_string(spec)?;
        let now = now();
        let mut c = self.conn();
        let tx = c.transaction()?;
        let by_name: Option<(String, String)> = tx
            .query_row(
                "SELECT uuid, spec FROM vms WHERE name = ?1",
                [&spec.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let by_uuid: Option<String> = tx
            .query_row("SELECT name FROM vms WHERE uuid = ?1", [&uuid], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some((u, _)) = &by_name {
            if *u != uuid {
                return Err(StoreError::NameTaken(spec.name.clone(), u.clone()).into());
            }
        }
        if let Some(n) = &by_uuid {
            if *n != spec.name {
                return Err(StoreError::UuidTaken(uuid, n.clone()).into());
            }
        }
        let previous = match by_name {
            Some((_, old)) => {
                tx.execute(
                    "UPDATE vms SET spec = ?1, updated = ?2 WHERE uuid = ?3",
                    params![json, now, uuid],
                )?;
                Some(serde_json::from_str(&old)?)
            }
            None => {
                tx.execute(
                    "INSERT INTO vms (uuid, name, spec, created, updated) VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![uuid, spec.name, json, now],
                )?;
                None
            }
        };
        tx.commit()?;
        Ok(previous)
    }

    pub fn undefine(&self, uuid: &uuid::Uuid) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM vms WHERE uuid = ?1", [uuid.to_string()])?;
        Ok(n > 0)
    }

    pub fn get_by_name(&self, name: &str) -> Result<Option<VmSpec>> {
        let c = self.conn();
        let s: Option<String> = c
            .query_row("SELECT spec FROM vms WHERE name = ?1", [name], |r| r.get(0))
            .optional()?;
        s.map(|s| serde_json::from_str(&s).context("stored definition is unreadable"))
            .transpose()
    }

    pub fn get(&self, uuid: &uuid::Uuid) -> Result<Option<VmSpec>> {
        let c = self.conn();
        let s: Option<String> = c
            .query_row(
                "SELECT spec FROM vms WHERE uuid = ?1",
                [uuid.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        s.map(|s| serde_json::from_str(&s).context("stored definition is unreadable"))
            .transpose()
    }

    pub fn list(&self) -> Result<Vec<VmSpec>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT spec FROM vms ORDER BY name")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?).context("stored definition is unreadable")?);
        }
        Ok(out)
    }

    pub fn run_record(&self, uuid: &uuid::Uuid) -> Result<RunRecord> {
        let c = self.conn();
        Ok(c.query_row(
            "SELECT want_running, pid, pid_start, restarts FROM runs WHERE uuid = ?1",
            [uuid.to_string()],
            |r| {
                Ok(RunRecord {
                    want_running: r.get(0)?,
                    pid: r.get(1)?,
                    pid_start: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                    restarts: r.get(3)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
    }

    pub fn set_run_record(&self, uuid: &uuid::Uuid, rec: &RunRecord) -> Result<()> {
        // A VM undefined meanwhile has no row to refer to: nothing to record.
        self.conn().execute(
            "INSERT INTO runs (uuid, want_running, pid, pid_start, restarts)
             SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM vms WHERE uuid = ?1)
             ON CONFLICT(uuid) DO UPDATE SET want_running = ?2, pid = ?3, pid_start = ?4, restarts = ?5",
            params![
                uuid.to_string(),
                rec.want_running,
                rec.pid,
                rec.pid_start.map(|v| v as i64),
                rec.restarts
            ],
        )?;
        Ok(())
    }

    /// `PRAGMA integrity_check` (used by the crash tests).
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    #[test]
    fn define_update_conflicts_undefine() {
        let d = tempfile::tempdir().unwrap();
        let st = Store::open(&d.path().join("db")).unwrap();
        let mut a = spec::from_toml("name = \"a\"\n").unwrap();
        a.normalize(None);
        assert!(st.define(&a).unwrap().is_none());
        let mut a2 = a.clone();
        a2.cpus = 2;
        assert_eq!(st.define(&a2).unwrap(), Some(a.clone()));
        assert_eq!(st.get_by_name("a").unwrap().unwrap().cpus, 2);
        // Same name, other UUID; same UUID, other name.
        let mut b = a.clone();
        b.uuid = Some(uuid::Uuid::new_v4());
        assert!(st
            .define(&b)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        let mut c = a.clone();
        c.name = "c".into();
        assert!(st
            .define(&c)
            .unwrap_err()
            .to_string()
            .contains("already belongs"));
        let rec = RunRecord {
            want_running: true,
            pid: Some(42),
            pid_start: Some(7),
            restarts: 1,
        };
        st.set_run_record(&a.uuid(), &rec).unwrap();
        assert_eq!(st.run_record(&a.uuid()).unwrap(), rec);
        drop(st);
        // Reopened: everything is still there.
        let st = Store::open(&d.path().join("db")).unwrap();
        assert_eq!(st.list().unwrap().len(), 1);
        assert_eq!(st.run_record(&a.uuid()).unwrap(), rec);
        assert!(st.undefine(&a.uuid()).unwrap());
        assert!(!st.undefine(&a.uuid()).unwrap());
        assert_eq!(st.run_record(&a.uuid()).unwrap(), RunRecord::default());
        assert_eq!(st.integrity_check().unwrap(), "ok");
    }
}
