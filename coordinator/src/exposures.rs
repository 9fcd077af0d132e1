//! The stable endpoints a coordinator publishes (`ums expose`): one [`Frontman`] per exposed
//! container, and what the API does with them. The migration hooks are in `handover.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::info;

use crate::coordinator::{random_hex, Coordinator};
use crate::error::{Error, Result};
use crate::expose::{ExposeRequest, ExposureInfo, ExposureState, MovedTo};
use crate::frontman::{Frontman, Route, Settings};
use crate::handover::Handover;
use crate::refs::ContainerRef;

/// Upper bounds of the request's timeouts.
const MAX_TIMEOUT_SECS: u64 = 3600;
const MAX_GRACE_SECS: u64 = 7 * 24 * 3600;

/// One exposed container.
pub struct Exposure {
    pub id: String,
    pub container: ContainerRef,
    pub drain_timeout: Duration,
    pub grace: Duration,
    pub frontman: Frontman,
    status: Mutex<Status>,
}

struct Status {
    state: ExposureState,
    /// The service's address on this system.
    target: SocketAddr,
    migration_id: Option<String>,
    moved_to: Option<MovedTo>,
    removal_at: Option<Instant>,
    /// Bumped on every change of state: a scheduled removal only applies to the state it was
    /// scheduled in.
    generation: u64,
}

impl Exposure {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn target(&self) -> SocketAddr {
        self.status().target
    }

    pub fn info(&self) -> ExposureInfo {
        let st = self.status();
        let s = self.frontman.settings();
        ExposureInfo {
            id: self.id.clone(),
            container: self.container.to_string(),
            mode: s.mode,
            listen: self.frontman.local_addr().to_string(),
            target: st.target.to_string(),
            state: st.state,
            forwarding_to: match self.frontman.route() {
                Route::Forward(to) => Some(to.to_string()),
                Route::Hold => None,
            },
            migration_id: st.migration_id.clone(),
            moved_to: st.moved_to.clone(),
            removal_in_secs: st
                .removal_at
                .map(|at| at.saturating_duration_since(Instant::now()).as_secs()),
            hold_timeout_secs: s.hold_timeout.as_secs(),
            drain_timeout_secs: self.drain_timeout.as_secs(),
            grace_secs: self.grace.as_secs(),
            retry_after_secs: s.retry_after_secs,
            stats: self.frontman.stats(),
        }
    }

    /// A migration takes the endpoint (refused while another one has it).
    pub(crate) fn begin_migration(&self, id: &str) -> Result<()> {
        let mut st = self.status();
        if let Some(other) = &st.migration_id {
            return Err(Error::Conflict(format!(
                "the endpoint {} of {} belongs to migration {other}",
                self.id, self.container
            )));
        }
        st.migration_id = Some(id.to_string());
        Ok(())
    }

    /// Holds new connections (the service is about to freeze).
    pub(crate) fn hold(&self) {
        let mut st = self.status();
        st.state = ExposureState::Holding;
        st.generation += 1;
        self.frontman.hold();
    }

    /// Forwards to the service on this system again.
    pub(crate) fn resume(&self) {
        let mut st = self.status();
        st.state = ExposureState::Forwarding;
        st.migration_id = None;
        st.moved_to = None;
        st.removal_at = None;
        st.generation += 1;
        self.frontman.forward(st.target);
    }

    /// The service runs elsewhere: forwards to `endpoint` there; returns the generation a
    /// removal after the grace period applies to.
    pub(crate) fn moved(&self, to: MovedTo, endpoint: SocketAddr) -> u64 {
        let mut st = self.status();
        st.state = ExposureState::Moved;
        st.migration_id = None;
        st.moved_to = Some(to);
        st.removal_at = Some(Instant::now() + self.grace);
        st.generation += 1;
        self.frontman.forward(endpoint);
        st.generation
    }
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Arc<Exposure>>,
    /// Migrations of exposed containers (or with endpoint options), by migration id.
    handovers: HashMap<String, Handover>,
}

