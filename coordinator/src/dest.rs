//! The destination side of a migration, driven by the source coordinator over HTTP:
//!
//! - incoming (pre-migration, steps 4-7): the container recreated through THIS system's
//!   containerd from the source's spec (restore marker `io.ums.restore`, new netns, cgroup path
//!   for this containerd, a fresh snapshot of the same image), its task created (the shim waits
//!   for images instead of starting the service), the shim's Prepare -> stream address;
//! - restore (step 11): containerd Start (the shim restores from the received images) until
//!   the task is RUNNING;
//! - abort: shim Abort, task killed and deleted, container and snapshot removed: nothing left.
//!
//! The orchestrator-level approach (`IncomingRequest.approach`) differs in who receives and
//! restores: a runc container, this coordinator receiving the images, containerd's runc shim
//! restoring them ([`crate::orchestrator::NativeIncoming`]).
//!
//! A prepared container that the source neither restores nor aborts within
//! `incoming_timeout` is aborted by a watchdog.
//!
//! That is the containerd adapter; the container can be created through CRI instead
//! ([`crate::adapter`], [`crate::dest_cri`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::adapter::Adapter;
use crate::api::{
    validate_migration_id, AbortResponse, DestInterface, IncomingRequest, IncomingResponse, Phase,
    RestoreResponse, Role, State,
};
use crate::approach::{Approach, RUNC_RUNTIME};
use crate::containerd::{new_container, Containerd, TaskState};
use crate::coordinator::Coordinator;
use crate::engine::DestReceiver;
use crate::error::{Error, Result};
use crate::mounts;
use crate::orchestrator::{self, NativeIncoming, PrepareNative};
use crate::refs::ContainerRef;
use crate::shim::Shim;
use crate::source::UMS_RUNTIME;
use crate::spec::{
    adopt_hostname, destination_labels, destination_spec, missing_bind_sources,
    remap_mount_sources, validate_cgroup_parent, without_restore_marker, CgroupParents,
    MIGRATION_LABEL,
};

pub(crate) const SHIM_ADDRESS_WAIT: Duration = Duration::from_secs(10);
const RUNNING_WAIT: Duration = Duration::from_secs(10);
/// Post-copy: how long the restored service may take to fetch every page (within the
/// source's wait for the restore).
const PAGES_TIMEOUT: Duration = Duration::from_secs(240);
const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DestPhase {
    Prepared,
    Restored { pid: u32 },
    Failed,
    Aborted,
}

/// A destination-side migration with resources on this system.
pub(crate) struct DestEntry {
    pub(crate) container: ContainerRef,
    pub(crate) adapter: Adapter,
    pub(crate) receiver: DestReceiver,
    pub(crate) state: tokio::sync::Mutex<DestPhase>,
    /// Post-copy: the restore is confirmed once the service has every page.
    pub(crate) post_copy: bool,
}

