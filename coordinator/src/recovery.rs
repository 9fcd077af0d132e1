//! Restart recovery of the source side. A coordinator that dies in the middle of a migration
//! leaves its shim's service frozen (after a Dump it stays frozen until Commit or Abort) and the
//! destination's prepared container behind. So every source migration is journaled in
//! `<state-dir>/migrations/<id>.json` while it runs, with the phase it reached; at start-up the
//! coordinator finds the journals of the migrations an earlier run left in flight and ends them:
//!
//! - before the destination was asked to restore (pre_migration, checkpoint): aborted: the
//!   shim's dump (which goes on without its caller) is waited for and its service resumed
//!   (Abort), the destination told to abort (it removes what it made);
//! - restore asked: the destination's record decides. Restored there: the source finishes the
//!   post-migration (Commit, task and container deleted); not restored: aborted as above; the
//!   destination unreachable or without a record: the service stays frozen (resuming it could
//!   run it twice) and the journal stays for the next start;
//! - post_migration: the destination runs the service: Commit and delete here.
//!
//! Each is registered as it was found (so `GET /v1/migrations/{id}` answers and a new migration
//! of the container is refused meanwhile) and ends `failed` with the cause, or `completed`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use serde::{Deserialize, Serialize};

use crate::api::{Phase, Record, Role, State};
use crate::coordinator::Coordinator;
use crate::error::{Error, Result};
use crate::refs::{ContainerRef, PeerUrl};
use crate::shim::Shim;

const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the destination may take to finish a restore it is running.
const RESTORE_WAIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(200);

/// What a running source migration leaves on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Journal {
    pub migration_id: String,
    #[serde(rename = "ref")]
    pub container: ContainerRef,
    /// The destination coordinator's URL.
    pub peer: String,
    pub peer_name: String,
    pub phase: Phase,
    pub started_at_ms: u64,
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("migrations")
}

fn file(state_dir: &Path, id: &str) -> PathBuf {
    dir(state_dir).join(format!("{id}.json"))
}

impl Journal {
    pub fn new(id: &str, container: &ContainerRef, peer: &str, peer_name: &str) -> Journal {
        Journal {
            migration_id: id.to_string(),
            container: container.clone(),
            peer: peer.to_string(),
            peer_name: peer_name.to_string(),
            phase: Phase::PreMigration,
            started_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }

    /// Records that the migration entered `phase` (written whole, then renamed into place). A
    /// journal that cannot be written costs only the recovery: warned about, not fatal.
    pub async fn enter(&mut self, state_dir: &Path, phase: Phase) {
        self.phase = phase;
        let id = &self.migration_id;
        let res = async {
            let d = dir(state_dir);
            tokio::fs::create_dir_all(&d)
                .await
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
            let body = serde_json::to_vec(self)
                .map_err(|e| Error::Internal(format!("encoding the journal: {e}")))?;
            let f = file(state_dir, id);
            let tmp = f.with_extension("tmp");
            tokio::fs::write(&tmp, body)
                .await
                .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
            tokio::fs::rename(&tmp, &f)
                .await
                .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
        }
        .await;
        if let Err(e) = res {
            warn!("migration {id}: journal: {e} (a restart of this coordinator could not end the migration)");
        }
    }

    /// The migration has ended: nothing to recover.
    pub async fn remove(state_dir: &Path, id: &str) {
        let f = file(state_dir, id);
        if let Err(e) = tokio::fs::remove_file(&f).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("migration {id}: removing the journal {}: {e}", f.display());
            }
        }
    }
}

/// The journals in `state_dir` (unreadable ones are warned about and removed).
async fn load(state_dir: &Path) -> Vec<Journal> {
    let d = dir(state_dir);
    let mut out = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(&d).await else {
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            let _ = tokio::fs::remove_file(&p).await;
            continue;
        }
        let parsed = tokio::fs::read(&p)
            .await
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Journal>(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(j) => out.push(j),
            Err(err) => {
                warn!(
                    "dropping the unreadable migration journal {}: {err}",
                    p.display()
                );
                let _ = tokio::fs::remove_file(&p).await;
            }
        }
    }
    out
}