/// The exposures of one coordinator.
#[derive(Default, Clone)]
pub struct Exposures {
    inner: Arc<Mutex<Inner>>,
}

impl Exposures {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<ExposureInfo> {
        let mut v: Vec<ExposureInfo> = self.lock().by_id.values().map(|e| e.info()).collect();
        v.sort_by(|a, b| a.container.cmp(&b.container));
        v
    }

    pub fn get(&self, id: &str) -> Option<Arc<Exposure>> {
        self.lock().by_id.get(id).cloned()
    }

    pub fn of_container(&self, c: &ContainerRef) -> Option<Arc<Exposure>> {
        self.lock()
            .by_id
            .values()
            .find(|e| &e.container == c)
            .cloned()
    }

    fn remove(&self, id: &str) -> Option<Arc<Exposure>> {
        self.lock().by_id.remove(id)
    }

    pub(crate) fn insert_handover(&self, migration_id: &str, h: Handover) {
        self.lock().handovers.insert(migration_id.to_string(), h);
    }

    pub(crate) fn handover(&self, migration_id: &str) -> Option<Handover> {
        self.lock().handovers.get(migration_id).cloned()
    }

    pub(crate) fn take_handover(&self, migration_id: &str) -> Option<Handover> {
        self.lock().handovers.remove(migration_id)
    }

    /// Removes exposure `id` after `after` unless its state changed since `generation`.
    pub(crate) fn remove_later(&self, id: &str, generation: u64, after: Duration) {
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut inner = me.lock();
            let due = inner
                .by_id
                .get(&id)
                .is_some_and(|e| e.status().generation == generation);
            if due {
                if let Some(e) = inner.by_id.remove(&id) {
                    info!(
                        "frontman {id}: {} moved away {}s ago: endpoint {} removed",
                        e.container,
                        after.as_secs(),
                        e.frontman.local_addr()
                    );
                }
            }
        });
    }
}

fn socket_addr(what: &str, s: &str) -> Result<SocketAddr> {
    s.trim()
        .parse()
        .map_err(|e| Error::BadRequest(format!("{what} {s:?} must be IP:PORT: {e}")))
}

fn bounded(what: &str, v: u64, min: u64, max: u64) -> Result<Duration> {
    if (min..=max).contains(&v) {
        Ok(Duration::from_secs(v))
    } else {
        Err(Error::BadRequest(format!(
            "{what} {v} is not in {min}..={max}"
        )))
    }
}

impl Coordinator {
    pub fn exposures(&self) -> &Exposures {
        &self.exposures
    }

