//! The migrations a coordinator knows: one record each (what `GET /v1/migrations` shows) and
//! the containers that are migrating right now (a second migration of the same container is
//! refused).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::api::{PartialPhasesMs, Phase, Record, Report, Role, State};
use crate::approach::Approach;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::refs::ContainerRef;

/// Finished records kept for `GET /v1/migrations`.
const KEEP_FINISHED: usize = 200;

struct Entry {
    record: Record,
    started: Instant,
    container: ContainerRef,
    /// The destination was asked to abort before it was ready.
    abort_requested: bool,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// container -> migration id, while a migration of it runs.
    active: HashMap<ContainerRef, String>,
    finished: VecDeque<String>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Counts every migration that ends (`GET /metrics`).
    metrics: Metrics,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers migration `id` of `container`; refused while another one of the same container
    /// runs here (as source or destination) or if the id is known.
    pub fn begin(&self, id: &str, container: &ContainerRef, role: Role, peer: &str) -> Result<()> {
        let mut g = self.lock();
        if let Some(other) = g.active.get(container) {
            return Err(Error::Conflict(format!(
                "a migration of {container} is already in progress here ({other})"
            )));
        }
        if g.entries.contains_key(id) {
            return Err(Error::Conflict(format!(
                "migration {id} is already known here"
            )));
        }
        g.active.insert(container.clone(), id.to_string());
        let phase = match role {
            Role::Source => Phase::PreMigration,
            Role::Destination => Phase::Preparing,
        };
        g.entries.insert(
            id.to_string(),
            Entry {
                record: Record {
                    migration_id: id.to_string(),
                    container: container.to_string(),
                    approach: Approach::Container.as_str().to_string(),
                    role,
                    peer: peer.to_string(),
                    phase,
                    state: State::Running,
                    bytes: 0,
                    started_at_ms: now_ms(),
                    elapsed_ms: 0,
                    phases_ms: PartialPhasesMs::default(),
                    error: None,
                    error_kind: None,
                    note: None,
                    result: None,
                },
                started: Instant::now(),
                container: container.clone(),
                abort_requested: false,
            },
        );
        Ok(())
    }

    fn with<R>(&self, id: &str, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let mut g = self.lock();
        g.entries.get_mut(id).map(f)
    }

    pub fn set_phase(&self, id: &str, phase: Phase) {
        self.with(id, |e| e.record.phase = phase);
    }

    /// The approach migration `id` takes (the container-level one unless told otherwise).
    pub fn set_approach(&self, id: &str, approach: &str) {
        self.with(id, |e| e.record.approach = approach.to_string());
    }

    pub fn set_bytes(&self, id: &str, bytes: u64) {
        self.with(id, |e| e.record.bytes = bytes);
    }

    pub fn update_phases(&self, id: &str, f: impl FnOnce(&mut PartialPhasesMs)) {
        self.with(id, |e| f(&mut e.record.phases_ms));
    }

    pub fn request_abort(&self, id: &str) -> bool {
        self.with(id, |e| {
            e.abort_requested = true;
        })
        .is_some()
    }

    pub fn abort_requested(&self, id: &str) -> bool {
        self.with(id, |e| e.abort_requested).unwrap_or(false)
    }

    /// Ends migration `id` (its container may migrate again).
    pub fn finish(&self, id: &str, state: State, error: Option<&Error>, result: Option<Report>) {
        let mut g = self.lock();
        let Some(e) = g.entries.get_mut(id) else {
            return;
        };
        let was_running = e.record.state == State::Running;
        e.record.state = state;
        e.record.elapsed_ms = e.started.elapsed().as_millis() as u64;
        // A failed migration keeps the phase it failed in.
        if state == State::Completed {
            e.record.phase = Phase::Done;
        }
        if let Some(err) = error {
            e.record.error = Some(err.to_string());
            e.record.error_kind = Some(err.kind().to_string());
        }
        if let Some(r) = result {
            e.record.bytes = r.bytes;
            e.record.result = Some(r);
        }
        if was_running {
            self.metrics.migration_ended(&e.record);
        }
        let container = e.container.clone();
        if g.active.get(&container).map(String::as_str) == Some(id) {
            g.active.remove(&container);
        }
        if was_running {
            g.finished.push_back(id.to_string());
        }
        while g.finished.len() > KEEP_FINISHED {
            if let Some(old) = g.finished.pop_front() {
                g.entries.remove(&old);
            }
        }
    }

    /// Ends migration `id` as completed without its figures, saying how (a restarted source's).
    pub fn complete_without_result(&self, id: &str, note: String) {
        // The note first: a reader never sees the migration completed without it.
        self.with(id, |e| e.record.note = Some(note));
        self.finish(id, State::Completed, None, None);
    }

    /// Records a failure in the current phase without ending the migration (the destination
    /// keeps its resources until the source aborts or the watchdog fires).
    pub fn note_error(&self, id: &str, error: &Error) {
        self.with(id, |e| {
            e.record.error = Some(error.to_string());
            e.record.error_kind = Some(error.kind().to_string());
        });
    }