impl Coordinator {
    /// `POST /v1/migrations/incoming`.
    pub async fn incoming(self: &Arc<Self>, req: IncomingRequest) -> Result<IncomingResponse> {
        validate_migration_id(&req.migration_id)?;
        for (what, v) in [
            ("token", &req.token),
            ("image", &req.image),
            ("source", &req.source),
        ] {
            if v.trim().is_empty() {
                return Err(Error::BadRequest(format!(
                    "incoming migration: {what} is empty"
                )));
            }
        }
        if req.approach == Approach::Service {
            return Err(Error::Unsupported(format!(
                "the {} approach is not supported on system {}",
                req.approach,
                self.name()
            )));
        }
        let id = req.migration_id.clone();
        self.registry
            .begin(&id, &req.container, Role::Destination, &req.source)?;
        info!(
            "migration {id}: incoming {} from {} (image {})",
            req.container, req.source, req.image
        );
        let prepared = self.prepare_incoming(&req).await;
        match prepared {
            Ok((entry, resp)) => {
                // Published first, then the abort flag checked; abort_incoming sets the flag
                // first, then looks for the entry: one of the two sees the other.
                self.insert_incoming(&id, entry);
                if self.registry.abort_requested(&id) {
                    warn!("migration {id}: the source aborted while we prepared: cleaning up");
                    let detail = match self.abort_incoming(&id).await {
                        Ok(r) => r.detail,
                        Err(e) => vec![e.to_string()],
                    };
                    return Err(Error::Conflict(format!(
                        "migration {id} was aborted by the source while being prepared{}",
                        if detail.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", detail.join("; "))
                        }
                    )));
                }
                self.registry.set_phase(&id, Phase::Prepared);
                self.spawn_watchdog(id.clone());
                info!(
                    "migration {id}: {} prepared (outer pid {}), images expected at {}",
                    req.container, resp.pid, resp.address
                );
                Ok(resp)
            }
            Err(e) => {
                error!("migration {id}: incoming {} refused: {e}", req.container);
                self.registry.finish(&id, State::Failed, Some(&e), None);
                Err(e)
            }
        }
    }

    async fn prepare_incoming(
        &self,
        req: &IncomingRequest,
    ) -> Result<(Arc<DestEntry>, IncomingResponse)> {
        let interface = self.choose_interface(req).await?;
        info!(
            "migration {}: creating the container through {interface}",
            req.migration_id
        );
        match interface {
            DestInterface::Containerd => self.prepare_containerd(req).await,
            DestInterface::Cri => self.prepare_cri(req).await,
        }
    }

    async fn prepare_containerd(
        &self,
        req: &IncomingRequest,
    ) -> Result<(Arc<DestEntry>, IncomingResponse)> {
        let me = self.name();
        let id = &req.migration_id;
        let r = &req.container;
        let ns = &r.namespace;
        let cd = self.containerd().await?;
        if cd.container(ns, &r.id).await?.is_some() {
            return Err(Error::Conflict(format!(
                "container {r} already exists on system {me}"
            )));
        }
        let chain = cd.image_chain_id(ns, &req.image).await?.ok_or_else(|| {
            Error::Precondition(format!("image {} not present on system {me}", req.image))
        })?;
        let snapshotter = if req.snapshotter.is_empty() {
            DEFAULT_SNAPSHOTTER.to_string()
        } else {
            req.snapshotter.clone()
        };
        if !cd.snapshot_exists(ns, &snapshotter, &chain).await? {
            return Err(Error::Precondition(format!(
                "image {} is present on system {me} but not unpacked for snapshotter \
                 {snapshotter} (no snapshot {chain}; `ctr images import` unpacks)",
                req.image
            )));
        }
        let parents = CgroupParents {
            source: validate_cgroup_parent(&req.source_cgroup_parent)?,
            destination: self.cfg.cgroup_parent.clone(),
        };
        let mut spec = destination_spec(&req.spec, r, id, &parents)?;
        // Bind mounts of files that exist on the source only: made here, in our state dir.
        let mounts_dir = mounts::migration_dir(&self.cfg.state_dir, r, id);
        let planned = mounts::plan(&mounts_dir, &req.local_mounts)?;
        remap_mount_sources(&mut spec, &planned);
        if let Some(h) = mounts::hostname(&req.local_mounts) {
            adopt_hostname(&mut spec, &h);
        }
        let remapped: HashSet<String> = planned.keys().cloned().collect();
        let missing = missing_bind_sources(&spec, &remapped, |s| Path::new(s).exists());
        if !missing.is_empty() {
            return Err(Error::Precondition(format!(
                "bind mount source(s) missing on system {me}: {} (runc could not restore the \
                 service's mounts)",
                missing.join(", ")
            )));
        }
        let spec = serde_json::to_vec(&spec)
            .map_err(|e| Error::Internal(format!("encoding the spec: {e}")))?;
        let (runtime, runtime_options) = match req.approach {
            Approach::Orchestrator => (
                RUNC_RUNTIME,
                Some(orchestrator::destination_runtime_options(
                    req.runtime_options.as_ref(),
                    &self.cfg.state_dir,
                )?),
            ),
            _ => (
                UMS_RUNTIME,
                req.runtime_options
                    .as_ref()
                    .map(|o| o.to_any())
                    .transpose()?,
            ),
        };
        let mut labels: HashMap<String, String> = destination_labels(&req.labels, &req.spec);
        labels.insert(MIGRATION_LABEL.to_string(), id.clone());
        let log = self.service_log(r).await?;
        if !req.local_mounts.is_empty() {
            if let Err(e) = mounts::materialize(&mounts_dir, &req.local_mounts).await {
                let _ = mounts::remove(&mounts_dir).await;
                return Err(e);
            }
            info!(
                "migration {id}: {} mount source(s) of {r} made in {}",
                req.local_mounts.len(),
                mounts_dir.display()
            );
        }
        // The container first: it references the snapshot key, so containerd's GC keeps the
        // snapshot we prepare next.
        let created = cd
            .create_container(
                ns,
                new_container(
                    &r.id,
                    &req.image,
                    runtime,
                    runtime_options.clone(),
                    &req.spec_type_url,
                    spec,
                    &snapshotter,
                    labels,
                ),
            )
            .await
            .map_err(|e| match e {
                Error::Containerd {
                    code: containerd_client::tonic::Code::AlreadyExists,
                    ..
                } => Error::Conflict(format!("container {r} already exists on system {me}")),
                other => other,
            });
        if let Err(e) = created {
            let _ = mounts::remove(&mounts_dir).await;
            return Err(e);
        }
        info!("migration {id}: container {r} created (snapshot parent {chain})");
        let made = async {
            let mounts = cd
                .prepare_snapshot(ns, &snapshotter, &r.id, &chain, HashMap::new())
                .await?;
            if let (Approach::Orchestrator, Some(options)) = (req.approach, &runtime_options) {
                // No ums shim here: this coordinator receives the images itself.
                let (pid, native, address) = NativeIncoming::prepare(PrepareNative {
                    containerd: &cd,
                    container: r,
                    migration_id: id,
                    state_dir: &self.cfg.state_dir,
                    runtime_options: options,
                    rootfs: mounts,
                    log: &log,
                    listen: &self.cfg.stream_listen(),
                    token: &req.token,
                    max_bytes: self.cfg.max_stream_bytes,
                })
                .await?;
                info!("migration {id}: task {r} created to restore natively, log {log}");
                return Ok::<_, Error>((pid, DestReceiver::Native(native), address));
            }
            let pid = cd.create_task(ns, &r.id, mounts, &log, &log).await?;
            info!("migration {id}: task {r} created (outer pid {pid}), log {log}");
            let shim = Shim::connect(&self.cfg.containerd_state, r, SHIM_ADDRESS_WAIT).await?;
            let address = shim
                .prepare(
                    id,
                    &self.cfg.stream_listen(),
                    &req.token,
                    self.cfg.max_stream_bytes,
                    &self.cfg.images_dir(),
                )
                .await?;
            Ok::<_, Error>((pid, DestReceiver::Shim(shim), address))
        }
        .await;
        match made {
            Ok((pid, receiver, address)) => Ok((
                Arc::new(DestEntry {
                    container: r.clone(),
                    adapter: Adapter::Containerd {
                        snapshotter: snapshotter.clone(),
                    },
                    receiver,
                    state: tokio::sync::Mutex::new(DestPhase::Prepared),
                    post_copy: req.post_copy,
                }),
                IncomingResponse {
                    migration_id: id.clone(),
                    address,
                    destination: me.to_string(),
                    pid,
                    interface: DestInterface::Containerd,
                    container: None,
                    pod: None,
                },
            )),
            Err(e) => {
                warn!("migration {id}: preparing {r} failed: {e}; removing what was created");
                self.cleanup_with(&cd, id, r, &snapshotter).await;
                Err(e)
            }
        }
    }

    /// `file://` URI of the restored service's stdout/stderr log.
    async fn service_log(&self, r: &ContainerRef) -> Result<String> {
        let dir = self.cfg.state_dir.join("logs").join(&r.namespace);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(format!(
            "file://{}",
            dir.join(format!("{}.log", r.id)).display()
        ))
    }

    /// `POST /v1/migrations/{id}/restore`.
    pub async fn restore(&self, id: &str) -> Result<RestoreResponse> {
        validate_migration_id(id)?;
        let entry = self.incoming_entry(id).ok_or_else(|| {
            Error::NotFound(format!(
                "no incoming migration {id} on system {}",
                self.name()
            ))
        })?;
        let mut st = entry.state.lock().await;
        match *st {
            DestPhase::Prepared => {}
            DestPhase::Restored { pid } => {
                return Ok(RestoreResponse {
                    migration_id: id.to_string(),
                    pid,
                    restore_ms: 0,
                    post_copy_ms: None,
                })
            }
            DestPhase::Aborted => {
                return Err(Error::Conflict(format!("migration {id} was aborted")))
            }
            DestPhase::Failed => {
                return Err(Error::Conflict(format!(
                    "the restore of migration {id} already failed"
                )))
            }
        }
        let r = &entry.container;
        self.registry.set_phase(id, Phase::Restoring);
        info!(
            "migration {id}: restoring {r}: {} start",
            entry.adapter.interface()
        );
        let t = Instant::now();
        let res = async {
            let cd = self.containerd().await?;
            let pid = match &entry.adapter {
                Adapter::Containerd { .. } => {
                    let pid = entry.receiver.restore(&cd, r).await?;
                    wait_running(&cd, r).await?;
                    pid
                }
                Adapter::Cri(p) => self.start_cri(&cd, r, p).await?,
            };
            let restore_ms = t.elapsed().as_millis() as u64;
            // Post-copy: it runs, and is restored once its pages are all in.
            let post_copy_ms = if entry.post_copy {
                self.registry
                    .update_phases(id, |p| p.restore = Some(restore_ms));
                info!(
                    "migration {id}: {r} RUNNING as pid {pid} in {restore_ms} ms; its pages follow"
                );
                let t = Instant::now();
                entry.receiver.wait_pages(id, PAGES_TIMEOUT).await?;
                Some(t.elapsed().as_millis() as u64)
            } else {
                None
            };
            // Restored: from now on the container is like any other of this system.
            if let Err(e) = self.drop_restore_marker(&cd, r).await {
                warn!("migration {id}: removing the restore marker from {r}'s spec: {e}");
            }
            Ok::<_, Error>((pid, restore_ms, post_copy_ms))
        }
        .await;
        match res {
            Ok((pid, restore_ms, post_copy_ms)) => {
                *st = DestPhase::Restored { pid };
                self.registry.update_phases(id, |p| {
                    p.restore = Some(restore_ms);
                    p.post_copy = post_copy_ms;
                });
                self.registry.set_phase(id, Phase::Restored);
                self.registry.finish(id, State::Completed, None, None);
                info!("migration {id}: {r} restored and RUNNING as pid {pid} in {restore_ms} ms");
                Ok(RestoreResponse {
                    migration_id: id.to_string(),
                    pid,
                    restore_ms,
                    post_copy_ms,
                })
            }
            Err(e) => {
                *st = DestPhase::Failed;
                error!(
                    "migration {id}: restoring {r} failed after {} ms: {e}",
                    t.elapsed().as_millis()
                );
                self.registry.note_error(id, &e);
                Err(e)
            }
        }
    }

    async fn drop_restore_marker(&self, cd: &Containerd, r: &ContainerRef) -> Result<()> {
        let c = cd
            .container(&r.namespace, &r.id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("container {r} vanished")))?;
        let Some(any) = c.spec else {
            return Ok(());
        };
        let spec: serde_json::Value = serde_json::from_slice(&any.value)
            .map_err(|e| Error::Internal(format!("the spec of {r} is not JSON: {e}")))?;
        let value = serde_json::to_vec(&without_restore_marker(&spec))
            .map_err(|e| Error::Internal(format!("encoding the spec: {e}")))?;
        cd.update_container_spec(
            &r.namespace,
            &r.id,
            prost_types::Any {
                type_url: any.type_url,
                value,
            },
        )
        .await
    }

    /// `POST /v1/migrations/{id}/abort`: drops everything of the migration here.
    pub async fn abort_incoming(&self, id: &str) -> Result<AbortResponse> {
        validate_migration_id(id)?;
        let entry = match self.incoming_entry(id) {
            Some(e) => e,
            None => {
                // Still preparing: flag it, then look again (see `incoming`).
                if self.registry.state(id) != Some(State::Running)
                    || !self.registry.request_abort(id)
                {
                    return Err(Error::NotFound(format!(
                        "no incoming migration {id} on system {}",
                        self.name()
                    )));
                }
                match self.incoming_entry(id) {
                    Some(e) => e,
                    None => {
                        info!("migration {id}: abort requested while preparing");
                        return Ok(AbortResponse {
                            migration_id: id.to_string(),
                            aborted: true,
                            detail: vec!["abort noted while preparing".into()],
                        });
                    }
                }
            }
        };
        info!("migration {id}: aborting {}", entry.container);
        let mut detail = Vec::new();
        // Before taking the lock: a Start waiting for images fails once the shim aborts.
        if let Err(e) = entry.receiver.abort(id).await {
            warn!("migration {id}: shim Abort: {e}");
            detail.push(e.to_string());
        }
        let mut st = entry.state.lock().await;
        if *st == DestPhase::Aborted {
            return Ok(AbortResponse {
                migration_id: id.to_string(),
                aborted: true,
                detail: vec!["already aborted".into()],
            });
        }
        self.registry.set_phase(id, Phase::Aborting);
        detail.extend(match &entry.adapter {
            Adapter::Containerd { snapshotter } => {
                self.cleanup(id, &entry.container, snapshotter).await
            }
            Adapter::Cri(p) => self.remove_cri(id, Some(&entry.container), p).await,
        });
        *st = DestPhase::Aborted;
        drop(st);
        self.remove_incoming(id);
        self.registry.finish(
            id,
            State::Aborted,
            Some(&Error::Conflict("aborted by the source".into())),
            None,
        );
        if detail.iter().all(|d| d.starts_with("shim Abort")) {
            info!("migration {id}: aborted, {} removed", entry.container);
        }
        Ok(AbortResponse {
            migration_id: id.to_string(),
            aborted: true,
            detail,
        })
    }

    async fn cleanup(&self, id: &str, r: &ContainerRef, snapshotter: &str) -> Vec<String> {
        match self.containerd().await {
            Ok(cd) => self.cleanup_with(&cd, id, r, snapshotter).await,
            Err(e) => vec![format!("containerd: {e}")],
        }
    }

    /// Kills and deletes the task, deletes the container and its snapshot. Returns what failed.
    pub(crate) async fn cleanup_with(
        &self,
        cd: &Containerd,
        id: &str,
        r: &ContainerRef,
        snapshotter: &str,
    ) -> Vec<String> {
        let ns = &r.namespace;
        let mut failed = Vec::new();
        let mut note = |what: String| {
            warn!("migration {id}: cleanup of {r}: {what}");
            failed.push(what);
        };
        match cd.task(ns, &r.id).await {
            Ok(Some(t)) => {
                if t.state != TaskState::Stopped {
                    if let Err(e) = cd.kill_task(ns, &r.id, 9, true).await {
                        note(format!("kill: {e}"));
                    }
                    match cd.wait_task(ns, &r.id, Duration::from_secs(10)).await {
                        Ok(Some(_)) => {}
                        Ok(None) => note("the task did not exit within 10 s of SIGKILL".into()),
                        Err(e) => note(format!("wait: {e}")),
                    }
                }
                if let Err(e) = cd.delete_task(ns, &r.id).await {
                    note(format!("task delete: {e}"));
                }
            }
            Ok(None) => {}
            Err(e) => note(format!("task get: {e}")),
        }
        if let Err(e) = cd.delete_container(ns, &r.id).await {
            note(format!("container delete: {e}"));
        }
        if let Err(e) = cd.remove_snapshot(ns, snapshotter, &r.id).await {
            note(format!("snapshot remove: {e}"));
        }
        if let Err(e) = mounts::remove(&mounts::migration_dir(&self.cfg.state_dir, r, id)).await {
            note(format!("mount sources: {e}"));
        }
        // What a native (orchestrator-level) restore received.
        let native = orchestrator::incoming_dir(&self.cfg.state_dir, r, id);
        if let Err(e) = tokio::fs::remove_dir_all(&native).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                note(format!("removing {}: {e}", native.display()));
            }
        }
        // Images received outside the bundle (--image-dir) do not go with it; a killed shim
        // leaves its staging and page server dirs there too (the shim names them in-<id>...).
        if let Some(d) = &self.cfg.image_dir {
            for p in ums_shim::migration::received_dirs(&d.join(format!("in-{id}"))) {
                if let Err(e) = tokio::fs::remove_dir_all(&p).await {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        note(format!("removing {}: {e}", p.display()));
                    }
                }
            }
        }
        failed
    }

    /// At start-up: destination containers of migrations that a previous run of this
    /// coordinator prepared but never restored (their task is CREATED or gone) are removed;
    /// their source resumed the service long ago or will, its migration having failed.
    pub async fn sweep_stale_incoming(&self) -> Result<usize> {
        let cd = self.containerd().await?;
        let mut removed = 0;
        for ns in cd.namespaces().await? {
            for c in cd.containers_with_label(&ns, MIGRATION_LABEL).await? {
                let mid = c.labels.get(MIGRATION_LABEL).cloned().unwrap_or_default();
                let r = ContainerRef {
                    namespace: ns.clone(),
                    id: c.id.clone(),
                };
                let task = cd.task(&ns, &c.id).await?;
                let stale = match &task {
                    None => true,
                    Some(t) => t.state == TaskState::Created,
                };
                let spec = c
                    .spec
                    .as_ref()
                    .and_then(|s| serde_json::from_slice(&s.value).ok())
                    .unwrap_or(serde_json::Value::Null);
                let never_started =
                    stale && crate::spec::restore_marker(&spec) == Some(mid.as_str());
                if !never_started {
                    continue;
                }
                if crate::spec::cri_kind(&c.labels, &spec) == Some(crate::spec::CriKind::Container)
                {
                    warn!(
                        "migration {mid}: {r} was created through CRI by an earlier run and never restored: removing it"
                    );
                    let pod = crate::spec::CriPod::of(&spec).map(|p| p.sandbox_id);
                    if self.sweep_cri_container(&mid, &r, pod.as_deref()).await {
                        removed += 1;
                    }
                    continue;
                }
                let snapshotter = if c.snapshotter.is_empty() {
                    DEFAULT_SNAPSHOTTER
                } else {
                    c.snapshotter.as_str()
                };
                warn!(
                    "migration {mid}: {r} was prepared by an earlier run and never restored: removing it"
                );
                let failed = self.cleanup_with(&cd, &mid, &r, snapshotter).await;
                if failed.is_empty() {
                    removed += 1;
                }
            }
        }
        // Mount sources of containers that are gone (deleted by their owner since).
        for r in mounts::containers_with_mounts(&self.cfg.state_dir) {
            if cd.container(&r.namespace, &r.id).await?.is_none() {
                info!("{r} is gone: removing its mount sources");
                if let Err(e) = mounts::remove_container(&self.cfg.state_dir, &r).await {
                    warn!("{e}");
                }
            }
        }
        Ok(removed)
    }

    fn spawn_watchdog(self: &Arc<Self>, id: String) {
        let me = Arc::clone(self);
        let after = self.cfg.incoming_timeout;
        crate::logger::spawn(async move {
            tokio::time::sleep(after).await;
            let Some(entry) = me.incoming_entry(&id) else {
                return;
            };
            let phase = *entry.state.lock().await;
            match phase {
                DestPhase::Restored { .. } | DestPhase::Aborted => me.remove_incoming(&id),
                DestPhase::Prepared | DestPhase::Failed => {
                    warn!(
                        "migration {id}: neither restored nor aborted by the source within {}s: aborting",
                        after.as_secs()
                    );
                    if let Err(e) = me.abort_incoming(&id).await {
                        error!("migration {id}: watchdog abort failed: {e}");
                    }
                }
            }
        });
    }
}

pub(crate) async fn wait_running(cd: &Containerd, r: &ContainerRef) -> Result<()> {
    let deadline = Instant::now() + RUNNING_WAIT;
    loop {
        match cd.task(&r.namespace, &r.id).await? {
            Some(t) if t.state == TaskState::Running => return Ok(()),
            Some(t) if t.state == TaskState::Stopped => {
                return Err(Error::Internal(format!(
                    "the restored task of {r} stopped right away (exit status {})",
                    t.exit_status
                )))
            }
            None => {
                return Err(Error::Internal(format!(
                    "the task of {r} vanished after Start"
                )))
            }
            Some(t) => {
                if Instant::now() >= deadline {
                    return Err(Error::Timeout(format!(
                        "the task of {r} is {} {}s after Start, not RUNNING",
                        t.state.as_str(),
                        RUNNING_WAIT.as_secs()
                    )));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
