//! The source side of a migration, driven by the source coordinator (paper, III-B):
//!
//! 1. pre-migration: the container, its running task and its ums runtime checked here; the
//!    destination coordinator asked to create the container through ITS containerd from our
//!    spec (restore marker set) and to have its shim listen for the images;
//!    (The approach is chosen first, see `approach.rs`: for a container on containerd's runc
//!    runtime, containerd's own checkpoint takes the shim's place, see `orchestrator.rs`.)
//! 2. migration: our shim's Dump (freeze, checkpoint, stream; returns once the destination
//!    verified everything), then the destination's containerd starts the task (restore);
//! 3. post-migration: our shim's Commit (the service ends here), the task, container and
//!    snapshot deleted through our containerd; the new location returned.
//!
//! Until the destination confirms the restore, any failure aborts both sides: our shim resumes
//! the frozen service, the destination removes what it created.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use serde_json::Value;

use crate::api::{
    AbortResponse, AnyJson, CriSource, DestInterface, DumpFigures, Health, IncomingRequest,
    IncomingResponse, LocalMount, Location, MigrateAccepted, MigrateRequest, Phase, PhasesMs,
    Placement, Report, RestoreResponse, Role, State,
};
use crate::approach::{assess, Approach, Capabilities, Facts, Survey};
use crate::containerd::{runtime_of, Containerd, TaskState};
use crate::coordinator::{new_migration_id, random_hex, Coordinator};
use crate::cri::Cri;
use crate::engine::SourceEngine;
use crate::error::{Error, Result};
use crate::logger;
use crate::mounts;
use crate::orchestrator::NativeSource;
use crate::recovery::Journal;
use crate::refs::{ContainerRef, PeerUrl};
use crate::shim::Shim;
use crate::spec::{check_source_container, CriKind, CriPod};

pub use crate::approach::UMS_RUNTIME;

const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Creating the container and task on the destination and its shim's Prepare.
const INCOMING_TIMEOUT: Duration = Duration::from_secs(120);
/// The destination's containerd Start (CRIU restore) until RUNNING.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
const ABORT_TIMEOUT: Duration = Duration::from_secs(60);
const SHIM_ADDRESS_WAIT: Duration = Duration::from_secs(2);
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// What the local checks found: everything the migration needs.
struct Plan {
    id: String,
    approach: Approach,
    container: ContainerRef,
    source_url: String,
    to: PeerUrl,
    peer_name: String,
    image: String,
    snapshotter: String,
    snapshot_key: String,
    runtime_options: Option<AnyJson>,
    labels: std::collections::HashMap<String, String>,
    spec: Value,
    spec_type_url: String,
    /// A CRI container: its pod here.
    cri_pod: Option<CriPod>,
    /// The destination interface the user chose, and a CRI container's configs for CRI.
    interface: Option<DestInterface>,
    cri_source: Option<CriSource>,
    /// Bind mounts of files that exist on this system only (a CRI pod's /etc/hosts, ...).
    local_mounts: Vec<LocalMount>,
    notes: Vec<String>,
    engine: SourceEngine,
    containerd: Containerd,
    started: Instant,
    /// `ums migrate`'s choice of the destination's endpoint (the Frontman).
    endpoint: Option<crate::expose::EndpointOptions>,
    /// Post-copy (CRIU lazy pages), container-level only.
    post_copy: bool,
    /// Post-copy, held at the destination until every page is in.
    hold: bool,
}

/// What the source found out before choosing an approach (a migration's and a dry run's).
struct Surveyed {
    container: containerd_client::services::v1::Container,
    task_pid: u32,
    spec: Value,
    spec_type_url: String,
    peer_name: String,
    survey: Survey,
    containerd: Containerd,
}

impl Coordinator {
    /// `POST /v1/migrate`: checks the request against this system and the destination's
    /// availability (4xx on what is wrong), then runs the migration in the background.
    /// `source_url` is how the client reached us (for the report).
    pub async fn start_migration(
        self: &Arc<Self>,
        req: MigrateRequest,
        source_url: String,
    ) -> Result<MigrateAccepted> {
        let started = Instant::now();
        let container = ContainerRef::parse(&req.container)?;
        let to = PeerUrl::parse(&req.to)?;
        req.placement.validate()?;
        crate::handover::check_options(req.endpoint.as_ref())?;
        let id = new_migration_id()?;
        let work = self.begin_migration(id.clone(), req, container, to, source_url, started);
        logger::in_migration(&id, work).await
    }

