//! The migration API served over ttrpc by every shim process, on a socket of its own (the
//! containerd-shim crate serves only the task API on containerd's socket). Each task's
//! `<bundle>/ums/migration.address` names it.
use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;
use containerd_shim_protos::ttrpc::{
    self,
    r#async::{transport::Listener, Server, TtrpcContext},
};
use log::info;

use crate::{
    api::{
        migration::{
            DumpRequest, DumpResponse, Empty, MigrationRef, PrepareRequest, PrepareResponse,
            StatusResponse,
        },
        migration_ttrpc::{create_migration, Migration},
    },
    container::Pages,
    error::{Error, Result},
    migration::{DumpStats, InFlight, PageMode},
    service::Inner,
};

/// Where this shim process serves the migration API.
pub fn socket_path() -> PathBuf {
    PathBuf::from(format!("/run/ums/migration/{}.sock", std::process::id()))
}

pub fn address() -> String {
    format!("unix://{}", socket_path().display())
}

/// Removes the migration socket named in a task's address file if the shim that served it
/// is gone (a killed shim cannot remove its own).
pub fn remove_stale_socket(address_file: &std::path::Path) {
    let Ok(addr) = std::fs::read_to_string(address_file) else {
        return;
    };
    remove_if_stale(std::path::Path::new(
        addr.trim().trim_start_matches("unix://"),
    ));
}

/// Removes a `<pid>.sock` whose shim process no longer exists.
fn remove_if_stale(path: &std::path::Path) {
    let pid = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u32>().ok());
    if let Some(pid) = pid {
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the socket and serves until the shim exits; the server lives in the returned value.
pub async fn serve(inner: Arc<Inner>) -> Result<Server> {
    let path = socket_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    }
    let _ = std::fs::remove_file(&path);
    // Sockets of shims that were killed (they could not remove their own).
    if let Some(entries) = path.parent().and_then(|d| std::fs::read_dir(d).ok()) {
        for e in entries.flatten() {
            remove_if_stale(&e.path());
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .map_err(Error::io(format!("bind {}", path.display())))?;
    let listener = Listener::try_from(listener).map_err(Error::io("ttrpc listener"))?;
    let service = create_migration(Arc::new(MigrationService { inner }));
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(service);
    server
        .start()
        .await
        .map_err(|e| Error::FailedPrecondition(format!("start migration server: {e}")))?;
    info!("migration API on {}", path.display());
    Ok(server)
}

fn dump_response(s: &DumpStats) -> DumpResponse {
    DumpResponse {
        bytes: s.bytes,
        files: s.files,
        checkpoint_ms: s.checkpoint_ms,
        transfer_ms: s.transfer_ms,
        frozen_ms: s.frozen_ms,
        pages_bytes: s.pages_bytes,
        ..Default::default()
    }
}

struct MigrationService {
    inner: Arc<Inner>,
}

#[async_trait]
impl Migration for MigrationService {
    async fn dump(&self, _ctx: &TtrpcContext, req: DumpRequest) -> ttrpc::Result<DumpResponse> {
        let mode = PageMode::of(req.post_copy, req.hold)?;
        let c = self.inner.container(&req.id)?;
        let job = c.lock().await.begin_dump(&req.migration_id)?;
        // In a task of its own: ttrpc drops a handler whose client went away (a coordinator
        // killed mid-dump), and the dump must still end and record how (Status tells the
        // restarted coordinator, whose Abort then resumes the service).
        let (s, in_flight) = tokio::spawn(async move {
            let res = job.run(&req.peer, &req.token, mode).await;
            let in_flight = res.as_ref().ok().map(|(_, f)| f.clone());
            c.lock().await.end_dump(&req.migration_id, in_flight);
            res
        })
        .await
        .map_err(|e| Error::FailedPrecondition(format!("dump task failed: {e}")))??;
        let mut resp = dump_response(&s);
        if let InFlight::Serving(serving) = in_flight {
            resp.page_server = serving.page_server.to_string();
        }
        Ok(resp)
    }

    async fn wait_pages(
        &self,
        _ctx: &TtrpcContext,
        req: MigrationRef,
    ) -> ttrpc::Result<DumpResponse> {
        let c = self.inner.container(&req.id)?;
        let pages = c.lock().await.pages(&req.migration_id)?;
        // Without the lock: Status and Abort go on meanwhile.
        let res = match pages {
            Pages::Out(serving) => serving.wait().await.map(|s| dump_response(&s)),
            Pages::In(pages_in) => pages_in.wait().await.map(|()| DumpResponse::default()),
        };
        Ok(res.map_err(Error::FailedPrecondition)?)
    }

    async fn commit(&self, _ctx: &TtrpcContext, req: MigrationRef) -> ttrpc::Result<Empty> {
        let c = self.inner.container(&req.id)?;
        c.lock().await.commit(&req.migration_id).await?;
        Ok(Empty::new())
    }

    async fn abort(&self, _ctx: &TtrpcContext, req: MigrationRef) -> ttrpc::Result<Empty> {
        let c = self.inner.container(&req.id)?;
        c.lock().await.abort(&req.migration_id).await?;
        Ok(Empty::new())
    }

    async fn prepare(
        &self,
        _ctx: &TtrpcContext,
        req: PrepareRequest,
    ) -> ttrpc::Result<PrepareResponse> {
        let c = self.inner.container(&req.id)?;
        let addr = c
            .lock()
            .await
            .prepare(
                &req.migration_id,
                &req.listen,
                &req.token,
                req.max_bytes,
                &req.dir,
            )
            .await?;
        Ok(PrepareResponse {
            address: addr.to_string(),
            ..Default::default()
        })
    }

    async fn status(
        &self,
        _ctx: &TtrpcContext,
        req: MigrationRef,
    ) -> ttrpc::Result<StatusResponse> {
        let c = self.inner.container(&req.id)?;
        let c = c.lock().await;
        let (phase, bytes) = c.migration_phase(&req.migration_id).unwrap_or(("idle", 0));
        Ok(StatusResponse {
            phase: phase.to_string(),
            bytes,
            ..Default::default()
        })
    }
}
