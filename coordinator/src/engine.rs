//! What checkpoints, ends or resumes the service on each side, by approach: the ums shim's
//! migration API (container-level, [`crate::shim`]) or containerd's own task API
//! (orchestrator-level, [`crate::orchestrator`]). The migration driver (`source.rs`, `dest.rs`)
//! is the same for both.

use std::time::Duration;

use ums_shim::api::migration::{DumpResponse, StatusResponse};

use crate::containerd::Containerd;
use crate::error::{Error, Result};
use crate::orchestrator::{NativeIncoming, NativeSource};
use crate::refs::ContainerRef;
use crate::shim::Shim;

/// The source side.
#[derive(Clone)]
pub enum SourceEngine {
    Shim(Shim),
    Native(NativeSource),
}

impl SourceEngine {
    /// Freeze, checkpoint and stream to `peer`; on success the service stays frozen here.
    /// Post-copy (the shim only; the plan refuses it otherwise): all but the memory pages.
    pub async fn dump(
        &self,
        migration_id: &str,
        peer: &str,
        token: &str,
        post_copy: bool,
        hold: bool,
        timeout: Duration,
    ) -> Result<DumpResponse> {
        match self {
            SourceEngine::Shim(s) => {
                s.dump(migration_id, peer, token, post_copy, hold, timeout)
                    .await
            }
            SourceEngine::Native(n) => n.dump(migration_id, peer, token, timeout).await,
        }
    }

    /// Post-copy: waits until the destination has every page; on error the service was
    /// resumed here.
    pub async fn wait_pages(&self, migration_id: &str, timeout: Duration) -> Result<DumpResponse> {
        match self {
            SourceEngine::Shim(s) => s.wait_pages(migration_id, timeout).await,
            SourceEngine::Native(_) => Err(Error::Unsupported(
                "post-copy needs the container-level approach".into(),
            )),
        }
    }

    /// The service runs at the destination: end it here.
    pub async fn commit(&self, migration_id: &str) -> Result<()> {
        match self {
            SourceEngine::Shim(s) => s.commit(migration_id).await,
            SourceEngine::Native(n) => n.commit().await,
        }
    }

    /// Resume the frozen service here.
    pub async fn abort(&self, migration_id: &str) -> Result<()> {
        match self {
            SourceEngine::Shim(s) => s.abort(migration_id).await,
            SourceEngine::Native(n) => n.abort().await,
        }
    }

    /// Phase (`idle`: nothing of the migration is left) and bytes streamed.
    pub async fn status(&self, migration_id: &str) -> Result<StatusResponse> {
        match self {
            SourceEngine::Shim(s) => s.status(migration_id).await,
            SourceEngine::Native(n) => n.status().await,
        }
    }

    /// Where it is reached (for the logs).
    pub fn describe(&self) -> String {
        match self {
            SourceEngine::Shim(s) => format!("shim at {}", s.address()),
            SourceEngine::Native(_) => "containerd's task API".to_string(),
        }
    }
}

/// The destination side: who receives the images and restores.
pub enum DestReceiver {
    Shim(Shim),
    Native(NativeIncoming),
}

impl DestReceiver {
    /// Start the restore through containerd; returns the task's pid.
    pub async fn restore(&self, cd: &Containerd, r: &ContainerRef) -> Result<u32> {
        match self {
            // The shim restores from the images it received when containerd starts the task.
            DestReceiver::Shim(_) => cd.start_task(&r.namespace, &r.id).await,
            DestReceiver::Native(n) => n.restore(cd, r).await,
        }
    }

    /// Post-copy: waits until the restored service has every page (Err: it was killed).
    pub async fn wait_pages(&self, migration_id: &str, timeout: Duration) -> Result<()> {
        match self {
            DestReceiver::Shim(s) => s.wait_pages(migration_id, timeout).await.map(drop),
            DestReceiver::Native(_) => Err(Error::Unsupported(
                "post-copy needs the container-level approach".into(),
            )),
        }
    }

    /// Stop waiting for images (a Start waiting for them fails).
    pub async fn abort(&self, migration_id: &str) -> Result<()> {
        match self {
            DestReceiver::Shim(s) => s.abort(migration_id).await,
            DestReceiver::Native(n) => {
                n.abort("aborted by the source").await;
                Ok(())
            }
        }
    }
}