    /// The rest of `start_migration`, as work of migration `id` (its log lines carry the id).
    async fn begin_migration(
        self: &Arc<Self>,
        id: String,
        req: MigrateRequest,
        container: ContainerRef,
        to: PeerUrl,
        source_url: String,
        started: Instant,
    ) -> Result<MigrateAccepted> {
        self.registry
            .begin(&id, &container, Role::Source, to.base())?;
        info!(
            "migration {id}: {container} from {} to {to} requested",
            self.name()
        );
        let mut plan = match self
            .plan(&id, &container, &to, &req, source_url, started)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                warn!("migration {id}: refused: {e}");
                self.registry.finish(&id, State::Failed, Some(&e), None);
                return Err(e);
            }
        };
        let accepted = MigrateAccepted {
            migration_id: id.clone(),
            container: container.to_string(),
            source_system: self.name().to_string(),
            destination_system: plan.peer_name.clone(),
            destination: to.base().to_string(),
        };
        plan.endpoint = req.endpoint;
        self.registry.set_approach(&id, plan.approach.as_str());
        let me = Arc::clone(self);
        logger::spawn(async move { me.run(plan).await });
        Ok(accepted)
    }

    /// `POST /v1/migrate` with `dry_run`: which approach would move the container and why
    /// the others cannot; nothing is touched on either system.
    pub async fn dry_run(&self, req: MigrateRequest) -> Result<Survey> {
        let container = ContainerRef::parse(&req.container)?;
        let to = PeerUrl::parse(&req.to)?;
        let s = self.survey(&container, &to, req.approach).await?;
        info!(
            "dry run: {container} to {}: {}",
            s.peer_name,
            s.survey
                .approach
                .map(|a| a.to_string())
                .or_else(|| s.survey.reason.clone())
                .unwrap_or_default()
        );
        Ok(s.survey)
    }

    /// Pre-migration step 1 (and 2): the container and its running task here, the destination
    /// up and what it can do, and the approaches assessed.
    async fn survey(
        &self,
        container: &ContainerRef,
        to: &PeerUrl,
        forced: Option<Approach>,
    ) -> Result<Surveyed> {
        let me = self.name();
        let cd = self.containerd().await?;
        let ns = &container.namespace;
        if !cd.namespace_exists(ns).await? {
            return Err(Error::NotFound(format!(
                "namespace {ns} not found on system {me}"
            )));
        }
        let c = cd.container(ns, &container.id).await?.ok_or_else(|| {
            Error::NotFound(format!("container {container} not found on system {me}"))
        })?;
        let task = cd.task(ns, &container.id).await?.ok_or_else(|| {
            Error::Conflict(format!(
                "container {container} has no task on system {me}: only a running service can \
                 migrate"
            ))
        })?;
        if task.state != TaskState::Running {
            return Err(Error::Conflict(format!(
                "the task of {container} is {} on system {me}: only a RUNNING task can migrate",
                task.state.as_str()
            )));
        }
        let any = c.spec.as_ref().ok_or_else(|| {
            Error::Internal(format!("container {container} has no spec in containerd"))
        })?;
        let spec: Value = serde_json::from_slice(&any.value)
            .map_err(|e| Error::Internal(format!("the spec of {container} is not JSON: {e}")))?;
        let spec_type_url = any.type_url.clone();

        // Step 2: the destination coordinator is there, is not us, and says what it can do.
        let health: Health = self.peers.get(&to.join("/healthz"), HEALTH_TIMEOUT).await?;
        if health.name == me {
            return Err(Error::BadRequest(format!(
                "the destination {to} is this system ({me})"
            )));
        }
        let local = Capabilities::local().await;
        let peer = health.capabilities.unwrap_or_default();
        let facts = Facts {
            container,
            runtime: runtime_of(&c),
            image: &c.image,
            spec: &spec,
            labels: &c.labels,
            source: me,
            destination: &health.name,
            local: &local,
            peer: &peer,
        };
        let survey = Survey::choose(&facts, assess(&facts), forced);
        Ok(Surveyed {
            task_pid: task.pid,
            spec,
            spec_type_url,
            peer_name: health.name,
            survey,
            containerd: cd,
            container: c,
        })
    }

    /// Pre-migration: the approach chosen and everything the migration needs.
    async fn plan(
        &self,
        id: &str,
        container: &ContainerRef,
        to: &PeerUrl,
        req: &MigrateRequest,
        source_url: String,
        started: Instant,
    ) -> Result<Plan> {
        let placement = &req.placement;
        // A malformed request is refused before anything is asked of containerd or the peer.
        if req.hold && !req.post_copy {
            return Err(Error::BadRequest(
                "hold applies to post-copy only (post_copy: true)".into(),
            ));
        }
        let s = self.survey(container, to, req.approach).await?;
        let approach = s.survey.chosen()?;
        if req.post_copy && approach != Approach::Container {
            return Err(Error::Unsupported(format!(
                "post-copy needs the container-level approach (the ums shim serves the pages); \
                 {container} would move {approach}"
            )));
        }
        let c = &s.container;
        let cri_pod = match check_source_container(&s.spec, &c.labels, container)? {
            Some(CriKind::Container) => Some(CriPod::of(&s.spec).unwrap_or_default()),
            _ => None,
        };
        let (local_mounts, notes) = mounts::collect(&s.spec, &self.cfg.state_dir).await?;
        let cri_source =
            cri_source_of(&s.containerd, container, cri_pod.as_ref(), placement).await?;
        let engine = match approach {
            // Our shim serves the migration API (fail early and clearly if not).
            Approach::Container => SourceEngine::Shim(
                Shim::connect(&self.cfg.containerd_state, container, SHIM_ADDRESS_WAIT).await?,
            ),
            Approach::Orchestrator => SourceEngine::Native(NativeSource::new(
                s.containerd.clone(),
                container.clone(),
                &c.snapshotter,
                &c.snapshot_key,
                &self.cfg.state_dir,
            )),
            Approach::Service => {
                return Err(Error::Unsupported(format!(
                    "the {approach} approach is not supported yet"
                )))
            }
        };
        info!(
            "migration {id}: {container} runs (pid {}), image {}, {approach} through {}; \
             destination {} is up",
            s.task_pid,
            c.image,
            engine.describe(),
            s.peer_name
        );
        Ok(Plan {
            id: id.to_string(),
            approach,
            container: container.clone(),
            source_url,
            to: to.clone(),
            peer_name: s.peer_name.clone(),
            image: c.image.clone(),
            snapshotter: c.snapshotter.clone(),
            snapshot_key: c.snapshot_key.clone(),
            runtime_options: c
                .runtime
                .as_ref()
                .and_then(|r| r.options.as_ref())
                .map(AnyJson::from_any),
            labels: c.labels.clone(),
            spec: s.spec.clone(),
            spec_type_url: s.spec_type_url.clone(),
            cri_pod,
            interface: placement.to_interface,
            cri_source,
            local_mounts,
            notes,
            engine,
            containerd: s.containerd.clone(),
            started,
            endpoint: None,
            post_copy: req.post_copy,
            hold: req.hold,
        })
    }

    async fn run(self: Arc<Self>, plan: Plan) {
        let id = plan.id.clone();
        let outcome = self.drive(&plan).await;
        // Ended either way: a restart has nothing to recover (see recovery.rs).
        Journal::remove(&self.cfg.state_dir, &id).await;
        match outcome {
            Ok(report) => {
                info!(
                    "migration {id}: completed: {} now runs on {} (total {} ms, frozen {} ms, {} bytes)",
                    report.container,
                    report.destination_system,
                    report.total_ms,
                    report.frozen_ms,
                    report.bytes
                );
                self.registry
                    .finish(&id, State::Completed, None, Some(report));
            }
            Err(e) => {
                error!("migration {id}: failed: {e}");
                self.registry.finish(&id, State::Failed, Some(&e), None);
            }
        }
    }

    async fn drive(self: &Arc<Self>, p: &Plan) -> Result<Report> {
        let id = &p.id;
        let token = random_hex(32)?;
        let state_dir = &self.cfg.state_dir;
        let mut journal = Journal::new(id, &p.container, p.to.base(), &p.peer_name);
        journal.enter(state_dir, Phase::PreMigration).await;

        // Pre-migration, step 3: the destination creates the container and listens.
        let incoming = IncomingRequest {
            migration_id: id.clone(),
            container: p.container.clone(),
            source: self.name().to_string(),
            spec: p.spec.clone(),
            spec_type_url: p.spec_type_url.clone(),
            image: p.image.clone(),
            snapshotter: p.snapshotter.clone(),
            runtime_options: p.runtime_options.clone(),
            labels: p.labels.clone(),
            source_cgroup_parent: self.cfg.cgroup_parent.clone(),
            local_mounts: p.local_mounts.clone(),
            token: token.clone(),
            interface: p.interface,
            cri: p.cri_source.clone(),
            approach: p.approach,
            post_copy: p.post_copy,
        };
        info!(
            "migration {id}: pre_migration: asking {} to create {}",
            p.peer_name, p.container
        );
        let inc: IncomingResponse = match self
            .peers
            .post(
                &p.to.join("/v1/migrations/incoming"),
                &incoming,
                INCOMING_TIMEOUT,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // The destination cleans up after its own failures; after a timeout it may
                // still be working: tell it to give up.
                let notes = self.abort_destination(p).await;
                return Err(with_outcome(e, Outcome::Untouched, &notes));
            }
        };
        let peer_addr = stream_address(&inc.address, p.to.host());
        let mut notes = p.notes.clone();
        if let Some(pod) = &p.cri_pod {
            notes.insert(
                0,
                cri_note(&p.container, pod, self.name(), &p.peer_name, &inc),
            );
        }
        let dest_ref = inc.container.clone().unwrap_or_else(|| p.container.clone());
        // The destination's endpoint, before anything is frozen.
        if let Err(e) = self
            .endpoint_prepare(id, &p.container, &p.to, &p.peer_name, p.endpoint.as_ref())
            .await
        {
            let notes = self.abort_destination(p).await;
            return Err(with_outcome(e, Outcome::Untouched, &notes));
        }
        let pre_ms = ms(p.started.elapsed());
        self.registry
            .update_phases(id, |ph| ph.pre_migration = Some(pre_ms));
        info!(
            "migration {id}: pre_migration done in {pre_ms} ms: {} created {} (pid {}), stream to {peer_addr}",
            inc.destination, p.container, inc.pid
        );

        // Migration: freeze, checkpoint and stream.
        self.registry.set_phase(id, Phase::Checkpoint);
        journal.enter(state_dir, Phase::Checkpoint).await;
        info!(
            "migration {id}: checkpoint: dumping {} to {peer_addr}",
            p.container
        );
        if let Err(e) = self.endpoint_hold(id, &p.containerd, &p.container).await {
            return Err(self.abort_both(p, e).await);
        }
        let progress = self.spawn_progress(p.engine.clone(), id.clone());
        let dump_start = Instant::now();
        let dump = p
            .engine
            .dump(
                id,
                &peer_addr,
                &token,
                p.post_copy,
                p.hold,
                self.cfg.dump_timeout,
            )
            .await;
        progress.abort();
        let dump_wall = ms(dump_start.elapsed());
        let dump = match dump {
            Ok(d) => d,
            Err(e) => return Err(self.abort_both(p, e).await),
        };
        let checkpoint_ms = dump.checkpoint_ms.min(dump_wall);
        let transfer_ms = dump_wall.saturating_sub(checkpoint_ms);
        self.registry.set_bytes(id, dump.bytes);
        self.registry.update_phases(id, |ph| {
            ph.checkpoint = Some(checkpoint_ms);
            ph.transfer = Some(transfer_ms);
        });
        info!(
            "migration {id}: checkpoint done: {} bytes in {} files, checkpoint {} ms, transfer {} ms, frozen {} ms (Dump took {dump_wall} ms)",
            dump.bytes, dump.files, dump.checkpoint_ms, dump.transfer_ms, dump.frozen_ms
        );

        // Migration, step 11: the destination restores.
        self.registry.set_phase(id, Phase::Restore);
        journal.enter(state_dir, Phase::Restore).await;
        info!(
            "migration {id}: restore: asking {} to start {}",
            p.peer_name, p.container
        );
        let restore_start = Instant::now();
        let restored: RestoreResponse = match self
            .peers
            .post(
                &p.to.join(&format!("/v1/migrations/{id}/restore")),
                &serde_json::json!({}),
                RESTORE_TIMEOUT,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.abort_both(p, e).await),
        };
        // Post-copy: the destination's answer waited for the pages too.
        let restore_ms =
            ms(restore_start.elapsed()).saturating_sub(restored.post_copy_ms.unwrap_or(0));
        self.registry
            .update_phases(id, |ph| ph.restore = Some(restore_ms));
        info!(
            "migration {id}: restore done in {restore_ms} ms ({} ms on {}): {} runs there as pid {}",
            restored.restore_ms, p.peer_name, p.container, restored.pid
        );

        // Post-copy: the destination answered once the restored service had every page; end
        // the page server here (it ends by itself once the destination is done with it).
        let (post_copy_ms, frozen_ms, pages_bytes) = if p.post_copy {
            self.registry.set_phase(id, Phase::PostCopy);
            journal.enter(state_dir, Phase::PostCopy).await;
            let t = Instant::now();
            let (frozen_ms, pages_bytes) =
                match p.engine.wait_pages(id, self.cfg.dump_timeout).await {
                    Ok(d) => (d.frozen_ms, Some(d.pages_bytes)),
                    // The destination has every page: a page server that ended badly changes
                    // nothing (the service here is frozen until the Commit).
                    Err(e) => {
                        warn!("migration {id}: post_copy: the source's page server: {e}");
                        (dump.frozen_ms, None)
                    }
                };
            let pages_ms = restored.post_copy_ms.unwrap_or(0) + ms(t.elapsed());
            self.registry
                .update_phases(id, |ph| ph.post_copy = Some(pages_ms));
            info!(
                "migration {id}: post_copy: every page in {pages_ms} ms after the restore (source frozen {frozen_ms} ms)"
            );
            (Some(pages_ms), frozen_ms, pages_bytes)
        } else {
            (None, dump.frozen_ms, None)
        };

        let endpoint = self.endpoint_commit(id).await;

        // Post-migration: the service ends here.
        self.registry.set_phase(id, Phase::PostMigration);
        journal.enter(state_dir, Phase::PostMigration).await;
        let post_start = Instant::now();
        let warnings = self.remove_source(p, &mut notes).await;
        let post_ms = ms(post_start.elapsed());
        self.registry
            .update_phases(id, |ph| ph.post_migration = Some(post_ms));
        info!("migration {id}: post_migration done in {post_ms} ms");
        for n in &notes {
            info!("migration {id}: note: {n}");
        }

        Ok(Report {
            approach: p.approach.as_str().to_string(),
            source: p.source_url.clone(),
            source_system: self.name().to_string(),
            destination: p.to.base().to_string(),
            destination_system: p.peer_name.clone(),
            container: p.container.to_string(),
            migration_id: id.clone(),
            phases_ms: PhasesMs {
                pre_migration: pre_ms,
                checkpoint: checkpoint_ms,
                transfer: transfer_ms,
                restore: restore_ms,
                post_copy: post_copy_ms,
                post_migration: post_ms,
            },
            total_ms: ms(p.started.elapsed()),
            frozen_ms,
            // Held: the service ran nowhere until the destination had every page.
            downtime_ms: dump_wall
                + restore_ms
                + if p.hold {
                    restored.post_copy_ms.unwrap_or(0)
                } else {
                    0
                },
            bytes: dump.bytes + pages_bytes.unwrap_or(0),
            pages_bytes,
            post_copy: p.post_copy,
            hold: p.hold,
            dump: DumpFigures {
                checkpoint_ms: dump.checkpoint_ms,
                transfer_ms: dump.transfer_ms,
                frozen_ms,
                wall_ms: dump_wall,
                files: dump.files,
            },
            location: Location {
                system: p.peer_name.clone(),
                url: p.to.base().to_string(),
                container: dest_ref.to_string(),
                pid: restored.pid,
                interface: inc.interface,
                pod: inc.pod.clone(),
            },
            warnings,
            notes,
            endpoint,
        })
    }

    /// Polls the dump's Status while it runs, for the bytes shown as progress.
    fn spawn_progress(
        self: &Arc<Self>,
        engine: SourceEngine,
        id: String,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tick.tick().await;
                if let Ok(st) = engine.status(&id).await {
                    me.registry.set_bytes(&id, st.bytes);
                }
            }
        })
    }

    /// Failure after our shim's Dump started: resume the service here, clean up there.
    async fn abort_both(&self, p: &Plan, cause: Error) -> Error {
        let id = &p.id;
        warn!("migration {id}: aborting after: {cause}");
        let mut notes = Vec::new();
        // Post-copy: the destination's copy may run and fetch pages from the source's page
        // server: end it first (the page server then ends too), then resume the source.
        // Otherwise the source first: the shortest interruption, even if B does not answer.
        if p.post_copy {
            notes.extend(self.abort_destination(p).await);
        }
        match p.engine.abort(id).await {
            Ok(()) => info!(
                "migration {id}: source shim aborted: {} resumes here",
                p.container
            ),
            // A failed Dump resumes the service and forgets the migration by itself: Abort
            // then has nothing to do. The shim's Status tells.
            Err(e) => match p.engine.status(id).await {
                Ok(st) if st.phase == "idle" || st.phase == "aborted" => info!(
                    "migration {id}: source shim has no migration left ({}): {} runs on here",
                    st.phase, p.container
                ),
                other => {
                    let phase = match other {
                        Ok(st) => format!("phase {}", st.phase),
                        Err(se) => format!("Status failed too: {se}"),
                    };
                    error!("migration {id}: source shim Abort failed: {e} ({phase})");
                    notes.push(format!("source shim Abort failed: {e} ({phase})"));
                }
            },
        }
        notes.extend(self.endpoint_abort(id).await);
        if !p.post_copy {
            notes.extend(self.abort_destination(p).await);
        }
        let outcome = if notes.iter().any(|n| n.starts_with("source")) {
            Outcome::MaybeFrozen
        } else {
            Outcome::Resumed
        };
        with_outcome(cause, outcome, &notes)
    }

    /// Tells the destination to drop everything of this migration.
    async fn abort_destination(&self, p: &Plan) -> Vec<String> {
        self.abort_peer(&p.to, &p.id, &p.peer_name).await
    }

    /// Tells the destination coordinator at `to` to drop migration `id`; returns what failed.
    pub(crate) async fn abort_peer(&self, to: &PeerUrl, id: &str, peer_name: &str) -> Vec<String> {
        match self
            .peers
            .post::<_, AbortResponse>(
                &to.join(&format!("/v1/migrations/{id}/abort")),
                &serde_json::json!({}),
                ABORT_TIMEOUT,
            )
            .await
        {
            Ok(r) => {
                info!(
                    "migration {id}: destination {peer_name} aborted: {}",
                    r.detail.join("; ")
                );
                Vec::new()
            }
            Err(Error::Peer {
                status: Some(404), ..
            }) => Vec::new(),
            Err(e) => {
                error!("migration {id}: destination abort failed: {e}");
                vec![format!("destination abort failed: {e}")]
            }
        }
    }

    /// Post-migration: end the service here and delete task, container and snapshot. The
    /// service already runs at the destination, so what fails here is a warning.
    async fn remove_source(&self, p: &Plan, notes: &mut Vec<String>) -> Vec<String> {
        let id = &p.id;
        let ns = &p.container.namespace;
        let cid = &p.container.id;
        let cd = &p.containerd;
        let mut warnings = Vec::new();
        let mut warn_of = |w: String| {
            warn!("migration {id}: post_migration: {w}");
            warnings.push(w);
        };
        if let Err(e) = p.engine.commit(id).await {
            warn_of(format!("source shim Commit failed ({e}); killing the task"));
            if let Err(e) = cd.kill_task(ns, cid, 9, true).await {
                warn_of(format!("killing the source task failed: {e}"));
            }
        }
        match cd.wait_task(ns, cid, Duration::from_secs(15)).await {
            Ok(Some(status)) => info!("migration {id}: source task exited with {status}"),
            Ok(None) => {
                warn_of("the source task did not exit within 15 s of Commit; killing it".into());
                let _ = cd.kill_task(ns, cid, 9, true).await;
                if let Ok(None) = cd.wait_task(ns, cid, Duration::from_secs(10)).await {
                    warn_of("the source task did not exit after SIGKILL".into());
                }
            }
            Err(e) => warn_of(format!("waiting for the source task: {e}")),
        }
        // A CRI container goes through CRI (which deletes task, container and snapshot), or
        // the CRI plugin would keep a record of it.
        let mut removed_by_cri = false;
        if let Some(pod) = &p.cri_pod {
            let mut cri = Cri::connect(cd.socket()).await;
            let removed = match &mut cri {
                Ok(cri) => cri.stop_and_remove(cid).await,
                Err(e) => Err(Error::Internal(e.to_string())),
            };
            match removed {
                Ok(true) => {
                    removed_by_cri = true;
                    info!(
                        "migration {id}: {} removed through CRI (StopContainer, RemoveContainer)",
                        p.container
                    );
                    // Its pod goes too when it held nothing else.
                    let me = self.name();
                    match cri {
                        Ok(mut cri) => match cri.remove_pod_if_empty(&pod.sandbox_id).await {
                            Ok(true) => notes.push(format!(
                                "{pod} held only {} on system {me}: removed through CRI",
                                p.container
                            )),
                            Ok(false) => notes.push(format!(
                                "{pod} stays on system {me} (it has other containers), left to \
                                 its owner"
                            )),
                            Err(e) => warn_of(format!("removing the emptied {pod}: {e}")),
                        },
                        Err(e) => warn_of(format!("removing the emptied {pod}: {e}")),
                    }
                }
                Ok(false) => info!(
                    "migration {id}: CRI does not know {}: deleting it through containerd",
                    p.container
                ),
                Err(e) => warn_of(format!(
                    "removing {} through CRI failed ({e}); deleting it through containerd (the \
                     CRI plugin may list it until containerd restarts)",
                    p.container
                )),
            }
        }
        let mut deleted = removed_by_cri;
        if removed_by_cri {
            match cd.container(ns, cid).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    deleted = false;
                    warn_of(
                        "the source container is still in containerd after CRI RemoveContainer"
                            .into(),
                    );
                }
                Err(e) => warn_of(format!("checking the source container: {e}")),
            }
        } else {
            if let Err(e) = cd.delete_task(ns, cid).await {
                warn_of(format!("deleting the source task failed: {e}"));
            }
            if let Err(e) = cd.delete_container(ns, cid).await {
                warn_of(format!("deleting the source container failed: {e}"));
            } else {
                deleted = true;
                if !p.snapshot_key.is_empty() {
                    let snapshotter = if p.snapshotter.is_empty() {
                        "overlayfs"
                    } else {
                        &p.snapshotter
                    };
                    if let Err(e) = cd.remove_snapshot(ns, snapshotter, &p.snapshot_key).await {
                        warn_of(format!(
                            "removing the source snapshot {} failed: {e}",
                            p.snapshot_key
                        ));
                    }
                }
            }
        }
        // Mount sources this coordinator made when the container came here.
        if deleted {
            if let Err(e) = mounts::remove_container(&self.cfg.state_dir, &p.container).await {
                warn_of(format!("removing the container's mount sources: {e}"));
            }
        }
        if warnings.is_empty() {
            info!(
                "migration {id}: source task, container and snapshot of {} deleted",
                p.container
            );
        }
        warnings
    }
}