    /// `POST /v1/expose`: binds the endpoint of a container of this system. A container whose
    /// endpoint here forwards to the system it moved to takes that endpoint back (it came back).
    pub async fn expose(&self, req: ExposeRequest) -> Result<ExposureInfo> {
        let container = ContainerRef::parse(&req.container)?;
        let listen = socket_addr("listen", &req.listen)?;
        let target = socket_addr("target", &req.target)?;
        let hold_timeout = bounded(
            "hold_timeout_secs",
            req.hold_timeout_secs,
            1,
            MAX_TIMEOUT_SECS,
        )?;
        let drain_timeout = bounded(
            "drain_timeout_secs",
            req.drain_timeout_secs,
            0,
            MAX_TIMEOUT_SECS,
        )?;
        let grace = bounded("grace_secs", req.grace_secs, 0, MAX_GRACE_SECS)?;
        bounded(
            "retry_after_secs",
            req.retry_after_secs.into(),
            1,
            MAX_TIMEOUT_SECS,
        )?;
        if listen == self.cfg.listen || listen == target {
            return Err(Error::BadRequest(format!(
                "listen {listen} is the coordinator's or the service's own address"
            )));
        }
        let me = self.name();
        let cd = self.containerd().await?;
        if cd
            .container(&container.namespace, &container.id)
            .await?
            .is_none()
        {
            return Err(Error::NotFound(format!(
                "container {container} not found on system {me}"
            )));
        }
        if let Some(e) = self.exposures.of_container(&container) {
            return self.take_back(&e, &req, listen, target);
        }
        let settings = Settings {
            mode: req.mode,
            hold_timeout,
            retry_after_secs: req.retry_after_secs,
        };
        let route = if req.held {
            Route::Hold
        } else {
            Route::Forward(target)
        };
        let frontman =
            Frontman::bind(listen, route, settings)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        Error::Conflict(format!("{listen} is already in use on system {me}"))
                    }
                    _ => Error::io(format!("listening on {listen} on system {me}"), e),
                })?;
        let id = format!("x-{}", random_hex(6)?);
        let e = Arc::new(Exposure {
            id: id.clone(),
            container: container.clone(),
            drain_timeout,
            grace,
            frontman,
            status: Mutex::new(Status {
                state: if req.held {
                    ExposureState::Holding
                } else {
                    ExposureState::Forwarding
                },
                target,
                migration_id: None,
                moved_to: None,
                removal_at: None,
                generation: 0,
            }),
        });
        let info = e.info();
        self.exposures.lock().by_id.insert(id.clone(), e);
        info!(
            "frontman {id}: {container} exposed on {} -> {target} ({} mode{})",
            info.listen,
            req.mode.as_str(),
            if req.held { ", holding" } else { "" }
        );
        Ok(info)
    }

    /// A container that moved away from here and comes back: its endpoint here (still
    /// forwarding to where it went) turns to the service here again.
    fn take_back(
        &self,
        e: &Exposure,
        req: &ExposeRequest,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> Result<ExposureInfo> {
        let mut st = e.status();
        let same = e.frontman.local_addr() == listen && e.frontman.settings().mode == req.mode;
        if st.state != ExposureState::Moved || !same {
            return Err(Error::Conflict(format!(
                "{} already has the endpoint {} ({}) on system {}",
                e.container,
                e.id,
                e.frontman.local_addr(),
                self.name()
            )));
        }
        st.target = target;
        st.moved_to = None;
        st.removal_at = None;
        st.generation += 1;
        if req.held {
            st.state = ExposureState::Holding;
            e.frontman.hold();
        } else {
            st.state = ExposureState::Forwarding;
            e.frontman.forward(target);
        }
        drop(st);
        info!(
            "frontman {}: {} is back: endpoint {} -> {target}",
            e.id,
            e.container,
            e.frontman.local_addr()
        );
        Ok(e.info())
    }

    pub fn exposure(&self, id: &str) -> Result<ExposureInfo> {
        self.exposures
            .get(id)
            .map(|e| e.info())
            .ok_or_else(|| self.no_exposure(id))
    }

    /// `DELETE /v1/expose/{id}`: the endpoint closes with its connections (refused while a
    /// migration holds it).
    pub fn unexpose(&self, id: &str) -> Result<ExposureInfo> {
        let e = self.exposures.get(id).ok_or_else(|| self.no_exposure(id))?;
        if let Some(m) = &e.status().migration_id {
            return Err(Error::Conflict(format!(
                "the endpoint {id} is held by migration {m}: remove it once the migration ended"
            )));
        }
        let info = e.info();
        self.exposures.remove(id);
        info!(
            "frontman {id}: endpoint {} of {} removed",
            info.listen, info.container
        );
        Ok(info)
    }

    /// `POST /v1/expose/{id}/resume`: forwards to the service here.
    pub fn resume_exposure(&self, id: &str) -> Result<ExposureInfo> {
        let e = self.exposures.get(id).ok_or_else(|| self.no_exposure(id))?;
        e.resume();
        info!(
            "frontman {id}: endpoint {} forwards to {}",
            e.frontman.local_addr(),
            e.target()
        );
        Ok(e.info())
    }

    fn no_exposure(&self, id: &str) -> Error {
        Error::NotFound(format!("no endpoint {id} on system {}", self.name()))
    }
}