/// How a migration found at start-up ended.
enum Settled {
    /// The service runs on here; `notes`: what could not be cleaned up at the destination.
    Aborted { resumed: bool, notes: Vec<String> },
    /// The destination had restored it: the source copy is gone.
    Completed { warnings: Vec<String> },
    /// Left frozen here: whether the destination runs it cannot be known now.
    Frozen(String),
}

impl Coordinator {
    /// At start-up: registers the migrations an earlier run left in flight and ends each in the
    /// background. Returns how many there were.
    pub async fn recover(self: &Arc<Self>) -> usize {
        let journals = load(&self.cfg.state_dir).await;
        let n = journals.len();
        for j in journals {
            let id = j.migration_id.clone();
            if let Err(e) = self
                .registry
                .begin(&id, &j.container, Role::Source, &j.peer)
            {
                warn!("migration {id}: not recovered: {e}");
                continue;
            }
            self.registry.set_phase(&id, j.phase);
            warn!(
                "migration {id}: {} to {} was in phase {} when this coordinator stopped: ending it",
                j.container,
                j.peer_name,
                j.phase.as_str()
            );
            let me = Arc::clone(self);
            tokio::spawn(async move { me.resolve(j).await });
        }
        n
    }

    async fn resolve(self: Arc<Self>, j: Journal) {
        let id = j.migration_id.clone();
        let cause = format!(
            "the coordinator of system {} restarted during phase {} of the migration",
            self.name(),
            j.phase.as_str()
        );
        match self.settle(&j).await {
            Ok(Settled::Aborted { resumed, notes }) => {
                let mut msg = format!(
                    "{cause}; aborted at its start-up: the service runs on at the source{}",
                    if resumed { " (resumed)" } else { "" }
                );
                if notes.is_empty() {
                    msg.push_str(", the destination was cleaned up");
                } else {
                    msg.push_str(&format!(" ({})", notes.join("; ")));
                }
                warn!("migration {id}: {msg}");
                self.registry
                    .finish(&id, State::Failed, Some(&Error::Failed(msg)), None);
                Journal::remove(&self.cfg.state_dir, &id).await;
            }
            Ok(Settled::Completed { warnings }) => {
                let mut msg = format!(
                    "{cause}; {} had restored the service: it runs there, the source's copy was \
                     removed at start-up",
                    j.peer_name
                );
                if !warnings.is_empty() {
                    msg.push_str(&format!(" ({})", warnings.join("; ")));
                }
                info!("migration {id}: {msg}");
                self.registry.complete_without_result(&id, msg);
                Journal::remove(&self.cfg.state_dir, &id).await;
            }
            Ok(Settled::Frozen(why)) => {
                let msg = format!(
                    "{cause}; {why}: the service stays frozen at the source (the next start of \
                     this coordinator tries again)"
                );
                error!("migration {id}: {msg}");
                self.registry
                    .finish(&id, State::Failed, Some(&Error::Failed(msg)), None);
            }
            Err(e) => {
                let msg = format!("{cause}; ending it failed: {e}");
                error!("migration {id}: {msg}");
                self.registry
                    .finish(&id, State::Failed, Some(&Error::Failed(msg)), None);
            }
        }
    }

    async fn settle(&self, j: &Journal) -> Result<Settled> {
        let id = &j.migration_id;
        // The shim's dump outlives its caller: wait for it to end ("dumped": frozen, or gone
        // with the service resumed).
        let shim = Shim::connect(
            &self.cfg.containerd_state,
            &j.container,
            Duration::from_secs(2),
        )
        .await;
        let shim_phase = match &shim {
            Ok(s) => Some(self.dump_end(s, id).await?),
            Err(e) => {
                warn!("migration {id}: no shim of {} here: {e}", j.container);
                None
            }
        };
        info!(
            "migration {id}: the source shim's migration is {}",
            shim_phase.as_deref().unwrap_or("unknown (no shim)")
        );
        // Post-copy: the destination answered the restore once every page was in.
        let restored = match j.phase {
            Phase::PostMigration | Phase::PostCopy => true,
            Phase::Restore => match self.peer_outcome(j).await {
                Ok(Some(restored)) => restored,
                Ok(None) => {
                    return Ok(Settled::Frozen(format!(
                        "{} has no record of it (restarted too?), so whether it restored the \
                         service is unknown",
                        j.peer_name
                    )))
                }
                Err(e) => {
                    return Ok(Settled::Frozen(format!(
                        "{} could not be asked whether it restored the service ({e})",
                        j.peer_name
                    )))
                }
            },
            _ => false,
        };
        let shim = shim.ok();
        if restored {
            return Ok(Settled::Completed {
                warnings: self.remove_source_copy(j, shim.as_ref(), shim_phase).await,
            });
        }
        let mut resumed = false;
        if let (Some(s), Some("dumped")) = (&shim, shim_phase.as_deref()) {
            s.abort(id).await?;
            resumed = true;
            info!(
                "migration {id}: source shim aborted: {} resumes",
                j.container
            );
        }
        let mut notes = self
            .abort_peer(&PeerUrl::parse(&j.peer)?, id, &j.peer_name)
            .await;
        if !notes.is_empty() {
            notes.push(format!(
                "{} removes the prepared container after its --incoming-timeout",
                j.peer_name
            ));
        }
        Ok(Settled::Aborted { resumed, notes })
    }