/// A CRI container's configs for the destination's CRI adapter, read through this system's
/// CRI; `None` when it is not a CRI container or the user chose containerd.
async fn cri_source_of(
    cd: &Containerd,
    container: &ContainerRef,
    pod: Option<&CriPod>,
    placement: &Placement,
) -> Result<Option<CriSource>> {
    let Some(pod) = pod else {
        if placement.to_interface == Some(DestInterface::Cri) || placement.pod_name.is_some() {
            return Err(Error::Unsupported(format!(
                "{container} is not a CRI container: the cri interface recreates a pod's \
                 container from its pod's and its own CRI configs (use --to-interface containerd)"
            )));
        }
        if placement.pod_namespace.is_some() {
            return Err(Error::BadRequest(format!(
                "{container} is not a CRI container: it has no pod to place"
            )));
        }
        return Ok(None);
    };
    if placement.to_interface == Some(DestInterface::Containerd) {
        return Ok(None);
    }
    let mut cri = Cri::connect(cd.socket()).await?;
    Ok(Some(CriSource {
        pod: cri.pod_config(&pod.sandbox_id).await?,
        container: cri.container_config(&container.id).await?,
        pod_namespace: placement.pod_namespace.clone(),
        pod_name: placement.pod_name.clone(),
    }))
}