    pub fn get(&self, id: &str) -> Option<Record> {
        self.with(id, |e| {
            let mut r = e.record.clone();
            if r.state == State::Running {
                r.elapsed_ms = e.started.elapsed().as_millis() as u64;
            }
            r
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Migrations running now, by role.
    pub fn running(&self) -> [(Role, u64); 2] {
        let g = self.lock();
        let count = |role| {
            g.entries
                .values()
                .filter(|e| e.record.state == State::Running && e.record.role == role)
                .count() as u64
        };
        [
            (Role::Source, count(Role::Source)),
            (Role::Destination, count(Role::Destination)),
        ]
    }

    pub fn state(&self, id: &str) -> Option<State> {
        self.with(id, |e| e.record.state)
    }

    /// All records, oldest first.
    pub fn list(&self) -> Vec<Record> {
        let g = self.lock();
        let mut v: Vec<Record> = g
            .entries
            .values()
            .map(|e| {
                let mut r = e.record.clone();
                if r.state == State::Running {
                    r.elapsed_ms = e.started.elapsed().as_millis() as u64;
                }
                r
            })
            .collect();
        v.sort_by(|a, b| {
            a.started_at_ms
                .cmp(&b.started_at_ms)
                .then_with(|| a.migration_id.cmp(&b.migration_id))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_second_migration_of_the_same_container() {
        let reg = Registry::new();
        let web1 = ContainerRef::parse("default/web1").unwrap();
        let web2 = ContainerRef::parse("default/web2").unwrap();
        reg.begin("m1", &web1, Role::Source, "http://b").unwrap();
        let e = reg
            .begin("m2", &web1, Role::Source, "http://b")
            .unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        assert!(e.to_string().contains("m1"));
        // Also as destination.
        assert!(reg.begin("m3", &web1, Role::Destination, "a").is_err());
        reg.begin("m4", &web2, Role::Source, "http://b").unwrap();
        // Same id again.
        let web3 = ContainerRef::parse("default/web3").unwrap();
        assert!(reg.begin("m4", &web3, Role::Source, "http://b").is_err());

        reg.set_phase("m1", Phase::Checkpoint);
        reg.set_bytes("m1", 42);
        let r = reg.get("m1").unwrap();
        assert_eq!(
            (r.phase, r.bytes, r.state),
            (Phase::Checkpoint, 42, State::Running)
        );

        reg.finish(
            "m1",
            State::Failed,
            Some(&Error::Shim {
                op: "Dump".into(),
                message: "boom".into(),
            }),
            None,
        );
        let r = reg.get("m1").unwrap();
        assert_eq!(r.state, State::Failed);
        assert_eq!(r.error.as_deref(), Some("shim Dump: boom"));
        assert_eq!(r.error_kind.as_deref(), Some("shim"));
        // Free again.
        reg.begin("m5", &web1, Role::Source, "http://b").unwrap();
        assert_eq!(reg.list().len(), 3);
    }

    #[test]
    fn completed_without_its_figures_says_how_and_no_error() {
        let reg = Registry::new();
        let c = ContainerRef::parse("default/web1").unwrap();
        reg.begin("m1", &c, Role::Source, "http://b").unwrap();
        reg.complete_without_result("m1", "restarted; b had restored the service".into());
        let r = reg.get("m1").unwrap();
        assert_eq!((r.state, r.phase), (State::Completed, Phase::Done));
        assert_eq!(
            r.note.as_deref(),
            Some("restarted; b had restored the service")
        );
        assert!(r.error.is_none() && r.error_kind.is_none() && r.result.is_none());
    }

    #[test]
    fn keeps_a_bounded_history() {
        let reg = Registry::new();
        for i in 0..(KEEP_FINISHED + 10) {
            let id = format!("m{i}");
            let c = ContainerRef::parse(&format!("default/c{i}")).unwrap();
            reg.begin(&id, &c, Role::Source, "x").unwrap();
            reg.finish(&id, State::Completed, None, None);
        }
        assert_eq!(reg.list().len(), KEEP_FINISHED);
        assert!(reg.get("m0").is_none());
        // The metrics count them all, and each once.
        reg.finish("m1", State::Failed, None, None);
        let t = reg.metrics().render("a", &reg.running());
        let n = KEEP_FINISHED + 10;
        assert!(
            t.contains(&format!("role=\"source\",outcome=\"completed\"}} {n}\n")),
            "{t}"
        );
        assert!(!t.contains("outcome=\"failed\""), "{t}");
    }

    #[test]
    fn abort_requests() {
        let reg = Registry::new();
        let c = ContainerRef::parse("default/web1").unwrap();
        assert!(!reg.request_abort("m1"));
        reg.begin("m1", &c, Role::Destination, "a").unwrap();
        assert!(!reg.abort_requested("m1"));
        assert!(reg.request_abort("m1"));
        assert!(reg.abort_requested("m1"));
    }
}