    /// The shim's phase of migration `id` once it is no longer dumping (nor serving pages,
    /// post-copy).
    async fn dump_end(&self, shim: &Shim, id: &str) -> Result<String> {
        let deadline = Instant::now() + self.cfg.dump_timeout;
        loop {
            let st = shim.status(id).await?;
            if st.phase != "dumping" && st.phase != "serving" {
                return Ok(st.phase);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the source shim was still dumping {}s later",
                    self.cfg.dump_timeout.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the destination restored the service (waiting for a restore it is running);
    /// None: it has no record of the migration.
    async fn peer_outcome(&self, j: &Journal) -> Result<Option<bool>> {
        let url = PeerUrl::parse(&j.peer)?.join(&format!("/v1/migrations/{}", j.migration_id));
        let deadline = Instant::now() + RESTORE_WAIT;
        loop {
            let rec: Record = match self.peers.get(&url, PEER_TIMEOUT).await {
                Ok(r) => r,
                Err(Error::Peer {
                    status: Some(404), ..
                }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let restoring = rec.state == State::Running && rec.phase == Phase::Restoring;
            if !restoring || Instant::now() >= deadline {
                return Ok(Some(rec.state == State::Completed));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The destination runs the service: end the source's copy (Commit) and delete its task,
    /// container and snapshot. Returns what failed.
    async fn remove_source_copy(
        &self,
        j: &Journal,
        shim: Option<&Shim>,
        shim_phase: Option<String>,
    ) -> Vec<String> {
        let id = &j.migration_id;
        let mut warnings = Vec::new();
        if let (Some(s), Some("dumped")) = (shim, shim_phase.as_deref()) {
            if let Err(e) = s.commit(id).await {
                warnings.push(format!("source shim Commit failed: {e}"));
            }
        }
        let r = &j.container;
        match self.containerd().await {
            Ok(cd) => {
                let snapshotter = match cd.container(&r.namespace, &r.id).await {
                    Ok(Some(c)) if !c.snapshotter.is_empty() => c.snapshotter,
                    _ => "overlayfs".to_string(),
                };
                warnings.extend(self.cleanup_with(&cd, id, r, &snapshotter).await);
            }
            Err(e) => warnings.push(format!("containerd: {e}")),
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn journals_round_trip() {
        let d = std::env::temp_dir().join(format!("ums-journal-{}", std::process::id()));
        let c = ContainerRef::parse("default/web1").unwrap();
        let mut j = Journal::new("m-1", &c, "http://10.77.0.2:7400", "b");
        j.enter(&d, Phase::Checkpoint).await;
        let mut k = Journal::new("m-2", &c, "http://10.77.0.2:7400", "b");
        k.enter(&d, Phase::Restore).await;
        tokio::fs::write(dir(&d).join("junk.json"), b"{")
            .await
            .unwrap();
        let mut got = load(&d).await;
        got.sort_by(|a, b| a.migration_id.cmp(&b.migration_id));
        assert_eq!(got, vec![j, k]);
        // The unreadable one is gone.
        assert!(!dir(&d).join("junk.json").exists());
        Journal::remove(&d, "m-1").await;
        Journal::remove(&d, "m-1").await;
        assert_eq!(load(&d).await.len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