/// The report's note on where a CRI container went.
fn cri_note(
    container: &ContainerRef,
    pod: &CriPod,
    me: &str,
    peer: &str,
    inc: &IncomingResponse,
) -> String {
    match (&inc.interface, &inc.pod) {
        (DestInterface::Cri, Some(to)) => format!(
            "{container} of {pod} on system {me} runs on {peer} as {} in pod {}/{} (sandbox \
             {}), created through CRI with runtime handler ums",
            inc.container.as_ref().unwrap_or(container),
            to.namespace,
            to.name,
            to.sandbox_id
        ),
        _ => format!(
            "{container} is a container of {pod} on system {me}: it moves to {peer} as a plain \
             containerd container (no pod there)"
        ),
    }
}

/// What became of the service at the source after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Failed before the dump: the service was never frozen.
    Untouched,
    /// The source shim resumed it.
    Resumed,
    /// The source shim's Abort failed.
    MaybeFrozen,
}

/// The error of a failed migration, with what became of the service.
fn with_outcome(cause: Error, outcome: Outcome, notes: &[String]) -> Error {
    let mut msg = cause.to_string();
    msg.push_str(match outcome {
        Outcome::Untouched => "; the service runs on at the source, untouched",
        Outcome::Resumed => "; the service runs on at the source (resumed)",
        Outcome::MaybeFrozen => "; the service may be frozen at the source",
    });
    if notes.is_empty() {
        msg.push_str(", the destination was cleaned up");
    } else {
        msg.push_str(&format!(" ({})", notes.join("; ")));
    }
    match cause {
        Error::Peer { url, status, .. } => Error::Peer {
            url,
            status,
            message: strip_url_prefix(&msg),
        },
        Error::Shim { op, .. } => {
            let message = msg.trim_start_matches(&format!("shim {op}: ")).to_string();
            Error::Shim { op, message }
        }
        Error::Containerd { op, code, .. } => Error::Containerd {
            op,
            code,
            message: msg,
        },
        Error::Timeout(_) => Error::Timeout(msg),
        Error::BadRequest(_) => Error::BadRequest(msg),
        Error::NotFound(_) => Error::NotFound(msg),
        Error::Conflict(_) => Error::Conflict(msg),
        Error::Precondition(_) => Error::Precondition(msg),
        Error::Unsupported(_) => Error::Unsupported(msg),
        _ => Error::Internal(msg),
    }
}

fn strip_url_prefix(msg: &str) -> String {
    // "peer coordinator URL: message" -> "message" (Peer's Display adds the prefix again).
    match msg.strip_prefix("peer coordinator ") {
        Some(rest) => rest
            .split_once(": ")
            .map(|(_, m)| m.to_string())
            .unwrap_or_else(|| rest.to_string()),
        None => msg.to_string(),
    }
}

/// The destination shim's stream address as the source dials it: an unspecified host
/// (`0.0.0.0`, `::`, empty) is replaced by the destination coordinator's host.
pub fn stream_address(addr: &str, peer_host: &str) -> String {
    let (host, port) = match addr.rsplit_once(':') {
        Some(hp) => hp,
        None => return addr.to_string(),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let unspecified = bare.is_empty()
        || bare
            .parse::<IpAddr>()
            .map(|ip| ip.is_unspecified())
            .unwrap_or(false);
    if !unspecified {
        return addr.to_string();
    }
    if peer_host.contains(':') {
        format!("[{peer_host}]:{port}")
    } else {
        format!("{peer_host}:{port}")
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_addresses() {
        assert_eq!(
            stream_address("10.77.0.2:4000", "10.77.0.2"),
            "10.77.0.2:4000"
        );
        assert_eq!(
            stream_address("0.0.0.0:4000", "10.77.0.2"),
            "10.77.0.2:4000"
        );
        assert_eq!(stream_address("[::]:4000", "10.77.0.2"), "10.77.0.2:4000");
        assert_eq!(stream_address(":4000", "::1"), "[::1]:4000");
        assert_eq!(stream_address("[fe80::1]:4000", "x"), "[fe80::1]:4000");
    }

    #[test]
    fn failure_messages_tell_where_the_service_is() {
        let e = with_outcome(
            Error::Shim {
                op: "Dump".into(),
                message: "peer vanished".into(),
            },
            Outcome::Resumed,
            &[],
        );
        assert_eq!(
            e.to_string(),
            "shim Dump: peer vanished; the service runs on at the source (resumed), the \
             destination was cleaned up"
        );
        let e = with_outcome(
            Error::Peer {
                url: "http://b/v1/migrations/incoming".into(),
                status: Some(412),
                message: "image X not present on system b".into(),
            },
            Outcome::Untouched,
            &[],
        );
        assert_eq!(e.http_status(), 412);
        assert_eq!(
            e.to_string(),
            "peer coordinator http://b/v1/migrations/incoming: image X not present on system b; \
             the service runs on at the source, untouched, the destination was cleaned up"
        );
        let e = with_outcome(
            Error::Timeout("x".into()),
            Outcome::MaybeFrozen,
            &["source shim Abort failed: y".into()],
        );
        assert!(e.to_string().contains("may be frozen"), "{e}");
        assert!(e.to_string().contains("Abort failed: y"), "{e}");
    }
}
